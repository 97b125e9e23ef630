//! Standby replicas (`StreamsConfig::num_standby_replicas`): warm copies of other instances'
//! tasks, so that a task that moves here restores only its changelogs' tail.
//!
//! One thread per instance. Every second it reads the group's member list from the coordinator
//! and computes, as every instance does, which tasks it keeps standbys of: the ring of instance
//! ids places a task's standbys on the instances after its active one
//! (`docs/adr/0011-instance-discovery-for-queries-and-standbys.md`). A standby task is a task
//! whose stores are opened in its directory and never processed: the thread restores them from
//! their changelogs (`read_committed`, the restoration's own code, `restore.rs`) again and again,
//! each pass from the offset its stores reached, so they stay close behind the active task.
//!
//! A standby is dropped as soon as one of this instance's stream threads owns the task. A
//! stream thread that opens the task's stores while the standby still has them open shares the
//! open database and is the only one allowed to write from then on; it restores from the offset
//! the standby stored.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::BaseConsumer;

use super::clients::{self, PlainConsumer};
use super::discovery::describe_group;
use super::restore::{RestoreEnv, Restorer};
use super::{lock, Shared};
use crate::config::StreamsConfig;
use crate::store::RocksResources;
use crate::task::Task;
use crate::topology::Topology;
use crate::{Result, TaskId};

/// How often the placement is computed again.
const PLACEMENT_EVERY: Duration = Duration::from_secs(1);
/// How long a caught-up standby waits before it reads its changelogs again.
const CATCH_UP_EVERY: Duration = Duration::from_millis(500);
/// How long a standby task that failed waits before it is opened again.
const FAILED_REST: Duration = Duration::from_secs(10);
/// The longest the standby thread waits on the cluster (it never holds up a shutdown long).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a failing description of the group is logged as a warning.
const DESCRIBE_FAILURE_LOG_EVERY: Duration = Duration::from_secs(60);

/// A sub-topology with change-logged stores: its id, the topic whose partitions number its
/// tasks, and that topic's partition count.
struct Logged {
    subtopology: u32,
    partitions: i32,
}

/// Starts the standby thread, when standbys are configured and the topology has change-logged
/// stores.
pub(super) fn start(
    topology: &Topology,
    config: &StreamsConfig,
    partitions: &BTreeMap<String, i32>,
    shared: Arc<Shared>,
    rocks: RocksResources,
) -> Result<Option<std::thread::JoinHandle<()>>> {
    if config.num_standby_replicas == 0 {
        return Ok(None);
    }
    // Stores restored from a topic: a changelog of their own, or the source topic a table
    // is built from.
    let logged_stores: BTreeSet<&str> = topology
        .store_builders()
        .iter()
        .filter(|b| b.restored_from_a_topic())
        .map(|b| b.name())
        .collect();
    let logged: Vec<Logged> = topology
        .subtopologies()
        .iter()
        .filter(|st| st.stores.iter().any(|s| logged_stores.contains(s.as_str())))
        .filter_map(|st| {
            let n = partitions.get(st.source_topics.first()?)?;
            Some(Logged {
                subtopology: st.id,
                partitions: *n,
            })
        })
        .collect();
    if logged.is_empty() {
        return Ok(None);
    }
    let group = clients::group_reader(config, "standby-client")?;
    let standby = Standby {
        topology: topology.clone(),
        config: {
            let mut c = config.clone();
            c.client_timeout = c.client_timeout.min(CLIENT_TIMEOUT);
            c
        },
        app_id: Arc::from(config.application_id.as_str()),
        instance: config.instance_id.clone().unwrap_or_default(),
        name: format!("{}-StandbyThread", config.application_id),
        logged,
        shared,
        rocks,
        group,
        restorer: Restorer::default(),
        idle: vec![],
        placed: BTreeSet::new(),
        resting: BTreeMap::new(),
        describe_failure_logged: None,
    };
    let handle = std::thread::Builder::new()
        .name(standby.name.clone())
        .spawn(move || standby.run())
        .map_err(|e| crate::Error::Io {
            context: "spawn the standby thread".into(),
            source: e,
        })?;
    Ok(Some(handle))
}

struct Standby {
    topology: Topology,
    config: StreamsConfig,
    app_id: Arc<str>,
    instance: String,
    name: String,
    logged: Vec<Logged>,
    shared: Arc<Shared>,
    rocks: RocksResources,
    /// Describes the group and reads its committed offsets (never joins it).
    group: BaseConsumer,
    /// Standby tasks reading their changelogs.
    restorer: Restorer,
    /// Standby tasks that caught up, and when.
    idle: Vec<(Task, PathBuf, Instant)>,
    /// The standby tasks the placement gives this instance.
    placed: BTreeSet<TaskId>,
    /// Tasks that failed (or cannot be standbys), not opened again before the time given.
    resting: BTreeMap<TaskId, Instant>,
    /// When a failed description of the group was last logged as a warning.
    describe_failure_logged: Option<Instant>,
}

impl Standby {
    fn run(mut self) {
        let span = tracing::info_span!("standby_thread", name = %self.name);
        let _guard = span.enter();
        let run = std::panic::AssertUnwindSafe(|| self.run_loop());
        if let Err(panic) = std::panic::catch_unwind(run) {
            // Standbys are an optimisation: their loss never stops the instance.
            tracing::error!(panic = %super::panic_message(&*panic), "the standby thread panicked; no standbys until restart");
        }
    }

    fn run_loop(&mut self) {
        let mut placed_at: Option<Instant> = None;
        while !self.shared.shutdown.load(Ordering::SeqCst) {
            if placed_at.is_none_or(|at| at.elapsed() >= PLACEMENT_EVERY) {
                placed_at = Some(Instant::now());
                self.place();
            }
            self.reconcile();
            if let Err(e) = self.step() {
                self.failed(&e);
            }
            self.publish();
        }
        self.close_all();
        lock(&self.shared.standby_tasks).clear();
    }

    /// Publishes the standby tasks open now (`KafkaStreams::standby_tasks`, and the state
    /// cleaner, which keeps their directories and refreshes their markers).
    fn publish(&self) {
        let open: Vec<TaskId> = self
            .restorer
            .task_ids()
            .chain(self.idle.iter().map(|(t, _, _)| t.id))
            .collect();
        let mut published = lock(&self.shared.standby_tasks);
        if *published != open {
            *published = open;
        }
    }

    /// A pass failed: the task it failed on (or, when the error was no task's own, the first
    /// one) is closed and rests; the others go on.
    fn failed(&mut self, e: &crate::Error) {
        let culprit = self.restorer.failed_task();
        let mut tasks = self.restorer.take_all();
        // A fresh restorer: its consumer is created again.
        self.restorer = Restorer::default();
        let at = culprit
            .and_then(|id| tasks.iter().position(|p| p.task.id == id))
            .unwrap_or(0);
        if at < tasks.len() {
            let p = tasks.remove(at);
            if e.to_string().contains("newer instance") {
                tracing::debug!(task = %p.task.id, "a stream thread of this instance took the standby task over");
            } else {
                tracing::warn!(task = %p.task.id, error = %e, "a standby task failed; it rests a while");
            }
            self.resting.insert(p.task.id, Instant::now() + FAILED_REST);
            self.close(p.task, &p.dir);
        }
        for p in tasks {
            self.restorer.add(p.task, p.dir);
        }
    }

    /// The tasks this instance's stream threads own now (running or restoring).
    fn active(&self) -> BTreeSet<TaskId> {
        lock(&self.shared.tasks).iter().flatten().copied().collect()
    }

    /// Computes the standby tasks of this instance from the group's member list.
    fn place(&mut self) {
        // Serves the client's queued events (logs, errors): nothing else polls it.
        let _ = self.group.poll(Duration::ZERO);
        if self.config.metrics_recording {
            self.shared.metrics.group_describes("standbys").inc();
        }
        let view = match describe_group(&self.group, &self.app_id, self.config.client_timeout) {
            Ok(v) if v.is_stable() => v,
            // Between rebalances the placement is not known: keep the standbys as they are.
            Ok(_) => return,
            Err(e) => {
                // Say, the application's principal may not describe its group: no standby is
                // ever placed, which the user must hear of (once a minute, not every second).
                let now = Instant::now();
                if self
                    .describe_failure_logged
                    .is_none_or(|t| now >= t + DESCRIBE_FAILURE_LOG_EVERY)
                {
                    self.describe_failure_logged = Some(now);
                    tracing::warn!(error = %e, "describing the group failed; standby tasks cannot be placed and stay as they are");
                }
                return;
            }
        };
        let mut placed = BTreeSet::new();
        for l in &self.logged {
            for p in 0..l.partitions {
                if view
                    .standby_instances(l.partitions, p, self.config.num_standby_replicas)
                    .contains(&self.instance.as_str())
                {
                    placed.insert(TaskId {
                        subtopology: l.subtopology,
                        partition: p,
                    });
                }
            }
        }
        if placed != self.placed {
            let ids: Vec<String> = placed.iter().map(ToString::to_string).collect();
            tracing::info!(standbys = ?ids, "standby tasks placed");
            self.placed = placed;
        }
    }

    /// Closes standbys that are no longer placed here or that a stream thread now owns, and
    /// opens a placed one that is missing.
    fn reconcile(&mut self) {
        let now = Instant::now();
        self.resting.retain(|_, until| *until > now);
        let active = self.active();
        let wanted: BTreeSet<TaskId> = self
            .placed
            .iter()
            .filter(|id| !active.contains(id) && !self.resting.contains_key(id))
            .copied()
            .collect();
        let have: BTreeSet<TaskId> = self
            .restorer
            .task_ids()
            .chain(self.idle.iter().map(|(t, _, _)| t.id))
            .collect();
        if have.iter().any(|id| !wanted.contains(id)) {
            // Restoration has no way to drop one task: take them all and queue the kept ones.
            let mut keep: Vec<(Task, PathBuf)> = self
                .restorer
                .take_all()
                .into_iter()
                .map(|p| (p.task, p.dir))
                .collect();
            let mut idle = vec![];
            for (task, dir, since) in self.idle.drain(..) {
                if wanted.contains(&task.id) {
                    idle.push((task, dir, since));
                } else {
                    keep.push((task, dir));
                }
            }
            self.idle = idle;
            for (task, dir) in keep {
                if wanted.contains(&task.id) {
                    self.restorer.add(task, dir);
                } else {
                    tracing::info!(task = %task.id, "standby task closed");
                    self.close(task, &dir);
                }
            }
        }
        let have: BTreeSet<TaskId> = self
            .restorer
            .task_ids()
            .chain(self.idle.iter().map(|(t, _, _)| t.id))
            .collect();
        // One task per round: the directory lock is held while it opens, and stream threads
        // take it to open theirs.
        if let Some(id) = wanted.difference(&have).next().copied() {
            self.open(id);
        }
    }

    fn open(&mut self, id: TaskId) {
        let app_dir = self.config.state_dir.join(&*self.app_id);
        let dirs = super::cleanup::dir_lock(&app_dir);
        let _dirs = dirs.lock().unwrap_or_else(|e| e.into_inner());
        // Checked again under the directory lock: a stream thread takes it to open tasks.
        if self.active().contains(&id) {
            return;
        }
        let dir = app_dir.join(id.to_string());
        let mut task = match Task::new(
            &self.topology,
            id,
            &self.app_id,
            Some(&dir),
            super::now_ms(),
            &self.rocks,
        ) {
            Ok(task) => task,
            Err(e) => {
                tracing::warn!(task = %id, error = %e, "cannot open a standby task; it rests a while");
                self.resting.insert(id, Instant::now() + FAILED_REST);
                return;
            }
        };
        // A store kept in memory is restored whole by the task's next instance whatever a
        // standby holds: no standby for it.
        if task.logged_stores().any(|c| !c.bytes.persistent()) {
            tracing::info!(task = %id, "no standby for a task with in-memory stores");
            self.resting
                .insert(id, Instant::now() + Duration::from_secs(3600));
            let _ = task.close(false);
            return;
        }
        super::cleanup::mark_owned(&dir);
        tracing::info!(task = %id, "standby task opened");
        self.restorer.add(task, dir);
    }

    /// Closes a standby task under the directory lock (no stream thread opens it meanwhile),
    /// its stores flushed.
    fn close(&self, mut task: Task, dir: &std::path::Path) {
        let app_dir = self.config.state_dir.join(&*self.app_id);
        let dirs = super::cleanup::dir_lock(&app_dir);
        let _dirs = dirs.lock().unwrap_or_else(|e| e.into_inner());
        for core in task.logged_stores() {
            // Refused when a stream thread has the store now: it writes from here on.
            let _ = core.bytes.flush();
        }
        let _ = task.close(false);
        drop(task);
        super::cleanup::mark_owned(dir);
    }

    /// Reads changelogs for a while; caught-up tasks rest, rested ones read again.
    fn step(&mut self) -> Result<()> {
        let now = Instant::now();
        let idle = std::mem::take(&mut self.idle);
        for (task, dir, since) in idle {
            if now.duration_since(since) >= CATCH_UP_EVERY {
                self.restorer.add(task, dir);
            } else {
                self.idle.push((task, dir, since));
            }
        }
        if self.restorer.is_empty() {
            // Nothing to read: wait a little (for a task to rest, or the next placement).
            std::thread::sleep(Duration::from_millis(100));
            return Ok(());
        }
        let (config, name) = (&self.config, &self.name);
        let make_consumer = || -> Result<PlainConsumer> { clients::restore_consumer(config, name) };
        let make_watermarks =
            || -> Result<PlainConsumer> { clients::watermark_client(config, name) };
        let committed = |topic: &str, partition: i32| {
            clients::committed_offset(&self.group, topic, partition, config.client_timeout)
        };
        let env = RestoreEnv {
            make_consumer: &make_consumer,
            make_watermarks: &make_watermarks,
            open_transaction_wait: config.transaction_timeout + Duration::from_secs(10),
            task_timeout: config.task_timeout,
            // The user's restore listener hears about active tasks' restorations only.
            listener: None,
            client_timeout: config.client_timeout,
            committed: &committed,
            metrics: None,
            thread: name,
            standby: true,
        };
        let done = self.restorer.step(&env, Duration::from_millis(200))?;
        let now = Instant::now();
        self.idle
            .extend(done.into_iter().map(|p| (p.task, p.dir, now)));
        Ok(())
    }

    fn close_all(&mut self) {
        let tasks: Vec<(Task, PathBuf)> = self
            .restorer
            .take_all()
            .into_iter()
            .map(|p| (p.task, p.dir))
            .chain(self.idle.drain(..).map(|(t, d, _)| (t, d)))
            .collect();
        for (task, dir) in tasks {
            self.close(task, &dir);
        }
    }
}
