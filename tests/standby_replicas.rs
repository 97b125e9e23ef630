//! Standby replicas (issue 14, item 3), against the real broker: two instances of the counting
//! application with `num_standby_replicas = 1` count 700,000 records; one instance is
//! SIGKILLed once each count task has 200,000 changelog records (counts out); the
//! survivor takes its tasks over, restores at most 5 % of any changelog partition (the test
//! prints the figures), counts the rest on from the standby's state, and the output is exactly
//! once.

// The feeder is the soak's; this file writes its input at once.
#[allow(dead_code)]
mod counting_app;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kstreams::core::config::RestoreListener;
use kstreams::core::{KafkaStreams, State, StreamsConfig};
use rdkafka::producer::{BaseRecord, Producer};
use streams_testkit::child::{child_mode, wait_for_stop_request, ChildProcess};
use streams_testkit::kafka::{
    consume_until, create_topic, idempotent_producer, send_retrying, Isolation,
};
use streams_testkit::{bootstrap_servers, unique};

const LONG: Duration = Duration::from_secs(300);
const GROUPS: usize = 60;
const TEST: &str = "a_survivor_with_a_standby_restores_only_the_changelogs_tail";

/// Prints every finished restoration: `KSTREAMS-RESTORED <store> <partition> <records>`.
struct Print;

impl RestoreListener for Print {
    fn on_restore_end(&self, store: &str, partition: i32, total: u64) {
        println!("KSTREAMS-RESTORED {store} {partition} {total}");
    }
}

/// A child's arguments (`app|input|output|state dir`): the topics, and the configuration both
/// children start from (one replica, quick failover).
fn child_setup(args: &str) -> (String, String, StreamsConfig) {
    streams_testkit::init_tracing();
    let [app, input, output, dir] = args.split('|').collect::<Vec<_>>()[..] else {
        panic!("bad child arguments {args}");
    };
    let config = StreamsConfig::new(app, &bootstrap_servers())
        .state_dir(dir)
        .num_standby_replicas(1)
        .transaction_timeout(Duration::from_secs(10))
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "1000");
    (input.to_string(), output.to_string(), config)
}

fn run_child(args: &str) {
    let (input, output, config) = child_setup(args);
    let (input, output) = (input.as_str(), output.as_str());
    let config = config
        // Every count is an output record, for the exactly-once check.
        .cache_max_bytes(0)
        .restore_listener(Print);
    let streams = KafkaStreams::new(counting_app::topology(input, output, GROUPS), config).unwrap();
    streams.set_state_listener(|_, new| println!("KSTREAMS-STATE {new:?}"));
    streams.start().unwrap();
    assert!(streams.wait_for(|s| s == State::Running, LONG));
    println!("KSTREAMS-APP-RUNNING");
    wait_for_stop_request();
    streams.close(Duration::from_secs(60));
}

fn spawn(label: &str, app: &str, input: &str, output: &str) -> ChildProcess {
    let dir = std::env::temp_dir().join(unique("standby-state"));
    let log = std::env::var("RUST_LOG").unwrap_or_else(|_| "streams_core=info".into());
    let mut child = ChildProcess::spawn(
        label,
        TEST,
        &format!("{app}|{input}|{output}|{}", dir.display()),
        &[
            ("KAFKA_BOOTSTRAP_SERVERS", bootstrap_servers().as_str()),
            ("RUST_LOG", log.as_str()),
        ],
    )
    .unwrap();
    child.wait_for_line("KSTREAMS-APP-RUNNING", LONG).unwrap();
    child
}

#[test]
fn a_survivor_with_a_standby_restores_only_the_changelogs_tail() {
    if let Some(args) = child_mode() {
        return run_child(&args);
    }
    const N: u64 = 700_000;
    // Killed once each count task has this many changelog records.
    const AT_KILL: usize = 200_000;
    let bootstrap = bootstrap_servers();
    let (input, output, app) = (unique("sb-in"), unique("sb-out"), unique("sb-app"));
    create_topic(&bootstrap, &input, 2, &[]).unwrap();
    create_topic(&bootstrap, &output, 2, &[]).unwrap();
    let mut a = spawn("A", &app, &input, &output);
    let mut b = spawn("B", &app, &input, &output);

    let started = Instant::now();
    let p = idempotent_producer(&bootstrap).unwrap();
    for n in 0..N {
        let (key, value) = (format!("u{}", n % 101), n.to_string());
        send_retrying(&p, BaseRecord::to(&input).key(&key).payload(&value)).unwrap();
    }
    p.flush(Duration::from_secs(60)).unwrap();
    // The kill comes while the input is being counted.
    // (Counted as records arrive: the condition is asked after each one.)
    let (mut seen, mut per) = (0, [0_usize; 2]);
    let counted = consume_until(&bootstrap, &output, Isolation::ReadCommitted, LONG, |got| {
        for r in &got[seen..] {
            per[r.partition as usize] += 1;
        }
        seen = got.len();
        per[0] >= AT_KILL && per[1] >= AT_KILL
    })
    .unwrap();
    // What B printed so far (its own start and the first rebalance) is not the takeover's.
    b.unread_lines(usize::MAX);
    a.kill().unwrap();
    let killed = Instant::now();
    // Each count is one output record and one changelog record, written in one transaction,
    // in the same partition (both topics are keyed by group with two partitions): the counts
    // read so far are a lower bound of each changelog partition's committed records at the
    // kill. (nisshi's ListOffsets can be stale, docs/BROKER.md.)
    let mut sizes: BTreeMap<i32, i64> = BTreeMap::new();
    for r in &counted {
        *sizes.entry(r.partition).or_default() += 1;
    }
    eprintln!(
        "killed A {:.0} s after the input began; changelog records per partition at least {sizes:?}",
        started.elapsed().as_secs_f64()
    );
    let mut restored: BTreeMap<i32, u64> = BTreeMap::new();
    let mut rebalanced = false;
    loop {
        let line = b.wait_for_line("KSTREAMS-", LONG).unwrap();
        let words: Vec<&str> = line.split_whitespace().collect();
        match words[..] {
            ["KSTREAMS-RESTORED", "counts", partition, total] => {
                *restored.entry(partition.parse().unwrap()).or_default() +=
                    total.parse::<u64>().unwrap();
            }
            ["KSTREAMS-STATE", "Rebalancing"] => rebalanced = true,
            ["KSTREAMS-STATE", "Running"] if rebalanced => break,
            _ => {}
        }
    }
    eprintln!(
        "the survivor ran every task {:.1} s after the kill",
        killed.elapsed().as_secs_f64()
    );
    for (partition, size) in &sizes {
        let got = *restored
            .get(partition)
            .unwrap_or_else(|| panic!("no restoration of partition {partition} after the kill"));
        let share = got as f64 / *size as f64 * 100.0;
        eprintln!(
            "changelog partition {partition}: {size} records, {got} restored by the survivor ({share:.2} %)"
        );
        assert!(
            *size >= AT_KILL as i64,
            "partition {partition}: {size} records"
        );
        assert!(
            share <= 5.0,
            "partition {partition}: {got} of {size} restored ({share:.2} %), more than 5 %"
        );
    }
    // The survivor counted on from the standby's state: every count exactly once.
    consume_until(&bootstrap, &output, Isolation::ReadCommitted, LONG, |got| {
        got.len() as u64 >= N
    })
    .unwrap();
    counting_app::check(&bootstrap, &output, N, GROUPS).assert_exact();
    b.stop(Duration::from_secs(60)).unwrap();
}

/// Issue 27, finding 14: a task whose only state is a table read from its source topic (the
/// source topic is its changelog, `Materialized::reuse_source_topic_as_changelog`) gets a
/// standby too. Two instances in this process, one replica: each instance keeps the other's
/// task as a standby. Before, standbys were chosen by changelog topic configs, which a
/// source-topic store has none of: no standby at all.
#[test]
fn a_table_built_on_its_source_topic_gets_a_standby() {
    use kstreams::core::serde::Utf8;
    use kstreams::dsl::{Materialized, StreamsBuilder};
    let bootstrap = bootstrap_servers();
    let (input, app) = (unique("st-in"), unique("st-app"));
    create_topic(&bootstrap, &input, 2, &[("cleanup.policy", "compact")]).unwrap();
    let instance = || {
        let builder = StreamsBuilder::new();
        builder.table::<String, String>(
            &input,
            Materialized::with(Utf8)
                .named("t")
                .reuse_source_topic_as_changelog(),
        );
        let config = StreamsConfig::new(&app, &bootstrap)
            .state_dir(std::env::temp_dir().join(unique("st-state")))
            .num_standby_replicas(1);
        let streams = KafkaStreams::new(builder.build().unwrap(), config).unwrap();
        streams.start().unwrap();
        streams
    };
    let (a, b) = (instance(), instance());
    let deadline = Instant::now() + LONG;
    loop {
        let running = [&a, &b].iter().all(|s| s.state() == State::Running);
        let (sa, sb) = (a.standby_tasks(), b.standby_tasks());
        if running && !sa.is_empty() && !sb.is_empty() {
            // Each keeps a standby of a task the other runs.
            assert!(sa.iter().all(|t| b.assigned_tasks().contains(t)), "{sa:?}");
            assert!(sb.iter().all(|t| a.assigned_tasks().contains(t)), "{sb:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no standby: a {sa:?} (runs {:?}), b {sb:?} (runs {:?})",
            a.assigned_tasks(),
            b.assigned_tasks()
        );
        // Polling the instances' published standbys (placed once a second).
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(a.close(Duration::from_secs(60)) && b.close(Duration::from_secs(60)));
}

const CRASH_TEST: &str = "a_standby_directory_survives_a_crash_and_a_restart";

/// The child of the crash test: the counting application with one replica and a 2-second
/// state cleanup delay; prints `KSTREAMS-STANDBY <task>` once it keeps a standby.
fn crash_child(args: &str) {
    let (input, output, config) = child_setup(args);
    let (input, output) = (input.as_str(), output.as_str());
    let config = config.state_cleanup_delay(Duration::from_secs(2));
    let streams = KafkaStreams::new(counting_app::topology(input, output, GROUPS), config).unwrap();
    streams.start().unwrap();
    println!("KSTREAMS-STARTED");
    let deadline = Instant::now() + LONG;
    let standby = loop {
        if let Some(t) = streams.standby_tasks().first() {
            break t.to_string();
        }
        assert!(Instant::now() < deadline, "no standby task");
        // Polling the published standbys (placed once a second).
        std::thread::sleep(Duration::from_millis(100));
    };
    println!("KSTREAMS-STANDBY {standby}");
    wait_for_stop_request();
    streams.close(Duration::from_secs(60));
}

/// Issue 27, finding 11: a standby's directory is marked owned while it is open, so that a
/// restart after a crash (the case standbys are for) keeps it. Instance A runs here, B in a
/// child process with a 2-second state cleanup delay; B keeps a standby for 5 s, is SIGKILLed,
/// and starts again on the same state directory: the standby's directory is still there. Before,
/// its marker was written at open only, and the restart's cleanup deleted it.
#[test]
fn a_standby_directory_survives_a_crash_and_a_restart() {
    if let Some(args) = child_mode() {
        return crash_child(&args);
    }
    let bootstrap = bootstrap_servers();
    let (input, output, app) = (unique("sc-in"), unique("sc-out"), unique("sc-app"));
    create_topic(&bootstrap, &input, 2, &[]).unwrap();
    create_topic(&bootstrap, &output, 2, &[]).unwrap();
    // Some state, so that each task's store has a changelog to follow.
    let p = idempotent_producer(&bootstrap).unwrap();
    for i in 0..200 {
        let (key, value) = (format!("u{i}"), i.to_string());
        send_retrying(&p, BaseRecord::to(&input).key(&key).payload(&value)).unwrap();
    }
    p.flush(Duration::from_secs(30)).unwrap();
    let a = KafkaStreams::new(
        counting_app::topology(&input, &output, GROUPS),
        StreamsConfig::new(&app, &bootstrap)
            .state_dir(std::env::temp_dir().join(unique("sc-a")))
            .num_standby_replicas(1)
            .set("session.timeout.ms", "6000")
            .set("heartbeat.interval.ms", "1000"),
    )
    .unwrap();
    a.start().unwrap();
    let dir = std::env::temp_dir().join(unique("sc-b"));
    let spawn_b = || {
        ChildProcess::spawn(
            "b",
            CRASH_TEST,
            &format!("{app}|{input}|{output}|{}", dir.display()),
            &[("KAFKA_BOOTSTRAP_SERVERS", bootstrap.as_str())],
        )
        .unwrap()
    };
    let mut b = spawn_b();
    let line = b.wait_for_line("KSTREAMS-STANDBY", LONG).unwrap();
    let task = line.split_whitespace().last().unwrap().to_string();
    let task_dir = dir.join(&app).join(&task);
    assert!(task_dir.is_dir(), "{}", task_dir.display());
    // The standby stays open longer than the cleanup delay (the time a marker written only
    // at open would be old enough to go).
    std::thread::sleep(Duration::from_secs(5));
    b.kill().unwrap();
    let mut b = spawn_b();
    b.wait_for_line("KSTREAMS-STARTED", LONG).unwrap();
    assert!(
        task_dir.is_dir(),
        "the standby's directory {} was deleted at the restart",
        task_dir.display()
    );
    b.stop(LONG).unwrap();
    assert!(a.close(Duration::from_secs(60)));
}

/// Records each restoration of instance B: (partition, from, restored).
#[derive(Default, Clone)]
struct Takeovers(std::sync::Arc<std::sync::Mutex<Vec<(i32, i64, u64)>>>);

impl RestoreListener for Takeovers {
    fn on_restore_start(&self, _store: &str, partition: i32, from: i64) {
        self.0.lock().unwrap().push((partition, from, 0));
    }
    fn on_restore_end(&self, _store: &str, partition: i32, total: u64) {
        let mut v = self.0.lock().unwrap();
        if let Some(e) = v.iter_mut().rev().find(|e| e.0 == partition) {
            e.2 = total;
        }
    }
}

/// Issue 27, finding 5: an instance with two standby tasks follows both changelogs while their
/// active tasks write steadily. Four partitions, two instances, one replica: B keeps two
/// standbys of A's tasks under a steady load; when A stops, B restores only each changelog's
/// tail (at most 5 % of it). Before, the standby thread read one changelog until a pause or an
/// end-of-partition event that never came under load: the other one stayed behind.
#[test]
fn every_standby_follows_its_changelog_under_steady_load() {
    let bootstrap = bootstrap_servers();
    let (input, output, app) = (unique("sl-in"), unique("sl-out"), unique("sl-app"));
    create_topic(&bootstrap, &input, 4, &[]).unwrap();
    create_topic(&bootstrap, &output, 4, &[]).unwrap();
    let instance = |takeovers: Option<Takeovers>| {
        let mut config = StreamsConfig::new(&app, &bootstrap)
            .state_dir(std::env::temp_dir().join(unique("sl-state")))
            .num_standby_replicas(1);
        if let Some(t) = takeovers {
            config = config.restore_listener(t);
        }
        let streams =
            KafkaStreams::new(counting_app::topology(&input, &output, GROUPS), config).unwrap();
        streams.start().unwrap();
        streams
    };
    let a = instance(None);
    let takeovers = Takeovers::default();
    let b = instance(Some(takeovers.clone()));
    let deadline = Instant::now() + LONG;
    while !(a.state() == State::Running
        && b.state() == State::Running
        && b.standby_tasks().len() == 2)
    {
        assert!(
            Instant::now() < deadline,
            "B never keeps two standbys: {:?}",
            b.standby_tasks()
        );
        // Polling the instances' state and published standbys.
        std::thread::sleep(Duration::from_millis(200));
    }
    let standbys = b.standby_tasks();
    // A steady load for a while, B's standbys following A's tasks.
    // As fast as one producer writes, so that the active tasks' changelogs never pause.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let feeder = {
        let (bootstrap, input, stop) = (bootstrap.clone(), input.clone(), stop.clone());
        std::thread::spawn(move || {
            let p = idempotent_producer(&bootstrap).unwrap();
            let mut n = 0_u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for _ in 0..1_000 {
                    let (key, value) = (format!("u{}", n % 1_000), n.to_string());
                    send_retrying(&p, BaseRecord::to(&input).key(&key).payload(&value)).unwrap();
                    n += 1;
                }
                p.flush(Duration::from_secs(30)).unwrap();
            }
            n
        })
    };
    let loaded = Instant::now();
    while loaded.elapsed() < Duration::from_secs(20) {
        assert_ne!(a.state(), State::Error);
        // The load runs for its time: the condition under test is its duration.
        std::thread::sleep(Duration::from_millis(500));
    }
    takeovers.0.lock().unwrap().clear();
    assert!(a.close(LONG));
    let deadline = Instant::now() + LONG;
    while !standbys.iter().all(|t| b.assigned_tasks().contains(t)) || b.state() != State::Running {
        assert!(Instant::now() < deadline, "B never takes A's tasks over");
        // Polling B's tasks and state.
        std::thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let total = feeder.join().unwrap();
    let restored = takeovers.0.lock().unwrap().clone();
    eprintln!("{total} records; B's takeovers (partition, from, restored): {restored:?}");
    for t in &standbys {
        let (_, from, n) = restored
            .iter()
            .rev()
            .find(|(p, _, _)| *p == t.partition)
            .copied()
            .unwrap_or_else(|| panic!("no restoration of {t}: {restored:?}"));
        let size = (from as u64 + n).max(1);
        assert!(
            n <= 100 || n * 20 <= size,
            "task {t}: restored {n} of a changelog of about {size}: its standby was behind"
        );
    }
    assert!(b.close(LONG));
}
