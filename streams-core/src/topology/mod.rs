//! Topologies: sources, processors, sinks and state stores wired into a graph.
//!
//! Build one with [`TopologyBuilder`]; [`TopologyBuilder::build`] checks it (unknown names,
//! cycles, types that do not match between a parent and a child, stores nobody uses, a topic
//! read by two sources) and splits it into sub-topologies: groups of nodes connected by
//! parent-child edges or by a shared store. A task runs one sub-topology on one partition.
//!
//! ```
//! use streams_core::serde::Utf8;
//! use streams_core::topology::{Sink, Source, TopologyBuilder};
//! # use streams_core::processor::{Processor, ProcessorContext};
//! # use streams_core::{Record, Result};
//! # struct Shout;
//! # impl Processor for Shout {
//! #     type KeyIn = String; type ValueIn = String; type KeyOut = String; type ValueOut = String;
//! #     fn process(&mut self, r: Record<String, String>, ctx: &mut ProcessorContext<'_, String, String>) -> Result<()> {
//! #         let v = r.value().to_uppercase(); ctx.forward(r.with_value(v))
//! #     }
//! # }
//!
//! let topology = TopologyBuilder::new()
//!     .add_source("in", Source::new(["words"], Utf8, Utf8))
//!     .add_processor("shout", || Shout, ["in"])
//!     .add_sink("out", Sink::new("loud-words", Utf8, Utf8), ["shout"])
//!     .build()
//!     .unwrap();
//! println!("{}", topology.describe());
//! assert_eq!(topology.subtopologies().len(), 1);
//! ```

mod builder;
mod describe;
mod nodes;
mod validate;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

pub use self::builder::TopologyBuilder;
pub use self::describe::TopologyDescription;
use self::nodes::{NodeKind, NoopNode};
pub use self::nodes::{
    Partitioner, Sink, Source, TimestampExtractor, TopicChooser, CHOSEN_PER_RECORD,
};
pub(crate) use self::nodes::{SourceDecoder, SourceParts};
use crate::node::{Node, NodeMeta};
use crate::store::{GlobalStore, GlobalStores, StoreBuilder};

/// A group of nodes that runs as one task per partition.
#[derive(Debug, Clone)]
pub struct SubTopology {
    /// Its number, the first part of its tasks' ids.
    pub id: u32,
    /// Its nodes, as indices into the topology.
    pub(crate) nodes: Vec<usize>,
    /// The topics its sources read (logical names; repartition topics unresolved).
    pub source_topics: Vec<String>,
    /// The topics its sinks write (logical names).
    pub sink_topics: Vec<String>,
    /// The stores its tasks own.
    pub stores: Vec<String>,
}

struct Inner {
    metas: Vec<NodeMeta>,
    kinds: Vec<NodeKind>,
    stores: Vec<Arc<dyn StoreBuilder>>,
    subtopologies: Vec<SubTopology>,
    repartition: BTreeMap<String, Option<i32>>,
    /// Global stores: `(store name, topic)`.
    globals: Vec<(String, String)>,
}

/// A checked, immutable topology; cheap to clone and share between threads.
#[derive(Clone)]
pub struct Topology {
    inner: Arc<Inner>,
    /// The contents of the global stores, shared by the clones given to one instance's
    /// threads; each instance (and test driver) starts with its own.
    global_stores: GlobalStores,
}

impl fmt::Debug for Topology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.describe())
    }
}

impl Topology {
    /// The sub-topologies, in the order of their first node.
    pub fn subtopologies(&self) -> &[SubTopology] {
        &self.inner.subtopologies
    }

    /// The global stores declared: `(store name, topic)`.
    pub fn global_tables(&self) -> &[(String, String)] {
        &self.inner.globals
    }

    /// The global store `name` of this instance, if declared.
    pub fn global_store(&self, name: &str) -> Option<GlobalStore> {
        self.global_stores.get(name)
    }

    pub(crate) fn global_stores(&self) -> &GlobalStores {
        &self.global_stores
    }

    /// The same topology with empty global stores of its own (one per instance).
    pub(crate) fn with_own_global_stores(&self) -> Topology {
        Topology {
            inner: self.inner.clone(),
            global_stores: GlobalStores::new(&self.inner.globals),
        }
    }

    /// The repartition topics declared, with their partition counts if given.
    pub fn repartition_topics(&self) -> &BTreeMap<String, Option<i32>> {
        &self.inner.repartition
    }

    /// The real name of a topic: repartition topics get the application id and a suffix.
    pub fn resolve_topic(&self, application_id: &str, topic: &str) -> String {
        if self.inner.repartition.contains_key(topic) {
            format!("{application_id}-{topic}-repartition")
        } else {
            topic.to_string()
        }
    }

    pub(crate) fn node_metas(&self) -> &[NodeMeta] {
        &self.inner.metas
    }

    pub(crate) fn store_builders(&self) -> &[Arc<dyn StoreBuilder>] {
        &self.inner.stores
    }

    /// A fresh instance of node `i` for a task, and for sources their decoder and topics.
    pub(crate) fn instantiate(
        &self,
        i: usize,
        application_id: &str,
    ) -> (Box<dyn Node>, Option<SourceParts>) {
        match &self.inner.kinds[i] {
            NodeKind::Source { topics, decoder } => {
                let resolved = topics
                    .iter()
                    .map(|t| self.resolve_topic(application_id, t))
                    .collect();
                (Box::new(NoopNode), Some((resolved, decoder.clone())))
            }
            NodeKind::Processor { factory } => (factory(), None),
            NodeKind::Sink { topic, factory } => (
                factory(
                    &self.resolve_topic(application_id, topic),
                    self.inner.metas[i].name.clone(),
                ),
                None,
            ),
        }
    }

    /// A text description: sub-topologies, their nodes with topics, stores and edges.
    pub fn describe(&self) -> TopologyDescription {
        TopologyDescription {
            topology: self.clone(),
        }
    }
}
