//! # streams-core
//!
//! The runtime of kstreams: records and serdes, the Processor API, topologies, tasks, stream
//! threads, state stores with their changelogs, and the commit protocols (at-least-once and
//! exactly-once). See `shared/DESIGN.md` of the project for the model.

pub mod config;
pub mod driver;
pub mod error;
pub mod handlers;
pub mod processor;
pub mod record;
pub mod runtime;
pub mod serde;
pub mod store;
pub mod task;
pub mod topology;

pub use config::{ProcessingGuarantee, StreamsConfig};
pub use driver::TopologyTestDriver;
pub use error::{Error, Result};
pub use processor::{Processor, ProcessorContext, PunctuationType, PunctuatorId};
pub use record::{Headers, Record, RecordOrigin};
pub use runtime::{KafkaStreams, State};
pub use serde::{Serde, SerdeError};
pub use task::TaskId;
pub use topology::{Sink, Source, Topology, TopologyBuilder};
