//! What happens to records that cannot be read or written.
//!
//! A record whose bytes the source's serdes reject (a poison record) goes to the configured
//! [`DeserializationErrorHandler`]: [`LogAndFail`] (the default) stops the stream thread with an
//! error naming the record, [`LogAndContinue`] skips it with a warning, and
//! [`DeadLetterTopic`] writes its original bytes to a topic with the error in headers (inside
//! the same transaction as the task's output under exactly-once). Output records that cannot be
//! serialized, and (under at-least-once) sends the broker rejects, go to the
//! [`ProductionErrorHandler`].

use crate::TaskId;

/// The record that failed and where it came from.
#[derive(Debug)]
pub struct ErrorContext<'a> {
    /// The task that read it.
    pub task: TaskId,
    /// Its topic.
    pub topic: &'a str,
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// Its key bytes.
    pub key: Option<&'a [u8]>,
    /// Its value bytes.
    pub value: Option<&'a [u8]>,
}

/// What to do with a record that could not be deserialized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeserializationResponse {
    /// Skip it (its offset is committed; the handler has logged it).
    Continue,
    /// Stop the stream thread with an error; the offset is not committed.
    Fail,
    /// Write its original key, value and headers to this topic, with the error in headers
    /// named `kstreams.error.*`, then go on.
    DeadLetter(String),
}

/// Decides the fate of poison records.
pub trait DeserializationErrorHandler: Send + Sync + 'static {
    /// Called once per record that the source's serdes (or timestamp extractor) reject.
    fn handle(&self, context: &ErrorContext<'_>, error: &str) -> DeserializationResponse;
}

/// Logs the record and stops the thread (the default).
#[derive(Debug, Clone, Copy, Default)]
pub struct LogAndFail;

impl DeserializationErrorHandler for LogAndFail {
    fn handle(&self, c: &ErrorContext<'_>, error: &str) -> DeserializationResponse {
        tracing::error!(task = %c.task, topic = c.topic, partition = c.partition, offset = c.offset, %error, "record cannot be deserialized; failing");
        DeserializationResponse::Fail
    }
}

/// Logs the record and skips it.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogAndContinue;

impl DeserializationErrorHandler for LogAndContinue {
    fn handle(&self, c: &ErrorContext<'_>, error: &str) -> DeserializationResponse {
        tracing::warn!(task = %c.task, topic = c.topic, partition = c.partition, offset = c.offset, %error, "record cannot be deserialized; skipping it");
        DeserializationResponse::Continue
    }
}

/// Sends poison records to a dead-letter topic.
#[derive(Debug, Clone)]
pub struct DeadLetterTopic(pub String);

impl DeserializationErrorHandler for DeadLetterTopic {
    fn handle(&self, c: &ErrorContext<'_>, error: &str) -> DeserializationResponse {
        tracing::warn!(task = %c.task, topic = c.topic, partition = c.partition, offset = c.offset, %error, dead_letter_topic = %self.0, "record cannot be deserialized; sending it to the dead-letter topic");
        DeserializationResponse::DeadLetter(self.0.clone())
    }
}

/// Header names on dead-letter records.
pub mod headers {
    /// The error message.
    pub const MESSAGE: &str = "kstreams.error.message";
    /// The topic the record was read from.
    pub const TOPIC: &str = "kstreams.error.topic";
    /// Its partition (decimal text).
    pub const PARTITION: &str = "kstreams.error.partition";
    /// Its offset (decimal text).
    pub const OFFSET: &str = "kstreams.error.offset";
    /// The task that read it.
    pub const TASK: &str = "kstreams.error.task";
}

/// What to do with an output record that cannot be produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProductionResponse {
    /// Drop the record (the handler has logged it) and go on.
    Continue,
    /// Stop the stream thread with an error.
    Fail,
}

/// Decides the fate of output records that cannot be serialized or (under at-least-once) that
/// the broker rejects. Under exactly-once a rejected send aborts the transaction whatever this
/// says, because the transaction can no longer commit.
pub trait ProductionErrorHandler: Send + Sync + 'static {
    /// Called once per failed output record.
    fn handle(&self, topic: &str, error: &str) -> ProductionResponse;
}

/// Logs and stops the thread (the default).
#[derive(Debug, Clone, Copy, Default)]
pub struct FailOnProductionError;

impl ProductionErrorHandler for FailOnProductionError {
    fn handle(&self, topic: &str, error: &str) -> ProductionResponse {
        tracing::error!(topic, %error, "output record cannot be produced; failing");
        ProductionResponse::Fail
    }
}

/// Logs and drops the record.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogAndSkipOnProductionError;

impl ProductionErrorHandler for LogAndSkipOnProductionError {
    fn handle(&self, topic: &str, error: &str) -> ProductionResponse {
        tracing::warn!(topic, %error, "output record cannot be produced; dropping it");
        ProductionResponse::Continue
    }
}
