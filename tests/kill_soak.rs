//! The kill soak (issue 15, item 2): two instances of an exactly-once application with a
//! repartition topic and a state store run over a continuous input stream; a random instance
//! is SIGKILLed at random points, now and then with its state directory deleted too, and
//! restarted; at the end the whole output, read `read_committed`, is checked against an
//! oracle: every key's counts 1, 2, …, n each exactly once (no duplicate, nothing missing).
//!
//! The test starts a broker of its own (the project's, as the outage tests do) and every client,
//! the instances' and the checker's, reaches it through the test proxy: in front of Apache
//! Kafka the proxy is transparent (it forwards and rewrites addresses, nothing else), so the
//! soak also shows that the proxy the outage tests use changes nothing of the broker's
//! behaviour.
//!
//! Sized for CI (10 kills) by default; `scripts/soak.sh` runs it bigger (100 kills by default),
//! its size from the environment (`KSTREAMS_SOAK_KILLS`, `KSTREAMS_SOAK_RATE` records/s). With
//! `KSTREAMS_SOAK_LOG_DIR` set, each instance logs there (`RUST_LOG`, default info), and a
//! failure also reports input records that went through the repartition topic twice.
//!
//! The application: input keyed by user (`u<n>`), re-keyed by the value's group (`g<m>`), so
//! the records go through a repartition topic, then counted per group in a RocksDB store with a
//! changelog, no record cache: every count is an output record.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kstreams::core::config::RestoreListener;
use kstreams::core::{KafkaStreams, StreamsConfig};
use rand::Rng;
use streams_testkit::child::{child_mode, wait_for_stop_request, ChildProcess};
use streams_testkit::kafka::create_topic;
use streams_testkit::{bootstrap_servers, unique, BrokerOptions, ManagedBroker};

mod counting_app;

const GROUPS: usize = 40;
const PARTITIONS: i32 = 4;
const LONG: Duration = Duration::from_secs(180);
const TEST: &str = "instances_killed_over_and_over_keep_the_output_exactly_once";

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Records restored by this instance so far.
#[derive(Clone, Default)]
struct Restored(Arc<AtomicU64>);

impl RestoreListener for Restored {
    fn on_restore_end(&self, _store: &str, _partition: i32, total: u64) {
        self.0.fetch_add(total, Ordering::Relaxed);
    }
}

/// The child: one instance until its stdin closes (or it is killed).
fn run_instance(args: &str) {
    let parts: Vec<&str> = args.split('|').collect();
    let [app, input, output, dir, instance] = parts[..] else {
        panic!("bad child arguments {args}");
    };
    if let Ok(dir) = std::env::var("KSTREAMS_SOAK_LOG_DIR") {
        // Each instance's log, across its restarts, for a failure's post-mortem.
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(std::path::Path::new(&dir).join(format!("{instance}.log")))
            .unwrap();
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .with_writer(std::sync::Mutex::new(file))
            .init();
        tracing::info!(pid = std::process::id(), "instance started");
    }
    let restored = Restored::default();
    let config = StreamsConfig::new(app, &bootstrap_servers())
        .state_dir(dir)
        // A fixed identity, kept when the state directory is lost (a machine that comes back
        // with an empty disk): the restarted instance's transactional ids fence and abort the
        // transactions its killed self left open at once. (With a new identity, only the
        // broker's transaction timeout ends them.)
        .instance_id(instance)
        .cache_max_bytes(0)
        .restore_listener(restored.clone())
        .transaction_timeout(Duration::from_secs(10))
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "1000");
    let streams = KafkaStreams::new(counting_app::topology(input, output, GROUPS), config).unwrap();
    let r = restored.clone();
    streams.set_state_listener(move |_, new| {
        println!(
            "KSTREAMS-STATE {new:?} restored={}",
            r.0.load(Ordering::Relaxed)
        );
    });
    streams.start().unwrap();
    wait_for_stop_request();
    let closed = streams.close(LONG);
    println!("KSTREAMS-CLOSED clean={closed}");
}

#[test]
fn instances_killed_over_and_over_keep_the_output_exactly_once() {
    if let Some(args) = child_mode() {
        return run_instance(&args);
    }
    let kills = env_or("KSTREAMS_SOAK_KILLS", 10) as usize;
    let rate = env_or("KSTREAMS_SOAK_RATE", 300);
    let broker = ManagedBroker::start(BrokerOptions {
        fault_proxy: true,
        ..Default::default()
    })
    .unwrap();
    let bootstrap = broker.bootstrap_servers();
    let (input, output, app) = (unique("soak-in"), unique("soak-out"), unique("soak-app"));
    create_topic(&bootstrap, &input, PARTITIONS, &[]).unwrap();
    create_topic(&bootstrap, &output, PARTITIONS, &[]).unwrap();
    let dirs: Vec<std::path::PathBuf> = (0..2)
        .map(|i| std::env::temp_dir().join(unique(&format!("soak-state-{i}"))))
        .collect();
    let args = |i: usize| {
        format!(
            "{app}|{input}|{output}|{}|{app}-instance-{i}",
            dirs[i].display()
        )
    };
    let spawn = |i: usize| {
        // The children use this test's broker, through the proxy.
        let mut env = vec![("KAFKA_BOOTSTRAP_SERVERS", bootstrap.clone())];
        if let Ok(dir) = std::env::var("KSTREAMS_SOAK_LOG_DIR") {
            env.push(("KSTREAMS_SOAK_LOG_DIR", dir));
        }
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let mut c = ChildProcess::spawn(&format!("instance-{i}"), TEST, &args(i), &env).unwrap();
        let line = c.wait_for_line("KSTREAMS-STATE Running", LONG).unwrap();
        (c, line)
    };

    // The continuous input: record number n, keyed by user, at `rate` records/s.
    let feeder = counting_app::Feeder::start(&bootstrap, &input, rate, 1000);

    let mut instances = [spawn(0).0, spawn(1).0];
    let mut rng = rand::rng();
    let (mut restored_per_restart, mut takeovers, mut wiped) = (vec![], vec![], 0);
    let started = Instant::now();
    for kill in 1..=kills {
        // A random point: 1 to 4 s of processing.
        std::thread::sleep(Duration::from_millis(rng.random_range(1000..4000)));
        let victim = rng.random_range(0..2);
        let at_kill = counting_app::committed(&bootstrap, &app, &input);
        let killed_at = Instant::now();
        instances[victim].kill().unwrap();
        let wipe = rng.random_bool(0.3);
        if wipe {
            std::fs::remove_dir_all(&dirs[victim]).ok();
            wiped += 1;
        }
        // Restarted at once, as a supervisor would; then the takeover: every partition's
        // committed offset moves past where it was.
        let (child, line) = spawn(victim);
        instances[victim] = child;
        loop {
            let now = counting_app::committed(&bootstrap, &app, &input);
            if now.len() == at_kill.len() && now.iter().zip(&at_kill).all(|(n, a)| n > a) {
                break;
            }
            assert!(killed_at.elapsed() < LONG, "no takeover after kill {kill}");
            std::thread::sleep(Duration::from_millis(100)); // polling the group's offsets
        }
        let takeover = killed_at.elapsed();
        takeovers.push(takeover);
        let restored: u64 = line
            .split("restored=")
            .nth(1)
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0);
        restored_per_restart.push(restored);
        eprintln!(
            "kill {kill}: instance {victim}{}, restarted (restored {restored} records), all partitions moving again {takeover:?} after the kill",
            if wipe { " (state directory deleted)" } else { "" }
        );
    }
    let total = feeder.stop();
    counting_app::wait_consumed(&bootstrap, &app, &input, total, LONG);
    counting_app::wait_counted(&bootstrap, &output, total, GROUPS, LONG);
    for (i, c) in instances.iter_mut().enumerate() {
        assert!(
            c.stop(LONG).unwrap().success(),
            "instance {i} closes cleanly"
        );
    }
    let check = counting_app::check(&bootstrap, &output, total, GROUPS);
    let mut takeover_secs: Vec<f64> = takeovers.iter().map(Duration::as_secs_f64).collect();
    takeover_secs.sort_by(f64::total_cmp);
    eprintln!(
        "kill soak: {kills} kills ({wiped} with the state directory deleted) over {:?}, {total} \
         records, {} output records, duplicates {}, missing {}, keys counted beyond their \
         records {:?}; restored per restart {restored_per_restart:?}; takeover median {:.1} s, \
         max {:.1} s",
        started.elapsed(),
        check.records,
        check.duplicates,
        check.missing,
        check.beyond,
        takeover_secs[takeover_secs.len() / 2],
        takeover_secs[takeover_secs.len() - 1]
    );
    if !check.exact() {
        let (repeated, n) = counting_app::repeated_in_repartition(&bootstrap, &app, 20);
        eprintln!(
            "input records in the repartition topic more than once: {n}; the first: {repeated:#?}"
        );
    }
    check.assert_exact();
}
