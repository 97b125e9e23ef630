//! Global tables: every partition of their topics read into the instance's global stores
//! before any stream thread starts, then kept up to date by a thread of their own.
//!
//! A partition counts as read once the consumer's position reached the end offset of its last
//! fetch response (the last stable offset, `read_committed`), or, with no record read, when
//! that end offset is 0. A broker that does not answer is retried until the task timeout; once
//! running, the follower logs consumer errors and goes on (librdkafka reconnects), so a
//! transient fault does not stop the instance.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::clients::{self, PlainConsumer};
use super::Shared;
use crate::config::StreamsConfig;
use crate::store::GlobalStores;
use crate::topology::Topology;
use crate::{Error, Result};

/// How often the restoration looks whether the partitions are read to their ends.
const CHECK_EVERY: Duration = Duration::from_millis(100);

/// Reads the global tables' topics to their ends, then starts the thread that follows them.
/// Returns `None` when the topology has no global table.
pub(crate) fn start(
    topology: &Topology,
    config: &StreamsConfig,
    shared: Arc<Shared>,
) -> Result<Option<std::thread::JoinHandle<()>>> {
    let stores = topology.global_stores().clone();
    let topics = stores.topics();
    if topics.is_empty() {
        return Ok(None);
    }
    let consumer = clients::global_consumer(config)?;
    let mut tpl = TopicPartitionList::new();
    let mut partitions = BTreeSet::new();
    for topic in &topics {
        let md = consumer
            .fetch_metadata(Some(topic), config.client_timeout)
            .map_err(|e| Error::kafka(format!("metadata of global table topic {topic}"), e))?;
        let count = md
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .filter(|t| t.error().is_none())
            .map_or(0, |t| t.partitions().len());
        if count == 0 {
            return Err(Error::Config(format!(
                "global table topic {topic} does not exist; create it before starting the application"
            )));
        }
        for p in 0..count as i32 {
            // From offset 0, not Beginning: no ListOffsets(earliest), which nisshi (the
            // fallback test broker) answers wrongly at times; a log that starts later falls back to `earliest`.
            tpl.add_partition_offset(topic, p, Offset::Offset(0))
                .map_err(|e| Error::kafka("global assignment", e))?;
            partitions.insert((topic.clone(), p));
        }
    }
    consumer
        .assign(&tpl)
        .map_err(|e| Error::kafka("assign global table topics", e))?;
    let started = Instant::now();
    restore(&consumer, &stores, partitions, config, &shared)?;
    let rows: usize = topics
        .iter()
        .filter_map(|t| stores.of_topic(t))
        .map(|s| s.len())
        .sum();
    tracing::info!(topics = ?topics, rows, took = ?started.elapsed(), "global tables restored");
    let handle = std::thread::Builder::new()
        .name(format!("{}-GlobalThread", config.application_id))
        .spawn(move || follow(consumer, stores, shared))
        .map_err(|e| Error::Io {
            context: "spawn the global thread".into(),
            source: e,
        })?;
    Ok(Some(handle))
}

fn apply(stores: &GlobalStores, m: &rdkafka::message::BorrowedMessage<'_>) {
    if let Some(store) = stores.of_topic(m.topic()) {
        store.apply(m.key(), m.payload());
    }
}

fn restore(
    consumer: &PlainConsumer,
    stores: &GlobalStores,
    mut pending: BTreeSet<(String, i32)>,
    config: &StreamsConfig,
    shared: &Shared,
) -> Result<()> {
    let deadline = Instant::now() + config.task_timeout;
    let mut last_check: Option<Instant> = None;
    while !pending.is_empty() {
        if shared.shutdown.load(Ordering::SeqCst) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(Error::Timeout(format!(
                "global tables not read to their ends within {:?}; partitions left: {pending:?}",
                config.task_timeout
            )));
        }
        match consumer.poll(Duration::from_millis(50)) {
            Some(Ok(m)) => apply(stores, &m),
            Some(Err(e)) => tracing::warn!(error = %e, "global consumer error while restoring"),
            None => {}
        }
        if last_check.is_some_and(|t| t.elapsed() < CHECK_EVERY) {
            continue;
        }
        last_check = Some(Instant::now());
        let Ok(positions) = consumer.position() else {
            continue;
        };
        pending.retain(|(topic, p)| {
            let Some(end) = clients::cached_end_offset(consumer, topic, *p) else {
                return true; // no fetch response yet
            };
            match positions.find_partition(topic, *p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => o < end,
                _ => end > 0,
            }
        });
    }
    Ok(())
}

/// Applies what the topics receive until shutdown.
fn follow(consumer: PlainConsumer, stores: GlobalStores, shared: Arc<Shared>) {
    while !shared.shutdown.load(Ordering::SeqCst) {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => apply(&stores, &m),
            Some(Err(e)) => tracing::warn!(error = %e, "global consumer error; retrying"),
            None => {}
        }
    }
    tracing::info!("global thread stopped");
}
