//! The one error type of `streams-core`, classified by what the caller can do about it.

use rdkafka::error::{KafkaError, RDKafkaErrorCode};

/// A result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the runtime.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration or the topology is invalid; nothing will work until it is fixed.
    #[error("invalid configuration: {0}")]
    Config(String),

    /// Something the runtime waited for did not happen in time (commits kept failing for
    /// longer than the task timeout, a broker unreachable).
    #[error("timed out: {0}")]
    Timeout(String),
    /// A Kafka client call failed.
    #[error("kafka: {context}: {source}")]
    Kafka {
        /// What the runtime was doing.
        context: String,
        /// The client's error.
        #[source]
        source: KafkaError,
    },
    /// User code (a processor, a punctuation) failed; the message is what it reported. Return
    /// it with [`Error::user`].
    #[error("{0}")]
    User(String),
    /// A bug in kstreams: something the runtime relies on did not hold. Please report it.
    #[error("internal error (a bug in kstreams): {0}")]
    Internal(String),
    /// A key or value could not be (de)serialized.
    #[error(transparent)]
    Serde(#[from] crate::serde::SerdeError),
    /// A local state store failed.
    #[error("state store {store}: {message}")]
    State {
        /// The store's name.
        store: String,
        /// What went wrong.
        message: String,
    },
    /// A record could not be deserialized and the handler said to fail.
    #[error("task {task}: record {topic}-{partition}@{offset} cannot be deserialized: {message}")]
    Deserialization {
        /// The task that read it.
        task: String,
        /// Its topic.
        topic: String,
        /// Its partition.
        partition: i32,
        /// Its offset.
        offset: i64,
        /// Why.
        message: String,
    },
    /// An output record could not be produced and the handler said to fail.
    #[error("producing to {topic} failed: {message}")]
    Production {
        /// The topic.
        topic: String,
        /// Why.
        message: String,
    },
    /// A task failed (a processor returned an error, or its store did).
    #[error("task {task}: {source}")]
    Task {
        /// The task's id.
        task: String,
        /// The error.
        #[source]
        source: Box<Error>,
    },
    /// A stream thread stopped on an error or a panic.
    #[error("stream thread {thread} died: {message}")]
    ThreadDied {
        /// The thread's name.
        thread: String,
        /// What happened.
        message: String,
    },
    /// A file-system operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What the runtime was doing.
        context: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// Wraps a Kafka client error with what the runtime was doing.
    pub fn kafka(context: impl Into<String>, source: KafkaError) -> Self {
        Error::Kafka {
            context: context.into(),
            source,
        }
    }

    /// An error of user code, for a processor to return.
    pub fn user(message: impl std::fmt::Display) -> Self {
        Error::User(message.to_string())
    }

    /// Wraps an error with the task it happened in (once).
    pub fn task(task: crate::TaskId, source: Error) -> Self {
        match source {
            Error::Task { .. } => source,
            other => Error::Task {
                task: task.to_string(),
                source: Box::new(other),
            },
        }
    }

    /// The error under any task wrapping.
    pub fn root(&self) -> &Error {
        match self {
            Error::Task { source, .. } => source.root(),
            other => other,
        }
    }

    /// The Kafka error code, if this is a Kafka error that carries one.
    pub fn kafka_code(&self) -> Option<RDKafkaErrorCode> {
        match self.root() {
            Error::Kafka { source, .. } => source.rdkafka_error_code(),
            _ => None,
        }
    }

    /// True when the same call may succeed if tried again (a broker is briefly unreachable,
    /// a coordinator is moving).
    pub fn is_retriable(&self) -> bool {
        match self.root() {
            Error::Kafka { source, .. } => match source {
                KafkaError::Transaction(e) => e.is_retriable(),
                _ => matches!(
                    source.rdkafka_error_code(),
                    Some(
                        RDKafkaErrorCode::RequestTimedOut
                            | RDKafkaErrorCode::OperationTimedOut
                            | RDKafkaErrorCode::NotCoordinator
                            | RDKafkaErrorCode::CoordinatorLoadInProgress
                            | RDKafkaErrorCode::CoordinatorNotAvailable
                            | RDKafkaErrorCode::BrokerTransportFailure
                            | RDKafkaErrorCode::AllBrokersDown
                            // A transaction holds the offsets asked for: stable once it ends.
                            | RDKafkaErrorCode::UnstableOffsetCommit
                    )
                ),
            },
            _ => false,
        }
    }

    /// True when this instance lost the right to act for its tasks: another producer with the
    /// same `transactional.id` took over, or the consumer group moved on. The tasks must drop
    /// their uncommitted work and rejoin; retrying the call is pointless.
    pub fn is_fenced(&self) -> bool {
        matches!(
            self.kafka_code(),
            Some(
                RDKafkaErrorCode::ProducerFenced
                    | RDKafkaErrorCode::InvalidProducerEpoch
                    | RDKafkaErrorCode::Fenced
                    | RDKafkaErrorCode::IllegalGeneration
                    | RDKafkaErrorCode::UnknownMemberId
                    | RDKafkaErrorCode::FencedInstanceId
            )
        )
    }

    /// True when the error cannot be recovered from in this process.
    pub fn is_fatal(&self) -> bool {
        match self.root() {
            Error::Config(_) | Error::User(_) | Error::Internal(_) => true,
            Error::Kafka {
                source: KafkaError::Transaction(e),
                ..
            } => e.is_fatal() && !self.is_fenced(),
            Error::Deserialization { .. } | Error::Production { .. } => true,
            Error::Kafka {
                source: KafkaError::MessageConsumptionFatal(_),
                ..
            } => true,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        let fenced = Error::kafka(
            "commit",
            KafkaError::MessageProduction(RDKafkaErrorCode::ProducerFenced),
        );
        assert!(fenced.is_fenced());
        assert!(!fenced.is_retriable());
        let timeout = Error::kafka(
            "poll",
            KafkaError::MessageConsumption(RDKafkaErrorCode::RequestTimedOut),
        );
        assert!(timeout.is_retriable());
        assert!(!timeout.is_fenced());
        assert!(Error::Config("no application id".into()).is_fatal());
    }
}
