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

pub(crate) struct ProducerCtx {
    errors: DeliveryErrors,
}

impl ClientContext for ProducerCtx {}

impl ProducerContext for ProducerCtx {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
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
    in_transaction: bool,
    partition_counts: HashMap<String, i32>,
    /// A fatal error raised inside a rebalance callback, handed to the main loop.
    pending_error: Option<Error>,
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
        let mut inner = self.lock();
        match rebalance {
            Rebalance::Revoke(tpl) => {
                inner.set_state(ThreadState::PartitionsRevoked);
                tracing::info!(thread = %inner.name, partitions = tpl.count(), "partitions revoked; committing and closing tasks");
                if let Err(e) = inner.commit(consumer) {
                    if let Err(e) = inner.handle_commit_failure(e) {
                        inner.pending_error.get_or_insert(e);
                    }
                }
                inner.close_all_tasks();
            }
            Rebalance::Assign(_) => inner.set_state(ThreadState::PartitionsAssigned),
            Rebalance::Error(e) => {
                tracing::warn!(thread = %inner.name, error = %e, "rebalance error")
            }
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let mut inner = self.lock();
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
                            topic: record.topic.clone(),
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
        if self.eos() {
            c.set("transactional.id", &self.transactional_id).set(
                "transaction.timeout.ms",
                self.config.transaction_timeout.as_millis().to_string(),
            );
        }
        for (k, v) in &self.config.client_properties {
            c.set(k, v);
        }
        let producer: Producer_ = c
            .create_with_context(ProducerCtx {
                errors: self.delivery_errors.clone(),
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
        let task_dir = |id: TaskId| {
            self.config
                .state_dir
                .join(&*self.app_id)
                .join(id.to_string())
        };
        for id in ids {
            if self.tasks.contains_key(&id) {
                continue;
            }
            let dir = task_dir(id);
            let task = Task::new(&self.topology, id, &self.app_id, Some(&dir), now)?;
            self.tasks.insert(id, task);
        }
        self.shared
            .set_thread_tasks(self.index, self.tasks.keys().copied().collect());
        let ids: Vec<String> = self.tasks.keys().map(ToString::to_string).collect();
        tracing::info!(thread = %self.name, tasks = ?ids, "partitions assigned; tasks created");
        Ok(())
    }

    fn close_all_tasks(&mut self) {
        self.shared.set_thread_tasks(self.index, vec![]);
        for (_, mut task) in std::mem::take(&mut self.tasks) {
            if let Err(e) = task.close() {
                tracing::warn!(thread = %self.name, error = %e, "closing a task failed");
            }
        }
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
        let dirty = self.in_transaction || self.tasks.values().any(Task::has_uncommitted);
        if !dirty {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        for task in self.tasks.values_mut() {
            for (topic, partition, offset) in task.prepare_commit()? {
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
        if eos {
            if !self.in_transaction {
                producer
                    .begin_transaction()
                    .map_err(|e| Error::kafka("begin transaction", e))?;
                self.in_transaction = true;
            }
            let group = consumer
                .group_metadata()
                .ok_or_else(|| Error::Config("the consumer has no group metadata".into()))?;
            producer
                .send_offsets_to_transaction(&tpl, &group, CLIENT_TIMEOUT)
                .map_err(|e| Error::kafka("send offsets to transaction", e))?;
            producer
                .commit_transaction(CLIENT_TIMEOUT)
                .map_err(|e| Error::kafka("commit transaction", e))?;
            self.in_transaction = false;
        } else if tpl.count() > 0 {
            consumer
                .commit(&tpl, rdkafka::consumer::CommitMode::Sync)
                .map_err(|e| Error::kafka("commit offsets", e))?;
        }
        for task in self.tasks.values_mut() {
            task.committed();
        }
        tracing::debug!(thread = %self.name, partitions = tpl.count(), "committed");
        Ok(())
    }

    /// After a failed commit or send: when the error means the tasks were taken over (fencing)
    /// or the transaction can be aborted, drop the uncommitted work and return Ok so the
    /// caller rewinds; otherwise return the error, which stops the thread.
    fn handle_commit_failure(&mut self, error: Error) -> Result<()> {
        let abortable = matches!(error.root(), Error::Kafka { source: KafkaError::Transaction(e), .. } if e.txn_requires_abort());
        if error.is_fenced() {
            tracing::warn!(thread = %self.name, %error, "fenced: dropping uncommitted work and the producer");
            // A fenced producer cannot abort (and some brokers never answer); drop it.
            self.producer = None;
            self.in_transaction = false;
            self.delivery_errors.take();
            self.close_all_tasks();
            self.create_producer()?;
            return Ok(());
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
            self.delivery_errors.take();
            self.close_all_tasks();
            return Ok(());
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
                in_transaction: false,
                partition_counts: HashMap::new(),
                pending_error: None,
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
        c.set("group.id", &*inner.app_id)
            .set("client.id", format!("{}-consumer", inner.name))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("partition.assignment.strategy", "range")
            .set(
                "isolation.level",
                if inner.eos() {
                    "read_committed"
                } else {
                    "read_uncommitted"
                },
            );
        for (k, v) in &inner.config.client_properties {
            c.set(k, v);
        }
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

        let result = run_loop(&consumer, &shared, commit_interval, batch);
        let ctx = consumer.context();
        let final_result = match result {
            Ok(()) => {
                let mut inner = ctx.lock();
                inner.set_state(ThreadState::PendingShutdown);
                let r = inner.commit(&consumer);
                inner.close_all_tasks();
                r
            }
            Err(e) => {
                let mut inner = ctx.lock();
                // Uncommitted work is dropped. Abort the open transaction so readers are not
                // held up, unless the producer was fenced (it cannot abort; its successor did).
                if inner.in_transaction && !e.is_fenced() {
                    if let Some(p) = &inner.producer {
                        let _ = p.flush(CLIENT_TIMEOUT);
                        if let Err(abort) = p.abort_transaction(CLIENT_TIMEOUT) {
                            tracing::warn!(thread = %name, error = %abort, "aborting the open transaction failed");
                        }
                    }
                }
                inner.producer = None;
                inner.close_all_tasks();
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
                inner.handle_commit_failure(e)?;
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
                inner.handle_commit_failure(e)?;
                rewind(consumer, &mut inner)?;
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
