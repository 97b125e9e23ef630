//! [`KStream`]: an unbounded stream of records, and its stateless operators.

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::sync::Arc;

use streams_core::processor::{FixedKeyProcessor, Processor, ProcessorContext};
use streams_core::serde::{DefaultSerde, Serde};
use streams_core::store::KeyValueStore;
use streams_core::topology::Sink;
use streams_core::Record;

use crate::change::Change;
use crate::graph::Shared;
use crate::handles::KGroupedStream;
use crate::handles::KStream;
use crate::handles::KTable;
use crate::ops::{Op, OpFn};
use crate::options::configure_store;
use crate::options::{Grouped, Materialized, Named, Produced, Repartitioned};
use crate::view::TableView;

impl<K, V> Clone for KStream<K, V> {
    fn clone(&self) -> Self {
        KStream {
            graph: self.graph.clone(),
            node: self.node.clone(),
            path: self.path.clone(),
            key_changed: self.key_changed,
            name_next: self.name_next.clone(),
            _types: PhantomData,
        }
    }
}

impl<K: Clone + 'static, V: Clone + 'static> KStream<K, V> {
    pub(crate) fn new(graph: Shared, node: String, path: String, key_changed: bool) -> Self {
        KStream {
            graph,
            node,
            path,
            key_changed,
            name_next: None,
            _types: PhantomData,
        }
    }

    /// The same stream, whose next operator gets the node name `name` (instead of a generated
    /// one): `stream.named("big-orders").filter(...)`. Every operator can be named this way;
    /// stores and internal topics are named with [`Materialized`](crate::Materialized),
    /// [`Grouped`] and [`Repartitioned`].
    pub fn named(&self, name: &str) -> Self {
        let mut s = self.clone();
        s.name_next = Some(name.to_string());
        s
    }

    /// The explicit name of the next operator: `named`, else the one set by
    /// [`named`](Self::named).
    fn explicit(&self, named: Option<&str>) -> Option<String> {
        named.map(str::to_string).or_else(|| self.name_next.clone())
    }

    /// Adds a processor node of kind `kind` running `make()`'s closure (one per task).
    pub(crate) fn add_op<K2: Clone + 'static, V2: Clone + 'static>(
        &self,
        kind: &str,
        named: Named,
        key_changed: bool,
        make: impl Fn() -> OpFn<K, V, K2, V2> + Send + Sync + 'static,
    ) -> KStream<K2, V2> {
        let path = format!("{}/{}", self.path, kind.to_ascii_lowercase());
        let explicit = self.explicit(named.0.as_deref());
        let mut g = self.graph.borrow_mut();
        let name = g.node_name(kind, &path, explicit.as_deref());
        g.topology
            .add_processor(&name, move || Op::new(make()), [self.node.as_str()]);
        drop(g);
        KStream::new(
            self.graph.clone(),
            name,
            path,
            self.key_changed || key_changed,
        )
    }

    /// Keeps the records for which `predicate(key, value)` holds.
    pub fn filter(&self, predicate: impl Fn(&K, &V) -> bool + Send + Sync + 'static) -> Self {
        let p = Arc::new(predicate);
        self.add_op("FILTER", Named::default(), false, move || {
            let p = p.clone();
            Box::new(move |r: Record<K, V>, ctx| {
                if p(r.key(), r.value()) {
                    ctx.forward(r)
                } else {
                    Ok(())
                }
            })
        })
    }

    /// Drops the records for which `predicate(key, value)` holds.
    pub fn filter_not(&self, predicate: impl Fn(&K, &V) -> bool + Send + Sync + 'static) -> Self {
        self.add_op_filter_not(predicate)
    }

    fn add_op_filter_not(
        &self,
        predicate: impl Fn(&K, &V) -> bool + Send + Sync + 'static,
    ) -> Self {
        let p = Arc::new(predicate);
        self.add_op("FILTER-NOT", Named::default(), false, move || {
            let p = p.clone();
            Box::new(move |r: Record<K, V>, ctx| {
                if p(r.key(), r.value()) {
                    Ok(())
                } else {
                    ctx.forward(r)
                }
            })
        })
    }

    /// A new key and value for every record (timestamp and headers kept). The key may change:
    /// a stateful operator after it reads through a repartition topic.
    pub fn map<K2: Clone + 'static, V2: Clone + 'static>(
        &self,
        f: impl Fn(K, V) -> (K2, V2) + Send + Sync + 'static,
    ) -> KStream<K2, V2> {
        let f = Arc::new(f);
        self.add_op("MAP", Named::default(), true, move || {
            let f = f.clone();
            Box::new(move |r: Record<K, V>, ctx| {
                let (key, value, rest) = r.into_parts();
                let (k2, v2) = f(key, value);
                ctx.forward(rest.with_key(k2).with_value(v2))
            })
        })
    }

    /// A new value for every record; the key stays (no repartition needed).
    pub fn map_values<V2: Clone + 'static>(
        &self,
        f: impl Fn(V) -> V2 + Send + Sync + 'static,
    ) -> KStream<K, V2> {
        let f = Arc::new(f);
        self.add_op("MAPVALUES", Named::default(), false, move || {
            let f = f.clone();
            Box::new(move |r: Record<K, V>, ctx| ctx.forward(r.map_value(|v| f(v))))
        })
    }

    /// A new value for every record from its key and value; the key stays.
    pub fn map_values_with_key<V2: Clone + 'static>(
        &self,
        f: impl Fn(&K, V) -> V2 + Send + Sync + 'static,
    ) -> KStream<K, V2> {
        let f = Arc::new(f);
        self.add_op("MAPVALUES", Named::default(), false, move || {
            let f = f.clone();
            Box::new(move |r: Record<K, V>, ctx| {
                let (key, value, rest) = r.into_parts();
                let v2 = f(&key, value);
                ctx.forward(rest.with_key(key).with_value(v2))
            })
        })
    }

    /// Zero or more records for every record (each with the input's timestamp and headers).
    /// The key may change.
    pub fn flat_map<K2, V2, I>(
        &self,
        f: impl Fn(K, V) -> I + Send + Sync + 'static,
    ) -> KStream<K2, V2>
    where
        K2: Clone + 'static,
        V2: Clone + 'static,
        I: IntoIterator<Item = (K2, V2)>,
    {
        let f = Arc::new(f);
        self.add_op("FLATMAP", Named::default(), true, move || {
            let f = f.clone();
            Box::new(move |r: Record<K, V>, ctx| {
                let (key, value, rest) = r.into_parts();
                for (k2, v2) in f(key, value) {
                    ctx.forward(rest.clone().with_key(k2).with_value(v2))?;
                }
                Ok(())
            })
        })
    }

    /// Zero or more values for every record, under its key.
    pub fn flat_map_values<V2, I>(
        &self,
        f: impl Fn(V) -> I + Send + Sync + 'static,
    ) -> KStream<K, V2>
    where
        V2: Clone + 'static,
        I: IntoIterator<Item = V2>,
    {
        let f = Arc::new(f);
        self.add_op("FLATMAPVALUES", Named::default(), false, move || {
            let f = f.clone();
            Box::new(move |r: Record<K, V>, ctx| {
                let (key, value, rest) = r.into_parts();
                for v2 in f(value) {
                    ctx.forward(rest.clone().with_key(key.clone()).with_value(v2))?;
                }
                Ok(())
            })
        })
    }

    /// A new key from every record's key and value; the value stays. The key changes: a
    /// stateful operator after it reads through a repartition topic.
    pub fn select_key<K2: Clone + 'static>(
        &self,
        f: impl Fn(&K, &V) -> K2 + Send + Sync + 'static,
    ) -> KStream<K2, V> {
        let f = Arc::new(f);
        self.add_op("KEY-SELECT", Named::default(), true, move || {
            let f = f.clone();
            Box::new(move |r: Record<K, V>, ctx| {
                let k2 = f(r.key(), r.value());
                ctx.forward(r.with_key(k2))
            })
        })
    }

    /// Calls `f(key, value)` for every record and passes the record on.
    pub fn peek(&self, f: impl Fn(&K, &V) + Send + Sync + 'static) -> Self {
        let f = Arc::new(f);
        self.add_op("PEEK", Named::default(), false, move || {
            let f = f.clone();
            Box::new(move |r: Record<K, V>, ctx| {
                f(r.key(), r.value());
                ctx.forward(r)
            })
        })
    }

    /// Calls `f(key, value)` for every record; the stream ends here.
    pub fn for_each(&self, f: impl Fn(&K, &V) + Send + Sync + 'static) {
        let f = Arc::new(f);
        self.add_op::<K, V>("FOREACH", Named::default(), false, move || {
            let f = f.clone();
            Box::new(move |r: Record<K, V>, _ctx| {
                f(r.key(), r.value());
                Ok(())
            })
        });
    }

    /// Splits the stream into named branches: each record goes to the first branch whose
    /// predicate holds (see [`BranchedKStream`]). Branch names are prefixed with `named`.
    pub fn split(&self, named: Named) -> BranchedKStream<K, V> {
        BranchedKStream {
            stream: self.clone(),
            prefix: named.0.unwrap_or_default(),
            branches: vec![],
        }
    }

    /// One stream of the records of both (each keeps its timestamp).
    pub fn merge(&self, other: &KStream<K, V>) -> Self {
        let path = format!("merge({},{})", self.path, other.path);
        let explicit = self.explicit(None);
        let mut g = self.graph.borrow_mut();
        let name = g.node_name("MERGE", &path, explicit.as_deref());
        g.topology.add_processor(
            &name,
            || Op::<K, V, K, V>::new(Box::new(|r, ctx| ctx.forward(r))),
            [self.node.as_str(), other.node.as_str()],
        );
        drop(g);
        KStream::new(
            self.graph.clone(),
            name,
            path,
            self.key_changed || other.key_changed,
        )
    }

    /// Writes the stream to a repartition topic and reads it back, so that records with the
    /// same key land in the same partition (and task).
    pub fn repartition(&self, options: Repartitioned<K, V>) -> Self {
        // Operators that repartition one stream alike (two aggregations of a grouped stream,
        // an aggregation and a join of one re-keyed stream) share the repartition topic, as
        // Kafka Streams does with `topology.optimization=all`.
        let of = (self.node.clone(), options.name.clone(), options.partitions);
        let shared = self.graph.borrow().repartitions.get(&of).cloned();
        if let Some((source, path)) = shared {
            return KStream::new(self.graph.clone(), source, path, false);
        }
        let path = format!("{}/repartition", self.path);
        let operator = format!("repartition after {}", self.node);
        let mut g = self.graph.borrow_mut();
        let topic = g.state_name("REPARTITION", &path, options.name.as_deref(), &operator);
        g.topology.add_repartition_topic(&topic, options.partitions);
        let sink = format!("{topic}-sink");
        let source = format!("{topic}-source");
        g.topology.add_sink(
            &sink,
            Sink::new(topic.clone(), options.keys.clone(), options.values.clone()),
            [self.node.as_str()],
        );
        g.topology.add_source(
            &source,
            streams_core::topology::Source::new([topic], options.keys, options.values),
        );
        g.repartitions.insert(of, (source.clone(), path.clone()));
        drop(g);
        KStream::new(self.graph.clone(), source, path, false)
    }

    /// Writes the stream to `topic` with the serdes of its types.
    pub fn to(&self, topic: &str)
    where
        K: DefaultSerde,
        V: DefaultSerde,
    {
        self.to_with(topic, Produced::default());
    }

    /// Writes the stream to `topic` as `produced` says.
    pub fn to_with(&self, topic: &str, produced: Produced<K, V>) {
        let path = format!("{}/sink:{topic}", self.path);
        let explicit = self.explicit(produced.name.as_deref());
        let mut g = self.graph.borrow_mut();
        let name = g.node_name("SINK", &path, explicit.as_deref());
        let mut sink = Sink::new(topic, produced.keys, produced.values);
        if let Some(p) = produced.partitioner {
            sink = sink.with_partitioner(move |k, v, n| p(k, v, n));
        }
        g.topology.add_sink(&name, sink, [self.node.as_str()]);
    }

    /// Writes each record to the topic `chooser(key, value)` names (it must exist), as
    /// `produced` says.
    pub fn to_chosen_topic(
        &self,
        chooser: impl Fn(&K, &V) -> String + Send + Sync + 'static,
        produced: Produced<K, V>,
    ) {
        let path = format!("{}/sink:chosen", self.path);
        let explicit = self.explicit(produced.name.as_deref());
        let mut g = self.graph.borrow_mut();
        let name = g.node_name("SINK", &path, explicit.as_deref());
        let mut sink = Sink::to_chosen_topic(chooser, produced.keys, produced.values);
        if let Some(p) = produced.partitioner {
            sink = sink.with_partitioner(move |k, v, n| p(k, v, n));
        }
        g.topology.add_sink(&name, sink, [self.node.as_str()]);
    }

    /// Runs a Processor API processor on the stream, with access to the stores named in
    /// `stores` (added with `StreamsBuilder::add_state_store`). It may change the key.
    pub fn process<P, F>(&self, supplier: F, stores: &[&str]) -> KStream<P::KeyOut, P::ValueOut>
    where
        P: Processor<KeyIn = K, ValueIn = V>,
        P::KeyOut: Clone,
        P::ValueOut: Clone,
        F: Fn() -> P + Send + Sync + 'static,
    {
        let path = format!("{}/process", self.path);
        let explicit = self.explicit(None);
        let mut g = self.graph.borrow_mut();
        let name = g.node_name("PROCESSOR", &path, explicit.as_deref());
        g.topology
            .add_processor(&name, supplier, [self.node.as_str()]);
        for s in stores {
            g.connect_store(s, &name);
        }
        drop(g);
        KStream::new(self.graph.clone(), name, path, true)
    }

    /// Runs a [`FixedKeyProcessor`] on the stream (it cannot change the key: no repartition
    /// is needed after it), with access to the stores named in `stores`.
    pub fn process_values<P, F>(&self, supplier: F, stores: &[&str]) -> KStream<K, P::ValueOut>
    where
        P: FixedKeyProcessor<Key = K, ValueIn = V>,
        F: Fn() -> P + Send + Sync + 'static,
    {
        let path = format!("{}/process-values", self.path);
        let explicit = self.explicit(None);
        let mut g = self.graph.borrow_mut();
        let name = g.node_name("PROCESSVALUES", &path, explicit.as_deref());
        g.topology
            .add_fixed_key_processor(&name, supplier, [self.node.as_str()]);
        for s in stores {
            g.connect_store(s, &name);
        }
        drop(g);
        KStream::new(self.graph.clone(), name, path, self.key_changed)
    }

    /// The latest value per key as a table, in a store named by `materialized` (or
    /// generated), with the key serde of the key type. When the key changed upstream, the
    /// stream goes through a repartition topic first.
    pub fn to_table(&self, materialized: Materialized<V>) -> KTable<K, V>
    where
        K: DefaultSerde,
    {
        self.to_table_with(K::default_serde(), materialized)
    }

    /// [`to_table`](Self::to_table) with the key serde `keys`.
    pub fn to_table_with(
        &self,
        keys: impl Serde<K>,
        materialized: Materialized<V>,
    ) -> KTable<K, V> {
        let keys: Arc<dyn Serde<K>> = Arc::new(keys);
        let values = materialized.values.clone();
        let input = if self.key_changed {
            self.repartition(Repartitioned {
                keys: keys.clone(),
                values: values.clone(),
                name: None,
                partitions: None,
            })
        } else {
            self.clone()
        };
        let path = format!("{}/to-table", input.path);
        let explicit = self.explicit(None);
        let mut g = self.graph.borrow_mut();
        let node = g.node_name("TOTABLE", &path, explicit.as_deref());
        let store = g.state_name(
            "TOTABLE-STATE-STORE",
            &path,
            materialized.name.as_deref(),
            &format!("to_table ({node})"),
        );
        let (store_name, op_keys) = (store.clone(), keys.clone());
        g.topology.add_processor(
            &node,
            move || {
                let (store, keys) = (store_name.clone(), op_keys.clone());
                Op::<K, V, K, Change<V>>::new(Box::new(
                    move |r: Record<K, V>, ctx: &mut ProcessorContext<'_, K, Change<V>>| {
                        if crate::ops::skip_null_key(&*keys, r.key(), ctx, &store)? {
                            return Ok(());
                        }
                        let s = ctx.state_store::<KeyValueStore<K, V>>(&store)?;
                        let (key, value, rest) = r.into_parts();
                        let old = s.get(&key)?;
                        s.put(&key, &value)?;
                        let change = Change {
                            new: Some(value),
                            old,
                        };
                        ctx.forward(rest.with_key(key).with_value(change))
                    },
                ))
            },
            [input.node.as_str()],
        );
        let builder = configure_store!(
            KeyValueStore::<K, V>::builder(&store, keys.clone(), values.clone()),
            materialized
        );
        g.topology.add_state_store(builder, [node.as_str()]);
        drop(g);
        KTable {
            graph: self.graph.clone(),
            node,
            path,
            view: Some(TableView::plain(&store)),
            store: Some(store),
            keys,
            values,
        }
    }

    /// Groups the stream by its key, with the serdes of its types (used for the repartition
    /// topic when the key changed upstream).
    pub fn group_by_key(&self) -> KGroupedStream<K, V>
    where
        K: DefaultSerde,
        V: DefaultSerde,
    {
        self.group_by_key_with(Grouped::default())
    }

    /// Groups the stream by its key, as `grouped` says.
    pub fn group_by_key_with(&self, grouped: Grouped<K, V>) -> KGroupedStream<K, V> {
        KGroupedStream {
            stream: self.clone(),
            grouped,
        }
    }

    /// Groups the stream by a new key, `f(key, value)`: the next aggregation reads through a
    /// repartition topic.
    pub fn group_by<K2>(
        &self,
        f: impl Fn(&K, &V) -> K2 + Send + Sync + 'static,
    ) -> KGroupedStream<K2, V>
    where
        K2: DefaultSerde + Clone,
        V: DefaultSerde,
    {
        self.select_key(f).group_by_key()
    }

    /// Groups the stream by a new key, `f(key, value)`, as `grouped` says.
    pub fn group_by_with<K2: Clone + 'static>(
        &self,
        f: impl Fn(&K, &V) -> K2 + Send + Sync + 'static,
        grouped: Grouped<K2, V>,
    ) -> KGroupedStream<K2, V> {
        self.select_key(f).group_by_key_with(grouped)
    }
}

type Predicate<K, V> = Arc<dyn Fn(&K, &V) -> bool + Send + Sync>;

/// A stream being split into branches: [`branch`](Self::branch) adds one, then
/// [`default_branch`](Self::default_branch) or [`no_default_branch`](Self::no_default_branch)
/// returns the branches by name (`<prefix><branch name>`). A record goes to the first branch
/// whose predicate holds; with no default branch, records no predicate takes are dropped.
pub struct BranchedKStream<K, V> {
    stream: KStream<K, V>,
    prefix: String,
    branches: Vec<(String, Predicate<K, V>)>,
}

impl<K: Clone + 'static, V: Clone + 'static> BranchedKStream<K, V> {
    /// Adds the branch `name` for the records where `predicate(key, value)` holds (and no
    /// earlier branch's).
    pub fn branch(
        mut self,
        name: &str,
        predicate: impl Fn(&K, &V) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.branches.push((name.to_string(), Arc::new(predicate)));
        self
    }

    /// Ends the split with a branch `name` for the records no other branch took.
    pub fn default_branch(mut self, name: &str) -> BTreeMap<String, KStream<K, V>> {
        self.branches
            .push((name.to_string(), Arc::new(|_, _| true)));
        self.finish()
    }

    /// Ends the split; records no branch took are dropped.
    pub fn no_default_branch(self) -> BTreeMap<String, KStream<K, V>> {
        self.finish()
    }

    fn finish(self) -> BTreeMap<String, KStream<K, V>> {
        let s = &self.stream;
        let path = format!("{}/split", s.path);
        let mut g = s.graph.borrow_mut();
        let explicit = (!self.prefix.is_empty())
            .then(|| self.prefix.clone())
            .or_else(|| s.name_next.clone());
        let split_name = g.node_name("BRANCH", &path, explicit.as_deref());
        let names: Vec<String> = self
            .branches
            .iter()
            .map(|(b, _)| format!("{}{b}", self.prefix))
            .collect();
        let child_names: Vec<String> = names.iter().map(|n| format!("{split_name}-{n}")).collect();
        let routes: Arc<Vec<(String, Predicate<K, V>)>> = Arc::new(
            child_names
                .iter()
                .cloned()
                .zip(self.branches.iter().map(|(_, p)| p.clone()))
                .collect(),
        );
        g.topology.add_processor(
            &split_name,
            move || {
                let routes = routes.clone();
                Op::<K, V, K, V>::new(Box::new(move |r, ctx| {
                    match routes.iter().find(|(_, p)| p(r.key(), r.value())) {
                        Some((child, _)) => ctx.forward_to(child, r),
                        None => Ok(()),
                    }
                }))
            },
            [s.node.as_str()],
        );
        let mut out = BTreeMap::new();
        for (name, child) in names.into_iter().zip(child_names) {
            let branch_path = format!("{path}/{name}");
            g.node_name("BRANCH-CHILD", &branch_path, Some(&child));
            g.topology.add_processor(
                &child,
                || Op::<K, V, K, V>::new(Box::new(|r, ctx| ctx.forward(r))),
                [split_name.as_str()],
            );
            out.insert(
                name,
                KStream::new(s.graph.clone(), child, branch_path, s.key_changed),
            );
        }
        out
    }
}
