//! kstreams against Kafka Streams, side by side on one broker (issue 29): the kstreams side of
//! each workload, and the driver that runs both contenders and prints the table.
//!
//! ```text
//! scripts/compare.sh [RECORDS ROUNDS WORKLOADS]     # builds both sides, starts a broker
//! ```
//!
//! Modes of this binary (the script calls the second):
//! - `run WORKLOAD BOOTSTRAP INPUT OUTPUT APPLICATION_ID STATE_DIR COMMIT_INTERVAL_MS`: runs one
//!   workload until SIGTERM, with the same arguments as the Java side
//!   (`benches/compare/src/main/java/kstreams/compare/Workload.java`).
//! - `drive RECORDS ROUNDS WORKLOADS JAVA_CLASSPATH`: for each workload (comma-separated) and
//!   round, fills a fresh 4-partition input topic with RECORDS records (100-byte values, 1,000
//!   keys, timestamps of the moment they are written), then runs each contender as a process of
//!   its own, in alternating order, each with a fresh application id, exactly-once v2 and a
//!   commit every 100 ms, until its group has committed the whole input; then stops it
//!   (SIGTERM). Measured from outside: start-up (process start to the group's first committed
//!   offset), steady-state throughput (from that first commit to the commit covering the whole
//!   input), CPU seconds per million records over that steady part (from `/proc/<pid>/stat`)
//!   and the peak resident memory (`VmHWM`). The broker is `KAFKA_BOOTSTRAP_SERVERS`. Then it
//!   reads each contender's output (read_committed) and checks the two agree, round by round,
//!   on what is deterministic: `map`, every record (as a multiset); `count` and
//!   `window-count`, the last value of each key (or key and window: the updates before it
//!   depend on each side's record cache); `window-count-final` and `join`, every record.
//!
//! Workloads: `map` (each value with "!" appended), `count` (a count per key), `window-count`
//! (a count per key in 10-second tumbling windows, every update), `window-count-final` (the
//! same, final results only), `join` (each record joined with the row of its key in a table
//! of 1,000 rows, topic `INPUT-table`, written before the input; a table with a changelog of
//! its own on both sides).
//!
//! Two more names in WORKLOADS measure restarts of `count` instead of throughput (not part of
//! `all`), each with three contenders: kstreams, Kafka Streams with its default stores, and
//! Kafka Streams with KIP-892's transactional stores (`enable.transactional.statestores=true`).
//! Each contender prints, from a restore listener, one line per restored changelog partition
//! (`restored STORE PARTITION RECORDS`) on stdout, which the driver sums.
//! - `recovery`: RECORDS records over 1,000 keys; each contender runs until its group has
//!   committed half of them, is killed (SIGKILL) and is started again at once with the same
//!   application id and state directory. Measured: restart to the group's assignment (the group
//!   stable with none of the killed process's members; it waits for the dead member's session
//!   timeout, 45 s on both sides), assignment to the committed offsets moving past where they
//!   were at the kill, and the records restored; then, once the whole input is committed, the
//!   last count of each key must equal the number of input records with that key.
//! - `restore-startup`: RECORDS records with distinct keys (a changelog of as many records);
//!   each contender counts them all (start-up with an empty changelog: process start to the
//!   first commit), is stopped, and once its member has left the group a new instance with the
//!   same application id and an empty state directory starts after 100 more input records
//!   were written. Measured: process start to the commit covering them, and the records
//!   restored; the counts are checked as above.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kstreams::core::config::RestoreListener;
use kstreams::core::serde::{BigEndian, Utf8};
use kstreams::core::{KafkaStreams, ProcessingGuarantee, State, StreamsConfig};
use kstreams::dsl::{Joined, Materialized, Produced, StreamsBuilder, TimeWindows};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use streams_testkit::kafka::{client_config, create_topic, read_to_end, Isolation};
use streams_testkit::{bootstrap_servers, unique};

mod support;
use support::{committed_total, fill};

const PARTITIONS: i32 = 4;
const KEYS: usize = 1_000;
const COMMIT_INTERVAL_MS: u64 = 100;
const WORKLOADS: [&str; 5] = ["map", "count", "window-count", "window-count-final", "join"];
/// The restart measurements, named in WORKLOADS like workloads.
const RECOVERY: &str = "recovery";
const RESTORE_STARTUP: &str = "restore-startup";
/// The new input records written before the stateless restart of `restore-startup`.
const EXTRA: usize = 100;
/// How long a contender may commit nothing new before its run is given up.
const STALL: Duration = Duration::from_secs(120);

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    match args.first().map(String::as_str) {
        Some("run") if args.len() == 8 => run(&args[1..]),
        Some("drive") if args.len() == 5 => drive(&args[1..]),
        _ => {
            eprintln!(
                "usage: compare_workload run WORKLOAD BOOTSTRAP INPUT OUTPUT APPLICATION_ID \
                 STATE_DIR COMMIT_INTERVAL_MS\n       compare_workload drive RECORDS ROUNDS \
                 WORKLOADS JAVA_CLASSPATH"
            );
            std::process::exit(2);
        }
    }
}

/// The table topic of the `join` workload for input topic `input`.
fn table_of(input: &str) -> String {
    format!("{input}-table")
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Runs one workload until SIGTERM or SIGINT.
fn run(args: &[String]) {
    let [workload, bootstrap, input, output, app, state_dir, commit_ms] = args else {
        unreachable!("checked by main");
    };
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let builder = StreamsBuilder::new();
    let stream = builder.stream::<String, String>(input);
    let size = Duration::from_secs(10);
    match workload.as_str() {
        "map" => stream.map_values(|v| v + "!").to(output),
        "count" => stream
            .group_by_key()
            .count()
            .to_stream()
            .to_with(output, Produced::with(Utf8, BigEndian)),
        "window-count" => stream
            .group_by_key()
            .windowed_by(TimeWindows::of_size_with_no_grace(size))
            .count()
            .to(output),
        "window-count-final" => stream
            .group_by_key()
            .windowed_by(TimeWindows::of_size_with_no_grace(size))
            .emit_final()
            .count()
            .to(output),
        "join" => {
            let table = builder.table::<String, String>(&table_of(input), Materialized::with(Utf8));
            stream
                .join_table(&table, |v, t| format!("{v}:{t}"), Joined::default())
                .to(output)
        }
        other => {
            eprintln!("unknown workload {other}");
            std::process::exit(2);
        }
    }
    let commit: u64 = commit_ms.parse().expect("COMMIT_INTERVAL_MS is a number");
    let config = StreamsConfig::new(app, bootstrap)
        .processing_guarantee(ProcessingGuarantee::ExactlyOnce)
        .commit_interval(Duration::from_millis(commit))
        .state_dir(state_dir)
        .restore_listener(PrintRestores);
    let streams = KafkaStreams::new(builder.build().unwrap(), config).unwrap();
    streams.start().unwrap();
    while !STOP.load(Ordering::SeqCst) {
        if streams.state() == State::Error {
            eprintln!("the application failed: {:?}", streams.error());
            std::process::exit(1);
        }
        std::thread::sleep(Duration::from_millis(100)); // watching for the stop signal
    }
    streams.close(Duration::from_secs(30));
}

/// Prints the end of every store restoration on stdout, `restored STORE PARTITION RECORDS`, as
/// the Java side does, for the driver to count the records restored.
struct PrintRestores;

impl RestoreListener for PrintRestores {
    fn on_restore_end(&self, store: &str, partition: i32, total: u64) {
        println!("restored {store} {partition} {total}");
    }
}

/// What one run of one contender measured.
#[derive(Clone, Debug)]
struct Figures {
    /// Process start to the group's first committed offset, seconds.
    startup: f64,
    /// Records per second from the first commit to the commit covering the input.
    rate: f64,
    /// CPU seconds per million records over that steady part.
    cpu_per_million: f64,
    /// Peak resident memory, MiB.
    peak_rss_mib: f64,
    /// What of the output is deterministic, as sorted (key, value) pairs.
    output: Vec<(Vec<u8>, Vec<u8>)>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Contender {
    Kstreams,
    KafkaStreams,
    /// Kafka Streams with KIP-892's transactional state stores (restart measurements only).
    KafkaStreamsTransactional,
}

/// The contenders of the restart measurements.
const RESTARTERS: [Contender; 3] = [
    Contender::Kstreams,
    Contender::KafkaStreams,
    Contender::KafkaStreamsTransactional,
];

impl Contender {
    fn name(self) -> &'static str {
        match self {
            Contender::Kstreams => "kstreams",
            Contender::KafkaStreams => "Kafka Streams",
            Contender::KafkaStreamsTransactional => "Kafka Streams, transactional stores",
        }
    }

    /// Starts this contender's process on the workload arguments `args` (those of `run` after
    /// its name).
    fn spawn(self, classpath: &str, args: &[String], stdout: Stdio) -> Child {
        match self {
            Contender::Kstreams => Command::new(std::env::current_exe().unwrap())
                .arg("run")
                .args(args)
                .stdout(stdout)
                .spawn()
                .unwrap(),
            Contender::KafkaStreams | Contender::KafkaStreamsTransactional => {
                let mut java = Command::new("java");
                java.args(["-cp", classpath, "kstreams.compare.Workload"])
                    .args(args);
                if self == Contender::KafkaStreamsTransactional {
                    java.arg("enable.transactional.statestores=true");
                }
                java.stdout(stdout).stderr(Stdio::null()).spawn().unwrap()
            }
        }
    }
}

fn drive(args: &[String]) {
    let [records, rounds, workloads, classpath] = args else {
        unreachable!("checked by main");
    };
    let records: usize = records.parse().expect("RECORDS is a number");
    let rounds: usize = rounds.parse().expect("ROUNDS is a number");
    let workloads: Vec<&str> = if workloads == "all" {
        WORKLOADS.to_vec()
    } else {
        workloads.split(',').collect()
    };
    let bootstrap = bootstrap_servers();
    let (restarts, workloads): (Vec<&str>, Vec<&str>) = workloads
        .into_iter()
        .partition(|w| [RECOVERY, RESTORE_STARTUP].contains(w));
    if !workloads.is_empty() {
        drive_throughput(&bootstrap, records, rounds, &workloads, classpath);
    }
    for restart in restarts {
        if restart == RECOVERY {
            drive_recovery(&bootstrap, records, rounds, classpath);
        } else {
            drive_restore_startup(&bootstrap, records, rounds, classpath);
        }
    }
}

/// The throughput rounds of the ordinary workloads, and their table.
fn drive_throughput(
    bootstrap: &str,
    records: usize,
    rounds: usize,
    workloads: &[&str],
    classpath: &str,
) {
    println!(
        "compare: {records} records of 100 bytes over {KEYS} keys, {PARTITIONS} partitions, \
         exactly-once v2, commit every {COMMIT_INTERVAL_MS} ms, {rounds} rounds, broker \
         {bootstrap}"
    );
    let mut table = vec![];
    for workload in workloads {
        let mut ours = vec![];
        let mut theirs = vec![];
        let mut agreed = (0, 0);
        for round in 0..rounds {
            let input = unique(&format!("compare-{workload}-in"));
            if *workload == "join" {
                // The table first: its records are older than the stream's, so both sides
                // read them before the stream records that join them.
                let table = table_of(&input);
                create_topic(bootstrap, &table, PARTITIONS, &[]).unwrap();
                fill(bootstrap, &table, KEYS, |i| format!("key{i:04}"));
            }
            create_topic(bootstrap, &input, PARTITIONS, &[]).unwrap();
            fill(bootstrap, &input, records, |i| {
                format!("key{:04}", i % KEYS)
            });
            let order = if round % 2 == 0 {
                [Contender::Kstreams, Contender::KafkaStreams]
            } else {
                [Contender::KafkaStreams, Contender::Kstreams]
            };
            let mut outputs = vec![];
            for contender in order {
                let figures =
                    run_contender(contender, workload, bootstrap, &input, records, classpath);
                match figures {
                    Some(mut f) => {
                        println!(
                            "{workload} round {round} {contender:?}: start-up {:.2} s, {:.0} \
                             rec/s, {:.1} CPU s per M records, peak RSS {:.0} MiB, {} output \
                             rows compared",
                            f.startup,
                            f.rate,
                            f.cpu_per_million,
                            f.peak_rss_mib,
                            f.output.len()
                        );
                        outputs.push(std::mem::take(&mut f.output));
                        match contender {
                            Contender::Kstreams => ours.push(f),
                            _ => theirs.push(f),
                        }
                    }
                    None => println!("{workload} round {round} {contender:?}: void (stalled)"),
                }
            }
            if let [a, b] = &outputs[..] {
                agreed.1 += 1;
                if a == b {
                    agreed.0 += 1;
                } else {
                    let first = a.iter().zip(b).position(|(x, y)| x != y);
                    println!(
                        "{workload} round {round}: the outputs differ ({} and {} rows; first \
                         difference at row {first:?})",
                        a.len(),
                        b.len()
                    );
                }
            }
        }
        table.push((workload.to_string(), ours, theirs, agreed));
    }
    println!();
    println!("| workload | throughput rec/s (kstreams / Kafka Streams) | **ratio** | CPU s per M records | **ratio** | peak RSS MiB | **ratio** | start-up to first commit, s | **ratio** | outputs equal |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for (workload, ours, theirs, agreed) in table {
        let m = |v: &[Figures], f: fn(&Figures) -> f64| median(v.iter().map(f).collect());
        let cell = |f: fn(&Figures) -> f64, digits: usize| {
            let (a, b) = (m(&ours, f), m(&theirs, f));
            format!("{a:.digits$} / {b:.digits$} | **{:.2}**", a / b)
        };
        println!(
            "| {workload} | {} | {} | {} | {} | {} of {} rounds |",
            cell(|f| f.rate, 0),
            cell(|f| f.cpu_per_million, 1),
            cell(|f| f.peak_rss_mib, 0),
            cell(|f| f.startup, 2),
            agreed.0,
            agreed.1,
        );
    }
    println!(
        "(medians over the rounds; ratio = kstreams / Kafka Streams: above 1 is better for \
         throughput, below 1 better for the others)"
    );
}

/// The arguments of `run` after its name (those of the Java side too).
fn run_args(
    workload: &str,
    bootstrap: &str,
    input: &str,
    output: &str,
    app: &str,
    state: &Path,
) -> Vec<String> {
    vec![
        workload.to_string(),
        bootstrap.to_string(),
        input.to_string(),
        output.to_string(),
        app.to_string(),
        state.display().to_string(),
        COMMIT_INTERVAL_MS.to_string(),
    ]
}

/// Runs `contender` on `workload` over `input` until its group committed all `n` records.
fn run_contender(
    contender: Contender,
    workload: &str,
    bootstrap: &str,
    input: &str,
    n: usize,
    classpath: &str,
) -> Option<Figures> {
    let output = unique(&format!("compare-{workload}-out"));
    create_topic(bootstrap, &output, PARTITIONS, &[]).unwrap();
    let app = unique(&format!("compare-{workload}"));
    let state = std::env::temp_dir().join(unique("compare-state"));
    let args = run_args(workload, bootstrap, input, &output, &app, &state);
    let started = Instant::now();
    let mut child = contender.spawn(classpath, &args, Stdio::null());
    let figures = watch(&mut child, started, bootstrap, &app, input, n);
    stop(&mut child);
    let _ = std::fs::remove_dir_all(&state);
    let mut figures = figures?;
    figures.output = deterministic_output(workload, bootstrap, &output);
    Some(figures)
}

/// Stops `child` with SIGTERM (SIGKILL if it is still running 40 s later) and reaps it;
/// nothing if it has already been reaped.
fn stop(child: &mut Child) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    // SAFETY: a signal to our own child, by its pid.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(40);
    while child.try_wait().ok().flatten().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50)); // waiting for the child to stop
    }
    let _ = child.wait();
}

/// What of `workload`'s output in `topic` both contenders must agree on, sorted.
fn deterministic_output(workload: &str, bootstrap: &str, topic: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    let records = streams_testkit::kafka::read_to_end(
        bootstrap,
        topic,
        streams_testkit::kafka::Isolation::ReadCommitted,
        Duration::from_secs(120),
    )
    .unwrap_or_default();
    let pairs = records
        .into_iter()
        .map(|r| (r.key.unwrap_or_default(), r.value.unwrap_or_default()));
    let mut out: Vec<(Vec<u8>, Vec<u8>)> = match workload {
        // The last value of each key (records of one key are in one partition, in order).
        "count" | "window-count" => pairs
            .collect::<std::collections::HashMap<_, _>>()
            .into_iter()
            .collect(),
        _ => pairs.collect(),
    };
    out.sort();
    out
}

/// Watches `app`'s committed offsets over `input` until they cover `n` records.
fn watch(
    child: &mut Child,
    started: Instant,
    bootstrap: &str,
    app: &str,
    input: &str,
    n: usize,
) -> Option<Figures> {
    let pid = child.id();
    let (mut first, mut seen, mut since) = (None, 0, Instant::now());
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            println!("the contender exited early: {status}");
            return None;
        }
        let done = committed_total(bootstrap, app, input);
        if done > 0 && first.is_none() {
            first = Some((Instant::now(), done, cpu_seconds(pid)));
        }
        if done >= n as i64 {
            let (t0, c0, cpu0) = first?;
            let (secs, cpu) = (t0.elapsed().as_secs_f64(), cpu_seconds(pid) - cpu0);
            let steady = (done - c0).max(1) as f64;
            return Some(Figures {
                startup: (t0 - started).as_secs_f64(),
                rate: steady / secs,
                cpu_per_million: cpu * 1e6 / steady,
                peak_rss_mib: peak_rss_kib(pid) / 1024.0,
                output: vec![],
            });
        }
        if done > seen {
            (seen, since) = (done, Instant::now());
        } else if since.elapsed() > STALL {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20)); // the watcher's polling period
    }
}

/// User and system CPU time of process `pid` so far, seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|v| v.parse::<f64>().ok()))
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks / hz
}

/// Peak resident memory of process `pid`, KiB.
fn peak_rss_kib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

// Restart measurements: recovery after SIGKILL, and start-up from a changelog.

/// A contender's process, stopped (SIGTERM) when dropped unless it has already exited.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        stop(&mut self.0);
    }
}

/// Reads a group's committed offsets on one topic, and its membership, without joining it.
/// The consumer is read_uncommitted, so librdkafka does not ask the broker for stable offsets:
/// the answer comes at once, leaving out the offsets of a transaction still open (a killed
/// contender's), instead of an error after retrying until that transaction ends.
struct GroupProbe {
    consumer: BaseConsumer,
    group: String,
    partitions: TopicPartitionList,
}

impl GroupProbe {
    fn new(bootstrap: &str, group: &str, topic: &str) -> Self {
        let consumer: BaseConsumer = client_config(bootstrap)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_uncommitted")
            .create()
            .unwrap();
        let mut partitions = TopicPartitionList::new();
        for p in 0..PARTITIONS {
            partitions.add_partition(topic, p);
        }
        GroupProbe {
            consumer,
            group: group.to_string(),
            partitions,
        }
    }

    /// The offsets committed, summed over the partitions (`None` while the broker cannot say).
    fn committed(&self) -> Option<i64> {
        let committed = self
            .consumer
            .committed_offsets(self.partitions.clone(), Duration::from_secs(10))
            .ok()?;
        committed
            .elements()
            .iter()
            .map(|e| {
                e.error().ok()?;
                Some(match e.offset() {
                    Offset::Offset(o) => o,
                    _ => 0,
                })
            })
            .sum()
    }

    /// The group's state and the ids of its members (`None` while the broker cannot say).
    fn members(&self) -> Option<(String, Vec<String>)> {
        let list = self
            .consumer
            .fetch_group_list(Some(&self.group), Duration::from_secs(10))
            .ok()?;
        let group = list.groups().first()?;
        let members = group.members().iter().map(|m| m.id().to_string()).collect();
        Some((group.state().to_string(), members))
    }
}

/// Polls `probe` until the group has committed `n` records or more; returns when it first had
/// anything committed, and the committed total at the end. Fails when `child` exits or the
/// committed total does not grow for [`STALL`].
fn wait_for_commits(
    child: &mut Child,
    probe: &GroupProbe,
    n: usize,
) -> Result<(Instant, i64), String> {
    let (mut first, mut seen, mut since) = (None, -1, Instant::now());
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("the contender exited early: {status}"));
        }
        let done = probe.committed().unwrap_or(-1);
        if done > 0 && first.is_none() {
            first = Some(Instant::now());
        }
        if done >= n as i64 {
            return Ok((first.unwrap_or_else(Instant::now), done));
        }
        if done > seen {
            (seen, since) = (done, Instant::now());
        } else if since.elapsed() > STALL {
            return Err(format!(
                "stalled: {seen} of {n} records committed and nothing more for {STALL:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(20)); // the watcher's polling period
    }
}

/// What a contender reported of its store restorations on stdout.
#[derive(Default)]
struct Restores {
    /// Records restored, summed over the changelog partitions whose restoration ended.
    records: u64,
    /// When the last of them ended.
    last_end: Option<Instant>,
}

/// Reads the `restored STORE PARTITION RECORDS` lines of `child`'s stdout until it closes.
fn follow_restores(child: &mut Child) -> JoinHandle<Restores> {
    let stdout = child
        .stdout
        .take()
        .expect("the contender's stdout is piped");
    std::thread::spawn(move || {
        let mut seen = Restores::default();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let words: Vec<&str> = line.split_whitespace().collect();
            if let ["restored", _, _, records] = words[..] {
                if let Ok(n) = records.parse::<u64>() {
                    seen.records += n;
                    seen.last_end = Some(Instant::now());
                }
            }
        }
        seen
    })
}

/// How many records of each key `keys` holds: where `count` must end for each key.
fn counts(keys: impl Iterator<Item = String>) -> HashMap<Vec<u8>, u64> {
    let mut counts = HashMap::new();
    for key in keys {
        *counts.entry(key.into_bytes()).or_default() += 1;
    }
    counts
}

/// Reads `topic` (read_committed) and checks that the last count of each key (8 bytes,
/// big-endian, on both sides) is `expected`'s; returns how many keys it checked, or the first
/// difference.
fn check_counts(
    bootstrap: &str,
    topic: &str,
    expected: &HashMap<Vec<u8>, u64>,
) -> Result<usize, String> {
    let records = read_to_end(
        bootstrap,
        topic,
        Isolation::ReadCommitted,
        Duration::from_secs(300),
    )
    .map_err(|e| format!("reading the output: {e:#}"))?;
    let mut last = HashMap::with_capacity(expected.len());
    for r in records {
        last.insert(r.key.unwrap_or_default(), r.value.unwrap_or_default());
    }
    for (key, want) in expected {
        match last.get(key) {
            Some(v) if v[..] == want.to_be_bytes() => {}
            got => {
                return Err(format!(
                    "key {} ends at {:?}, the input holds {want} records of it",
                    String::from_utf8_lossy(key),
                    got.map(|v| <[u8; 8]>::try_from(&v[..]).map(u64::from_be_bytes))
                ))
            }
        }
    }
    if last.len() != expected.len() {
        return Err(format!(
            "{} keys in the output, {} in the input",
            last.len(),
            expected.len()
        ));
    }
    Ok(last.len())
}

/// Round `round`'s order of the restart contenders (rotating, so that each goes first in turn).
fn restart_order(round: usize) -> [Contender; 3] {
    let mut order = RESTARTERS;
    order.rotate_left(round % RESTARTERS.len());
    order
}

fn index(contender: Contender) -> usize {
    RESTARTERS.iter().position(|&c| c == contender).unwrap()
}

fn secs(from: Instant, to: Instant) -> f64 {
    to.saturating_duration_since(from).as_secs_f64()
}

/// What one recovery after SIGKILL measured.
struct Recovery {
    /// The committed total seen when the kill was decided.
    killed_at: i64,
    /// Restart (process start) to the group stable with the new process's member alone, s.
    to_assignment: f64,
    /// Restart to the committed offsets moving past where the killed process left them, s.
    to_moving: f64,
    /// Records the restarted process restored, and when its last restoration ended (s after
    /// the restart; `None` when it reported none).
    restored: u64,
    to_restored: Option<f64>,
    /// Keys whose last count is right, or the first wrong one.
    output: Result<usize, String>,
}

/// One recovery of `contender` over `input` (`n` records): runs until half the input is
/// committed, kills it (SIGKILL), starts it again at once with the same application id and
/// state directory and measures until the output moves; then checks the counts once the
/// whole input is committed.
fn recover(
    contender: Contender,
    bootstrap: &str,
    input: &str,
    n: usize,
    expected: &HashMap<Vec<u8>, u64>,
    classpath: &str,
) -> Result<Recovery, String> {
    let output = unique("compare-recovery-out");
    create_topic(bootstrap, &output, PARTITIONS, &[]).unwrap();
    let app = unique("compare-recovery");
    let state = std::env::temp_dir().join(unique("compare-state"));
    let args = run_args("count", bootstrap, input, &output, &app, &state);
    let probe = GroupProbe::new(bootstrap, &app, input);
    let result = (|| {
        let mut first = Running(contender.spawn(classpath, &args, Stdio::null()));
        let (_, killed_at) = wait_for_commits(&mut first.0, &probe, n / 2)?;
        // The members to be killed: the group is stable with them once they commit.
        let killed = loop {
            if let Ok(Some(status)) = first.0.try_wait() {
                return Err(format!("the contender exited early: {status}"));
            }
            match probe.members() {
                Some((_, members)) if !members.is_empty() => break members,
                _ => std::thread::sleep(Duration::from_millis(20)), // polling the group
            }
        };
        first.0.kill().map_err(|e| format!("SIGKILL: {e}"))?;
        let _ = first.0.wait();
        let restarted = Instant::now();
        let mut second = Running(contender.spawn(classpath, &args, Stdio::piped()));
        let restores = follow_restores(&mut second.0);
        let (mut baseline, mut assigned) = (killed_at, None);
        let moved = loop {
            if let Ok(Some(status)) = second.0.try_wait() {
                return Err(format!("the restarted contender exited: {status}"));
            }
            if assigned.is_none() {
                if let Some((state, members)) = probe.members() {
                    if state == "Stable"
                        && !members.is_empty()
                        && members.iter().all(|m| !killed.contains(m))
                    {
                        assigned = Some(Instant::now());
                    }
                }
            }
            if let Some(done) = probe.committed() {
                if done > baseline {
                    if assigned.is_some() {
                        break Instant::now();
                    }
                    // Before the new member has the partitions, only the killed process can
                    // have moved them: its last commit had reached the broker.
                    baseline = done;
                }
            }
            if restarted.elapsed() > STALL {
                return Err(format!(
                    "the output did not move within {STALL:?} of the restart (assigned: {})",
                    assigned.is_some()
                ));
            }
            std::thread::sleep(Duration::from_millis(20)); // the watcher's polling period
        };
        wait_for_commits(&mut second.0, &probe, n)?;
        stop(&mut second.0);
        let restores = restores.join().unwrap_or_default();
        let assigned = assigned.expect("set before the output moves");
        Ok(Recovery {
            killed_at,
            to_assignment: secs(restarted, assigned),
            to_moving: secs(restarted, moved),
            restored: restores.records,
            to_restored: restores.last_end.map(|t| secs(restarted, t)),
            output: check_counts(bootstrap, &output, expected),
        })
    })();
    let _ = std::fs::remove_dir_all(&state);
    result
}

/// What one start-up of a new instance from a full changelog measured.
struct Restart {
    /// The first instance's process start to its group's first commit (empty changelog), s.
    startup_empty: f64,
    /// The first instance's exit to its group without members, s.
    left_after: f64,
    /// The new instance's process start to the commit covering the new records, s.
    startup_full: f64,
    /// Records the new instance restored, and when its last restoration ended (s after its
    /// start; `None` when it reported none).
    restored: u64,
    to_restored: Option<f64>,
    /// Keys whose last count is right, or the first wrong one.
    output: Result<usize, String>,
}

/// One start-up of `contender` from a full changelog: counts the `total` records of `input`,
/// stops, waits until its member has left the group, writes [`EXTRA`] more records (counted
/// into `total` and `expected`) and starts a new instance with the same application id and
/// an empty state directory; measures until the new records are committed, then checks the
/// counts.
fn restart_fresh(
    contender: Contender,
    bootstrap: &str,
    input: &str,
    total: &mut usize,
    expected: &mut HashMap<Vec<u8>, u64>,
    classpath: &str,
) -> Result<Restart, String> {
    let output = unique("compare-restart-out");
    create_topic(bootstrap, &output, PARTITIONS, &[]).unwrap();
    let app = unique("compare-restart");
    let states = [(); 2].map(|_| std::env::temp_dir().join(unique("compare-state")));
    let probe = GroupProbe::new(bootstrap, &app, input);
    let result = (|| {
        let args = run_args("count", bootstrap, input, &output, &app, &states[0]);
        let started = Instant::now();
        let mut first = Running(contender.spawn(classpath, &args, Stdio::null()));
        let (first_commit, _) = wait_for_commits(&mut first.0, &probe, *total)?;
        stop(&mut first.0);
        let stopped = Instant::now();
        loop {
            match probe.members() {
                Some((_, members)) if members.is_empty() => break,
                _ if stopped.elapsed() > STALL => {
                    return Err(format!(
                        "the stopped instance is still a member of the group {STALL:?} later"
                    ))
                }
                _ => std::thread::sleep(Duration::from_millis(20)), // polling the group
            }
        }
        let left = Instant::now();
        let key = |i: usize| format!("key{i:07}");
        fill(bootstrap, input, EXTRA, key);
        for i in 0..EXTRA {
            *expected.entry(key(i).into_bytes()).or_default() += 1;
        }
        *total += EXTRA;
        let args = run_args("count", bootstrap, input, &output, &app, &states[1]);
        let restarted = Instant::now();
        let mut second = Running(contender.spawn(classpath, &args, Stdio::piped()));
        let restores = follow_restores(&mut second.0);
        wait_for_commits(&mut second.0, &probe, *total)?;
        let covered = Instant::now();
        stop(&mut second.0);
        let restores = restores.join().unwrap_or_default();
        Ok(Restart {
            startup_empty: secs(started, first_commit),
            left_after: secs(stopped, left),
            startup_full: secs(restarted, covered),
            restored: restores.records,
            to_restored: restores.last_end.map(|t| secs(restarted, t)),
            output: check_counts(bootstrap, &output, expected),
        })
    })();
    for state in &states {
        let _ = std::fs::remove_dir_all(state);
    }
    result
}

/// Recovery after SIGKILL, `rounds` rounds of every restart contender, and its table.
fn drive_recovery(bootstrap: &str, records: usize, rounds: usize, classpath: &str) {
    println!(
        "recovery: count per key, {records} records of 100 bytes over {KEYS} keys, \
         {PARTITIONS} partitions, exactly-once v2, commit every {COMMIT_INTERVAL_MS} ms; each \
         contender killed (SIGKILL) once half the input is committed and restarted at once \
         with the same application id and state directory; {rounds} rounds, broker {bootstrap}"
    );
    let key = |i: usize| format!("key{:04}", i % KEYS);
    let expected = counts((0..records).map(key));
    let mut runs: [Vec<Recovery>; 3] = Default::default();
    for round in 0..rounds {
        let input = unique("compare-recovery-in");
        create_topic(bootstrap, &input, PARTITIONS, &[]).unwrap();
        fill(bootstrap, &input, records, key);
        for contender in restart_order(round) {
            let name = contender.name();
            match recover(contender, bootstrap, &input, records, &expected, classpath) {
                Ok(r) => {
                    println!(
                        "recovery round {round} {name}: killed at {} committed; restart to \
                         assignment {:.2} s, to the output moving {:.2} s; {} records \
                         restored, the last restoration ended {}; output: {}",
                        r.killed_at,
                        r.to_assignment,
                        r.to_moving,
                        r.restored,
                        r.to_restored
                            .map_or("-".into(), |t| format!("{t:.2} s after the restart")),
                        describe(&r.output)
                    );
                    runs[index(contender)].push(r);
                }
                Err(e) => println!("recovery round {round} {name}: void ({e})"),
            }
        }
    }
    println!();
    restart_table(
        "recovery after SIGKILL (`count`)",
        &runs,
        &[
            ("restart to assignment, s", |r| Some(r.to_assignment), 2),
            (
                "assignment to output moving, s",
                |r| Some(r.to_moving - r.to_assignment),
                2,
            ),
            ("restart to output moving, s", |r| Some(r.to_moving), 2),
            ("records restored", |r| Some(r.restored as f64), 0),
            ("restart to end of restoration, s", |r| r.to_restored, 2),
        ],
        |r| r.output.is_ok(),
        rounds,
    );
}

/// Start-up of a new instance from a changelog of `records` records, `rounds` rounds of every
/// restart contender, and its table.
fn drive_restore_startup(bootstrap: &str, records: usize, rounds: usize, classpath: &str) {
    println!(
        "restore-startup: count per key, {records} records of 100 bytes with distinct keys, \
         {PARTITIONS} partitions, exactly-once v2, commit every {COMMIT_INTERVAL_MS} ms; each \
         contender counts them, stops, and a new instance with an empty state directory starts \
         once the old member has left the group, after {EXTRA} more records; {rounds} rounds, \
         broker {bootstrap}"
    );
    let mut runs: [Vec<Restart>; 3] = Default::default();
    for round in 0..rounds {
        let input = unique("compare-restart-in");
        create_topic(bootstrap, &input, PARTITIONS, &[]).unwrap();
        let key = |i: usize| format!("key{i:07}");
        fill(bootstrap, &input, records, key);
        let (mut total, mut expected) = (records, counts((0..records).map(key)));
        for contender in restart_order(round) {
            let name = contender.name();
            match restart_fresh(
                contender,
                bootstrap,
                &input,
                &mut total,
                &mut expected,
                classpath,
            ) {
                Ok(r) => {
                    println!(
                        "restore-startup round {round} {name}: start-up with an empty \
                         changelog {:.2} s; the stopped member left the group {:.2} s after \
                         the exit; the new instance: start-up to the commit covering the new \
                         records {:.2} s, {} records restored, the last restoration ended {}; \
                         output: {}",
                        r.startup_empty,
                        r.left_after,
                        r.startup_full,
                        r.restored,
                        r.to_restored
                            .map_or("-".into(), |t| format!("{t:.2} s after its start")),
                        describe(&r.output)
                    );
                    runs[index(contender)].push(r);
                }
                Err(e) => println!("restore-startup round {round} {name}: void ({e})"),
            }
        }
    }
    println!();
    restart_table(
        "start-up (`count`, distinct keys)",
        &runs,
        &[
            (
                "start-up to first commit, empty changelog, s",
                |r| Some(r.startup_empty),
                2,
            ),
            (
                "new instance, empty state: start-up to the commit covering new input, s",
                |r| Some(r.startup_full),
                2,
            ),
            ("records restored", |r| Some(r.restored as f64), 0),
            ("start-up to end of restoration, s", |r| r.to_restored, 2),
            (
                "(stopped member gone from the group after, s)",
                |r| Some(r.left_after),
                2,
            ),
        ],
        |r| r.output.is_ok(),
        rounds,
    );
}

fn describe(output: &Result<usize, String>) -> String {
    match output {
        Ok(keys) => format!("right ({keys} keys checked)"),
        Err(e) => format!("WRONG: {e}"),
    }
}

/// A figure of a restart table: its name, how to take it from a run, its decimals.
type Row<T> = (&'static str, fn(&T) -> Option<f64>, usize);

/// Prints one row per figure: each contender's median over its runs, then kstreams' median
/// over each Kafka Streams contender's; and a row counting the runs whose output was right.
fn restart_table<T>(
    title: &str,
    runs: &[Vec<T>; 3],
    rows: &[Row<T>],
    right: fn(&T) -> bool,
    rounds: usize,
) {
    println!(
        "| {title} | {} | {} | {} | **ratio** to {} | **ratio** to {} |",
        RESTARTERS[0].name(),
        RESTARTERS[1].name(),
        RESTARTERS[2].name(),
        RESTARTERS[1].name(),
        RESTARTERS[2].name()
    );
    println!("|---|---|---|---|---|---|");
    for (name, figure, digits) in rows {
        let medians = runs
            .each_ref()
            .map(|v| median(v.iter().filter_map(figure).collect()));
        let value = |m: f64| {
            if m.is_nan() {
                "-".to_string()
            } else {
                format!("{m:.digits$}")
            }
        };
        let ratio = |other: f64| {
            let r = medians[0] / other;
            // A figure in parentheses is there for reference only.
            if r.is_finite() && !name.starts_with('(') {
                format!("**{r:.3}**")
            } else {
                "-".to_string()
            }
        };
        println!(
            "| {name} | {} | {} | {} | {} | {} |",
            value(medians[0]),
            value(medians[1]),
            value(medians[2]),
            ratio(medians[1]),
            ratio(medians[2])
        );
    }
    let right = runs.each_ref().map(|v| {
        format!(
            "{} of {rounds} rounds",
            v.iter().filter(|r| right(r)).count()
        )
    });
    println!(
        "| output right (last count of each key) | {} | {} | {} | | |",
        right[0], right[1], right[2]
    );
    println!(
        "(medians over the rounds; ratio = kstreams / the Kafka Streams contender, below 1 is \
         better for kstreams)"
    );
}
