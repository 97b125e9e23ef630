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
use support::{fill, wait_committed};

const PARTITIONS: i32 = 3;
const COMMIT_INTERVAL: Duration = Duration::from_millis(100);
const TIMEOUT: Duration = Duration::from_secs(60);

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
    /// With metrics on: how often the stream loop ran its metric operations, per record.
    loop_counts: Option<LoopCounts>,
}

/// The stream loop's metric operations per record processed, over a whole run (from its
/// metrics).
#[derive(Clone, Copy, Debug)]
struct LoopCounts {
    /// Poll rounds (each timed).
    polls: f64,
    /// Commits (each timed when it had work, each followed by the lag update).
    commits: f64,
}

/// Times the steady state of a pipeline consuming `n` records with consumer group `group`:
/// from 10% of the input committed to all of it.
fn steady_state(bootstrap: &str, group: &str, input: &str, n: usize) -> Option<Steady> {
    let from = wait_committed(bootstrap, group, input, n / 10)?;
    let (t0, c0) = (Instant::now(), cpu_time());
    let to = wait_committed(bootstrap, group, input, n)?;
    let (secs, cpu) = (t0.elapsed().as_secs_f64(), cpu_time() - c0);
    let records = (to - from).max(1) as f64;
    Some(Steady {
        rate: records / secs,
        cpu_us: cpu.as_secs_f64() * 1e6 / records,
        loop_counts: None,
    })
}

/// (a) The raw pipe: poll, transform, send; every 100 ms send the offsets and commit.
fn raw_pipe(bootstrap: &str, input: &str, output: &str, n: usize) -> Option<Steady> {
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
                // As the runtime's consumers: fetching again 10 ms, not librdkafka's 1,000 ms,
                // after the local queue drained below its thresholds (docs/BENCHMARKS.md).
                .set("fetch.queue.backoff.ms", "10")
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

/// The event time the measurements begin at: a day before the bench started, in whole minutes.
/// Recent enough for any Kafka's retention (a stock broker deletes records older than 7 days),
/// never in the future (refused since Kafka 4.0) for up to 8 million measurements.
fn metrics_t0() -> i64 {
    static T0: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *T0.get_or_init(|| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        let t0 = now - 86_400_000;
        t0 - t0 % 60_000
    })
}

/// Fills `topic` with `n` measurements as `examples/windowed_metrics.rs` reads them: 100 hosts
/// (the keys), each reporting cpu, memory and latency in turn every second of event time.
fn fill_metrics(bootstrap: &str, topic: &str, n: usize) {
    let p: BaseProducer = client_config(bootstrap)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let hosts = 100;
    let t0 = metrics_t0();
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
) -> Option<Steady> {
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
    let Some(mut steady) = steady else {
        // What the application saw of it: its state, its lag per input partition.
        let m = streams.metrics();
        let lags: Vec<String> = m
            .named("kstreams_consumer_lag_records")
            .map(|l| format!("{}:{}", l.label("partition").unwrap_or("?"), l.value))
            .collect();
        println!(
            "the stalled application (metrics {}): state {:?}, lag per partition [{}]",
            if metrics { "on" } else { "off" },
            streams.state(),
            lags.join(", ")
        );
        streams.close(TIMEOUT);
        return None;
    };
    if metrics {
        let m = streams.metrics();
        let records = m.sum("kstreams_thread_process_records_total", &[]).max(1.0);
        steady.loop_counts = Some(LoopCounts {
            polls: m.sum("kstreams_thread_poll_latency_seconds_count", &[]) / records,
            commits: m.sum("kstreams_thread_commit_latency_seconds_count", &[]) / records,
        });
    }
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
        let (t0, last) = (metrics_t0(), metrics_t0() + (n as i64 / 100 - 1) * 1_000);
        let closed = (0..)
            .map(|w| (t0 / 60_000 + w) * 60_000)
            .take_while(|start| start + 60_000 + 10_000 <= last)
            .count();
        assert_eq!(written, 100 * 3 * closed, "1-minute window results");
        println!("window results checked: {written} 1-minute results ({closed} closed windows x 100 hosts x 3 metrics)");
    }
    Some(steady)
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
    if streams_testkit::broker::external_bootstrap_servers().is_none()
        && streams_testkit::broker::BrokerKind::from_env()
            == streams_testkit::broker::BrokerKind::Nisshi
    {
        // Kafka runs in a JVM of its own; nisshi's patching proxy runs in this process.
        println!(
            "note: nisshi's proxy runs inside this process; CPU figures include it (start the \
             broker with scripts/broker.sh and set KAFKA_BOOTSTRAP_SERVERS)"
        );
    }
    let bootstrap = bootstrap_servers();
    let (mut ratios, mut cpu_ratios) = (vec![], vec![]);
    // --metrics-cost: what the decomposition below needs from the rounds.
    let (mut off_cpu, mut on_rate, mut counts, mut last_input) =
        (vec![], vec![], vec![], String::new());
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
        let (Some(a), Some(b)) = (a, b) else {
            continue;
        };
        let (ratio, cpu_ratio) = (b.rate / a.rate, b.cpu_us / a.cpu_us);
        println!(
            "round {round}: {baseline} {:.0} rec/s, {:.2} µs CPU/record; topology {:.0} rec/s, {:.2} µs CPU/record; \
             throughput topology/({baseline}) {ratio:.3}, CPU per record topology/({baseline}) {cpu_ratio:.3}",
            a.rate, a.cpu_us, b.rate, b.cpu_us
        );
        ratios.push(ratio);
        cpu_ratios.push(cpu_ratio);
        if metrics_cost {
            off_cpu.push(a.cpu_us);
            on_rate.push(b.rate);
            counts.extend(b.loop_counts);
            last_input = input.clone();
        }
    }
    let (rate_mean, rate_ci) = geometric_mean_ci(&ratios);
    let (cpu_mean, cpu_ci) = geometric_mean_ci(&cpu_ratios);
    let rounds = ratios.len();
    if rounds == 0 {
        println!("no round completed");
        return;
    }
    ratios.sort_by(f64::total_cmp);
    cpu_ratios.sort_by(f64::total_cmp);
    println!(
        "medians over {rounds} rounds of {n} records: throughput topology/({baseline}) {:.3}, CPU per record topology/({baseline}) {:.3}",
        ratios[ratios.len() / 2],
        cpu_ratios[cpu_ratios.len() / 2]
    );
    println!(
        "geometric means over {rounds} rounds, with 95 % confidence intervals: throughput \
         topology/({baseline}) {rate_mean:.3} [{:.3}, {:.3}], CPU per record topology/({baseline}) \
         {cpu_mean:.3} [{:.3}, {:.3}]",
        rate_ci.0, rate_ci.1, cpu_ci.0, cpu_ci.1
    );
    if metrics_cost {
        decompose_metrics_cost(&bootstrap, &last_input, &off_cpu, &on_rate, &counts);
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The calling thread's CPU time so far.
fn thread_cpu_time() -> Duration {
    // SAFETY: clock_gettime fills the zeroed struct we own.
    let t = unsafe {
        let mut t: libc::timespec = std::mem::zeroed();
        libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t);
        t
    };
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// The calling thread's CPU time in `f` (what it runs is all on this thread), the median of 5
/// runs.
fn cpu_of(mut f: impl FnMut()) -> Duration {
    let runs = (0..5)
        .map(|_| {
            let c0 = thread_cpu_time();
            f();
            (thread_cpu_time() - c0).as_secs_f64()
        })
        .collect();
    Duration::from_secs_f64(median(runs))
}

/// The cost of metrics taken apart, each part measured here and now: the stream loop's metric
/// operations (per record, per poll round, per commit, per statistics report) timed on their
/// own, weighted by how often the metrics-on rounds ran them, against the CPU per record the
/// metrics-off rounds took. The paired rounds' ratios above rest on differences smaller than
/// this machine's noise; this does not.
fn decompose_metrics_cost(
    bootstrap: &str,
    input: &str,
    off_cpu: &[f64],
    on_rate: &[f64],
    counts: &[LoopCounts],
) {
    const N: u64 = 10_000_000;
    // Per record: the task's and the thread's counter. Per poll round: the clock read twice and
    // the latency recorded (histogram, totals, windowed maximum); a commit with work records
    // its latency the same way.
    let per_record_ns =
        cpu_of(|| kstreams::core::metrics::exercise_hot_path(N, 0)).as_secs_f64() * 1e9 / N as f64;
    let per_observe_ns =
        cpu_of(|| kstreams::core::metrics::exercise_hot_path(0, N / 10)).as_secs_f64() * 1e9
            / (N / 10) as f64;
    // Per commit, the lag update: the consumer's positions (one librdkafka call, answered from
    // its own state), then a map lookup and a gauge per partition; timed as the position call
    // on a consumer assigned the input's partitions at their end (the lookups are as cheap as
    // the counters above).
    let consumer: BaseConsumer = client_config(bootstrap)
        .set("group.id", unique("bench-lag"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(input, p, Offset::End).unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let _ = consumer.poll(Duration::from_millis(500));
    let position_us = cpu_of(|| {
        for _ in 0..10_000 {
            std::hint::black_box(consumer.position().unwrap());
        }
    })
    .as_secs_f64()
        * 1e6
        / 10_000.0;
    drop(consumer);
    // Per second, librdkafka's statistics (metrics on turns them on, for the last stable
    // offsets): generated by librdkafka, parsed by rdkafka, walked for the offsets. Amplified:
    // an idle consumer reporting every 10 ms against the same consumer reporting never.
    let stats_us = statistics_cost_us(bootstrap, input);

    let pipeline_us = median(off_cpu.to_vec());
    let rate = median(on_rate.to_vec());
    let polls = median(counts.iter().map(|c| c.polls).collect());
    let commits = median(counts.iter().map(|c| c.commits).collect());
    let parts = [
        ("2 counters per record", per_record_ns / 1e3),
        ("poll rounds timed", polls * per_observe_ns / 1e3),
        (
            "commits timed and lag updated",
            commits * (per_observe_ns / 1e3 + position_us),
        ),
        ("statistics every second", stats_us / rate),
    ];
    println!(
        "metric operations measured alone: {per_record_ns:.1} ns per record (2 counters), \
         {per_observe_ns:.1} ns per timed poll or commit, {position_us:.2} µs per lag update's \
         position call, {stats_us:.1} µs per statistics report; the metrics-on rounds ran \
         {polls:.5} poll rounds and {commits:.6} commits per record at {rate:.0} records/s \
         (medians)"
    );
    let total: f64 = parts.iter().map(|(_, us)| us).sum();
    for (what, us) in parts {
        println!(
            "  {what}: {:.2} ns per record, {:.3} % of the pipeline's CPU per record",
            us * 1e3,
            100.0 * us / pipeline_us
        );
    }
    println!(
        "the cost of metrics, taken apart: {:.1} ns per record against {pipeline_us:.2} µs CPU \
         per record with metrics off (median): {:.3} % (ratio {:.4})",
        total * 1e3,
        100.0 * total / pipeline_us,
        1.0 + total / pipeline_us
    );
}

/// The CPU microseconds one statistics report costs a consumer reading `input`: librdkafka
/// builds it, rdkafka parses it, and the context walks its partitions for their last stable
/// offsets as the runtime's does. Measured as the difference between an idle consumer that
/// reports every 10 ms and the same one that never reports, 5 s each, 3 times each, alternating.
fn statistics_cost_us(bootstrap: &str, input: &str) -> f64 {
    use rdkafka::client::ClientContext;
    use rdkafka::consumer::ConsumerContext;
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};

    #[derive(Default)]
    struct StatsContext {
        reports: Arc<AtomicU64>,
        ends: Mutex<HashMap<(String, i32), i64>>,
    }
    impl ClientContext for StatsContext {
        fn stats(&self, statistics: rdkafka::Statistics) {
            self.reports.fetch_add(1, Ordering::Relaxed);
            let mut ends = self.ends.lock().unwrap();
            ends.clear();
            for (topic, t) in statistics.topics {
                for (partition, p) in t.partitions {
                    if partition >= 0 && p.ls_offset >= 0 {
                        ends.insert((topic.clone(), partition), p.ls_offset);
                    }
                }
            }
        }
    }
    impl ConsumerContext for StatsContext {}

    let run = |interval_ms: &str| -> (f64, u64) {
        let context = StatsContext::default();
        let reports = context.reports.clone();
        let consumer: BaseConsumer<StatsContext> = client_config(bootstrap)
            .set("group.id", unique("bench-stats"))
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .set("statistics.interval.ms", interval_ms)
            .create_with_context(context)
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        for p in 0..PARTITIONS {
            tpl.add_partition_offset(input, p, Offset::End).unwrap();
        }
        consumer.assign(&tpl).unwrap();
        // Settled: connected, positions fetched.
        let settle = Instant::now() + Duration::from_secs(1);
        while Instant::now() < settle {
            let _ = consumer.poll(Duration::from_millis(100));
        }
        let (c0, r0) = (cpu_time(), reports.load(Ordering::Relaxed));
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until {
            let _ = consumer.poll(Duration::from_millis(100));
        }
        (
            (cpu_time() - c0).as_secs_f64() * 1e6,
            reports.load(Ordering::Relaxed) - r0,
        )
    };
    let (mut with, mut without, mut reports) = (vec![], vec![], 0);
    for _ in 0..3 {
        let (cpu, n) = run("10");
        with.push(cpu);
        reports += n;
        without.push(run("0").0);
    }
    let per_run = reports as f64 / 3.0;
    println!(
        "statistics reports: {per_run:.0} per 5 s with a 10 ms interval; idle consumer CPU per 5 s \
         {:.0} µs with them, {:.0} µs without (medians)",
        median(with.clone()),
        median(without.clone())
    );
    ((median(with) - median(without)) / per_run.max(1.0)).max(0.0)
}

/// The geometric mean of paired ratios and a 95 % confidence interval for it: Student's t
/// interval on the ratios' logarithms (rounds are independent pairs; a ratio's logarithm is
/// symmetric where the ratio is not). The interval is `(NaN, NaN)` for fewer than 2 rounds.
fn geometric_mean_ci(ratios: &[f64]) -> (f64, (f64, f64)) {
    let logs: Vec<f64> = ratios.iter().map(|r| r.ln()).collect();
    let n = logs.len() as f64;
    let mean = logs.iter().sum::<f64>() / n;
    if logs.len() < 2 {
        return (mean.exp(), (f64::NAN, f64::NAN));
    }
    let var = logs.iter().map(|l| (l - mean).powi(2)).sum::<f64>() / (n - 1.0);
    let half = t_975(logs.len() - 1) * (var / n).sqrt();
    (mean.exp(), ((mean - half).exp(), (mean + half).exp()))
}

/// Student's t distribution's 97.5th percentile for `df` degrees of freedom (table values up to
/// 30; above, the value at the band's lowest `df`, so never smaller than the true one).
fn t_975(df: usize) -> f64 {
    const TABLE: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042,
    ];
    match df {
        0 => f64::NAN,
        1..=30 => TABLE[df - 1],
        31..=40 => 2.040,
        41..=60 => 2.021,
        61..=120 => 2.000,
        _ => 1.980,
    }
}
