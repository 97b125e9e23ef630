//! Options of the DSL's operators, as structs: names, serdes, store settings. Each has a
//! constructor taking the serdes it needs, and `Default` when the types have default serdes
//! ([`DefaultSerde`]), so a missing serde is a compile error, never a runtime one.

use std::sync::Arc;
use std::time::Duration;

use streams_core::serde::{DefaultSerde, Serde};
use streams_core::topology::TimestampExtractor;
use streams_core::Record;

/// A name for an operator (its node in the topology).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Named(pub(crate) Option<String>);

impl Named {
    /// The name `name`.
    pub fn as_(name: &str) -> Self {
        Named(Some(name.to_string()))
    }
}

/// How a stream reads its topics: serdes, an optional node name, an optional timestamp
/// extractor.
pub struct Consumed<K, V> {
    pub(crate) keys: Arc<dyn Serde<K>>,
    pub(crate) values: Arc<dyn Serde<V>>,
    pub(crate) name: Option<String>,
    pub(crate) extractor: Option<TimestampExtractor<K, V>>,
}

impl<K: 'static, V: 'static> Consumed<K, V> {
    /// With these serdes.
    pub fn with(keys: impl Serde<K>, values: impl Serde<V>) -> Self {
        Consumed {
            keys: Arc::new(keys),
            values: Arc::new(values),
            name: None,
            extractor: None,
        }
    }

    /// Names the source node.
    pub fn named(mut self, name: &str) -> Self {
        self.name = Some(name.to_string());
        self
    }

    /// Event time from `extractor(record, partition time)` instead of the record's timestamp.
    pub fn with_timestamp_extractor(
        mut self,
        extractor: impl Fn(&Record<K, V>, i64) -> i64 + Send + Sync + 'static,
    ) -> Self {
        self.extractor = Some(Arc::new(extractor));
        self
    }
}

impl<K: DefaultSerde, V: DefaultSerde> Default for Consumed<K, V> {
    fn default() -> Self {
        Consumed {
            keys: K::default_serde(),
            values: V::default_serde(),
            name: None,
            extractor: None,
        }
    }
}

/// How a stream writes a topic: serdes, an optional node name, an optional partitioner.
pub struct Produced<K, V> {
    pub(crate) keys: Arc<dyn Serde<K>>,
    pub(crate) values: Arc<dyn Serde<V>>,
    pub(crate) name: Option<String>,
    pub(crate) partitioner: Option<streams_core::topology::Partitioner<K, V>>,
}

impl<K: 'static, V: 'static> Produced<K, V> {
    /// With these serdes.
    pub fn with(keys: impl Serde<K>, values: impl Serde<V>) -> Self {
        Produced {
            keys: Arc::new(keys),
            values: Arc::new(values),
            name: None,
            partitioner: None,
        }
    }

    /// Names the sink node.
    pub fn named(mut self, name: &str) -> Self {
        self.name = Some(name.to_string());
        self
    }

    /// Chooses each record's partition: `(key, value, partition count) -> partition`
    /// (`None`: the producer's default, murmur2 of the key bytes).
    pub fn with_partitioner(
        mut self,
        partitioner: impl Fn(&K, &V, i32) -> Option<i32> + Send + Sync + 'static,
    ) -> Self {
        self.partitioner = Some(Arc::new(partitioner));
        self
    }
}

impl<K: DefaultSerde, V: DefaultSerde> Default for Produced<K, V> {
    fn default() -> Self {
        Produced {
            keys: K::default_serde(),
            values: V::default_serde(),
            name: None,
            partitioner: None,
        }
    }
}

/// How a stream is grouped: the serdes of its key and value (used by a repartition topic when
/// the key changed before), and a name (it names that topic).
pub struct Grouped<K, V> {
    pub(crate) keys: Arc<dyn Serde<K>>,
    pub(crate) values: Arc<dyn Serde<V>>,
    pub(crate) name: Option<String>,
}

impl<K: 'static, V: 'static> Grouped<K, V> {
    /// With these serdes.
    pub fn with(keys: impl Serde<K>, values: impl Serde<V>) -> Self {
        Grouped {
            keys: Arc::new(keys),
            values: Arc::new(values),
            name: None,
        }
    }

    /// Names the grouping: the repartition topic becomes `<application id>-<name>-repartition`.
    pub fn named(mut self, name: &str) -> Self {
        self.name = Some(name.to_string());
        self
    }
}

impl<K: DefaultSerde, V: DefaultSerde> Default for Grouped<K, V> {
    fn default() -> Self {
        Grouped {
            keys: K::default_serde(),
            values: V::default_serde(),
            name: None,
        }
    }
}

/// How an aggregation's (or a table's) store is kept: its name (which also names its
/// changelog topic, `<application id>-<name>-changelog`), the serde of the stored values,
/// RocksDB or memory, logging and caching.
pub struct Materialized<V> {
    pub(crate) values: Arc<dyn Serde<V>>,
    pub(crate) name: Option<String>,
    pub(crate) in_memory: bool,
    pub(crate) logging: bool,
    pub(crate) retention: Option<Duration>,
    /// A table read from a topic uses the topic as its changelog.
    pub(crate) source_topic_as_changelog: bool,
    /// An aggregation into this store goes through the record cache (when there is a budget).
    pub(crate) caching: bool,
}

impl<V: 'static> Materialized<V> {
    /// Stored values written with `values`.
    pub fn with(values: impl Serde<V>) -> Self {
        Materialized {
            values: Arc::new(values),
            name: None,
            in_memory: false,
            logging: true,
            retention: None,
            source_topic_as_changelog: false,
            caching: true,
        }
    }

    /// Names the store (and so its changelog topic). Name every store whose state must
    /// survive changes to the topology.
    pub fn named(mut self, name: &str) -> Self {
        self.name = Some(name.to_string());
        self
    }

    /// Keeps the store in memory (rebuilt from the changelog on restart) instead of RocksDB.
    pub fn in_memory(mut self) -> Self {
        self.in_memory = true;
        self
    }

    /// Turns the changelog off (the state is then lost with the machine).
    pub fn without_logging(mut self) -> Self {
        self.logging = false;
        self
    }

    /// For a table read from a topic (`StreamsBuilder::table`): the topic itself serves as
    /// the table's changelog, instead of a changelog topic of its own (Kafka Streams'
    /// `topology.optimization` setting `reuse.ktable.source.topics`, off by default there as
    /// here). No changelog records are written; the table is restored from the topic, up to
    /// the group's committed offset. The topic must be compacted (`cleanup.policy=compact`):
    /// with time-based deletion, rows older than its retention are gone from a restored table.
    pub fn reuse_source_topic_as_changelog(mut self) -> Self {
        self.source_topic_as_changelog = true;
        self
    }

    /// An aggregation into this store forwards every update at once, whatever
    /// `StreamsConfig::cache_max_bytes` says for the others (Kafka Streams'
    /// `Materialized.withCachingDisabled`).
    pub fn with_caching_disabled(mut self) -> Self {
        self.caching = false;
        self
    }

    /// How long a window store keeps windows (default: the window size plus grace).
    pub fn with_retention(mut self, retention: Duration) -> Self {
        self.retention = Some(retention);
        self
    }
}

impl<V: DefaultSerde> Default for Materialized<V> {
    fn default() -> Self {
        Materialized::with_arc(V::default_serde())
    }
}

impl<V: 'static> Materialized<V> {
    pub(crate) fn with_arc(values: Arc<dyn Serde<V>>) -> Self {
        Materialized {
            values,
            name: None,
            in_memory: false,
            logging: true,
            retention: None,
            source_topic_as_changelog: false,
            caching: true,
        }
    }
}

/// An explicit repartition: the topic's name, partition count and serdes.
pub struct Repartitioned<K, V> {
    pub(crate) keys: Arc<dyn Serde<K>>,
    pub(crate) values: Arc<dyn Serde<V>>,
    pub(crate) name: Option<String>,
    pub(crate) partitions: Option<i32>,
}

impl<K: 'static, V: 'static> Repartitioned<K, V> {
    /// With these serdes.
    pub fn with(keys: impl Serde<K>, values: impl Serde<V>) -> Self {
        Repartitioned {
            keys: Arc::new(keys),
            values: Arc::new(values),
            name: None,
            partitions: None,
        }
    }

    /// Names the topic: `<application id>-<name>-repartition`.
    pub fn named(mut self, name: &str) -> Self {
        self.name = Some(name.to_string());
        self
    }

    /// The topic's partition count (default: the largest of the source topics upstream).
    pub fn with_partitions(mut self, partitions: i32) -> Self {
        self.partitions = Some(partitions);
        self
    }
}

impl<K: DefaultSerde, V: DefaultSerde> Default for Repartitioned<K, V> {
    fn default() -> Self {
        Repartitioned {
            keys: K::default_serde(),
            values: V::default_serde(),
            name: None,
            partitions: None,
        }
    }
}

/// Applies a `Materialized`'s store settings (memory or RocksDB, logging) to a store builder.
macro_rules! configure_store {
    ($builder:expr, $materialized:expr) => {{
        let mut builder = $builder;
        if $materialized.in_memory {
            builder = builder.in_memory();
        }
        if !$materialized.logging {
            builder = builder.with_logging(false);
        }
        builder
    }};
}
pub(crate) use configure_store;

impl<V> Materialized<V> {
    /// The store where an emit-final aggregation keeps the time up to which it emitted, with
    /// this store's settings.
    pub(crate) fn progress_store(
        &self,
        name: &str,
    ) -> streams_core::store::KeyValueStoreBuilder<String, i64> {
        configure_store!(
            streams_core::store::KeyValueStore::<String, i64>::builder(
                name,
                streams_core::serde::Utf8,
                streams_core::serde::BigEndian,
            ),
            self
        )
    }
}

/// The serdes and names of a stream-stream join: the key, this stream's values, the other
/// stream's values (for the join's window stores and, when a key changed upstream, the
/// repartition topics), and a base name for its stores and topics.
pub struct StreamJoined<K, V1, V2> {
    pub(crate) keys: Arc<dyn Serde<K>>,
    pub(crate) this_values: Arc<dyn Serde<V1>>,
    pub(crate) other_values: Arc<dyn Serde<V2>>,
    pub(crate) name: Option<String>,
    pub(crate) in_memory: bool,
    pub(crate) logging: bool,
    pub(crate) dropped: crate::windowing::LateRecords,
}

impl<K: 'static, V1: 'static, V2: 'static> StreamJoined<K, V1, V2> {
    /// With these serdes.
    pub fn with(
        keys: impl Serde<K>,
        this_values: impl Serde<V1>,
        other_values: impl Serde<V2>,
    ) -> Self {
        StreamJoined {
            keys: Arc::new(keys),
            this_values: Arc::new(this_values),
            other_values: Arc::new(other_values),
            name: None,
            in_memory: false,
            logging: true,
            dropped: Default::default(),
        }
    }

    /// Names the join's stores (`<name>-this-join-store`, `<name>-other-join-store`,
    /// `<name>-outer-this-join-store`, `<name>-outer-other-join-store`) and repartition topics
    /// (`<name>-left`, `<name>-right`).
    pub fn named(mut self, name: &str) -> Self {
        self.name = Some(name.to_string());
        self
    }

    /// Keeps the join's stores in memory (rebuilt from their changelogs on restart).
    pub fn in_memory(mut self) -> Self {
        self.in_memory = true;
        self
    }

    /// Turns the stores' changelogs off.
    pub fn without_logging(mut self) -> Self {
        self.logging = false;
        self
    }

    /// Counts the records the join drops (late, or with a null key) in `counter`.
    pub fn count_dropped_in(mut self, counter: &crate::windowing::LateRecords) -> Self {
        self.dropped = counter.clone();
        self
    }
}

impl<K: DefaultSerde, V1: DefaultSerde, V2: DefaultSerde> Default for StreamJoined<K, V1, V2> {
    fn default() -> Self {
        StreamJoined {
            keys: K::default_serde(),
            this_values: V1::default_serde(),
            other_values: V2::default_serde(),
            name: None,
            in_memory: false,
            logging: true,
            dropped: Default::default(),
        }
    }
}

/// The serdes and name of a stream-table join: the stream's values (for the repartition
/// topic, when the stream's key changed upstream), a name for the join node and topic, and
/// where records dropped for a null key are counted.
pub struct Joined<V> {
    pub(crate) values: Arc<dyn Serde<V>>,
    pub(crate) name: Option<String>,
    pub(crate) dropped: crate::windowing::LateRecords,
}

impl<V: 'static> Joined<V> {
    /// With this serde of the stream's values.
    pub fn with(values: impl Serde<V>) -> Self {
        Joined {
            values: Arc::new(values),
            name: None,
            dropped: Default::default(),
        }
    }

    /// Names the join node (and the repartition topic, `<name>-repartition`).
    pub fn named(mut self, name: &str) -> Self {
        self.name = Some(name.to_string());
        self
    }

    /// Counts the records the join drops in `counter`: an inner join's records with a null key
    /// (a left join joins them with no row, as Kafka Streams since KIP-962).
    pub fn count_dropped_in(mut self, counter: &crate::windowing::LateRecords) -> Self {
        self.dropped = counter.clone();
        self
    }
}

impl<V: DefaultSerde> Default for Joined<V> {
    fn default() -> Self {
        Joined {
            values: V::default_serde(),
            name: None,
            dropped: Default::default(),
        }
    }
}
