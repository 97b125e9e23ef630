//! [`CogroupedKStream`]: several grouped streams aggregated into one table (Kafka Streams'
//! `KGroupedStream::cogroup`, KIP-150).
//!
//! Kafka Streams gives each stream an aggregate processor of its own on one shared store. Here
//! each stream (repartitioned first when its key changed) turns its records into
//! contributions, a value bound to that stream's aggregator; the contributions of all the
//! streams are merged into one stream, and the ordinary aggregations (per key, per time window,
//! per session) fold them: one store, one node, one cache, whatever the number of streams.
//! Contributions are never serialized: the merged stream is never repartitioned, as every
//! input already is by its key.

use std::sync::Arc;

use streams_core::serde::{Serde, SerdeError};
use streams_core::Record;

use crate::handles::{KGroupedStream, KStream, KTable};
use crate::options::{Grouped, Materialized, Named};
use crate::windowing::{SessionWindows, TimeWindows, Windowed};

/// A record's value bound to the aggregator of the stream it came from.
pub(crate) struct Contribution<K, VA>(Box<dyn Contribute<K, VA>>);

trait Contribute<K, VA>: Send {
    fn add_to(&self, key: &K, aggregate: VA) -> VA;
    fn clone_box(&self) -> Box<dyn Contribute<K, VA>>;
}

type Aggregator<K, V, VA> = Arc<dyn Fn(&K, V, VA) -> VA + Send + Sync>;

struct Bound<K, V, VA> {
    value: V,
    aggregator: Aggregator<K, V, VA>,
}

impl<K: 'static, V: Clone + Send + 'static, VA: 'static> Contribute<K, VA> for Bound<K, V, VA> {
    fn add_to(&self, key: &K, aggregate: VA) -> VA {
        (self.aggregator)(key, self.value.clone(), aggregate)
    }

    fn clone_box(&self) -> Box<dyn Contribute<K, VA>> {
        Box::new(Bound {
            value: self.value.clone(),
            aggregator: self.aggregator.clone(),
        })
    }
}

impl<K, VA> Clone for Contribution<K, VA> {
    fn clone(&self) -> Self {
        Contribution(self.0.clone_box())
    }
}

impl<K, VA> Contribution<K, VA> {
    fn add_to(&self, key: &K, aggregate: VA) -> VA {
        self.0.add_to(key, aggregate)
    }
}

/// The serde of contributions, which are never serialized (see the module's documentation).
struct NotSerialized;

impl<K: 'static, VA: 'static> Serde<Contribution<K, VA>> for NotSerialized {
    fn serialize(
        &self,
        topic: &str,
        _: &Contribution<K, VA>,
    ) -> Result<Option<Vec<u8>>, SerdeError> {
        Err(SerdeError::new(
            "cogroup",
            topic,
            "the values of cogrouped streams are not serialized",
        ))
    }

    fn deserialize(
        &self,
        topic: &str,
        _: Option<&[u8]>,
    ) -> Result<Contribution<K, VA>, SerdeError> {
        Err(SerdeError::new(
            "cogroup",
            topic,
            "the values of cogrouped streams are not serialized",
        ))
    }
}

/// Grouped streams aggregated together ([`KGroupedStream::cogroup`]): add more with
/// [`cogroup`](Self::cogroup), then aggregate per key, time window or session.
pub struct CogroupedKStream<K, VA> {
    merged: KStream<K, Contribution<K, VA>>,
    keys: Arc<dyn Serde<K>>,
}

/// Contributions of `grouped` (repartitioned first if its key changed) with `aggregator`.
fn contributions<K, V, VA>(
    grouped: &KGroupedStream<K, V>,
    aggregator: Aggregator<K, V, VA>,
) -> KStream<K, Contribution<K, VA>>
where
    K: Clone + Send + 'static,
    V: Clone + Send + 'static,
    VA: 'static,
{
    grouped
        .input()
        .add_op("COGROUP", Named::default(), false, move || {
            let aggregator = aggregator.clone();
            Box::new(move |r: Record<K, V>, ctx| {
                let aggregator = aggregator.clone();
                ctx.forward(
                    r.map_value(|value| Contribution(Box::new(Bound { value, aggregator }))),
                )
            })
        })
}

impl<K: Clone + Send + 'static, V: Clone + Send + 'static> KGroupedStream<K, V> {
    /// Starts a cogrouped aggregation: this stream's records are added to each key's aggregate
    /// with `aggregator(key, value, aggregate)`; add other grouped streams with
    /// [`CogroupedKStream::cogroup`], each with its own aggregator and value type. All of them
    /// must be co-partitioned (a re-keyed stream is repartitioned by the grouping).
    ///
    /// ```
    /// use streams_core::serde::{Nullable, Utf8};
    /// use streams_core::TopologyTestDriver;
    /// use streams_dsl::{Materialized, StreamsBuilder};
    ///
    /// // Per user: the pages viewed and the amounts paid, in one table.
    /// let builder = StreamsBuilder::new();
    /// let views = builder.stream::<String, String>("views").group_by_key();
    /// let payments = builder.stream::<String, String>("payments").group_by_key();
    /// views
    ///     .cogroup(|_, page: String, log: String| format!("{log} view:{page}"))
    ///     .cogroup(&payments, |_, amount: String, log: String| format!("{log} paid:{amount}"))
    ///     .aggregate(String::new, Materialized::with(Utf8).named("activity"))
    ///     .to("activity");
    /// let driver = TopologyTestDriver::new(builder.build()?)?;
    /// driver.input_topic("views", Utf8, Utf8).pipe_at("ann".to_string(), "home".to_string(), 1)?;
    /// driver.input_topic("payments", Utf8, Utf8).pipe_at("ann".to_string(), "12".to_string(), 2)?;
    /// let out = driver.output_topic::<String, Option<String>>("activity", Utf8, Nullable(Utf8));
    /// assert_eq!(
    ///     out.read_values()?,
    ///     vec![Some(" view:home".to_string()), Some(" view:home paid:12".to_string())]
    /// );
    /// # Ok::<(), streams_core::Error>(())
    /// ```
    pub fn cogroup<VA: 'static>(
        &self,
        aggregator: impl Fn(&K, V, VA) -> VA + Send + Sync + 'static,
    ) -> CogroupedKStream<K, VA> {
        CogroupedKStream {
            merged: contributions(self, Arc::new(aggregator)),
            keys: self.keys(),
        }
    }
}

impl<K: Clone + Send + 'static, VA: Clone + Send + 'static> CogroupedKStream<K, VA> {
    /// Adds `other`'s records to the same aggregates with `aggregator(key, value, aggregate)`.
    pub fn cogroup<V2: Clone + Send + 'static>(
        &self,
        other: &KGroupedStream<K, V2>,
        aggregator: impl Fn(&K, V2, VA) -> VA + Send + Sync + 'static,
    ) -> Self {
        CogroupedKStream {
            merged: self
                .merged
                .merge(&contributions(other, Arc::new(aggregator))),
            keys: self.keys.clone(),
        }
    }

    /// The contributions grouped by key (already partitioned by it).
    fn grouped(&self) -> KGroupedStream<K, Contribution<K, VA>> {
        KGroupedStream {
            stream: self.merged.clone(),
            grouped: Grouped {
                keys: self.keys.clone(),
                values: Arc::new(NotSerialized),
                name: None,
            },
        }
    }

    /// One aggregate per key, from `initializer()`, kept in the store `materialized`
    /// describes.
    pub fn aggregate(
        &self,
        initializer: impl Fn() -> VA + Send + Sync + 'static,
        materialized: Materialized<VA>,
    ) -> KTable<K, VA> {
        self.grouped()
            .aggregate(initializer, |k, c, agg| c.add_to(k, agg), materialized)
    }

    /// Aggregates per key and time window (tumbling or hopping).
    pub fn windowed_by(&self, windows: TimeWindows) -> TimeWindowedCogroupedKStream<K, VA> {
        TimeWindowedCogroupedKStream {
            cogrouped: self.clone_handle(),
            windows,
        }
    }

    /// Aggregates per key and session.
    pub fn windowed_by_session(
        &self,
        windows: SessionWindows,
    ) -> SessionWindowedCogroupedKStream<K, VA> {
        SessionWindowedCogroupedKStream {
            cogrouped: self.clone_handle(),
            windows,
        }
    }

    fn clone_handle(&self) -> Self {
        CogroupedKStream {
            merged: self.merged.clone(),
            keys: self.keys.clone(),
        }
    }
}

/// Cogrouped streams aggregated per key and time window.
pub struct TimeWindowedCogroupedKStream<K, VA> {
    cogrouped: CogroupedKStream<K, VA>,
    windows: TimeWindows,
}

impl<K: Clone + Send + 'static, VA: Clone + Send + 'static> TimeWindowedCogroupedKStream<K, VA> {
    /// One aggregate per key and window, from `initializer()`.
    pub fn aggregate(
        &self,
        initializer: impl Fn() -> VA + Send + Sync + 'static,
        materialized: Materialized<VA>,
    ) -> KTable<Windowed<K>, VA> {
        self.cogrouped
            .grouped()
            .windowed_by(self.windows)
            .aggregate(initializer, |k, c, agg| c.add_to(k, agg), materialized)
    }
}

/// Cogrouped streams aggregated per key and session.
pub struct SessionWindowedCogroupedKStream<K, VA> {
    cogrouped: CogroupedKStream<K, VA>,
    windows: SessionWindows,
}

impl<K: Clone + Send + 'static, VA: Clone + Send + 'static> SessionWindowedCogroupedKStream<K, VA> {
    /// One aggregate per key and session, from `initializer()`; `merger(key, a, b)` combines
    /// the aggregates of sessions a record joins together.
    pub fn aggregate(
        &self,
        initializer: impl Fn() -> VA + Send + Sync + 'static,
        merger: impl Fn(&K, VA, VA) -> VA + Send + Sync + 'static,
        materialized: Materialized<VA>,
    ) -> KTable<Windowed<K>, VA> {
        self.cogrouped
            .grouped()
            .windowed_by_session(self.windows)
            .aggregate(
                initializer,
                |k, c, agg| c.add_to(k, agg),
                merger,
                materialized,
            )
    }
}
