//! Restoration of new tasks' change-logged stores, in steps between processing rounds.
//!
//! A task the consumer was assigned is created (stores opened, processors not yet
//! initialised) and queued here; the stream thread then calls [`Restorer::step`] on every round
//! of its loop, which reads the changelogs for a bounded time and returns the tasks whose
//! stores reached their changelogs' ends. Restoration never runs inside a rebalance callback
//! and never keeps the thread from polling its consumer for long, so a long restoration does
//! not exceed `max.poll.interval.ms` and get the member thrown out of the group (which would
//! close and restore every task again). Kafka Streams' state updater does the same.
//!
//! Every changelog partition of the queued tasks is read at once, by one consumer assigned them
//! all (Kafka Streams' state updater restores its tasks together too), each from the offset its
//! store has stored (or from the changelog's start), `read_committed`, in batches written without
//! the write-ahead log. A task is handed over to processing as soon as its own stores are done,
//! whatever the others' state: one long or blocked changelog holds back its task only. A
//! changelog partition with nothing after the store's offset (empty, or caught up with no
//! transaction marker after the offset) is done when it is opened, without a fetch. A changelog
//! partition is done when the consumer's position reaches its high watermark as listed
//! `read_uncommitted` when it was opened (Kafka Streams' `StoreChangelogReader` does the same
//! since KAFKA-10167): every transaction below it has then ended, so a previous owner's last
//! commit whose end marker comes late is in the store, not lost. The restore consumer's own end
//! (the last stable offset) would stop before such a transaction. While the position waits at
//! the last stable offset the task's `restore_waiting_on_transactions` gauge is 1; after
//! `transaction timeout + 10 s` (the broker aborts a transaction by then) restoration goes on
//! without it, with a warning. For a store built from a source topic the end is the group's
//! committed offset instead. A stored offset the changelog does not hold (it was truncated, or
//! deleted and recreated while the state stayed: the offset is below the changelog's start or
//! at or past its high watermark when it is opened, or the restore consumer reports it out of
//! range later, `auto.offset.reset=error`) wipes the store, and the changelog is read from its
//! start, never replayed onto the old state.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

use super::clients::PlainConsumer;
use crate::config::RestoreListener;
use crate::store::Batch;
use crate::task::Task;
use crate::TaskId;
use crate::{Error, Result};

/// Records written to a store in one batch, at most, and bytes of keys and values, about: a
/// changelog of large values is not held whole in memory before it is written.
const BATCH: usize = 10_000;
const BATCH_BYTES: usize = 16 << 20;
/// Bytes buffered over every changelog partition read at once, at most, about: past it every
/// batch is written.
const BUFFERED_BYTES: usize = 64 << 20;
/// How long one poll waits for records before the thread does something else.
const QUIET: Duration = Duration::from_millis(500);
/// How long listing a changelog partition's last stable offset may take, at most.
const LSO_WAIT: Duration = Duration::from_secs(1);

/// A task waiting for, or in, restoration.
pub(crate) struct Pending {
    pub(crate) task: Task,
    pub(crate) dir: PathBuf,
    /// The logged stores whose changelog is not being read yet, by name.
    stores: VecDeque<String>,
    /// How many of its changelog partitions are being read.
    reading: usize,
}

impl Pending {
    fn is_restored(&self) -> bool {
        self.stores.is_empty() && self.reading == 0
    }
}

/// A changelog partition being read.
struct Cursor {
    task: TaskId,
    store: String,
    topic: Arc<str>,
    partition: i32,
    start: i64,
    end: i64,
    /// For a store built from a source topic: the offset to stop before.
    limit: Option<i64>,
    last: Option<i64>,
    total: u64,
    batch: Batch,
    /// Bytes of keys and values in `batch`.
    batch_bytes: usize,
    started: Instant,
    /// Since when the position waits at the last stable offset, below the end: an
    /// end-of-partition event of its partition number came with the position at the last
    /// stable offset the broker lists for it, and no record came after.
    waiting_since: Option<Instant>,
    /// Since when the restore consumer has reported errors while this partition made no
    /// progress (no record, no position change).
    failing_since: Option<Instant>,
    /// The consumer's position when last checked.
    position: i64,
    /// Restarts from the changelog's start after an out-of-range offset.
    restarts: u32,
    last_report: Instant,
}

impl Cursor {
    /// The next offset to read.
    fn next(&self) -> i64 {
        self.last.map_or(self.start, |o| o + 1)
    }

    /// Where reading stops: the committed offset of a source partition, else the end.
    fn stop(&self) -> i64 {
        self.limit.unwrap_or(self.end)
    }

    fn remaining(&self) -> i64 {
        (self.stop() - self.next()).max(0)
    }

    fn is(&self, topic: &str, partition: i32) -> bool {
        self.partition == partition && &*self.topic == topic
    }
}

/// Queued tasks and the consumer that reads their changelogs.
#[derive(Default)]
pub(crate) struct Restorer {
    consumer: Option<PlainConsumer>,
    /// Lists changelogs' high watermarks (`read_uncommitted`).
    watermarks: Option<PlainConsumer>,
    queue: VecDeque<Pending>,
    /// The changelog partitions being read, each assigned to `consumer`.
    cursors: Vec<Cursor>,
    /// Bytes in the cursors' batches.
    buffered: usize,
    /// The cursor of the last record (an index into `cursors`, checked before use).
    last_hit: usize,
    /// Out-of-range errors in a row that matched no cursor.
    unmatched_out_of_range: u32,
    /// When a retriable failure to start a restoration was last logged.
    retry_logged: Option<Instant>,
    /// The task the last failed step failed on, when one did.
    failed: Option<TaskId>,
}

/// How often a restoration that cannot start yet says so.
const RETRY_LOG_EVERY: Duration = Duration::from_secs(10);

/// What restoration needs from the thread.
pub(crate) struct RestoreEnv<'a> {
    /// Creates the restore consumer when there is none yet.
    pub(crate) make_consumer: &'a dyn Fn() -> Result<PlainConsumer>,
    /// Creates the client that lists high watermarks when there is none yet.
    pub(crate) make_watermarks: &'a dyn Fn() -> Result<PlainConsumer>,
    /// The longest a restoration waits for a transaction open on its changelog.
    pub(crate) open_transaction_wait: Duration,
    /// How long the restore consumer may fail without a record before the error is fatal.
    pub(crate) task_timeout: Duration,
    pub(crate) listener: Option<&'a Arc<dyn RestoreListener>>,
    pub(crate) client_timeout: Duration,
    /// The group's committed offset of a source partition (where a store built from a source
    /// topic stops restoring: processing goes on from there).
    pub(crate) committed: &'a dyn Fn(&str, i32) -> Result<Option<i64>>,
    /// Where restored and remaining records are counted, unless metrics are off.
    pub(crate) metrics: Option<&'a crate::metrics::StreamsMetrics>,
    /// The thread's name (the metrics' `thread_id`).
    pub(crate) thread: &'a str,
    /// Standby tasks catch up again and again: their passes are logged at debug level only.
    pub(crate) standby: bool,
}

impl Restorer {
    /// Queues a created task; its processors are initialised when it is returned by `step`.
    pub(crate) fn add(&mut self, mut task: Task, dir: PathBuf) {
        let stores = task.logged_stores().map(|c| c.name().to_string()).collect();
        self.queue.push_back(Pending {
            task,
            dir,
            stores,
            reading: 0,
        });
    }

    /// Whether no task waits for restoration.
    pub(crate) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// The ids of the queued tasks.
    pub(crate) fn task_ids(&self) -> impl Iterator<Item = TaskId> + '_ {
        self.queue.iter().map(|p| p.task.id)
    }

    /// Whether `id` is queued.
    pub(crate) fn contains(&self, id: TaskId) -> bool {
        self.queue.iter().any(|p| p.task.id == id)
    }

    /// The queued task `id`, to buffer records fetched for it before it runs.
    pub(crate) fn task_mut(&mut self, id: TaskId) -> Option<&mut Task> {
        self.queue
            .iter_mut()
            .find(|p| p.task.id == id)
            .map(|p| &mut p.task)
    }

    /// The task the last step failed on, when its error was that task's own.
    pub(crate) fn failed_task(&self) -> Option<TaskId> {
        self.failed
    }

    /// Takes every queued task out (a revocation, a rewind, shutdown) and stops reading.
    pub(crate) fn take_all(&mut self) -> Vec<Pending> {
        for c in self.cursors.drain(..) {
            tracing::info!(task = %c.task, store = %c.store, partition = c.partition, restored = c.total, "restoration interrupted");
        }
        (self.buffered, self.unmatched_out_of_range) = (0, 0);
        if let Some(consumer) = &self.consumer {
            let _ = consumer.unassign();
        }
        self.queue.drain(..).collect()
    }

    /// Reads changelogs for up to `budget` and returns the tasks whose stores are all restored
    /// (their processors are not initialised yet). On an error of one task's restoration,
    /// [`Restorer::failed_task`] names that task.
    pub(crate) fn step(&mut self, env: &RestoreEnv<'_>, budget: Duration) -> Result<Vec<Pending>> {
        let deadline = Instant::now() + budget;
        self.failed = None;
        self.open_stores(env, deadline)?;
        while !self.cursors.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            self.poll(env, left.min(QUIET))?;
        }
        let mut done = vec![];
        let mut i = 0;
        while i < self.queue.len() {
            if self.queue[i].is_restored() {
                done.extend(self.queue.remove(i));
            } else {
                i += 1;
            }
        }
        Ok(done)
    }

    /// Starts reading the changelog partitions of the queued tasks' stores not read yet, all
    /// at once; a store already at its changelog's end is done at once. Opening stops at
    /// `deadline` once something is being read (the rest opens at the next step).
    fn open_stores(&mut self, env: &RestoreEnv<'_>, deadline: Instant) -> Result<()> {
        let mut added = TopicPartitionList::new();
        let mut opened = 0;
        'tasks: for pending in self.queue.iter_mut() {
            while let Some(store) = pending.stores.pop_front() {
                // At least one store a step, and more while the budget lasts.
                if opened > 0 && Instant::now() >= deadline {
                    pending.stores.push_front(store);
                    break 'tasks;
                }
                opened += 1;
                if self.consumer.is_none() {
                    self.consumer = Some((env.make_consumer)()?);
                }
                if self.watermarks.is_none() {
                    self.watermarks = Some((env.make_watermarks)()?);
                }
                let watermarks = self.watermarks.as_ref().unwrap();
                match open(watermarks, &mut pending.task, store.clone(), env) {
                    Ok(cursor) if cursor.remaining() == 0 => {
                        // Empty, or already restored to its end: nothing to fetch.
                        let id = pending.task.id;
                        blame(&mut self.failed, id, finish(&mut pending.task, cursor, env))?;
                    }
                    Ok(cursor) => {
                        added
                            .add_partition_offset(
                                &cursor.topic,
                                cursor.partition,
                                Offset::Offset(cursor.start),
                            )
                            .map_err(|e| Error::kafka("restore assignment", e))?;
                        pending.reading += 1;
                        self.cursors.push(cursor);
                    }
                    // Say, the group's offsets of a source partition are unstable: a dead
                    // instance's transaction holds them until the broker aborts it. The store
                    // is opened again at the next step; meanwhile the thread goes on.
                    Err(e) if e.is_retriable() => {
                        pending.stores.push_front(store.clone());
                        let now = Instant::now();
                        if self.retry_logged.is_none_or(|t| now >= t + RETRY_LOG_EVERY) {
                            self.retry_logged = Some(now);
                            tracing::warn!(store = %store, task = %pending.task.id, error = %e, "cannot start restoring yet; trying again");
                        }
                        // The others likely fail alike (a broker away, offsets unstable):
                        // the step ends here, so the thread polls its consumer meanwhile.
                        break 'tasks;
                    }
                    Err(e) => return blame(&mut self.failed, pending.task.id, Err(e)),
                }
            }
        }
        if opened > 0 {
            for id in self.queue.iter().map(|p| p.task.id) {
                self.report_remaining(id, env);
            }
        }
        if added.count() > 0 {
            self.consumer
                .as_ref()
                .expect("created above")
                .incremental_assign(&added)
                .map_err(|e| Error::kafka("assign changelogs", e))?;
        }
        Ok(())
    }

    /// One poll of the restore consumer, and what it brings.
    fn poll(&mut self, env: &RestoreEnv<'_>, wait: Duration) -> Result<()> {
        let consumer = self.consumer.as_ref().expect("reading changelogs");
        match consumer.poll(wait) {
            Some(Ok(m)) => {
                // Records come in runs of one partition: the last one's cursor first.
                let (topic, partition) = (m.topic(), m.partition());
                let Some(i) = Some(self.last_hit)
                    .filter(|&i| self.cursors.get(i).is_some_and(|c| c.is(topic, partition)))
                    .or_else(|| self.cursors.iter().position(|c| c.is(topic, partition)))
                else {
                    return Ok(()); // fetched before its partition was done or unassigned
                };
                self.last_hit = i;
                let c = &mut self.cursors[i];
                if m.offset() < c.next() {
                    return Ok(()); // fetched before a restart from the changelog's start
                }
                if c.limit.is_some_and(|limit| m.offset() >= limit) {
                    return self.done(i, env);
                }
                c.last = Some(m.offset());
                c.failing_since = None;
                if c.waiting_since.take().is_some() {
                    let task = c.task;
                    self.report_waiting(task, env);
                }
                let c = &mut self.cursors[i];
                if let Some(key) = m.key() {
                    let bytes = key.len() + m.payload().map_or(0, <[u8]>::len);
                    c.batch_bytes += bytes;
                    self.buffered += bytes;
                    c.batch
                        .push((key.to_vec(), m.payload().map(<[u8]>::to_vec)));
                }
                if c.batch.len() >= BATCH || c.batch_bytes >= BATCH_BYTES {
                    self.write(i, env)?;
                } else if self.buffered >= BUFFERED_BYTES {
                    for j in 0..self.cursors.len() {
                        self.write(j, env)?;
                    }
                }
                // At the end taken at open: done, even while the changelog keeps growing (a
                // standby behind a busy active task never sees a pause or an end-of-partition
                // event, and must move on to its other stores).
                if self.cursors[i].next() >= self.cursors[i].stop() {
                    return self.done(i, env);
                }
                Ok(())
            }
            // The end of what read_committed may read (the last stable offset) of a partition
            // with this number (the event does not say which topic's).
            Some(Err(KafkaError::PartitionEOF(partition))) => self.check_ends(env, Some(partition)),
            // Nothing more for now: the positions may have moved past transaction markers.
            None => self.check_ends(env, None),
            Some(Err(e)) if offset_out_of_range(&e) => self.out_of_range(env, &e),
            Some(Err(e)) => {
                // Transient errors (a broker down, a leader moving) are retried, as the commit
                // path retries; only a fatal one, or errors without a record between them for
                // longer than the task timeout, stop the instance.
                // The error names no partition: each partition that makes no progress
                // meanwhile counts it.
                let e = Error::kafka("restore changelogs", e);
                let now = Instant::now();
                for c in &mut self.cursors {
                    c.failing_since.get_or_insert(now);
                }
                let stalled = self.cursors.iter().find(|c| {
                    c.failing_since
                        .is_some_and(|since| since.elapsed() > env.task_timeout)
                });
                if e.is_fatal() || stalled.is_some() {
                    self.failed = stalled.map(|c| c.task);
                    return Err(e);
                }
                tracing::warn!(error = %e, "restore consumer error; retrying");
                Ok(())
            }
        }
    }

    /// Whether the cursors (of partition number `eof`, after an end-of-partition event; all,
    /// after an empty poll) are read to their ends: the consumer's position (past transaction
    /// markers and aborted records) at the high watermark taken at open. Below it, the position
    /// waits at the last stable offset for a transaction to end: the task's waiting gauge says
    /// so, and after `open_transaction_wait` restoration stops there, with a warning.
    fn check_ends(&mut self, env: &RestoreEnv<'_>, eof: Option<i32>) -> Result<()> {
        let consumer = self.consumer.as_ref().expect("reading changelogs");
        let positions = consumer.position().ok();
        let mut i = 0;
        while i < self.cursors.len() {
            let c = &mut self.cursors[i];
            if eof.is_some_and(|p| p != c.partition) {
                i += 1;
                continue;
            }
            let position = positions
                .as_ref()
                .and_then(|tpl| tpl.find_partition(&c.topic, c.partition))
                .and_then(|e| match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                })
                .unwrap_or(c.start)
                .max(c.next());
            if position >= c.stop() {
                self.done(i, env)?;
                continue; // the cursor at `i` is another one now
            }
            if position > c.position {
                c.position = position;
                c.failing_since = None;
            }
            // The event names no topic: this partition waits only if its position is at the
            // last stable offset the broker lists (read_committed), below its end.
            if eof.is_some()
                && c.waiting_since.is_none()
                && self
                    .consumer
                    .as_ref()
                    .expect("reading changelogs")
                    .fetch_watermarks(&c.topic, c.partition, env.client_timeout.min(LSO_WAIT))
                    .is_ok_and(|(_, stable)| position >= stable && stable < c.stop())
            {
                c.waiting_since = Some(Instant::now());
                let task = c.task;
                self.report_waiting(task, env);
            } else if c
                .waiting_since
                .is_some_and(|since| since.elapsed() > env.open_transaction_wait)
            {
                tracing::warn!(store = %c.store, topic = %c.topic, partition = c.partition, position, high_watermark = c.end, waited = ?c.waiting_since.map(|s| s.elapsed()), "a transaction below the changelog's high watermark has not ended; restoring without it");
                self.done(i, env)?;
                continue;
            }
            i += 1;
        }
        Ok(())
    }

    /// The consumer's position of some changelog partition is not in it (the event does not
    /// say which): each cursor's next offset is checked against its changelog's offsets, and
    /// the ones outside start again from their changelog's start.
    fn out_of_range(&mut self, env: &RestoreEnv<'_>, e: &KafkaError) -> Result<()> {
        let watermarks = self.watermarks.as_ref().expect("created with the consumer");
        let mut restarted = false;
        for i in 0..self.cursors.len() {
            let c = &self.cursors[i];
            let (low, high) = watermarks
                .fetch_watermarks(&c.topic, c.partition, env.client_timeout)
                .map_err(|e| Error::kafka(format!("watermarks of {}", c.topic), e))?;
            let next = c.next();
            if next >= low && next <= high {
                continue;
            }
            let task = c.task;
            let pending = pending_of(&mut self.queue, task);
            let c = &mut self.cursors[i];
            self.buffered -= c.batch_bytes;
            let waiting = c.waiting_since.is_some();
            let restarted_one = restart_from_scratch(c, &mut pending.task, low, high, env, e);
            blame(&mut self.failed, task, restarted_one)?;
            if waiting {
                self.report_waiting(task, env);
            }
            restarted = true;
        }
        if restarted {
            self.unmatched_out_of_range = 0;
        } else {
            // In range by now (the changelog grew meanwhile), or an error of a partition
            // already done: librdkafka stopped fetching the partition it was about, so every
            // cursor is assigned again from where it is; the same error again and again is
            // an error of the restoration.
            self.unmatched_out_of_range += 1;
            if self.unmatched_out_of_range > 3 {
                return Err(Error::kafka(
                    "restore changelogs: an offset stays out of range",
                    e.clone(),
                ));
            }
            tracing::warn!(error = %e, "a changelog offset was out of range; every position is in range now: reading again from there");
        }
        // Assigned again, all of them: the restarted ones from their new start.
        let mut tpl = TopicPartitionList::new();
        for c in &self.cursors {
            tpl.add_partition_offset(&c.topic, c.partition, Offset::Offset(c.next()))
                .map_err(|e| Error::kafka("restore assignment", e))?;
        }
        self.consumer
            .as_ref()
            .expect("reading changelogs")
            .assign(&tpl)
            .map_err(|e| Error::kafka("assign changelogs", e))
    }

    /// Writes the batch of cursor `i` to its store.
    fn write(&mut self, i: usize, env: &RestoreEnv<'_>) -> Result<()> {
        let c = &mut self.cursors[i];
        if c.batch.is_empty() {
            return Ok(());
        }
        let (task, bytes) = (c.task, c.batch_bytes);
        let pending = pending_of(&mut self.queue, task);
        self.buffered -= bytes;
        blame(&mut self.failed, task, write(&mut pending.task, c, env))?;
        self.report_remaining(task, env);
        Ok(())
    }

    /// Cursor `i` is read to its end: its store is restored, and its partition unassigned.
    fn done(&mut self, i: usize, env: &RestoreEnv<'_>) -> Result<()> {
        let c = self.cursors.swap_remove(i);
        self.buffered -= c.batch_bytes;
        let (task, topic, partition, waiting) = (
            c.task,
            c.topic.clone(),
            c.partition,
            c.waiting_since.is_some(),
        );
        let pending = pending_of(&mut self.queue, task);
        pending.reading -= 1;
        blame(&mut self.failed, task, finish(&mut pending.task, c, env))?;
        if waiting {
            self.report_waiting(task, env);
        }
        self.report_remaining(task, env);
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&topic, partition);
        self.consumer
            .as_ref()
            .expect("reading changelogs")
            .incremental_unassign(&tpl)
            .map_err(|e| Error::kafka("unassign a restored changelog", e))
    }

    /// Sets `task`'s remaining-records gauge: what its changelog partitions being read lack.
    fn report_remaining(&self, task: TaskId, env: &RestoreEnv<'_>) {
        if let Some(m) = env.metrics {
            let remaining: i64 = self
                .cursors
                .iter()
                .filter(|c| c.task == task)
                .map(Cursor::remaining)
                .sum();
            m.restoration(env.thread, task).1.set(remaining);
        }
    }

    /// Sets `task`'s gauge of restorations waiting for a transaction to end.
    fn report_waiting(&self, task: TaskId, env: &RestoreEnv<'_>) {
        if let Some(m) = env.metrics {
            let waiting = self
                .cursors
                .iter()
                .any(|c| c.task == task && c.waiting_since.is_some());
            m.restoration_waiting(env.thread, task)
                .set(i64::from(waiting));
        }
    }
}

/// The queued task of a cursor (a cursor exists only while its task is queued).
fn pending_of(queue: &mut VecDeque<Pending>, task: TaskId) -> &mut Pending {
    queue
        .iter_mut()
        .find(|p| p.task.id == task)
        .expect("a cursor's task is queued")
}

/// `result`, with `task` recorded as the one a failed step failed on.
fn blame<T>(failed: &mut Option<TaskId>, task: TaskId, result: Result<T>) -> Result<T> {
    if result.is_err() {
        *failed = Some(task);
    }
    result
}

fn store_of<'t>(task: &'t mut Task, name: &str) -> Result<&'t mut crate::store::StoreCore> {
    task.logged_stores()
        .find(|c| c.name() == name)
        .ok_or_else(|| Error::State {
            store: name.to_string(),
            message: "no such logged store in the task".into(),
        })
}

/// Where reading the changelog partition of `store` starts and ends: from its stored offset,
/// unless the changelog no longer holds the records after it (wipe, read from the start).
fn open(
    watermarks: &PlainConsumer,
    task: &mut Task,
    store: String,
    env: &RestoreEnv<'_>,
) -> Result<Cursor> {
    let id = task.id;
    let core = store_of(task, &store)?;
    let target = core
        .changelog
        .clone()
        .expect("only logged stores are restored");
    let mut from = core.committed_offset()?.map(|o| o + 1);
    // The end offset: the high watermark (ListOffsets read_uncommitted), past every
    // transaction open now.
    let (low, end) = watermarks
        .fetch_watermarks(&target.topic, target.partition, env.client_timeout)
        .map_err(|e| Error::kafka(format!("watermarks of {}", target.topic), e))?;
    if let Some(f) = from {
        // The changelog no longer holds the records after the stored offset (truncated by
        // retention, or deleted and recreated): rebuild from what it has. A stored offset at
        // or past the high watermark cannot be a record of this changelog (every record the
        // store holds was acknowledged by all replicas, so below it): the changelog was
        // recreated, shorter.
        if f < low || f > end {
            tracing::warn!(store = %store, partition = target.partition, stored = f - 1, log_start = low, high_watermark = end, "the changelog does not hold the stored offset (truncated, or deleted and recreated); wiping the store and restoring from its start");
            core.wipe()?;
            from = None;
        }
    }
    let start = from.unwrap_or(low);
    // A store built from a source topic is restored up to what the group committed, never
    // beyond: the records after that are processed again, and must find the state before them.
    let limit = if target.source {
        Some((env.committed)(&target.topic, target.partition)?.unwrap_or(0))
    } else {
        None
    };
    if let Some(l) = env.listener {
        l.on_restore_start(&store, target.partition, start);
    }
    Ok(Cursor {
        task: id,
        store,
        topic: target.topic,
        partition: target.partition,
        start,
        end,
        limit,
        last: None,
        total: 0,
        batch: Vec::new(),
        batch_bytes: 0,
        started: Instant::now(),
        waiting_since: None,
        failing_since: None,
        position: start,
        restarts: 0,
        last_report: Instant::now(),
    })
}

/// Whether the restore consumer's position is not in the changelog (the consumer's
/// `auto.offset.reset` is `error`).
fn offset_out_of_range(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(RDKafkaErrorCode::AutoOffsetReset | RDKafkaErrorCode::OffsetOutOfRange)
    )
}

/// The changelog does not hold the position restoration reads from: it was truncated, or
/// deleted and recreated (possibly shorter) while the state stayed. The local state cannot be
/// trusted: wipe the store and read the changelog from its start, `low` (up to `high`).
fn restart_from_scratch(
    c: &mut Cursor,
    task: &mut Task,
    low: i64,
    high: i64,
    env: &RestoreEnv<'_>,
    e: &KafkaError,
) -> Result<()> {
    c.restarts += 1;
    if c.restarts > 3 {
        return Err(Error::kafka(
            format!("restore {}: the offset stays out of range", c.topic),
            e.clone(),
        ));
    }
    if c.start > 0 {
        tracing::warn!(store = %c.store, topic = %c.topic, partition = c.partition, from = c.start, error = %e, "the changelog does not hold the stored offset (truncated, or deleted and recreated); wiping the store and restoring from the changelog's start");
    } else {
        tracing::debug!(store = %c.store, topic = %c.topic, partition = c.partition, "the changelog starts after offset 0; reading from its start");
    }
    store_of(task, &c.store)?.wipe()?;
    c.batch.clear();
    c.batch_bytes = 0;
    (c.start, c.last, c.total, c.waiting_since, c.position) = (low, None, 0, None, low);
    if c.limit.is_none() {
        c.end = high;
    }
    if let Some(l) = env.listener {
        l.on_restore_start(&c.store, c.partition, low);
    }
    Ok(())
}

/// Writes the cursor's batch to its store, with the offset it reaches.
fn write(task: &mut Task, c: &mut Cursor, env: &RestoreEnv<'_>) -> Result<()> {
    let Some(last) = c.last else {
        return Ok(());
    };
    let n = c.batch.len() as u64;
    c.batch_bytes = 0;
    store_of(task, &c.store)?.restore_batch(std::mem::take(&mut c.batch), last)?;
    c.total += n;
    if let Some(m) = env.metrics {
        m.restoration(env.thread, task.id).0.inc_by(n);
    }
    if let Some(l) = env.listener {
        l.on_batch_restored(&c.store, c.partition, last, n);
    }
    if !env.standby && c.last_report.elapsed() > Duration::from_secs(5) {
        c.last_report = Instant::now();
        tracing::info!(store = %c.store, partition = c.partition, restored = c.total, rate = c.total as f64 / c.started.elapsed().as_secs_f64(), "restoring");
    }
    Ok(())
}

fn finish(task: &mut Task, mut c: Cursor, env: &RestoreEnv<'_>) -> Result<()> {
    if !c.batch.is_empty() {
        write(task, &mut c, env)?;
    }
    if !env.standby {
        // A standby's passes are not flushed each time (a flush per pass would make small
        // files for compaction): data and offset are written together, and the task's next
        // instance, or the standby's close, flushes.
        store_of(task, &c.store)?.restored()?;
    }
    let secs = c.started.elapsed().as_secs_f64();
    if env.standby {
        tracing::debug!(task = %task.id, store = %c.store, partition = c.partition, from = c.start, read = c.total, "standby caught up");
    } else {
        tracing::info!(task = %task.id, store = %c.store, partition = c.partition, from = c.start, restored = c.total, seconds = secs, rate = c.total as f64 / secs.max(1e-9), "restored");
    }
    if let Some(l) = env.listener {
        l.on_restore_end(&c.store, c.partition, c.total);
    }
    Ok(())
}
