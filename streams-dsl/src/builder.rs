//! [`StreamsBuilder`]: the entry point of the DSL, and the graph it builds.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use std::sync::Arc;

use streams_core::processor::ProcessorContext;
use streams_core::serde::{DefaultSerde, Nullable, Serde};
use streams_core::store::{KeyValueStore, StoreBuilder};
use streams_core::topology::{Source, Topology, TopologyBuilder};
use streams_core::{Error, Record, Result};

use crate::change::Change;
use crate::graph::{Graph, Shared};
use crate::handles::KStream;
use crate::handles::{GlobalKTable, KTable};
use crate::ops::Op;
use crate::options::{Consumed, Materialized};
use crate::view::TableView;

/// Builds a topology with the DSL: streams and tables read from topics, operators on them,
/// results written to topics. [`build`](Self::build) returns the `streams-core` topology to
/// run with `KafkaStreams` or the `TopologyTestDriver`.
///
/// ```
/// use streams_dsl::StreamsBuilder;
/// use streams_core::TopologyTestDriver;
/// use streams_core::serde::Utf8;
///
/// let builder = StreamsBuilder::new();
/// builder
///     .stream::<String, String>("words")
///     .filter(|_, word| !word.is_empty())
///     .map_values(|word| word.to_uppercase())
///     .to("loud-words");
/// let driver = TopologyTestDriver::new(builder.build()?)?;
/// let words = driver.input_topic("words", Utf8, Utf8);
/// let loud = driver.output_topic::<String, String>("loud-words", Utf8, Utf8);
/// words.pipe("a".to_string(), "hi".to_string())?;
/// words.pipe("b".to_string(), String::new())?;
/// assert_eq!(loud.read_key_values()?, vec![("a".to_string(), "HI".to_string())]);
/// # Ok::<(), streams_core::Error>(())
/// ```
pub struct StreamsBuilder {
    graph: Shared,
}

impl Default for StreamsBuilder {
    fn default() -> Self {
        Self::new()
    }
}

/// One topic or several.
pub trait IntoTopics {
    /// The topic names.
    fn into_topics(self) -> Vec<String>;
}

impl IntoTopics for &str {
    fn into_topics(self) -> Vec<String> {
        vec![self.to_string()]
    }
}

impl IntoTopics for &String {
    fn into_topics(self) -> Vec<String> {
        vec![self.clone()]
    }
}

impl IntoTopics for String {
    fn into_topics(self) -> Vec<String> {
        vec![self]
    }
}

impl<const N: usize> IntoTopics for [&str; N] {
    fn into_topics(self) -> Vec<String> {
        self.iter().map(|t| t.to_string()).collect()
    }
}

impl IntoTopics for Vec<String> {
    fn into_topics(self) -> Vec<String> {
        self
    }
}

impl IntoTopics for &[&str] {
    fn into_topics(self) -> Vec<String> {
        self.iter().map(|t| t.to_string()).collect()
    }
}

impl StreamsBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        StreamsBuilder {
            graph: Rc::new(RefCell::new(Graph {
                topology: TopologyBuilder::new(),
                nodes: HashMap::new(),
                stateful: BTreeMap::new(),
                user_stores: vec![],
                store_users: HashMap::new(),
                materialized_for_joins: HashMap::new(),
                repartitions: HashMap::new(),
                errors: vec![],
            })),
        }
    }

    /// A stream of the records of `topics`, with the serdes of the key and value types.
    pub fn stream<K, V>(&self, topics: impl IntoTopics) -> KStream<K, V>
    where
        K: DefaultSerde + Clone,
        V: DefaultSerde + Clone,
    {
        self.stream_with(topics, Consumed::default())
    }

    /// A stream of the records of `topics`, read as `consumed` says.
    pub fn stream_with<K, V>(
        &self,
        topics: impl IntoTopics,
        consumed: Consumed<K, V>,
    ) -> KStream<K, V>
    where
        K: Clone + 'static,
        V: Clone + 'static,
    {
        let topics = topics.into_topics();
        let path = format!("source:{}", topics.join(","));
        let mut g = self.graph.borrow_mut();
        let name = g.node_name("SOURCE", &path, consumed.name.as_deref());
        let mut source = Source::new(topics, consumed.keys, consumed.values);
        if let Some(extract) = consumed.extractor {
            source = source.with_timestamp_extractor(move |r, pt| extract(r, pt));
        }
        g.topology.add_source(&name, source);
        drop(g);
        KStream::new(self.graph.clone(), name, path, false)
    }

    /// A table of the latest value per key of `topic`, kept in a store (named by
    /// `materialized`, or generated), with the serdes of the key and value types. A record
    /// with a null value deletes its key (a deletion downstream, when the key existed); every
    /// other record updates the table. The store has a changelog topic of its own, as in Kafka
    /// Streams; [`Materialized::reuse_source_topic_as_changelog`] makes the (compacted) topic
    /// the changelog instead.
    pub fn table<K, V>(&self, topic: &str, materialized: Materialized<V>) -> KTable<K, V>
    where
        K: DefaultSerde + Clone,
        V: Clone + 'static,
    {
        self.table_with(topic, K::default_serde(), materialized)
    }

    /// [`table`](Self::table) with the key serde `keys`.
    pub fn table_with<K, V>(
        &self,
        topic: &str,
        keys: impl Serde<K>,
        materialized: Materialized<V>,
    ) -> KTable<K, V>
    where
        K: Clone + 'static,
        V: Clone + 'static,
    {
        let keys: Arc<dyn Serde<K>> = Arc::new(keys);
        let values = materialized.values.clone();
        let path = format!("table:{topic}");
        let mut g = self.graph.borrow_mut();
        let source = g.node_name("SOURCE", &path, None);
        let node = g.node_name("TABLE-SOURCE", &path, None);
        let store = g.state_name(
            "STATE-STORE",
            &path,
            materialized.name.as_deref(),
            &format!("table of {topic}"),
        );
        g.topology.add_source(
            &source,
            Source::new([topic], keys.clone(), Nullable(values.clone())),
        );
        let store_name = store.clone();
        let key_serde = keys.clone();
        g.topology.add_processor(
            &node,
            move || {
                let (store, keys) = (store_name.clone(), key_serde.clone());
                Op::<K, Option<V>, K, Change<V>>::new(Box::new(
                    move |r: Record<K, Option<V>>, ctx: &mut ProcessorContext<'_, K, Change<V>>| {
                        // A record with a null key (a key serde that accepts nulls) updates
                        // no row: skipped, as Kafka Streams' table sources do.
                        if keys.serialize("table", r.key())?.is_none() {
                            tracing::warn!(task = %ctx.task_id(), "table: skipping a record with a null key");
                            ctx.record_dropped(streams_core::metrics::DropReason::NullKey);
                            return Ok(());
                        }
                        let s = ctx.state_store::<KeyValueStore<K, V>>(&store)?;
                        let (key, value, rest) = r.into_parts();
                        let old = s.get(&key)?;
                        match &value {
                            Some(v) => s.put(&key, v)?,
                            None if old.is_none() => return Ok(()),
                            None => {
                                s.delete(&key)?;
                            }
                        }
                        let change = Change { new: value, old };
                        ctx.forward(rest.with_key(key).with_value(change))
                    },
                ))
            },
            [source.as_str()],
        );
        let mut builder = KeyValueStore::<K, V>::builder(&store, keys.clone(), values.clone());
        if materialized.in_memory {
            builder = builder.in_memory();
        }
        if !materialized.logging {
            builder = builder.with_logging(false);
        } else if materialized.source_topic_as_changelog {
            // The topic is the table's log: no changelog topic of its own.
            builder = builder.with_source_topic_as_changelog(topic);
        }
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

    /// A global table of `topic` (every partition, on every instance), with the key serde of
    /// the key type; `materialized` names its store and gives the value serde (its store
    /// settings do not apply: global stores are kept in memory, read from the topic).
    pub fn global_table<K, V>(
        &self,
        topic: &str,
        materialized: Materialized<V>,
    ) -> GlobalKTable<K, V>
    where
        K: DefaultSerde,
        V: 'static,
    {
        self.global_table_with(topic, K::default_serde(), materialized)
    }

    /// [`global_table`](Self::global_table) with the key serde `keys`.
    pub fn global_table_with<K: 'static, V: 'static>(
        &self,
        topic: &str,
        keys: impl Serde<K>,
        materialized: Materialized<V>,
    ) -> GlobalKTable<K, V> {
        let mut g = self.graph.borrow_mut();
        let store = g.state_name(
            "GLOBAL-STORE",
            &format!("global-table:{topic}"),
            materialized.name.as_deref(),
            &format!("global table of {topic}"),
        );
        g.topology.add_global_store(&store, topic);
        GlobalKTable {
            store,
            keys: Arc::new(keys),
            values: materialized.values,
        }
    }

    /// Adds a store for processors added with [`KStream::process`] and
    /// [`KStream::process_values`], which name it among their stores.
    pub fn add_state_store(&self, store: impl StoreBuilder) -> &Self {
        let name = store.name().to_string();
        let mut g = self.graph.borrow_mut();
        g.state_name("STORE", &name, Some(&name), &format!("store {name}"));
        g.user_stores.push((
            name,
            Box::new(move |t: &mut TopologyBuilder, users: Vec<String>| {
                t.add_state_store(store, users);
            }),
        ));
        self
    }

    /// Checks what was built and returns the topology. Mistakes (a name used twice, two
    /// unnamed stateful operators that would share a generated name, and everything the
    /// topology itself checks) are reported here.
    pub fn build(self) -> Result<Topology> {
        let mut g = self.graph.borrow_mut();
        if !g.errors.is_empty() {
            return Err(Error::Config(format!(
                "streams builder: {}",
                g.errors.join("; ")
            )));
        }
        let stores = std::mem::take(&mut g.user_stores);
        for (name, add) in stores {
            let users = g.store_users.remove(&name).unwrap_or_default();
            add(&mut g.topology, users);
        }
        if let Some((store, _)) = g.store_users.iter().next() {
            return Err(Error::Config(format!(
                "streams builder: a processor uses store {store}, which was not added with add_state_store"
            )));
        }
        g.topology.build()
    }
}
