//! # streams-dsl
//!
//! The high-level DSL of kstreams, built on the Processor API of [`streams_core`]: a
//! [`StreamsBuilder`] reads topics as [`KStream`]s, operators transform them (stateless ones
//! such as `filter`, `map_values`, `flat_map`, `split`; stateful ones after `group_by_key` or
//! `group_by`: `count`, `reduce`, `aggregate`, per key or per time window), and the results are
//! written to topics or kept as [`KTable`]s. [`StreamsBuilder::build`] returns a
//! `streams_core::Topology`, run with `KafkaStreams` or tested with the `TopologyTestDriver`.
//!
//! Every operator is a node of the topology (its `describe()` shows them all); records pass
//! between nodes without allocation. Serdes come from the types ([`DefaultSerde`]) or from the
//! options structs ([`Consumed`], [`Produced`], [`Grouped`], [`Materialized`]); a type without
//! a default serde and no serde given does not compile.
//!
//! ```
//! use std::time::Duration;
//! use streams_dsl::{StreamsBuilder, TimeWindows, Windowed, WindowedSerde};
//! use streams_core::serde::{BigEndian, Utf8};
//! use streams_core::TopologyTestDriver;
//!
//! // Words per one-minute window.
//! let builder = StreamsBuilder::new();
//! let windows = TimeWindows::of_size_with_no_grace(Duration::from_secs(60));
//! builder
//!     .stream::<String, String>("lines")
//!     .flat_map_values(|line| line.split_whitespace().map(str::to_string).collect::<Vec<_>>())
//!     .group_by(|_, word| word.clone())
//!     .windowed_by(windows)
//!     .count()
//!     .to("word-counts");
//! let driver = TopologyTestDriver::new(builder.build()?)?;
//! let lines = driver.input_topic("lines", Utf8, Utf8);
//! let counts = driver.output_topic("word-counts", WindowedSerde::new(Utf8, windows), BigEndian);
//! lines.pipe_at(String::new(), "a b a".to_string(), 1_000)?;
//! lines.pipe_at(String::new(), "a".to_string(), 61_000)?;
//! let w = |key: &str, start| Windowed { key: key.to_string(), start, end: start + 60_000 };
//! assert_eq!(
//!     counts.read_key_values()?,
//!     vec![(w("a", 0), 1_u64), (w("b", 0), 1), (w("a", 0), 2), (w("a", 60_000), 1)]
//! );
//! # Ok::<(), streams_core::Error>(())
//! ```
//!
//! [`DefaultSerde`]: streams_core::serde::DefaultSerde

mod builder;
mod cache;
mod change;
mod cogroup;
mod fk_join;
mod graph;
mod grouped;
mod handles;
mod joins;
mod kstream;
mod ktable;
mod ops;
mod options;
mod sessions;
mod sliding;
mod stamped;
mod suppress;
mod table_joins;
mod view;
mod windowing;
mod windows;

pub use builder::{IntoTopics, StreamsBuilder};
pub use cogroup::{
    CogroupedKStream, SessionWindowedCogroupedKStream, TimeWindowedCogroupedKStream,
};
pub use handles::{
    GlobalKTable, KGroupedStream, KGroupedTable, KStream, KTable, SessionWindowedKStream,
    SlidingWindowedKStream, TimeWindowedKStream,
};
pub use kstream::BranchedKStream;
pub use options::{
    Consumed, Grouped, Joined, Materialized, Named, Produced, Repartitioned, StreamJoined,
};
pub use sessions::SessionWindowedSerde;
pub use streams_core;
pub use suppress::{Suppressed, WhenFull};
pub use windowing::{
    DroppedRecords, JoinWindows, LateRecords, SessionWindows, SlidingWindows, TimeWindows,
    Windowed, WindowedSerde,
};
