//! Small synchronous helpers over rdkafka for tests: client configs, topic creation, reading a
//! topic until a condition holds.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseProducer, Producer};
use rdkafka::{Offset, TopicPartitionList};

/// A client config with the bootstrap servers and the settings every test client wants.
pub fn client_config(bootstrap: &str) -> ClientConfig {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", bootstrap)
        .set("broker.address.family", "v4")
        .set("socket.timeout.ms", "10000")
        .set("message.timeout.ms", "30000");
    cfg
}

/// Waits until a broker at `bootstrap` answers a metadata request.
pub fn wait_until_ready(bootstrap: &str, timeout: Duration) -> anyhow::Result<()> {
    let producer: BaseProducer = client_config(bootstrap).create()?;
    let deadline = Instant::now() + timeout;
    loop {
        match producer
            .client()
            .fetch_metadata(None, Duration::from_secs(2))
        {
            Ok(md) if !md.brokers().is_empty() => return Ok(()),
            Ok(_) => {}
            Err(e) if Instant::now() > deadline => {
                return Err(anyhow!(e).context(format!("no broker answers at {bootstrap}")))
            }
            Err(_) => {}
        }
        if Instant::now() > deadline {
            bail!("the broker at {bootstrap} lists no brokers in its metadata");
        }
    }
}

/// Creates `topic` with `partitions` partitions and the given topic configs, then waits until
/// the metadata shows every partition.
pub fn create_topic(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    config: &[(&str, &str)],
) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = client_config(bootstrap).create()?;
    let mut new_topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    for (k, v) in config {
        new_topic = new_topic.set(k, v);
    }
    let results = futures::executor::block_on(admin.create_topics(
        [&new_topic],
        &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
    ))
    .with_context(|| format!("creating topic {topic}"))?;
    for r in results {
        r.map_err(|(name, code)| anyhow!("creating topic {name}: {code}"))?;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if partition_count(bootstrap, topic).ok() == Some(partitions as usize) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "topic {topic} was created but its metadata does not show {partitions} partitions"
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Deletes `topic`, then waits until the metadata no longer shows it.
pub fn delete_topic(bootstrap: &str, topic: &str) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = client_config(bootstrap).create()?;
    let results = futures::executor::block_on(admin.delete_topics(
        &[topic],
        &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
    ))
    .with_context(|| format!("deleting topic {topic}"))?;
    for r in results {
        r.map_err(|(name, code)| anyhow!("deleting topic {name}: {code}"))?;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while partition_count(bootstrap, topic).is_ok() {
        if Instant::now() > deadline {
            bail!("topic {topic} was deleted but the metadata still shows it");
        }
        std::thread::sleep(Duration::from_millis(50)); // polling the broker's metadata
    }
    Ok(())
}

/// The number of partitions the metadata shows for `topic`; an error when it does not exist
/// (the request does not ask the broker to create it, as a producer's would by default).
pub fn partition_count(bootstrap: &str, topic: &str) -> anyhow::Result<usize> {
    let producer: BaseProducer = client_config(bootstrap)
        .set("allow.auto.create.topics", "false")
        .create()?;
    let md = producer
        .client()
        .fetch_metadata(Some(topic), Duration::from_secs(5))?;
    let t = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .ok_or_else(|| anyhow!("topic {topic} not in metadata"))?;
    if let Some(err) = t.error() {
        bail!(
            "topic {topic}: {}",
            rdkafka::types::RDKafkaErrorCode::from(err)
        );
    }
    Ok(t.partitions().len())
}

/// The configs of `topic` as the broker describes them.
pub fn describe_topic_config(
    bootstrap: &str,
    topic: &str,
) -> anyhow::Result<HashMap<String, String>> {
    topic_configs(bootstrap, topic, false)
}

/// The configs set on `topic` itself (at creation or since), without the broker's defaults.
pub fn topic_config_overrides(
    bootstrap: &str,
    topic: &str,
) -> anyhow::Result<HashMap<String, String>> {
    topic_configs(bootstrap, topic, true)
}

fn topic_configs(
    bootstrap: &str,
    topic: &str,
    overrides_only: bool,
) -> anyhow::Result<HashMap<String, String>> {
    let admin: AdminClient<DefaultClientContext> = client_config(bootstrap).create()?;
    let results = futures::executor::block_on(admin.describe_configs(
        [&rdkafka::admin::ResourceSpecifier::Topic(topic)],
        &AdminOptions::new().request_timeout(Some(Duration::from_secs(10))),
    ))?;
    let mut out = HashMap::new();
    for r in results {
        let resource = r.map_err(|e| anyhow!("describe configs of {topic}: {e}"))?;
        for entry in resource.entries {
            if overrides_only && entry.source != rdkafka::admin::ConfigSource::DynamicTopic {
                continue;
            }
            if let Some(v) = entry.value {
                out.insert(entry.name, v);
            }
        }
    }
    Ok(out)
}

/// Whether a consumer reads committed records only or everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    /// `isolation.level=read_committed`.
    ReadCommitted,
    /// `isolation.level=read_uncommitted`.
    ReadUncommitted,
}

impl Isolation {
    fn as_config(self) -> &'static str {
        match self {
            Isolation::ReadCommitted => "read_committed",
            Isolation::ReadUncommitted => "read_uncommitted",
        }
    }
}

/// One record as a test consumer received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// Partition.
    pub partition: i32,
    /// Offset in the partition.
    pub offset: i64,
    /// Key bytes.
    pub key: Option<Vec<u8>>,
    /// Value bytes.
    pub value: Option<Vec<u8>>,
    /// Headers, in order.
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

impl Received {
    /// The value as UTF-8 text (lossy), or "" when absent.
    pub fn value_str(&self) -> String {
        self.value
            .as_deref()
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default()
    }

    /// The key as UTF-8 text (lossy), or "" when absent.
    pub fn key_str(&self) -> String {
        self.key
            .as_deref()
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default()
    }
}

/// Reads every partition of `topic` from the beginning, without a consumer group, until `done`
/// returns true for what was received so far. Fails after `timeout`, listing what arrived.
pub fn consume_until(
    bootstrap: &str,
    topic: &str,
    isolation: Isolation,
    timeout: Duration,
    mut done: impl FnMut(&[Received]) -> bool,
) -> anyhow::Result<Vec<Received>> {
    let partitions = partition_count(bootstrap, topic)?;
    let consumer: BaseConsumer = client_config(bootstrap)
        // librdkafka wants a group id even for assigned partitions; nothing is committed.
        .set("group.id", crate::unique("testkit-reader"))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", isolation.as_config())
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions as i32 {
        // Offset 0, not Beginning: no ListOffsets round trip (nisshi answers it wrongly with
        // several idempotent producers per partition, see docs/BROKER.md); a log that starts
        // later falls back to auto.offset.reset.
        tpl.add_partition_offset(topic, p, Offset::Offset(0))?;
    }
    consumer.assign(&tpl)?;
    let mut got = Vec::new();
    let deadline = Instant::now() + timeout;
    while !done(&got) {
        if Instant::now() > deadline {
            bail!(
                "reading {topic} ({isolation:?}): condition not met within {timeout:?}; \
                 received {} records: {:?}",
                got.len(),
                got.iter()
                    .map(|r| format!("p{}@{}={}", r.partition, r.offset, r.value_str()))
                    .collect::<Vec<_>>()
            );
        }
        if let Some(msg) = consumer.poll(Duration::from_millis(100)) {
            let msg = msg.with_context(|| format!("consuming {topic}"))?;
            let headers = msg
                .headers()
                .map(|hs| {
                    hs.iter()
                        .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                        .collect()
                })
                .unwrap_or_default();
            got.push(Received {
                partition: msg.partition(),
                offset: msg.offset(),
                key: msg.key().map(<[u8]>::to_vec),
                value: msg.payload().map(<[u8]>::to_vec),
                headers,
            });
        }
    }
    Ok(got)
}

/// The committed offsets of `group` for every partition of `topic` (`None` where nothing is
/// committed).
pub fn committed_offsets(
    bootstrap: &str,
    group: &str,
    topic: &str,
) -> anyhow::Result<Vec<Option<i64>>> {
    let partitions = partition_count(bootstrap, topic)?;
    let consumer: BaseConsumer = client_config(bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions as i32 {
        tpl.add_partition(topic, p);
    }
    let committed = consumer.committed_offsets(tpl, Duration::from_secs(10))?;
    Ok((0..partitions as i32)
        .map(
            |p| match committed.find_partition(topic, p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => Some(o),
                _ => None,
            },
        )
        .collect())
}

/// Sends `record`, polling the producer while its queue is full. Fails on any other error.
pub fn send_retrying<K, P>(
    producer: &BaseProducer,
    mut record: rdkafka::producer::BaseRecord<'_, K, P>,
) -> rdkafka::error::KafkaResult<()>
where
    K: rdkafka::message::ToBytes + ?Sized,
    P: rdkafka::message::ToBytes + ?Sized,
{
    use rdkafka::error::{KafkaError, RDKafkaErrorCode};
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                producer.poll(Duration::from_millis(5));
                record = r;
            }
            Err((e, _)) => return Err(e),
        }
    }
}

/// The context of a consumer that asks for partition-end events: librdkafka also reports them
/// as client errors, which rdkafka logs at error level; here they are logged at debug.
pub struct EndOfPartitionQuiet;

impl rdkafka::ClientContext for EndOfPartitionQuiet {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::PartitionEOF) {
            tracing::debug!("librdkafka: {reason}");
        } else {
            tracing::error!("librdkafka: {error}: {reason}");
        }
    }
}

impl rdkafka::consumer::ConsumerContext for EndOfPartitionQuiet {}

/// Reads every partition of `topic` from the beginning to its end as the broker's fetch
/// responses report it (so call it after the writers stopped), without a consumer group. Under
/// `read_committed` the end is the last stable offset: records of a transaction still open are
/// not returned. Fails after `timeout`.
///
/// The end comes from fetch responses (librdkafka's partition EOF), not from ListOffsets:
/// nisshi 0.7.0 answers ListOffsets(latest) with a stale offset when several idempotent
/// producers write to one partition (see docs/BROKER.md).
pub fn read_to_end(
    bootstrap: &str,
    topic: &str,
    isolation: Isolation,
    timeout: Duration,
) -> anyhow::Result<Vec<Received>> {
    let partitions = partition_count(bootstrap, topic)? as i32;
    let consumer: BaseConsumer<EndOfPartitionQuiet> = client_config(bootstrap)
        .set("group.id", crate::unique("testkit-reader"))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", isolation.as_config())
        .create_with_context(EndOfPartitionQuiet)?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        // Offset 0, not Beginning: no ListOffsets round trip (nisshi answers it wrongly with
        // several idempotent producers per partition, see docs/BROKER.md); a log that starts
        // later falls back to auto.offset.reset.
        tpl.add_partition_offset(topic, p, Offset::Offset(0))?;
    }
    consumer.assign(&tpl)?;
    let mut got = Vec::new();
    let mut at_end = std::collections::BTreeSet::new();
    let deadline = Instant::now() + timeout;
    while at_end.len() < partitions as usize {
        if Instant::now() > deadline {
            bail!("reading {topic} ({isolation:?}) to its end: partitions at the end {at_end:?} of {partitions} within {timeout:?}");
        }
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                at_end.insert(p);
            }
            Some(Err(e)) => return Err(anyhow!(e).context(format!("consuming {topic}"))),
            Some(Ok(msg)) => {
                at_end.remove(&msg.partition());
                let headers = msg
                    .headers()
                    .map(|hs| {
                        hs.iter()
                            .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                            .collect()
                    })
                    .unwrap_or_default();
                got.push(Received {
                    partition: msg.partition(),
                    offset: msg.offset(),
                    key: msg.key().map(<[u8]>::to_vec),
                    value: msg.payload().map(<[u8]>::to_vec),
                    headers,
                });
            }
        }
    }
    Ok(got)
}

/// Where a topic stands, for a failing test's message: per partition, how many records a
/// reader with `isolation` gets to the partition's end and the last offset among them (`-1`
/// for none), as `{partition: (records, last offset)}`; or why it could not read to the end.
pub fn partition_census(bootstrap: &str, topic: &str, isolation: Isolation) -> String {
    match read_to_end(bootstrap, topic, isolation, Duration::from_secs(60)) {
        Ok(records) => {
            let mut ends = std::collections::BTreeMap::new();
            for r in records {
                let e = ends.entry(r.partition).or_insert((0, -1));
                e.0 += 1;
                e.1 = r.offset.max(e.1);
            }
            format!("{ends:?}")
        }
        Err(e) => format!("(unreadable: {e:#})"),
    }
}

/// An idempotent (not transactional) producer with a short linger: how tests write input.
/// It partitions by the murmur2 hash of the key, as the Java client and the runtime's own
/// producers do, so that input keyed alike lands in the partition the application writes
/// that key to (librdkafka's default, a CRC32 hash, would not: a join of a table written by
/// it with a repartitioned stream would miss).
pub fn idempotent_producer(bootstrap: &str) -> anyhow::Result<BaseProducer> {
    Ok(client_config(bootstrap)
        .set("enable.idempotence", "true")
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "5")
        .create()?)
}
