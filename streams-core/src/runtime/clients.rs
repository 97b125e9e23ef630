//! The Kafka clients of a stream thread, and the settings the runtime pins on them.
//!
//! The user's pass-through client properties go first; the settings the runtime's guarantees
//! rest on (group, offsets, isolation level, idempotence, transactional id) are set after
//! them and win, with a warning when the user tried to change one.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, ConsumerGroupMetadata};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{Header, Headers as _, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use super::commit::{retrying, GroupConsumer, ProducerClient};
use crate::config::{ProcessingGuarantee, StreamsConfig};
use crate::node::OutRecord;
use crate::task::CommitOffset;
use crate::{Error, Headers, Result};

/// Builds a client config: the user's properties first, then `pinned`, which win.
fn with_pinned(
    mut c: ClientConfig,
    user: &BTreeMap<String, String>,
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

fn base(config: &StreamsConfig, client_id: String) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.bootstrap_servers)
        .set("client.id", client_id);
    c
}

/// The consumers' `fetch.queue.backoff.ms` unless the user sets it: librdkafka stops fetching a
/// partition whose local queue passed its thresholds for this long (default 1,000 ms), which
/// starved a consumer that drains its queue quickly (docs/BENCHMARKS.md): count per key went
/// from 116,000 to 175,000 rec/s, restoration from 133,000-175,000 to 574,000-795,000.
const FETCH_QUEUE_BACKOFF_MS: &str = "10";

/// The group member's consumer config (the consumer is created with the thread's context).
pub(crate) fn consumer_config(config: &StreamsConfig, thread: &str) -> ClientConfig {
    let mut c = base(config, format!("{thread}-consumer"));
    c.set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_uncommitted")
        .set("fetch.queue.backoff.ms", FETCH_QUEUE_BACKOFF_MS);
    if config.metrics_recording && config.guarantee == ProcessingGuarantee::ExactlyOnce {
        // The last stable offsets for the consumer lag (librdkafka reports them only in its
        // statistics); a user's own interval wins.
        c.set("statistics.interval.ms", "1000");
    }
    let mut pinned = vec![
        ("group.id", config.application_id.clone()),
        ("enable.auto.commit", "false".to_string()),
        ("enable.auto.offset.store", "false".to_string()),
        // Tasks are closed and created on whole-assignment revocations (eager protocol).
        ("partition.assignment.strategy", "range".to_string()),
    ];
    if config.guarantee == ProcessingGuarantee::ExactlyOnce {
        pinned.push(("isolation.level", "read_committed".to_string()));
    }
    if let Some(instance) = &config.instance_id {
        // Other instances find this one (its id, its HTTP endpoint) in the group's member list.
        pinned.push((
            "client.id",
            super::discovery::consumer_client_id(
                thread,
                instance,
                config.application_server.as_deref(),
            ),
        ));
    }
    with_pinned(c, &config.client_properties, &pinned)
}

/// A client of the application's group that never joins it (it never subscribes): it
/// describes the group and reads its committed offsets (the HTTP endpoint's and the standby
/// thread's). `role` names it in its client id.
pub(crate) fn group_reader(config: &StreamsConfig, role: &str) -> Result<BaseConsumer> {
    let mut c = with_pinned(
        base(config, format!("{}-{role}", config.application_id)),
        &config.client_properties,
        &[
            ("group.id", config.application_id.clone()),
            ("enable.auto.commit", "false".into()),
        ],
    );
    // Nobody reads its statistics; they would only pile up.
    c.set("statistics.interval.ms", "0");
    c.create()
        .map_err(|e| Error::kafka(format!("create the {role} Kafka client"), e))
}

/// The consumer that reads changelogs, `read_committed`, assigned by hand.
pub(crate) fn restore_consumer(config: &StreamsConfig, thread: &str) -> Result<PlainConsumer> {
    let mut c = base(config, format!("{thread}-restore-consumer"));
    c.set("fetch.queue.backoff.ms", FETCH_QUEUE_BACKOFF_MS);
    let c = with_pinned(
        c,
        &config.client_properties,
        &[
            ("group.id", format!("{}-restore", config.application_id)),
            ("enable.auto.commit", "false".into()),
            ("enable.auto.offset.store", "false".into()),
            ("enable.partition.eof", "true".into()),
            ("isolation.level", "read_committed".into()),
            // A stored offset the changelog no longer has (truncated, or deleted and
            // recreated) is reported as an error: restoration wipes the store and reads the
            // changelog from its start, rather than replaying it onto the old state.
            ("auto.offset.reset", "error".into()),
        ],
    );
    c.create_with_context(ClientLog)
        .map_err(|e| Error::kafka("create restore consumer", e))
}

/// A client that lists changelogs' offsets `read_uncommitted`: their high watermarks, which
/// restoration reads up to (the restore consumer's own would be the last stable offset).
pub(crate) fn watermark_client(config: &StreamsConfig, thread: &str) -> Result<PlainConsumer> {
    let c = with_pinned(
        base(config, format!("{thread}-watermarks")),
        &config.client_properties,
        &[
            ("group.id", format!("{}-restore", config.application_id)),
            ("enable.auto.commit", "false".into()),
            ("isolation.level", "read_uncommitted".into()),
        ],
    );
    c.create_with_context(ClientLog)
        .map_err(|e| Error::kafka("create the watermark client", e))
}

/// The consumer that reads global tables' topics, `read_committed`, every partition assigned
/// by hand; nothing is committed (the tables are read from the start at each start).
pub(crate) fn global_consumer(config: &StreamsConfig) -> Result<PlainConsumer> {
    let c = with_pinned(
        base(config, format!("{}-global-consumer", config.application_id)),
        &config.client_properties,
        &[
            ("group.id", format!("{}-global", config.application_id)),
            ("enable.auto.commit", "false".into()),
            ("enable.auto.offset.store", "false".into()),
            ("isolation.level", "read_committed".into()),
            ("auto.offset.reset", "earliest".into()),
        ],
    );
    c.create_with_context(ClientLog)
        .map_err(|e| Error::kafka("create global consumer", e))
}

/// Send failures and delivered offsets, as the producer's delivery callback reports them.
#[derive(Default)]
struct Deliveries {
    errors: Mutex<Vec<(String, KafkaError)>>,
    /// The last offset delivered per topic-partition (for changelog offsets).
    delivered: Mutex<HashMap<(String, i32), i64>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

struct ProducerCtx(Arc<Deliveries>);

impl ClientContext for ProducerCtx {
    fn error(&self, error: KafkaError, reason: &str) {
        log_client_error(error, reason);
    }
}

/// The context of the consumers outside the group (restoration, global tables): librdkafka's
/// own errors logged by [`log_client_error`].
pub(crate) struct ClientLog;

impl ClientContext for ClientLog {
    fn error(&self, error: KafkaError, reason: &str) {
        log_client_error(error, reason);
    }
}

impl ConsumerContext for ClientLog {}

/// A consumer outside the group.
pub(crate) type PlainConsumer = BaseConsumer<ClientLog>;

/// Logs an error librdkafka reports outside any call: the end of a partition (which the
/// runtime learns from its polls, and which is no fault) at debug level, anything else at
/// error level as librdkafka words it.
pub(crate) fn log_client_error(error: KafkaError, reason: &str) {
    if error.rdkafka_error_code() == Some(RDKafkaErrorCode::PartitionEOF) {
        tracing::debug!("librdkafka: {reason}");
    } else {
        tracing::error!("librdkafka: {error}: {reason}");
    }
}

impl ProducerContext for ProducerCtx {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(msg) => {
                let mut d = lock(&self.0.delivered);
                let entry = d
                    .entry((msg.topic().to_string(), msg.partition()))
                    .or_insert(-1);
                *entry = (*entry).max(msg.offset());
            }
            Err((e, msg)) => lock(&self.0.errors).push((msg.topic().to_string(), e.clone())),
        }
    }
}

/// The thread's producer: idempotent always, transactional under exactly-once.
pub(crate) struct KafkaProducer {
    producer: BaseProducer<ProducerCtx>,
    deliveries: Arc<Deliveries>,
}

impl KafkaProducer {
    /// Creates the producer; under exactly-once, initialises its transactions (which fences
    /// a predecessor with the same transactional id and ends its open transaction), retrying
    /// for up to twice the transaction timeout.
    pub(crate) fn create(
        config: &StreamsConfig,
        thread: &str,
        transactional_id: &str,
    ) -> Result<KafkaProducer> {
        let eos = config.guarantee == ProcessingGuarantee::ExactlyOnce;
        let mut c = base(config, format!("{thread}-producer"));
        c.set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("partitioner", "murmur2_random");
        let mut pinned = vec![("enable.idempotence", "true".to_string())];
        if eos {
            pinned.push(("transactional.id", transactional_id.to_string()));
            pinned.push((
                "transaction.timeout.ms",
                config.transaction_timeout.as_millis().to_string(),
            ));
        }
        let c = with_pinned(c, &config.client_properties, &pinned);
        let deliveries = Arc::new(Deliveries::default());
        let producer: BaseProducer<ProducerCtx> = c
            .create_with_context(ProducerCtx(deliveries.clone()))
            .map_err(|e| Error::kafka("create producer", e))?;
        if eos {
            let started = Instant::now();
            // librdkafka looks for its transaction coordinator only through a broker it is
            // connected to, and when none is up yet it tries again after a fixed 500 ms: a
            // connection first (one metadata request) takes start-up from about 0.55 s to
            // 0.05 s to a ready producer (docs/BENCHMARKS.md). Its failure changes nothing:
            // init_transactions reports its own.
            connect(&producer, config.client_timeout);
            loop {
                match producer.init_transactions(config.client_timeout) {
                    Ok(()) => break,
                    Err(e) => {
                        let e = Error::kafka(format!("init transactions of {transactional_id}"), e);
                        if e.is_retriable() && started.elapsed() < config.transaction_timeout * 2 {
                            tracing::warn!(thread, error = %e, "retrying");
                            continue;
                        }
                        return Err(e);
                    }
                }
            }
            tracing::info!(thread, transactional_id, "transactional producer ready");
        }
        Ok(KafkaProducer {
            producer,
            deliveries,
        })
    }
}

impl ProducerClient for KafkaProducer {
    fn begin_transaction(&self) -> KafkaResult<()> {
        self.producer.begin_transaction()
    }

    fn send(&self, record: &OutRecord, queue_full_wait: Duration) -> KafkaResult<()> {
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
                    if full_since.get_or_insert_with(Instant::now).elapsed() < queue_full_wait =>
                {
                    // The queue drains as the broker acknowledges: serve delivery reports
                    // and try again.
                    base = back;
                    self.producer.poll(Duration::from_millis(5));
                }
                Err((e, _)) => return Err(e),
            }
        }
    }

    fn poll(&self) {
        self.producer.poll(Duration::ZERO);
    }

    fn flush(&self, timeout: Duration) -> KafkaResult<()> {
        self.producer.flush(timeout)
    }

    fn send_offsets_to_transaction(
        &self,
        offsets: &[CommitOffset],
        consumer: &dyn GroupConsumer,
        timeout: Duration,
    ) -> Result<()> {
        let group = consumer
            .group_metadata()
            .ok_or_else(|| Error::Internal("the consumer has no group metadata".into()))?;
        let tpl = offset_list(offsets)?;
        retrying(|| {
            self.producer
                .send_offsets_to_transaction(&tpl, &group, timeout)
        })
        .map_err(|e| Error::kafka("send offsets to transaction", e))
    }

    fn commit_transaction(&self, timeout: Duration) -> KafkaResult<()> {
        self.producer.commit_transaction(timeout)
    }

    fn abort_transaction(&self, timeout: Duration) -> KafkaResult<()> {
        self.producer.abort_transaction(timeout)
    }

    fn purge(&self) {
        self.producer
            .purge(rdkafka::producer::PurgeConfig::default().queue().inflight());
    }

    fn take_delivery_errors(&self) -> Vec<(String, KafkaError)> {
        std::mem::take(&mut *lock(&self.deliveries.errors))
    }

    fn take_delivered(&self) -> HashMap<(String, i32), i64> {
        std::mem::take(&mut *lock(&self.deliveries.delivered))
    }

    fn partition_count(&self, topic: &str, timeout: Duration) -> Result<i32> {
        let md = self
            .producer
            .client()
            .fetch_metadata(Some(topic), timeout)
            .map_err(|e| Error::kafka(format!("metadata of {topic}"), e))?;
        md.topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none())
            .map(|t| t.partitions().len() as i32)
            .filter(|&n| n > 0)
            .ok_or_else(|| Error::Config(format!("output topic {topic} does not exist")))
    }
}

fn offset_list(offsets: &[CommitOffset]) -> Result<TopicPartitionList> {
    let mut tpl = TopicPartitionList::new();
    for (topic, partition, offset) in offsets {
        tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset))
            .map_err(|e| Error::kafka("offsets", e))?;
    }
    Ok(tpl)
}

impl<C: ConsumerContext> GroupConsumer for BaseConsumer<C> {
    fn group_metadata(&self) -> Option<ConsumerGroupMetadata> {
        Consumer::group_metadata(self)
    }

    fn commit_offsets(&self, offsets: &[CommitOffset]) -> Result<()> {
        self.commit(&offset_list(offsets)?, rdkafka::consumer::CommitMode::Sync)
            .map_err(|e| Error::kafka("commit offsets", e))
    }
}

/// The group's committed offset of one partition (`None` when nothing is committed).
pub(crate) fn committed_offset<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    partition: i32,
    timeout: Duration,
) -> Result<Option<i64>> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, partition);
    let got = consumer
        .committed_offsets(tpl, timeout)
        .map_err(|e| Error::kafka(format!("committed offset of {topic}"), e))?;
    let Some(entry) = got.find_partition(topic, partition) else {
        return Ok(None);
    };
    // A partition's own error (UNSTABLE_OFFSET_COMMIT while a transaction holds offsets for
    // it, once librdkafka stopped retrying) says nothing about what is committed: never `None`.
    entry
        .error()
        .map_err(|e| Error::kafka(format!("committed offset of {topic} [{partition}]"), e))?;
    Ok(match entry.offset() {
        Offset::Offset(o) => Some(o),
        _ => None,
    })
}

/// Copies a Kafka headers list into ours.
pub(crate) fn copy_headers(h: Option<&rdkafka::message::BorrowedHeaders>) -> Headers {
    let mut out = Headers::new();
    if let Some(h) = h {
        for header in h.iter() {
            out = out.with(header.key, header.value);
        }
    }
    out
}

/// How often a partition holding up a task is looked at.
const CAUGHT_UP_EVERY: Duration = Duration::from_millis(20);

/// Connects `producer` to a broker: a metadata request for the brokers only (no topic), waited
/// for up to `timeout`.
fn connect(producer: &BaseProducer<ProducerCtx>, timeout: Duration) {
    let mut metadata: *const rdkafka::bindings::rd_kafka_metadata_t = std::ptr::null();
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: the client pointer is valid for the producer's lifetime; no topic handle is
    // passed (all_topics 0 and no topic: the brokers and the topics the client knows, none
    // yet); the metadata librdkafka returns is destroyed once, here.
    unsafe {
        let err = rdkafka::bindings::rd_kafka_metadata(
            producer.client().native_ptr(),
            0,
            std::ptr::null_mut(),
            &mut metadata,
            ms,
        );
        if err == rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
            && !metadata.is_null()
        {
            rdkafka::bindings::rd_kafka_metadata_destroy(metadata);
        }
    }
}

/// The end offset of a partition as the consumer's last fetch response reported it, cached by
/// librdkafka: no request. It is the high watermark, also under `read_committed` (librdkafka
/// keeps the last stable offset apart and reports it only in its statistics), so a partition
/// with an open transaction at its end is not read to this offset until that transaction ends.
/// `None` before the first fetch response. Fetch responses are right on the test
/// broker where its ListOffsets(latest) is not (docs/BROKER.md).
pub(crate) fn cached_end_offset<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    partition: i32,
) -> Option<i64> {
    let topic = std::ffi::CString::new(topic).ok()?;
    let (mut low, mut high) = (-1_i64, -1_i64);
    // SAFETY: the client pointer is valid for the consumer's lifetime; the topic is a valid C
    // string; librdkafka writes the two offsets and keeps no pointer.
    let err = unsafe {
        rdkafka::bindings::rd_kafka_get_watermark_offsets(
            consumer.client().native_ptr(),
            topic.as_ptr(),
            partition,
            &mut low,
            &mut high,
        )
    };
    (err == rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR && high >= 0)
        .then_some(high)
}

/// Tells the tasks which partitions holding them up (no record queued, see `Task::ready`)
/// the consumer has read to the end: its position at or past the end offset of its last
/// fetch response ([`cached_end_offset`]); before the first record, the group's committed
/// offset (or 0) there. librdkafka moves the position past the marker that closes a
/// transaction, so a partition ending with one counts as read. Until a fetch response came,
/// the task waits.
pub(crate) fn mark_caught_up<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    tasks: &mut crate::task::Tasks,
) {
    let waiting = tasks.waiting_for(CAUGHT_UP_EVERY);
    if waiting.is_empty() {
        return;
    }
    let positions = match consumer.position() {
        Ok(p) => p,
        Err(e) => {
            tracing::debug!(error = %e, "consumer position not known; the tasks wait");
            return;
        }
    };
    for (id, topic, partition) in waiting {
        let Some(end) = cached_end_offset(consumer, &topic, partition) else {
            continue;
        };
        let position = match positions
            .find_partition(&topic, partition)
            .map(|e| e.offset())
        {
            Some(Offset::Offset(o)) => o,
            _ if end == 0 => 0,
            _ => match committed_offset(consumer, &topic, partition, Duration::from_secs(2)) {
                Ok(committed) => committed.unwrap_or(0),
                Err(e) => {
                    tracing::debug!(%topic, partition, error = %e, "position not known yet; the task waits");
                    continue;
                }
            },
        };
        if position >= end {
            tasks.caught_up(id, &topic, partition);
        } else {
            tracing::trace!(task = %id, %topic, partition, position, end, "a partition of the task is behind; it waits");
        }
    }
}

/// Source topic names shared by the records read from them (no allocation per record).
#[derive(Default)]
pub(crate) struct TopicNames(Vec<Arc<str>>);

impl TopicNames {
    pub(crate) fn get(&mut self, topic: &str) -> Arc<str> {
        if let Some(t) = self.0.iter().find(|t| &***t == topic) {
            return t.clone();
        }
        let t: Arc<str> = Arc::from(topic);
        self.0.push(t.clone());
        t
    }
}
