//! The context a node runs in: its place in the graph, its task's state, the collector.

use std::sync::Arc;
use std::time::Duration;

use super::{DynRecord, Node, NodeMeta, PunctuationType, PunctuatorId, RecordCollector};
use crate::store::{GlobalStore, GlobalStores, StateStore};
use crate::{Error, Record, RecordMetadata, Result, TaskId};

struct Punctuator {
    id: PunctuatorId,
    node: usize,
    interval: i64,
    kind: PunctuationType,
    next: Option<i64>,
}

/// The state of a task that its nodes reach through their context: time, the record being
/// processed, punctuations, commit requests, and the task's stores. The task drives it.
pub(crate) struct TaskEnv {
    task_id: TaskId,
    application_id: Arc<str>,
    stream_time: i64,
    wall_clock: i64,
    current: Option<RecordMetadata>,
    punctuators: Vec<Punctuator>,
    next_punctuator: u64,
    commit_requested: bool,
    /// The bytes a record cache of a node of this task may hold (0: no caching).
    cache_budget: usize,
    /// By the topology's store index; `None` for stores of other sub-topologies.
    stores: Vec<Option<Box<dyn StateStore>>>,
    /// The instance's global stores, readable by every node.
    globals: GlobalStores,
    /// The task's metrics, unless metrics are off.
    pub(crate) metrics: Option<crate::metrics::TaskMetrics>,
}

impl TaskEnv {
    pub(crate) fn new(
        task_id: TaskId,
        application_id: Arc<str>,
        wall_clock: i64,
        stores: Vec<Option<Box<dyn StateStore>>>,
        globals: GlobalStores,
    ) -> Self {
        TaskEnv {
            task_id,
            application_id,
            stream_time: i64::MIN,
            wall_clock,
            current: None,
            punctuators: vec![],
            next_punctuator: 0,
            commit_requested: false,
            cache_budget: 0,
            stores,
            globals,
            metrics: None,
        }
    }

    /// Sets the bytes a record cache of a node of this task may hold.
    pub(crate) fn set_cache_budget(&mut self, bytes: usize) {
        self.cache_budget = bytes;
    }

    pub(crate) fn stream_time(&self) -> i64 {
        self.stream_time
    }

    /// Moves stream time forward to `timestamp` (never back).
    pub(crate) fn observe(&mut self, timestamp: i64) {
        self.stream_time = self.stream_time.max(timestamp);
    }

    /// Sets (or clears) the record being processed.
    pub(crate) fn set_current(&mut self, current: Option<RecordMetadata>) {
        self.current = current;
    }

    /// Whether a processor asked for a commit since the last call.
    pub(crate) fn take_commit_request(&mut self) -> bool {
        std::mem::take(&mut self.commit_requested)
    }

    /// The task's stores.
    pub(crate) fn stores(&self) -> impl Iterator<Item = &dyn StateStore> {
        self.stores.iter().flatten().map(|s| &**s)
    }

    /// The task's stores, to flush, commit or close them.
    pub(crate) fn stores_mut(&mut self) -> impl Iterator<Item = &mut Box<dyn StateStore>> {
        self.stores.iter_mut().flatten()
    }

    /// The punctuations of `kind` due at `now`, as `(due time, id, node)` in the order they
    /// run; each is moved to its next time (intervals that passed in between are skipped:
    /// it fires once, then aligns). Sets the wall clock for wall-clock punctuations.
    pub(crate) fn due_punctuations(
        &mut self,
        kind: PunctuationType,
        now: i64,
    ) -> Vec<(i64, PunctuatorId, usize)> {
        if kind == PunctuationType::WallClockTime {
            self.wall_clock = now;
        }
        let mut due = vec![];
        for p in self.punctuators.iter_mut().filter(|p| p.kind == kind) {
            let next = *p.next.get_or_insert(now);
            if next <= now {
                due.push((next, p.id, p.node));
                let missed = (now - next) / p.interval;
                p.next = Some(next.saturating_add(p.interval.saturating_mul(missed + 1)));
            }
        }
        due.sort();
        due
    }

    /// Whether punctuation `id` is still scheduled (an earlier one may have cancelled it).
    pub(crate) fn is_scheduled(&self, id: PunctuatorId) -> bool {
        self.punctuators.iter().any(|p| p.id == id)
    }
}

/// A node's view of its task while it runs: the typed
/// [`ProcessorContext`](crate::processor::ProcessorContext) is a thin layer over it.
pub(crate) struct NodeCtx<'a> {
    node: usize,
    metas: &'a [NodeMeta],
    nodes: &'a mut [Option<Box<dyn Node>>],
    env: &'a mut TaskEnv,
    collector: &'a mut dyn RecordCollector,
}

impl<'a> NodeCtx<'a> {
    /// The context of node `node` of a task.
    pub(crate) fn new(
        node: usize,
        metas: &'a [NodeMeta],
        nodes: &'a mut [Option<Box<dyn Node>>],
        env: &'a mut TaskEnv,
        collector: &'a mut dyn RecordCollector,
    ) -> Self {
        NodeCtx {
            node,
            metas,
            nodes,
            env,
            collector,
        }
    }

    pub(crate) fn reborrow(&mut self) -> NodeCtx<'_> {
        NodeCtx {
            node: self.node,
            metas: self.metas,
            nodes: &mut *self.nodes,
            env: &mut *self.env,
            collector: &mut *self.collector,
        }
    }

    /// Where the task's output goes.
    pub(crate) fn collector(&mut self) -> &mut dyn RecordCollector {
        &mut *self.collector
    }

    /// Forwards a typed record to every child, cloning it for all but the last.
    pub(crate) fn forward<K: Clone + 'static, V: Clone + 'static>(
        &mut self,
        record: Record<K, V>,
    ) -> Result<()> {
        let n = self.metas[self.node].children.len();
        if n == 0 {
            return Ok(());
        }
        for i in 0..n - 1 {
            self.forward_to_child(i, &mut Some(record.clone()))?;
        }
        self.forward_to_child(n - 1, &mut Some(record))
    }

    /// Forwards a typed record to the child named `child` only.
    pub(crate) fn forward_to<K: 'static, V: 'static>(
        &mut self,
        child: &str,
        record: Record<K, V>,
    ) -> Result<()> {
        let meta = &self.metas[self.node];
        let position = meta
            .children
            .iter()
            .position(|&c| &*self.metas[c].name == child)
            .ok_or_else(|| {
                Error::Config(format!("node {} has no child named {child}", meta.name))
            })?;
        self.forward_to_child(position, &mut Some(record))
    }

    fn forward_to_child(&mut self, position: usize, record: DynRecord<'_>) -> Result<()> {
        let child = self.metas[self.node].children[position];
        self.run_node(child, |node, ctx| node.process(record, ctx))
    }

    /// Runs `f` on node `index` with a context of its own.
    pub(crate) fn run_node(
        &mut self,
        index: usize,
        f: impl FnOnce(&mut Box<dyn Node>, &mut NodeCtx<'_>) -> Result<()>,
    ) -> Result<()> {
        let Some(mut node) = self.nodes[index].take() else {
            return Err(Error::Internal(format!(
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

    /// Schedules a punctuation of this node every `interval`.
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

    /// Cancels a punctuation.
    pub(crate) fn cancel(&mut self, id: PunctuatorId) {
        self.env.punctuators.retain(|p| p.id != id);
    }

    /// Asks for a commit of the task after the current record.
    pub(crate) fn request_commit(&mut self) {
        self.env.commit_requested = true;
    }

    pub(crate) fn task_id(&self) -> TaskId {
        self.env.task_id
    }

    pub(crate) fn record_dropped(&self, reason: crate::metrics::DropReason) {
        if let Some(m) = &self.env.metrics {
            m.dropped(reason);
        }
    }

    pub(crate) fn application_id(&self) -> &str {
        &self.env.application_id
    }

    pub(crate) fn record_metadata(&self) -> Option<&RecordMetadata> {
        self.env.current.as_ref()
    }

    pub(crate) fn stream_time(&self) -> i64 {
        self.env.stream_time
    }

    pub(crate) fn wall_clock(&self) -> i64 {
        self.env.wall_clock
    }

    pub(crate) fn cache_budget(&self) -> usize {
        self.env.cache_budget
    }

    /// The global store `name`.
    pub(crate) fn global_store(&self, name: &str) -> Result<GlobalStore> {
        self.env.globals.get(name).ok_or_else(|| {
            Error::Config(format!(
                "processor {} reads a global store named {name}, which the topology does not declare",
                self.metas[self.node].name
            ))
        })
    }

    /// The store `name` of type `S`, if this node is connected to it.
    pub(crate) fn state_store<S: StateStore>(&mut self, name: &str) -> Result<&mut S> {
        self.state_store_dyn(name)?
            .as_any_mut()
            .downcast_mut::<S>()
            .ok_or_else(|| Error::State {
                store: name.to_string(),
                message: format!("the store is not a {}", std::any::type_name::<S>()),
            })
    }

    /// The store `name`, if this node is connected to it.
    pub(crate) fn state_store_dyn(&mut self, name: &str) -> Result<&mut dyn StateStore> {
        let meta = &self.metas[self.node];
        let stores = &mut self.env.stores;
        let found = meta.stores.iter().copied().find(|&s| {
            stores
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
        Ok(stores[index].as_mut().unwrap().as_mut())
    }
}
