//! A stream thread: one consumer, one producer, many tasks.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers as _, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use super::{Shared, ThreadState};
use crate::config::{ProcessingGuarantee, StreamsConfig};
use crate::handlers::ProductionResponse;
use crate::processor::PunctuationType;
use crate::store::RocksResources;
use crate::task::{OutRecord, RawRecord, RecordCollector, Task, TaskId};
use crate::topology::Topology;
use crate::{Error, Headers, Result, SerdeError};

const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

/// Send failures reported by the producer's delivery callback.
#[derive(Clone, Default)]
pub(crate) struct DeliveryErrors(Arc<Mutex<Vec<(String, KafkaError)>>>);

impl DeliveryErrors {
    fn take(&self) -> Vec<(String, KafkaError)> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// The last offset delivered per topic-partition since the last commit (for changelog offsets).
pub(crate) type Delivered = Arc<Mutex<HashMap<(String, i32), i64>>>;

pub(crate) struct ProducerCtx {
    errors: DeliveryErrors,
    delivered: Delivered,
}

impl ClientContext for ProducerCtx {}

impl ProducerContext for ProducerCtx {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Ok(msg) = result {
            let mut d = self.delivered.lock().unwrap_or_else(|e| e.into_inner());
            let entry = d
                .entry((msg.topic().to_string(), msg.partition()))
                .or_insert(-1);
            *entry = (*entry).max(msg.offset());
        }
        if let Err((e, msg)) = result {
            self.errors
                .0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((msg.topic().to_string(), e.clone()));
        }
    }
}

type Producer_ = BaseProducer<ProducerCtx>;

/// Everything the thread owns besides its consumer; the consumer's rebalance callbacks reach it
/// through the consumer context.
pub(crate) struct Inner {
    name: String,
    index: usize,
    topology: Topology,
    config: StreamsConfig,
    app_id: Arc<str>,
    transactional_id: String,
    shared: Arc<Shared>,
    tasks: BTreeMap<TaskId, Task>,
    /// Resolved source topic -> sub-topology.
    topic_owner: HashMap<String, u32>,
    producer: Option<Producer_>,
    delivery_errors: DeliveryErrors,
    delivered: Delivered,
    rocks: RocksResources,
    restorer: Option<BaseConsumer>,
    in_transaction: bool,
    partition_counts: HashMap<String, i32>,
    /// A fatal error raised inside a rebalance callback, handed to the main loop.
    pending_error: Option<Error>,
    /// Set once the thread failed: nothing may be committed any more (the rebalance
    /// callbacks that run while the consumer closes must not commit half-done work).
    failed: bool,
}

pub(crate) struct ThreadContext {
    inner: Mutex<Inner>,
}

impl ThreadContext {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl ClientContext for ThreadContext {}

impl ConsumerContext for ThreadContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        // User code (processors' close) runs here, inside a librdkafka callback: a panic must
        // not unwind into C.
        self.guarded(|| self.on_pre_rebalance(consumer, rebalance));
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        self.guarded(|| self.on_post_rebalance(rebalance));
    }
}

impl ThreadContext {
    fn guarded(&self, f: impl FnOnce()) {
        if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
            let message = super::panic_message(&*panic);
            let mut inner = self.lock();
            inner.failed = true;
            let thread = inner.name.clone();
            inner.pending_error.get_or_insert(Error::ThreadDied {
                thread,
                message: format!("panicked in a rebalance callback: {message}"),
            });
        }
    }

    fn on_pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let mut inner = self.lock();
        match rebalance {
            Rebalance::Revoke(tpl) => {
                inner.set_state(ThreadState::PartitionsRevoked);
                if inner.failed || consumer.assignment_lost() {
                    // Another member may own these partitions already: commit nothing.
                    tracing::warn!(thread = %inner.name, failed = inner.failed, "partitions lost; closing tasks without commit");
                    inner.abandon_transaction();
                    inner.close_all_tasks(false);
                    return;
                }
                tracing::info!(thread = %inner.name, partitions = tpl.count(), "partitions revoked; committing and closing tasks");
                let clean = match inner.commit(consumer) {
                    Ok(()) => true,
                    Err(e) => {
                        if let Err(e) = inner.handle_commit_failure(e) {
                            inner.pending_error.get_or_insert(e);
                        }
                        false
                    }
                };
                inner.close_all_tasks(clean);
            }
            Rebalance::Assign(_) => inner.set_state(ThreadState::PartitionsAssigned),
            Rebalance::Error(e) => {
                // librdkafka unassigns the partitions: drop the tasks' uncommitted work.
                tracing::warn!(thread = %inner.name, error = %e, "rebalance error; closing tasks without commit");
                inner.abandon_transaction();
                inner.close_all_tasks(false);
            }
        }
    }

    fn on_post_rebalance(&self, rebalance: &Rebalance<'_>) {
        let mut inner = self.lock();
        if inner.failed {
            return;
        }
        if let Rebalance::Assign(tpl) = rebalance {
            let parts: Vec<(String, i32)> = tpl
                .elements()
                .iter()
                .map(|e| (e.topic().to_string(), e.partition()))
                .collect();
            if let Err(e) = inner.create_tasks(&parts) {
                inner.pending_error.get_or_insert(e);
            }
            inner.set_state(ThreadState::Running);
        }
    }
}

/// Builds a client config: the user's pass-through properties first, then the settings the
/// runtime's guarantees rest on, which win (with a warning when the user tried to change them).
fn with_pinned(
    mut c: ClientConfig,
    user: &std::collections::BTreeMap<String, String>,
    pinned: &[(&str, String)],
) -> ClientConfig {
    for (k, v) in user {
        c.set(k, v);
    }
    for (k, v) in pinned {
        if user.get(*k).is_some_and(|u| u != v) {
            tracing::warn!(property = k, ignored = %user[*k], kept = %v, "the runtime needs this client property; the configured value is ignored");
        }
        c.set(*k, v);
    }
    c
}

/// Runs a transactional call again (up to three times) while librdkafka says it is retriable.
fn retrying(
    mut call: impl FnMut() -> rdkafka::error::KafkaResult<()>,
) -> rdkafka::error::KafkaResult<()> {
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

/// Copies a Kafka headers list into ours.
fn copy_headers(h: Option<&rdkafka::message::BorrowedHeaders>) -> Headers {
    let mut out = Headers::new();
    if let Some(h) = h {
        for header in h.iter() {
            out = out.with(header.key, header.value);
        }
    }
    out
}

struct Collector<'a> {
    producer: &'a Producer_,
    in_transaction: &'a mut bool,
    eos: bool,
    partition_counts: &'a mut HashMap<String, i32>,
    config: &'a StreamsConfig,
}

impl RecordCollector for Collector<'_> {
    fn send(&mut self, record: OutRecord) -> Result<()> {
        if self.eos && !*self.in_transaction {
            self.producer
                .begin_transaction()
                .map_err(|e| Error::kafka("begin transaction", e))?;
            *self.in_transaction = true;
        }
        let mut base: BaseRecord<'_, [u8], [u8]> =
            BaseRecord::to(&record.topic).timestamp(record.timestamp);
        if !record.headers.is_empty() {
            let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
            for (k, v) in record.headers.iter() {
                headers = headers.insert(Header { key: k, value: v });
            }
            base = base.headers(headers);
        }
        if let Some(k) = &record.key {
            base = base.key(k.as_slice());
        }
        if let Some(v) = &record.value {
            base = base.payload(v.as_slice());
        }
        if let Some(p) = record.partition {
            base = base.partition(p);
        }
        loop {
            match self.producer.send(base) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    base = back;
                    self.producer.poll(Duration::from_millis(5));
                }
                Err((e, _)) => {
                    let error = Error::kafka(format!("send to {}", record.topic), e);
                    if self.eos {
                        return Err(error);
                    }
                    return match self
                        .config
                        .on_production_error
                        .handle(&record.topic, &error.to_string())
                    {
                        ProductionResponse::Continue => Ok(()),
                        ProductionResponse::Fail => Err(Error::Production {
                            topic: record.topic.to_string(),
                            message: error.to_string(),
                        }),
                    };
                }
            }
        }
    }

    fn partition_count(&mut self, topic: &str) -> Result<i32> {
        if let Some(&n) = self.partition_counts.get(topic) {
            return Ok(n);
        }
        let md = self
            .producer
            .client()
            .fetch_metadata(Some(topic), CLIENT_TIMEOUT)
            .map_err(|e| Error::kafka(format!("metadata of {topic}"), e))?;
        let n = md
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none())
            .map(|t| t.partitions().len() as i32)
            .filter(|&n| n > 0)
            .ok_or_else(|| Error::Config(format!("output topic {topic} does not exist")))?;
        self.partition_counts.insert(topic.to_string(), n);
        Ok(n)
    }

    fn serialization_error(&mut self, node: &str, topic: &str, error: SerdeError) -> Result<()> {
        let message = format!("sink {node}: {error}");
        match self.config.on_production_error.handle(topic, &message) {
            ProductionResponse::Continue => Ok(()),
            ProductionResponse::Fail => Err(Error::Production {
                topic: topic.to_string(),
                message,
            }),
        }
    }
}

impl Inner {
    fn eos(&self) -> bool {
        self.config.guarantee == ProcessingGuarantee::ExactlyOnce
    }

    fn set_state(&self, state: ThreadState) {
        self.shared.set_thread_state(self.index, state);
    }

    fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.config.bootstrap_servers);
        c
    }

    fn create_producer(&mut self) -> Result<()> {
        let mut c = self.client_config();
        c.set("client.id", format!("{}-producer", self.name))
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("partitioner", "murmur2_random");
        let mut pinned = vec![("enable.idempotence", "true".to_string())];
        if self.eos() {
            pinned.push(("transactional.id", self.transactional_id.clone()));
            pinned.push((
                "transaction.timeout.ms",
                self.config.transaction_timeout.as_millis().to_string(),
            ));
        }
        let c = with_pinned(c, &self.config.client_properties, &pinned);
        let producer: Producer_ = c
            .create_with_context(ProducerCtx {
                errors: self.delivery_errors.clone(),
                delivered: self.delivered.clone(),
            })
            .map_err(|e| Error::kafka("create producer", e))?;
        if self.eos() {
            let started = Instant::now();
            loop {
                match producer.init_transactions(CLIENT_TIMEOUT) {
                    Ok(()) => break,
                    Err(e) => {
                        let e = Error::kafka(
                            format!("init transactions of {}", self.transactional_id),
                            e,
                        );
                        if e.is_retriable()
                            && started.elapsed() < self.config.transaction_timeout * 2
                        {
                            tracing::warn!(thread = %self.name, error = %e, "retrying");
                            continue;
                        }
                        return Err(e);
                    }
                }
            }
            tracing::info!(thread = %self.name, transactional_id = %self.transactional_id, "transactional producer ready");
        }
        self.producer = Some(producer);
        self.in_transaction = false;
        Ok(())
    }

    /// Aborts the open transaction if there is one and the producer can (it cannot when
    /// fenced: then it is dropped).
    /// Forgets the delivery reports of sends whose transaction will not commit.
    fn forget_sends(&mut self) {
        self.delivery_errors.take();
        self.delivered
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    fn abandon_transaction(&mut self) {
        self.forget_sends();
        if !self.in_transaction {
            return;
        }
        self.in_transaction = false;
        if let Some(p) = &self.producer {
            let _ = p.flush(CLIENT_TIMEOUT);
            if let Err(e) = p.abort_transaction(CLIENT_TIMEOUT) {
                tracing::warn!(thread = %self.name, error = %e, "aborting the open transaction failed; dropping the producer");
                self.producer = None;
            }
        }
    }

    fn producer(&self) -> Result<&Producer_> {
        self.producer
            .as_ref()
            .ok_or_else(|| Error::Config("the stream thread has no producer".into()))
    }

    fn create_tasks(&mut self, partitions: &[(String, i32)]) -> Result<()> {
        let mut ids: Vec<TaskId> = partitions
            .iter()
            .filter_map(|(t, p)| {
                self.topic_owner.get(t).map(|&s| TaskId {
                    subtopology: s,
                    partition: *p,
                })
            })
            .collect();
        ids.sort();
        ids.dedup();
        let now = super::now_ms();
        let app_dir = self.config.state_dir.join(&*self.app_id);
        for id in ids {
            if self.tasks.contains_key(&id) {
                continue;
            }
            let dir = app_dir.join(id.to_string());
            let mut task = Task::new(
                &self.topology,
                id,
                &self.app_id,
                Some(&dir),
                now,
                &self.rocks,
            )?;
            if !self.restore(&mut task)? {
                let _ = task.close(false);
                break;
            }
            self.tasks.insert(id, task);
        }
        self.publish_tasks();
        let ids: Vec<String> = self.tasks.keys().map(ToString::to_string).collect();
        tracing::info!(thread = %self.name, tasks = ?ids, "partitions assigned; tasks created");
        Ok(())
    }

    fn publish_tasks(&self) {
        let handles = self.tasks.values().flat_map(Task::query_handles).collect();
        self.shared
            .set_thread_tasks(self.index, self.tasks.keys().copied().collect(), handles);
    }

    /// Brings the task's change-logged stores up to their changelogs' ends, from the offset
    /// each store has committed (or from the beginning), reading `read_committed`.
    /// Returns false when a shutdown interrupted it (the task must not run).
    fn restore(&mut self, task: &mut Task) -> Result<bool> {
        if self.restorer.is_none() {
            let mut c = self.client_config();
            c.set("client.id", format!("{}-restore-consumer", self.name));
            let c = with_pinned(
                c,
                &self.config.client_properties,
                &[
                    ("group.id", format!("{}-restore", self.app_id)),
                    ("enable.auto.commit", "false".into()),
                    ("enable.auto.offset.store", "false".into()),
                    ("enable.partition.eof", "true".into()),
                    ("isolation.level", "read_committed".into()),
                    // A stored offset the changelog no longer has (truncated, recreated):
                    // replay what it has rather than jump to the end.
                    ("auto.offset.reset", "earliest".into()),
                ],
            );
            self.restorer = Some(
                c.create()
                    .map_err(|e| Error::kafka("create restore consumer", e))?,
            );
        }
        let consumer = self.restorer.as_ref().unwrap();
        let shutdown = &self.shared.shutdown;
        let listener = self.config.restore_listener.clone();
        let task_id = task.id;
        for core in task.logged_stores() {
            let target = core.changelog.clone().unwrap();
            let mut from = core.committed_offset()?.map(|o| o + 1);
            if let Some(f) = from {
                // The changelog no longer holds the records after the stored offset (it was
                // truncated by retention, or deleted and recreated): the local state cannot be
                // brought forward, so rebuild it from what the changelog has.
                let (low, _) = consumer
                    .fetch_watermarks(&target.topic, target.partition, CLIENT_TIMEOUT)
                    .map_err(|e| Error::kafka(format!("watermarks of {}", target.topic), e))?;
                if f < low {
                    tracing::warn!(store = %core.name, partition = target.partition, stored = f - 1, log_start = low, "the changelog starts after the stored offset; wiping the store and restoring from the start");
                    core.bytes.wipe()?;
                    from = None;
                }
            }
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(
                &target.topic,
                target.partition,
                // Offset 0 rather than Beginning when nothing is stored: no ListOffsets round
                // trip; a changelog that starts later falls back to auto.offset.reset=earliest.
                Offset::Offset(from.unwrap_or(0)),
            )
            .map_err(|e| Error::kafka("restore assignment", e))?;
            consumer
                .assign(&tpl)
                .map_err(|e| Error::kafka("assign changelog", e))?;
            let started = Instant::now();
            let start_offset = from.unwrap_or(0);
            if let Some(l) = &listener {
                l.on_restore_start(&core.name, target.partition, start_offset);
            }
            let mut total = 0u64;
            let mut batch = Vec::new();
            let mut last = None;
            let mut last_report = Instant::now();
            let mut errors_in_a_row = 0;
            loop {
                if shutdown.load(std::sync::atomic::Ordering::SeqCst) {
                    tracing::info!(store = %core.name, partition = target.partition, "shutdown during restoration");
                    let _ = consumer.unassign();
                    return Ok(false);
                }
                match consumer.poll(Duration::from_millis(500)) {
                    None => {}
                    Some(Err(KafkaError::PartitionEOF(_))) => break,
                    Some(Err(e)) => {
                        let e = Error::kafka(format!("restore {}", target.topic), e);
                        errors_in_a_row += 1;
                        if e.is_fatal() || errors_in_a_row > 20 {
                            return Err(e);
                        }
                        tracing::warn!(error = %e, "restore consumer error");
                    }
                    Some(Ok(m)) => {
                        errors_in_a_row = 0;
                        let Some(key) = m.key() else { continue };
                        batch.push((key.to_vec(), m.payload().map(<[u8]>::to_vec)));
                        last = Some(m.offset());
                        if batch.len() >= 10_000 {
                            total += batch.len() as u64;
                            let n = batch.len() as u64;
                            core.bytes.write(std::mem::take(&mut batch), last, false)?;
                            if let Some(l) = &listener {
                                l.on_batch_restored(
                                    &core.name,
                                    target.partition,
                                    last.unwrap_or(-1),
                                    n,
                                );
                            }
                            if last_report.elapsed() > Duration::from_secs(5) {
                                last_report = Instant::now();
                                tracing::info!(store = %core.name, partition = target.partition, restored = total, rate = total as f64 / started.elapsed().as_secs_f64(), "restoring");
                            }
                        }
                    }
                }
            }
            if !batch.is_empty() {
                total += batch.len() as u64;
                let n = batch.len() as u64;
                core.bytes.write(batch, last, false)?;
                if let Some(l) = &listener {
                    l.on_batch_restored(&core.name, target.partition, last.unwrap_or(-1), n);
                }
            }
            // Restored with the WAL off: make it durable before any logged write follows.
            core.bytes.flush()?;
            let secs = started.elapsed().as_secs_f64();
            tracing::info!(task = %task_id, store = %core.name, partition = target.partition, from = start_offset, restored = total, seconds = secs, rate = total as f64 / secs.max(1e-9), "restored");
            if let Some(l) = &listener {
                l.on_restore_end(&core.name, target.partition, total);
            }
        }
        let _ = consumer.unassign();
        Ok(true)
    }

    fn close_all_tasks(&mut self, clean: bool) {
        for (_, mut task) in std::mem::take(&mut self.tasks) {
            if let Err(e) = task.close(clean) {
                tracing::warn!(thread = %self.name, error = %e, "closing a task failed");
            }
        }
        self.publish_tasks();
    }

    fn add(&mut self, raw: RawRecord) -> Result<()> {
        let Some(&sub) = self.topic_owner.get(&*raw.topic) else {
            return Ok(());
        };
        let id = TaskId {
            subtopology: sub,
            partition: raw.partition,
        };
        match self.tasks.get_mut(&id) {
            Some(task) => task.add(raw),
            // A record fetched before a revocation; the new owner reads it again.
            None => Ok(()),
        }
    }

    fn buffered(&self) -> usize {
        self.tasks.values().map(Task::buffered).sum()
    }

    /// Processes every buffered record and runs due wall-clock punctuations. Returns whether
    /// a task asked for a commit.
    fn process(&mut self) -> Result<bool> {
        let eos = self.eos();
        let Inner {
            tasks,
            producer,
            in_transaction,
            partition_counts,
            config,
            ..
        } = self;
        let producer = producer
            .as_ref()
            .ok_or_else(|| Error::Config("no producer".into()))?;
        let mut collector = Collector {
            producer,
            in_transaction,
            eos,
            partition_counts,
            config,
        };
        let handler = config.on_poison.clone();
        let now = super::now_ms();
        let mut commit = false;
        for task in tasks.values_mut() {
            while task.process_one(&mut collector, &*handler)? {}
            task.punctuate(PunctuationType::WallClockTime, now, &mut collector)?;
            commit |= task.take_commit_request();
        }
        Ok(commit)
    }

    /// Commits every task: output flushed, then offsets (in the transaction under exactly-once).
    fn commit(&mut self, consumer: &BaseConsumer<ThreadContext>) -> Result<()> {
        if self.producer.is_none() {
            return Ok(());
        }
        let dirty = self.in_transaction
            || self
                .tasks
                .values_mut()
                .any(|t| t.has_uncommitted() || t.has_pending_writes());
        if !dirty {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        let eos = self.eos();
        let Inner {
            tasks,
            producer,
            in_transaction,
            partition_counts,
            config,
            ..
        } = self;
        let producer_ref = producer
            .as_ref()
            .ok_or_else(|| Error::Config("no producer".into()))?;
        let mut collector = Collector {
            producer: producer_ref,
            in_transaction,
            eos,
            partition_counts,
            config,
        };
        for task in tasks.values_mut() {
            for (topic, partition, offset) in task.prepare_commit(&mut collector)? {
                tpl.add_partition_offset(&topic, partition, Offset::Offset(offset))
                    .map_err(|e| Error::kafka("offsets", e))?;
            }
        }
        let eos = self.eos();
        let producer = self
            .producer
            .as_ref()
            .ok_or_else(|| Error::Config("no producer".into()))?;
        producer
            .flush(CLIENT_TIMEOUT)
            .map_err(|e| Error::kafka("flush", e))?;
        let failures = self.delivery_errors.take();
        if let Some((topic, e)) = failures.first() {
            let error = Error::kafka(format!("send to {topic}"), e.clone());
            if eos || error.is_fenced() {
                return Err(error);
            }
            for (topic, e) in &failures {
                if self
                    .config
                    .on_production_error
                    .handle(topic, &e.to_string())
                    == ProductionResponse::Fail
                {
                    return Err(Error::Production {
                        topic: topic.clone(),
                        message: e.to_string(),
                    });
                }
            }
        }
        if eos && (self.in_transaction || tpl.count() > 0) {
            if !self.in_transaction {
                producer
                    .begin_transaction()
                    .map_err(|e| Error::kafka("begin transaction", e))?;
                self.in_transaction = true;
            }
            if tpl.count() > 0 {
                let group = consumer
                    .group_metadata()
                    .ok_or_else(|| Error::Config("the consumer has no group metadata".into()))?;
                retrying(|| producer.send_offsets_to_transaction(&tpl, &group, CLIENT_TIMEOUT))
                    .map_err(|e| Error::kafka("send offsets to transaction", e))?;
            }
            // A retriable failure (a timeout) leaves the commit in flight in librdkafka: call
            // it again rather than abort, which librdkafka would refuse.
            retrying(|| producer.commit_transaction(CLIENT_TIMEOUT))
                .map_err(|e| Error::kafka("commit transaction", e))?;
            self.in_transaction = false;
        } else if !eos && tpl.count() > 0 {
            consumer
                .commit(&tpl, rdkafka::consumer::CommitMode::Sync)
                .map_err(|e| Error::kafka("commit offsets", e))?;
        }
        let offsets =
            std::mem::take(&mut *self.delivered.lock().unwrap_or_else(|e| e.into_inner()));
        for task in self.tasks.values_mut() {
            task.committed(&offsets, true)?;
        }
        tracing::debug!(thread = %self.name, partitions = tpl.count(), "committed");
        Ok(())
    }

    /// After a failed commit or send: when the error means the tasks were taken over (fencing)
    /// or the transaction can be aborted, drop the uncommitted work and return Ok so the
    /// caller rewinds; otherwise return the error, which stops the thread.
    fn handle_commit_failure(&mut self, error: Error) -> Result<bool> {
        let abortable = matches!(error.root(), Error::Kafka { source: KafkaError::Transaction(e), .. } if e.txn_requires_abort());
        if error.is_fenced() {
            tracing::warn!(thread = %self.name, %error, "fenced: dropping uncommitted work and the producer");
            // A fenced producer cannot abort (and some brokers never answer); drop it.
            self.producer = None;
            self.in_transaction = false;
            self.forget_sends();
            self.close_all_tasks(false);
            self.create_producer()?;
            return Ok(true);
        }
        if !self.eos() && error.is_retriable() {
            // At-least-once keeps the tasks and their consumed offsets; the next commit
            // interval tries again.
            tracing::warn!(thread = %self.name, %error, "commit failed; retrying at the next interval");
            return Ok(false);
        }
        if self.eos() && (abortable || error.is_retriable()) {
            tracing::warn!(thread = %self.name, %error, "aborting the transaction; the tasks reprocess from the last commit");
            let producer = self.producer()?;
            let _ = producer.flush(CLIENT_TIMEOUT);
            if self.in_transaction {
                producer
                    .abort_transaction(CLIENT_TIMEOUT)
                    .map_err(|e| Error::kafka("abort transaction", e))?;
            }
            self.in_transaction = false;
            self.forget_sends();
            self.close_all_tasks(false);
            return Ok(true);
        }
        Err(error)
    }
}

pub(crate) struct StreamThread {
    pub(crate) inner: Inner,
}

impl StreamThread {
    pub(crate) fn new(
        index: usize,
        topology: Topology,
        config: StreamsConfig,
        shared: Arc<Shared>,
        instance_id: &str,
        rocks: RocksResources,
    ) -> Self {
        let app_id: Arc<str> = Arc::from(config.application_id.as_str());
        let mut topic_owner = HashMap::new();
        for st in topology.subtopologies() {
            for t in &st.source_topics {
                topic_owner.insert(topology.resolve_topic(&app_id, t), st.id);
            }
        }
        StreamThread {
            inner: Inner {
                name: format!("{app_id}-StreamThread-{}", index + 1),
                index,
                transactional_id: format!("{app_id}-{instance_id}-{}", index + 1),
                topology,
                config,
                app_id,
                shared,
                tasks: BTreeMap::new(),
                topic_owner,
                producer: None,
                delivery_errors: DeliveryErrors::default(),
                delivered: Delivered::default(),
                rocks,
                restorer: None,
                in_transaction: false,
                partition_counts: HashMap::new(),
                pending_error: None,
                failed: false,
            },
        }
    }

    pub(crate) fn name(&self) -> String {
        self.inner.name.clone()
    }

    /// Runs until shutdown or a fatal error.
    pub(crate) fn run(self) -> Result<()> {
        let mut inner = self.inner;
        let span = tracing::info_span!("stream_thread", name = %inner.name);
        let _guard = span.enter();
        inner.create_producer()?;
        let mut c = inner.client_config();
        c.set("client.id", format!("{}-consumer", inner.name))
            .set("auto.offset.reset", "earliest")
            .set("isolation.level", "read_uncommitted");
        let mut pinned = vec![
            ("group.id", inner.app_id.to_string()),
            ("enable.auto.commit", "false".to_string()),
            ("enable.auto.offset.store", "false".to_string()),
            // Tasks are closed and created on whole-assignment revocations (eager protocol).
            ("partition.assignment.strategy", "range".to_string()),
        ];
        if inner.eos() {
            pinned.push(("isolation.level", "read_committed".to_string()));
        }
        let c = with_pinned(c, &inner.config.client_properties, &pinned);
        let topics: Vec<String> = inner.topic_owner.keys().cloned().collect();
        let shared = inner.shared.clone();
        let commit_interval = inner.config.commit_interval();
        let batch = inner.config.poll_batch;
        let name = inner.name.clone();
        let context = ThreadContext {
            inner: Mutex::new(inner),
        };
        let consumer: BaseConsumer<ThreadContext> = c
            .create_with_context(context)
            .map_err(|e| Error::kafka("create consumer", e))?;
        let topic_refs: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&topic_refs)
            .map_err(|e| Error::kafka("subscribe", e))?;
        tracing::info!(thread = %name, topics = ?topics, "subscribed");

        // A panic in user code is caught here, inside the thread, so that the cleanup below
        // runs and nothing of the failed work is committed when the consumer closes.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            run_loop(&consumer, &shared, commit_interval, batch)
        }))
        .unwrap_or_else(|panic| {
            let message = super::panic_message(&*panic);
            Err(Error::ThreadDied {
                thread: name.clone(),
                message: format!("panicked: {message}"),
            })
        });
        let ctx = consumer.context();
        let final_result = match result {
            Ok(()) => {
                let mut inner = ctx.lock();
                inner.set_state(ThreadState::PendingShutdown);
                match inner.commit(&consumer) {
                    Ok(()) => {
                        inner.close_all_tasks(true);
                        Ok(())
                    }
                    Err(e) => {
                        // Never commit what is left: abort, and let nothing commit later.
                        inner.failed = true;
                        if !e.is_fenced() {
                            inner.abandon_transaction();
                        }
                        inner.producer = None;
                        inner.close_all_tasks(false);
                        Err(e)
                    }
                }
            }
            Err(e) => {
                let mut inner = ctx.lock();
                // Uncommitted work is dropped. Abort the open transaction so readers are not
                // held up, unless the producer was fenced (it cannot abort; its successor did).
                inner.failed = true;
                if !e.is_fenced() {
                    inner.abandon_transaction();
                }
                inner.producer = None;
                inner.close_all_tasks(false);
                Err(e)
            }
        };
        consumer.unsubscribe();
        drop(consumer);
        tracing::info!(thread = %name, "stopped");
        final_result
    }
}

fn run_loop(
    consumer: &BaseConsumer<ThreadContext>,
    shared: &Shared,
    commit_interval: Duration,
    batch: usize,
) -> Result<()> {
    let ctx = consumer.context();
    let mut last_commit = Instant::now();
    let mut raws: Vec<RawRecord> = Vec::with_capacity(batch);
    while !shared.shutdown.load(Ordering::SeqCst) {
        let wait = commit_interval
            .saturating_sub(last_commit.elapsed())
            .min(Duration::from_millis(100));
        let mut timeout = wait;
        while raws.len() < batch {
            match consumer.poll(timeout) {
                None => break,
                Some(Ok(m)) => raws.push(RawRecord {
                    topic: Arc::from(m.topic()),
                    partition: m.partition(),
                    offset: m.offset(),
                    timestamp: m.timestamp().to_millis().unwrap_or(0),
                    key: m.key().map(<[u8]>::to_vec),
                    value: m.payload().map(<[u8]>::to_vec),
                    headers: copy_headers(m.headers()),
                }),
                Some(Err(e)) => {
                    let error = Error::kafka("poll", e);
                    if error.is_fatal() {
                        return Err(error);
                    }
                    tracing::warn!(%error, "consumer error");
                    break;
                }
            }
            timeout = Duration::ZERO;
        }
        let mut inner = ctx.lock();
        if let Some(e) = inner.pending_error.take() {
            return Err(e);
        }
        for raw in raws.drain(..) {
            inner.add(raw)?;
        }
        let requested = match inner.process() {
            Ok(r) => r,
            Err(e) if matches!(e.root(), Error::Kafka { .. }) => {
                // Records were consumed but their output may be incomplete: always drop the
                // tasks' work and go back to the last commit.
                if !inner.handle_commit_failure(e)? {
                    inner.close_all_tasks(false);
                }
                rewind(consumer, &mut inner)?;
                continue;
            }
            Err(e) => return Err(e),
        };
        if let Some(p) = &inner.producer {
            p.poll(Duration::ZERO);
        }
        if requested || last_commit.elapsed() >= commit_interval {
            if let Err(e) = inner.commit(consumer) {
                if inner.handle_commit_failure(e)? {
                    rewind(consumer, &mut inner)?;
                }
            }
            last_commit = Instant::now();
        }
        debug_assert!(inner.buffered() == 0);
    }
    Ok(())
}

/// Puts the consumer back at the last committed offsets of its assignment and recreates the
/// tasks, after their uncommitted work was dropped.
fn rewind(consumer: &BaseConsumer<ThreadContext>, inner: &mut Inner) -> Result<()> {
    let assignment = consumer
        .assignment()
        .map_err(|e| Error::kafka("assignment", e))?;
    if assignment.count() == 0 {
        return Ok(());
    }
    let committed = consumer
        .committed_offsets(assignment.clone(), CLIENT_TIMEOUT)
        .map_err(|e| Error::kafka("committed offsets", e))?;
    let mut seek = TopicPartitionList::new();
    for e in committed.elements() {
        let offset = match e.offset() {
            Offset::Offset(o) => Offset::Offset(o),
            _ => Offset::Beginning,
        };
        seek.add_partition_offset(e.topic(), e.partition(), offset)
            .map_err(|e| Error::kafka("seek list", e))?;
    }
    consumer
        .seek_partitions(seek, CLIENT_TIMEOUT)
        .map_err(|e| Error::kafka("seek to committed offsets", e))?;
    let parts: Vec<(String, i32)> = assignment
        .elements()
        .iter()
        .map(|e| (e.topic().to_string(), e.partition()))
        .collect();
    inner.create_tasks(&parts)?;
    tracing::info!(thread = %inner.name, partitions = parts.len(), "rewound to the committed offsets");
    Ok(())
}
