//! Session windows: per key, a session spans events no more than an inactivity gap apart;
//! a record that bridges two sessions merges them.

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;
use streams_core::metrics::DropReason;

use streams_core::processor::{Processor, ProcessorContext};
use streams_core::serde::{BigEndian, Serde, SerdeError};
use streams_core::store::{KeyValueStore, SessionStore};
use streams_core::{Record, Result};

use crate::change::Change;
use crate::handles::KGroupedStream;
use crate::handles::KTable;
use crate::handles::SessionWindowedKStream;
use crate::options::configure_store;
use crate::options::Materialized;
use crate::stamped::{Stamped, StampedSerde};
use crate::windowing::SessionWindows;
use crate::windowing::{LateRecords, Windowed};

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Kafka Streams' layout of a session-windowed key: the key's bytes, then the session end and
/// start, 8 bytes big-endian each.
pub struct SessionWindowedSerde<K> {
    keys: Arc<dyn Serde<K>>,
}

impl<K: 'static> SessionWindowedSerde<K> {
    /// Session-windowed keys of `keys`.
    pub fn new(keys: impl Serde<K>) -> Self {
        SessionWindowedSerde {
            keys: Arc::new(keys),
        }
    }
}

impl<K: 'static> Serde<Windowed<K>> for SessionWindowedSerde<K> {
    fn serialize(&self, topic: &str, w: &Windowed<K>) -> Result<Option<Vec<u8>>, SerdeError> {
        let mut out = self.keys.serialize(topic, &w.key)?.unwrap_or_default();
        out.extend_from_slice(&w.end.to_be_bytes());
        out.extend_from_slice(&w.start.to_be_bytes());
        Ok(Some(out))
    }

    /// Every session of a key in the key's partition, as for time windows.
    fn partition_bytes(
        &self,
        topic: &str,
        w: &Windowed<K>,
    ) -> Option<Result<Option<Vec<u8>>, SerdeError>> {
        Some(self.keys.serialize(topic, &w.key))
    }

    fn deserialize(&self, topic: &str, data: Option<&[u8]>) -> Result<Windowed<K>, SerdeError> {
        let data = data.ok_or_else(|| SerdeError::new("SessionWindowed", topic, "null key"))?;
        if data.len() < 16 {
            return Err(SerdeError::new(
                "SessionWindowed",
                topic,
                format!(
                    "{} bytes, fewer than the 16 of the session times",
                    data.len()
                ),
            ));
        }
        let (key, times) = data.split_at(data.len() - 16);
        let end = i64::from_be_bytes(times[..8].try_into().expect("8 bytes"));
        let start = i64::from_be_bytes(times[8..].try_into().expect("8 bytes"));
        Ok(Windowed {
            key: self.keys.deserialize(topic, Some(key))?,
            start,
            end,
        })
    }
}

/// The aggregate a session starts from before its sessions are merged and its record added
/// (`None` for a reduction, which starts from the first value).
type Initializer<VA> = Option<Arc<dyn Fn() -> VA + Send + Sync>>;
/// `step(key, value, aggregate so far)`: the new aggregate.
type Adder<K, V, VA> = Arc<dyn Fn(&K, V, Option<VA>) -> VA + Send + Sync>;
type Merger<K, VA> = Arc<dyn Fn(&K, VA, VA) -> VA + Send + Sync>;

impl<K: Clone + Send + 'static, V: Clone + Send + 'static> SessionWindowedKStream<K, V> {
    pub(crate) fn new(grouped: KGroupedStream<K, V>, windows: SessionWindows) -> Self {
        SessionWindowedKStream {
            grouped,
            windows,
            late: LateRecords::default(),
            emit_final: false,
        }
    }

    /// Where the records dropped as late by this aggregation are counted.
    pub fn late_records(&self) -> LateRecords {
        self.late.clone()
    }

    /// Emits each session once, final, when no record can reach it any more (its end is before
    /// stream time minus grace minus the gap), instead of every update and retraction. A record
    /// that would merge into a session already emitted is dropped as late, so that a final
    /// result is never superseded (Kafka Streams merges it, and emits the merged session as
    /// final too).
    pub fn emit_final(mut self) -> Self {
        self.emit_final = true;
        self
    }

    /// The number of records per key and session. On update, every change forwards the
    /// sessions it replaced as deletions (tombstones when written to a topic) and then the new
    /// session.
    pub fn count(&self) -> KTable<Windowed<K>, u64> {
        self.count_with(Materialized::with(BigEndian))
    }

    /// [`count`](Self::count) into the store `materialized` describes.
    pub fn count_with(&self, materialized: Materialized<u64>) -> KTable<Windowed<K>, u64> {
        self.aggregate_kind(
            "COUNT",
            Some(Arc::new(|| 0)),
            Arc::new(|_, _, n: Option<u64>| n.unwrap_or(0) + 1),
            Arc::new(|_, a, b| a + b),
            materialized,
        )
    }

    /// Combines the values of each key and session with `reducer(aggregate, value)`; a
    /// session's first value is its initial aggregate, and two sessions a record bridges are
    /// combined with `reducer` too (Kafka Streams' `SessionWindowedKStream.reduce`).
    pub fn reduce(
        &self,
        reducer: impl Fn(V, V) -> V + Send + Sync + 'static,
        materialized: Materialized<V>,
    ) -> KTable<Windowed<K>, V> {
        let reducer = Arc::new(reducer);
        let merge = reducer.clone();
        self.aggregate_kind(
            "REDUCE",
            None,
            Arc::new(move |_, v, agg: Option<V>| match agg {
                Some(a) => reducer(a, v),
                None => v,
            }),
            Arc::new(move |_, a, b| merge(a, b)),
            materialized,
        )
    }

    /// Folds the values of each key and session: `adder(key, value, aggregate)` from
    /// `initializer()`; `merger(key, a, b)` combines the aggregates of two sessions a record
    /// bridges.
    pub fn aggregate<VA: Clone + Send + 'static>(
        &self,
        initializer: impl Fn() -> VA + Send + Sync + 'static,
        adder: impl Fn(&K, V, VA) -> VA + Send + Sync + 'static,
        merger: impl Fn(&K, VA, VA) -> VA + Send + Sync + 'static,
        materialized: Materialized<VA>,
    ) -> KTable<Windowed<K>, VA> {
        let initializer = Arc::new(initializer);
        let init = initializer.clone();
        self.aggregate_kind(
            "AGGREGATE",
            Some(init),
            Arc::new(move |k, v, agg: Option<VA>| {
                adder(k, v, agg.unwrap_or_else(|| initializer()))
            }),
            Arc::new(merger),
            materialized,
        )
    }

    fn aggregate_kind<VA: Clone + Send + 'static>(
        &self,
        kind: &str,
        init: Initializer<VA>,
        add: Adder<K, V, VA>,
        merge: Merger<K, VA>,
        materialized: Materialized<VA>,
    ) -> KTable<Windowed<K>, VA> {
        let input = self.grouped.input();
        let path = format!("{}/session-{}", input.path, kind.to_ascii_lowercase());
        let keys = self.grouped.keys();
        let values = materialized.values.clone();
        let windows = self.windows;
        let retention = materialized
            .retention
            .map(millis)
            .unwrap_or(0)
            .max(windows.gap + windows.grace)
            .max(1);
        let explicit = self.grouped.stream.name_next.clone();
        let mut g = input.graph.borrow_mut();
        let node = g.node_name(&format!("SESSION-{kind}"), &path, explicit.as_deref());
        let store = g.state_name(
            &format!("SESSION-{kind}-STATE-STORE"),
            &path,
            materialized.name.as_deref(),
            &format!("session {} ({})", kind.to_ascii_lowercase(), node),
        );
        let emitted = format!("{store}-emitted");
        let emit_final = self.emit_final;
        if emit_final {
            g.state_name(
                "EMITTED",
                &emitted,
                Some(&emitted),
                &format!("emit-final of {node}"),
            );
        }
        let (store_name, emitted_name, late) = (store.clone(), emitted.clone(), self.late.clone());
        let processor_keys = keys.clone();
        g.topology.add_processor(
            &node,
            move || SessionAggregate {
                store: store_name.clone(),
                keys: processor_keys.clone(),
                emitted: emitted_name.clone(),
                windows,
                emit_final,
                init: init.clone(),
                add: add.clone(),
                merge: merge.clone(),
                late: late.clone(),
                observed: i64::MIN,
                _types: PhantomData,
            },
            [input.node.as_str()],
        );
        let builder = configure_store!(
            SessionStore::<K, Stamped<VA>>::builder(
                &store,
                Duration::from_millis(retention as u64),
                keys.clone(),
                StampedSerde(values.clone()),
            ),
            materialized
        );
        g.topology.add_state_store(builder, [node.as_str()]);
        if emit_final {
            g.topology
                .add_state_store(materialized.progress_store(&emitted), [node.as_str()]);
        }
        drop(g);
        KTable {
            graph: input.graph.clone(),
            node,
            path,
            store: Some(store),
            view: None,
            keys: Arc::new(SessionWindowedSerde { keys }),
            values,
        }
    }
}

const EMITTED_KEY: &str = "emitted-until";

struct SessionAggregate<K, V, VA> {
    store: String,
    keys: Arc<dyn Serde<K>>,
    emitted: String,
    windows: SessionWindows,
    emit_final: bool,
    init: Initializer<VA>,
    add: Adder<K, V, VA>,
    merge: Merger<K, VA>,
    late: LateRecords,
    /// The largest timestamp this aggregation has processed (Kafka Streams'
    /// `observedStreamTime`): records that never reach it do not close its sessions.
    observed: i64,
    _types: PhantomData<fn(K, V)>,
}

impl<K, V, VA> Processor for SessionAggregate<K, V, VA>
where
    K: Clone + Send + 'static,
    V: 'static,
    VA: Clone + Send + 'static,
{
    type KeyIn = K;
    type ValueIn = V;
    type KeyOut = Windowed<K>;
    type ValueOut = Change<VA>;

    fn process(
        &mut self,
        r: Record<K, V>,
        ctx: &mut ProcessorContext<'_, Windowed<K>, Change<VA>>,
    ) -> Result<()> {
        // As Kafka Streams' KStreamSessionWindowAggregate: the record's session is the union
        // of [ts, ts] with every session of its key within the gap of ts; it is late when that
        // session ended before the close time (observed time minus grace minus gap).
        let (gap, grace) = (self.windows.gap, self.windows.grace);
        let task = ctx.task_id();
        let (key, value, rest) = r.into_parts();
        if crate::ops::skip_null_key(&*self.keys, &key, ctx, &self.store)? {
            return Ok(());
        }
        let ts = rest.timestamp();
        self.observed = self.observed.max(ts);
        let stream_time = self.observed;
        let close = stream_time.saturating_sub(grace).saturating_sub(gap);
        let store = ctx.state_store::<SessionStore<K, Stamped<VA>>>(&self.store)?;
        let found = store.find_sessions(&key, ts.saturating_sub(gap), ts.saturating_add(gap))?;
        let (mut start, mut end) = (ts, ts);
        let mut agg = self.init.as_ref().map(|init| init());
        for ((s, e), v) in &found {
            start = start.min(*s);
            end = end.max(*e);
            agg = Some(match agg {
                Some(a) => (self.merge)(&key, a, v.value.clone()),
                None => v.value.clone(),
            });
        }
        // With emit-final, a record that would merge into a session already emitted as final
        // is late too: the final result must stay final (Kafka Streams merges it and emits the
        // merged session as final later, counting the emitted session's records twice).
        let emitted_until = if self.emit_final {
            ctx.state_store::<KeyValueStore<String, i64>>(&self.emitted)?
                .get(&EMITTED_KEY.to_string())?
                .unwrap_or(i64::MIN)
        } else {
            i64::MIN
        };
        let merges_emitted = found.iter().any(|((_, e), _)| *e < emitted_until);
        if end < close || merges_emitted {
            self.late.add(task);
            ctx.record_dropped(DropReason::Late);
            tracing::warn!(%task, session_start = start, session_end = end, record_timestamp = ts, stream_time, merges_emitted, "dropping a record for a closed session");
        } else {
            let agg = (self.add)(&key, value, agg);
            // A record that extends or merges sessions retracts each of them first (also one
            // whose bounds it does not change); one alone at [ts, ts] replaces its session.
            let extends = (start, end) != (ts, ts);
            let mut replaced: Option<VA> = None;
            for ((s, e), v) in &found {
                ctx.state_store::<SessionStore<K, Stamped<VA>>>(&self.store)?
                    .remove(&key, *s, *e)?;
                if !extends {
                    replaced = Some(v.value.clone());
                    continue;
                }
                if !self.emit_final {
                    let gone = rest
                        .clone()
                        .with_key(Windowed {
                            key: key.clone(),
                            start: *s,
                            end: *e,
                        })
                        .with_value(Change {
                            new: None,
                            old: Some(v.value.clone()),
                        })
                        .with_timestamp(*e);
                    ctx.forward(gone)?;
                }
            }
            ctx.state_store::<SessionStore<K, Stamped<VA>>>(&self.store)?
                .put(
                    &key,
                    start,
                    end,
                    &Stamped {
                        value: agg.clone(),
                        timestamp: end,
                    },
                )?;
            if !self.emit_final {
                let out = rest
                    .with_key(Windowed { key, start, end })
                    .with_value(Change {
                        new: Some(agg),
                        old: replaced,
                    })
                    .with_timestamp(end);
                ctx.forward(out)?;
            }
        }
        if self.emit_final {
            // Final once no record can reach it: its end before the close time.
            let progress = ctx.state_store::<KeyValueStore<String, i64>>(&self.emitted)?;
            let last = progress.get(&EMITTED_KEY.to_string())?.unwrap_or(i64::MIN);
            if close > last {
                progress.put(&EMITTED_KEY.to_string(), &close)?;
                // Sessions ending in [last, close): final now, not before.
                let to = close.saturating_sub(1);
                let closed = ctx
                    .state_store::<SessionStore<K, Stamped<VA>>>(&self.store)?
                    .fetch_ended(last.max(i64::MIN + 1), to)?;
                for ((k, s, e), v) in closed {
                    let out = Record::new(
                        Windowed {
                            key: k,
                            start: s,
                            end: e,
                        },
                        Change {
                            new: Some(v.value),
                            old: None,
                        },
                        e,
                    );
                    ctx.forward(out)?;
                }
            }
        }
        Ok(())
    }
}
