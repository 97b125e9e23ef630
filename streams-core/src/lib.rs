//! # streams-core
//!
//! The runtime of kstreams: records and serdes, the Processor API, topologies, tasks, stream
//! threads, state stores with their changelogs, and the commit protocols (at-least-once and
//! exactly-once). See `shared/DESIGN.md` of the project for the model.
//!
//! Today this crate holds the error type, records and serdes that the runtime builds on.

pub mod error;
pub mod record;
pub mod serde;

pub use error::{Error, Result};
pub use record::{Headers, Record, RecordOrigin};
pub use serde::{Serde, SerdeError};
