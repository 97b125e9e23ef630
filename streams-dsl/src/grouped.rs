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
use crate::options::configure_store;
use crate::options::{Grouped, Materialized, Repartitioned};
use crate::stamped::{Stamped, StampedSerde};
use crate::view::TableView;
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
            move |_k: &K, v: V, old: Option<V>| {
                Some(match old {
                    Some(agg) => f(agg, v),
                    None => v,
                })
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
            move |k: &K, v: V, old: Option<VA>| Some(add(k, v, old.unwrap_or_else(|| init())))
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

/// Adds an aggregation node and its store after the grouped stream's input: for each record,
/// `step(key, value, old aggregate)` gives the new aggregate, stored and forwarded with the
/// largest timestamp seen for the key.
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
    S: FnMut(&K, V, Option<VA>) -> Option<VA> + Send + 'static,
{
    let input = grouped.input();
    Aggregation {
        graph: &input.graph,
        input: &input.node,
        path: format!("{}/{}", input.path, kind.to_ascii_lowercase()),
        keys: grouped.keys(),
        explicit: grouped.stream.name_next.clone(),
        node_kind: kind.to_string(),
        description: kind.to_ascii_lowercase(),
    }
    .add(materialized, make_step)
}

/// Where an aggregation node goes and how it is named.
struct Aggregation<'a, K> {
    graph: &'a crate::graph::Shared,
    /// The node whose records it aggregates.
    input: &'a str,
    path: String,
    keys: Arc<dyn Serde<K>>,
    /// The node's name, when the user gave one.
    explicit: Option<String>,
    /// The prefix of the node's generated name; its store's is this and `-STATE-STORE`.
    node_kind: String,
    description: String,
}

impl<K: Clone + Send + 'static> Aggregation<'_, K> {
    /// Adds the node and its store: for each record, `step(key, value, old aggregate)` gives
    /// the new aggregate (`None`: nothing changes), stored and forwarded with the largest
    /// timestamp seen for the key.
    fn add<V, VA, S>(
        self,
        materialized: Materialized<VA>,
        make_step: impl Fn() -> S + Send + Sync + 'static,
    ) -> KTable<K, VA>
    where
        V: Send + 'static,
        VA: Clone + Send + 'static,
        S: FnMut(&K, V, Option<VA>) -> Option<VA> + Send + 'static,
    {
        let values = materialized.values.clone();
        let mut g = self.graph.borrow_mut();
        let node = g.node_name(&self.node_kind, &self.path, self.explicit.as_deref());
        let store = g.state_name(
            &format!("{}-STATE-STORE", self.node_kind),
            &self.path,
            materialized.name.as_deref(),
            &format!("{} ({})", self.description, node),
        );
        let store_name = store.clone();
        let processor_keys = self.keys.clone();
        let caching = materialized.caching;
        g.topology.add_processor(
            &node,
            move || KvAggregate {
                store: store_name.clone(),
                keys: processor_keys.clone(),
                caching,
                step: make_step(),
                cache: Cache::default(),
                _types: PhantomData,
            },
            [self.input],
        );
        let builder = configure_store!(
            KeyValueStore::<K, Stamped<VA>>::builder(
                &store,
                self.keys.clone(),
                StampedSerde(values.clone()),
            )
            // With a cache budget, the changelog gets the last update of each key per commit,
            // as the records downstream do.
            .with_caching(materialized.caching),
            materialized
        );
        g.topology.add_state_store(builder, [node.as_str()]);
        drop(g);
        KTable {
            graph: self.graph.clone(),
            node,
            path: self.path,
            view: Some(TableView::stamped(&store)),
            store: Some(store),
            keys: self.keys,
            values,
        }
    }
}

/// An aggregation per key: `step(key, value, old aggregate)` gives the new aggregate, stored
/// and forwarded with the largest timestamp seen for the key; with a cache budget, updates are
/// held back and go out once per key and commit (or when the cache is full).
struct KvAggregate<K, V, VA, S> {
    store: String,
    keys: Arc<dyn Serde<K>>,
    /// Whether updates go through the record cache (when the task has a budget).
    caching: bool,
    step: S,
    cache: Cache<K, VA>,
    _types: PhantomData<fn(V)>,
}

impl<K, V, VA, S> KvAggregate<K, V, VA, S>
where
    K: Clone + 'static,
    VA: Clone + 'static,
{
    /// Forwards an update of a key's aggregate (the store has it already).
    fn forward(
        &self,
        ctx: &mut ProcessorContext<'_, K, Change<VA>>,
        e: crate::cache::Entry<K, VA>,
    ) -> Result<()> {
        let change = Change {
            new: Some(e.value),
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
    S: FnMut(&K, V, Option<VA>) -> Option<VA> + Send + 'static,
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
        let Some(key_bytes) = self.keys.serialize(&self.store, &key)? else {
            crate::ops::skip_null_key(&*self.keys, &key, ctx, &self.store)?;
            return Ok(());
        };
        let budget = if self.caching {
            ctx.cache_max_bytes()
        } else {
            0
        };
        let id = (budget > 0).then_some(key_bytes);
        // The store has the latest aggregate: every update is written to it at once (it holds
        // writes back until the commit), so that joins read the current aggregate while the
        // record cache holds the update back from the downstream.
        // The cache holds the same latest aggregate for the keys it holds: no store read.
        let store = ctx.state_store::<KeyValueStore<K, Stamped<VA>>>(&self.store)?;
        let cached = id.as_deref().and_then(|id| self.cache.get(id));
        let (old_value, old_ts) = match cached {
            Some((v, t)) => (Some(v.clone()), t),
            None => match store.get(&key)? {
                Some(o) => (Some(o.value), o.timestamp),
                None => (None, i64::MIN),
            },
        };
        let Some(new) = (self.step)(&key, value, old_value.clone()) else {
            return Ok(());
        };
        let stamped = Stamped {
            value: new,
            timestamp: rest.timestamp().max(old_ts),
        };
        store.put(&key, &stamped)?;
        let entry = crate::cache::Entry {
            key,
            start: 0,
            value: stamped.value,
            old: old_value,
            timestamp: stamped.timestamp,
            rest,
        };
        match id {
            None => self.forward(ctx, entry),
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
            self.forward(ctx, e)?;
        }
        Ok(())
    }
}

impl<K: Clone + Send + 'static, V: Clone + Send + 'static> KGroupedTable<K, V> {
    /// The number of rows per group.
    pub fn count(&self) -> KTable<K, u64> {
        self.count_with(Materialized::with(BigEndian))
    }

    /// [`count`](Self::count) into the store `materialized` describes.
    pub fn count_with(&self, materialized: Materialized<u64>) -> KTable<K, u64> {
        self.table_aggregate(
            "COUNT",
            || 0_u64,
            |_, _, n| n + 1,
            |_, _, n| n.saturating_sub(1),
            materialized,
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
        // As Kafka Streams' KTableAggregate: the subtractor applies only to a group that has
        // an aggregate; the adder starts from the initializer when the group has none (or the
        // subtraction left none).
        let (init, add, sub) = (Arc::new(initializer), Arc::new(adder), Arc::new(subtractor));
        Aggregation {
            graph: &self.graph,
            input: &self.node,
            path: format!("{}/{}", self.path, kind.to_ascii_lowercase()),
            keys: self.keys.clone(),
            explicit: None,
            node_kind: format!("KTABLE-{kind}"),
            description: format!("table {}", kind.to_ascii_lowercase()),
        }
        .add(materialized, move || {
            let (init, add, sub) = (init.clone(), add.clone(), sub.clone());
            move |key: &K, delta: Delta<V>, old: Option<VA>| {
                let kept = match (delta.subtract, old) {
                    (Some(gone), Some(agg)) => Some(sub(key, gone, agg)),
                    (_, old) => old,
                };
                match delta.add {
                    Some(v) => Some(add(key, v, kept.unwrap_or_else(|| init()))),
                    None => kept,
                }
            }
        })
    }
}
