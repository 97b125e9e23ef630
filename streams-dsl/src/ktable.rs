//! [`KTable`]: a changelog stream, the latest value per key, kept in a store.

use std::sync::Arc;

use streams_core::serde::{DefaultSerde, Nullable, Serde};
use streams_core::topology::Sink;
use streams_core::Record;

use crate::change::{Change, Delta, DeltaSerde};
use crate::handles::KGroupedTable;
use crate::handles::KStream;
use crate::handles::KTable;
use crate::ops::Op;
use crate::options::Grouped;
use crate::view::TableView;

impl<K: Clone + 'static, V: Clone + 'static> KTable<K, V> {
    /// The name of the store holding the table, if it is materialized.
    pub fn store_name(&self) -> Option<&str> {
        self.store.as_deref()
    }

    /// Adds a node turning each change of this table into what `f` returns.
    fn add_change_op<K2: Clone + 'static, V2: Clone + 'static>(
        &self,
        kind: &str,
        f: impl Fn(&K, Change<V>) -> Option<(K2, V2)> + Send + Sync + 'static,
    ) -> (String, String) {
        let path = format!("{}/{}", self.path, kind.to_ascii_lowercase());
        let mut g = self.graph.borrow_mut();
        let name = g.node_name(kind, &path, None);
        let f = Arc::new(f);
        g.topology.add_processor(
            &name,
            move || {
                let f = f.clone();
                Op::<K, Change<V>, K2, V2>::new(Box::new(move |r: Record<K, Change<V>>, ctx| {
                    let (key, change, rest) = r.into_parts();
                    match f(&key, change) {
                        Some((k2, v2)) => ctx.forward(rest.with_key(k2).with_value(v2)),
                        None => Ok(()),
                    }
                }))
            },
            [self.node.as_str()],
        );
        (name, path)
    }

    /// The table's updates as a stream of their new values; deletions are left out (see
    /// [`to_changelog_stream`](Self::to_changelog_stream)).
    pub fn to_stream(&self) -> KStream<K, V> {
        let (name, path) =
            self.add_change_op("TOSTREAM", |k, c: Change<V>| c.new.map(|v| (k.clone(), v)));
        KStream::new(self.graph.clone(), name, path, false)
    }

    /// The table's updates as a stream: `Some(new value)`, or `None` for a deletion (a
    /// tombstone when written to a topic with `Nullable`).
    pub fn to_changelog_stream(&self) -> KStream<K, Option<V>> {
        let (name, path) =
            self.add_change_op("TOSTREAM", |k, c: Change<V>| Some((k.clone(), c.new)));
        KStream::new(self.graph.clone(), name, path, false)
    }

    fn derived<V2: 'static>(
        &self,
        name: String,
        path: String,
        values: Arc<dyn Serde<V2>>,
        view: Option<TableView<K, V2>>,
    ) -> KTable<K, V2> {
        KTable {
            graph: self.graph.clone(),
            node: name,
            path,
            store: None,
            view,
            keys: self.keys.clone(),
            values,
        }
    }

    /// A table of `f(value)` per key; updates keep their timestamps.
    pub fn map_values<V2: Clone + 'static>(
        &self,
        f: impl Fn(V) -> V2 + Send + Sync + 'static,
        values: impl Serde<V2>,
    ) -> KTable<K, V2> {
        let f = Arc::new(f);
        let g = f.clone();
        let (name, path) = self.add_change_op("MAPVALUES", move |k, c: Change<V>| {
            Some((
                k.clone(),
                Change {
                    new: c.new.map(&*f),
                    old: c.old.map(&*f),
                },
            ))
        });
        let view = self.view.as_ref().map(|v| v.derive(move |_, x| Some(g(x))));
        self.derived(name, path, Arc::new(values), view)
    }

    /// The rows for which `predicate(key, value)` holds. A row that stops matching is deleted
    /// downstream (a change with no new value), as in Kafka Streams.
    pub fn filter(&self, predicate: impl Fn(&K, &V) -> bool + Send + Sync + 'static) -> Self {
        self.filter_kind("FILTER", move |k, v| predicate(k, v))
    }

    /// The rows for which `predicate(key, value)` does not hold.
    pub fn filter_not(&self, predicate: impl Fn(&K, &V) -> bool + Send + Sync + 'static) -> Self {
        self.filter_kind("FILTER-NOT", move |k, v| !predicate(k, v))
    }

    fn filter_kind(
        &self,
        kind: &str,
        keep: impl Fn(&K, &V) -> bool + Send + Sync + 'static,
    ) -> Self {
        let keep = Arc::new(keep);
        let view_keep = keep.clone();
        let (name, path) = self.add_change_op(kind, move |k, c: Change<V>| {
            let new = c.new.filter(|v| keep(k, v));
            let old = c.old.filter(|v| keep(k, v));
            // Nothing to say when the row neither matches now nor did before.
            (new.is_some() || old.is_some()).then(|| (k.clone(), Change { new, old }))
        });
        let view = self
            .view
            .as_ref()
            .map(|v| v.derive(move |k, x| view_keep(k, &x).then_some(x)));
        self.derived(name, path, self.values.clone(), view)
    }

    /// Re-groups the table by `selector(key, value) -> (new key, new value)`, through a
    /// repartition topic, for [`KGroupedTable::aggregate`] (with an adder and a subtractor) or
    /// [`KGroupedTable::count`]: when a row changes, its old value is subtracted from the
    /// group it was in and its new value added to the group it is in now.
    pub fn group_by<K2, V2>(
        &self,
        selector: impl Fn(&K, &V) -> (K2, V2) + Send + Sync + 'static,
    ) -> KGroupedTable<K2, V2>
    where
        K2: DefaultSerde + Clone,
        V2: DefaultSerde + Clone,
    {
        self.group_by_with(selector, Grouped::default())
    }

    /// [`group_by`](Self::group_by) with the serdes and name of `grouped`.
    pub fn group_by_with<K2: Clone + 'static, V2: Clone + 'static>(
        &self,
        selector: impl Fn(&K, &V) -> (K2, V2) + Send + Sync + 'static,
        grouped: Grouped<K2, V2>,
    ) -> KGroupedTable<K2, V2> {
        let selector = Arc::new(selector);
        let path = format!("{}/group-by", self.path);
        let mut g = self.graph.borrow_mut();
        let name = g.node_name("KTABLE-GROUPBY", &path, None);
        let select = selector.clone();
        let group_keys = grouped.keys.clone();
        // Each change becomes a subtraction of the old row from its group, then an addition of
        // the new one to its group; one record doing both when the group stays the same (its
        // key's bytes are equal), as Kafka Streams' KTableRepartitionMap does since KIP-904.
        g.topology.add_processor(
            &name,
            move || {
                let (select, group_keys) = (select.clone(), group_keys.clone());
                Op::<K, Change<V>, K2, Delta<V2>>::new(Box::new(
                    move |r: Record<K, Change<V>>, ctx| {
                        let (key, change, rest) = r.into_parts();
                        let old = change.old.as_ref().map(|v| select(&key, v));
                        let new = change.new.as_ref().map(|v| select(&key, v));
                        if let (Some((ko, vo)), Some((kn, vn))) = (&old, &new) {
                            let bytes = |k: &K2| group_keys.serialize("group-by", k);
                            if bytes(ko)? == bytes(kn)? {
                                let delta = Delta {
                                    subtract: Some(vo.clone()),
                                    add: Some(vn.clone()),
                                };
                                return ctx.forward(rest.with_key(kn.clone()).with_value(delta));
                            }
                        }
                        if let Some((k2, v2)) = old {
                            let delta = Delta {
                                subtract: Some(v2),
                                add: None,
                            };
                            ctx.forward(rest.clone().with_key(k2).with_value(delta))?;
                        }
                        if let Some((k2, v2)) = new {
                            let delta = Delta {
                                subtract: None,
                                add: Some(v2),
                            };
                            ctx.forward(rest.with_key(k2).with_value(delta))?;
                        }
                        Ok(())
                    },
                ))
            },
            [self.node.as_str()],
        );
        let operator = format!("table group_by after {}", self.node);
        let topic = g.state_name(
            "KTABLE-REPARTITION",
            &path,
            grouped.name.as_deref(),
            &operator,
        );
        g.topology.add_repartition_topic(&topic, None);
        let deltas: Arc<dyn Serde<Delta<V2>>> = Arc::new(DeltaSerde(grouped.values.clone()));
        let (sink, source) = (format!("{topic}-sink"), format!("{topic}-source"));
        g.topology.add_sink(
            &sink,
            Sink::new(topic.clone(), grouped.keys.clone(), deltas.clone()),
            [name.as_str()],
        );
        g.topology.add_source(
            &source,
            streams_core::topology::Source::new([topic], grouped.keys.clone(), deltas),
        );
        drop(g);
        KGroupedTable {
            graph: self.graph.clone(),
            node: source,
            path,
            keys: grouped.keys,
            values: grouped.values,
        }
    }

    /// Writes the table's updates to `topic` with the table's serdes; a deletion is written as
    /// a tombstone (null value).
    pub fn to(&self, topic: &str) {
        let stream = self.to_changelog_stream();
        let path = format!("{}/sink:{topic}", self.path);
        let mut g = self.graph.borrow_mut();
        let name = g.node_name("SINK", &path, None);
        g.topology.add_sink(
            &name,
            Sink::new(topic, self.keys.clone(), Nullable(self.values.clone())),
            [stream.node.as_str()],
        );
    }
}
