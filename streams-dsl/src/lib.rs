//! # streams-dsl
//!
//! The high-level DSL of kstreams (`StreamsBuilder`, `KStream`, `KTable`, grouping,
//! aggregations, windows, joins), built on the Processor API of [`streams_core`].
//!
//! Nothing is here yet: the DSL comes after the runtime and the state stores.

pub use streams_core;
