//! [`TopologyBuilder`]: nodes and stores declared by name, checked and frozen by `build`.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::nodes::{processor_kind, sink_kind, NodeKind, Sink, Source};
use super::Topology;
use crate::node::KvType;
use crate::processor::{FixedKey, FixedKeyProcessor, Processor};
use crate::store::StoreBuilder;
use crate::{Error, Result};

/// A node as declared: its kind, its parents by name, and its input and output types.
pub(super) struct NodeDef {
    pub(super) name: Arc<str>,
    pub(super) kind: NodeKind,
    pub(super) parents: Vec<String>,
    pub(super) input: Option<KvType>,
    pub(super) output: Option<KvType>,
}

/// Builds a [`Topology`]; every method chains, and [`build`](Self::build) reports the first
/// mistake.
#[derive(Default)]
pub struct TopologyBuilder {
    pub(super) nodes: Vec<NodeDef>,
    pub(super) stores: Vec<(Arc<dyn StoreBuilder>, Vec<String>)>,
    pub(super) repartition: BTreeMap<String, Option<i32>>,
    pub(super) globals: Vec<(String, String)>,
    errors: Vec<String>,
}

impl TopologyBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        Self::default()
    }

    fn push(&mut self, def: NodeDef) -> &mut Self {
        if def.name.is_empty() {
            self.errors.push("a node name is empty".into());
        }
        if self.nodes.iter().any(|n| n.name == def.name) {
            self.errors
                .push(format!("node name {} is used twice", def.name));
        }
        self.nodes.push(def);
        self
    }

    /// Adds a source node reading `source`'s topics.
    pub fn add_source<K: Clone + 'static, V: Clone + 'static>(
        &mut self,
        name: &str,
        source: Source<K, V>,
    ) -> &mut Self {
        if source.topics.is_empty() {
            self.errors.push(format!("source {name} has no topics"));
        }
        let topics = source.topics.clone();
        self.push(NodeDef {
            name: name.into(),
            kind: NodeKind::Source {
                topics,
                decoder: Arc::new(source),
            },
            parents: vec![],
            input: None,
            output: Some(KvType::of::<K, V>()),
        })
    }

    /// Adds a processor made by `supplier` (called once per task), fed by `parents`.
    pub fn add_processor<P, F, I, S>(&mut self, name: &str, supplier: F, parents: I) -> &mut Self
    where
        P: Processor,
        F: Fn() -> P + Send + Sync + 'static,
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.push(NodeDef {
            name: name.into(),
            kind: processor_kind(name, supplier),
            parents: parents.into_iter().map(Into::into).collect(),
            input: Some(KvType::of::<P::KeyIn, P::ValueIn>()),
            output: Some(KvType::of::<P::KeyOut, P::ValueOut>()),
        })
    }

    /// Adds a processor that cannot change the key ([`FixedKeyProcessor`]), made by
    /// `supplier` (called once per task), fed by `parents`.
    pub fn add_fixed_key_processor<P, F, I, S>(
        &mut self,
        name: &str,
        supplier: F,
        parents: I,
    ) -> &mut Self
    where
        P: FixedKeyProcessor,
        F: Fn() -> P + Send + Sync + 'static,
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.add_processor(name, move || FixedKey(supplier()), parents)
    }

    /// Adds a sink node writing what `parents` forward.
    pub fn add_sink<K: 'static, V: 'static, I, S>(
        &mut self,
        name: &str,
        sink: Sink<K, V>,
        parents: I,
    ) -> &mut Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.push(NodeDef {
            name: name.into(),
            kind: sink_kind(sink),
            parents: parents.into_iter().map(Into::into).collect(),
            input: Some(KvType::of::<K, V>()),
            output: None,
        })
    }

    /// Declares a state store used by `processors`; each task gets its own instance.
    pub fn add_state_store<I, S>(&mut self, store: impl StoreBuilder, processors: I) -> &mut Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let users: Vec<String> = processors.into_iter().map(Into::into).collect();
        if self.stores.iter().any(|(s, _)| s.name() == store.name()) {
            self.errors
                .push(format!("store name {} is used twice", store.name()));
        }
        if users.is_empty() {
            self.errors.push(format!(
                "store {} is connected to no processor",
                store.name()
            ));
        }
        self.stores.push((Arc::new(store), users));
        self
    }

    /// Declares the global store `name`, holding every partition of `topic` (its latest value
    /// per key; a null value deletes the key). Every instance reads the whole topic into it
    /// before any task processes and keeps it up to date while running; every processor can
    /// read it ([`ProcessorContext::global_store`](crate::processor::ProcessorContext::global_store)),
    /// and so can interactive queries (`KafkaStreams::global_store`). The topic is its log: no
    /// changelog is written.
    pub fn add_global_store(&mut self, name: &str, topic: &str) -> &mut Self {
        self.globals.push((name.to_string(), topic.to_string()));
        self
    }

    /// Gives `processor` access to stores declared earlier with
    /// [`add_state_store`](Self::add_state_store) (a join reading the table's store, for
    /// example). The processor and the stores' other users then run in one sub-topology.
    pub fn connect_processor_and_state_stores<I, S>(
        &mut self,
        processor: &str,
        stores: I,
    ) -> &mut Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        for store in stores {
            let store = store.as_ref();
            match self.stores.iter_mut().find(|(s, _)| s.name() == store) {
                Some((_, users)) => users.push(processor.to_string()),
                None => self.errors.push(format!(
                    "processor {processor} is connected to store {store}, which was not added"
                )),
            }
        }
        self
    }

    /// Declares `name` as a repartition topic: sources and sinks may use `name`, and the
    /// runtime creates and uses `<application id>-<name>-repartition` with `partitions`
    /// partitions (by default the partition count of the topics its readers read beside it, a
    /// join's other side, so that they are co-partitioned; else the largest partition count
    /// among the source topics of the sub-topologies writing to it).
    pub fn add_repartition_topic(&mut self, name: &str, partitions: Option<i32>) -> &mut Self {
        if partitions.is_some_and(|p| p < 1) {
            self.errors.push(format!(
                "repartition topic {name} needs at least one partition"
            ));
        }
        self.repartition.insert(name.to_string(), partitions);
        self
    }

    /// Checks the graph and freezes it.
    pub fn build(&mut self) -> Result<Topology> {
        let builder = std::mem::take(self);
        if let Some(e) = builder.errors.first() {
            return Err(Error::Config(format!("topology: {e}")));
        }
        super::validate::freeze(builder)
    }
}
