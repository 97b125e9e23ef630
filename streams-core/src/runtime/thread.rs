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

use super::restore::{RestoreEnv, Restorer};
use super::{Shared, ThreadState};
use crate::config::{ProcessingGuarantee, StreamsConfig};
use crate::handlers::ProductionResponse;
use crate::processor::PunctuationType;
use crate::store::RocksResources;
use crate::task::{OutRecord, RawRecord, RecordCollector, Task, TaskId};
use crate::topology::Topology;
use crate::{Error, Headers, Result, SerdeError};

const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a failed at-least-once commit is tried again.
const RETRY_COMMIT: Duration = Duration::from_secs(1);

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
    /// New tasks whose stores are being restored, between processing rounds.
    restoring: Restorer,
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

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        self.guarded(|| self.on_post_rebalance(consumer, rebalance));
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

    fn on_post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
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
            if let Err(e) = inner.create_tasks(consumer, &parts) {
                inner.pending_error.get_or_insert(e);
            }
            // Running once every new task is restored (the loop restores them).
            if inner.restoring.is_empty() {
                inner.set_state(ThreadState::Running);
            }
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
        let mut full_since: Option<Instant> = None;
        loop {
            match self.producer.send(base) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                    if full_since.get_or_insert_with(Instant::now).elapsed()
                        < self.config.client_timeout =>
                {
                    // The producer's queue drains as the broker acknowledges: serve its
                    // delivery reports and try again, for up to the client timeout.
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
                match producer.init_transactions(self.config.client_timeout) {
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
        let timeout = self.config.client_timeout;
        if self.in_transaction {
            self.in_transaction = false;
            if let Some(p) = &self.producer {
                let _ = p.flush(timeout);
                if let Err(e) = p.abort_transaction(timeout) {
                    tracing::warn!(thread = %self.name, error = %e, "aborting the open transaction failed; replacing the producer");
                    self.drop_producer();
                }
            }
        }
        // After the flush and the abort: their delivery reports belong to the aborted
        // transaction too, and must not fail the next commit.
        self.forget_sends();
    }

    /// Drops the producer without waiting for what it still holds. Its successor (same
    /// `transactional.id`) fences it and ends its open transaction when it initialises.
    fn drop_producer(&mut self) {
        if let Some(p) = self.producer.take() {
            p.purge(rdkafka::producer::PurgeConfig::default().queue().inflight());
        }
        self.in_transaction = false;
    }

    /// A thread whose producer was dropped (a failed abort) gets a new one before it
    /// processes again.
    fn ensure_producer(&mut self) -> Result<()> {
        if self.producer.is_none() && !self.failed {
            self.create_producer()?;
        }
        Ok(())
    }

    /// Creates the tasks of newly assigned partitions and queues them for restoration; their
    /// partitions stay paused in `consumer` until they are restored.
    fn create_tasks(
        &mut self,
        consumer: &BaseConsumer<ThreadContext>,
        partitions: &[(String, i32)],
    ) -> Result<()> {
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
        // No cleaner deletes a directory while tasks are opened from it.
        let app_dir = self.config.state_dir.join(&*self.app_id);
        let dirs = super::cleanup::dir_lock(&app_dir);
        let _dirs = dirs.lock().unwrap_or_else(|e| e.into_inner());
        let now = super::now_ms();
        for id in ids {
            if self.tasks.contains_key(&id) || self.restoring.contains(id) {
                continue;
            }
            let dir = app_dir.join(id.to_string());
            let task = Task::new(
                &self.topology,
                id,
                &self.app_id,
                Some(&dir),
                now,
                &self.rocks,
            )?;
            super::cleanup::mark_owned(&dir);
            consumer
                .pause(&self.source_partitions(id)?)
                .map_err(|e| Error::kafka("pause a restoring task's partitions", e))?;
            self.restoring.add(task, dir);
        }
        self.publish_tasks();
        let ids: Vec<String> = self.restoring.task_ids().map(|t| t.to_string()).collect();
        tracing::info!(thread = %self.name, restoring = ?ids, "partitions assigned; tasks created");
        Ok(())
    }

    /// Pauses (or resumes) fetching for the running tasks' partitions.
    fn pause_running(&self, consumer: &BaseConsumer<ThreadContext>) -> Result<()> {
        self.running_partitions(consumer, true)
    }

    fn resume_running(&self, consumer: &BaseConsumer<ThreadContext>) -> Result<()> {
        self.running_partitions(consumer, false)
    }

    fn running_partitions(
        &self,
        consumer: &BaseConsumer<ThreadContext>,
        pause: bool,
    ) -> Result<()> {
        for id in self.tasks.keys() {
            let tpl = self.source_partitions(*id)?;
            let result = if pause {
                consumer.pause(&tpl)
            } else {
                consumer.resume(&tpl)
            };
            result.map_err(|e| Error::kafka("pause or resume fetching", e))?;
        }
        Ok(())
    }

    /// The source partitions of task `id`.
    fn source_partitions(&self, id: TaskId) -> Result<TopicPartitionList> {
        let mut tpl = TopicPartitionList::new();
        for (topic, &sub) in &self.topic_owner {
            if sub == id.subtopology {
                tpl.add_partition(topic, id.partition);
            }
        }
        Ok(tpl)
    }

    /// Restores queued tasks for a while; the restored ones get their processors initialised
    /// and start processing (their partitions resume).
    fn restore_step(&mut self, consumer: &BaseConsumer<ThreadContext>) -> Result<()> {
        if self.restoring.is_empty() {
            return Ok(());
        }
        let mut restoring = std::mem::take(&mut self.restoring);
        let make_consumer = || self.restore_consumer();
        let env = RestoreEnv {
            make_consumer: &make_consumer,
            listener: self.config.restore_listener.as_ref(),
            client_timeout: self.config.client_timeout,
        };
        let done = restoring.step(&env, Duration::from_millis(100));
        self.restoring = restoring;
        for p in done? {
            let mut task = p.task;
            if let Err(e) = task.init() {
                let _ = task.close(false);
                return Err(e);
            }
            super::cleanup::mark_owned(&p.dir);
            consumer
                .resume(&self.source_partitions(task.id)?)
                .map_err(|e| Error::kafka("resume a restored task's partitions", e))?;
            tracing::debug!(thread = %self.name, task = %task.id, "restored; processing");
            self.tasks.insert(task.id, task);
            self.publish_tasks();
        }
        if self.restoring.is_empty() {
            let ids: Vec<String> = self.tasks.keys().map(ToString::to_string).collect();
            tracing::info!(thread = %self.name, tasks = ?ids, "every task restored; running");
            self.set_state(ThreadState::Running);
        }
        Ok(())
    }

    fn publish_tasks(&self) {
        let handles = self.tasks.values().flat_map(Task::query_handles).collect();
        let owned = self
            .tasks
            .keys()
            .copied()
            .chain(self.restoring.task_ids())
            .collect();
        self.shared.set_thread_tasks(self.index, owned, handles);
    }

    /// The consumer that reads changelogs, `read_committed`, assigned by hand.
    fn restore_consumer(&self) -> Result<BaseConsumer> {
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
        c.create()
            .map_err(|e| Error::kafka("create restore consumer", e))
    }

    fn close_all_tasks(&mut self, clean: bool) {
        let app_dir = self.config.state_dir.join(&*self.app_id);
        let restoring = self
            .restoring
            .take_all()
            .into_iter()
            .map(|p| (p.task, false));
        let running = std::mem::take(&mut self.tasks)
            .into_values()
            .map(|t| (t, clean));
        for (mut task, clean) in running.chain(restoring) {
            if let Err(e) = task.close(clean) {
                tracing::warn!(thread = %self.name, error = %e, "closing a task failed");
            }
            super::cleanup::mark_owned(&app_dir.join(task.id.to_string()));
        }
        self.publish_tasks();
    }

    /// Deletes the state of tasks no thread of this instance has owned for longer than the
    /// cleanup delay (run by the first thread; skipped while another thread opens tasks).
    fn clean_state_dirs(&self) {
        let app_dir = self.config.state_dir.join(&*self.app_id);
        let dirs = super::cleanup::dir_lock(&app_dir);
        let Ok(_dirs) = dirs.try_lock() else {
            return;
        };
        super::cleanup::clean(
            &app_dir,
            &self.shared.owned_task_dirs(),
            self.config.state_cleanup_delay,
        );
    }

    fn add(&mut self, raw: RawRecord) -> Result<()> {
        let Some(&sub) = self.topic_owner.get(&*raw.topic) else {
            return Ok(());
        };
        let id = TaskId {
            subtopology: sub,
            partition: raw.partition,
        };
        if let Some(task) = self.tasks.get_mut(&id) {
            return task.add(raw);
        }
        match self.restoring.task_mut(id) {
            // Fetched before its partitions were paused: processed once it is restored.
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
        let timeout = self.config.client_timeout;
        producer
            .flush(timeout)
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
                retrying(|| producer.send_offsets_to_transaction(&tpl, &group, timeout))
                    .map_err(|e| Error::kafka("send offsets to transaction", e))?;
            }
            // A retriable failure (a timeout) leaves the commit in flight in librdkafka: call
            // it again rather than abort, which librdkafka would refuse.
            retrying(|| producer.commit_transaction(timeout))
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
    /// or the transaction cannot commit (a timeout, a failed delivery, an abortable error),
    /// drop the uncommitted work and return Ok(true) so the caller rewinds to the last commit;
    /// Ok(false) keeps the work for the next commit (at-least-once, retriable); an error that
    /// no rewind can cure is returned, and stops the thread.
    fn handle_commit_failure(&mut self, error: Error) -> Result<bool> {
        if error.is_fenced() {
            tracing::warn!(thread = %self.name, %error, "fenced: dropping uncommitted work and the producer");
            // A fenced producer cannot abort (and some brokers never answer); drop it.
            self.drop_producer();
            self.forget_sends();
            self.close_all_tasks(false);
            self.create_producer()?;
            return Ok(true);
        }
        if !self.eos() {
            if error.is_retriable() {
                // At-least-once keeps the tasks and their consumed offsets; the next commit
                // interval tries again.
                tracing::warn!(thread = %self.name, %error, "commit failed; retrying at the next interval");
                return Ok(false);
            }
            return Err(error);
        }
        if !cured_by_rewind(&error) {
            return Err(error);
        }
        // Exactly-once: whatever this transaction holds is dropped, and the producer is
        // replaced after the abort. An abort can fail (a commit still in flight after a
        // timeout, a broker that does not answer), and one that librdkafka reports done
        // after records timed out may leave the broker holding the transaction open (produce
        // requests that were on the wire): the successor's initialisation, with the same
        // transactional id, ends it on the broker either way, and the rewind reads the outcome
        // back (committed offsets from the group, committed changelog records by restoration).
        tracing::warn!(thread = %self.name, %error, "the transaction cannot commit; aborting it and replacing the producer; the tasks reprocess from the last commit");
        self.abandon_transaction();
        self.drop_producer();
        self.close_all_tasks(false);
        self.ensure_producer()?;
        Ok(true)
    }
}

/// Errors after which an exactly-once thread aborts and reprocesses from its last commit
/// instead of stopping: the broker was slow or away (timeouts, lost connections, a
/// coordinator moving), a send was not delivered in time, or librdkafka says the transaction
/// must abort. Anything else (a topic that does not exist, a record too large, missing
/// authorisation) would fail again after the rewind, and stops the thread.
fn cured_by_rewind(error: &Error) -> bool {
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
                restoring: Restorer::default(),
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
    // Set after the tasks' uncommitted work was dropped, until the consumer is back at the
    // committed offsets with new tasks (retried while the broker does not answer).
    let mut rewind_pending = false;
    // Set while at-least-once commits fail: input fetching is paused until one succeeds.
    let mut failing_since: Option<Instant> = None;
    let (clean_every, cleaner) = {
        let inner = ctx.lock();
        (
            super::cleanup::period(inner.config.state_cleanup_delay),
            inner.index == 0,
        )
    };
    let mut last_clean = Instant::now();
    let mut topic_names = TopicNames::default();
    let mut restoring = false;
    while !shared.shutdown.load(Ordering::SeqCst) {
        let wait = commit_interval
            .saturating_sub(last_commit.elapsed())
            .min(Duration::from_millis(100));
        // While tasks restore, the restoration step is the loop's wait.
        let mut timeout = if restoring { Duration::ZERO } else { wait };
        while raws.len() < batch {
            match consumer.poll(timeout) {
                None => break,
                Some(Ok(m)) => raws.push(RawRecord {
                    topic: topic_names.get(m.topic()),
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
        if cleaner && last_clean.elapsed() >= clean_every {
            inner.clean_state_dirs();
            last_clean = Instant::now();
        }
        if rewind_pending {
            // Records polled meanwhile belong to no task; the rewind reads them again.
            raws.clear();
            inner.ensure_producer()?;
            match rewind(consumer, &mut inner) {
                Ok(()) => rewind_pending = false,
                Err(e) if e.is_retriable() => {
                    tracing::warn!(error = %e, "rewinding to the last commit failed; trying again");
                    continue;
                }
                Err(e) => return Err(e),
            }
        }
        inner.ensure_producer()?;
        for raw in raws.drain(..) {
            inner.add(raw)?;
        }
        inner.restore_step(consumer)?;
        restoring = !inner.restoring.is_empty();
        let requested = match inner.process() {
            Ok(r) => r,
            Err(e) if matches!(e.root(), Error::Kafka { .. }) => {
                // Records were consumed but their output may be incomplete: always drop the
                // tasks' work and go back to the last commit.
                if !inner.handle_commit_failure(e)? {
                    inner.close_all_tasks(false);
                }
                rewind_pending = true;
                continue;
            }
            Err(e) => return Err(e),
        };
        if let Some(p) = &inner.producer {
            p.poll(Duration::ZERO);
        }
        let retry_due = failing_since.is_some() && last_commit.elapsed() >= RETRY_COMMIT;
        if requested || retry_due || last_commit.elapsed() >= commit_interval {
            match inner.commit(consumer) {
                Ok(()) => {
                    if let Some(since) = failing_since.take() {
                        tracing::info!(failed_for = ?since.elapsed(), "committing again; fetching resumes");
                        inner.resume_running(consumer)?;
                    }
                }
                Err(e) => {
                    rewind_pending = inner.handle_commit_failure(e)?;
                    if rewind_pending {
                        failing_since = None;
                    } else {
                        // At-least-once keeps what waits for the commit: fetch nothing more
                        // until a commit goes through, and give up after the task timeout.
                        let since = *failing_since.get_or_insert_with(Instant::now);
                        inner.pause_running(consumer)?;
                        if since.elapsed() > inner.config.task_timeout {
                            return Err(Error::Timeout(format!(
                                "commits have failed for {:?}, longer than the task timeout ({:?}); is the broker reachable?",
                                since.elapsed(),
                                inner.config.task_timeout
                            )));
                        }
                    }
                }
            }
            last_commit = Instant::now();
        }
        debug_assert!(inner.buffered() == 0);
    }
    Ok(())
}

/// Source topic names shared by the records read from them (no allocation per record).
#[derive(Default)]
struct TopicNames(Vec<Arc<str>>);

impl TopicNames {
    fn get(&mut self, topic: &str) -> Arc<str> {
        if let Some(t) = self.0.iter().find(|t| &***t == topic) {
            return t.clone();
        }
        let t: Arc<str> = Arc::from(topic);
        self.0.push(t.clone());
        t
    }
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
    let timeout = inner.config.client_timeout;
    let committed = consumer
        .committed_offsets(assignment.clone(), timeout)
        .map_err(|e| Error::kafka("committed offsets", e))?;
    let mut seek = TopicPartitionList::new();
    // A partition without a committed offset goes back to where auto.offset.reset put it:
    // offset 0 for "earliest" (a log that starts later falls back to the reset policy), not
    // the logical Beginning, whose offset lookup librdkafka does not finish when the
    // partition is paused right after (restoration pauses it), leaving it unfetched.
    let from_latest = matches!(
        inner
            .config
            .client_properties
            .get("auto.offset.reset")
            .map(String::as_str),
        Some("latest" | "largest" | "end")
    );
    for e in committed.elements() {
        let offset = match e.offset() {
            Offset::Offset(o) => Offset::Offset(o),
            _ if from_latest => Offset::End,
            _ => Offset::Offset(0),
        };
        seek.add_partition_offset(e.topic(), e.partition(), offset)
            .map_err(|e| Error::kafka("seek list", e))?;
    }
    consumer
        .seek_partitions(seek, timeout)
        .map_err(|e| Error::kafka("seek to committed offsets", e))?;
    let parts: Vec<(String, i32)> = assignment
        .elements()
        .iter()
        .map(|e| (e.topic().to_string(), e.partition()))
        .collect();
    inner.create_tasks(consumer, &parts)?;
    tracing::info!(thread = %inner.name, partitions = parts.len(), "rewound to the committed offsets");
    Ok(())
}
