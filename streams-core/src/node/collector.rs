//! Records at the edges of a task, and where its output goes.

use std::sync::Arc;

use crate::{Error, Headers, RecordMetadata, Result, SerdeError};

/// A record as read from a topic, before its source's serdes.
#[derive(Debug, Clone)]
pub(crate) struct RawRecord {
    pub(crate) topic: Arc<str>,
    pub(crate) partition: i32,
    pub(crate) offset: i64,
    pub(crate) timestamp: i64,
    pub(crate) key: Option<Vec<u8>>,
    pub(crate) value: Option<Vec<u8>>,
    pub(crate) headers: Headers,
}

impl RawRecord {
    pub(crate) fn metadata(&self) -> RecordMetadata {
        RecordMetadata {
            topic: self.topic.clone(),
            partition: self.partition,
            offset: self.offset,
        }
    }
}

/// A serialized output record.
#[derive(Debug, Clone)]
pub(crate) struct OutRecord {
    pub(crate) topic: Arc<str>,
    pub(crate) partition: Option<i32>,
    pub(crate) key: Option<Vec<u8>>,
    pub(crate) value: Option<Vec<u8>>,
    pub(crate) timestamp: i64,
    pub(crate) headers: Headers,
}

/// Where a task's output goes: the producer in the runtime, queues in the test driver.
pub(crate) trait RecordCollector {
    fn send(&mut self, record: OutRecord) -> Result<()>;
    fn partition_count(&mut self, topic: &str) -> Result<i32>;
    /// An output record could not be serialized; decide with the production handler.
    fn serialization_error(&mut self, node: &str, topic: &str, error: SerdeError) -> Result<()>;
}

/// A collector for `init` and `close`, where forwarding is not allowed.
pub(crate) struct NoOutput;

impl RecordCollector for NoOutput {
    fn send(&mut self, record: OutRecord) -> Result<()> {
        Err(Error::Config(format!(
            "a processor forwarded a record to {} from init; forward from process or punctuate",
            record.topic
        )))
    }
    fn partition_count(&mut self, topic: &str) -> Result<i32> {
        Err(Error::Config(format!(
            "no partition count of {topic} during init"
        )))
    }
    fn serialization_error(&mut self, _: &str, _: &str, error: SerdeError) -> Result<()> {
        Err(error.into())
    }
}
