//! The nodes a topology is made of: sources (topics and serdes in, with the decoder that
//! turns a raw record into a typed one), sinks (serdes and a partitioner out), and the node
//! kinds as one enum.

use std::fmt;
use std::sync::Arc;

use crate::node::{restore, DynRecord, Node, NodeCtx, NodeFactory, OutRecord, RawRecord};
use crate::processor::{Processor, ProcessorNode};
use crate::serde::Serde;
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
    pub(super) topics: Vec<String>,
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
    chooser: Option<TopicChooser<K, V>>,
}

/// Chooses the topic of each output record: `(key, value) -> topic`.
pub type TopicChooser<K, V> = Arc<dyn Fn(&K, &V) -> String + Send + Sync>;

/// What a sink whose topic is chosen per record shows as its topic.
pub const CHOSEN_PER_RECORD: &str = "<chosen per record>";

impl<K: 'static, V: 'static> Sink<K, V> {
    /// Writes to `topic` with the given key and value serdes.
    pub fn new(topic: impl Into<String>, keys: impl Serde<K>, values: impl Serde<V>) -> Self {
        Sink {
            topic: topic.into(),
            keys: Arc::new(keys),
            values: Arc::new(values),
            partitioner: None,
            chooser: None,
        }
    }

    /// Writes each record to the topic `chooser(key, value)` names (the topic must exist).
    pub fn to_chosen_topic(
        chooser: impl Fn(&K, &V) -> String + Send + Sync + 'static,
        keys: impl Serde<K>,
        values: impl Serde<V>,
    ) -> Self {
        Sink {
            topic: CHOSEN_PER_RECORD.to_string(),
            keys: Arc::new(keys),
            values: Arc::new(values),
            partitioner: None,
            chooser: Some(Arc::new(chooser)),
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

    /// The event time of `raw` (what `decode` would give it), to pick the next record of a
    /// task among its partitions; the record's own timestamp when it does not decode.
    fn timestamp(&self, raw: &RawRecord, partition_time: i64) -> i64;
}

/// Forwards a decoded record from its source node.
pub(crate) type ForwardFn = Box<dyn FnOnce(&mut NodeCtx<'_>) -> Result<()>>;

/// Makes a sink node for a resolved topic and node name.
pub(crate) type SinkFactory = Arc<dyn Fn(&str, Arc<str>) -> Box<dyn Node> + Send + Sync>;

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
        let origin = raw.metadata();
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
            forward: Box::new(move |ctx| ctx.forward(record)),
        })
    }

    fn timestamp(&self, raw: &RawRecord, partition_time: i64) -> i64 {
        if self.extractor.is_none() {
            return raw.timestamp;
        }
        self.decode(raw, partition_time)
            .map_or(raw.timestamp, |d| d.timestamp)
    }
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
    chooser: Option<TopicChooser<K, V>>,
}

impl<K: 'static, V: 'static> Node for SinkNode<K, V> {
    fn process(&mut self, record: DynRecord<'_>, ctx: &mut NodeCtx<'_>) -> Result<()> {
        let record: Record<K, V> = restore(record, &self.name)?;
        let topic = match &self.sink.chooser {
            Some(choose) => Arc::from(choose(record.key(), record.value())),
            None => self.topic.clone(),
        };
        let key = self.sink.keys.serialize(&topic, record.key());
        let value = self.sink.values.serialize(&topic, record.value());
        let (key, value) = match (key, value) {
            (Ok(k), Ok(v)) => (k, v),
            (Err(e), _) | (_, Err(e)) => {
                return ctx.collector().serialization_error(&self.name, &topic, e);
            }
        };
        let partition = match &self.sink.partitioner {
            Some(p) => {
                let count = ctx.collector().partition_count(&topic)?;
                p(record.key(), record.value(), count)
            }
            None => match self.sink.keys.partition_bytes(&topic, record.key()) {
                Some(Ok(Some(bytes))) => {
                    let count = ctx.collector().partition_count(&topic)?;
                    Some(crate::partition::default_partition(&bytes, count))
                }
                Some(Err(e)) => {
                    return ctx.collector().serialization_error(&self.name, &topic, e);
                }
                Some(Ok(None)) | None => None,
            },
        };
        if let Some(p) = partition {
            let count = ctx.collector().partition_count(&topic)?;
            if p < 0 || p >= count {
                return Err(Error::Config(format!(
                    "sink {}: the partitioner chose partition {p} of topic {topic} which has {count}",
                    self.name
                )));
            }
        }
        let (_, _, rest) = record.into_parts();
        ctx.collector().send(OutRecord {
            topic,
            partition,
            key,
            value,
            timestamp: rest.timestamp(),
            headers: rest.headers().clone(),
        })
    }
}

/// A node as declared and as frozen in the topology.
pub(crate) enum NodeKind {
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

impl NodeKind {
    pub(crate) fn is_source(&self) -> bool {
        matches!(self, NodeKind::Source { .. })
    }
    pub(crate) fn is_processor(&self) -> bool {
        matches!(self, NodeKind::Processor { .. })
    }
    pub(crate) fn is_sink(&self) -> bool {
        matches!(self, NodeKind::Sink { .. })
    }
}

/// What a source node runs as inside a task: its records are decoded and forwarded by the
/// task ([`SourceDecoder`]), so the node itself does nothing.
pub(crate) struct NoopNode;

impl Node for NoopNode {
    fn process(&mut self, _: DynRecord<'_>, _: &mut NodeCtx<'_>) -> Result<()> {
        Ok(())
    }
}

/// The sink node factory of `sink`, and its topic.
pub(crate) fn sink_kind<K: 'static, V: 'static>(sink: Sink<K, V>) -> NodeKind {
    let spec = Arc::new(SinkSpec {
        keys: sink.keys,
        values: sink.values,
        partitioner: sink.partitioner,
        chooser: sink.chooser,
    });
    let factory = Arc::new(move |topic: &str, name: Arc<str>| {
        Box::new(SinkNode {
            name,
            topic: Arc::from(topic),
            sink: spec.clone(),
        }) as Box<dyn Node>
    });
    NodeKind::Sink {
        topic: sink.topic,
        factory,
    }
}

/// The processor node factory of `supplier`.
pub(crate) fn processor_kind<P, F>(name: &str, supplier: F) -> NodeKind
where
    P: Processor,
    F: Fn() -> P + Send + Sync + 'static,
{
    let node_name: Arc<str> = name.into();
    let factory: NodeFactory = Arc::new(move || {
        Box::new(ProcessorNode {
            processor: supplier(),
            name: node_name.clone(),
        }) as Box<dyn Node>
    });
    NodeKind::Processor { factory }
}
