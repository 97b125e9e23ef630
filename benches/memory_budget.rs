//! Resident memory of an application holding many keys in a RocksDB store, against the
//! configured RocksDB budget (`StreamsConfig::rocksdb_memory`).
//!
//! ```text
//! scripts/broker.sh start
//! KAFKA_BOOTSTRAP_SERVERS=<printed address> cargo bench --bench memory_budget [-- KEYS BUDGETS_MIB]
//! ```
//!
//! A 4-partition input topic is filled once with KEYS records (default 1,000,000), each with a
//! key of its own and a 100-byte value. Then, for each budget B in BUDGETS_MIB (default
//! `32,128`), a child process runs an exactly-once application that counts records per key in
//! a RocksDB store with a changelog (the DSL's `count`, record cache at its default), with a
//! block cache of B MiB holding the memtables (at most B/2 MiB), until the group has committed
//! the whole input. The child samples its own resident set size (`VmRSS`) every 50 ms and
//! prints it before the application starts, its peak while the store grows to KEYS keys, and
//! the growth (peak minus start) next to the budget. Each budget runs in a process of its own,
//! so one run's freed memory does not hide the next run's.
//!
//! What the growth holds besides RocksDB's block cache and memtables: librdkafka's fetch queue
//! (the consumer prefetches up to `queued.max.messages.kbytes`, 64 MiB by default) and
//! producer buffers, the record cache (`cache_max_bytes`, 10 MiB by default), the threads'
//! stacks, RocksDB's table readers outside the cache, and the allocator's retained pages.
//! The margin printed is that growth minus the budget. With `KSTREAMS_MEMORY_BUDGET_PREFETCH_KB`
//! set, the application's consumers prefetch at most that many KiB, which shows that part's
//! share.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kstreams::core::serde::{BigEndian, Utf8};
use kstreams::core::{KafkaStreams, StreamsConfig};
use kstreams::dsl::{Materialized, Produced, StreamsBuilder};
use streams_testkit::kafka::create_topic;
use streams_testkit::{bootstrap_servers, unique};

mod support;
use support::{committed_total, fill};

const CHILD: &str = "KSTREAMS_MEMORY_BUDGET_CHILD";
/// When set, the consumers' prefetch bound (librdkafka's `queued.max.messages.kbytes`).
const PREFETCH_KB: &str = "KSTREAMS_MEMORY_BUDGET_PREFETCH_KB";
const PARTITIONS: i32 = 4;
const MIB: u64 = 1 << 20;

/// This process's resident set size, in bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// The child: one application with a budget of `budget_mib`, until the input is consumed.
fn child(args: &str) {
    let parts: Vec<&str> = args.split('|').collect();
    let [input, keys, budget_mib] = parts[..] else {
        panic!("bad child arguments {args}");
    };
    let keys: i64 = keys.parse().unwrap();
    let budget = budget_mib.parse::<u64>().unwrap() * MIB;
    let bootstrap = bootstrap_servers();
    let app = unique("memory-budget");
    let output = unique("memory-budget-out");
    create_topic(&bootstrap, &output, PARTITIONS, &[]).unwrap();
    let builder = StreamsBuilder::new();
    builder
        .stream::<String, String>(input)
        .group_by_key()
        .count_with(Materialized::with(BigEndian).named("counts"))
        .to_stream()
        .to_with(&output, Produced::with(Utf8, BigEndian));
    let dir = std::env::temp_dir().join(&app);
    let mut config = StreamsConfig::new(&app, &bootstrap)
        .state_dir(&dir)
        .rocksdb_memory(budget as usize, (budget / 2) as usize);
    if let Ok(kb) = std::env::var(PREFETCH_KB) {
        config = config.set("queued.max.messages.kbytes", &kb);
    }
    let streams = KafkaStreams::new(builder.build().unwrap(), config).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (stop, peak) = (stop.clone(), peak.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(rss(), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(50)); // the sampling period
            }
        })
    };
    let start_rss = rss();
    let started = Instant::now();
    streams.start().unwrap();
    loop {
        let done = committed_total(&bootstrap, &app, input);
        if done >= keys {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(1800),
            "input not consumed in 30 minutes ({done} of {keys})"
        );
        std::thread::sleep(Duration::from_millis(200)); // polling the group's offsets
    }
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let peak = peak.load(Ordering::Relaxed);
    let growth = peak.saturating_sub(start_rss);
    println!(
        "RESULT budget {} MiB{}: {keys} keys in {elapsed:.1?}; RSS before start {} MiB, peak {} MiB, \
         growth {} MiB = budget + {} MiB",
        budget / MIB,
        std::env::var(PREFETCH_KB)
            .map(|kb| format!(" (prefetch {kb} KiB)"))
            .unwrap_or_default(),
        start_rss / MIB,
        peak / MIB,
        growth / MIB,
        (growth as i64 - budget as i64) / MIB as i64,
    );
    streams.close(Duration::from_secs(60));
    std::fs::remove_dir_all(&dir).ok();
}

fn main() {
    if let Ok(args) = std::env::var(CHILD) {
        return child(&args);
    }
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let keys: usize = args
        .first()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let budgets: Vec<u64> = args
        .get(1)
        .map(|a| a.split(',').filter_map(|b| b.parse().ok()).collect())
        .unwrap_or_else(|| vec![32, 128]);
    let bootstrap = bootstrap_servers();
    let input = unique("memory-budget-in");
    create_topic(&bootstrap, &input, PARTITIONS, &[]).unwrap();
    let t = Instant::now();
    fill(&bootstrap, &input, keys, |i| format!("key-{i}"));
    println!(
        "filled {input} with {keys} records of distinct keys in {:.1?}",
        t.elapsed()
    );
    for budget in budgets {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .env(CHILD, format!("{input}|{keys}|{budget}"))
            .env("KAFKA_BOOTSTRAP_SERVERS", &bootstrap)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        match stdout.lines().find(|l| l.starts_with("RESULT ")) {
            Some(line) => println!("{}", &line["RESULT ".len()..]),
            None => panic!(
                "the child with budget {budget} MiB failed: {}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ),
        }
    }
}
