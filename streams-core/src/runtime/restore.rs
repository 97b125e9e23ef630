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
//! Changelog partitions are read one at a time, from the offset each store has stored (or from
//! the start), `read_committed`, in batches written without the write-ahead log. A changelog
//! partition is done when the consumer's position reaches its high watermark as listed
//! `read_uncommitted` when it was opened (Kafka Streams' `StoreChangelogReader` does the same
//! since KAFKA-10167): every transaction below it has then ended, so a previous owner's last
//! commit whose end marker comes late is in the store, not lost. The restore consumer's own end
//! (the last stable offset) would stop before such a transaction. While the position waits at
//! the last stable offset the task's `restore_waiting_on_transactions` gauge is 1; after
//! `transaction timeout + 10 s` (the broker aborts a transaction by then) restoration goes on
//! without it, with a warning. For a store built from a source topic the end is the group's
//! committed offset instead. A stored offset the changelog does not hold
//! (it was truncated, or deleted and recreated while the state stayed) is an error of the
//! restore consumer (`auto.offset.reset=error`): the store is wiped and the changelog read from
//! its start, never replayed onto the old state.

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
/// How long one read waits for records before the thread does something else.
const QUIET: Duration = Duration::from_millis(500);

/// A task waiting for, or in, restoration.
pub(crate) struct Pending {
    pub(crate) task: Task,
    pub(crate) dir: PathBuf,
    /// The logged stores not yet restored, by name.
    stores: VecDeque<String>,
}

/// The changelog partition being read.
struct Cursor {
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
    /// Since when the position waits at the last stable offset, below the end (from the first
    /// end-of-partition event there).
    waiting_since: Option<Instant>,
    /// Since when the restore consumer has given errors and no record.
    failing_since: Option<Instant>,
    /// Restarts from the changelog's start after an out-of-range offset.
    restarts: u32,
    last_report: Instant,
}

/// Queued tasks and the consumer that reads their changelogs.
#[derive(Default)]
pub(crate) struct Restorer {
    consumer: Option<PlainConsumer>,
    /// Lists changelogs' high watermarks (`read_uncommitted`).
    watermarks: Option<PlainConsumer>,
    queue: VecDeque<Pending>,
    current: Option<Cursor>,
    /// When a retriable failure to start a restoration was last logged.
    retry_logged: Option<Instant>,
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
        self.queue.push_back(Pending { task, dir, stores });
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

    /// Takes every queued task out (a revocation, a rewind, shutdown) and stops reading.
    pub(crate) fn take_all(&mut self) -> Vec<Pending> {
        if let Some(c) = self.current.take() {
            tracing::info!(store = %c.store, partition = c.partition, restored = c.total, "restoration interrupted");
        }
        if let Some(consumer) = &self.consumer {
            let _ = consumer.unassign();
        }
        self.queue.drain(..).collect()
    }

    /// Reads changelogs for up to `budget` and returns the tasks whose stores are all restored
    /// (in queue order; their processors are not initialised yet).
    pub(crate) fn step(&mut self, env: &RestoreEnv<'_>, budget: Duration) -> Result<Vec<Pending>> {
        let deadline = Instant::now() + budget;
        let mut done = vec![];
        loop {
            if self.current.is_none() {
                let Some(pending) = self.queue.front_mut() else {
                    break;
                };
                let Some(store) = pending.stores.pop_front() else {
                    done.extend(self.queue.pop_front());
                    continue;
                };
                if self.consumer.is_none() {
                    self.consumer = Some((env.make_consumer)()?);
                }
                if self.watermarks.is_none() {
                    self.watermarks = Some((env.make_watermarks)()?);
                }
                let consumer = self.consumer.as_ref().unwrap();
                let watermarks = self.watermarks.as_ref().unwrap();
                match open(consumer, watermarks, &mut pending.task, store.clone(), env) {
                    Ok(cursor) => self.current = Some(cursor),
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
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let consumer = self.consumer.as_ref().unwrap();
            let cursor = self.current.as_mut().unwrap();
            let task = &mut self.queue.front_mut().unwrap().task;
            if read(consumer, cursor, task, env, left.min(QUIET))? {
                let cursor = self.current.take().unwrap();
                finish(task, cursor, env)?;
                let _ = consumer.unassign();
            }
        }
        Ok(done)
    }
}

fn store_of<'t>(task: &'t mut Task, name: &str) -> Result<&'t mut crate::store::StoreCore> {
    task.logged_stores()
        .find(|c| c.name() == name)
        .ok_or_else(|| Error::State {
            store: name.to_string(),
            message: "no such logged store in the task".into(),
        })
}

/// Starts reading the changelog partition of `store`: from its stored offset, unless the
/// changelog no longer holds the records after it (wipe, read from the start).
fn open(
    consumer: &PlainConsumer,
    watermarks: &PlainConsumer,
    task: &mut Task,
    store: String,
    env: &RestoreEnv<'_>,
) -> Result<Cursor> {
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
        // retention, or deleted and recreated): rebuild from what it has.
        if f < low {
            tracing::warn!(store = %store, partition = target.partition, stored = f - 1, log_start = low, "the changelog starts after the stored offset; wiping the store and restoring from the start");
            core.wipe()?;
            from = None;
        }
    }
    let start = from.unwrap_or(0);
    // A store built from a source topic is restored up to what the group committed, never
    // beyond: the records after that are processed again, and must find the state before them.
    let limit = if target.source {
        Some((env.committed)(&target.topic, target.partition)?.unwrap_or(0))
    } else {
        None
    };
    let mut tpl = TopicPartitionList::new();
    // Offset 0 rather than Beginning when nothing is stored: no ListOffsets round trip; a
    // changelog that starts later is out of range, and read from its start then.
    tpl.add_partition_offset(&target.topic, target.partition, Offset::Offset(start))
        .map_err(|e| Error::kafka("restore assignment", e))?;
    consumer
        .assign(&tpl)
        .map_err(|e| Error::kafka("assign changelog", e))?;
    if let Some(l) = env.listener {
        l.on_restore_start(&store, target.partition, start);
    }
    if let Some(m) = env.metrics {
        let (_, remaining) = m.restoration(env.thread, task.id);
        remaining.set((limit.unwrap_or(end) - start).max(0));
    }
    Ok(Cursor {
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
        restarts: 0,
        last_report: Instant::now(),
    })
}

/// Reads for up to `wait`; returns whether the changelog partition was read to its end.
fn read(
    consumer: &PlainConsumer,
    c: &mut Cursor,
    task: &mut Task,
    env: &RestoreEnv<'_>,
    wait: Duration,
) -> Result<bool> {
    let deadline = Instant::now() + wait;
    loop {
        if let Some(limit) = c.limit {
            if c.last.map_or(c.start, |o| o + 1) >= limit {
                return Ok(true); // up to the committed offset of the source partition
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match consumer.poll(left) {
            // Nothing more for now, or the end of what read_committed may read (the last
            // stable offset): done once the position is at the high watermark.
            polled @ (None | Some(Err(KafkaError::PartitionEOF(_)))) => {
                if reached_end(consumer, c, task, env, polled.is_some())? {
                    return Ok(true);
                }
                if Instant::now() >= deadline {
                    return Ok(false);
                }
                continue;
            }
            Some(Err(e)) if offset_out_of_range(&e) => {
                restart_from_scratch(consumer, c, task, env, &e)?
            }
            Some(Err(e)) => {
                // Transient errors (a broker down, a leader moving) are retried, as the commit
                // path retries; only a fatal one, or errors without a record between them for
                // longer than the task timeout, stop the instance.
                let e = Error::kafka(format!("restore {}", c.topic), e);
                let since = *c.failing_since.get_or_insert_with(Instant::now);
                if e.is_fatal() || since.elapsed() > env.task_timeout {
                    return Err(e);
                }
                tracing::warn!(error = %e, failing_for = ?since.elapsed(), "restore consumer error; retrying");
            }
            Some(Ok(m)) => {
                c.failing_since = None;
                if c.limit.is_some_and(|limit| m.offset() >= limit) {
                    return Ok(true);
                }
                c.last = Some(m.offset());
                if let Some(key) = m.key() {
                    c.batch_bytes += key.len() + m.payload().map_or(0, <[u8]>::len);
                    c.batch
                        .push((key.to_vec(), m.payload().map(<[u8]>::to_vec)));
                }
                if c.batch.len() >= BATCH || c.batch_bytes >= BATCH_BYTES {
                    write(task, c, env)?;
                }
                // At the end taken at open: done, even while the changelog keeps growing (a
                // standby behind a busy active task never sees a pause or an end-of-partition
                // event, and must move on to its other stores).
                if c.limit.is_none() && m.offset() + 1 >= c.end {
                    return Ok(true);
                }
            }
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
    }
}

/// Whether the cursor's changelog partition is read to its end: the consumer's position (past
/// transaction markers and aborted records) at the high watermark taken at open. Below it, the
/// position waits at the last stable offset for a transaction to end: the task's waiting gauge
/// says so, and after `open_transaction_wait` restoration stops there, with a warning.
fn reached_end(
    consumer: &PlainConsumer,
    c: &mut Cursor,
    task: &Task,
    env: &RestoreEnv<'_>,
    end_of_partition: bool,
) -> Result<bool> {
    let position = consumer
        .position()
        .ok()
        .and_then(|tpl| {
            tpl.find_partition(&c.topic, c.partition)
                .and_then(|e| match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                })
        })
        .unwrap_or(c.start)
        .max(c.last.map_or(c.start, |o| o + 1));
    let waiting = |on: bool| {
        if let Some(m) = env.metrics {
            m.restoration_waiting(env.thread, task.id)
                .set(i64::from(on));
        }
    };
    // A store built from a source topic ends at the group's committed offset instead.
    if position >= c.limit.unwrap_or(c.end) {
        if c.waiting_since.take().is_some() {
            waiting(false);
        }
        return Ok(true);
    }
    // librdkafka's end-of-partition event: the position is at the last stable offset.
    if end_of_partition && c.waiting_since.is_none() {
        waiting(true);
        c.waiting_since = Some(Instant::now());
    }
    let Some(since) = c.waiting_since else {
        return Ok(false);
    };
    if since.elapsed() > env.open_transaction_wait {
        waiting(false);
        tracing::warn!(store = %c.store, topic = %c.topic, partition = c.partition, position, high_watermark = c.end, waited = ?since.elapsed(), "a transaction below the changelog's high watermark has not ended; restoring without it");
        return Ok(true);
    }
    Ok(false)
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
/// trusted: wipe the store and read the changelog from its start.
fn restart_from_scratch(
    consumer: &PlainConsumer,
    c: &mut Cursor,
    task: &mut Task,
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
    (c.start, c.last, c.total, c.waiting_since) = (0, None, 0, None);
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&c.topic, c.partition, Offset::Beginning)
        .map_err(|e| Error::kafka("restore assignment", e))?;
    consumer
        .assign(&tpl)
        .map_err(|e| Error::kafka("assign changelog", e))?;
    if let Some(l) = env.listener {
        l.on_restore_start(&c.store, c.partition, 0);
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
        let (restored, remaining) = m.restoration(env.thread, task.id);
        restored.inc_by(n);
        remaining.set((c.limit.unwrap_or(c.end) - last - 1).max(0));
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
    if let Some(m) = env.metrics {
        m.restoration(env.thread, task.id).1.set(0);
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
