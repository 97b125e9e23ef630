//! Where the test broker is, and how the project's own one is started and stopped.
//!
//! [`bootstrap_servers`] is what almost every test calls: it returns `KAFKA_BOOTSTRAP_SERVERS`
//! when that is set (`scripts/test.sh` starts one broker for the whole run and sets it), and
//! otherwise starts one [`ManagedBroker`] for the whole test process on first use. Tests that
//! must restart, pause or cut a broker start a [`ManagedBroker`] of their own.
//!
//! The broker is Apache Kafka ([`BrokerKind::Kafka`], [`kafka`]), or nisshi 0.7.0 behind the
//! patching test proxy on a machine without Java or with `KSTREAMS_BROKER=nisshi`
//! ([`BrokerKind::Nisshi`], [`nisshi`]); `docs/BROKER.md` says what each does.
//!
//! Broker processes are tied to the test process: they receive SIGKILL when it dies, however it
//! dies, so no broker outlives a test run.

pub mod kafka;
pub mod nisshi;

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::proxy::TxnProxy;

pub use kafka::KAFKA_VERSION;
pub use nisshi::NISSHI_VERSION;

/// Which broker a [`ManagedBroker`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerKind {
    /// Apache Kafka ([`KAFKA_VERSION`]), from the jars in the cache: the broker our users run.
    Kafka,
    /// nisshi 0.7.0 behind the patching test proxy: the fallback where no JVM runs.
    Nisshi,
}

impl BrokerKind {
    /// `KSTREAMS_BROKER` (`kafka` or `nisshi`); when unset, Kafka, or nisshi when no `java` is
    /// found (said once on standard error).
    ///
    /// # Panics
    ///
    /// On another value of `KSTREAMS_BROKER`.
    pub fn from_env() -> Self {
        match std::env::var("KSTREAMS_BROKER").as_deref().map(str::trim) {
            Ok("kafka") => BrokerKind::Kafka,
            Ok("nisshi") => BrokerKind::Nisshi,
            Ok("") | Err(_) => {
                if kafka::java_binary().is_some() {
                    BrokerKind::Kafka
                } else {
                    static SAID: std::sync::Once = std::sync::Once::new();
                    SAID.call_once(|| {
                        eprintln!(
                            "streams-testkit: no java found ($JAVA_HOME/bin/java or on the PATH): \
                             the test broker is the fallback, nisshi {NISSHI_VERSION} (docs/BROKER.md)"
                        )
                    });
                    BrokerKind::Nisshi
                }
            }
            Ok(other) => panic!("KSTREAMS_BROKER is `kafka` or `nisshi`, not `{other}`"),
        }
    }

    /// The broker's name, for messages.
    pub fn name(self) -> &'static str {
        match self {
            BrokerKind::Kafka => "Apache Kafka",
            BrokerKind::Nisshi => "nisshi",
        }
    }
}

/// How to start a [`ManagedBroker`].
#[derive(Debug, Clone, Default)]
pub struct BrokerOptions {
    /// Which broker; [`BrokerKind::from_env`] when `None`.
    pub kind: Option<BrokerKind>,
    /// Keep the data across [`ManagedBroker::restart`]. Kafka always does (its logs are on
    /// disk); nisshi then uses its sqlite engine instead of memory.
    pub durable: bool,
    /// The loopback port clients connect to; a free one when `None`.
    pub port: Option<u16>,
    /// The data directory; a new temporary one (removed on drop) when `None`. A given one is
    /// kept.
    pub data_dir: Option<PathBuf>,
    /// Clients connect through the test proxy, so that the test can inject faults
    /// ([`ManagedBroker::proxy`]). In front of Kafka the proxy is transparent (addresses and
    /// faults only); in front of nisshi it is always there and also patches its gaps.
    pub fault_proxy: bool,
    /// nisshi only: serve clients from nisshi directly, without the patching proxy. Only for
    /// showing nisshi's own behaviour: read_committed readers then see aborted records.
    pub without_proxy: bool,
    /// Kafka only: broker settings of this test, added to (and overriding) the test
    /// configuration ([`kafka`]).
    pub server_properties: Vec<(String, String)>,
}

impl BrokerOptions {
    /// The options for the shared broker: the defaults, and `without_proxy` when
    /// `KSTREAMS_TEST_BROKER_PROXY=0` (nisshi only).
    pub fn from_env() -> Self {
        BrokerOptions {
            without_proxy: std::env::var("KSTREAMS_TEST_BROKER_PROXY").as_deref() == Ok("0"),
            ..Default::default()
        }
    }
}

/// The bootstrap servers every test should use: `KAFKA_BOOTSTRAP_SERVERS` when set, otherwise
/// the address of this process's own managed broker, started on first call.
///
/// # Panics
///
/// When the project's broker cannot be started (not installed: run `scripts/broker.sh install`).
pub fn bootstrap_servers() -> String {
    if let Some(servers) = external_bootstrap_servers() {
        return servers;
    }
    static SHARED: OnceLock<String> = OnceLock::new();
    SHARED
        .get_or_init(|| {
            let broker = ManagedBroker::start(BrokerOptions::from_env())
                .unwrap_or_else(|e| panic!("cannot start the test broker: {e:#}"));
            let servers = broker.bootstrap_servers();
            // The shared broker lives as long as the process; it is killed with it.
            std::mem::forget(broker);
            servers
        })
        .clone()
}

/// `KAFKA_BOOTSTRAP_SERVERS`, when it is set and not empty.
pub fn external_bootstrap_servers() -> Option<String> {
    std::env::var("KAFKA_BOOTSTRAP_SERVERS")
        .ok()
        .filter(|s| !s.trim().is_empty())
}

/// The cache directory for the broker install and other things kept between runs:
/// `KSTREAMS_CACHE`, or `~/.cache/kstreams`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("KSTREAMS_CACHE") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into());
    PathBuf::from(home).join(".cache").join("kstreams")
}

/// A broker process owned by this test process, with a data directory of its own, and the
/// test proxy in front of it when asked for (always in front of nisshi, unless
/// [`BrokerOptions::without_proxy`]).
///
/// Dropping it kills the broker, stops the proxy and removes a temporary data directory.
#[derive(Debug)]
pub struct ManagedBroker {
    kind: BrokerKind,
    child: Option<Child>,
    proxy: Option<TxnProxy>,
    /// The broker's own client port.
    port: u16,
    /// Kafka's controller port.
    controller_port: u16,
    dir: PathBuf,
    remove_dir: bool,
    options: BrokerOptions,
}

impl ManagedBroker {
    /// Starts a broker on a free loopback port and waits until it answers Kafka requests.
    pub fn start(options: BrokerOptions) -> anyhow::Result<Self> {
        crate::init_tracing();
        let kind = options.kind.unwrap_or_else(BrokerKind::from_env);
        let (dir, remove_dir) = match &options.data_dir {
            Some(dir) => (dir.clone(), false),
            None => (
                std::env::temp_dir().join(crate::unique("kstreams-broker")),
                true,
            ),
        };
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let proxied = match kind {
            BrokerKind::Kafka => options.fault_proxy,
            BrokerKind::Nisshi => !options.without_proxy,
        };
        let public_port = match options.port {
            Some(port) => port,
            None => free_port()?,
        };
        let port = if proxied { free_port()? } else { public_port };
        let mut broker = ManagedBroker {
            kind,
            child: None,
            proxy: None,
            port,
            controller_port: free_port()?,
            dir,
            remove_dir,
            options,
        };
        broker.launch()?;
        if proxied {
            let listen = ([127, 0, 0, 1], public_port).into();
            let upstream = ([127, 0, 0, 1], broker.port).into();
            let proxy = match kind {
                BrokerKind::Kafka => TxnProxy::start_transparent(listen, upstream),
                BrokerKind::Nisshi => TxnProxy::start(listen, upstream),
            }
            .context("starting the test proxy")?;
            broker.proxy = Some(proxy);
            crate::kafka::wait_until_ready(&broker.bootstrap_servers(), Duration::from_secs(60))
                .context("the test proxy does not answer")?;
        }
        Ok(broker)
    }

    /// Which broker this is.
    pub fn kind(&self) -> BrokerKind {
        self.kind
    }

    /// Where clients connect: the proxy's `127.0.0.1:<port>`, or the broker's without one.
    pub fn bootstrap_servers(&self) -> String {
        match &self.proxy {
            Some(proxy) => proxy.addr().to_string(),
            None => self.direct_address(),
        }
    }

    /// The broker's own address (behind the proxy, when there is one).
    pub fn direct_address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The test proxy, when there is one.
    pub fn proxy(&self) -> Option<&TxnProxy> {
        self.proxy.as_ref()
    }

    /// The broker's data directory (its working directory).
    pub fn data_dir(&self) -> &Path {
        &self.dir
    }

    /// The broker's process id (the JVM's, for Kafka), while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the broker (SIGKILL) and waits for it to exit. The data directory and the proxy
    /// stay.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the broker with SIGTERM (Kafka shuts down in order), waiting up to `timeout`
    /// before it kills it.
    pub fn stop(&mut self, timeout: Duration) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on the pid of a child this process has not reaped yet.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            let deadline = Instant::now() + timeout;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the broker and starts it again on the same ports and data directory; the proxy
    /// keeps running (and keeps its index). A memory-engine nisshi comes back empty.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.launch()
    }

    fn launch(&mut self) -> anyhow::Result<()> {
        let log_path = self.dir.join("broker.log");
        let log = File::options()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
        let started = Instant::now();
        let mut cmd = match self.kind {
            BrokerKind::Kafka => {
                let java = kafka::java_binary().context(
                    "no java found ($JAVA_HOME/bin/java or on the PATH): Apache Kafka needs \
                     Java 17 or later (scripts/setup.sh installs it; KSTREAMS_BROKER=nisshi \
                     runs the fallback broker)",
                )?;
                let libs = kafka::kafka_libs()?;
                let node = kafka::KafkaNode {
                    dir: &self.dir,
                    port: self.port,
                    controller_port: self.controller_port,
                    extra: &self.options.server_properties,
                };
                node.prepare(&java, &libs, &log).with_context(|| {
                    format!(
                        "preparing the broker in {}; its log:\n{}",
                        self.dir.display(),
                        log_tail(&log_path, log_start)
                    )
                })?;
                node.broker_command(&java, &libs)
            }
            BrokerKind::Nisshi => nisshi::broker_command(
                &nisshi::nisshi_binary()?,
                &self.dir,
                self.port,
                self.options.durable,
            ),
        };
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let mut child = spawn_tied_to_process(cmd)
            .with_context(|| format!("starting the test broker ({})", self.kind.name()))?;
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "the test broker ({}) exited with {status} while starting; its log:\n{}",
                    self.kind.name(),
                    log_tail(&log_path, log_start)
                );
            }
            if TcpStream::connect_timeout(
                &([127, 0, 0, 1], self.port).into(),
                Duration::from_millis(200),
            )
            .is_ok()
            {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!(
                    "the test broker ({}) did not listen on port {} within 120 s; its log:\n{}",
                    self.kind.name(),
                    self.port,
                    log_tail(&log_path, log_start)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.child = Some(child);
        crate::kafka::wait_until_ready(&self.direct_address(), Duration::from_secs(120))
            .with_context(|| {
                format!(
                    "the test broker listens but does not answer; its log:\n{}",
                    log_tail(&log_path, log_start)
                )
            })?;
        tracing::info!(
            broker = self.kind.name(),
            port = self.port,
            dir = %self.dir.display(),
            seconds = started.elapsed().as_secs_f64(),
            "test broker ready"
        );
        Ok(())
    }
}

impl Drop for ManagedBroker {
    fn drop(&mut self) {
        self.kill();
        if self.remove_dir {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn log_tail(path: &Path, from: u64) -> String {
    let mut text = String::new();
    if let Ok(mut f) = File::open(path) {
        let _ = f.seek(SeekFrom::Start(from));
        let _ = f.read_to_string(&mut text);
    }
    let start = text.len().saturating_sub(4000);
    let start = (start..text.len())
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(0);
    text[start..].to_string()
}

type SpawnRequest = (Command, mpsc::Sender<io::Result<Child>>);

/// Spawns `cmd` so that the child receives SIGKILL when this process dies.
///
/// Linux delivers the parent-death signal when the *thread* that forked the child exits, so the
/// fork happens on one thread that lives as long as the process.
pub fn spawn_tied_to_process(cmd: Command) -> io::Result<Child> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("testkit-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(spawn_with_death_signal(&mut cmd));
                }
            })
            .expect("spawning the testkit spawner thread");
        Mutex::new(tx)
    });
    let (reply_tx, reply_rx) = mpsc::channel();
    spawner
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((cmd, reply_tx))
        .map_err(|_| io::Error::other("the testkit spawner thread is gone"))?;
    reply_rx
        .recv()
        .map_err(|_| io::Error::other("the testkit spawner thread is gone"))?
}

fn spawn_with_death_signal(cmd: &mut Command) -> io::Result<Child> {
    use std::os::unix::process::CommandExt;
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs between fork and exec and only makes async-signal-safe calls.
    unsafe {
        cmd.pre_exec(move || {
            // A caller may block signals (to sigwait for them); the broker must not inherit that.
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            libc::pthread_sigmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            // A broker holds three files open per partition, and a test run creates many.
            let mut files: libc::rlimit = std::mem::zeroed();
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut files) == 0
                && files.rlim_cur < files.rlim_max
            {
                files.rlim_cur = files.rlim_max;
                libc::setrlimit(libc::RLIMIT_NOFILE, &files);
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died before prctl took effect.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    cmd.spawn()
}
