//! Tasks: one sub-topology running on one partition, with its own nodes, stores and time.

mod tasks;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub(crate) use self::tasks::{CommitOffset, SourceTopics, Tasks};

use crate::handlers::{
    headers, DeserializationErrorHandler, DeserializationResponse, ErrorContext,
};
use crate::metrics::DropReason;
use crate::node::{
    NoOutput, Node, NodeCtx, OutRecord, PunctuationType, RawRecord, RecordCollector, TaskEnv,
};
use crate::store::{QueryHandle, RocksResources, StateStore, StoreContext, StoreCore};
use crate::topology::{SourceDecoder, Topology};
use crate::{Error, Headers, Result, TaskId};

struct PartitionQueue {
    topic: Arc<str>,
    partition: i32,
    records: VecDeque<RawRecord>,
    source: usize,
    decoder: Arc<dyn SourceDecoder>,
    partition_time: i64,
    /// The next offset to commit, when records were processed since the last commit.
    consumed: Option<i64>,
    /// The event time of the front record, once worked out (with a timestamp extractor that
    /// means decoding it).
    head_time: Option<i64>,
    /// The consumer has fetched everything the partition holds (its position reached the end
    /// offset) since the last record was queued: an empty queue here is not data on its way.
    caught_up: bool,
    /// When the runtime last looked whether the partition is caught up.
    checked: Option<Instant>,
}

impl PartitionQueue {
    /// The event time of the front record, if any.
    fn head_time(&mut self) -> Option<i64> {
        let front = self.records.front()?;
        Some(
            *self
                .head_time
                .get_or_insert_with(|| self.decoder.timestamp(front, self.partition_time)),
        )
    }
}

/// How long a task with several input partitions waits, when some have no record queued,
/// before processing the records of the others (Kafka Streams' `max.task.idle.ms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TaskIdle {
    /// Never wait: process what is queued (the `TopologyTestDriver`, and Kafka's -1).
    Never,
    /// Wait while a partition without queued records has data on the broker not yet
    /// fetched, and then for new data up to the duration.
    Wait(Duration),
}

/// One sub-topology on one partition.
pub(crate) struct Task {
    pub(crate) id: TaskId,
    topology: Topology,
    nodes: Vec<Option<Box<dyn Node>>>,
    env: TaskEnv,
    /// One per source partition, ordered by topic name (ties in timestamp go to the first).
    queues: Vec<PartitionQueue>,
    initialised: bool,
    closed: bool,
    /// Since when every partition without queued records is caught up (see [`TaskIdle`]).
    idle_since: Option<Instant>,
}

impl Task {
    /// Creates the task's nodes and opens its stores. The processors' `init` runs later, in
    /// [`init`](Self::init), once the stores are restored.
    pub(crate) fn new(
        topology: &Topology,
        id: TaskId,
        application_id: &Arc<str>,
        state_dir: Option<&Path>,
        wall_clock: i64,
        rocks: &RocksResources,
    ) -> Result<Task> {
        let sub = topology
            .subtopologies()
            .get(id.subtopology as usize)
            .ok_or_else(|| Error::Config(format!("task {id}: no such sub-topology")))?;
        let metas = topology.node_metas();
        let mut nodes: Vec<Option<Box<dyn Node>>> = (0..metas.len()).map(|_| None).collect();
        let mut queues = vec![];
        for &n in &sub.nodes {
            let (node, source) = topology.instantiate(n, application_id);
            nodes[n] = Some(node);
            if let Some((topics, decoder)) = source {
                for t in topics {
                    queues.push(PartitionQueue {
                        topic: Arc::from(t.as_str()),
                        partition: id.partition,
                        records: VecDeque::new(),
                        source: n,
                        decoder: decoder.clone(),
                        partition_time: i64::MIN,
                        consumed: None,
                        head_time: None,
                        caught_up: false,
                        checked: None,
                    });
                }
            }
        }
        queues.sort_by(|a: &PartitionQueue, b| a.topic.cmp(&b.topic));
        let mut stores: Vec<Option<Box<dyn StateStore>>> =
            (0..topology.store_builders().len()).map(|_| None).collect();
        for (i, builder) in topology.store_builders().iter().enumerate() {
            if sub.stores.iter().any(|s| s == builder.name()) {
                let ctx = StoreContext {
                    task: id,
                    application_id,
                    dir: state_dir,
                    rocks,
                };
                stores[i] = Some(builder.build(&ctx).map_err(|e| Error::task(id, e))?);
            }
        }
        let task = Task {
            id,
            topology: topology.clone(),
            nodes,
            env: TaskEnv::new(
                id,
                application_id.clone(),
                wall_clock,
                stores,
                topology.global_stores().clone(),
            ),
            queues,
            initialised: false,
            closed: false,
            idle_since: None,
        };
        tracing::debug!(task = %id, "task created");
        Ok(task)
    }

    /// Attaches the task's metrics, and each store's (`store(name)`); without, it records
    /// none.
    pub(crate) fn set_metrics(
        &mut self,
        metrics: crate::metrics::TaskMetrics,
        store: impl Fn(&str) -> crate::metrics::StoreMetrics,
    ) {
        self.env.metrics = Some(metrics);
        for core in self.env.stores_mut().filter_map(|s| s.core_mut()) {
            let m = store(core.name());
            core.set_metrics(m);
        }
    }

    /// Sets the bytes a record cache of a node of this task may hold (0: no caching, and the
    /// stores built with caching log every write at once).
    pub(crate) fn set_cache_budget(&mut self, bytes: usize) {
        self.env.set_cache_budget(bytes);
        for core in self.env.stores_mut().filter_map(|s| s.core_mut()) {
            core.set_cache_budget(bytes);
        }
    }

    /// Runs the processors' `init`, after restoration, so that they see the restored stores.
    pub(crate) fn init(&mut self) -> Result<()> {
        let id = self.id;
        let nodes: Vec<usize> = self.topology.subtopologies()[id.subtopology as usize]
            .nodes
            .clone();
        for n in nodes {
            self.with_ctx(n, &mut NoOutput, |node, ctx| node.init(ctx))
                .map_err(|e| Error::task(id, e))?;
        }
        self.initialised = true;
        Ok(())
    }

    fn with_ctx(
        &mut self,
        node: usize,
        collector: &mut dyn RecordCollector,
        f: impl FnOnce(&mut Box<dyn Node>, &mut NodeCtx<'_>) -> Result<()>,
    ) -> Result<()> {
        let metas = self.topology.node_metas();
        let mut ctx = NodeCtx::new(node, metas, &mut self.nodes, &mut self.env, collector);
        ctx.run_node(node, f)
    }

    /// Queues a record read from one of the task's partitions.
    pub(crate) fn add(&mut self, record: RawRecord) -> Result<()> {
        match self
            .queues
            .iter_mut()
            .find(|q| q.partition == record.partition && q.topic == record.topic)
        {
            Some(q) => {
                q.records.push_back(record);
                q.caught_up = false;
                Ok(())
            }
            None => Err(Error::Config(format!(
                "task {} got a record of {}-{}, which it does not read",
                self.id, record.topic, record.partition
            ))),
        }
    }

    /// Records queued and not yet processed.
    pub(crate) fn buffered(&self) -> usize {
        self.queues.iter().map(|q| q.records.len()).sum()
    }

    /// Whether the task may process its next record now: when every input partition has a
    /// record queued, so that the one with the smallest event time is really the next; when
    /// some have none, only once those are caught up (nothing fetched is on its way) and,
    /// after that, `idle` has passed with no new data (Kafka Streams' `max.task.idle.ms`).
    pub(crate) fn ready(&mut self, now: Instant, idle: TaskIdle) -> bool {
        let empty = self.queues.iter().filter(|q| q.records.is_empty()).count();
        if empty == self.queues.len() {
            return false;
        }
        if empty == 0 {
            self.idle_since = None;
            return true;
        }
        let TaskIdle::Wait(max) = idle else {
            return true;
        };
        if self
            .queues
            .iter()
            .any(|q| q.records.is_empty() && !q.caught_up)
        {
            self.idle_since = None;
            return false;
        }
        now.duration_since(*self.idle_since.get_or_insert(now)) >= max
    }

    /// The partitions without queued records, not known to be caught up, that keep the task
    /// from processing (see [`ready`](Self::ready)), each at most once per `every`.
    pub(crate) fn waiting_for(&mut self, now: Instant, every: Duration) -> Vec<(Arc<str>, i32)> {
        if self.queues.iter().all(|q| q.records.is_empty()) {
            return vec![];
        }
        self.queues
            .iter_mut()
            .filter(|q| q.records.is_empty() && !q.caught_up)
            .filter(|q| q.checked.is_none_or(|t| now.duration_since(t) >= every))
            .map(|q| {
                q.checked = Some(now);
                (q.topic.clone(), q.partition)
            })
            .collect()
    }

    /// The consumer fetched everything `topic`-`partition` holds.
    pub(crate) fn caught_up(&mut self, topic: &str, partition: i32) {
        for q in &mut self.queues {
            if &*q.topic == topic && q.partition == partition && q.records.is_empty() {
                q.caught_up = true;
            }
        }
    }

    /// Processes the queued record with the smallest event time, then any stream-time
    /// punctuations it makes due. Returns false when nothing was queued.
    pub(crate) fn process_one(
        &mut self,
        collector: &mut dyn RecordCollector,
        on_poison: &dyn DeserializationErrorHandler,
    ) -> Result<bool> {
        let picked = self
            .queues
            .iter_mut()
            .enumerate()
            .filter_map(|(i, q)| q.head_time().map(|ts| (ts, i)))
            .min_by_key(|(ts, _)| *ts);
        let Some((_, index)) = picked else {
            return Ok(false);
        };
        let queue = &mut self.queues[index];
        let raw = queue.records.pop_front().unwrap();
        queue.head_time = None;
        queue.consumed = Some(raw.offset + 1);
        let (source, decoder, partition_time) =
            (queue.source, queue.decoder.clone(), queue.partition_time);
        let meta = raw.metadata();
        match decoder.decode(&raw, partition_time) {
            Ok(decoded) => {
                let q = &mut self.queues[index];
                q.partition_time = q.partition_time.max(decoded.timestamp);
                self.env.observe(decoded.timestamp);
                self.env.set_current(Some(meta));
                let id = self.id;
                let result = self.with_ctx(source, collector, |_, ctx| (decoded.forward)(ctx));
                self.env.set_current(None);
                result.map_err(|e| Error::task(id, e))?;
                if let Some(m) = &self.env.metrics {
                    m.processed();
                }
                self.send_changelog(collector, false)?;
                let now = self.env.stream_time();
                self.punctuate(PunctuationType::StreamTime, now, collector)?;
            }
            Err(e) => self.on_poison(raw, &e.to_string(), collector, on_poison)?,
        }
        Ok(true)
    }

    fn on_poison(
        &mut self,
        raw: RawRecord,
        error: &str,
        collector: &mut dyn RecordCollector,
        handler: &dyn DeserializationErrorHandler,
    ) -> Result<()> {
        let context = ErrorContext {
            task: self.id,
            topic: &raw.topic,
            partition: raw.partition,
            offset: raw.offset,
            key: raw.key.as_deref(),
            value: raw.value.as_deref(),
        };
        let response = handler.handle(&context, error);
        if let Some(m) = &self.env.metrics {
            if !matches!(response, DeserializationResponse::Fail) {
                m.dropped(DropReason::Deserialization);
            }
        }
        match response {
            DeserializationResponse::Continue => Ok(()),
            DeserializationResponse::Fail => Err(Error::Deserialization {
                task: self.id.to_string(),
                topic: raw.topic.to_string(),
                partition: raw.partition,
                offset: raw.offset,
                message: error.to_string(),
            }),
            DeserializationResponse::DeadLetter(topic) => {
                let headers = raw
                    .headers
                    .clone()
                    .with(headers::MESSAGE, Some(error.as_bytes()))
                    .with(headers::TOPIC, Some(raw.topic.as_bytes()))
                    .with(
                        headers::PARTITION,
                        Some(raw.partition.to_string().as_bytes()),
                    )
                    .with(headers::OFFSET, Some(raw.offset.to_string().as_bytes()))
                    .with(headers::TASK, Some(self.id.to_string().as_bytes()));
                collector.send(OutRecord {
                    topic: Arc::from(topic.as_str()),
                    partition: None,
                    key: raw.key,
                    value: raw.value,
                    timestamp: raw.timestamp,
                    headers,
                })
            }
        }
    }

    /// Runs the punctuations of `kind` due at `now`. Returns how many ran.
    pub(crate) fn punctuate(
        &mut self,
        kind: PunctuationType,
        now: i64,
        collector: &mut dyn RecordCollector,
    ) -> Result<usize> {
        let due = self.env.due_punctuations(kind, now);
        let id = self.id;
        for (_, pid, node) in &due {
            // A punctuation may have been cancelled by an earlier one.
            if !self.env.is_scheduled(*pid) {
                continue;
            }
            let pid = *pid;
            self.with_ctx(*node, collector, |n, ctx| n.punctuate(pid, now, ctx))
                .map_err(|e| Error::task(id, e))?;
            self.send_changelog(collector, false)?;
        }
        Ok(due.len())
    }

    /// Whether a processor asked for a commit since the last one.
    pub(crate) fn take_commit_request(&mut self) -> bool {
        self.env.take_commit_request()
    }

    /// Whether a store holds writes waiting for a commit (a punctuator may write with no
    /// record consumed).
    pub(crate) fn has_pending_writes(&mut self) -> bool {
        self.env
            .stores_mut()
            .any(|s| s.core_mut().is_some_and(|c| c.has_pending()))
    }

    /// Whether records were processed since the last commit.
    pub(crate) fn has_uncommitted(&self) -> bool {
        self.queues.iter().any(|q| q.consumed.is_some())
    }

    /// Sends the stores' changelog records: those queued by writes, and with `commit` also
    /// the cached last writes per key.
    fn send_changelog(&mut self, collector: &mut dyn RecordCollector, commit: bool) -> Result<()> {
        let timestamp = self.env.stream_time().max(0);
        let id = self.id;
        for store in self.env.stores_mut() {
            let Some(core) = store.core_mut() else {
                continue;
            };
            // After every record: only stores that queued changelog records.
            if !commit && !core.has_outbox() {
                continue;
            }
            let Some(target) = core.changelog.clone() else {
                continue;
            };
            let records = if commit {
                core.cache_flush()
            } else {
                core.take_outbox()
            };
            for (key, value) in records {
                collector
                    .send(OutRecord {
                        topic: target.topic.clone(),
                        partition: Some(target.partition),
                        key: Some(key),
                        value,
                        timestamp,
                        headers: Headers::new(),
                    })
                    .map_err(|e| Error::task(id, e))?;
            }
        }
        Ok(())
    }

    /// Flushes the stores (their cached changelog records go to `collector`) and returns the
    /// offsets to commit (next offset per partition).
    pub(crate) fn prepare_commit(
        &mut self,
        collector: &mut dyn RecordCollector,
    ) -> Result<Vec<(Arc<str>, i32, i64)>> {
        // Record caches first, in the order the nodes were added (parents before children),
        // so that what one forwards reaches the caches below it before they flush.
        if self.initialised {
            let id = self.id;
            let nodes = self.topology.subtopologies()[id.subtopology as usize]
                .nodes
                .clone();
            for n in nodes {
                self.with_ctx(n, collector, |node, ctx| node.flush(ctx))
                    .map_err(|e| Error::task(id, e))?;
            }
        }
        for s in self.env.stores_mut() {
            s.flush().map_err(|e| Error::task(self.id, e))?;
        }
        self.send_changelog(collector, true)?;
        Ok(self
            .queues
            .iter()
            .filter_map(|q| q.consumed.map(|o| (q.topic.clone(), q.partition, o)))
            .collect())
    }

    /// The commit succeeded: the stores write their held-back batches with the changelog
    /// offsets reached (the last offset written to each store's changelog partition).
    pub(crate) fn committed(
        &mut self,
        changelog_offsets: &HashMap<(String, i32), i64>,
        durable: bool,
    ) -> Result<()> {
        // A store built from a source topic is up to the last source offset processed.
        let consumed: Vec<(Arc<str>, i32, i64)> = self
            .queues
            .iter_mut()
            .filter_map(|q| {
                q.consumed
                    .take()
                    .map(|o| (q.topic.clone(), q.partition, o - 1))
            })
            .collect();
        for store in self.env.stores_mut() {
            if let Some(core) = store.core_mut() {
                let offset = match &core.changelog {
                    Some(c) if c.source => consumed
                        .iter()
                        .find(|(t, p, _)| **t == *c.topic && *p == c.partition)
                        .map(|(_, _, o)| *o),
                    Some(c) if !changelog_offsets.is_empty() => changelog_offsets
                        .get(&(c.topic.to_string(), c.partition))
                        .copied(),
                    _ => None,
                };
                core.commit_with(offset, durable)
                    .map_err(|e| Error::task(self.id, e))?;
            }
        }
        Ok(())
    }

    /// The change-logged stores, for restoration.
    pub(crate) fn logged_stores(&mut self) -> impl Iterator<Item = &mut StoreCore> {
        self.env
            .stores_mut()
            .filter_map(|s| s.core_mut())
            .filter(|c| c.changelog.is_some())
    }

    /// Handles for interactive queries: (store name, partition, handle).
    pub(crate) fn query_handles(&self) -> Vec<(String, i32, QueryHandle)> {
        self.env
            .stores()
            .filter_map(|s| {
                s.query_handle()
                    .map(|h| (s.name().to_string(), self.id.partition, h))
            })
            .collect()
    }

    /// Read access to a store of this task.
    pub(crate) fn store_mut(&mut self, name: &str) -> Option<&mut Box<dyn StateStore>> {
        self.env.stores_mut().find(|s| s.name() == name)
    }

    /// Closes processors and stores. A dirty close (after an abort or fencing) first drops
    /// the stores' uncommitted writes, which never reach RocksDB.
    pub(crate) fn close(&mut self, clean: bool) -> Result<()> {
        if self.closed {
            return Ok(());
        }
        self.closed = true;
        if !clean {
            for store in self.env.stores_mut() {
                if let Some(core) = store.core_mut() {
                    core.drop_uncommitted();
                }
            }
        }
        let mut first_error = None;
        // Processors never initialised (restoration was interrupted) are not closed either.
        let nodes = if self.initialised {
            &mut self.nodes[..]
        } else {
            &mut []
        };
        for node in nodes.iter_mut().flatten() {
            if let Err(e) = node.close() {
                first_error.get_or_insert(e);
            }
        }
        for store in self.env.stores_mut() {
            if let Err(e) = store.close() {
                first_error.get_or_insert(e);
            }
        }
        tracing::debug!(task = %self.id, "task closed");
        first_error.map_or(Ok(()), |e| Err(Error::task(self.id, e)))
    }
}
