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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::Arc;

use crate::processor::{
    erase, restore, DynRecord, KvType, Node, NodeFactory, Processor, ProcessorNode, PunctuatorId,
};
use crate::serde::Serde;
use crate::store::StoreBuilder;
use crate::task::{NodeCtx, OutRecord, RawRecord};
use crate::{Error, Record, Result};

/// Picks an event timestamp for a record: `(record, partition time) -> timestamp`, where the
/// record carries the broker's timestamp and partition time is the largest timestamp seen so
/// far on its partition. A negative result marks the record invalid.
pub type TimestampExtractor<K, V> = Arc<dyn Fn(&Record<K, V>, i64) -> i64 + Send + Sync>;

/// Chooses a partition for an output record: `(key, value, partition count) -> partition`;
/// `None` leaves it to the producer's default (murmur2 of the key bytes, as the Java client).
pub type Partitioner<K, V> = Arc<dyn Fn(&K, &V, i32) -> Option<i32> + Send + Sync>;

/// A source node: topics to read and how to turn their bytes into records.
pub struct Source<K, V> {
    topics: Vec<String>,
    keys: Arc<dyn Serde<K>>,
    values: Arc<dyn Serde<V>>,
    extractor: Option<TimestampExtractor<K, V>>,
}

impl<K: Clone + 'static, V: Clone + 'static> Source<K, V> {
    /// Reads `topics` with the given key and value serdes; timestamps are the records' own.
    pub fn new<I, S>(topics: I, keys: impl Serde<K>, values: impl Serde<V>) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Source {
            topics: topics.into_iter().map(Into::into).collect(),
            keys: Arc::new(keys),
            values: Arc::new(values),
            extractor: None,
        }
    }

    /// Uses `extractor` for event time instead of the records' own timestamps.
    pub fn with_timestamp_extractor(
        mut self,
        extractor: impl Fn(&Record<K, V>, i64) -> i64 + Send + Sync + 'static,
    ) -> Self {
        self.extractor = Some(Arc::new(extractor));
        self
    }
}

/// A sink node: the topic to write and how to turn records into bytes.
pub struct Sink<K, V> {
    topic: String,
    keys: Arc<dyn Serde<K>>,
    values: Arc<dyn Serde<V>>,
    partitioner: Option<Partitioner<K, V>>,
}

impl<K: 'static, V: 'static> Sink<K, V> {
    /// Writes to `topic` with the given key and value serdes.
    pub fn new(topic: impl Into<String>, keys: impl Serde<K>, values: impl Serde<V>) -> Self {
        Sink {
            topic: topic.into(),
            keys: Arc::new(keys),
            values: Arc::new(values),
            partitioner: None,
        }
    }

    /// Chooses the partition of each record with `partitioner`.
    pub fn with_partitioner(
        mut self,
        partitioner: impl Fn(&K, &V, i32) -> Option<i32> + Send + Sync + 'static,
    ) -> Self {
        self.partitioner = Some(Arc::new(partitioner));
        self
    }
}

/// Why a record could not enter the topology at its source.
#[derive(Debug)]
pub(crate) enum DecodeError {
    Serde(crate::SerdeError),
    Timestamp(i64),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Serde(e) => write!(f, "{e}"),
            DecodeError::Timestamp(ts) => write!(f, "invalid (negative) timestamp {ts}"),
        }
    }
}

/// Turns raw bytes into a record and forwards it to a source's children.
pub(crate) trait SourceDecoder: Send + Sync {
    fn decode(
        &self,
        raw: &RawRecord,
        partition_time: i64,
    ) -> std::result::Result<DecodedRecord, DecodeError>;
}

/// Forwards a decoded record from its source node.
pub(crate) type ForwardFn = Box<dyn FnOnce(&mut NodeCtx<'_>) -> Result<()>>;

/// Makes a sink node for a resolved topic and node name.
type SinkFactory = Arc<dyn Fn(&str, Arc<str>) -> Box<dyn Node> + Send + Sync>;

/// A source's resolved topics and decoder.
pub(crate) type SourceParts = (Vec<String>, Arc<dyn SourceDecoder>);

/// A decoded record ready to forward, able to copy itself for each child.
pub(crate) struct DecodedRecord {
    pub(crate) timestamp: i64,
    pub(crate) forward: ForwardFn,
}

impl<K: Clone + 'static, V: Clone + 'static> SourceDecoder for Source<K, V> {
    fn decode(
        &self,
        raw: &RawRecord,
        partition_time: i64,
    ) -> std::result::Result<DecodedRecord, DecodeError> {
        let topic = raw.topic.clone();
        let key = self
            .keys
            .deserialize(&topic, raw.key.as_deref())
            .map_err(DecodeError::Serde)?;
        let value = self
            .values
            .deserialize(&topic, raw.value.as_deref())
            .map_err(DecodeError::Serde)?;
        let origin = raw.origin();
        let mut record = Record::new(key, value, raw.timestamp)
            .with_headers(raw.headers.clone())
            .with_origin(origin);
        if let Some(extract) = &self.extractor {
            let ts = extract(&record, partition_time);
            record = record.with_timestamp(ts);
        }
        let timestamp = record.timestamp();
        if timestamp < 0 {
            return Err(DecodeError::Timestamp(timestamp));
        }
        Ok(DecodedRecord {
            timestamp,
            forward: Box::new(move |ctx| forward_typed(ctx, record)),
        })
    }
}

/// Forwards a typed record to every child of the context's node, cloning for all but the last.
pub(crate) fn forward_typed<K: Clone + 'static, V: Clone + 'static>(
    ctx: &mut NodeCtx<'_>,
    record: Record<K, V>,
) -> Result<()> {
    let n = ctx.child_count();
    if n == 0 {
        return Ok(());
    }
    for i in 0..n - 1 {
        ctx.forward_to_child(i, erase(record.clone()))?;
    }
    ctx.forward_to_child(n - 1, erase(record))
}

struct SinkNode<K, V> {
    name: Arc<str>,
    topic: Arc<str>,
    sink: Arc<SinkSpec<K, V>>,
}

struct SinkSpec<K, V> {
    keys: Arc<dyn Serde<K>>,
    values: Arc<dyn Serde<V>>,
    partitioner: Option<Partitioner<K, V>>,
}

impl<K: 'static, V: 'static> Node for SinkNode<K, V> {
    fn init(&mut self, _ctx: &mut NodeCtx<'_>) -> Result<()> {
        Ok(())
    }
    fn process(&mut self, record: DynRecord, ctx: &mut NodeCtx<'_>) -> Result<()> {
        let record: Record<K, V> = restore(record, &self.name)?;
        let key = self.sink.keys.serialize(&self.topic, record.key());
        let value = self.sink.values.serialize(&self.topic, record.value());
        let (key, value) = match (key, value) {
            (Ok(k), Ok(v)) => (k, v),
            (Err(e), _) | (_, Err(e)) => {
                return ctx
                    .collector
                    .serialization_error(&self.name, &self.topic, e);
            }
        };
        let partition = match &self.sink.partitioner {
            Some(p) => {
                let count = ctx.collector.partition_count(&self.topic)?;
                p(record.key(), record.value(), count)
            }
            None => None,
        };
        if let Some(p) = partition {
            let count = ctx.collector.partition_count(&self.topic)?;
            if p < 0 || p >= count {
                return Err(Error::Config(format!(
                    "sink {}: the partitioner chose partition {p} of topic {} which has {count}",
                    self.name, self.topic
                )));
            }
        }
        let (_, _, rest) = record.split();
        ctx.collector.send(OutRecord {
            topic: self.topic.clone(),
            partition,
            key,
            value,
            timestamp: rest.timestamp(),
            headers: rest.headers().clone(),
        })
    }
    fn punctuate(&mut self, _: PunctuatorId, _: i64, _: &mut NodeCtx<'_>) -> Result<()> {
        Ok(())
    }
    fn close(&mut self) -> Result<()> {
        Ok(())
    }
}

/// The node kinds as declared.
enum Kind {
    Source {
        topics: Vec<String>,
        decoder: Arc<dyn SourceDecoder>,
    },
    Processor {
        factory: NodeFactory,
    },
    Sink {
        topic: String,
        factory: SinkFactory,
    },
}

struct NodeDef {
    name: Arc<str>,
    kind: Kind,
    parents: Vec<String>,
    input: Option<KvType>,
    output: Option<KvType>,
}

/// Builds a [`Topology`]; every method chains, and [`build`](Self::build) reports the first
/// mistake.
#[derive(Default)]
pub struct TopologyBuilder {
    nodes: Vec<NodeDef>,
    stores: Vec<(Arc<dyn StoreBuilder>, Vec<String>)>,
    repartition: BTreeMap<String, Option<i32>>,
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
            kind: Kind::Source {
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
        let node_name: Arc<str> = name.into();
        let factory: NodeFactory = Arc::new(move || {
            Box::new(ProcessorNode {
                processor: supplier(),
                name: node_name.clone(),
            }) as Box<dyn Node>
        });
        self.push(NodeDef {
            name: name.into(),
            kind: Kind::Processor { factory },
            parents: parents.into_iter().map(Into::into).collect(),
            input: Some(KvType::of::<P::KeyIn, P::ValueIn>()),
            output: Some(KvType::of::<P::KeyOut, P::ValueOut>()),
        })
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
        let spec = Arc::new(SinkSpec {
            keys: sink.keys,
            values: sink.values,
            partitioner: sink.partitioner,
        });
        let factory = Arc::new(move |topic: &str, name: Arc<str>| {
            Box::new(SinkNode {
                name,
                topic: Arc::from(topic),
                sink: spec.clone(),
            }) as Box<dyn Node>
        });
        self.push(NodeDef {
            name: name.into(),
            kind: Kind::Sink {
                topic: sink.topic,
                factory,
            },
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

    /// Declares `name` as a repartition topic: sources and sinks may use `name`, and the
    /// runtime creates and uses `<application id>-<name>-repartition` with `partitions`
    /// partitions (by default the largest partition count among the source topics of the
    /// sub-topologies writing to it).
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
        Topology::from_builder(builder)
    }
}

/// Metadata of one node, shared by all tasks.
pub(crate) struct NodeMeta {
    pub(crate) name: Arc<str>,
    pub(crate) children: Vec<usize>,
    pub(crate) stores: Vec<usize>,
    parents: Vec<usize>,
}

/// A node of the frozen topology.
enum NodeImpl {
    Source {
        topics: Vec<String>,
        decoder: Arc<dyn SourceDecoder>,
    },
    Processor {
        factory: NodeFactory,
    },
    Sink {
        topic: String,
        factory: SinkFactory,
    },
}

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
    impls: Vec<NodeImpl>,
    stores: Vec<Arc<dyn StoreBuilder>>,
    subtopologies: Vec<SubTopology>,
    repartition: BTreeMap<String, Option<i32>>,
}

/// A checked, immutable topology; cheap to clone and share between threads.
#[derive(Clone)]
pub struct Topology {
    inner: Arc<Inner>,
}

impl fmt::Debug for Topology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.describe())
    }
}

impl Topology {
    fn from_builder(b: TopologyBuilder) -> Result<Topology> {
        let err = |m: String| Err(Error::Config(format!("topology: {m}")));
        if b.nodes.is_empty() {
            return err("it has no nodes".into());
        }
        let index: HashMap<&str, usize> = b
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (&*n.name, i))
            .collect();
        let mut metas: Vec<NodeMeta> = b
            .nodes
            .iter()
            .map(|n| NodeMeta {
                name: n.name.clone(),
                children: vec![],
                stores: vec![],
                parents: vec![],
            })
            .collect();
        for (i, node) in b.nodes.iter().enumerate() {
            if matches!(node.kind, Kind::Source { .. }) && !node.parents.is_empty() {
                return err(format!("source {} cannot have parents", node.name));
            }
            if !matches!(node.kind, Kind::Source { .. }) && node.parents.is_empty() {
                return err(format!("{} has no parents", node.name));
            }
            for p in &node.parents {
                let Some(&pi) = index.get(p.as_str()) else {
                    return err(format!("{} names an unknown parent {p}", node.name));
                };
                let parent = &b.nodes[pi];
                if matches!(parent.kind, Kind::Sink { .. }) {
                    return err(format!(
                        "{} names sink {p} as a parent; sinks have no children",
                        node.name
                    ));
                }
                let (out, inp) = (parent.output.unwrap(), node.input.unwrap());
                if !out.same(&inp) {
                    return err(format!(
                        "{p} forwards {out} but its child {} takes {inp}",
                        node.name
                    ));
                }
                if metas[i].parents.contains(&pi) {
                    return err(format!("{} names parent {p} twice", node.name));
                }
                metas[i].parents.push(pi);
                metas[pi].children.push(i);
            }
        }
        // Cycles: depth-first search over child edges.
        let mut state = vec![0u8; metas.len()];
        fn visit(
            i: usize,
            metas: &[NodeMeta],
            state: &mut [u8],
            path: &mut Vec<usize>,
        ) -> Option<Vec<usize>> {
            match state[i] {
                1 => {
                    let at = path.iter().position(|&p| p == i).unwrap_or(0);
                    let mut cycle = path[at..].to_vec();
                    cycle.push(i);
                    return Some(cycle);
                }
                2 => return None,
                _ => {}
            }
            state[i] = 1;
            path.push(i);
            for &c in &metas[i].children {
                if let Some(cycle) = visit(c, metas, state, path) {
                    return Some(cycle);
                }
            }
            path.pop();
            state[i] = 2;
            None
        }
        for i in 0..metas.len() {
            if let Some(cycle) = visit(i, &metas, &mut state, &mut vec![]) {
                let names: Vec<&str> = cycle.iter().map(|&c| &*metas[c].name).collect();
                return err(format!("it has a cycle: {}", names.join(" -> ")));
            }
        }
        // Stores.
        let mut stores = vec![];
        for (si, (store, users)) in b.stores.into_iter().enumerate() {
            for u in &users {
                let Some(&ui) = index.get(u.as_str()) else {
                    return err(format!(
                        "store {} is connected to an unknown processor {u}",
                        store.name()
                    ));
                };
                if !matches!(b.nodes[ui].kind, Kind::Processor { .. }) {
                    return err(format!(
                        "store {} is connected to {u}, which is not a processor",
                        store.name()
                    ));
                }
                metas[ui].stores.push(si);
            }
            stores.push(store);
        }
        // Topics read by one source only.
        let mut readers: HashMap<&str, &str> = HashMap::new();
        for n in &b.nodes {
            if let Kind::Source { topics, .. } = &n.kind {
                for t in topics {
                    if let Some(other) = readers.insert(t, &n.name) {
                        return err(format!(
                            "topic {t} is read by two sources, {other} and {}",
                            n.name
                        ));
                    }
                }
            }
        }
        // Sub-topologies: connected components over edges and shared stores.
        let mut group: Vec<usize> = (0..metas.len()).collect();
        fn find(g: &mut [usize], i: usize) -> usize {
            let mut r = i;
            while g[r] != r {
                r = g[r];
            }
            g[i] = r;
            r
        }
        for (i, m) in metas.iter().enumerate() {
            for &c in &m.children {
                let (a, b2) = (find(&mut group, i), find(&mut group, c));
                group[a] = b2;
            }
        }
        for si in 0..stores.len() {
            let users: Vec<usize> = (0..metas.len())
                .filter(|&i| metas[i].stores.contains(&si))
                .collect();
            for w in users.windows(2) {
                let (a, b2) = (find(&mut group, w[0]), find(&mut group, w[1]));
                group[a] = b2;
            }
        }
        let mut order: Vec<usize> = vec![];
        let mut members: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for i in 0..metas.len() {
            let root = find(&mut group, i);
            if !members.contains_key(&root) {
                order.push(root);
            }
            members.entry(root).or_default().push(i);
        }
        let impls: Vec<NodeImpl> = b
            .nodes
            .into_iter()
            .map(|n| match n.kind {
                Kind::Source { topics, decoder } => NodeImpl::Source { topics, decoder },
                Kind::Processor { factory } => NodeImpl::Processor { factory },
                Kind::Sink { topic, factory } => NodeImpl::Sink { topic, factory },
            })
            .collect();
        let mut subtopologies = vec![];
        for (id, root) in order.iter().enumerate() {
            let nodes = members[root].clone();
            let mut source_topics = vec![];
            let mut sink_topics = vec![];
            let mut st = BTreeSet::new();
            for &n in &nodes {
                match &impls[n] {
                    NodeImpl::Source { topics, .. } => source_topics.extend(topics.iter().cloned()),
                    NodeImpl::Sink { topic, .. } => {
                        if !sink_topics.contains(topic) {
                            sink_topics.push(topic.clone())
                        }
                    }
                    NodeImpl::Processor { .. } => {}
                }
                st.extend(
                    metas[n]
                        .stores
                        .iter()
                        .map(|&s| stores[s].name().to_string()),
                );
            }
            if source_topics.is_empty() {
                let names: Vec<&str> = nodes.iter().map(|&n| &*metas[n].name).collect();
                return err(format!(
                    "nodes {} are not reachable from any source",
                    names.join(", ")
                ));
            }
            subtopologies.push(SubTopology {
                id: id as u32,
                nodes,
                source_topics,
                sink_topics,
                stores: st.into_iter().collect(),
            });
        }
        Ok(Topology {
            inner: Arc::new(Inner {
                metas,
                impls,
                stores,
                subtopologies,
                repartition: b.repartition,
            }),
        })
    }

    /// The sub-topologies, in the order of their first node.
    pub fn subtopologies(&self) -> &[SubTopology] {
        &self.inner.subtopologies
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
        match &self.inner.impls[i] {
            NodeImpl::Source { topics, decoder } => {
                let resolved = topics
                    .iter()
                    .map(|t| self.resolve_topic(application_id, t))
                    .collect();
                (Box::new(NoopNode), Some((resolved, decoder.clone())))
            }
            NodeImpl::Processor { factory } => (factory(), None),
            NodeImpl::Sink { topic, factory } => (
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

struct NoopNode;

impl Node for NoopNode {
    fn init(&mut self, _: &mut NodeCtx<'_>) -> Result<()> {
        Ok(())
    }
    fn process(&mut self, _: DynRecord, _: &mut NodeCtx<'_>) -> Result<()> {
        Ok(())
    }
    fn punctuate(&mut self, _: PunctuatorId, _: i64, _: &mut NodeCtx<'_>) -> Result<()> {
        Ok(())
    }
    fn close(&mut self) -> Result<()> {
        Ok(())
    }
}

/// What [`Topology::describe`] returns: `Display` gives the text form, [`to_mermaid`](Self::to_mermaid)
/// a Mermaid flowchart.
pub struct TopologyDescription {
    topology: Topology,
}

impl TopologyDescription {
    /// A Mermaid flowchart of the topology (paste it into any Mermaid renderer).
    pub fn to_mermaid(&self) -> String {
        let inner = &self.topology.inner;
        let mut out = String::from("flowchart LR\n");
        for st in &inner.subtopologies {
            out.push_str(&format!(
                "  subgraph sub{}[\"Sub-topology {}\"]\n",
                st.id, st.id
            ));
            for &n in &st.nodes {
                out.push_str(&format!("    n{n}[\"{}\"]\n", inner.metas[n].name));
            }
            out.push_str("  end\n");
        }
        for (i, m) in inner.metas.iter().enumerate() {
            match &inner.impls[i] {
                NodeImpl::Source { topics, .. } => {
                    for t in topics {
                        out.push_str(&format!("  t_{}[(\"{t}\")] --> n{i}\n", mermaid_id(t)));
                    }
                }
                NodeImpl::Sink { topic, .. } => {
                    out.push_str(&format!(
                        "  n{i} --> t_{}[(\"{topic}\")]\n",
                        mermaid_id(topic)
                    ));
                }
                NodeImpl::Processor { .. } => {}
            }
            for &c in &m.children {
                out.push_str(&format!("  n{i} --> n{c}\n"));
            }
        }
        out
    }
}

fn mermaid_id(topic: &str) -> String {
    topic
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

impl fmt::Display for TopologyDescription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &self.topology.inner;
        writeln!(f, "Topologies:")?;
        for st in &inner.subtopologies {
            writeln!(f, "  Sub-topology: {}", st.id)?;
            for &n in &st.nodes {
                let m = &inner.metas[n];
                match &inner.impls[n] {
                    NodeImpl::Source { topics, .. } => writeln!(
                        f,
                        "    Source: {} (topics: [{}])",
                        m.name,
                        topics.join(", ")
                    )?,
                    NodeImpl::Processor { .. } => {
                        let stores: Vec<&str> =
                            m.stores.iter().map(|&s| inner.stores[s].name()).collect();
                        writeln!(
                            f,
                            "    Processor: {} (stores: [{}])",
                            m.name,
                            stores.join(", ")
                        )?
                    }
                    NodeImpl::Sink { topic, .. } => {
                        writeln!(f, "    Sink: {} (topic: {topic})", m.name)?
                    }
                }
                if !m.children.is_empty() {
                    let names: Vec<&str> =
                        m.children.iter().map(|&c| &*inner.metas[c].name).collect();
                    writeln!(f, "      --> {}", names.join(", "))?;
                }
                if !m.parents.is_empty() {
                    let names: Vec<&str> =
                        m.parents.iter().map(|&c| &*inner.metas[c].name).collect();
                    writeln!(f, "      <-- {}", names.join(", "))?;
                }
            }
        }
        Ok(())
    }
}
