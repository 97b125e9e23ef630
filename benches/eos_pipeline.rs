//! Exactly-once consume→transform→produce: a raw rdkafka pipe versus the same work as a
//! one-processor topology on `KafkaStreams`, against the same broker in the same run.
//!
//! ```text
//! scripts/broker.sh start     # the broker and its proxy in processes of their own
//! KAFKA_BOOTSTRAP_SERVERS=<printed address> cargo bench --bench eos_pipeline [-- RECORDS ROUNDS [TOPOLOGY] [--metrics-cost]]
//! ```
//!
//! With `--metrics-cost`, (a) is not the raw pipe but the same topology as (b) with metrics
//! recording off (`StreamsConfig::metrics_recording(false)`): the ratios are then the cost of
//! metrics (docs/BENCHMARKS.md).
//!
//! TOPOLOGY is what (b) runs: `processor` (default: one Processor API node appending "!"),
//! `dsl-chain` (the DSL's filter → map_values → to doing the same), or `dsl-window-count` (the
//! DSL's count per key in one-minute tumbling windows, RocksDB and its changelog, the record
//! cache on (default budget), over 10,000 keys), or `dsl-stream-table-join` (the DSL's
//! stream-table join of every record with a 100,000-row table read from its own topic, RocksDB
//! with the table topic as its changelog, appending "!" and the row's value; the stream's keys
//! cycle through the table's), or `windowed-metrics` (the topology of
//! `examples/windowed_metrics.rs`, its 1-minute and 5-minute windows with final results only,
//! over JSON measurements of 100 hosts and 3 metrics, one per host and second of event time, in
//! order; the input is those JSON values for both pipelines).
//!
//! Each round fills a fresh 3-partition input topic with RECORDS records (100-byte values),
//! then runs (a) the raw pipe and (b) the topology, each reading the whole topic with a fresh
//! consumer group and writing `value + "!"` to its own output topic, both under exactly-once
//! with a commit every 100 ms (one transactional producer, read_committed consumer, offsets in
//! the transaction). A watcher polls the group's committed offsets; the timed part is the
//! steady state: from the first 10% of the input committed (start-up, group join and
//! `init_transactions` are before it) until all of it is. For that part it prints records/s
//! and the process's CPU time (user + system, all threads) per record, for both, and the
//! ratios (b)/(a), per round and as medians over rounds. The CPU figures are the pipelines'
//! only when the broker runs in another process (`KAFKA_BOOTSTRAP_SERVERS`); without it the
//! bench starts the broker with its transaction proxy inside this process, and says so.

use std::time::{Duration, Instant};

use kstreams::core::serde::RawBytes;
use kstreams::core::{
    KafkaStreams, Processor, ProcessorContext, Record, Result, Sink, Source, State, StreamsConfig,
    TopologyBuilder,
};
use kstreams::dsl::{Joined, Materialized, StreamsBuilder, TimeWindows};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use streams_testkit::kafka::{client_config, create_topic, send_retrying};
use streams_testkit::{bootstrap_servers, unique};

mod support;
use support::{committed_total, fill};

const PARTITIONS: i32 = 3;
const COMMIT_INTERVAL: Duration = Duration::from_millis(100);
const TIMEOUT: Duration = Duration::from_secs(60);

/// Waits until `group` has committed offsets covering `n` records of `topic`; returns how
/// many it covers then.
fn wait_committed(bootstrap: &str, group: &str, topic: &str, n: usize) -> usize {
    loop {
        let done = committed_total(bootstrap, group, topic);
        if done >= n as i64 {
            return done as usize;
        }
        std::thread::sleep(Duration::from_millis(20)); // the watcher's polling period
    }
}

/// This process's CPU time so far (user + system, all threads).
fn cpu_time() -> Duration {
    // SAFETY: getrusage fills the zeroed struct we own.
    let usage = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut u);
        u
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// The steady-state figures of one pipeline run.
#[derive(Clone, Copy)]
struct Steady {
    /// Records per second.
    rate: f64,
    /// CPU microseconds per record.
    cpu_us: f64,
}

/// Times the steady state of a pipeline consuming `n` records with consumer group `group`:
/// from 10% of the input committed to all of it.
fn steady_state(bootstrap: &str, group: &str, input: &str, n: usize) -> Steady {
    let from = wait_committed(bootstrap, group, input, n / 10);
    let (t0, c0) = (Instant::now(), cpu_time());
    let to = wait_committed(bootstrap, group, input, n);
    let (secs, cpu) = (t0.elapsed().as_secs_f64(), cpu_time() - c0);
    let records = (to - from).max(1) as f64;
    Steady {
        rate: records / secs,
        cpu_us: cpu.as_secs_f64() * 1e6 / records,
    }
}

/// (a) The raw pipe: poll, transform, send; every 100 ms send the offsets and commit.
fn raw_pipe(bootstrap: &str, input: &str, output: &str, n: usize) -> Steady {
    let group = unique("bench-raw");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let worker = {
        let (bootstrap, input, output, group, stop) = (
            bootstrap.to_string(),
            input.to_string(),
            output.to_string(),
            group.clone(),
            stop.clone(),
        );
        std::thread::spawn(move || {
            let consumer: BaseConsumer = client_config(&bootstrap)
                .set("group.id", &group)
                .set("enable.auto.commit", "false")
                .set("auto.offset.reset", "earliest")
                .set("isolation.level", "read_committed")
                .set("partition.assignment.strategy", "range")
                .create()
                .unwrap();
            let producer: BaseProducer = client_config(&bootstrap)
                .set("transactional.id", unique("bench-raw-txn"))
                .set("linger.ms", "5")
                .set("partitioner", "murmur2_random")
                .create()
                .unwrap();
            producer.init_transactions(TIMEOUT).unwrap();
            consumer.subscribe(&[&input]).unwrap();
            let mut offsets: std::collections::HashMap<i32, i64> = Default::default();
            let mut in_txn = false;
            let mut last_commit = Instant::now();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let wait = COMMIT_INTERVAL.saturating_sub(last_commit.elapsed());
                let mut timeout = wait.min(Duration::from_millis(100));
                for _ in 0..1000 {
                    let Some(m) = consumer.poll(timeout) else {
                        break;
                    };
                    timeout = Duration::ZERO;
                    let m = m.unwrap();
                    if !in_txn {
                        producer.begin_transaction().unwrap();
                        in_txn = true;
                    }
                    let mut value = m.payload().unwrap_or_default().to_vec();
                    value.push(b'!');
                    let mut record = BaseRecord::to(&output).payload(&value[..]);
                    if let Some(k) = m.key() {
                        record = record.key(k);
                    }
                    send_retrying(&producer, record).unwrap();
                    offsets.insert(m.partition(), m.offset() + 1);
                }
                producer.poll(Duration::ZERO);
                if last_commit.elapsed() >= COMMIT_INTERVAL && !offsets.is_empty() {
                    let mut tpl = TopicPartitionList::new();
                    for (p, o) in offsets.drain() {
                        tpl.add_partition_offset(&input, p, Offset::Offset(o))
                            .unwrap();
                    }
                    producer.flush(TIMEOUT).unwrap();
                    if !in_txn {
                        producer.begin_transaction().unwrap();
                    }
                    let meta = consumer.group_metadata().unwrap();
                    producer
                        .send_offsets_to_transaction(&tpl, &meta, TIMEOUT)
                        .unwrap();
                    producer.commit_transaction(TIMEOUT).unwrap();
                    in_txn = false;
                    last_commit = Instant::now();
                }
            }
        })
    };
    let steady = steady_state(bootstrap, &group, input, n);
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    worker.join().unwrap();
    steady
}

/// The same transformation as a processor.
struct Exclaim;

impl Processor for Exclaim {
    type KeyIn = Vec<u8>;
    type ValueIn = Vec<u8>;
    type KeyOut = Vec<u8>;
    type ValueOut = Vec<u8>;
    fn process(
        &mut self,
        record: Record<Vec<u8>, Vec<u8>>,
        ctx: &mut ProcessorContext<'_, Vec<u8>, Vec<u8>>,
    ) -> Result<()> {
        ctx.forward(record.map_value(|mut value| {
            value.push(b'!');
            value
        }))
    }
}

/// What (b) runs.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    /// One Processor API node appending "!".
    Processor,
    /// The DSL: filter (non-empty) → map_values (append "!") → to.
    DslChain,
    /// The DSL: a count per key in one-minute tumbling windows, RocksDB with its changelog,
    /// the record cache on (default budget), 10,000 keys.
    DslWindowCount,
    /// The DSL: a stream-table join with a 100,000-row table.
    DslStreamTableJoin,
    WindowedMetrics,
}

#[allow(dead_code)]
#[path = "../examples/windowed_metrics.rs"]
mod windowed_metrics;

/// Fills `topic` with `n` measurements as `examples/windowed_metrics.rs` reads them: 100 hosts
/// (the keys), each reporting cpu, memory and latency in turn every second of event time.
fn fill_metrics(bootstrap: &str, topic: &str, n: usize) {
    let p: BaseProducer = client_config(bootstrap)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let hosts = 100;
    let t0 = 1_700_000_000_000_i64;
    for i in 0..n {
        let m = windowed_metrics::Metric {
            host: format!("host-{}", i % hosts),
            metric: ["cpu", "memory", "latency"][(i / hosts) % 3].into(),
            value: ((i * 37) % 1_000) as f64 / 10.0,
            ts: t0 + (i / hosts) as i64 * 1_000,
        };
        let v = serde_json::to_vec(&m).unwrap();
        send_retrying(
            &p,
            BaseRecord::to(topic)
                .key(&m.host)
                .payload(&v)
                .timestamp(m.ts),
        )
        .unwrap();
    }
    p.flush(TIMEOUT).unwrap();
}

/// The rows of the join's table.
const TABLE_ROWS: usize = 100_000;

fn build(kind: Kind, input: &str, output: &str, table: &str) -> kstreams::core::Topology {
    match kind {
        Kind::Processor => TopologyBuilder::new()
            .add_source("in", Source::new([input], RawBytes, RawBytes))
            .add_processor("exclaim", || Exclaim, ["in"])
            .add_sink("out", Sink::new(output, RawBytes, RawBytes), ["exclaim"])
            .build()
            .unwrap(),
        Kind::DslChain => {
            let builder = StreamsBuilder::new();
            builder
                .stream::<Vec<u8>, Vec<u8>>(input)
                .filter(|_, v| !v.is_empty())
                .map_values(|mut v| {
                    v.push(b'!');
                    v
                })
                .to(output);
            builder.build().unwrap()
        }
        Kind::DslWindowCount => {
            let builder = StreamsBuilder::new();
            builder
                .stream::<Vec<u8>, Vec<u8>>(input)
                .group_by_key()
                .windowed_by(TimeWindows::of_size_with_no_grace(Duration::from_secs(60)))
                .count()
                .to(output);
            builder.build().unwrap()
        }
        Kind::DslStreamTableJoin => {
            let builder = StreamsBuilder::new();
            let rows = builder.table::<Vec<u8>, Vec<u8>>(table, Materialized::with(RawBytes));
            builder
                .stream::<Vec<u8>, Vec<u8>>(input)
                .join_table(
                    &rows,
                    |v, row| {
                        let mut out = Vec::with_capacity(v.len() + 1 + row.len());
                        out.extend_from_slice(v);
                        out.push(b'!');
                        out.extend_from_slice(row);
                        out
                    },
                    Joined::default(),
                )
                .to(output);
            builder.build().unwrap()
        }
        Kind::WindowedMetrics => {
            let topics = windowed_metrics::Topics {
                metrics: input.into(),
                out_1m: output.into(),
                out_5m: format!("{output}-5m"),
                dead_letters: format!("{output}-dlq"),
            };
            windowed_metrics::build_topology(&topics, &mut Default::default()).unwrap()
        }
    }
}

/// (b) The topology on the runtime, exactly-once, one stream thread; `metrics`: whether it
/// records metrics.
fn topology(
    kind: Kind,
    bootstrap: &str,
    (input, table): (&str, &str),
    output: &str,
    n: usize,
    metrics: bool,
) -> Steady {
    let app = unique("bench-app");
    let topology = build(kind, input, output, table);
    let config = StreamsConfig::new(&app, bootstrap)
        .commit_interval(COMMIT_INTERVAL)
        .state_dir(std::env::temp_dir().join(unique("bench-state")))
        .metrics_recording(metrics)
        .set("linger.ms", "5");
    let streams = KafkaStreams::new(topology, config).unwrap();
    streams.start().unwrap();
    let steady = steady_state(bootstrap, &app, input, n);
    assert!(streams.close(TIMEOUT));
    assert_eq!(streams.state(), State::NotRunning);
    if kind == Kind::DslStreamTableJoin {
        // Every record found its row (a join that missed would write less, and look faster).
        let written = streams_testkit::kafka::read_to_end(
            bootstrap,
            output,
            streams_testkit::kafka::Isolation::ReadCommitted,
            TIMEOUT,
        )
        .unwrap()
        .len();
        assert_eq!(written, n, "join outputs");
        println!("join outputs checked: {written} of {n} records joined");
    }
    if kind == Kind::WindowedMetrics {
        // Every closed 1-minute window of every host and metric was written once (a topology
        // that dropped records as late would write less, and look faster).
        let written = streams_testkit::kafka::read_to_end(
            bootstrap,
            output,
            streams_testkit::kafka::Isolation::ReadCommitted,
            TIMEOUT,
        )
        .unwrap()
        .len();
        let (t0, last) = (
            1_700_000_000_000_i64,
            1_700_000_000_000 + (n as i64 / 100 - 1) * 1_000,
        );
        let closed = (0..)
            .map(|w| (t0 / 60_000 + w) * 60_000)
            .take_while(|start| start + 60_000 + 10_000 <= last)
            .count();
        assert_eq!(written, 100 * 3 * closed, "1-minute window results");
        println!("window results checked: {written} 1-minute results ({closed} closed windows x 100 hosts x 3 metrics)");
    }
    steady
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let n = args.first().copied().unwrap_or(50_000);
    let rounds = args.get(1).copied().unwrap_or(3);
    let kind = match std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-') && a.parse::<usize>().is_err())
    {
        None => Kind::Processor,
        Some(k) if k == "processor" => Kind::Processor,
        Some(k) if k == "dsl-chain" => Kind::DslChain,
        Some(k) if k == "dsl-window-count" => Kind::DslWindowCount,
        Some(k) if k == "dsl-stream-table-join" => Kind::DslStreamTableJoin,
        Some(k) if k == "windowed-metrics" => Kind::WindowedMetrics,
        Some(k) => panic!(
            "unknown topology {k}: processor, dsl-chain, dsl-window-count, \
             dsl-stream-table-join or windowed-metrics"
        ),
    };
    // --metrics-cost: (a) is the same topology with metrics off instead of the raw pipe.
    let metrics_cost = std::env::args().any(|a| a == "--metrics-cost");
    let baseline = if metrics_cost {
        "metrics off"
    } else {
        "raw pipe"
    };
    println!("topology (b): {kind:?}; (a): {baseline}");
    if streams_testkit::broker::external_bootstrap_servers().is_none() {
        println!(
            "note: the broker and its proxy run inside this process; CPU figures include the \
             proxy (start it with scripts/broker.sh and set KAFKA_BOOTSTRAP_SERVERS)"
        );
    }
    let bootstrap = bootstrap_servers();
    let (mut ratios, mut cpu_ratios) = (vec![], vec![]);
    for round in 1..=rounds {
        let input = unique("bench-in");
        create_topic(&bootstrap, &input, PARTITIONS, &[]).unwrap();
        // The windowed count sees 10,000 keys, each updated about n / 10,000 times: what its
        // record cache exists for. The other topologies get distinct keys.
        let keys = match kind {
            Kind::DslWindowCount => 10_000,
            Kind::DslStreamTableJoin => TABLE_ROWS,
            _ => 0,
        };
        // The join's table, written before the stream (its rows are older).
        let table = unique("bench-table");
        if kind == Kind::DslStreamTableJoin {
            create_topic(&bootstrap, &table, PARTITIONS, &[]).unwrap();
            fill(&bootstrap, &table, TABLE_ROWS, |i| i.to_string());
        }
        if kind == Kind::WindowedMetrics {
            fill_metrics(&bootstrap, &input, n);
        } else {
            fill(&bootstrap, &input, n, |i| {
                if keys == 0 { i } else { i % keys }.to_string()
            });
        }
        let (out_a, out_b) = (unique("bench-out-raw"), unique("bench-out-topology"));
        create_topic(&bootstrap, &out_a, PARTITIONS, &[]).unwrap();
        create_topic(&bootstrap, &out_b, PARTITIONS, &[]).unwrap();
        if kind == Kind::WindowedMetrics {
            for out in [&out_a, &out_b] {
                for suffix in ["-5m", "-dlq"] {
                    create_topic(&bootstrap, &format!("{out}{suffix}"), PARTITIONS, &[]).unwrap();
                }
            }
        }
        let run_a = || {
            if metrics_cost {
                topology(kind, &bootstrap, (&input, &table), &out_a, n, false)
            } else {
                raw_pipe(&bootstrap, &input, &out_a, n)
            }
        };
        // Alternate the order: the machine is shared and its load drifts.
        let (a, b) = if round % 2 == 1 {
            let a = run_a();
            (
                a,
                topology(kind, &bootstrap, (&input, &table), &out_b, n, true),
            )
        } else {
            let b = topology(kind, &bootstrap, (&input, &table), &out_b, n, true);
            (run_a(), b)
        };
        let (ratio, cpu_ratio) = (b.rate / a.rate, b.cpu_us / a.cpu_us);
        println!(
            "round {round}: {baseline} {:.0} rec/s, {:.2} µs CPU/record; topology {:.0} rec/s, {:.2} µs CPU/record; \
             throughput topology/({baseline}) {ratio:.3}, CPU per record topology/({baseline}) {cpu_ratio:.3}",
            a.rate, a.cpu_us, b.rate, b.cpu_us
        );
        ratios.push(ratio);
        cpu_ratios.push(cpu_ratio);
    }
    ratios.sort_by(f64::total_cmp);
    cpu_ratios.sort_by(f64::total_cmp);
    println!(
        "medians over {rounds} rounds of {n} records: throughput topology/({baseline}) {:.3}, CPU per record topology/({baseline}) {:.3}",
        ratios[ratios.len() / 2],
        cpu_ratios[cpu_ratios.len() / 2]
    );
}
