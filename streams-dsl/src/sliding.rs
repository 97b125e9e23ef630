//! Sliding windows: windows of a fixed time difference defined by the records themselves.

use std::collections::BTreeMap;
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

/// The values a key had at one timestamp, in arrival order: a count, then each value's
/// length and bytes.
struct ListSerde<V>(Arc<dyn Serde<V>>);

impl<V: 'static> Serde<Vec<V>> for ListSerde<V> {
    fn serialize(
        &self,
        topic: &str,
        list: &Vec<V>,
    ) -> std::result::Result<Option<Vec<u8>>, SerdeError> {
        let mut out = (list.len() as u32).to_be_bytes().to_vec();
        for v in list {
            let b = self.0.serialize(topic, v)?.unwrap_or_default();
            out.extend_from_slice(&(b.len() as u32).to_be_bytes());
            out.extend_from_slice(&b);
        }
        Ok(Some(out))
    }

    fn deserialize(
        &self,
        topic: &str,
        data: Option<&[u8]>,
    ) -> std::result::Result<Vec<V>, SerdeError> {
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
        let count = u32::from_be_bytes(take(4)?.try_into().expect("4 bytes"));
        let mut out = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let len = u32::from_be_bytes(take(4)?.try_into().expect("4 bytes")) as usize;
            out.push(self.0.deserialize(topic, Some(take(len)?))?);
        }
        Ok(out)
    }
}

type Initializer<VA> = Arc<dyn Fn() -> VA + Send + Sync>;
/// A key and its records by timestamp (each timestamp's values in arrival order).
type KeyRecords<K, V> = (K, Vec<(i64, Vec<V>)>);
/// A closed window to emit: (end, key bytes, start, the record).
type FinalWindow<K, VA> = (i64, Vec<u8>, i64, Record<Windowed<K>, Change<VA>>);
type Adder<K, V, VA> = Arc<dyn Fn(&K, V, VA) -> VA + Send + Sync>;

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
        self.aggregate_kind(
            "COUNT",
            Arc::new(|| 0),
            Arc::new(|_, _, n| n + 1),
            Materialized::with(BigEndian),
        )
    }

    /// Folds the values of each key and window: `adder(key, value, aggregate)` from
    /// `initializer()`, over the window's records in timestamp order.
    pub fn aggregate<VA: Clone + Send + 'static>(
        &self,
        initializer: impl Fn() -> VA + Send + Sync + 'static,
        adder: impl Fn(&K, V, VA) -> VA + Send + Sync + 'static,
        materialized: Materialized<VA>,
    ) -> KTable<Windowed<K>, VA> {
        self.aggregate_kind(
            "AGGREGATE",
            Arc::new(initializer),
            Arc::new(adder),
            materialized,
        )
    }

    fn aggregate_kind<VA: Clone + Send + 'static>(
        &self,
        kind: &str,
        init: Initializer<VA>,
        add: Adder<K, V, VA>,
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
                init: init.clone(),
                add: add.clone(),
                late: late.clone(),
                _types: PhantomData,
            },
            [input.node.as_str()],
        );
        let builder = configure_store!(
            WindowStore::<K, Vec<V>>::builder(
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
    init: Initializer<VA>,
    add: Adder<K, V, VA>,
    late: LateRecords,
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
        let close = ctx.stream_time().saturating_sub(self.windows.grace);
        let task = ctx.task_id();
        let (key, value, rest) = r.into_parts();
        let ts = rest.timestamp();
        if self.emit_final {
            // Before this record is stored: the windows it closes never held it open.
            self.emit_closed(ctx, close)?;
        }
        if ts.saturating_add(d).saturating_add(1) <= close {
            self.late.add(task);
            ctx.record_dropped(DropReason::Late);
            tracing::warn!(%task, record_timestamp = ts, stream_time = ctx.stream_time(), "dropping a record whose sliding windows are all closed");
            return Ok(());
        }
        let s = ctx.state_store::<WindowStore<K, Vec<V>>>(&self.store)?;
        let mut at_ts = s.fetch_one(&key, ts)?.unwrap_or_default();
        let earlier_at_ts = !at_ts.is_empty();
        at_ts.push(value);
        s.put(&key, &at_ts, ts)?;
        // Every window holding `ts` starts in [ts - d, ts] and holds only records in
        // [ts - d, ts + d]; whether the window right after a record p in [ts - d - 1, ts) exists
        // depends on the records after p.
        let records = s.fetch(&key, ts - d - 1, ts + d + 1)?;
        let times: Vec<i64> = records.iter().map(|(t, _)| *t).collect();
        let mut starts: Vec<i64> = vec![];
        for &t in &times {
            if t >= ts && t <= ts + d {
                starts.push(t - d); // the window ending at t holds ts
            }
            if t < ts && t + 1 + d >= ts {
                starts.push(t + 1); // the window right after t now holds ts
            }
        }
        // The window right after this record, when a later record falls in it, is new unless
        // it existed already: as the window after an earlier record at the same time, or as
        // the window ending at a record at its end. It does not hold this record; it is
        // forwarded once, when created.
        let after = times.iter().any(|&t| t > ts && t <= ts + 1 + d);
        let ends_there = times.contains(&(ts + 1 + d));
        if after && !earlier_at_ts && !ends_there {
            starts.push(ts + 1);
        }
        starts.sort_unstable();
        starts.dedup();
        if self.emit_final {
            return Ok(());
        }
        for start in starts {
            let end = start + d;
            if end < close {
                continue; // closed: it no longer changes
            }
            let mut agg = (self.init)();
            let mut latest = i64::MIN;
            for (t, values) in &records {
                if *t >= start && *t <= end {
                    latest = latest.max(*t);
                    for v in values {
                        agg = (self.add)(&key, v.clone(), agg);
                    }
                }
            }
            let out = rest
                .clone()
                .with_key(Windowed {
                    key: key.clone(),
                    start,
                    end,
                })
                .with_value(Change {
                    new: Some(agg),
                    old: None,
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
            .state_store::<WindowStore<K, Vec<V>>>(&self.store)?
            .fetch_all(from, to)?;
        // Records per key (by serialized key), in timestamp order.
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
        for (kb, (key, mut records)) in per_key {
            records.sort_by_key(|(t, _)| *t);
            let times: Vec<i64> = records.iter().map(|(t, _)| *t).collect();
            let mut starts: Vec<i64> = vec![];
            for &t in &times {
                if t >= last && t < close {
                    starts.push(t - d); // the window ending at t
                }
                let end = t + 1 + d;
                if end >= last && end < close && times.iter().any(|&u| u > t && u <= end) {
                    starts.push(t + 1); // the window right after t, holding later records
                }
            }
            starts.sort_unstable();
            starts.dedup();
            for start in starts {
                let end = start + d;
                let mut agg = (self.init)();
                let mut latest = i64::MIN;
                for (t, values) in &records {
                    if *t >= start && *t <= end {
                        latest = latest.max(*t);
                        for v in values {
                            agg = (self.add)(&key, v.clone(), agg);
                        }
                    }
                }
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
