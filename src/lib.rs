//! # kstreams
//!
//! Stream processing on Kafka topics, in Rust: the analogue of Apache Kafka Streams.
//!
//! This facade re-exports the two crates a user writes against:
//!
//! - [`core`] (`streams-core`): records, serdes, the Processor API, the runtime, state stores;
//! - [`dsl`] (`streams-dsl`): `StreamsBuilder`, `KStream`, `KTable`, aggregations, windows, joins.
//!
//! The project is young: see the README for what runs today.

pub use streams_core as core;
pub use streams_dsl as dsl;

/// The README's Rust code, compiled (not run: it needs a broker) with the doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
