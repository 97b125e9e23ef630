//! [`KTable`]: a changelog stream, the latest value per key, kept in a store.

use std::sync::Arc;

use streams_core::serde::Serde;
use streams_core::topology::Sink;
use streams_core::Record;

use crate::builder::Shared;
use crate::kstream::KStream;
use crate::ops::Op;
use crate::options::Named;

/// A table: for each key, its latest value. Its updates flow downstream as records (one per
/// update, the key and the new value); the values are kept in the store
/// [`store_name`](Self::store_name) (readable with interactive queries).
///
/// ```
/// use streams_core::serde::Utf8;
/// use streams_core::store::KeyValueStore;
/// use streams_core::TopologyTestDriver;
/// use streams_dsl::{Materialized, StreamsBuilder};
///
/// let builder = StreamsBuilder::new();
/// let cards = builder.table::<String, String>("cards", Materialized::with(Utf8).named("cards"));
/// cards.map_values(|country| country.to_lowercase(), Utf8).to("card-countries");
/// let driver = TopologyTestDriver::new(builder.build()?)?;
/// let input = driver.input_topic("cards", Utf8, Utf8);
/// input.pipe("c1".to_string(), "FR".to_string())?;
/// input.pipe("c1".to_string(), "IT".to_string())?;
/// let latest = driver.with_store::<KeyValueStore<String, String>, _>("cards", |s| {
///     s.get(&"c1".to_string())
/// })??;
/// assert_eq!(latest.as_deref(), Some("IT"));
/// let out = driver.output_topic::<String, String>("card-countries", Utf8, Utf8);
/// assert_eq!(out.read_values()?, vec!["fr".to_string(), "it".to_string()]);
/// # Ok::<(), streams_core::Error>(())
/// ```
pub struct KTable<K, V> {
    pub(crate) graph: Shared,
    pub(crate) node: String,
    pub(crate) path: String,
    pub(crate) store: Option<String>,
    pub(crate) keys: Arc<dyn Serde<K>>,
    pub(crate) values: Arc<dyn Serde<V>>,
}

impl<K: Clone + 'static, V: Clone + 'static> KTable<K, V> {
    /// The name of the store holding the table, if it is materialized.
    pub fn store_name(&self) -> Option<&str> {
        self.store.as_deref()
    }

    /// The table's updates as a stream.
    pub fn to_stream(&self) -> KStream<K, V> {
        let path = format!("{}/to-stream", self.path);
        let mut g = self.graph.borrow_mut();
        let name = g.node_name("TOSTREAM", &path, None);
        g.topology.add_processor(
            &name,
            || Op::<K, V, K, V>::new(Box::new(|r, ctx| ctx.forward(r))),
            [self.node.as_str()],
        );
        drop(g);
        KStream::new(self.graph.clone(), name, path, false)
    }

    /// A table of `f(value)` per key; updates keep their timestamps.
    pub fn map_values<V2: Clone + 'static>(
        &self,
        f: impl Fn(V) -> V2 + Send + Sync + 'static,
        values: impl Serde<V2>,
    ) -> KTable<K, V2> {
        let f = Arc::new(f);
        let stream = self
            .to_stream()
            .add_op("MAPVALUES", Named::default(), false, move || {
                let f = f.clone();
                Box::new(move |r: Record<K, V>, ctx| ctx.forward(r.map_value(|v| f(v))))
            });
        KTable {
            graph: self.graph.clone(),
            node: stream.node,
            path: stream.path,
            store: None,
            keys: self.keys.clone(),
            values: Arc::new(values),
        }
    }

    /// Writes the table's updates to `topic`, with the table's serdes.
    pub fn to(&self, topic: &str) {
        let path = format!("{}/sink:{topic}", self.path);
        let mut g = self.graph.borrow_mut();
        let name = g.node_name("SINK", &path, None);
        g.topology.add_sink(
            &name,
            Sink::new(topic, self.keys.clone(), self.values.clone()),
            [self.node.as_str()],
        );
    }
}
