//! The runtime: [`KafkaStreams`] runs a topology against Kafka with stream threads.
//!
//! Every stream thread is a member of the consumer group named by the application id, with its
//! own consumer and producer and the tasks of the partitions the group gave it. Under
//! exactly-once each thread has one transactional producer (`transactional.id` =
//! `<application id>-<instance id>-<thread number>`, stable across restarts) and commits its
//! tasks' output and consumed offsets in one transaction every commit interval.
//!
//! ```no_run
//! use std::time::Duration;
//! use streams_core::config::StreamsConfig;
//! use streams_core::runtime::{KafkaStreams, State};
//! # fn topology() -> streams_core::topology::Topology { unimplemented!() }
//!
//! let streams = KafkaStreams::new(topology(), StreamsConfig::new("app", "localhost:9092"))?;
//! streams.set_state_listener(|old, new| println!("{old:?} -> {new:?}"));
//! streams.start()?;
//! streams.wait_for(|s| s == State::Running, Duration::from_secs(30));
//! // ...
//! streams.close(Duration::from_secs(30));
//! # Ok::<(), streams_core::Error>(())
//! ```

mod cleanup;
mod clients;
mod collector;
mod commit;
mod discovery;
mod global;
mod http;
mod lag;
mod purge;
mod queries;
mod rebalance;
mod restore;
mod standby;
mod thread;
mod tls;
mod topics;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[cfg(feature = "internals")]
#[doc(hidden)]
pub use self::discovery::{describe_group, GroupMember, GroupView};
use crate::config::StreamsConfig;
use crate::store::{QueryHandle, ReadOnlyKeyValueStore};
use crate::topology::Topology;
use crate::TaskId;
use crate::{Error, Result};

/// The life of a [`KafkaStreams`] instance, as Kafka Streams names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// Built, not started.
    Created,
    /// Started; some stream thread is joining the group or taking over partitions.
    Rebalancing,
    /// Every stream thread has its tasks and is processing.
    Running,
    /// `close` was called; threads are committing and stopping.
    PendingShutdown,
    /// Stopped cleanly.
    NotRunning,
    /// A thread failed; the others are stopping.
    PendingError,
    /// Stopped after a failure; [`KafkaStreams::error`] says which.
    Error,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ThreadState {
    Starting,
    PartitionsRevoked,
    PartitionsAssigned,
    Running,
    PendingShutdown,
    Dead,
}

type Listener = Arc<dyn Fn(State, State) + Send + Sync>;

pub(crate) struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    threads: Mutex<Vec<ThreadState>>,
    tasks: Mutex<Vec<Vec<TaskId>>>,
    /// The standby tasks this instance keeps open now (the standby thread publishes them).
    pub(crate) standby_tasks: Mutex<Vec<TaskId>>,
    stores: Mutex<Vec<Vec<(String, i32, QueryHandle)>>>,
    listener: Mutex<Option<Listener>>,
    /// Where state changes go to the listener's thread, once a listener is set.
    notifier: Mutex<Option<std::sync::mpsc::Sender<(State, State)>>>,
    /// The listener's thread.
    notifier_thread: Mutex<Option<std::thread::ThreadId>>,
    /// State changes sent to the listener's thread and not yet handed to the listener.
    unnotified: std::sync::atomic::AtomicUsize,
    pub(crate) shutdown: AtomicBool,
    error: Mutex<Option<Arc<Error>>>,
    pub(crate) metrics: crate::metrics::StreamsMetrics,
}

/// Every state's name, as the `state` metric labels it.
const STATE_NAMES: [&str; 7] = [
    "Created",
    "Rebalancing",
    "Running",
    "PendingShutdown",
    "NotRunning",
    "PendingError",
    "Error",
];

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    fn transition(&self, to: State) {
        let from = {
            let mut s = lock(&self.state);
            let from = *s;
            let allowed = match (from, to) {
                (a, b) if a == b => false,
                (State::Error | State::NotRunning, _) => false,
                (State::PendingError, s) => s == State::Error,
                (State::PendingShutdown, s) => s == State::NotRunning,
                _ => true,
            };
            if !allowed {
                return;
            }
            *s = to;
            // Under the state lock: two transitions at once cannot leave the gauge behind,
            // nor reach the listener in the wrong order.
            self.metrics.set_state(&format!("{to:?}"), &STATE_NAMES);
            if let Some(tx) = lock(&self.notifier).as_ref() {
                self.unnotified.fetch_add(1, Ordering::SeqCst);
                if tx.send((from, to)).is_err() {
                    self.unnotified.fetch_sub(1, Ordering::SeqCst);
                }
            }
            from
        };
        tracing::info!(from = ?from, to = ?to, "state changed");
        self.changed.notify_all();
    }

    /// Starts the thread that calls the state listener, if it is not running: state changes
    /// reach the listener in order, on that thread, outside every lock of the runtime, so that
    /// a slow listener stalls no stream thread and a listener may call `close`.
    fn start_notifier(self: &Arc<Self>) {
        let mut notifier = lock(&self.notifier);
        if notifier.is_some() {
            return;
        }
        let (tx, rx) = std::sync::mpsc::channel::<(State, State)>();
        let shared = Arc::downgrade(self);
        let spawned = std::thread::Builder::new()
            .name("kstreams-state-listener".into())
            .spawn(move || {
                // Ends when the instance is gone (its sender with it).
                while let Ok((from, to)) = rx.recv() {
                    let Some(shared) = shared.upgrade() else {
                        break;
                    };
                    let listener = lock(&shared.listener).clone();
                    if let Some(l) = listener {
                        let called =
                            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| l(from, to)));
                        if let Err(panic) = called {
                            tracing::error!(panic = %panic_message(&*panic), "the state listener panicked");
                        }
                    }
                    shared.unnotified.fetch_sub(1, Ordering::SeqCst);
                    let _state = lock(&shared.state);
                    shared.changed.notify_all();
                }
            });
        match spawned {
            Ok(handle) => {
                *lock(&self.notifier_thread) = Some(handle.thread().id());
                *notifier = Some(tx);
            }
            Err(e) => tracing::error!(error = %e, "cannot start the state listener's thread"),
        }
    }

    /// Waits until the listener has been handed every state change so far (not when called
    /// from the listener itself), at most until `deadline`.
    fn wait_for_listener(&self, deadline: std::time::Instant) {
        if *lock(&self.notifier_thread) == Some(std::thread::current().id()) {
            return;
        }
        let mut state = lock(&self.state);
        while self.unnotified.load(Ordering::SeqCst) > 0 {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return;
            }
            state = self
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    pub(crate) fn set_thread_state(&self, index: usize, state: ThreadState) {
        // Decide and transition under the threads lock, so that two threads changing state
        // at once cannot apply their conclusions in the wrong order.
        let mut threads = lock(&self.threads);
        threads[index] = state;
        let all_running = threads.iter().all(|t| *t == ThreadState::Running);
        let current = *lock(&self.state);
        if matches!(current, State::Rebalancing | State::Running) {
            self.transition(if all_running {
                State::Running
            } else {
                State::Rebalancing
            });
        }
        drop(threads);
    }

    /// The tasks every thread of this instance owns, and its open standby tasks, by
    /// directory name: the state cleaner keeps them and refreshes their markers, so that a
    /// restart after a crash does not take a standby's directory for an abandoned one.
    pub(crate) fn owned_task_dirs(&self) -> std::collections::HashSet<String> {
        let standbys = lock(&self.standby_tasks).clone();
        lock(&self.tasks)
            .iter()
            .flatten()
            .chain(&standbys)
            .map(ToString::to_string)
            .collect()
    }

    pub(crate) fn set_thread_tasks(
        &self,
        index: usize,
        tasks: Vec<TaskId>,
        stores: Vec<(String, i32, QueryHandle)>,
    ) {
        lock(&self.tasks)[index] = tasks;
        lock(&self.stores)[index] = stores;
    }

    fn thread_finished(&self, index: usize, result: Result<()>) {
        if let Err(e) = result {
            tracing::error!(error = %e, "stream thread failed; stopping the instance");
            lock(&self.error).get_or_insert_with(|| Arc::new(e));
            self.shutdown.store(true, Ordering::SeqCst);
            self.transition(State::PendingError);
        }
        let all_dead = {
            let mut threads = lock(&self.threads);
            threads[index] = ThreadState::Dead;
            threads.iter().all(|t| *t == ThreadState::Dead)
        };
        if all_dead {
            // A failure during a requested shutdown still ends in NotRunning (the error stays
            // available from `error()`), as Kafka Streams allows only that from PendingShutdown.
            let shutting_down = *lock(&self.state) == State::PendingShutdown;
            if lock(&self.error).is_some() && !shutting_down {
                self.transition(State::Error);
            } else {
                self.transition(State::NotRunning);
            }
        }
        self.changed.notify_all();
    }
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The message of a caught panic.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "a panic without a message".into())
}

/// A running application: a topology, its configuration, and its stream threads.
pub struct KafkaStreams {
    topology: Topology,
    config: StreamsConfig,
    shared: Arc<Shared>,
    handles: Mutex<Vec<std::thread::JoinHandle<()>>>,
    lock_file: Mutex<Option<File>>,
    instance_id: Mutex<Option<String>>,
    endpoint: Mutex<Option<http::Endpoint>>,
}

impl KafkaStreams {
    /// An application in state [`State::Created`]; nothing connects until [`start`](Self::start).
    pub fn new(topology: Topology, config: StreamsConfig) -> Result<Self> {
        config.validate()?;
        Ok(KafkaStreams {
            topology: topology.with_own_global_stores(),
            shared: Arc::new(Shared {
                state: Mutex::new(State::Created),
                changed: Condvar::new(),
                threads: Mutex::new(vec![ThreadState::Starting; config.num_stream_threads]),
                tasks: Mutex::new(vec![vec![]; config.num_stream_threads]),
                standby_tasks: Mutex::new(vec![]),
                stores: Mutex::new(vec![vec![]; config.num_stream_threads]),
                listener: Mutex::new(None),
                notifier: Mutex::new(None),
                notifier_thread: Mutex::new(None),
                unnotified: std::sync::atomic::AtomicUsize::new(0),
                shutdown: AtomicBool::new(false),
                error: Mutex::new(None),
                metrics: {
                    let m = crate::metrics::StreamsMetrics::new();
                    m.set_state("Created", &STATE_NAMES);
                    m
                },
            }),
            config,
            handles: Mutex::new(vec![]),
            lock_file: Mutex::new(None),
            instance_id: Mutex::new(None),
            endpoint: Mutex::new(None),
        })
    }

    /// Calls `listener(old, new)` on every state change from now on, in order, on a thread of
    /// its own (as Kafka Streams, outside the runtime's locks): a slow listener stalls no stream
    /// thread, and a listener may call [`close`](Self::close). `close` returns once the listener
    /// has been handed every change up to `NotRunning` (unless called from the listener).
    pub fn set_state_listener(&self, listener: impl Fn(State, State) + Send + Sync + 'static) {
        *lock(&self.shared.listener) = Some(Arc::new(listener));
        self.shared.start_notifier();
    }

    /// The current state.
    pub fn state(&self) -> State {
        *lock(&self.shared.state)
    }

    /// Every metric of this instance now (names and meanings: [`crate::metrics`]).
    pub fn metrics(&self) -> crate::metrics::Metrics {
        self.shared.metrics.snapshot()
    }

    /// Every metric of this instance now, in the Prometheus text format (the OpenMetrics
    /// flavour, ending in `# EOF`).
    pub fn metrics_text(&self) -> String {
        self.shared.metrics.text()
    }

    /// The error that stopped the instance, once it is in [`State::PendingError`] or
    /// [`State::Error`].
    pub fn error(&self) -> Option<Arc<Error>> {
        lock(&self.shared.error).clone()
    }

    /// This instance's id (from the configuration, or kept in the state directory), once
    /// started.
    pub fn instance_id(&self) -> Option<String> {
        lock(&self.instance_id).clone()
    }

    /// Waits until `condition(state)` holds or `timeout` passes; returns whether it held.
    pub fn wait_for(&self, condition: impl Fn(State) -> bool, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut state = lock(&self.shared.state);
        loop {
            if condition(*state) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            state = self
                .shared
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Prepares topics (checks source topics and co-partitioning, creates internal topics),
    /// reads the global tables and starts the stream threads. An error before any thread
    /// started (topics, global tables, the endpoint's address) leaves the instance in
    /// [`State::Created`] with nothing running, to be started again; an error while starting
    /// threads (the operating system refusing one) stops those started and leaves it in
    /// [`State::Error`].
    pub fn start(&self) -> Result<()> {
        if self.state() != State::Created {
            return Err(Error::Config(format!(
                "start called in state {:?}",
                self.state()
            )));
        }
        let app_dir = self.config.state_dir.join(&self.config.application_id);
        std::fs::create_dir_all(&app_dir).map_err(|e| Error::Io {
            context: format!("create state directory {}", app_dir.display()),
            source: e,
        })?;
        let lock_file = lock_state_dir(&app_dir)?;
        {
            // Nothing is owned yet: state released longer than the delay ago goes.
            let dirs = cleanup::dir_lock(&app_dir);
            let _dirs = lock(&dirs);
            cleanup::clean(
                &app_dir,
                &Default::default(),
                self.config.state_cleanup_delay,
            );
        }
        let instance_id = match &self.config.instance_id {
            Some(id) => id.clone(),
            None => instance_id(&app_dir)?,
        };
        let partitions = topics::prepare(&self.topology, &self.config)?;
        // The stream threads' consumers advertise the endpoint's address in their client ids.
        let mut thread_config = self.config.clone();
        thread_config.instance_id = Some(instance_id.clone());
        if let Some(address) = self.config.http_endpoint {
            let d = self.topology.describe();
            let page = format!("{d}\n{}\n", d.to_mermaid());
            let client = clients::group_reader(&self.config, "query-client")?;
            let limits = http::Limits {
                max_connections: self.config.http_max_connections,
                header_timeout: self.config.http_header_timeout,
            };
            let mut hosts: Vec<String> = self
                .config
                .http_allowed_hosts
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect();
            // The advertised host is served too (other instances send queries to it).
            if let Some(host) = self
                .config
                .application_server
                .as_deref()
                .and_then(|a| a.rsplit_once(':'))
                .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']'))
            {
                hosts.push(host.to_ascii_lowercase());
            }
            let guard = http::Guard {
                token: self.config.http_token.clone(),
                hosts,
                queries: self.config.http_queries,
            };
            let tls = self
                .config
                .http_tls
                .as_ref()
                .map(tls::Tls::load)
                .transpose()?;
            let endpoint = http::start(
                address,
                limits,
                guard,
                self.shared.clone(),
                page,
                tls.as_ref().map(|t| t.acceptor.clone()),
                |bound| {
                    let advertised = self.config.application_server.clone().unwrap_or_else(|| {
                    if bound.ip().is_unspecified() {
                        tracing::warn!(address = %bound, "the HTTP endpoint listens on every interface but no application_server is set: other instances are told 127.0.0.1, which reaches this one only from the same machine");
                    }
                    let ip = if bound.ip().is_unspecified() {
                        std::net::IpAddr::from([127, 0, 0, 1])
                    } else {
                        bound.ip()
                    };
                    std::net::SocketAddr::new(ip, bound.port()).to_string()
                });
                    thread_config.application_server = Some(advertised.clone());
                    queries::Queries::new(
                        self.shared.clone(),
                        &self.topology,
                        &self.config,
                        &partitions,
                        Some(advertised),
                        client,
                        tls.map(|t| t.connector),
                    )
                },
            )?;
            *lock(&self.endpoint) = Some(endpoint);
        }
        // Global tables are read whole before any stream thread starts. A failure here stops
        // the endpoint again: the instance stays `Created` with nothing running, and a later
        // `start` binds the same address.
        let global = match global::start(&self.topology, &self.config, self.shared.clone()) {
            Ok(global) => global,
            Err(e) => {
                lock(&self.endpoint).take();
                return Err(e);
            }
        };
        *lock(&self.lock_file) = Some(lock_file);
        *lock(&self.instance_id) = Some(instance_id.clone());
        let span = tracing::info_span!("kafka_streams", application_id = %self.config.application_id, instance = %instance_id);
        let _guard = span.enter();
        tracing::info!(threads = self.config.num_stream_threads, guarantee = ?self.config.guarantee, "starting");
        self.shared.transition(State::Rebalancing);
        lock(&self.handles).extend(global);
        let rocks = self.config.rocks_resources();
        if self.config.metrics_recording {
            let probe = rocks.clone();
            self.shared.metrics.set_rocks_probe(Box::new(move || {
                let u = probe.usage();
                [
                    u.block_cache_usage,
                    u.block_cache_capacity,
                    u.memtable_usage,
                    u.memtable_limit,
                ]
            }));
        }
        let mut spawned = 0;
        let started = self.spawn_threads(
            &thread_config,
            &partitions,
            &instance_id,
            rocks,
            &mut spawned,
        );
        if let Err(e) = started {
            self.abandon_start(&e, spawned);
            return Err(e);
        }
        Ok(())
    }

    /// Starts the standby thread and the stream threads, counting the stream threads in
    /// `spawned`; on an error, those started so far keep running until
    /// [`abandon_start`](Self::abandon_start) stops them.
    fn spawn_threads(
        &self,
        thread_config: &StreamsConfig,
        partitions: &std::collections::BTreeMap<String, i32>,
        instance_id: &str,
        rocks: crate::store::RocksResources,
        spawned: &mut usize,
    ) -> Result<()> {
        let standby = standby::start(
            &self.topology,
            thread_config,
            partitions,
            self.shared.clone(),
            rocks.clone(),
        )?;
        lock(&self.handles).extend(standby);
        for i in 0..self.config.num_stream_threads {
            let thread = thread::StreamThread::new(
                i,
                self.topology.clone(),
                thread_config.clone(),
                self.shared.clone(),
                instance_id,
                rocks.clone(),
            );
            let shared = self.shared.clone();
            let name = thread.name();
            let handle = std::thread::Builder::new()
                .name(name.clone())
                .spawn(move || {
                    let result =
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| thread.run()));
                    let result = match result {
                        Ok(r) => r,
                        Err(panic) => {
                            let message = panic_message(&*panic);
                            Err(Error::ThreadDied {
                                thread: name,
                                message: format!("panicked: {message}"),
                            })
                        }
                    };
                    shared.thread_finished(i, result);
                })
                .map_err(|e| Error::Io {
                    context: "spawn a stream thread".into(),
                    source: e,
                })?;
            lock(&self.handles).push(handle);
            *spawned += 1;
        }
        Ok(())
    }

    /// Stops what a start that failed after leaving `Created` had started (the global and
    /// standby threads, the stream threads spawned so far, the endpoint) and ends in
    /// [`State::Error`], with `error` as the instance's error: `close` then returns at once,
    /// and the state directory's lock is released.
    fn abandon_start(&self, error: &Error, spawned: usize) {
        tracing::error!(error = %error, "start failed; stopping what it started");
        lock(&self.shared.error)
            .get_or_insert_with(|| Arc::new(Error::Config(format!("start failed: {error}"))));
        self.shared.shutdown.store(true, Ordering::SeqCst);
        self.shared.transition(State::PendingError);
        // The slots of stream threads never spawned: nothing will ever report them finished.
        for i in spawned..self.config.num_stream_threads {
            self.shared.thread_finished(i, Ok(()));
        }
        for h in lock(&self.handles).drain(..) {
            let _ = h.join();
        }
        lock(&self.lock_file).take();
        lock(&self.endpoint).take();
    }

    /// Asks every thread to commit and stop, and waits up to `timeout`. Returns whether all
    /// threads stopped in time.
    pub fn close(&self, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        if self.state() == State::Created {
            self.shared.transition(State::NotRunning);
            self.shared.wait_for_listener(deadline);
            return true;
        }
        self.shared.transition(State::PendingShutdown);
        self.shared.shutdown.store(true, Ordering::SeqCst);
        let stopped = self.wait_for(|s| matches!(s, State::NotRunning | State::Error), timeout);
        if stopped {
            for h in lock(&self.handles).drain(..) {
                let _ = h.join();
            }
            lock(&self.lock_file).take();
            lock(&self.endpoint).take();
            self.shared.wait_for_listener(deadline);
        } else {
            tracing::warn!(?timeout, "stream threads did not stop in time");
        }
        stopped
    }

    /// The global store `name` (interactive queries): every partition of its topic, as this
    /// instance has read it.
    pub fn global_store(&self, name: &str) -> Option<crate::store::GlobalStore> {
        self.topology.global_store(name)
    }

    /// The address the HTTP endpoint listens on, once started (`StreamsConfig::http_endpoint`).
    pub fn http_address(&self) -> Option<std::net::SocketAddr> {
        lock(&self.endpoint).as_ref().map(http::Endpoint::address)
    }

    /// The standby tasks this instance keeps now (`StreamsConfig::num_standby_replicas`): warm
    /// copies of other instances' tasks' stores.
    pub fn standby_tasks(&self) -> Vec<TaskId> {
        let mut all = lock(&self.shared.standby_tasks).clone();
        all.sort();
        all
    }

    /// The tasks this instance runs now, over all its stream threads.
    pub fn assigned_tasks(&self) -> Vec<TaskId> {
        let mut all: Vec<TaskId> = lock(&self.shared.tasks).iter().flatten().copied().collect();
        all.sort();
        all
    }

    /// A read-only view of the committed state of key-value store `name` in the tasks this
    /// instance runs now (interactive queries). Safe to use from any thread; it reads what the
    /// stores had committed when it was made and later commits as they land.
    pub fn key_value_store<K: 'static, V: 'static>(
        &self,
        name: &str,
    ) -> Result<ReadOnlyKeyValueStore<K, V>> {
        let handles: Vec<(i32, QueryHandle)> = lock(&self.shared.stores)
            .iter()
            .flatten()
            .filter(|(n, _, _)| n == name)
            .map(|(_, p, h)| (*p, h.clone()))
            .collect();
        let (shared, store) = (Arc::downgrade(&self.shared), name.to_string());
        let runs = move |partition: i32| {
            shared.upgrade().is_some_and(|s| {
                lock(&s.stores)
                    .iter()
                    .flatten()
                    .any(|(n, p, _)| *n == store && *p == partition)
            })
        };
        ReadOnlyKeyValueStore::from_handles(name, handles, Arc::new(runs))
    }

    /// The partitions of store `name` this instance holds now.
    pub fn store_partitions(&self, name: &str) -> Vec<i32> {
        let mut p: Vec<i32> = lock(&self.shared.stores)
            .iter()
            .flatten()
            .filter(|(n, _, _)| n == name)
            .map(|(_, p, _)| *p)
            .collect();
        p.sort();
        p
    }

    /// The topology this instance runs.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }
}

impl Drop for KafkaStreams {
    fn drop(&mut self) {
        if !matches!(self.state(), State::NotRunning | State::Error) {
            self.close(Duration::from_secs(30));
        }
    }
}

/// Takes an exclusive lock on the application's state directory, so that two instances on one
/// machine never share state (or transactional ids).
fn lock_state_dir(dir: &Path) -> Result<File> {
    use std::os::fd::AsRawFd;
    let path = dir.join(".lock");
    let file = File::create(&path).map_err(|e| Error::Io {
        context: format!("create {}", path.display()),
        source: e,
    })?;
    // SAFETY: flock on a descriptor we own; no memory is shared with the call.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        return Err(Error::Config(format!(
            "state directory {} is in use by another instance; give each instance its own state_dir",
            dir.display()
        )));
    }
    Ok(file)
}

/// The instance id kept in the state directory, created on first use.
fn instance_id(dir: &Path) -> Result<String> {
    let path: PathBuf = dir.join("instance.id");
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => Ok(id.trim().to_string()),
        _ => {
            let id = uuid::Uuid::new_v4().simple().to_string();
            let tmp = dir.join("instance.id.tmp");
            std::fs::write(&tmp, &id)
                .and_then(|_| std::fs::rename(&tmp, &path))
                .map_err(|e| Error::Io {
                    context: format!("write {}", path.display()),
                    source: e,
                })?;
            Ok(id)
        }
    }
}
