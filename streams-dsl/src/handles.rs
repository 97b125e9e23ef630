//! The DSL's handles: the typed streams, tables and grouped streams operators return. Their
//! operators are implemented in the modules named after them (`kstream`, `ktable`, `grouped`,
//! `windows`, `sessions`, `sliding`), which share these types and never each other.

use std::marker::PhantomData;
use std::sync::Arc;

use streams_core::serde::Serde;

use crate::graph::Shared;
use crate::options::Grouped;
use crate::windowing::{LateRecords, SessionWindows, SlidingWindows, TimeWindows};

/// A stream of records with keys of type `K` and values of type `V`. Every operator adds a
/// node to the topology and returns a new handle; a handle can feed several operators.
///
/// ```
/// use streams_core::serde::{BigEndian, Utf8};
/// use streams_core::TopologyTestDriver;
/// use streams_dsl::{Named, StreamsBuilder};
///
/// let builder = StreamsBuilder::new();
/// let amounts = builder.stream::<String, u64>("payments");
/// let mut branches = amounts
///     .map_values(|cents| cents / 100)
///     .split(Named::as_("euros-"))
///     .branch("large", |_, euros| *euros >= 1_000)
///     .default_branch("small");
/// branches.remove("euros-large").unwrap().to("large-payments");
/// let driver = TopologyTestDriver::new(builder.build()?)?;
/// let payments = driver.input_topic("payments", Utf8, BigEndian);
/// payments.pipe("p1".to_string(), 250_000_u64)?;
/// payments.pipe("p2".to_string(), 9_900_u64)?;
/// let large = driver.output_topic::<String, u64>("large-payments", Utf8, BigEndian);
/// assert_eq!(large.read_key_values()?, vec![("p1".to_string(), 2_500)]);
/// # Ok::<(), streams_core::Error>(())
/// ```
pub struct KStream<K, V> {
    pub(crate) graph: Shared,
    /// The node whose output this stream is.
    pub(crate) node: String,
    /// The operators from the sources to here, for generated names.
    pub(crate) path: String,
    /// The key may have changed since the last repartition: the next stateful operator
    /// reads through a repartition topic.
    pub(crate) key_changed: bool,
    /// The name the next operator's node gets ([`named`](KStream::named)).
    pub(crate) name_next: Option<String>,
    pub(crate) _types: PhantomData<fn(K, V)>,
}

/// A table: for each key, its latest value. Its updates flow downstream as changes (the new
/// value, or none when the row is deleted, and the old one), so that the operators after it
/// can retract what an update replaces: [`filter`](Self::filter) deletes a row that stops
/// matching, [`group_by`](Self::group_by) subtracts a row's old value from its old group. The
/// values are kept in the store [`store_name`](Self::store_name) (readable with interactive
/// queries).
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
    /// The node whose output is this table's changes (`Record<K, Change<V>>`).
    pub(crate) node: String,
    pub(crate) path: String,
    /// The table's own store, if it has one.
    pub(crate) store: Option<String>,
    /// How joins read its rows; without one, a join materializes the table first.
    pub(crate) view: Option<crate::view::TableView<K, V>>,
    pub(crate) keys: Arc<dyn Serde<K>>,
    pub(crate) values: Arc<dyn Serde<V>>,
}

/// A stream grouped by key: what [`count`](Self::count), [`reduce`](Self::reduce) and
/// [`aggregate`](Self::aggregate) aggregate per key. When the key changed upstream, the
/// aggregation reads through a repartition topic first (written inside the transaction under
/// exactly-once), so that all records of a key reach one task.
///
/// ```
/// use streams_core::serde::{BigEndian, Utf8};
/// use streams_core::TopologyTestDriver;
/// use streams_dsl::{Materialized, StreamsBuilder};
///
/// // Orders per customer: the orders are keyed by order id, so grouping by customer
/// // re-keys them through a repartition topic.
/// let builder = StreamsBuilder::new();
/// builder
///     .stream::<String, String>("orders")
///     .group_by(|_order, customer| customer.clone())
///     .count_with(Materialized::with(BigEndian).named("orders-per-customer"))
///     .to_stream()
///     .to("order-counts");
/// let driver = TopologyTestDriver::new(builder.build()?)?;
/// let orders = driver.input_topic("orders", Utf8, Utf8);
/// orders.pipe_at("o1".to_string(), "ann".to_string(), 10)?;
/// orders.pipe_at("o2".to_string(), "ann".to_string(), 20)?;
/// let counts = driver.output_topic::<String, u64>("order-counts", Utf8, BigEndian);
/// assert_eq!(
///     counts.read_key_values()?,
///     vec![("ann".to_string(), 1), ("ann".to_string(), 2)]
/// );
/// # Ok::<(), streams_core::Error>(())
/// ```
pub struct KGroupedStream<K, V> {
    pub(crate) stream: KStream<K, V>,
    pub(crate) grouped: Grouped<K, V>,
}

/// A table re-grouped by a new key ([`KTable::group_by`]): each change of a row arrives as a
/// subtraction of its old value from its old group and an addition of its new value to its
/// new group, so the aggregates follow rows that change or move.
///
/// ```
/// use streams_core::serde::{BigEndian, Utf8};
/// use streams_core::TopologyTestDriver;
/// use streams_dsl::{Materialized, StreamsBuilder};
///
/// // Users per city, from a table of user -> city.
/// let builder = StreamsBuilder::new();
/// builder
///     .table::<String, String>("user-cities", Materialized::with(Utf8))
///     .group_by(|user, city| (city.clone(), user.clone()))
///     .count()
///     .to_stream()
///     .to("users-per-city");
/// let driver = TopologyTestDriver::new(builder.build()?)?;
/// let input = driver.input_topic("user-cities", Utf8, Utf8);
/// input.pipe("ann".to_string(), "Oslo".to_string())?;
/// input.pipe("ann".to_string(), "Rome".to_string())?; // ann moves: Oslo loses her
/// let out = driver.output_topic::<String, u64>("users-per-city", Utf8, BigEndian);
/// let s = |c: &str| c.to_string();
/// assert_eq!(out.read_key_values()?, vec![(s("Oslo"), 1), (s("Oslo"), 0), (s("Rome"), 1)]);
/// # Ok::<(), streams_core::Error>(())
/// ```
pub struct KGroupedTable<K, V> {
    pub(crate) graph: Shared,
    /// The source reading the repartition topic (`Record<K, Delta<V>>`).
    pub(crate) node: String,
    pub(crate) path: String,
    pub(crate) keys: Arc<dyn Serde<K>>,
    pub(crate) values: Arc<dyn Serde<V>>,
}

/// A table of every partition of a topic, on every instance (Kafka Streams'
/// `GlobalKTable`): read whole before any task processes and kept up to date while the
/// application runs. Streams join it on a key they map each record to
/// ([`KStream::join_global`]), with no co-partitioning and no repartition. Its store is
/// readable by interactive queries (`KafkaStreams::global_store`).
///
/// ```
/// use streams_core::serde::Utf8;
/// use streams_core::TopologyTestDriver;
/// use streams_dsl::{Materialized, StreamsBuilder};
///
/// // Payments keyed by payment id; the value is the card, looked up in a global table.
/// let builder = StreamsBuilder::new();
/// let countries = builder.global_table::<String, String>("card-countries", Materialized::with(Utf8).named("countries"));
/// builder
///     .stream::<String, String>("payments")
///     .join_global(&countries, |_payment, card| card.clone(), |card, country| format!("{card} from {country}"))
///     .to("located-payments");
/// let driver = TopologyTestDriver::new(builder.build()?)?;
/// driver.input_topic("card-countries", Utf8, Utf8).pipe("card1".to_string(), "FR".to_string())?;
/// driver.input_topic("payments", Utf8, Utf8).pipe("pay1".to_string(), "card1".to_string())?;
/// let out = driver.output_topic::<String, String>("located-payments", Utf8, Utf8);
/// assert_eq!(out.read_key_values()?, vec![("pay1".to_string(), "card1 from FR".to_string())]);
/// let store = driver.global_store("countries").unwrap();
/// assert_eq!(store.get(&Utf8, &Utf8, &"card1".to_string())?, Some("FR".to_string()));
/// # Ok::<(), streams_core::Error>(())
/// ```
pub struct GlobalKTable<K, V> {
    pub(crate) store: String,
    pub(crate) keys: Arc<dyn Serde<K>>,
    pub(crate) values: Arc<dyn Serde<V>>,
}

impl<K, V> GlobalKTable<K, V> {
    /// The name of its (global) store.
    pub fn store_name(&self) -> &str {
        &self.store
    }
}

/// A grouped stream to aggregate per key and window.
///
/// ```
/// use std::time::Duration;
/// use streams_core::serde::{BigEndian, Utf8};
/// use streams_core::TopologyTestDriver;
/// use streams_dsl::{StreamsBuilder, TimeWindows, Windowed, WindowedSerde};
///
/// // Clicks per user and 10-second window, the final count only, once the window closed.
/// let windows = TimeWindows::of_size_and_grace(Duration::from_secs(10), Duration::from_secs(2));
/// let builder = StreamsBuilder::new();
/// builder
///     .stream::<String, String>("clicks")
///     .group_by_key()
///     .windowed_by(windows)
///     .emit_final()
///     .count()
///     .to("clicks-per-window");
/// let driver = TopologyTestDriver::new(builder.build()?)?;
/// let clicks = driver.input_topic("clicks", Utf8, Utf8);
/// for ts in [1_000, 4_000, 9_000] {
///     clicks.pipe_at("ann".to_string(), "/home".to_string(), ts)?;
/// }
/// clicks.pipe_at("ann".to_string(), "/cart".to_string(), 12_500)?; // closes [0, 10 s)
/// let out = driver.output_topic("clicks-per-window", WindowedSerde::new(Utf8, windows), BigEndian);
/// let window = Windowed { key: "ann".to_string(), start: 0, end: 10_000 };
/// assert_eq!(out.read_key_values()?, vec![(window, 3_u64)]);
/// # Ok::<(), streams_core::Error>(())
/// ```
pub struct TimeWindowedKStream<K, V> {
    pub(crate) grouped: KGroupedStream<K, V>,
    pub(crate) windows: TimeWindows,
    pub(crate) late: LateRecords,
    pub(crate) emit_final: bool,
    pub(crate) wall_clock: bool,
}

/// A grouped stream to aggregate per key and session.
///
/// ```
/// use std::time::Duration;
/// use streams_core::serde::{BigEndian, Nullable, Utf8};
/// use streams_core::TopologyTestDriver;
/// use streams_dsl::{SessionWindowedSerde, SessionWindows, StreamsBuilder, Windowed};
///
/// // Clicks per user session (30 s of inactivity ends a session).
/// let sessions = SessionWindows::with_inactivity_gap_and_no_grace(Duration::from_secs(30));
/// let builder = StreamsBuilder::new();
/// builder
///     .stream::<String, String>("clicks")
///     .group_by_key()
///     .windowed_by_session(sessions)
///     .count()
///     .to("clicks-per-session");
/// let driver = TopologyTestDriver::new(builder.build()?)?;
/// let clicks = driver.input_topic("clicks", Utf8, Utf8);
/// clicks.pipe_at("ann".to_string(), "/".to_string(), 1_000)?;
/// clicks.pipe_at("ann".to_string(), "/cart".to_string(), 20_000)?;
/// let out = driver.output_topic("clicks-per-session", SessionWindowedSerde::new(Utf8), Nullable(BigEndian));
/// let w = |start, end| Windowed { key: "ann".to_string(), start, end };
/// // The second click extends the session: the old one is retracted (None), the merged one
/// // replaces it.
/// assert_eq!(
///     out.read_key_values()?,
///     vec![(w(1_000, 1_000), Some(1_u64)), (w(1_000, 1_000), None), (w(1_000, 20_000), Some(2))]
/// );
/// # Ok::<(), streams_core::Error>(())
/// ```
pub struct SessionWindowedKStream<K, V> {
    pub(crate) grouped: KGroupedStream<K, V>,
    pub(crate) windows: SessionWindows,
    pub(crate) late: LateRecords,
    pub(crate) emit_final: bool,
}

/// A grouped stream to aggregate per key and sliding window.
///
/// ```
/// use std::time::Duration;
/// use streams_core::serde::{BigEndian, Utf8};
/// use streams_core::TopologyTestDriver;
/// use streams_dsl::{SlidingWindows, StreamsBuilder, Windowed};
///
/// // Logins per user within any 10 seconds.
/// let windows = SlidingWindows::of_time_difference_with_no_grace(Duration::from_secs(10));
/// let builder = StreamsBuilder::new();
/// builder
///     .stream::<String, String>("logins")
///     .group_by_key()
///     .windowed_by_sliding(windows)
///     .count()
///     .to("logins-in-10s");
/// let driver = TopologyTestDriver::new(builder.build()?)?;
/// let logins = driver.input_topic("logins", Utf8, Utf8);
/// logins.pipe_at("ann".to_string(), "web".to_string(), 20_000)?;
/// logins.pipe_at("ann".to_string(), "app".to_string(), 25_000)?;
/// let out = driver.output_topic("logins-in-10s", windows.key_serde(Utf8), BigEndian);
/// let w = |start| Windowed { key: "ann".to_string(), start, end: start + 10_000 };
/// assert_eq!(
///     out.read_key_values()?,
///     // [10 s, 20 s] holds the first; [15 s, 25 s] both; [20.001 s, 30.001 s] the second.
///     vec![(w(10_000), 1_u64), (w(15_000), 2), (w(20_001), 1)]
/// );
/// # Ok::<(), streams_core::Error>(())
/// ```
pub struct SlidingWindowedKStream<K, V> {
    pub(crate) grouped: KGroupedStream<K, V>,
    pub(crate) windows: SlidingWindows,
    pub(crate) late: LateRecords,
    pub(crate) emit_final: bool,
}
