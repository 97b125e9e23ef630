//! The task loop shared by the stream thread and the `TopologyTestDriver`: the running tasks
//! of one thread, which records go to which task, processing, and the two halves of a commit.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use std::time::{Duration, Instant};

use super::{Task, TaskIdle};
use crate::handlers::DeserializationErrorHandler;
use crate::node::{PunctuationType, RawRecord, RecordCollector};
use crate::store::QueryHandle;
use crate::topology::Topology;
use crate::{Error, Result, TaskId};

/// The next offset to commit of one input partition: `(topic, partition, offset)`.
pub(crate) type CommitOffset = (Arc<str>, i32, i64);

/// Which sub-topology reads which (resolved) source topic.
#[derive(Debug, Clone, Default)]
pub(crate) struct SourceTopics(HashMap<String, u32>);

impl SourceTopics {
    pub(crate) fn of(topology: &Topology, application_id: &str) -> Self {
        let mut owners = HashMap::new();
        for st in topology.subtopologies() {
            for t in &st.source_topics {
                owners.insert(topology.resolve_topic(application_id, t), st.id);
            }
        }
        SourceTopics(owners)
    }

    /// The task that reads `partition` of `topic`, if the topology reads the topic.
    pub(crate) fn task_of(&self, topic: &str, partition: i32) -> Option<TaskId> {
        self.0.get(topic).map(|&subtopology| TaskId {
            subtopology,
            partition,
        })
    }

    /// The resolved source topics.
    pub(crate) fn topics(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    /// The source partitions of task `id`.
    pub(crate) fn partitions_of(&self, id: TaskId) -> impl Iterator<Item = (&str, i32)> {
        self.0
            .iter()
            .filter(move |(_, &s)| s == id.subtopology)
            .map(move |(t, _)| (t.as_str(), id.partition))
    }
}

/// The running (restored and initialised) tasks of one thread, by id.
#[derive(Default)]
pub(crate) struct Tasks(BTreeMap<TaskId, Task>);

impl Tasks {
    pub(crate) fn insert(&mut self, task: Task) {
        self.0.insert(task.id, task);
    }

    pub(crate) fn contains(&self, id: TaskId) -> bool {
        self.0.contains_key(&id)
    }

    pub(crate) fn ids(&self) -> impl Iterator<Item = TaskId> + '_ {
        self.0.keys().copied()
    }

    /// Every task, for a look into their stores.
    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = &mut Task> {
        self.0.values_mut()
    }

    /// Takes every task out, to close them.
    pub(crate) fn take_all(&mut self) -> Vec<Task> {
        std::mem::take(&mut self.0).into_values().collect()
    }

    /// Queues a record for the task `id`.
    pub(crate) fn add(&mut self, id: TaskId, raw: RawRecord) -> Result<()> {
        match self.0.get_mut(&id) {
            Some(task) => task.add(raw),
            None => Err(Error::Internal(format!(
                "a record of {}-{} for task {id}, which does not run here",
                raw.topic, raw.partition
            ))),
        }
    }

    /// Records queued and not yet processed.
    pub(crate) fn buffered(&self) -> usize {
        self.0.values().map(Task::buffered).sum()
    }

    /// Processes every queued record of every task (stream-time punctuations run as they
    /// become due), then the wall-clock punctuations due at `now`. Returns whether a
    /// processor asked for a commit.
    pub(crate) fn process(
        &mut self,
        collector: &mut dyn RecordCollector,
        on_poison: &dyn DeserializationErrorHandler,
        now: i64,
        idle: TaskIdle,
    ) -> Result<bool> {
        let mut commit = false;
        let instant = Instant::now();
        for task in self.0.values_mut() {
            while task.ready(instant, idle) && task.process_one(collector, on_poison)? {}
            task.punctuate(PunctuationType::WallClockTime, now, collector)?;
            commit |= task.take_commit_request();
        }
        Ok(commit)
    }

    /// The input partitions that hold up a task (no record queued, not known to be caught
    /// up), each at most once per `every`: `(task, topic, partition)`.
    pub(crate) fn waiting_for(&mut self, every: Duration) -> Vec<(TaskId, Arc<str>, i32)> {
        let now = Instant::now();
        self.0
            .values_mut()
            .flat_map(|t| {
                let id = t.id;
                t.waiting_for(now, every)
                    .into_iter()
                    .map(move |(topic, p)| (id, topic, p))
            })
            .collect()
    }

    /// The consumer fetched everything `topic`-`partition` holds: task `id` need not wait
    /// for it.
    pub(crate) fn caught_up(&mut self, id: TaskId, topic: &str, partition: i32) {
        if let Some(t) = self.0.get_mut(&id) {
            t.caught_up(topic, partition);
        }
    }

    /// Whether a commit has anything to do: records processed, or store writes (a
    /// punctuation may write with no record consumed).
    pub(crate) fn needs_commit(&mut self) -> bool {
        self.0
            .values_mut()
            .any(|t| t.has_uncommitted() || t.has_pending_writes())
    }

    /// The first half of a commit: the stores are flushed (their cached changelog records go
    /// to `collector`); returns the offsets to commit.
    pub(crate) fn prepare_commit(
        &mut self,
        collector: &mut dyn RecordCollector,
    ) -> Result<Vec<CommitOffset>> {
        let mut offsets = vec![];
        for task in self.0.values_mut() {
            offsets.extend(task.prepare_commit(collector)?);
        }
        Ok(offsets)
    }

    /// The second half, once the commit took effect: the stores write their held-back
    /// batches, with the changelog offsets reached (durably unless `durable` is false).
    pub(crate) fn committed(
        &mut self,
        changelog_offsets: &HashMap<(String, i32), i64>,
        durable: bool,
    ) -> Result<()> {
        for task in self.0.values_mut() {
            task.committed(changelog_offsets, durable)?;
        }
        Ok(())
    }

    /// Handles for interactive queries of every task's stores.
    pub(crate) fn query_handles(&self) -> Vec<(String, i32, QueryHandle)> {
        self.0.values().flat_map(Task::query_handles).collect()
    }
}
