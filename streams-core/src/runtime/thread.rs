//! A stream thread: one consumer, one producer, many tasks.
//!
//! The thread's loop polls records, hands them to the running tasks, restores new tasks in
//! steps between rounds, and commits every commit interval through its [`CommitProtocol`];
//! the rebalance callbacks (`rebalance.rs`) commit and close tasks on revocation and create
//! them on assignment. Clients are made in `clients.rs`, restoration is in `restore.rs`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::clients::{self, copy_headers, KafkaProducer, TopicNames};
use super::commit::{self, CommitProtocol, Output, ProducerClient, Recovery};
use super::rebalance::ThreadContext;
use super::restore::{RestoreEnv, Restorer};
use super::{Shared, ThreadState};
use crate::config::{ProcessingGuarantee, StreamsConfig};
use crate::metrics::ThreadMetrics;
use crate::node::RawRecord;
use crate::store::RocksResources;
use crate::task::{SourceTopics, Task, Tasks};
use crate::topology::Topology;
use crate::{Error, Result, TaskId};

/// How often a failed at-least-once commit is tried again.
const RETRY_COMMIT: Duration = Duration::from_secs(1);

/// Everything the thread owns besides its consumer; the consumer's rebalance callbacks reach it
/// through the consumer context.
pub(crate) struct Inner {
    pub(super) name: String,
    index: usize,
    topology: Topology,
    config: StreamsConfig,
    app_id: Arc<str>,
    shared: Arc<Shared>,
    /// The running tasks.
    tasks: Tasks,
    sources: SourceTopics,
    /// The producer and the commit protocol of the configured guarantee.
    pub(super) protocol: Box<dyn CommitProtocol>,
    rocks: RocksResources,
    /// New tasks whose stores are being restored, between processing rounds.
    pub(super) restoring: Restorer,
    /// A fatal error raised inside a rebalance callback, handed to the main loop.
    pub(super) pending_error: Option<Error>,
    /// Set once the thread failed: nothing may be committed any more (the rebalance
    /// callbacks that run while the consumer closes must not commit half-done work).
    pub(super) failed: bool,
    /// The thread's metrics, unless metrics are off (poll and commit latency are recorded by
    /// the loop's copy).
    metrics: Option<ThreadMetrics>,
    /// Deletes what the group committed past in repartition topics (none without them).
    purger: Option<super::purge::Purger>,
    /// Every partition this thread paused and has not resumed: those of restoring tasks that
    /// received a record (`add`), and the running tasks' while at-least-once commits fail.
    /// Whatever pauses a partition records it here, and a task that starts running resumes
    /// its partitions found here, however it got to run (after a rewind, say).
    paused: std::collections::HashSet<(String, i32)>,
}

impl Inner {
    pub(super) fn set_state(&self, state: ThreadState) {
        self.shared.set_thread_state(self.index, state);
    }

    /// A thread whose producer was dropped (a failed abort) gets a new one before it
    /// processes again.
    fn ensure_producer(&mut self) -> Result<()> {
        if self.failed {
            return Ok(());
        }
        self.protocol.ensure_producer()
    }

    /// Commits every task through the protocol, then hands what it committed to the purger.
    fn commit(&mut self, consumer: &BaseConsumer<ThreadContext>) -> Result<()> {
        self.protocol.commit(&mut self.tasks, consumer)?;
        let committed = self.protocol.take_committed_offsets();
        if let Some(purger) = &mut self.purger {
            purger.committed(&committed);
        }
        Ok(())
    }

    /// Partitions are revoked (or `lost`): commit what can be committed; returns whether the
    /// tasks may close clean. Rewinding is moot, the tasks close either way.
    pub(super) fn commit_on_revoke(
        &mut self,
        consumer: &BaseConsumer<ThreadContext>,
        lost: bool,
    ) -> Result<bool> {
        self.protocol.on_revoke(&mut self.tasks, consumer, lost)
    }

    /// After a failed commit or send: Ok(true) when the tasks' uncommitted work was dropped
    /// (they are closed) and the caller must rewind to the last commit; Ok(false) when the
    /// work is kept for the next commit; an error no rewind cures stops the thread.
    fn handle_commit_failure(&mut self, error: Error) -> Result<bool> {
        match self.protocol.recover(error)? {
            Recovery::Rewind => {
                self.close_all_tasks(false);
                Ok(true)
            }
            Recovery::RetryLater => Ok(false),
        }
    }

    /// Creates the tasks of newly assigned partitions and queues them for restoration. Their
    /// partitions are not paused here but when their first record arrives (`add`): librdkafka
    /// starts fetching a newly assigned partition with an operation that a pause or resume
    /// taken at the same moment can make it discard (both take a version barrier and the older
    /// is dropped; librdkafka issue 5591), leaving the partition never fetched. A record shows
    /// that fetching has started.
    pub(super) fn create_tasks(&mut self, partitions: &[(String, i32)]) -> Result<()> {
        let mut ids: Vec<TaskId> = partitions
            .iter()
            .filter_map(|(t, p)| self.sources.task_of(t, *p))
            .collect();
        ids.sort();
        ids.dedup();
        // No cleaner deletes a directory while tasks are opened from it.
        let app_dir = self.config.state_dir.join(&*self.app_id);
        let dirs = super::cleanup::dir_lock(&app_dir);
        let _dirs = dirs.lock().unwrap_or_else(|e| e.into_inner());
        let now = super::now_ms();
        for id in ids {
            if self.tasks.contains(id) || self.restoring.contains(id) {
                continue;
            }
            let dir = app_dir.join(id.to_string());
            let task = Task::new(
                &self.topology,
                id,
                &self.app_id,
                Some(&dir),
                now,
                &self.rocks,
            )?;
            let mut task = task;
            if self.config.metrics_recording {
                let metrics = &self.shared.metrics;
                task.set_metrics(metrics.task(&self.name, id), |store| {
                    metrics.store(&self.name, id, store)
                });
            }
            task.set_cache_budget(
                self.config.cache_max_bytes / self.config.num_stream_threads.max(1),
            );
            super::cleanup::mark_owned(&dir);
            self.restoring.add(task, dir);
        }
        self.publish_tasks();
        let ids: Vec<String> = self.restoring.task_ids().map(|t| t.to_string()).collect();
        tracing::info!(thread = %self.name, restoring = ?ids, "partitions assigned; tasks created");
        Ok(())
    }

    /// Resumes `revoked` (the partitions of a revocation), or with `None` every partition this
    /// thread paused, before they leave the assignment: librdkafka keeps a partition paused by
    /// the application across a revocation, and a partition assigned again while paused would
    /// not be fetched. A resume of a partition that is not paused changes nothing.
    pub(super) fn release_paused(
        &mut self,
        consumer: &BaseConsumer<ThreadContext>,
        revoked: Option<&TopicPartitionList>,
    ) {
        let paused = std::mem::take(&mut self.paused);
        let tpl = match revoked {
            Some(tpl) => tpl.clone(),
            None => {
                let mut all = TopicPartitionList::new();
                for (topic, partition) in &paused {
                    all.add_partition(topic, *partition);
                }
                all
            }
        };
        if let Err(e) = consumer.resume(&tpl) {
            tracing::warn!(thread = %self.name, error = %e, "resuming revoked partitions failed");
        }
    }

    /// Pauses (or resumes) fetching for the running tasks' partitions.
    fn pause_running(&mut self, consumer: &BaseConsumer<ThreadContext>) -> Result<()> {
        self.running_fetch(consumer, Fetch::Pause)
    }

    fn resume_running(&mut self, consumer: &BaseConsumer<ThreadContext>) -> Result<()> {
        self.running_fetch(consumer, Fetch::Resume)
    }

    fn running_fetch(&mut self, consumer: &BaseConsumer<ThreadContext>, to: Fetch) -> Result<()> {
        let (tasks, sources) = (&self.tasks, &self.sources);
        let partitions = tasks.ids().flat_map(|id| sources.partitions_of(id));
        set_fetching(&mut self.paused, consumer, partitions, to)
    }

    /// Restores queued tasks for a while; the restored ones get their processors initialised
    /// and start processing (their partitions resume).
    fn restore_step(&mut self, consumer: &BaseConsumer<ThreadContext>) -> Result<()> {
        if self.restoring.is_empty() {
            return Ok(());
        }
        let mut restoring = std::mem::take(&mut self.restoring);
        let make_consumer = || clients::restore_consumer(&self.config, &self.name);
        let make_watermarks = || clients::watermark_client(&self.config, &self.name);
        let timeout = self.config.client_timeout;
        // At most a second at a time: offsets a transaction holds stay unstable until the
        // broker ends it (up to the transaction timeout); the restorer asks again at its next
        // step, and the thread's other tasks go on meanwhile.
        let committed_wait = timeout.min(Duration::from_secs(1));
        let committed = |topic: &str, partition: i32| {
            clients::committed_offset(consumer, topic, partition, committed_wait)
        };
        let env = RestoreEnv {
            make_consumer: &make_consumer,
            make_watermarks: &make_watermarks,
            open_transaction_wait: self.config.transaction_timeout + Duration::from_secs(10),
            task_timeout: self.config.task_timeout,
            listener: self.config.restore_listener.as_ref(),
            client_timeout: timeout,
            committed: &committed,
            metrics: self
                .config
                .metrics_recording
                .then_some(&self.shared.metrics),
            thread: &self.name,
            standby: false,
        };
        let done = restoring.step(&env, Duration::from_millis(100));
        self.restoring = restoring;
        for p in done? {
            let mut task = p.task;
            if let Err(e) = task.init() {
                let _ = task.close(false);
                return Err(e);
            }
            super::cleanup::mark_owned(&p.dir);
            let partitions = self.sources.partitions_of(task.id);
            set_fetching(&mut self.paused, consumer, partitions, Fetch::Resume)?;
            tracing::debug!(thread = %self.name, task = %task.id, "restored; processing");
            self.tasks.insert(task);
            self.publish_tasks();
        }
        if self.restoring.is_empty() {
            let ids: Vec<String> = self.tasks.ids().map(|t| t.to_string()).collect();
            tracing::info!(thread = %self.name, tasks = ?ids, "every task restored; running");
            self.set_state(ThreadState::Running);
        }
        Ok(())
    }

    fn publish_tasks(&self) {
        let handles = self.tasks.query_handles();
        let owned: Vec<TaskId> = self.tasks.ids().chain(self.restoring.task_ids()).collect();
        if let Some(m) = &self.metrics {
            m.tasks.set(owned.len() as i64);
        }
        self.shared.set_thread_tasks(self.index, owned, handles);
    }

    pub(super) fn close_all_tasks(&mut self, clean: bool) {
        let app_dir = self.config.state_dir.join(&*self.app_id);
        if self.metrics.is_some() {
            // An interrupted restoration has nothing left to restore here.
            for id in self.restoring.task_ids() {
                self.shared.metrics.restoration(&self.name, id).1.set(0);
            }
        }
        let restoring = self
            .restoring
            .take_all()
            .into_iter()
            .map(|p| (p.task, false));
        let running = self.tasks.take_all().into_iter().map(|t| (t, clean));
        for (mut task, clean) in running.chain(restoring) {
            if let Err(e) = task.close(clean) {
                tracing::warn!(thread = %self.name, error = %e, "closing a task failed");
            }
            super::cleanup::mark_owned(&app_dir.join(task.id.to_string()));
        }
        self.publish_tasks();
    }

    /// Deletes the state of tasks no thread of this instance has owned for longer than the
    /// cleanup delay (run by the first thread; skipped while another thread opens tasks).
    fn clean_state_dirs(&self) {
        let app_dir = self.config.state_dir.join(&*self.app_id);
        let dirs = super::cleanup::dir_lock(&app_dir);
        // A poisoned lock (a panic while opening tasks) guards nothing broken: go on.
        let _dirs = match dirs.try_lock() {
            Ok(g) => g,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return,
        };
        super::cleanup::clean(
            &app_dir,
            &self.shared.owned_task_dirs(),
            self.config.state_cleanup_delay,
        );
    }

    fn add(&mut self, consumer: &BaseConsumer<ThreadContext>, raw: RawRecord) -> Result<()> {
        let Some(id) = self.sources.task_of(&raw.topic, raw.partition) else {
            return Ok(());
        };
        if self.tasks.contains(id) {
            return self.tasks.add(id, raw);
        }
        let Some(task) = self.restoring.task_mut(id) else {
            // A record fetched before a revocation; the new owner reads it again.
            return Ok(());
        };
        // Kept for when the task is restored; nothing more is fetched of this partition
        // meanwhile. Only the record's own partition is paused: its fetching has started, while
        // a sibling partition's start may still be under way.
        let (topic, partition) = (raw.topic.clone(), raw.partition);
        task.add(raw)?;
        if !self.paused.contains(&(topic.to_string(), partition)) {
            set_fetching(
                &mut self.paused,
                consumer,
                [(&*topic, partition)],
                Fetch::Pause,
            )?;
        }
        Ok(())
    }

    /// Processes every buffered record and runs due wall-clock punctuations. Returns whether
    /// a task asked for a commit.
    fn process(&mut self) -> Result<bool> {
        let handler = self.config.on_poison.clone();
        let mut collector = self.protocol.collector()?;
        let idle = self.config.task_idle();
        self.tasks
            .process(&mut collector, &*handler, super::now_ms(), idle)
    }
}

/// What [`set_fetching`] does.
#[derive(Clone, Copy)]
enum Fetch {
    Pause,
    Resume,
}

/// Pauses `partitions`, recording them in `paused`; or resumes those of them recorded there.
fn set_fetching<'a>(
    paused: &mut std::collections::HashSet<(String, i32)>,
    consumer: &BaseConsumer<ThreadContext>,
    partitions: impl IntoIterator<Item = (&'a str, i32)>,
    to: Fetch,
) -> Result<()> {
    let mut tpl = TopicPartitionList::new();
    for (topic, partition) in partitions {
        let key = (topic.to_string(), partition);
        let changed = match to {
            Fetch::Pause => {
                paused.insert(key);
                true
            }
            Fetch::Resume => paused.remove(&key),
        };
        if changed {
            tpl.add_partition(topic, partition);
        }
    }
    if tpl.count() == 0 {
        return Ok(());
    }
    let done = match to {
        Fetch::Pause => consumer.pause(&tpl),
        Fetch::Resume => consumer.resume(&tpl),
    };
    done.map_err(|e| Error::kafka("pause or resume fetching", e))
}

pub(crate) struct StreamThread {
    pub(crate) inner: Inner,
}

impl StreamThread {
    pub(crate) fn new(
        index: usize,
        topology: Topology,
        config: StreamsConfig,
        shared: Arc<Shared>,
        instance_id: &str,
        rocks: RocksResources,
    ) -> Self {
        let app_id: Arc<str> = Arc::from(config.application_id.as_str());
        let name = format!("{app_id}-StreamThread-{}", index + 1);
        let transactional_id = format!("{app_id}-{instance_id}-{}", index + 1);
        let make_producer = {
            let (config, name) = (config.clone(), name.clone());
            Box::new(move || {
                KafkaProducer::create(&config, &name, &transactional_id)
                    .map(|p| Box::new(p) as Box<dyn ProducerClient>)
            })
        };
        let output = Output::new(
            name.clone(),
            make_producer,
            config.on_production_error.clone(),
            config.client_timeout,
        );
        let eos = config.guarantee == ProcessingGuarantee::ExactlyOnce;
        let metrics = config
            .metrics_recording
            .then(|| shared.metrics.thread(&name));
        StreamThread {
            inner: Inner {
                name,
                index,
                sources: SourceTopics::of(&topology, &app_id),
                topology,
                config,
                app_id,
                shared,
                tasks: Tasks::default(),
                protocol: commit::protocol(eos, output),
                rocks,
                restoring: Restorer::default(),
                pending_error: None,
                failed: false,
                metrics,
                purger: None,
                paused: Default::default(),
            },
        }
    }

    pub(crate) fn name(&self) -> String {
        self.inner.name.clone()
    }

    /// Runs until shutdown or a fatal error.
    pub(crate) fn run(self) -> Result<()> {
        let mut inner = self.inner;
        let span = tracing::info_span!("stream_thread", name = %inner.name);
        let _guard = span.enter();
        inner.protocol.ensure_producer()?;
        inner.purger = super::purge::Purger::new(&inner.topology, &inner.config, &inner.name)?;
        let c = clients::consumer_config(&inner.config, &inner.name);
        let topics: Vec<String> = inner.sources.topics().map(str::to_string).collect();
        let shared = inner.shared.clone();
        let commit_interval = inner.config.effective_commit_interval();
        let batch = inner.config.poll_batch;
        let name = inner.name.clone();
        let context = ThreadContext::new(inner);
        let consumer: BaseConsumer<ThreadContext> = c
            .create_with_context(context)
            .map_err(|e| Error::kafka("create consumer", e))?;
        let topic_refs: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&topic_refs)
            .map_err(|e| Error::kafka("subscribe", e))?;
        tracing::info!(thread = %name, topics = ?topics, "subscribed");

        // A panic in user code is caught here, inside the thread, so that the cleanup below
        // runs and nothing of the failed work is committed when the consumer closes.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            run_loop(&consumer, &shared, commit_interval, batch)
        }))
        .unwrap_or_else(|panic| {
            let message = super::panic_message(&*panic);
            Err(Error::ThreadDied {
                thread: name.clone(),
                message: format!("panicked: {message}"),
            })
        });
        let ctx = consumer.context();
        let final_result = match result {
            Ok(()) => {
                let mut inner = ctx.lock();
                inner.set_state(ThreadState::PendingShutdown);
                match inner.commit(&consumer) {
                    Ok(()) => {
                        inner.close_all_tasks(true);
                        Ok(())
                    }
                    Err(e) => {
                        // Never commit what is left: abort, and let nothing commit later.
                        inner.failed = true;
                        inner.protocol.stop(e.is_fenced());
                        inner.close_all_tasks(false);
                        Err(e)
                    }
                }
            }
            Err(e) => {
                let mut inner = ctx.lock();
                // Uncommitted work is dropped. Abort the open transaction so readers are not
                // held up, unless the producer was fenced (it cannot abort; its successor did).
                inner.failed = true;
                inner.protocol.stop(e.is_fenced());
                inner.close_all_tasks(false);
                Err(e)
            }
        };
        consumer.unsubscribe();
        drop(consumer);
        tracing::info!(thread = %name, "stopped");
        final_result
    }
}

/// Whether records are queued that wait for another partition of their task.
fn inner_blocked(ctx: &ThreadContext) -> bool {
    ctx.lock().tasks.buffered() > 0
}

fn run_loop(
    consumer: &BaseConsumer<ThreadContext>,
    shared: &Shared,
    commit_interval: Duration,
    batch: usize,
) -> Result<()> {
    let ctx = consumer.context();
    let mut last_commit = Instant::now();
    let mut raws: Vec<RawRecord> = Vec::with_capacity(batch);
    // Set after the tasks' uncommitted work was dropped, until the consumer is back at the
    // committed offsets with new tasks (retried while the broker does not answer).
    let mut rewind_pending = false;
    // Set while at-least-once commits fail: input fetching is paused until one succeeds.
    let mut failing_since: Option<Instant> = None;
    let (clean_every, cleaner) = {
        let inner = ctx.lock();
        (
            super::cleanup::period(inner.config.state_cleanup_delay),
            inner.index == 0,
        )
    };
    let mut last_clean = Instant::now();
    let mut topic_names = TopicNames::default();
    let mut restoring = false;
    let mut metrics = ctx.lock().metrics.clone();
    let thread_name = ctx.lock().name.clone();
    let mut lag = super::lag::LagGauges::default();
    while !shared.shutdown.load(Ordering::SeqCst) {
        let wait = commit_interval
            .saturating_sub(last_commit.elapsed())
            .min(Duration::from_millis(100));
        // While tasks restore, the restoration step is the loop's wait; while records wait
        // for another partition of their task, a short one.
        let mut timeout = match (restoring, inner_blocked(ctx)) {
            (true, _) => Duration::ZERO,
            (false, true) => wait.min(Duration::from_millis(5)),
            (false, false) => wait,
        };
        let poll_started = Instant::now();
        while raws.len() < batch {
            match consumer.poll(timeout) {
                None => break,
                Some(Ok(m)) => raws.push(RawRecord {
                    topic: topic_names.get(m.topic()),
                    partition: m.partition(),
                    offset: m.offset(),
                    timestamp: m.timestamp().to_millis().unwrap_or(0),
                    key: m.key().map(<[u8]>::to_vec),
                    value: m.payload().map(<[u8]>::to_vec),
                    headers: copy_headers(m.headers()),
                }),
                Some(Err(e)) => {
                    let error = Error::kafka("poll", e);
                    if error.is_fatal() {
                        return Err(error);
                    }
                    tracing::warn!(%error, "consumer error");
                    break;
                }
            }
            timeout = Duration::ZERO;
        }
        if let Some(m) = metrics.as_mut() {
            m.poll.observe(poll_started.elapsed());
        }
        let mut inner = ctx.lock();
        if let Some(e) = inner.pending_error.take() {
            return Err(e);
        }
        if cleaner && last_clean.elapsed() >= clean_every {
            inner.clean_state_dirs();
            last_clean = Instant::now();
        }
        if rewind_pending {
            // Records polled meanwhile belong to no task; the rewind reads them again.
            raws.clear();
            inner.ensure_producer()?;
            match rewind(consumer, &mut inner) {
                Ok(()) => rewind_pending = false,
                Err(e) if e.is_retriable() => {
                    tracing::warn!(error = %e, "rewinding to the last commit failed; trying again");
                    continue;
                }
                Err(e) => return Err(e),
            }
        }
        inner.ensure_producer()?;
        for raw in raws.drain(..) {
            inner.add(consumer, raw)?;
        }
        inner.restore_step(consumer)?;
        restoring = !inner.restoring.is_empty();
        clients::mark_caught_up(consumer, &mut inner.tasks);
        let requested = match inner.process() {
            Ok(r) => r,
            Err(e) if matches!(e.root(), Error::Kafka { .. }) => {
                // Records were consumed but their output may be incomplete: always drop the
                // tasks' work and go back to the last commit.
                if !inner.handle_commit_failure(e)? {
                    inner.close_all_tasks(false);
                }
                rewind_pending = true;
                continue;
            }
            Err(e) => return Err(e),
        };
        inner.protocol.poll();
        let retry_due = failing_since.is_some() && last_commit.elapsed() >= RETRY_COMMIT;
        if requested || retry_due || last_commit.elapsed() >= commit_interval {
            let commit_started = Instant::now();
            // Only to time commits that do something (asked only while metrics are on).
            let anything = metrics.is_some() && inner.tasks.needs_commit();
            let committed = inner.commit(consumer);
            if let Some(m) = metrics.as_mut() {
                // As Kafka Streams, commits that had nothing to do are not timed.
                if anything {
                    m.commit.observe(commit_started.elapsed());
                }
                let read_committed = inner.config.guarantee == ProcessingGuarantee::ExactlyOnce;
                lag.update(
                    consumer,
                    &inner.shared.metrics,
                    &thread_name,
                    read_committed,
                );
            }
            match committed {
                Ok(()) => {
                    if let Some(since) = failing_since.take() {
                        tracing::info!(failed_for = ?since.elapsed(), "committing again; fetching resumes");
                        inner.resume_running(consumer)?;
                    }
                }
                Err(e) => {
                    rewind_pending = inner.handle_commit_failure(e)?;
                    if rewind_pending {
                        failing_since = None;
                    } else {
                        // At-least-once keeps what waits for the commit: fetch nothing more
                        // until a commit goes through, and give up after the task timeout.
                        let since = *failing_since.get_or_insert_with(Instant::now);
                        inner.pause_running(consumer)?;
                        if since.elapsed() > inner.config.task_timeout {
                            return Err(Error::Timeout(format!(
                                "commits have failed for {:?}, longer than the task timeout ({:?}); is the broker reachable?",
                                since.elapsed(),
                                inner.config.task_timeout
                            )));
                        }
                    }
                }
            }
            last_commit = Instant::now();
        }
    }
    Ok(())
}

/// Puts the consumer back at the last committed offsets of its assignment and recreates the
/// tasks, after their uncommitted work was dropped.
fn rewind(consumer: &BaseConsumer<ThreadContext>, inner: &mut Inner) -> Result<()> {
    let assignment = consumer
        .assignment()
        .map_err(|e| Error::kafka("assignment", e))?;
    if assignment.count() == 0 {
        return Ok(());
    }
    let timeout = inner.config.client_timeout;
    let committed = consumer
        .committed_offsets(assignment.clone(), timeout)
        .map_err(|e| Error::kafka("committed offsets", e))?;
    let mut seek = TopicPartitionList::new();
    // A partition without a committed offset goes back to where auto.offset.reset put it:
    // offset 0 for "earliest" (a log that starts later falls back to the reset policy), not
    // the logical Beginning, whose offset lookup librdkafka does not finish when the
    // partition is paused right after (a restoring task pauses it), leaving it unfetched.
    let from_latest = matches!(
        inner
            .config
            .client_properties
            .get("auto.offset.reset")
            .map(String::as_str),
        Some("latest" | "largest" | "end")
    );
    for e in committed.elements() {
        let offset = match e.offset() {
            Offset::Offset(o) => Offset::Offset(o),
            _ if from_latest => Offset::End,
            _ => Offset::Offset(0),
        };
        seek.add_partition_offset(e.topic(), e.partition(), offset)
            .map_err(|e| Error::kafka("seek list", e))?;
    }
    consumer
        .seek_partitions(seek, timeout)
        .map_err(|e| Error::kafka("seek to committed offsets", e))?;
    let parts: Vec<(String, i32)> = assignment
        .elements()
        .iter()
        .map(|e| (e.topic().to_string(), e.partition()))
        .collect();
    inner.create_tasks(&parts)?;
    tracing::info!(thread = %inner.name, partitions = parts.len(), "rewound to the committed offsets");
    Ok(())
}
