//! # streams-core
//!
//! The runtime of kstreams: records and serdes, the Processor API, topologies, tasks, stream
//! threads, state stores with their changelogs, and the commit protocols (at-least-once and
//! exactly-once). `docs/ARCHITECTURE.md` in the repository describes the layers and the path
//! of a record; `use streams_core::prelude::*` brings in what a topology needs.
//!
//! The modules form layers, each using only those below it:
//!
//! 1. [`record`], [`serde`], [`error`], [`TaskId`], [`handlers`], [`metrics`]: what flows, what
//!    fails, and what is counted;
//! 2. [`store`]: state stores and their changelog write path;
//! 3. `node` (internal): the type-erased boundary between typed user code and the runtime;
//! 4. [`processor`]: the Processor API, typed, on top of it;
//! 5. [`topology`]: the graph of sources, processors, sinks and stores;
//! 6. `task` (internal): one sub-topology on one partition, and the task loop;
//! 7. [`runtime`] ([`KafkaStreams`]) and [`driver`] ([`TopologyTestDriver`]), which run tasks,
//!    configured by [`config`].

pub mod config;
pub mod driver;
pub mod error;
pub mod handlers;
pub mod metrics;
mod node;
mod partition;
pub mod prelude;
pub mod processor;
pub mod record;
pub mod runtime;
pub mod serde;
pub mod store;
mod task;
mod task_id;
pub mod topology;

pub use config::{ProcessingGuarantee, StreamsConfig};
pub use driver::TopologyTestDriver;
pub use error::{Error, Result};
pub use partition::{KeyPartitioner, PartitionFn};
pub use processor::{Processor, ProcessorContext, PunctuationType, PunctuatorId};
pub use record::{FixedKeyRecord, Headers, Record, RecordMetadata};
pub use runtime::{KafkaStreams, State};
pub use serde::{Serde, SerdeError};
pub use task_id::TaskId;
pub use topology::{Sink, Source, Topology, TopologyBuilder};

// The client libraries whose types appear in this crate's API: rdkafka (its errors in
// `Error::Kafka`) and RocksDB (the options a `store::RocksConfigSetter` changes).
pub use rdkafka;
pub use rocksdb;
