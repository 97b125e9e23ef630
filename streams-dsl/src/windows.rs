//! Time windows (tumbling and hopping) and windowed aggregations.

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;
use streams_core::metrics::DropReason;

use streams_core::processor::{Processor, ProcessorContext, PunctuationType, PunctuatorId};
use streams_core::serde::{BigEndian, Serde};
use streams_core::store::{KeyValueStore, WindowStore};
use streams_core::{Record, Result};

use crate::cache::{Cache, Entry};
use crate::change::Change;
use crate::handles::KGroupedStream;
use crate::handles::KTable;
use crate::handles::TimeWindowedKStream;
use crate::options::configure_store;
use crate::options::Materialized;
use crate::stamped::{Stamped, StampedSerde};
use crate::view::TableView;
use crate::windowing::{LateRecords, TimeWindows, Windowed, WindowedSerde};

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The key under which the emit-final progress is stored.
const EMITTED_KEY: &str = "emitted-until";

/// Whether a window closes when the close time moves to `close`: returns the last emission's
/// close time when some window ends in `(last close, close]`, nothing otherwise (windows end
/// only at `k * advance + size`, so most records close none and cost one read here).
fn closing<K: 'static, VA: 'static>(
    ctx: &mut ProcessorContext<'_, Windowed<K>, Change<VA>>,
    emitted: &str,
    windows: TimeWindows,
    close: i64,
) -> Result<Option<i64>> {
    let progress = ctx.state_store::<KeyValueStore<String, i64>>(emitted)?;
    let last = progress.get(&EMITTED_KEY.to_string())?.unwrap_or(i64::MIN);
    if close <= last {
        return Ok(None);
    }
    // The first window end after `last` (window starts are multiples of `advance`, from 0).
    let next_end = if last < windows.size {
        windows.size
    } else {
        ((last - windows.size) / windows.advance + 1) * windows.advance + windows.size
    };
    Ok((next_end <= close).then_some(last))
}

/// Emits, in window-start order, the windows that closed since the last emission (their end
/// in `(last, close]`, `last` as [`closing`] returned it), and records `close` as emitted.
fn emit_closed<K: Clone + 'static, VA: Clone + 'static>(
    ctx: &mut ProcessorContext<'_, Windowed<K>, Change<VA>>,
    store: &str,
    emitted: &str,
    windows: TimeWindows,
    (last, close): (i64, i64),
) -> Result<()> {
    ctx.state_store::<KeyValueStore<String, i64>>(emitted)?
        .put(&EMITTED_KEY.to_string(), &close)?;
    // Windows ending in (last, close] start in (last - size, close - size].
    let from = last.saturating_sub(windows.size).saturating_add(1);
    let to = close.saturating_sub(windows.size);
    if to < from {
        return Ok(());
    }
    let s = ctx.state_store::<WindowStore<K, Stamped<VA>>>(store)?;
    let mut closed = s.fetch_all(from.max(0), to)?;
    closed.sort_by_key(|((_, start), _)| *start);
    if !closed.is_empty() {
        tracing::debug!(
            store,
            from,
            to,
            windows = closed.len(),
            "emitting closed windows"
        );
    }
    for ((key, start), agg) in closed {
        let out = Record::new(
            Windowed {
                key,
                start,
                end: start + windows.size,
            },
            Change {
                new: Some(agg.value),
                old: None,
            },
            agg.timestamp,
        );
        ctx.forward(out)?;
    }
    Ok(())
}

/// `step(key, value, aggregate so far)`: the new aggregate (`None`: the window had none yet).
type Step<K, V, VA> = Arc<dyn Fn(&K, V, Option<VA>) -> VA + Send + Sync>;

impl<K: Clone + Send + 'static, V: Clone + Send + 'static> TimeWindowedKStream<K, V> {
    pub(crate) fn new(grouped: KGroupedStream<K, V>, windows: TimeWindows) -> Self {
        TimeWindowedKStream {
            grouped,
            windows,
            late: LateRecords::default(),
            emit_final: false,
            wall_clock: false,
        }
    }

    /// [`emit_final`](Self::emit_final), and windows also close when the wall clock passes
    /// their end plus the grace period, so that a partition that goes quiet still emits its
    /// final results (beyond Kafka Streams, whose windows close on stream time only). It
    /// assumes event time follows the wall clock; a record for a window closed this way is
    /// late, dropped and counted.
    pub fn emit_final_closing_by_wall_clock(mut self) -> Self {
        self.emit_final = true;
        self.wall_clock = true;
        self
    }

    /// Emits only the final result of each window, once, when it closes (stream time reaches
    /// its end plus the grace period), instead of every update: Kafka Streams'
    /// `EmitStrategy.onWindowClose()` (or `suppress(untilWindowCloses)`). Final results come in
    /// window-start order, then key-byte order; each carries the largest timestamp of its
    /// window's records. What was already emitted is kept in a logged store beside the
    /// aggregate's, so a restart never emits a window twice.
    pub fn emit_final(mut self) -> Self {
        self.emit_final = true;
        self
    }

    /// Where the records dropped as late by this aggregation are counted.
    pub fn late_records(&self) -> LateRecords {
        self.late.clone()
    }

    /// The number of records per key and window; each update is forwarded.
    pub fn count(&self) -> KTable<Windowed<K>, u64> {
        self.count_with(Materialized::with(BigEndian))
    }

    /// [`count`](Self::count) into the store `materialized` describes.
    pub fn count_with(&self, materialized: Materialized<u64>) -> KTable<Windowed<K>, u64> {
        self.aggregate_kind(
            "COUNT",
            Arc::new(|_, _, n: Option<u64>| n.unwrap_or(0) + 1),
            materialized,
        )
    }

    /// Combines the values of each key and window with `reducer(aggregate, value)`; the
    /// window's first value is its initial aggregate (Kafka Streams'
    /// `TimeWindowedKStream.reduce`).
    pub fn reduce(
        &self,
        reducer: impl Fn(V, V) -> V + Send + Sync + 'static,
        materialized: Materialized<V>,
    ) -> KTable<Windowed<K>, V> {
        self.aggregate_kind(
            "REDUCE",
            Arc::new(move |_, v, agg: Option<V>| match agg {
                Some(a) => reducer(a, v),
                None => v,
            }),
            materialized,
        )
    }

    /// Folds the values of each key and window: `adder(key, value, aggregate)` from
    /// `initializer()`.
    pub fn aggregate<VA: Clone + Send + 'static>(
        &self,
        initializer: impl Fn() -> VA + Send + Sync + 'static,
        adder: impl Fn(&K, V, VA) -> VA + Send + Sync + 'static,
        materialized: Materialized<VA>,
    ) -> KTable<Windowed<K>, VA> {
        self.aggregate_kind(
            "AGGREGATE",
            Arc::new(move |k, v, agg: Option<VA>| adder(k, v, agg.unwrap_or_else(&initializer))),
            materialized,
        )
    }

    fn aggregate_kind<VA: Clone + Send + 'static>(
        &self,
        kind: &str,
        step: Step<K, V, VA>,
        materialized: Materialized<VA>,
    ) -> KTable<Windowed<K>, VA> {
        let input = self.grouped.input();
        let path = format!("{}/windowed-{}", input.path, kind.to_ascii_lowercase());
        let keys = self.grouped.keys();
        let values = materialized.values.clone();
        let windows = self.windows;
        let retention = materialized
            .retention
            .map(millis)
            .unwrap_or(windows.size + windows.grace)
            .max(windows.size + windows.grace);
        let explicit = self.grouped.stream.name_next.clone();
        let mut g = input.graph.borrow_mut();
        let node = g.node_name(kind, &path, explicit.as_deref());
        let store = g.state_name(
            &format!("{kind}-STATE-STORE"),
            &path,
            materialized.name.as_deref(),
            &format!("windowed {} ({})", kind.to_ascii_lowercase(), node),
        );
        let store_name = store.clone();
        let emitted_name = format!("{store}-emitted");
        let emit_final = self.emit_final;
        let wall_clock = self.wall_clock;
        if emit_final {
            g.state_name(
                "EMITTED",
                &emitted_name,
                Some(&emitted_name),
                &format!("emit-final of {node}"),
            );
        }
        let late = self.late.clone();
        let emitted_store = emitted_name.clone();
        let processor_keys = keys.clone();
        let caching = materialized.caching;
        g.topology.add_processor(
            &node,
            move || WindowAggregate {
                store: store_name.clone(),
                emitted: emitted_store.clone(),
                keys: processor_keys.clone(),
                caching,
                windows,
                emit_final,
                wall_clock,
                step: step.clone(),
                late: late.clone(),
                cache: Cache::default(),
                observed: i64::MIN,
                _types: PhantomData,
            },
            [input.node.as_str()],
        );
        let builder = configure_store!(
            WindowStore::<K, Stamped<VA>>::builder(
                &store,
                Duration::from_millis(retention as u64),
                keys.clone(),
                StampedSerde(values.clone()),
            )
            // With a cache budget, the changelog gets the last update of each window per
            // commit, as the records downstream do.
            .with_caching(materialized.caching),
            materialized
        );
        g.topology.add_state_store(builder, [node.as_str()]);
        if emit_final {
            g.topology
                .add_state_store(materialized.progress_store(&emitted_name), [node.as_str()]);
        }
        drop(g);
        KTable {
            graph: input.graph.clone(),
            node,
            path,
            view: Some(TableView::windowed(&store)),
            store: Some(store),
            keys: Arc::new(WindowedSerde::with_size(keys, windows.size)),
            values,
        }
    }
}

/// A windowed aggregation: each record updates every window that holds it and is still open.
/// On update (default) each new aggregate is forwarded, through the record cache when there
/// is a budget; with emit-final nothing is forwarded until windows close.
struct WindowAggregate<K, V, VA> {
    store: String,
    emitted: String,
    keys: Arc<dyn Serde<K>>,
    /// Whether updates go through the record cache (when the task has a budget).
    caching: bool,
    windows: TimeWindows,
    emit_final: bool,
    wall_clock: bool,
    step: Step<K, V, VA>,
    late: LateRecords,
    cache: Cache<K, VA>,
    /// The largest timestamp this aggregation has processed.
    observed: i64,
    _types: PhantomData<fn(V)>,
}

impl<K: Clone + Send + 'static, V, VA: Clone + Send + 'static> WindowAggregate<K, V, VA> {
    /// Emit-final: forwards the windows that close at `close`, if any, after writing the
    /// held-back aggregates to the store (the closed windows are read back from it).
    fn emit_final_results(
        &mut self,
        ctx: &mut ProcessorContext<'_, Windowed<K>, Change<VA>>,
        close: i64,
    ) -> Result<()> {
        let Some(last) = closing(ctx, &self.emitted, self.windows, close)? else {
            return Ok(());
        };
        emit_closed(ctx, &self.store, &self.emitted, self.windows, (last, close))
    }

    /// Forwards an update of a window's aggregate (the store has it already); with emit-final
    /// nothing (closed windows are read back from the store).
    fn forward(
        &self,
        ctx: &mut ProcessorContext<'_, Windowed<K>, Change<VA>>,
        e: Entry<K, VA>,
    ) -> Result<()> {
        if self.emit_final {
            return Ok(());
        }
        let out = e
            .rest
            .with_key(Windowed {
                key: e.key,
                start: e.start,
                end: e.start + self.windows.size,
            })
            .with_value(Change {
                new: Some(e.value),
                old: e.old,
            })
            .with_timestamp(e.timestamp);
        ctx.forward(out)
    }
}

impl<K, V, VA> Processor for WindowAggregate<K, V, VA>
where
    K: Clone + Send + 'static,
    V: Clone + 'static,
    VA: Clone + Send + 'static,
{
    type KeyIn = K;
    type ValueIn = V;
    type KeyOut = Windowed<K>;
    type ValueOut = Change<VA>;

    fn init(&mut self, ctx: &mut ProcessorContext<'_, Windowed<K>, Change<VA>>) -> Result<()> {
        if self.wall_clock {
            let every = Duration::from_millis(self.windows.size.clamp(1, 1000) as u64);
            ctx.schedule(every, PunctuationType::WallClockTime)?;
        }
        Ok(())
    }

    fn punctuate(
        &mut self,
        _id: PunctuatorId,
        now: i64,
        ctx: &mut ProcessorContext<'_, Windowed<K>, Change<VA>>,
    ) -> Result<()> {
        let close = now.saturating_sub(self.windows.grace);
        self.emit_final_results(ctx, close)
    }

    fn process(
        &mut self,
        r: Record<K, V>,
        ctx: &mut ProcessorContext<'_, Windowed<K>, Change<VA>>,
    ) -> Result<()> {
        let windows = self.windows;
        // The aggregation's own stream time, as Kafka Streams' observedStreamTime: records
        // that never reach it (filtered away, another branch) do not close its windows.
        self.observed = self.observed.max(r.timestamp());
        let stream_time = self.observed;
        let mut close = stream_time.saturating_sub(windows.grace);
        if self.wall_clock {
            // Windows the wall clock closed (and emitted) are closed for records too.
            let emitted = ctx
                .state_store::<KeyValueStore<String, i64>>(&self.emitted)?
                .get(&EMITTED_KEY.to_string())?;
            close = close.max(emitted.unwrap_or(i64::MIN));
        }
        let task = ctx.task_id();
        let (key, value, rest) = r.into_parts();
        let Some(key_bytes) = self.keys.serialize(&self.store, &key)? else {
            crate::ops::skip_null_key(&*self.keys, &key, ctx, &self.store)?;
            return Ok(());
        };
        let ts = rest.timestamp();
        let budget = if self.caching {
            ctx.cache_max_bytes()
        } else {
            0
        };
        // Emit-final forwards closed windows only, read back from the store: nothing to cache.
        let key_bytes = (budget > 0 && !self.emit_final).then_some(key_bytes);
        for (start, end) in windows.windows_for(ts) {
            if end <= close {
                self.late.add(task);
                ctx.record_dropped(DropReason::Late);
                tracing::warn!(%task, window_start = start, window_end = end, record_timestamp = ts, stream_time, "dropping a record for a closed window");
                continue;
            }
            let id = key_bytes.as_ref().map(|kb| {
                let mut id = kb.clone();
                id.extend_from_slice(&start.to_be_bytes());
                id
            });
            // The store has the latest aggregate: every update is written to it at once (it
            // holds writes back until the commit), so that joins read the current aggregate
            // while the record cache holds the update back from the downstream.
            // The cache holds the same latest aggregate for the keys it holds: no store read.
            let store = ctx.state_store::<WindowStore<K, Stamped<VA>>>(&self.store)?;
            let cached = id.as_deref().and_then(|id| self.cache.get(id));
            let (old, old_ts) = match cached {
                Some((v, t)) => (Some(v.clone()), t),
                None => match store.fetch_one(&key, start)? {
                    Some(o) => (Some(o.value), o.timestamp),
                    None => (None, i64::MIN),
                },
            };

            let stamped = Stamped {
                value: (self.step)(&key, value.clone(), old.clone()),
                timestamp: ts.max(old_ts),
            };
            store.put(&key, &stamped, start)?;
            let entry = Entry {
                key: key.clone(),
                start,
                value: stamped.value,
                old,
                timestamp: stamped.timestamp,
                rest: rest.clone(),
            };
            match id {
                None => self.forward(ctx, entry)?,
                Some(id) => {
                    if self.cache.put(id, entry) > budget {
                        self.flush(ctx)?;
                    }
                }
            }
        }
        if self.emit_final {
            self.emit_final_results(ctx, close)?;
        }
        Ok(())
    }

    fn flush(&mut self, ctx: &mut ProcessorContext<'_, Windowed<K>, Change<VA>>) -> Result<()> {
        if self.cache.is_empty() {
            return Ok(());
        }
        for e in self.cache.drain() {
            self.forward(ctx, e)?;
        }
        Ok(())
    }
}
