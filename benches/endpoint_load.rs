//! The HTTP endpoint under query load beside a processing application: does the load slow the
//! processing down?
//!
//! ```text
//! scripts/broker.sh start
//! KAFKA_BOOTSTRAP_SERVERS=<printed address> cargo bench --bench endpoint_load [-- RECORDS ROUNDS CLIENTS]
//! ```
//!
//! Each round fills a fresh 3-partition input topic with RECORDS records (default 1,000,000;
//! 100-byte values over 10,000 keys) and runs the same application twice on it, each time
//! with a fresh application id: a count per key into a RocksDB store with its changelog,
//! exactly-once, a commit every 100 ms, the HTTP endpoint on. Once quiet; once under load:
//! CLIENTS client threads (default 300) each asking the endpoint for a random key about once
//! a second (a new connection each time), 50 connections opened and left idle, and one client
//! asking once a second for a range of up to 99,000 rows over every partition (the whole store,
//! 10,000 keys) and, every fifth time, for one over the endpoint's 100,000-row bound (refused
//! with 413). Which run
//! goes first alternates between rounds. The timed part is the steady state, as in
//! `eos_pipeline`: from 10% of the input committed until all of it is. It prints records/s for
//! both runs and the ratio loaded/quiet per round and as the median; for the loaded run, the
//! queries answered by status and the point queries' median and 99th-percentile latency.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kstreams::core::serde::BigEndian;
use kstreams::core::{KafkaStreams, KeyPartitioner, State, StreamsConfig};
use kstreams::dsl::{Materialized, StreamsBuilder};
use streams_testkit::kafka::create_topic;
use streams_testkit::{bootstrap_servers, unique};

mod support;
use support::{fill, wait_committed};

const PARTITIONS: i32 = 3;
const KEYS: usize = 10_000;
const IDLE_CONNECTIONS: usize = 50;

/// What the load saw: answers by status, and the point queries' latencies.
#[derive(Default)]
struct Seen {
    statuses: BTreeMap<u16, usize>,
    point_latencies: Vec<Duration>,
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let records: usize = args
        .first()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let rounds: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(3);
    let clients: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(300);
    let bootstrap = bootstrap_servers();
    println!(
        "endpoint_load: {records} records, {rounds} rounds, {clients} query clients, \
         {IDLE_CONNECTIONS} idle connections, one client asking for the largest ranges"
    );
    let mut ratios = vec![];
    for round in 0..rounds {
        let input = unique("bench-endpoint-in");
        create_topic(&bootstrap, &input, PARTITIONS, &[]).unwrap();
        fill(&bootstrap, &input, records, |i| {
            format!("key{:05}", i % KEYS)
        });
        let loaded_first = round % 2 == 1;
        let mut quiet = None;
        let mut loaded = None;
        for under_load in [loaded_first, !loaded_first] {
            let run = run(&bootstrap, &input, records, under_load.then_some(clients));
            if under_load {
                loaded = run;
            } else {
                quiet = run.map(|(rate, _)| rate);
            }
        }
        let (Some(quiet), Some((loaded, seen))) = (quiet, loaded) else {
            println!("round {round}: void (a run stalled)");
            continue;
        };
        let ratio = loaded / quiet;
        ratios.push(ratio);
        let mut lat = seen.point_latencies.clone();
        lat.sort();
        let pct = |q: f64| {
            lat.get(((lat.len() as f64 - 1.0) * q) as usize)
                .map_or(0.0, |d| d.as_secs_f64() * 1e3)
        };
        println!(
            "round {round} ({} first): quiet {quiet:.0} rec/s, loaded {loaded:.0} rec/s, \
             ratio {ratio:.3}; answers by status {:?}; point queries {} (median {:.1} ms, \
             p99 {:.1} ms)",
            if loaded_first { "loaded" } else { "quiet" },
            seen.statuses,
            lat.len(),
            pct(0.5),
            pct(0.99),
        );
    }
    ratios.sort_by(f64::total_cmp);
    if let Some(m) = ratios.get(ratios.len() / 2) {
        println!(
            "median ratio loaded/quiet over {} rounds: {m:.3}",
            ratios.len()
        );
    }
}

/// Runs the counting application over `input` until all `n` records are committed, with
/// `clients` query clients when given; returns its steady-state records/s and what the load
/// saw.
fn run(bootstrap: &str, input: &str, n: usize, clients: Option<usize>) -> Option<(f64, Seen)> {
    let app = unique("bench-endpoint-app");
    let builder = StreamsBuilder::new();
    builder
        .stream::<String, String>(input)
        .group_by_key()
        .count_with(Materialized::with(BigEndian).named("counts"));
    let config = StreamsConfig::new(&app, bootstrap)
        .commit_interval(Duration::from_millis(100))
        .state_dir(std::env::temp_dir().join(unique("bench-endpoint-state")))
        .http_endpoint("127.0.0.1:0".parse().unwrap())
        // The input is written with librdkafka's default partitioner (`support::fill`), and the
        // count is not repartitioned: its keys are where CRC-32 put them.
        .query_partitioner("counts", KeyPartitioner::Crc32);
    let streams = KafkaStreams::new(builder.build().unwrap(), config).unwrap();
    streams.start().unwrap();
    let address = streams.http_address().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let mut load = vec![];
    if let Some(clients) = clients {
        load = start_load(address, clients, &stop, &seen);
    }
    let steady = (|| {
        let from = wait_committed(bootstrap, &app, input, n / 10)?;
        let t0 = Instant::now();
        let to = wait_committed(bootstrap, &app, input, n)?;
        Some((to - from).max(1) as f64 / t0.elapsed().as_secs_f64())
    })();
    stop.store(true, Ordering::SeqCst);
    for h in load {
        let _ = h.join();
    }
    let ok = streams.state() == State::Running;
    streams.close(Duration::from_secs(60));
    if !ok {
        println!(
            "the application was not running at the end: {:?}",
            streams.error()
        );
    }
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    steady.map(|rate| (rate, seen))
}

/// Starts the query load on the endpoint at `address` until `stop`.
fn start_load(
    address: SocketAddr,
    clients: usize,
    stop: &Arc<AtomicBool>,
    seen: &Arc<Mutex<Seen>>,
) -> Vec<std::thread::JoinHandle<()>> {
    let mut threads = vec![];
    // Idle connections: opened, never sent anything, held until the end (the endpoint closes
    // them after its header timeout; they are opened again).
    {
        let stop = stop.clone();
        threads.push(std::thread::spawn(move || {
            let mut idle: Vec<TcpStream> = vec![];
            while !stop.load(Ordering::SeqCst) {
                idle.retain(|s| {
                    let mut b = [0u8; 1];
                    s.set_nonblocking(true).is_ok() && !matches!((&*s).read(&mut b), Ok(0))
                });
                while idle.len() < IDLE_CONNECTIONS {
                    match TcpStream::connect(address) {
                        Ok(s) => idle.push(s),
                        Err(_) => break,
                    }
                }
                std::thread::sleep(Duration::from_millis(200)); // the holder's pace
            }
        }));
    }
    // Point queries: each client about once a second, spread over the second.
    for c in 0..clients {
        let (stop, seen) = (stop.clone(), seen.clone());
        threads.push(std::thread::spawn(move || {
            let mut i = c * 7919;
            std::thread::sleep(Duration::from_millis((c * 1000 / clients) as u64));
            while !stop.load(Ordering::SeqCst) {
                i = (i + 104_729) % KEYS;
                let asked = Instant::now();
                let status = get(address, &format!("/stores/counts/keys/key{i:05}"));
                let took = asked.elapsed();
                {
                    let mut s = seen.lock().unwrap();
                    *s.statuses.entry(status).or_default() += 1;
                    s.point_latencies.push(took);
                }
                // About once a second per client, whatever the answer took.
                std::thread::sleep(Duration::from_secs(1).saturating_sub(took));
            }
        }));
    }
    // The largest ranges, once a second; every fifth one over the bound.
    {
        let (stop, seen) = (stop.clone(), seen.clone());
        threads.push(std::thread::spawn(move || {
            let mut k = 0;
            while !stop.load(Ordering::SeqCst) {
                k += 1;
                let limit = if k % 5 == 0 { 100_000 } else { 33_000 };
                let asked = Instant::now();
                let status = get(address, &format!("/stores/counts/range?limit={limit}"));
                *seen.lock().unwrap().statuses.entry(status).or_default() += 1;
                std::thread::sleep(Duration::from_secs(1).saturating_sub(asked.elapsed()));
            }
        }));
    }
    threads
}

/// One GET; its status (0 when no answer came).
fn get(address: SocketAddr, path: &str) -> u16 {
    let answer = (|| -> std::io::Result<String> {
        let mut s = TcpStream::connect_timeout(&address, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
        )?;
        let mut head = vec![];
        s.read_to_end(&mut head)?;
        Ok(String::from_utf8_lossy(&head[..head.len().min(64)]).into_owned())
    })();
    answer
        .ok()
        .and_then(|a| a.split_whitespace().nth(1).and_then(|c| c.parse().ok()))
        .unwrap_or(0)
}
