//! Where the test broker is, and how the project's own one is started and stopped.
//!
//! [`bootstrap_servers`] is what almost every test calls: it returns `KAFKA_BOOTSTRAP_SERVERS`
//! when that is set, and otherwise starts one [`ManagedBroker`] for the whole test process (memory
//! engine) on first use. Tests that must restart or kill a broker start a [`ManagedBroker`] of
//! their own.
//!
//! Broker processes are tied to the test process: they receive SIGKILL when it dies, however it
//! dies, so no broker outlives a test run.

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

/// The nisshi version the project pins (0.8 and later refuse transactions).
pub const NISSHI_VERSION: &str = "0.7.0";

/// Which storage engine a managed broker uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StorageEngine {
    /// Everything in the broker process: fast, gone when it stops.
    #[default]
    Memory,
    /// A sqlite file in the broker's data directory: survives a broker restart.
    Sqlite,
}

/// How to start a [`ManagedBroker`].
#[derive(Debug, Clone, Default)]
pub struct BrokerOptions {
    /// The storage engine.
    pub engine: StorageEngine,
    /// The loopback port to listen on; a free one when `None`.
    pub port: Option<u16>,
    /// The data directory; a new temporary one (removed on drop) when `None`. A given one is
    /// kept.
    pub data_dir: Option<PathBuf>,
    /// Serve clients directly from nisshi, without the transaction proxy in front
    /// ([`crate::proxy`]). Only for showing the broker's own behaviour: without the proxy,
    /// read_committed readers see aborted records.
    pub without_proxy: bool,
}

impl BrokerOptions {
    /// The options for the shared broker: the defaults, and `without_proxy` when
    /// `KSTREAMS_TEST_BROKER_PROXY=0`.
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

/// The nisshi binary: `NISSHI_BIN`, or where `scripts/broker.sh install` puts it.
pub fn nisshi_binary() -> anyhow::Result<PathBuf> {
    if let Some(bin) = std::env::var_os("NISSHI_BIN") {
        return Ok(PathBuf::from(bin));
    }
    let bin = cache_dir()
        .join("broker")
        .join(format!("nisshi-{NISSHI_VERSION}"))
        .join("bin")
        .join("nisshi");
    if !bin.exists() {
        bail!(
            "the test broker is not installed at {}: run `scripts/broker.sh install` \
             (or set KAFKA_BOOTSTRAP_SERVERS to use another broker)",
            bin.display()
        );
    }
    Ok(bin)
}

/// A nisshi broker process owned by this test process, with a data directory of its own, and
/// the transaction proxy in front of it (unless [`BrokerOptions::without_proxy`]).
///
/// Dropping it kills the broker, stops the proxy and removes a temporary data directory.
#[derive(Debug)]
pub struct ManagedBroker {
    child: Option<Child>,
    proxy: Option<TxnProxy>,
    /// nisshi's own port.
    port: u16,
    dir: PathBuf,
    remove_dir: bool,
    options: BrokerOptions,
}

impl ManagedBroker {
    /// Starts a broker on a free loopback port and waits until it answers Kafka requests.
    pub fn start(options: BrokerOptions) -> anyhow::Result<Self> {
        crate::init_tracing();
        let (dir, remove_dir) = match &options.data_dir {
            Some(dir) => (dir.clone(), false),
            None => (
                std::env::temp_dir().join(crate::unique("kstreams-broker")),
                true,
            ),
        };
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let public_port = match options.port {
            Some(port) => port,
            None => free_port()?,
        };
        let port = if options.without_proxy {
            public_port
        } else {
            free_port()?
        };
        let mut broker = ManagedBroker {
            child: None,
            proxy: None,
            port,
            dir,
            remove_dir,
            options,
        };
        broker.launch()?;
        if !broker.options.without_proxy {
            let proxy = TxnProxy::start(
                ([127, 0, 0, 1], public_port).into(),
                ([127, 0, 0, 1], broker.port).into(),
            )
            .context("starting the transaction proxy")?;
            broker.proxy = Some(proxy);
            crate::kafka::wait_until_ready(&broker.bootstrap_servers(), Duration::from_secs(60))
                .context("the transaction proxy does not answer")?;
        }
        Ok(broker)
    }

    /// Where clients connect: the proxy's `127.0.0.1:<port>`, or nisshi's without the proxy.
    pub fn bootstrap_servers(&self) -> String {
        match &self.proxy {
            Some(proxy) => proxy.addr().to_string(),
            None => self.nisshi_address(),
        }
    }

    /// nisshi's own address (behind the proxy).
    pub fn nisshi_address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The transaction proxy, when there is one.
    pub fn proxy(&self) -> Option<&TxnProxy> {
        self.proxy.as_ref()
    }

    /// The broker's data directory (its working directory).
    pub fn data_dir(&self) -> &Path {
        &self.dir
    }

    /// The broker's process id, while it runs.
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

    /// Kills the broker and starts it again on the same port and data directory; the proxy keeps
    /// running (and keeps its index).
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.launch()
    }

    fn launch(&mut self) -> anyhow::Result<()> {
        let bin = nisshi_binary()?;
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let engine = match self.options.engine {
            StorageEngine::Memory => "memory://nisshi/".to_string(),
            StorageEngine::Sqlite => "sqlite://nisshi.db".to_string(),
        };
        let log_path = self.dir.join("broker.log");
        let log = File::options()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
        let mut cmd = Command::new(&bin);
        cmd.arg("broker")
            .args(["--listener-url", &url])
            .args(["--advertised-listener-url", &url])
            .args(["--storage-engine", &engine])
            // Kafka's default (3 s) only slows tests down: every group's first join waits it.
            .args(["--group-initial-rebalance-delay", "0s"])
            .current_dir(&self.dir)
            .env_remove("KAFKA_BOOTSTRAP_SERVERS")
            .env(
                "RUST_LOG",
                std::env::var("NISSHI_LOG").unwrap_or("warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let mut child = spawn_tied_to_process(cmd)
            .with_context(|| format!("starting the test broker {}", bin.display()))?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "the test broker exited with {status} while starting; its log:\n{}",
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
                    "the test broker did not listen on port {} within 60 s; its log:\n{}",
                    self.port,
                    log_tail(&log_path, log_start)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.child = Some(child);
        crate::kafka::wait_until_ready(&self.nisshi_address(), Duration::from_secs(60))
            .with_context(|| {
                format!(
                    "the test broker listens but does not answer; its log:\n{}",
                    log_tail(&log_path, log_start)
                )
            })?;
        tracing::info!(port = self.port, dir = %self.dir.display(), "test broker ready");
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
