//! Sliding windows: windows of a fixed time difference defined by the records themselves.

use std::collections::{BTreeMap, BTreeSet};
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;
use streams_core::metrics::DropReason;

use streams_core::processor::{Processor, ProcessorContext};
use streams_core::serde::{BigEndian, Serde, SerdeError};
use streams_core::store::{KeyValueStore, WindowStore};
use streams_core::{Record, Result};

use crate::change::Change;
use crate::handles::KGroupedStream;
use crate::handles::KTable;
use crate::handles::SlidingWindowedKStream;
use crate::options::configure_store;
use crate::options::Materialized;
use crate::windowing::SlidingWindows;
use crate::windowing::{LateRecords, Windowed};

/// The values a key had at one timestamp, each with its arrival number (see `Arrived`).
/// Written as a marker (`u32::MAX`), a count, then each value's arrival number (8 bytes), length
/// and bytes. Lists an earlier version wrote (a count, then each value's length and bytes, no
/// marker) are read with arrival number 0: in timestamp order, as that version folded them.
struct ListSerde<V>(Arc<dyn Serde<V>>);

const ARRIVALS: u32 = u32::MAX;

/// A value and when it arrived, relative to the other records of its key: a number larger
/// than every number of the records near it in time (all the records a window holding it
/// can hold), so that windows fold their records in arrival order, as Kafka Streams'
/// incremental aggregation does.
type Arrived<V> = (u64, V);

impl<V: 'static> Serde<Vec<Arrived<V>>> for ListSerde<V> {
    fn serialize(
        &self,
        topic: &str,
        list: &Vec<Arrived<V>>,
    ) -> std::result::Result<Option<Vec<u8>>, SerdeError> {
        let mut out = ARRIVALS.to_be_bytes().to_vec();
        out.extend_from_slice(&(list.len() as u32).to_be_bytes());
        for (n, v) in list {
            let b = self.0.serialize(topic, v)?.unwrap_or_default();
            out.extend_from_slice(&n.to_be_bytes());
            out.extend_from_slice(&(b.len() as u32).to_be_bytes());
            out.extend_from_slice(&b);
        }
        Ok(Some(out))
    }

    fn deserialize(
        &self,
        topic: &str,
        data: Option<&[u8]>,
    ) -> std::result::Result<Vec<Arrived<V>>, SerdeError> {
        let bad = || SerdeError::new("List", topic, "truncated list");
        let mut data = data.ok_or_else(|| SerdeError::new("List", topic, "null value"))?;
        let mut take = |n: usize| -> std::result::Result<&[u8], SerdeError> {
            if data.len() < n {
                return Err(bad());
            }
            let (head, tail) = data.split_at(n);
            data = tail;
            Ok(head)
        };
        let u32_of = |b: &[u8]| u32::from_be_bytes(b.try_into().expect("4 bytes"));
        let mut count = u32_of(take(4)?);
        let numbered = count == ARRIVALS;
        if numbered {
            count = u32_of(take(4)?);
        }
        let mut out = Vec::with_capacity(count.min(1 << 16) as usize);
        for _ in 0..count {
            let n = if numbered {
                u64::from_be_bytes(take(8)?.try_into().expect("8 bytes"))
            } else {
                0
            };
            let len = u32_of(take(4)?) as usize;
            out.push((n, self.0.deserialize(topic, Some(take(len)?))?));
        }
        Ok(out)
    }
}

/// The windows of a key's records (Kafka Streams' `SlidingWindows`), by start: for each record
/// at `t`, the window ending at `t`, `[t - d, t]` (for an early record, `t < d`, the window
/// `[0, d]`, which holds every early record); and the window right after it, `[t + 1, t + 1 +
/// d]`, when a later record falls in it. `times` are the records' timestamps, in order.
fn window_starts(times: &[i64], d: i64) -> BTreeSet<i64> {
    let mut starts = BTreeSet::new();
    for (i, &t) in times.iter().enumerate() {
        starts.insert((t - d).max(0));
        if times[i + 1..].iter().any(|&u| u > t && u <= t + 1 + d) {
            starts.insert(t + 1);
        }
    }
    starts
}

/// The aggregate of the records in `[start, start + d]`, folded in arrival order, and the
/// largest timestamp among them (the result's timestamp); `None` when the window holds none.
fn fold_window<K, V: Clone, VA>(
    key: &K,
    records: &[(i64, u64, V)],
    (start, d): (i64, i64),
    step: &Step<K, V, VA>,
) -> Option<(VA, i64)> {
    let mut held: Vec<&(i64, u64, V)> = records
        .iter()
        .filter(|(t, _, _)| *t >= start && *t <= start + d)
        .collect();
    if held.is_empty() {
        return None;
    }
    held.sort_by_key(|(t, n, _)| (*n, *t));
    let latest = held.iter().map(|(t, _, _)| *t).max().unwrap_or(start);
    let agg = held
        .into_iter()
        .fold(None, |agg, (_, _, v)| Some(step(key, v.clone(), agg)))?;
    Some((agg, latest))
}

/// A key's records from the store, flattened to (timestamp, arrival number, value), in
/// timestamp order.
fn flatten<V>(rows: Vec<(i64, Vec<Arrived<V>>)>) -> Vec<(i64, u64, V)> {
    let mut out: Vec<(i64, u64, V)> = rows
        .into_iter()
        .flat_map(|(t, values)| values.into_iter().map(move |(n, v)| (t, n, v)))
        .collect();
    out.sort_by_key(|(t, n, _)| (*t, *n));
    out
}

/// A key and its records by timestamp (each timestamp's values with their arrival numbers).
type KeyRecords<K, V> = (K, Vec<(i64, Vec<Arrived<V>>)>);
/// A closed window to emit: (end, key bytes, start, the record).
type FinalWindow<K, VA> = (i64, Vec<u8>, i64, Record<Windowed<K>, Change<VA>>);
/// `step(key, value, aggregate so far)`: the new aggregate (`None`: the window had none yet).
type Step<K, V, VA> = Arc<dyn Fn(&K, V, Option<VA>) -> VA + Send + Sync>;

impl<K: Clone + Send + 'static, V: Clone + Send + 'static> SlidingWindowedKStream<K, V> {
    pub(crate) fn new(grouped: KGroupedStream<K, V>, windows: SlidingWindows) -> Self {
        SlidingWindowedKStream {
            grouped,
            windows,
            late: LateRecords::default(),
            emit_final: false,
        }
    }

    /// Emits each window once, final, when it closes (its end is before stream time minus
    /// grace), by end time, then key bytes; with the records that reached it while it was
    /// open. What was emitted is kept in a logged store, so a restart never emits a window twice.
    pub fn emit_final(mut self) -> Self {
        self.emit_final = true;
        self
    }

    /// Where the records dropped as late by this aggregation are counted.
    pub fn late_records(&self) -> LateRecords {
        self.late.clone()
    }

    /// The number of records per key and window.
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

    /// Combines the values of each key and window with `reducer(aggregate, value)`, in the
    /// order they arrived; the window's first value is its initial aggregate (Kafka Streams'
    /// `SlidingWindowedKStream.reduce`).
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
    /// `initializer()`, over the window's records in the order they arrived (as Kafka
    /// Streams' incremental aggregation, and the other window kinds here).
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
        let path = format!("{}/sliding-{}", input.path, kind.to_ascii_lowercase());
        let keys = self.grouped.keys();
        let values = self.grouped.grouped.values.clone();
        let windows = self.windows;
        // The records a window that can still change may hold (see `process`).
        let retention = (2 * windows.diff + windows.grace + 2).max(1);
        let explicit = self.grouped.stream.name_next.clone();
        let mut g = input.graph.borrow_mut();
        let node = g.node_name(&format!("SLIDING-{kind}"), &path, explicit.as_deref());
        let store = g.state_name(
            &format!("SLIDING-{kind}-STATE-STORE"),
            &path,
            materialized.name.as_deref(),
            &format!("sliding {} ({})", kind.to_ascii_lowercase(), node),
        );
        let (store_name, late) = (store.clone(), self.late.clone());
        let emit_final = self.emit_final;
        let emitted = format!("{store}-emitted");
        if emit_final {
            g.state_name(
                "EMITTED",
                &emitted,
                Some(&emitted),
                &format!("emit-final of {node}"),
            );
        }
        let (emitted_name, key_serde) = (emitted.clone(), keys.clone());
        g.topology.add_processor(
            &node,
            move || SlidingAggregate::<K, V, VA> {
                store: store_name.clone(),
                emitted: emitted_name.clone(),
                emit_final,
                keys: key_serde.clone(),
                windows,
                step: step.clone(),
                late: late.clone(),
                observed: i64::MIN,
                _types: PhantomData,
            },
            [input.node.as_str()],
        );
        let builder = configure_store!(
            WindowStore::<K, Vec<Arrived<V>>>::builder(
                &store,
                Duration::from_millis(retention as u64),
                keys.clone(),
                ListSerde(values),
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
            keys: Arc::new(windows.key_serde(keys)),
            values: materialized.values,
        }
    }
}

/// Keeps each key's records (by timestamp) for as long as a window that holds them can change,
/// and recomputes the windows a new record touches from them.
struct SlidingAggregate<K, V, VA> {
    store: String,
    emitted: String,
    emit_final: bool,
    keys: Arc<dyn Serde<K>>,
    windows: SlidingWindows,
    step: Step<K, V, VA>,
    late: LateRecords,
    /// The largest timestamp this aggregation has processed.
    observed: i64,
    _types: PhantomData<fn(K, V)>,
}

impl<K, V, VA> Processor for SlidingAggregate<K, V, VA>
where
    K: Clone + Send + 'static,
    V: Clone + 'static,
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
        let d = self.windows.diff;
        // The aggregation's own stream time (Kafka Streams' observedStreamTime).
        self.observed = self.observed.max(r.timestamp());
        let stream_time = self.observed;
        let close = stream_time.saturating_sub(self.windows.grace);
        let task = ctx.task_id();
        let (key, value, rest) = r.into_parts();
        if crate::ops::skip_null_key(&*self.keys, &key, ctx, &self.store)? {
            return Ok(());
        }
        let ts = rest.timestamp();
        if self.emit_final {
            // Before this record is stored: the windows it closes never held it open.
            self.emit_closed(ctx, close)?;
        }
        if ts.saturating_add(d).saturating_add(1) <= close {
            self.late.add(task);
            ctx.record_dropped(DropReason::Late);
            tracing::warn!(%task, record_timestamp = ts, stream_time, "dropping a record whose sliding windows are all closed");
            return Ok(());
        }
        // Every window holding `ts` starts in [ts - d, ts] and holds only records in
        // [ts - d, ts + d]; whether such a window exists, and the window right after this
        // record, depends on the records in [ts - d - 1, ts + d + 1].
        let s = ctx.state_store::<WindowStore<K, Vec<Arrived<V>>>>(&self.store)?;
        let (from, to) = ((ts - d - 1).max(0), ts + d + 1);
        let before = flatten(s.fetch(&key, from, to)?);
        let arrival = before.iter().map(|(_, n, _)| *n + 1).max().unwrap_or(0);
        let mut at_ts = s.fetch_one(&key, ts)?.unwrap_or_default();
        at_ts.push((arrival, value.clone()));
        s.put(&key, &at_ts, ts)?;
        let mut after = before.clone();
        after.push((ts, arrival, value));
        after.sort_by_key(|(t, n, _)| (*t, *n));
        let times =
            |records: &[(i64, u64, V)]| records.iter().map(|(t, _, _)| *t).collect::<Vec<_>>();
        let (existed, exists) = (
            window_starts(&times(&before), d),
            window_starts(&times(&after), d),
        );
        if self.emit_final {
            return Ok(());
        }
        // Forwarded: each open window holding this record (updated or new), and a new window
        // that does not (the one right after this record, when a later record falls in it),
        // with the aggregate it replaces (none for a new window).
        for &start in exists.range((ts - d).max(0)..=ts + 1) {
            let end = start + d;
            let holds = start <= ts && ts <= end;
            if (!holds && existed.contains(&start)) || end < close {
                continue;
            }
            let Some((agg, latest)) = fold_window(&key, &after, (start, d), &self.step) else {
                continue;
            };
            let old = if existed.contains(&start) {
                fold_window(&key, &before, (start, d), &self.step).map(|(a, _)| a)
            } else {
                None
            };
            let out = rest
                .clone()
                .with_key(Windowed {
                    key: key.clone(),
                    start,
                    end,
                })
                .with_value(Change {
                    new: Some(agg),
                    old,
                })
                .with_timestamp(latest);
            ctx.forward(out)?;
        }
        Ok(())
    }
}

impl<K, V, VA> SlidingAggregate<K, V, VA>
where
    K: Clone + Send + 'static,
    V: Clone + 'static,
    VA: Clone + Send + 'static,
{
    /// Emits the windows that closed since the last emission (end in `[last close, close)`),
    /// recomputed from the records kept, by end, then key bytes.
    fn emit_closed(
        &mut self,
        ctx: &mut ProcessorContext<'_, Windowed<K>, Change<VA>>,
        close: i64,
    ) -> Result<()> {
        const KEY: &str = "emitted-until";
        let d = self.windows.diff;
        let progress = ctx.state_store::<KeyValueStore<String, i64>>(&self.emitted)?;
        let last = progress.get(&KEY.to_string())?.unwrap_or(i64::MIN);
        if close <= last {
            return Ok(());
        }
        progress.put(&KEY.to_string(), &close)?;
        let from = last.saturating_sub(d).saturating_sub(1).max(0);
        let to = close.saturating_sub(1);
        if to < from {
            return Ok(());
        }
        let rows = ctx
            .state_store::<WindowStore<K, Vec<Arrived<V>>>>(&self.store)?
            .fetch_all(from, to)?;
        // Records per key (by serialized key).
        let mut per_key: BTreeMap<Vec<u8>, KeyRecords<K, V>> = BTreeMap::new();
        for ((key, t), values) in rows {
            let kb = self.keys.serialize(&self.store, &key)?.unwrap_or_default();
            per_key
                .entry(kb)
                .or_insert_with(|| (key, vec![]))
                .1
                .push((t, values));
        }
        let mut out: Vec<FinalWindow<K, VA>> = vec![];
        for (kb, (key, rows)) in per_key {
            let records = flatten(rows);
            let times: Vec<i64> = records.iter().map(|(t, _, _)| *t).collect();
            for start in window_starts(&times, d) {
                let end = start + d;
                if end < last || end >= close {
                    continue;
                }
                let Some((agg, latest)) = fold_window(&key, &records, (start, d), &self.step)
                else {
                    continue;
                };
                let change = Change {
                    new: Some(agg),
                    old: None,
                };
                let w = Windowed {
                    key: key.clone(),
                    start,
                    end,
                };
                out.push((end, kb.clone(), start, Record::new(w, change, latest)));
            }
        }
        out.sort_by(|a, b| (a.0, &a.1, a.2).cmp(&(b.0, &b.1, b.2)));
        for (_, _, _, record) in out {
            ctx.forward(record)?;
        }
        Ok(())
    }
}
