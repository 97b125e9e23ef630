//! The record collector of a stream thread: tasks' output goes to its producer.

use std::collections::HashMap;
use std::time::Duration;

use super::commit::ProducerClient;
use crate::handlers::{ProductionErrorHandler, ProductionResponse};
use crate::node::{OutRecord, RecordCollector};
use crate::{Error, Result, SerdeError};

/// Sends the tasks' output through the thread's producer; under exactly-once the first send
/// of a commit interval begins the transaction.
pub(crate) struct Collector<'a> {
    pub(super) producer: &'a dyn ProducerClient,
    pub(super) in_transaction: &'a mut bool,
    pub(super) eos: bool,
    pub(super) partition_counts: &'a mut HashMap<String, i32>,
    pub(super) on_production_error: &'a dyn ProductionErrorHandler,
    pub(super) client_timeout: Duration,
}

impl RecordCollector for Collector<'_> {
    fn send(&mut self, record: OutRecord) -> Result<()> {
        if self.eos && !*self.in_transaction {
            self.producer
                .begin_transaction()
                .map_err(|e| Error::kafka("begin transaction", e))?;
            *self.in_transaction = true;
        }
        let Err(e) = self.producer.send(&record, self.client_timeout) else {
            return Ok(());
        };
        let error = Error::kafka(format!("send to {}", record.topic), e);
        if self.eos {
            // The transaction cannot commit without this record: the caller aborts it.
            return Err(error);
        }
        match self
            .on_production_error
            .handle(&record.topic, &error.to_string())
        {
            ProductionResponse::Continue => Ok(()),
            ProductionResponse::Fail => Err(Error::Production {
                topic: record.topic.to_string(),
                message: error.to_string(),
            }),
        }
    }

    fn partition_count(&mut self, topic: &str) -> Result<i32> {
        if let Some(&n) = self.partition_counts.get(topic) {
            return Ok(n);
        }
        let n = self.producer.partition_count(topic, self.client_timeout)?;
        self.partition_counts.insert(topic.to_string(), n);
        Ok(n)
    }

    fn serialization_error(&mut self, node: &str, topic: &str, error: SerdeError) -> Result<()> {
        let message = format!("sink {node}: {error}");
        match self.on_production_error.handle(topic, &message) {
            ProductionResponse::Continue => Ok(()),
            ProductionResponse::Fail => Err(Error::Production {
                topic: topic.to_string(),
                message,
            }),
        }
    }
}
