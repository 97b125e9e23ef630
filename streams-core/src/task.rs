//! Tasks: one sub-topology running on one partition, with its own nodes, stores and time.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::handlers::{
    headers, DeserializationErrorHandler, DeserializationResponse, ErrorContext,
};
use crate::processor::{DynRecord, Node, PunctuationType, PunctuatorId};
use crate::store::{QueryHandle, RocksResources, StateStore, StoreContext, StoreCore};
use crate::topology::{NodeMeta, SourceDecoder, Topology};
use crate::{Error, Headers, RecordOrigin, Result, SerdeError};

/// A task's id: its sub-topology and partition, shown as `<sub-topology>_<partition>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskId {
    /// The sub-topology.
    pub subtopology: u32,
    /// The partition of its source topics.
    pub partition: i32,
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}_{}", self.subtopology, self.partition)
    }
}

/// Where the record being processed came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordMetadata {
    /// Source topic.
    pub topic: Arc<str>,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
}

/// A record as read from a topic, before its source's serdes.
#[derive(Debug, Clone)]
pub(crate) struct RawRecord {
    pub(crate) topic: Arc<str>,
    pub(crate) partition: i32,
    pub(crate) offset: i64,
    pub(crate) timestamp: i64,
    pub(crate) key: Option<Vec<u8>>,
    pub(crate) value: Option<Vec<u8>>,
    pub(crate) headers: Headers,
}

impl RawRecord {
    pub(crate) fn origin(&self) -> RecordOrigin {
        RecordOrigin {
            topic: self.topic.clone(),
            partition: self.partition,
            offset: self.offset,
        }
    }
}

/// A serialized output record.
#[derive(Debug, Clone)]
pub(crate) struct OutRecord {
    pub(crate) topic: Arc<str>,
    pub(crate) partition: Option<i32>,
    pub(crate) key: Option<Vec<u8>>,
    pub(crate) value: Option<Vec<u8>>,
    pub(crate) timestamp: i64,
    pub(crate) headers: Headers,
}

/// Where a task's output goes: the producer in the runtime, queues in the test driver.
pub(crate) trait RecordCollector {
    fn send(&mut self, record: OutRecord) -> Result<()>;
    fn partition_count(&mut self, topic: &str) -> Result<i32>;
    /// An output record could not be serialized; decide with the production handler.
    fn serialization_error(&mut self, node: &str, topic: &str, error: SerdeError) -> Result<()>;
}

/// A collector for `init` and `close`, where forwarding is not allowed.
struct NoOutput;

impl RecordCollector for NoOutput {
    fn send(&mut self, record: OutRecord) -> Result<()> {
        Err(Error::Config(format!(
            "a processor forwarded a record to {} from init; forward from process or punctuate",
            record.topic
        )))
    }
    fn partition_count(&mut self, topic: &str) -> Result<i32> {
        Err(Error::Config(format!(
            "no partition count of {topic} during init"
        )))
    }
    fn serialization_error(&mut self, _: &str, _: &str, error: SerdeError) -> Result<()> {
        Err(error.into())
    }
}

pub(crate) struct Punctuator {
    pub(crate) id: PunctuatorId,
    node: usize,
    interval: i64,
    kind: PunctuationType,
    next: Option<i64>,
}

/// Task state that nodes reach through their context.
pub(crate) struct TaskEnv {
    pub(crate) task_id: TaskId,
    pub(crate) application_id: Arc<str>,
    pub(crate) stream_time: i64,
    pub(crate) wall_clock: i64,
    pub(crate) current: Option<RecordMetadata>,
    pub(crate) punctuators: Vec<Punctuator>,
    next_punctuator: u64,
    pub(crate) commit_requested: bool,
    /// By the topology's store index; `None` for stores of other sub-topologies.
    pub(crate) stores: Vec<Option<Box<dyn StateStore>>>,
}

impl TaskEnv {
    pub(crate) fn cancel(&mut self, id: PunctuatorId) {
        self.punctuators.retain(|p| p.id != id);
    }
}

/// A node's view of its task while it runs.
pub(crate) struct NodeCtx<'a> {
    pub(crate) node: usize,
    pub(crate) metas: &'a [NodeMeta],
    pub(crate) nodes: &'a mut [Option<Box<dyn Node>>],
    pub(crate) env: &'a mut TaskEnv,
    pub(crate) collector: &'a mut dyn RecordCollector,
}

impl NodeCtx<'_> {
    pub(crate) fn reborrow(&mut self) -> NodeCtx<'_> {
        NodeCtx {
            node: self.node,
            metas: self.metas,
            nodes: &mut *self.nodes,
            env: &mut *self.env,
            collector: &mut *self.collector,
        }
    }

    pub(crate) fn child_count(&self) -> usize {
        self.metas[self.node].children.len()
    }

    pub(crate) fn child_position(&self, name: &str) -> Result<usize> {
        let meta = &self.metas[self.node];
        meta.children
            .iter()
            .position(|&c| &*self.metas[c].name == name)
            .ok_or_else(|| Error::Config(format!("node {} has no child named {name}", meta.name)))
    }

    pub(crate) fn forward_to_child(&mut self, position: usize, record: DynRecord) -> Result<()> {
        let child = self.metas[self.node].children[position];
        self.run_node(child, |node, ctx| node.process(record, ctx))
    }

    /// Runs `f` on node `index` with a context of its own.
    fn run_node(
        &mut self,
        index: usize,
        f: impl FnOnce(&mut Box<dyn Node>, &mut NodeCtx<'_>) -> Result<()>,
    ) -> Result<()> {
        let Some(mut node) = self.nodes[index].take() else {
            return Err(Error::Config(format!(
                "node {} is not part of this task or is already running",
                self.metas[index].name
            )));
        };
        let result = {
            let mut ctx = NodeCtx {
                node: index,
                metas: self.metas,
                nodes: &mut *self.nodes,
                env: &mut *self.env,
                collector: &mut *self.collector,
            };
            f(&mut node, &mut ctx)
        };
        self.nodes[index] = Some(node);
        result
    }

    pub(crate) fn schedule(
        &mut self,
        interval: Duration,
        kind: PunctuationType,
    ) -> Result<PunctuatorId> {
        let interval = i64::try_from(interval.as_millis()).unwrap_or(i64::MAX);
        if interval < 1 {
            return Err(Error::Config(format!(
                "node {}: a punctuation interval must be at least 1 ms",
                self.metas[self.node].name
            )));
        }
        let env = &mut *self.env;
        let id = PunctuatorId(env.next_punctuator);
        env.next_punctuator += 1;
        let next = match kind {
            PunctuationType::StreamTime => (env.stream_time != i64::MIN).then_some(env.stream_time),
            PunctuationType::WallClockTime => Some(env.wall_clock.saturating_add(interval)),
        };
        env.punctuators.push(Punctuator {
            id,
            node: self.node,
            interval,
            kind,
            next,
        });
        Ok(id)
    }

    pub(crate) fn state_store<S: StateStore>(&mut self, name: &str) -> Result<&mut S> {
        let meta = &self.metas[self.node];
        let found = meta.stores.iter().copied().find(|&s| {
            self.env
                .stores
                .get(s)
                .and_then(|s| s.as_ref())
                .is_some_and(|s| s.name() == name)
        });
        let Some(index) = found else {
            return Err(Error::Config(format!(
                "processor {} is not connected to a store named {name}; connect it with add_state_store",
                meta.name
            )));
        };
        let store = self.env.stores[index].as_mut().unwrap();
        store
            .as_any_mut()
            .downcast_mut::<S>()
            .ok_or_else(|| Error::State {
                store: name.to_string(),
                message: format!("the store is not a {}", std::any::type_name::<S>()),
            })
    }
}

struct PartitionQueue {
    topic: Arc<str>,
    partition: i32,
    records: VecDeque<RawRecord>,
    source: usize,
    decoder: Arc<dyn SourceDecoder>,
    partition_time: i64,
    /// The next offset to commit, when records were processed since the last commit.
    consumed: Option<i64>,
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
            env: TaskEnv {
                task_id: id,
                application_id: application_id.clone(),
                stream_time: i64::MIN,
                wall_clock,
                current: None,
                punctuators: vec![],
                next_punctuator: 0,
                commit_requested: false,
                stores,
            },
            queues,
            initialised: false,
            closed: false,
        };
        tracing::debug!(task = %id, "task created");
        Ok(task)
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
        let mut ctx = NodeCtx {
            node,
            metas,
            nodes: &mut self.nodes,
            env: &mut self.env,
            collector,
        };
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

    /// Processes the queued record with the smallest timestamp, then any stream-time
    /// punctuations it makes due. Returns false when nothing was queued.
    pub(crate) fn process_one(
        &mut self,
        collector: &mut dyn RecordCollector,
        on_poison: &dyn DeserializationErrorHandler,
    ) -> Result<bool> {
        let picked = self
            .queues
            .iter()
            .enumerate()
            .filter_map(|(i, q)| q.records.front().map(|r| (r.timestamp, i)))
            .min_by_key(|(ts, _)| *ts);
        let Some((_, index)) = picked else {
            return Ok(false);
        };
        let queue = &mut self.queues[index];
        let raw = queue.records.pop_front().unwrap();
        queue.consumed = Some(raw.offset + 1);
        let (source, decoder, partition_time) =
            (queue.source, queue.decoder.clone(), queue.partition_time);
        let meta = RecordMetadata {
            topic: raw.topic.clone(),
            partition: raw.partition,
            offset: raw.offset,
        };
        match decoder.decode(&raw, partition_time) {
            Ok(decoded) => {
                let q = &mut self.queues[index];
                q.partition_time = q.partition_time.max(decoded.timestamp);
                self.env.stream_time = self.env.stream_time.max(decoded.timestamp);
                self.env.current = Some(meta);
                let id = self.id;
                let result = self.with_ctx(source, collector, |_, ctx| (decoded.forward)(ctx));
                self.env.current = None;
                result.map_err(|e| Error::task(id, e))?;
                self.send_changelog(collector, false)?;
                self.punctuate(PunctuationType::StreamTime, self.env.stream_time, collector)?;
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
        match handler.handle(&context, error) {
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
        if kind == PunctuationType::WallClockTime {
            self.env.wall_clock = now;
        }
        let mut due: Vec<(i64, PunctuatorId, usize)> = vec![];
        for p in self.env.punctuators.iter_mut().filter(|p| p.kind == kind) {
            let next = *p.next.get_or_insert(now);
            if next <= now {
                due.push((next, p.id, p.node));
                // Skip the intervals that passed in between: fire once, then align.
                let missed = (now - next) / p.interval;
                p.next = Some(next.saturating_add(p.interval.saturating_mul(missed + 1)));
            }
        }
        due.sort();
        let id = self.id;
        for (_, pid, node) in &due {
            // A punctuation may have been cancelled by an earlier one.
            if !self.env.punctuators.iter().any(|p| p.id == *pid) {
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
        std::mem::take(&mut self.env.commit_requested)
    }

    /// Whether a store holds writes waiting for a commit (a punctuator may write with no
    /// record consumed).
    pub(crate) fn has_pending_writes(&mut self) -> bool {
        self.env
            .stores
            .iter_mut()
            .flatten()
            .any(|s| s.core_mut().is_some_and(|c| c.has_pending()))
    }

    /// Whether records were processed since the last commit.
    pub(crate) fn has_uncommitted(&self) -> bool {
        self.queues.iter().any(|q| q.consumed.is_some())
    }

    /// Sends the stores' changelog records: those queued by writes, and with `commit` also
    /// the cached last writes per key.
    fn send_changelog(&mut self, collector: &mut dyn RecordCollector, commit: bool) -> Result<()> {
        let timestamp = self.env.stream_time.max(0);
        let id = self.id;
        for store in self.env.stores.iter_mut().flatten() {
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
        for s in self.env.stores.iter_mut().flatten() {
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
        for q in &mut self.queues {
            q.consumed = None;
        }
        for store in self.env.stores.iter_mut().flatten() {
            if let Some(core) = store.core_mut() {
                let offset = match &core.changelog {
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
            .stores
            .iter_mut()
            .flatten()
            .filter_map(|s| s.core_mut())
            .filter(|c| c.changelog.is_some())
    }

    /// Handles for interactive queries: (store name, partition, handle).
    pub(crate) fn query_handles(&self) -> Vec<(String, i32, QueryHandle)> {
        self.env
            .stores
            .iter()
            .flatten()
            .filter_map(|s| {
                s.query_handle()
                    .map(|h| (s.name().to_string(), self.id.partition, h))
            })
            .collect()
    }

    /// Read access to a store of this task.
    pub(crate) fn store_mut(&mut self, name: &str) -> Option<&mut Box<dyn StateStore>> {
        self.env
            .stores
            .iter_mut()
            .flatten()
            .find(|s| s.name() == name)
    }

    /// Closes processors and stores. A dirty close (after an abort or fencing) first drops
    /// the stores' uncommitted writes, which never reach RocksDB.
    pub(crate) fn close(&mut self, clean: bool) -> Result<()> {
        if self.closed {
            return Ok(());
        }
        self.closed = true;
        if !clean {
            for store in self.env.stores.iter_mut().flatten() {
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
        for store in self.env.stores.iter_mut().flatten() {
            if let Err(e) = store.close() {
                first_error.get_or_insert(e);
            }
        }
        tracing::debug!(task = %self.id, "task closed");
        first_error.map_or(Ok(()), |e| Err(Error::task(self.id, e)))
    }
}
