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
//!   depend on each side's record cache); `window-count-final`, every record.
//!
//! Workloads: `map` (each value with "!" appended), `count` (a count per key), `window-count`
//! (a count per key in 10-second tumbling windows, every update), `window-count-final` (the
//! same, final results only).

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use kstreams::core::serde::{BigEndian, Utf8};
use kstreams::core::{KafkaStreams, ProcessingGuarantee, State, StreamsConfig};
use kstreams::dsl::{Produced, StreamsBuilder, TimeWindows};
use streams_testkit::kafka::create_topic;
use streams_testkit::{bootstrap_servers, unique};

mod support;
use support::{committed_total, fill};

const PARTITIONS: i32 = 4;
const KEYS: usize = 1_000;
const COMMIT_INTERVAL_MS: u64 = 100;
const WORKLOADS: [&str; 4] = ["map", "count", "window-count", "window-count-final"];
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
        other => {
            eprintln!("unknown workload {other}");
            std::process::exit(2);
        }
    }
    let commit: u64 = commit_ms.parse().expect("COMMIT_INTERVAL_MS is a number");
    let config = StreamsConfig::new(app, bootstrap)
        .processing_guarantee(ProcessingGuarantee::ExactlyOnce)
        .commit_interval(Duration::from_millis(commit))
        .state_dir(state_dir);
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
    println!(
        "compare: {records} records of 100 bytes over {KEYS} keys, {PARTITIONS} partitions, \
         exactly-once v2, commit every {COMMIT_INTERVAL_MS} ms, {rounds} rounds, broker \
         {bootstrap}"
    );
    let mut table = vec![];
    for workload in &workloads {
        let mut ours = vec![];
        let mut theirs = vec![];
        let mut agreed = (0, 0);
        for round in 0..rounds {
            let input = unique(&format!("compare-{workload}-in"));
            create_topic(&bootstrap, &input, PARTITIONS, &[]).unwrap();
            fill(&bootstrap, &input, records, |i| {
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
                    run_contender(contender, workload, &bootstrap, &input, records, classpath);
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
                            Contender::KafkaStreams => theirs.push(f),
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
    let args = [
        workload.to_string(),
        bootstrap.to_string(),
        input.to_string(),
        output,
        app.clone(),
        state.display().to_string(),
        COMMIT_INTERVAL_MS.to_string(),
    ];
    let started = Instant::now();
    let mut child = match contender {
        Contender::Kstreams => Command::new(std::env::current_exe().unwrap())
            .arg("run")
            .args(&args)
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
        Contender::KafkaStreams => Command::new("java")
            .args(["-cp", classpath, "kstreams.compare.Workload"])
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    };
    let figures = watch(&mut child, started, bootstrap, &app, input, n);
    let output_topic = args[3].clone();
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
    let _ = std::fs::remove_dir_all(&state);
    let mut figures = figures?;
    figures.output = deterministic_output(workload, bootstrap, &output_topic);
    Some(figures)
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
