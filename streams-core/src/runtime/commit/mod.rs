//! The commit protocols: exactly-once (one Kafka transaction per commit interval holding the
//! tasks' output and their consumed offsets) and at-least-once (output flushed, then offsets
//! committed to the group), behind one interface, [`CommitProtocol`].
//!
//! A protocol owns the thread's producer and makes every decision about it: when a
//! transaction begins and commits, what a failed commit or send means for the tasks
//! ([`Recovery`]), what happens on a revocation or a lost assignment. It reaches Kafka only
//! through [`ProducerClient`] and [`GroupConsumer`], so those decisions are unit-tested with
//! fakes (`tests.rs`) as well as against the broker (`tests/broker_faults.rs`,
//! `tests/txn_semantics.rs`). The stream thread carries the decisions out on its tasks (closing
//! them dirty, rewinding the consumer).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::types::RDKafkaErrorCode;

use super::collector::Collector;
use crate::handlers::{ProductionErrorHandler, ProductionResponse};
use crate::node::OutRecord;
use crate::task::{CommitOffset, Tasks};
use crate::{Error, Result};

/// Sends that failed: (topic, error).
type SendFailures = Vec<(String, KafkaError)>;

/// What the protocols need of a producer (librdkafka's, or a fake in tests).
pub(crate) trait ProducerClient: Send {
    fn begin_transaction(&self) -> KafkaResult<()>;
    /// Queues `record`; while the queue is full, serves delivery reports and tries again for
    /// up to `queue_full_wait`.
    fn send(&self, record: &OutRecord, queue_full_wait: Duration) -> KafkaResult<()>;
    /// Serves delivery reports.
    fn poll(&self);
    /// Waits until everything queued is delivered or failed.
    fn flush(&self, timeout: Duration) -> KafkaResult<()>;
    /// Adds the consumed offsets to the open transaction, for `consumer`'s group.
    fn send_offsets_to_transaction(
        &self,
        offsets: &[CommitOffset],
        consumer: &dyn GroupConsumer,
        timeout: Duration,
    ) -> Result<()>;
    fn commit_transaction(&self, timeout: Duration) -> KafkaResult<()>;
    fn abort_transaction(&self, timeout: Duration) -> KafkaResult<()>;
    /// Drops whatever it still holds, without waiting.
    fn purge(&self);
    /// Sends that failed since the last call.
    fn take_delivery_errors(&self) -> SendFailures;
    /// The last offset delivered per topic-partition since the last call.
    fn take_delivered(&self) -> HashMap<(String, i32), i64>;
    /// The partition count of `topic` from the cluster's metadata.
    fn partition_count(&self, topic: &str, timeout: Duration) -> Result<i32>;
}

/// What the protocols need of the group member's consumer.
pub(crate) trait GroupConsumer {
    /// The group's metadata, for offsets sent in a transaction (`None` from fakes, whose
    /// producers do not need it).
    fn group_metadata(&self) -> Option<ConsumerGroupMetadata>;
    /// Commits offsets to the group, synchronously.
    fn commit_offsets(&self, offsets: &[CommitOffset]) -> Result<()>;
}

/// What the thread does with its tasks after a failed commit or send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Recovery {
    /// Their uncommitted work is gone: close them dirty and rewind to the last commit.
    Rewind,
    /// Keep their work for the next commit (at-least-once after a retriable failure).
    RetryLater,
}

/// Makes the thread's producer (again, after one was dropped).
pub(crate) type ProducerFactory = Box<dyn FnMut() -> Result<Box<dyn ProducerClient>> + Send>;

/// A commit protocol. The thread calls [`collector`](Self::collector) to process,
/// [`commit`](Self::commit) every commit interval, and follows what
/// [`recover`](Self::recover) says after a failure.
pub(crate) trait CommitProtocol: Send {
    /// Makes sure there is a producer (at start, and after one was dropped).
    fn ensure_producer(&mut self) -> Result<()>;
    /// Where the tasks' output goes while they process.
    fn collector(&mut self) -> Result<Collector<'_>>;
    /// Serves the producer's delivery reports.
    fn poll(&self);
    /// Commits what the tasks did since the last commit: their output, their stores'
    /// changelog records, their consumed offsets; then the stores write what they held back.
    fn commit(&mut self, tasks: &mut Tasks, consumer: &dyn GroupConsumer) -> Result<()>;
    /// The offsets committed since the last call (repartition topics are purged up to them).
    fn take_committed_offsets(&mut self) -> Vec<CommitOffset>;
    /// After a failed commit or send: what the tasks must do, or the error again when no
    /// rewind can cure it (the thread stops).
    fn recover(&mut self, error: Error) -> Result<Recovery>;
    /// Drops the work of the open transaction without committing any of it (partitions lost,
    /// a rebalance error).
    fn abandon(&mut self);
    /// The thread stops: abandon what is open (unless the producer was fenced: it can neither
    /// abort nor commit, its successor ends its transaction), and drop the producer.
    fn stop(&mut self, fenced: bool);

    /// Partitions are revoked: commit the tasks' work unless the assignment was lost (another
    /// member may own the partitions already: commit nothing). Returns whether the tasks may
    /// close clean; an error is one no rewind cures.
    fn on_revoke(
        &mut self,
        tasks: &mut Tasks,
        consumer: &dyn GroupConsumer,
        lost: bool,
    ) -> Result<bool> {
        if lost {
            self.abandon();
            return Ok(false);
        }
        match self.commit(tasks, consumer) {
            Ok(()) => Ok(true),
            Err(e) => self.recover(e).map(|_| false),
        }
    }
}

/// The protocol of `guarantee`.
pub(crate) fn protocol(exactly_once: bool, output: Output) -> Box<dyn CommitProtocol> {
    if exactly_once {
        Box::new(ExactlyOnce(output))
    } else {
        Box::new(AtLeastOnce(output))
    }
}

/// The producer and what both protocols keep about it.
pub(crate) struct Output {
    producer: Option<Box<dyn ProducerClient>>,
    make_producer: ProducerFactory,
    in_transaction: bool,
    partition_counts: HashMap<String, i32>,
    on_production_error: Arc<dyn ProductionErrorHandler>,
    client_timeout: Duration,
    thread: String,
    /// The offsets committed since the protocol was last asked.
    committed_offsets: Vec<CommitOffset>,
}

impl Output {
    pub(crate) fn new(
        thread: String,
        make_producer: ProducerFactory,
        on_production_error: Arc<dyn ProductionErrorHandler>,
        client_timeout: Duration,
    ) -> Self {
        Output {
            producer: None,
            make_producer,
            in_transaction: false,
            partition_counts: HashMap::new(),
            on_production_error,
            client_timeout,
            thread,
            committed_offsets: vec![],
        }
    }

    fn ensure_producer(&mut self) -> Result<()> {
        if self.producer.is_none() {
            self.producer = Some((self.make_producer)()?);
            self.in_transaction = false;
        }
        Ok(())
    }

    fn producer(&self) -> Result<&dyn ProducerClient> {
        self.producer
            .as_deref()
            .ok_or_else(|| Error::Internal("the stream thread has no producer".into()))
    }

    fn collector(&mut self, eos: bool) -> Result<Collector<'_>> {
        let producer = self
            .producer
            .as_deref()
            .ok_or_else(|| Error::Internal("the stream thread has no producer".into()))?;
        Ok(Collector {
            producer,
            in_transaction: &mut self.in_transaction,
            eos,
            partition_counts: &mut self.partition_counts,
            on_production_error: &*self.on_production_error,
            client_timeout: self.client_timeout,
        })
    }

    fn poll(&self) {
        if let Some(p) = &self.producer {
            p.poll();
        }
    }

    /// The first half of a commit, common to both protocols: the tasks' prepared output is
    /// flushed; returns the offsets to commit and the sends that failed.
    fn prepare(
        &mut self,
        tasks: &mut Tasks,
        eos: bool,
    ) -> Result<(Vec<CommitOffset>, SendFailures)> {
        let offsets = {
            let mut collector = self.collector(eos)?;
            tasks.prepare_commit(&mut collector)?
        };
        let producer = self.producer()?;
        producer
            .flush(self.client_timeout)
            .map_err(|e| Error::kafka("flush", e))?;
        Ok((offsets, producer.take_delivery_errors()))
    }

    /// The commit took effect: the stores write what they held back, with the changelog
    /// offsets the producer reached.
    fn committed(&mut self, tasks: &mut Tasks) -> Result<()> {
        let delivered = self.producer()?.take_delivered();
        tasks.committed(&delivered, true)
    }

    /// Forgets the delivery reports of sends whose transaction will not commit.
    fn forget_sends(&mut self) {
        if let Some(p) = &self.producer {
            p.take_delivery_errors();
            p.take_delivered();
        }
    }

    fn abandon(&mut self) {
        let timeout = self.client_timeout;
        if self.in_transaction {
            self.in_transaction = false;
            if let Some(p) = &self.producer {
                let _ = p.flush(timeout);
                if let Err(e) = p.abort_transaction(timeout) {
                    tracing::warn!(thread = %self.thread, error = %e, "aborting the open transaction failed; replacing the producer");
                    self.drop_producer();
                }
            }
        }
        // After the flush and the abort: their delivery reports belong to the aborted
        // transaction too, and must not fail the next commit.
        self.forget_sends();
    }

    /// Drops the producer without waiting for what it still holds. Under exactly-once its
    /// successor (same `transactional.id`) fences it and ends its open transaction when it
    /// initialises.
    fn drop_producer(&mut self) {
        if let Some(p) = self.producer.take() {
            p.purge();
        }
        self.in_transaction = false;
    }

    /// Fenced: another producer with our transactional id, or the group, took the tasks over.
    fn fenced(&mut self, error: &Error) -> Result<Recovery> {
        tracing::warn!(thread = %self.thread, %error, "fenced: dropping uncommitted work and the producer");
        // A fenced producer cannot abort (and some brokers never answer); drop it.
        self.drop_producer();
        self.ensure_producer()?;
        Ok(Recovery::Rewind)
    }

    fn stop(&mut self, fenced: bool) {
        if !fenced {
            self.abandon();
        }
        self.producer = None;
        self.in_transaction = false;
    }
}

/// Runs a transactional call again (up to three times) while librdkafka says it is retriable:
/// a retriable failure (a timeout) leaves a commit in flight in librdkafka, which the next
/// call resumes; an abort would be refused.
pub(crate) fn retrying(mut call: impl FnMut() -> KafkaResult<()>) -> KafkaResult<()> {
    let mut attempt = 0;
    loop {
        match call() {
            Err(KafkaError::Transaction(e)) if e.is_retriable() && attempt < 3 => {
                attempt += 1;
                tracing::warn!(error = %e, attempt, "retrying a transactional call");
            }
            other => return other,
        }
    }
}

/// Exactly-once: output and offsets in one transaction per commit interval.
struct ExactlyOnce(Output);

impl CommitProtocol for ExactlyOnce {
    fn ensure_producer(&mut self) -> Result<()> {
        self.0.ensure_producer()
    }

    fn collector(&mut self) -> Result<Collector<'_>> {
        self.0.collector(true)
    }

    fn poll(&self) {
        self.0.poll();
    }

    fn commit(&mut self, tasks: &mut Tasks, consumer: &dyn GroupConsumer) -> Result<()> {
        if self.0.producer.is_none() || !(self.0.in_transaction || tasks.needs_commit()) {
            return Ok(());
        }
        let (offsets, failures) = self.0.prepare(tasks, true)?;
        if let Some((topic, e)) = failures.into_iter().next() {
            // The transaction cannot commit without the record: abort and rewind.
            return Err(Error::kafka(format!("send to {topic}"), e));
        }
        let Output {
            producer,
            in_transaction,
            client_timeout,
            ..
        } = &mut self.0;
        let timeout = *client_timeout;
        if *in_transaction || !offsets.is_empty() {
            let producer = producer
                .as_deref()
                .ok_or_else(|| Error::Internal("the stream thread has no producer".into()))?;
            if !*in_transaction {
                producer
                    .begin_transaction()
                    .map_err(|e| Error::kafka("begin transaction", e))?;
                *in_transaction = true;
            }
            if !offsets.is_empty() {
                producer.send_offsets_to_transaction(&offsets, consumer, timeout)?;
            }
            retrying(|| producer.commit_transaction(timeout))
                .map_err(|e| Error::kafka("commit transaction", e))?;
            *in_transaction = false;
        }
        self.0.committed(tasks)?;
        self.0.committed_offsets.extend(offsets.iter().cloned());
        tracing::debug!(thread = %self.0.thread, partitions = offsets.len(), "committed");
        Ok(())
    }

    fn take_committed_offsets(&mut self) -> Vec<CommitOffset> {
        std::mem::take(&mut self.0.committed_offsets)
    }

    fn recover(&mut self, error: Error) -> Result<Recovery> {
        if error.is_fenced() {
            return self.0.fenced(&error);
        }
        if !cured_by_rewind(&error) {
            return Err(error);
        }
        // Whatever this transaction holds is dropped, and the producer is replaced after the
        // abort. An abort can fail (a commit still in flight after a timeout, a broker that
        // does not answer), and one that librdkafka reports done after records timed out may
        // leave the broker holding the transaction open (produce requests that were on the
        // wire): the successor's initialisation, with the same transactional id, ends it on
        // the broker either way, and the rewind reads the outcome back (committed offsets from
        // the group, committed changelog records by restoration).
        tracing::warn!(thread = %self.0.thread, %error, "the transaction cannot commit; aborting it and replacing the producer; the tasks reprocess from the last commit");
        self.0.abandon();
        self.0.drop_producer();
        self.0.ensure_producer()?;
        Ok(Recovery::Rewind)
    }

    fn abandon(&mut self) {
        self.0.abandon();
    }

    fn stop(&mut self, fenced: bool) {
        self.0.stop(fenced);
    }
}

/// At-least-once: output flushed, then offsets committed to the group.
struct AtLeastOnce(Output);

impl CommitProtocol for AtLeastOnce {
    fn ensure_producer(&mut self) -> Result<()> {
        self.0.ensure_producer()
    }

    fn collector(&mut self) -> Result<Collector<'_>> {
        self.0.collector(false)
    }

    fn poll(&self) {
        self.0.poll();
    }

    fn commit(&mut self, tasks: &mut Tasks, consumer: &dyn GroupConsumer) -> Result<()> {
        if self.0.producer.is_none() || !tasks.needs_commit() {
            return Ok(());
        }
        let (offsets, failures) = self.0.prepare(tasks, false)?;
        for (topic, e) in failures {
            let error = Error::kafka(format!("send to {topic}"), e);
            if error.is_fenced() {
                return Err(error);
            }
            if self
                .0
                .on_production_error
                .handle(&topic, &error.to_string())
                == ProductionResponse::Fail
            {
                return Err(Error::Production {
                    topic,
                    message: error.to_string(),
                });
            }
        }
        if !offsets.is_empty() {
            consumer.commit_offsets(&offsets)?;
        }
        self.0.committed(tasks)?;
        self.0.committed_offsets.extend(offsets.iter().cloned());
        tracing::debug!(thread = %self.0.thread, partitions = offsets.len(), "committed");
        Ok(())
    }

    fn take_committed_offsets(&mut self) -> Vec<CommitOffset> {
        std::mem::take(&mut self.0.committed_offsets)
    }

    fn recover(&mut self, error: Error) -> Result<Recovery> {
        if error.is_fenced() {
            return self.0.fenced(&error);
        }
        if error.is_retriable() {
            // The tasks keep their work and consumed offsets; the next commit tries again.
            tracing::warn!(thread = %self.0.thread, %error, "commit failed; retrying at the next interval");
            return Ok(Recovery::RetryLater);
        }
        Err(error)
    }

    fn abandon(&mut self) {
        self.0.abandon();
    }

    fn stop(&mut self, fenced: bool) {
        self.0.stop(fenced);
    }
}

/// Errors after which an exactly-once thread aborts and reprocesses from its last commit
/// instead of stopping: the broker was slow or away (timeouts, lost connections, a
/// coordinator moving), a send was not delivered in time, or librdkafka says the transaction
/// must abort. Anything else (a topic that does not exist, a record too large, missing
/// authorisation) would fail again after the rewind, and stops the thread.
pub(crate) fn cured_by_rewind(error: &Error) -> bool {
    let Error::Kafka { source, .. } = error.root() else {
        return false;
    };
    if let KafkaError::Transaction(e) = source {
        // A fatal producer error (an idempotence sequence out of sync) ends that producer
        // only: it is replaced.
        return e.txn_requires_abort() || e.is_retriable() || e.is_fatal();
    }
    error.is_retriable()
        || matches!(
            source.rdkafka_error_code(),
            Some(
                RDKafkaErrorCode::MessageTimedOut
                    | RDKafkaErrorCode::PurgeQueue
                    | RDKafkaErrorCode::PurgeInflight
                    | RDKafkaErrorCode::NotEnoughReplicas
                    | RDKafkaErrorCode::NotEnoughReplicasAfterAppend
                    | RDKafkaErrorCode::NotLeaderForPartition
                    | RDKafkaErrorCode::LeaderNotAvailable
                    | RDKafkaErrorCode::NetworkException
                    | RDKafkaErrorCode::OutOfOrderSequenceNumber
                    | RDKafkaErrorCode::UnknownProducerId
                    | RDKafkaErrorCode::Fatal
                    | RDKafkaErrorCode::InconsistentGroupProtocol
                    | RDKafkaErrorCode::RebalanceInProgress
                    | RDKafkaErrorCode::ConcurrentTransactions
                    | RDKafkaErrorCode::QueueFull
            )
        )
}

/// The protocols' decisions, with a fake producer and consumer: no broker.
#[cfg(test)]
mod tests;
