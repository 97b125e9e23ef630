//! What the example applications share: their common flags, creating their topics, and
//! running a topology until Ctrl-C, SIGTERM or `--run-for`, with a live summary.
//!
//! Common flags: `--bootstrap-servers` (default `KAFKA_BOOTSTRAP_SERVERS`, else the project's
//! test broker, Apache Kafka, is started for the run and stopped with it), `--application-id`, `--state-dir`, `--generate N`, `--at-least-once`,
//! `--describe`, `--run-for SECONDS` (default: until Ctrl-C or SIGTERM), `--set key=value` (a
//! librdkafka client property, repeatable: `--set session.timeout.ms=6000` for a faster
//! takeover after a crash than the default 45 s), `--http HOST:PORT` (the HTTP endpoint:
//! metrics, health, interactive queries); and one flag per topic of the example.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use kstreams::core::{KafkaStreams, ProcessingGuarantee, State, StreamsConfig, Topology};
use streams_testkit::kafka::{create_topic, partition_count};

/// The parsed common flags.
pub struct Args {
    /// `--bootstrap-servers`, else `KAFKA_BOOTSTRAP_SERVERS`.
    pub bootstrap: Option<String>,
    /// `--application-id`.
    pub application_id: String,
    /// `--state-dir`.
    pub state_dir: Option<String>,
    /// `--generate N`: input records to produce before processing.
    pub generate: usize,
    /// `--at-least-once` (exactly-once otherwise).
    pub at_least_once: bool,
    /// `--describe`: print the topology and exit.
    pub describe: bool,
    /// `--run-for SECONDS`.
    pub run_for: Option<Duration>,
    /// `--set key=value`: librdkafka client properties.
    pub properties: Vec<(String, String)>,
    /// `--http ADDRESS`: serve the HTTP endpoint (metrics, health, interactive queries).
    pub http: Option<std::net::SocketAddr>,
}

impl Args {
    /// Parses the command line of example `example` (its file name, for the error message),
    /// whose application id is `application_id` unless the flag says otherwise; `topics`
    /// pairs each topic flag (such as `"--transactions"`) with the name it sets.
    pub fn parse(
        example: &str,
        application_id: &str,
        topics: &mut [(&str, &mut String)],
    ) -> anyhow::Result<Args> {
        let mut a = Args {
            bootstrap: std::env::var("KAFKA_BOOTSTRAP_SERVERS").ok(),
            application_id: application_id.into(),
            state_dir: None,
            generate: 0,
            at_least_once: false,
            describe: false,
            run_for: None,
            properties: vec![],
            http: None,
        };
        let mut it = std::env::args().skip(1);
        while let Some(flag) = it.next() {
            let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
            match flag.as_str() {
                "--bootstrap-servers" => a.bootstrap = Some(value()?),
                "--application-id" => a.application_id = value()?,
                "--state-dir" => a.state_dir = Some(value()?),
                "--generate" => a.generate = value()?.parse().context("--generate N")?,
                "--run-for" => {
                    let secs = value()?.parse().context("--run-for SECONDS")?;
                    a.run_for = Some(Duration::from_secs(secs));
                }
                "--set" => {
                    let kv = value()?;
                    let (k, v) = kv.split_once('=').context("--set key=value")?;
                    a.properties.push((k.to_string(), v.to_string()));
                }
                "--http" => a.http = Some(value()?.parse().context("--http HOST:PORT")?),
                "--at-least-once" => a.at_least_once = true,
                "--describe" => a.describe = true,
                other => match topics.iter_mut().find(|(f, _)| *f == other) {
                    Some((_, name)) => **name = value()?,
                    None => {
                        bail!("unknown flag {other}; see the module docs of examples/{example}.rs")
                    }
                },
            }
        }
        Ok(a)
    }

    /// The bootstrap servers; without any, starts the project's broker and says where.
    pub fn bootstrap_servers(&self) -> String {
        match &self.bootstrap {
            Some(b) => b.clone(),
            None => {
                let kind = streams_testkit::BrokerKind::from_env();
                println!(
                    "no KAFKA_BOOTSTRAP_SERVERS: starting the project's test broker ({}) for \
                     this run...",
                    kind.name()
                );
                let started = Instant::now();
                let b = streams_testkit::bootstrap_servers();
                println!(
                    "broker at {b}, ready in {:.1} s",
                    started.elapsed().as_secs_f64()
                );
                b
            }
        }
    }

    /// The configuration the flags give: application id, bootstrap servers, state directory,
    /// processing guarantee and client properties.
    pub fn config(&self, bootstrap: &str) -> StreamsConfig {
        let mut config = StreamsConfig::new(&self.application_id, bootstrap);
        if let Some(dir) = &self.state_dir {
            config = config.state_dir(dir);
        }
        if self.at_least_once {
            config = config.processing_guarantee(ProcessingGuarantee::AtLeastOnce);
        }
        for (k, v) in &self.properties {
            config = config.set(k, v);
        }
        if let Some(address) = self.http {
            config = config.http_endpoint(address);
        }
        config
    }
}

/// Logs to stderr (`RUST_LOG` filters; default `info`), so that skipped and dead-lettered
/// records show up.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Prints the topology, its Mermaid form included.
pub fn describe(topology: &Topology) {
    println!("{}", topology.describe());
    println!("{}", topology.describe().to_mermaid());
}

/// Creates each of `topics` that is missing, with 4 partitions; an existing topic is used as
/// it is.
pub fn create_topics(bootstrap: &str, topics: &[&str]) -> anyhow::Result<()> {
    for t in topics {
        if partition_count(bootstrap, t).is_err() {
            create_topic(bootstrap, t, 4, &[]).with_context(|| format!("create topic {t}"))?;
            println!("created topic {t} (4 partitions)");
        }
    }
    Ok(())
}

/// The event time to begin generated input at, so that input spanning `span` of event time
/// ends a minute before now: whole minutes, in the past. Any Kafka keeps such records (a stock
/// broker deletes records older than its 7-day retention within minutes, and since Kafka 4.0
/// refuses records more than an hour in the future).
pub fn generated_event_times_start(span: Duration) -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_millis() as i64;
    let start = now - span.as_millis() as i64 - 60_000;
    start - start.rem_euclid(60_000)
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Runs `topology` with `config` until Ctrl-C, SIGTERM or `run_for`, then closes it. Every
/// two seconds it prints the application's state, `summary`'s line and the input rate;
/// `summary` returns the input records read so far and the line (which names them).
pub fn run(
    topology: Topology,
    config: StreamsConfig,
    run_for: Option<Duration>,
    summary: impl Fn() -> (u64, String),
) -> anyhow::Result<()> {
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let streams = KafkaStreams::new(topology, config)?;
    streams.start()?;
    if let Some(address) = streams.http_address() {
        println!("HTTP endpoint on {address}: curl {address}/stores lists the stores to query");
    }
    println!("running; Ctrl-C stops");
    let started = Instant::now();
    let mut last = (Instant::now(), 0_u64);
    while !STOP.load(Ordering::SeqCst) && run_for.is_none_or(|d| started.elapsed() < d) {
        std::thread::sleep(Duration::from_millis(200));
        if streams.state() == State::Error {
            bail!("the application failed: {:?}", streams.error());
        }
        if last.0.elapsed() >= Duration::from_secs(2) {
            let (n, line) = summary();
            let rate = n.saturating_sub(last.1) as f64 / last.0.elapsed().as_secs_f64();
            println!("[{:?}] {line}, {rate:.0}/s", streams.state());
            last = (Instant::now(), n);
        }
    }
    println!("closing");
    streams.close(Duration::from_secs(60));
    let (_, line) = summary();
    println!("closed: {line}");
    Ok(())
}
