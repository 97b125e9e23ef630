//! What most topologies need, in one import: `use streams_core::prelude::*;`.

pub use crate::config::{ProcessingGuarantee, StreamsConfig};
pub use crate::driver::TopologyTestDriver;
pub use crate::error::{Error, Result};
pub use crate::handlers::{DeadLetterTopic, LogAndContinue, LogAndFail};
pub use crate::processor::{
    FixedKeyProcessor, FixedKeyProcessorContext, Processor, ProcessorContext, PunctuationType,
    PunctuatorId,
};
pub use crate::record::{FixedKeyRecord, Headers, Record, RecordMetadata};
pub use crate::runtime::{KafkaStreams, State};
pub use crate::serde::{
    BigEndian, DefaultSerde, Json, JsonSerde, Nullable, RawBytes, Serde, SerdeError, Unit, Utf8,
};
pub use crate::store::{KeyValueStore, SessionStore, StateStore, WindowStore};
pub use crate::topology::{Sink, Source, Topology, TopologyBuilder};
pub use crate::TaskId;
