//! [`KGroupedStream`]: a stream grouped by key, and its aggregations into a [`KTable`].

use std::marker::PhantomData;
use std::sync::Arc;

use streams_core::processor::{Processor, ProcessorContext};
use streams_core::serde::{BigEndian, Serde};
use streams_core::store::KeyValueStore;
use streams_core::{Record, Result};

use crate::cache::Cache;
use crate::change::{Change, Delta};
use crate::handles::KStream;
use crate::handles::KTable;
use crate::handles::TimeWindowedKStream;
use crate::handles::{KGroupedStream, KGroupedTable};
use crate::ops::Op;
use crate::options::configure_store;
use crate::options::{Grouped, Materialized, Repartitioned};
use crate::stamped::{Stamped, StampedSerde};
use crate::windowing::TimeWindows;

impl<K: Clone + Send + 'static, V: Clone + Send + 'static> KGroupedStream<K, V> {
    /// The key serde of the grouping.
    pub(crate) fn keys(&self) -> Arc<dyn Serde<K>> {
        self.grouped.keys.clone()
    }

    /// The stream to aggregate: repartitioned when its key changed.
    pub(crate) fn input(&self) -> KStream<K, V> {
        if !self.stream.key_changed {
            return self.stream.clone();
        }
        let mut options = Repartitioned {
            keys: self.grouped.keys.clone(),
            values: self.grouped.values.clone(),
            name: None,
            partitions: None,
        };
        if let Some(n) = &self.grouped.name {
            options = options.named(n);
        }
        self.stream.repartition(options)
    }

    /// The number of records per key, with the count's timestamp the latest record's.
    pub fn count(&self) -> KTable<K, u64> {
        self.count_with(Materialized::with(BigEndian))
    }

    /// [`count`](Self::count) into the store `materialized` describes.
    pub fn count_with(&self, materialized: Materialized<u64>) -> KTable<K, u64> {
        self.aggregate_kind("COUNT", || 0, |_, _, n| n + 1, materialized)
    }

    /// Combines the values of each key with `f(aggregate, value)` (the first value is the
    /// initial aggregate).
    pub fn reduce(&self, f: impl Fn(V, V) -> V + Send + Sync + 'static) -> KTable<K, V> {
        let values = self.grouped.values.clone();
        self.reduce_with(f, Materialized::with_arc(values))
    }

    /// [`reduce`](Self::reduce) into the store `materialized` describes.
    pub fn reduce_with(
        &self,
        f: impl Fn(V, V) -> V + Send + Sync + 'static,
        materialized: Materialized<V>,
    ) -> KTable<K, V> {
        let f = Arc::new(f);
        aggregate_node(self, "REDUCE", materialized, move || {
            let f = f.clone();
            move |_k: &K, v: V, old: Option<V>| match old {
                Some(agg) => f(agg, v),
                None => v,
            }
        })
    }

    /// Folds the values of each key into an aggregate: `adder(key, value, aggregate)`,
    /// starting from `initializer()`.
    pub fn aggregate<VA: Clone + Send + 'static>(
        &self,
        initializer: impl Fn() -> VA + Send + Sync + 'static,
        adder: impl Fn(&K, V, VA) -> VA + Send + Sync + 'static,
        materialized: Materialized<VA>,
    ) -> KTable<K, VA> {
        self.aggregate_kind("AGGREGATE", initializer, adder, materialized)
    }

    fn aggregate_kind<VA: Clone + Send + 'static>(
        &self,
        kind: &str,
        initializer: impl Fn() -> VA + Send + Sync + 'static,
        adder: impl Fn(&K, V, VA) -> VA + Send + Sync + 'static,
        materialized: Materialized<VA>,
    ) -> KTable<K, VA> {
        let (init, add) = (Arc::new(initializer), Arc::new(adder));
        aggregate_node(self, kind, materialized, move || {
            let (init, add) = (init.clone(), add.clone());
            move |k: &K, v: V, old: Option<VA>| add(k, v, old.unwrap_or_else(|| init()))
        })
    }

    /// Aggregates per key and sliding window (windows defined by the records).
    pub fn windowed_by_sliding(
        &self,
        windows: crate::windowing::SlidingWindows,
    ) -> crate::handles::SlidingWindowedKStream<K, V> {
        crate::handles::SlidingWindowedKStream::new(self.clone_grouped(), windows)
    }

    /// Aggregates per key and session (activity separated by an inactivity gap).
    pub fn windowed_by_session(
        &self,
        windows: crate::windowing::SessionWindows,
    ) -> crate::handles::SessionWindowedKStream<K, V> {
        crate::handles::SessionWindowedKStream::new(self.clone_grouped(), windows)
    }

    /// Aggregates per key and time window (tumbling or hopping).
    pub fn windowed_by(&self, windows: TimeWindows) -> TimeWindowedKStream<K, V> {
        TimeWindowedKStream::new(self.clone_grouped(), windows)
    }

    fn clone_grouped(&self) -> KGroupedStream<K, V> {
        KGroupedStream {
            stream: self.stream.clone(),
            grouped: Grouped {
                keys: self.grouped.keys.clone(),
                values: self.grouped.values.clone(),
                name: self.grouped.name.clone(),
            },
        }
    }
}

/// Adds an aggregation node and its store: for each record, `step(key, value, old aggregate)`
/// gives the new aggregate, stored and forwarded with the largest timestamp seen for the key.
fn aggregate_node<K, V, VA, S>(
    grouped: &KGroupedStream<K, V>,
    kind: &str,
    materialized: Materialized<VA>,
    make_step: impl Fn() -> S + Send + Sync + 'static,
) -> KTable<K, VA>
where
    K: Clone + Send + 'static,
    V: Clone + Send + 'static,
    VA: Clone + Send + 'static,
    S: FnMut(&K, V, Option<VA>) -> VA + Send + 'static,
{
    let input = grouped.input();
    let path = format!("{}/{}", input.path, kind.to_ascii_lowercase());
    let keys = grouped.keys();
    let values = materialized.values.clone();
    let explicit = grouped.stream.name_next.clone();
    let mut g = input.graph.borrow_mut();
    let node = g.node_name(kind, &path, explicit.as_deref());
    let store = g.state_name(
        &format!("{kind}-STATE-STORE"),
        &path,
        materialized.name.as_deref(),
        &format!("{} ({})", kind.to_ascii_lowercase(), node),
    );
    let store_name = store.clone();
    let processor_keys = keys.clone();
    g.topology.add_processor(
        &node,
        move || KvAggregate {
            store: store_name.clone(),
            keys: processor_keys.clone(),
            step: make_step(),
            cache: Cache::default(),
            _types: PhantomData,
        },
        [input.node.as_str()],
    );
    let builder = configure_store!(
        KeyValueStore::<K, Stamped<VA>>::builder(
            &store,
            keys.clone(),
            StampedSerde(values.clone()),
        ),
        materialized
    );
    g.topology.add_state_store(builder, [node.as_str()]);
    drop(g);
    KTable {
        graph: input.graph.clone(),
        node,
        path,
        store: Some(store),
        keys,
        values,
    }
}

/// An aggregation per key: `step(key, value, old aggregate)` gives the new aggregate, stored
/// and forwarded with the largest timestamp seen for the key; with a cache budget, updates are
/// held back and go out once per key and commit (or when the cache is full).
struct KvAggregate<K, V, VA, S> {
    store: String,
    keys: Arc<dyn Serde<K>>,
    step: S,
    cache: Cache<K, VA>,
    _types: PhantomData<fn(V)>,
}

impl<K, V, VA, S> KvAggregate<K, V, VA, S>
where
    K: Clone + 'static,
    VA: Clone + 'static,
{
    fn write_and_forward(
        &self,
        ctx: &mut ProcessorContext<'_, K, Change<VA>>,
        e: crate::cache::Entry<K, VA>,
    ) -> Result<()> {
        let stamped = Stamped {
            value: e.value,
            timestamp: e.timestamp,
        };
        ctx.state_store::<KeyValueStore<K, Stamped<VA>>>(&self.store)?
            .put(&e.key, &stamped)?;
        let change = Change {
            new: Some(stamped.value),
            old: e.old,
        };
        ctx.forward(
            e.rest
                .with_key(e.key)
                .with_value(change)
                .with_timestamp(e.timestamp),
        )
    }
}

impl<K, V, VA, S> Processor for KvAggregate<K, V, VA, S>
where
    K: Clone + Send + 'static,
    V: 'static,
    VA: Clone + Send + 'static,
    S: FnMut(&K, V, Option<VA>) -> VA + Send + 'static,
{
    type KeyIn = K;
    type ValueIn = V;
    type KeyOut = K;
    type ValueOut = Change<VA>;

    fn process(
        &mut self,
        r: Record<K, V>,
        ctx: &mut ProcessorContext<'_, K, Change<VA>>,
    ) -> Result<()> {
        let (key, value, rest) = r.into_parts();
        let budget = ctx.cache_max_bytes();
        let id = if budget > 0 {
            Some(self.keys.serialize(&self.store, &key)?.unwrap_or_default())
        } else {
            None
        };
        let cached = id
            .as_deref()
            .and_then(|id| self.cache.get(id))
            .map(|(v, ts)| (v.clone(), ts));
        let (old_value, old_ts) = match cached {
            Some((v, ts)) => (Some(v), ts),
            None => match ctx
                .state_store::<KeyValueStore<K, Stamped<VA>>>(&self.store)?
                .get(&key)?
            {
                Some(o) => (Some(o.value), o.timestamp),
                None => (None, i64::MIN),
            },
        };
        let timestamp = rest.timestamp().max(old_ts);
        let new = (self.step)(&key, value, old_value.clone());
        let entry = crate::cache::Entry {
            key,
            start: 0,
            value: new,
            old: old_value,
            timestamp,
            rest,
        };
        match id {
            None => self.write_and_forward(ctx, entry),
            Some(id) => {
                if self.cache.put(id, entry) > budget {
                    self.flush(ctx)?;
                }
                Ok(())
            }
        }
    }

    fn flush(&mut self, ctx: &mut ProcessorContext<'_, K, Change<VA>>) -> Result<()> {
        if self.cache.is_empty() {
            return Ok(());
        }
        for e in self.cache.drain() {
            self.write_and_forward(ctx, e)?;
        }
        Ok(())
    }
}

impl<K: Clone + Send + 'static, V: Clone + Send + 'static> KGroupedTable<K, V> {
    /// The number of rows per group.
    pub fn count(&self) -> KTable<K, u64> {
        self.table_aggregate(
            "COUNT",
            || 0_u64,
            |_, _, n| n + 1,
            |_, _, n| n.saturating_sub(1),
            Materialized::with(BigEndian),
        )
    }

    /// Combines the rows of each group: `adder(aggregate, value)` for a row that joins or
    /// changes, `subtractor(aggregate, old value)` for the value it had before (the first
    /// value of a group is its initial aggregate).
    pub fn reduce(
        &self,
        adder: impl Fn(V, V) -> V + Send + Sync + 'static,
        subtractor: impl Fn(V, V) -> V + Send + Sync + 'static,
    ) -> KTable<K, Option<V>> {
        let (adder, subtractor) = (Arc::new(adder), Arc::new(subtractor));
        self.table_aggregate(
            "REDUCE",
            || None,
            move |_, v, agg: Option<V>| {
                Some(match agg {
                    Some(a) => adder(a, v),
                    None => v,
                })
            },
            move |_, v, agg: Option<V>| agg.map(|a| subtractor(a, v)),
            Materialized::with(streams_core::serde::Nullable(self.values.clone())),
        )
    }

    /// Folds the rows of each group: `adder(key, value, aggregate)` for a row that joins or
    /// changes, `subtractor(key, old value, aggregate)` for the value it had before.
    pub fn aggregate<VA: Clone + Send + 'static>(
        &self,
        initializer: impl Fn() -> VA + Send + Sync + 'static,
        adder: impl Fn(&K, V, VA) -> VA + Send + Sync + 'static,
        subtractor: impl Fn(&K, V, VA) -> VA + Send + Sync + 'static,
        materialized: Materialized<VA>,
    ) -> KTable<K, VA> {
        self.table_aggregate("AGGREGATE", initializer, adder, subtractor, materialized)
    }

    fn table_aggregate<VA: Clone + Send + 'static>(
        &self,
        kind: &str,
        initializer: impl Fn() -> VA + Send + Sync + 'static,
        adder: impl Fn(&K, V, VA) -> VA + Send + Sync + 'static,
        subtractor: impl Fn(&K, V, VA) -> VA + Send + Sync + 'static,
        materialized: Materialized<VA>,
    ) -> KTable<K, VA> {
        let path = format!("{}/{}", self.path, kind.to_ascii_lowercase());
        let values = materialized.values.clone();
        let mut g = self.graph.borrow_mut();
        let node = g.node_name(&format!("KTABLE-{kind}"), &path, None);
        let store = g.state_name(
            &format!("KTABLE-{kind}-STATE-STORE"),
            &path,
            materialized.name.as_deref(),
            &format!("table {} ({})", kind.to_ascii_lowercase(), node),
        );
        let (init, add, sub) = (Arc::new(initializer), Arc::new(adder), Arc::new(subtractor));
        let store_name = store.clone();
        g.topology.add_processor(
            &node,
            move || {
                let (store, init, add, sub) =
                    (store_name.clone(), init.clone(), add.clone(), sub.clone());
                Op::<K, Delta<V>, K, Change<VA>>::new(Box::new(
                    move |r: Record<K, Delta<V>>, ctx: &mut ProcessorContext<'_, K, Change<VA>>| {
                        let s = ctx.state_store::<KeyValueStore<K, Stamped<VA>>>(&store)?;
                        let (key, delta, rest) = r.into_parts();
                        let old = s.get(&key)?;
                        let old_ts = old.as_ref().map_or(i64::MIN, |o| o.timestamp);
                        let old_value = old.map(|o| o.value);
                        let base = old_value.clone().unwrap_or_else(|| init());
                        let new = if delta.add {
                            add(&key, delta.value, base)
                        } else {
                            sub(&key, delta.value, base)
                        };
                        let timestamp = rest.timestamp().max(old_ts);
                        s.put(
                            &key,
                            &Stamped {
                                value: new.clone(),
                                timestamp,
                            },
                        )?;
                        let change = Change {
                            new: Some(new),
                            old: old_value,
                        };
                        ctx.forward(
                            rest.with_key(key)
                                .with_value(change)
                                .with_timestamp(timestamp),
                        )
                    },
                ))
            },
            [self.node.as_str()],
        );
        let builder = configure_store!(
            KeyValueStore::<K, Stamped<VA>>::builder(
                &store,
                self.keys.clone(),
                StampedSerde(values.clone()),
            ),
            materialized
        );
        g.topology.add_state_store(builder, [node.as_str()]);
        drop(g);
        KTable {
            graph: self.graph.clone(),
            node,
            path,
            store: Some(store),
            keys: self.keys.clone(),
            values,
        }
    }
}
