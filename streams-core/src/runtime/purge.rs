//! Purging repartition topics. A repartition topic is the application's own: once the group
//! has committed an offset of one of its partitions, the records before it are never read
//! again, so they are deleted (a DeleteRecords request moves the partition's start offset),
//! as Kafka Streams' task manager does (`maybePurgeCommittedRecords`). The topics are created
//! with no time-based retention (`topics.rs`): records wait for the application however long
//! it is stopped, and this purging is what keeps the topics small.
//!
//! The stream thread hands the offsets each commit committed to [`Purger::committed`]; at most
//! every purge interval, the newest offset of each partition goes to a worker thread, which
//! sends the DeleteRecords request and logs the outcome: the stream thread never waits for it.
//! A failed purge is harmless (records stay until the next one).

use std::collections::{BTreeMap, HashSet};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::{Offset, TopicPartitionList};

use crate::config::StreamsConfig;
use crate::task::CommitOffset;
use crate::topology::Topology;
use crate::{Error, Result};

/// Offsets to delete before: (topic, partition, offset).
type Batch = Vec<(String, i32, i64)>;

/// The purging of one stream thread's repartition partitions.
pub(crate) struct Purger {
    /// The repartition topics of the topology, by their real names.
    topics: HashSet<String>,
    interval: Duration,
    last: Instant,
    /// The newest committed offset of each repartition partition not yet purged up to.
    due: BTreeMap<(String, i32), i64>,
    work: Option<mpsc::Sender<Batch>>,
    worker: Option<JoinHandle<()>>,
}

impl Purger {
    /// A purger for `topology`'s repartition topics, or none when it has none.
    pub(crate) fn new(
        topology: &Topology,
        config: &StreamsConfig,
        thread: &str,
    ) -> Result<Option<Self>> {
        let topics: HashSet<String> = topology
            .repartition_topics()
            .keys()
            .map(|t| topology.resolve_topic(&config.application_id, t))
            .collect();
        if topics.is_empty() {
            return Ok(None);
        }
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &config.bootstrap_servers);
        for (k, v) in &config.client_properties {
            c.set(k, v);
        }
        let admin: AdminClient<DefaultClientContext> = c
            .create()
            .map_err(|e| Error::kafka("create the repartition purger's admin client", e))?;
        let timeout = config.client_timeout;
        let (work, queue) = mpsc::channel::<Batch>();
        let name = format!("{thread}-purger");
        let worker = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                for batch in queue {
                    purge(&admin, &batch, timeout, &name);
                }
            })
            .map_err(|e| Error::Internal(format!("cannot start the repartition purger: {e}")))?;
        Ok(Some(Purger {
            topics,
            interval: config.repartition_purge_interval,
            last: Instant::now(),
            due: BTreeMap::new(),
            work: Some(work),
            worker: Some(worker),
        }))
    }

    /// A commit took effect with `offsets`: the records before those of repartition
    /// partitions may go, at the next purge.
    pub(crate) fn committed(&mut self, offsets: &[CommitOffset]) {
        for (topic, partition, offset) in offsets {
            if self.topics.contains(&**topic) {
                let due = self
                    .due
                    .entry((topic.to_string(), *partition))
                    .or_insert(*offset);
                *due = (*due).max(*offset);
            }
        }
        if self.due.is_empty() || self.last.elapsed() < self.interval {
            return;
        }
        self.last = Instant::now();
        let batch: Batch = std::mem::take(&mut self.due)
            .into_iter()
            .map(|((t, p), o)| (t, p, o))
            .collect();
        if let Some(work) = &self.work {
            let _ = work.send(batch);
        }
    }
}

impl Drop for Purger {
    fn drop(&mut self) {
        // The worker ends once the channel closes; a request in flight ends within its timeout.
        self.work.take();
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

/// Deletes the records before each offset of `batch`, logging what failed.
fn purge(admin: &AdminClient<DefaultClientContext>, batch: &Batch, timeout: Duration, name: &str) {
    let mut tpl = TopicPartitionList::new();
    for (topic, partition, offset) in batch {
        if tpl
            .add_partition_offset(topic, *partition, Offset::Offset(*offset))
            .is_err()
        {
            return;
        }
    }
    let opts = AdminOptions::new().request_timeout(Some(timeout));
    match futures::executor::block_on(admin.delete_records(&tpl, &opts)) {
        Ok(result) => {
            for e in result.elements() {
                match e.error() {
                    Ok(()) => {
                        tracing::debug!(purger = name, topic = e.topic(), partition = e.partition(), start = ?e.offset(), "purged a repartition partition")
                    }
                    Err(error) => {
                        tracing::warn!(purger = name, topic = e.topic(), partition = e.partition(), %error, "purging a repartition partition failed; its records stay until the next purge")
                    }
                }
            }
        }
        Err(error) => {
            tracing::warn!(purger = name, %error, "purging repartition topics failed; their records stay until the next purge")
        }
    }
}
