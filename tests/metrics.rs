//! Metrics against the real broker (issue 14, item 1): after a known workload the counters
//! equal it, the consumer lag reaches 0 once the input is consumed, and the Prometheus text
//! parses (with a parser library).

use std::time::{Duration, Instant};

use kstreams::core::handlers::LogAndContinue;
use kstreams::core::metrics::Metrics;
use kstreams::core::serde::{BigEndian, Utf8};
use kstreams::core::store::KeyValueStore;
use kstreams::core::{KafkaStreams, Sink, Source, State, StreamsConfig, TopologyBuilder};
use kstreams::dsl::{Consumed, Materialized, Produced, StreamsBuilder, TimeWindows};
use rdkafka::producer::{BaseRecord, Producer};
use streams_testkit::kafka::{
    consume_until, create_topic, idempotent_producer, partition_census, send_retrying, Isolation,
};
use streams_testkit::{bootstrap_servers, unique};

const LONG: Duration = Duration::from_secs(120);
const PARTITIONS: i32 = 2;

/// Waits until `done` holds for the instance's metrics; panics with the last metrics after
/// `timeout`.
fn wait_for_metrics(streams: &KafkaStreams, timeout: Duration, done: impl Fn(&Metrics) -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        let m = streams.metrics();
        if done(&m) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "metrics condition not met within {timeout:?}: {m:#?}"
        );
        // Polling the instance's metrics: there is no notification of a metric's change.
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A test's topics (created, `partitions` each) and application id.
struct Setup {
    bootstrap: String,
    input: String,
    output: String,
    app: String,
}

fn setup(prefix: &str, partitions: i32) -> Setup {
    streams_testkit::init_tracing();
    let bootstrap = bootstrap_servers();
    let (input, output, app) = (
        unique(&format!("{prefix}-in")),
        unique(&format!("{prefix}-out")),
        unique(&format!("{prefix}-app")),
    );
    create_topic(&bootstrap, &input, partitions, &[]).unwrap();
    create_topic(&bootstrap, &output, partitions, &[]).unwrap();
    Setup {
        bootstrap,
        input,
        output,
        app,
    }
}

impl Setup {
    /// The application's configuration: its own state directory.
    fn config(&self) -> StreamsConfig {
        StreamsConfig::new(&self.app, &self.bootstrap)
            .state_dir(std::env::temp_dir().join(unique(&format!("{}-state", self.app))))
    }
}

/// Waits until every one of `partitions` input partitions has a lag of 0.
fn wait_for_zero_lag(streams: &KafkaStreams, partitions: usize) {
    wait_for_metrics(streams, LONG, |m| {
        let lags: Vec<f64> = m
            .named("kstreams_consumer_lag_records")
            .map(|l| l.value)
            .collect();
        lags.len() == partitions && lags.iter().all(|l| *l == 0.0)
    });
}

#[test]
fn the_counters_equal_a_known_workload_and_lag_reaches_zero() {
    const GOOD: u64 = 300;
    const BAD: u64 = 25;
    let t = setup("m", PARTITIONS);
    let (bootstrap, input, output) = (&t.bootstrap, &t.input, &t.output);
    // Good records carry an 8-byte number; bad ones 3 bytes, which the value serde refuses.
    let p = idempotent_producer(bootstrap).unwrap();
    let (mut good, mut bad) = (0, 0);
    for i in 0..GOOD + BAD {
        let key = format!("k{}", i % 17);
        let value: Vec<u8> = if i % 13 == 5 && bad < BAD {
            bad += 1;
            vec![1, 2, 3]
        } else {
            good += 1;
            i.to_be_bytes().to_vec()
        };
        send_retrying(&p, BaseRecord::to(input).key(&key).payload(&value)).unwrap();
    }
    p.flush(Duration::from_secs(30)).unwrap();
    assert_eq!((good, bad), (GOOD, BAD), "the workload as written");

    let builder = StreamsBuilder::new();
    builder
        .stream_with::<String, u64>(input, Consumed::with(Utf8, BigEndian))
        .map_values(|v| v + 1)
        .to_with(output, Produced::with(Utf8, BigEndian));
    let config = t.config().deserialization_error_handler(LogAndContinue);
    let streams = KafkaStreams::new(builder.build().unwrap(), config).unwrap();
    let before = streams.metrics();
    assert_eq!(
        before.sum("kstreams_state", &[("state", "Created")]),
        1.0,
        "{before:#?}"
    );
    streams.start().unwrap();
    if let Err(e) = consume_until(bootstrap, output, Isolation::ReadCommitted, LONG, |got| {
        got.len() as u64 >= GOOD
    }) {
        // Where it stands: the output per partition under both isolation levels, the input,
        // and what the application counted (records per task, lag per input partition).
        panic!(
            "{e:#}\n(records, last offset) per output partition: read_committed {}, \
             read_uncommitted {}; per input partition: {}\nmetrics:\n{}",
            partition_census(bootstrap, output, Isolation::ReadCommitted),
            partition_census(bootstrap, output, Isolation::ReadUncommitted),
            partition_census(bootstrap, input, Isolation::ReadUncommitted),
            streams.metrics_text()
        );
    }
    // Consumed to the end: every input partition's lag is 0 (it is updated each commit).
    wait_for_zero_lag(&streams, PARTITIONS as usize);
    let m = streams.metrics();
    let text = streams.metrics_text();
    eprintln!("metrics after the workload:\n{text}");

    assert_eq!(
        m.sum("kstreams_task_process_records_total", &[]),
        GOOD as f64
    );
    assert_eq!(
        m.sum("kstreams_thread_process_records_total", &[]),
        GOOD as f64
    );
    assert_eq!(
        m.sum(
            "kstreams_task_dropped_records_total",
            &[("reason", "deserialization")]
        ),
        BAD as f64
    );
    assert_eq!(
        m.sum("kstreams_task_dropped_records_total", &[("reason", "late")]),
        0.0
    );
    assert_eq!(m.sum("kstreams_thread_tasks", &[]), PARTITIONS as f64);
    assert_eq!(m.sum("kstreams_state", &[("state", "Running")]), 1.0);
    assert_eq!(m.sum("kstreams_state", &[]), 1.0, "one current state");
    assert!(m.sum("kstreams_thread_commit_latency_seconds_count", &[]) >= 1.0);
    assert!(m.sum("kstreams_thread_poll_latency_seconds_count", &[]) >= 1.0);
    let commit_avg = m.sum("kstreams_thread_commit_latency_seconds_avg", &[]);
    let commit_max = m.sum("kstreams_thread_commit_latency_max_seconds", &[]);
    assert!(
        commit_avg > 0.0 && commit_max > 0.0,
        "commit latency avg {commit_avg}, max {commit_max}"
    );

    // The text format, read by a Prometheus text parser: the same values.
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .expect("the metrics text parses");
    let sample_sum = |name: &str, label: Option<(&str, &str)>| -> f64 {
        scrape
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .filter(|s| label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => 0.0,
            })
            .sum()
    };
    assert_eq!(
        sample_sum("kstreams_task_process_records_total", None),
        GOOD as f64
    );
    assert_eq!(
        sample_sum(
            "kstreams_task_dropped_records_total",
            Some(("reason", "deserialization"))
        ),
        BAD as f64
    );
    assert_eq!(
        sample_sum("kstreams_consumer_lag_records", None),
        0.0,
        "lag in the text"
    );
    assert!(scrape
        .samples
        .iter()
        .any(|s| s.metric == "kstreams_thread_poll_latency_seconds"
            && matches!(s.value, prometheus_parse::Value::Histogram(_))));
    // The parser passes over lines it cannot read: every sample line must have been read.
    assert!(
        text.ends_with("# EOF\n"),
        "OpenMetrics text ends with # EOF"
    );
    let parsed: std::collections::BTreeSet<&str> =
        scrape.samples.iter().map(|s| s.metric.as_str()).collect();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let name = line.split(['{', ' ']).next().unwrap();
        let histogram_part = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix));
        let name = histogram_part.unwrap_or(name);
        assert!(parsed.contains(name), "line not parsed: {line}");
    }

    assert!(streams.close(Duration::from_secs(60)));
    let after = streams.metrics();
    assert_eq!(after.sum("kstreams_state", &[("state", "NotRunning")]), 1.0);
}

#[test]
fn records_after_their_windows_grace_are_counted_as_dropped_late() {
    const ON_TIME: u64 = 40;
    const LATE: u64 = 15;
    // One partition: stream time moves in the order the records are written.
    let t = setup("ml", 1);
    let (bootstrap, input, output) = (&t.bootstrap, &t.input, &t.output);
    let p = idempotent_producer(bootstrap).unwrap();
    let t0 = 1_000_000_i64;
    // On time: one record a second for 40 s; then 15 records 20 s behind stream time, whose
    // 1-second windows closed (no grace) long before.
    for i in 0..ON_TIME {
        let r = BaseRecord::to(input)
            .key("k")
            .payload("x")
            .timestamp(t0 + i as i64 * 1000);
        send_retrying(&p, r).unwrap();
    }
    for i in 0..LATE {
        let r = BaseRecord::to(input)
            .key("k")
            .payload("late")
            .timestamp(t0 + i as i64 * 1000);
        send_retrying(&p, r).unwrap();
    }
    p.flush(Duration::from_secs(30)).unwrap();

    let builder = StreamsBuilder::new();
    builder
        .stream::<String, String>(input)
        .group_by_key()
        .windowed_by(TimeWindows::of_size_with_no_grace(Duration::from_secs(1)))
        .count_with(Materialized::with(BigEndian).named("per-second"))
        .to(output);
    let config = t.config().rocksdb_memory(32 << 20, 16 << 20);
    let streams = KafkaStreams::new(builder.build().unwrap(), config).unwrap();
    streams.start().unwrap();
    assert!(streams.wait_for(|s| s == State::Running, LONG));
    wait_for_metrics(&streams, LONG, |m| {
        m.sum("kstreams_task_process_records_total", &[]) >= (ON_TIME + LATE) as f64
    });
    let m = streams.metrics();
    assert_eq!(
        m.sum("kstreams_task_dropped_records_total", &[("reason", "late")]),
        LATE as f64,
        "{m:#?}"
    );
    assert_eq!(
        m.sum(
            "kstreams_task_dropped_records_total",
            &[("reason", "deserialization")]
        ),
        0.0
    );
    // The window store is in RocksDB: its shared memory against the configured budget.
    let rocks = |name: &str| m.sum(&format!("kstreams_rocksdb_{name}"), &[]);
    assert_eq!(rocks("block_cache_capacity_bytes"), (32 << 20) as f64);
    assert_eq!(rocks("memtable_limit_bytes"), (16 << 20) as f64);
    let (usage, memtables) = (
        rocks("block_cache_usage_bytes"),
        rocks("memtable_usage_bytes"),
    );
    eprintln!("RocksDB: block cache {usage} bytes of 32 MiB, memtables {memtables} bytes");
    assert!(memtables > 0.0, "the store wrote to its memtable");
    assert!(usage >= memtables && usage <= (32 << 20) as f64);
    assert!(streams.close(Duration::from_secs(60)));
}

#[test]
fn with_metrics_recording_off_only_the_state_is_reported() {
    const N: usize = 50;
    let t = setup("mo", 1);
    let (bootstrap, input, output) = (&t.bootstrap, &t.input, &t.output);
    let p = idempotent_producer(bootstrap).unwrap();
    for i in 0..N {
        let key = format!("k{i}");
        send_retrying(&p, BaseRecord::to(input).key(&key).payload("v")).unwrap();
    }
    p.flush(Duration::from_secs(30)).unwrap();
    let builder = StreamsBuilder::new();
    builder.stream::<String, String>(input).to(output);
    let config = t.config().metrics_recording(false);
    let streams = KafkaStreams::new(builder.build().unwrap(), config).unwrap();
    streams.start().unwrap();
    consume_until(bootstrap, output, Isolation::ReadCommitted, LONG, |got| {
        got.len() >= N
    })
    .unwrap();
    let m = streams.metrics();
    let names: std::collections::BTreeSet<&str> = m.0.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(
        names,
        std::collections::BTreeSet::from(["kstreams_state"]),
        "{m:#?}"
    );
    assert_eq!(m.sum("kstreams_state", &[("state", "Running")]), 1.0);
    assert!(streams.close(Duration::from_secs(60)));
}

/// Under exactly-once the consumer reads read_committed: a partition whose end holds another
/// producer's open transaction is read up to its last stable offset, and the lag is 0 there
/// (Kafka's `records-lag`), not the open transaction's records.
#[test]
fn lag_under_exactly_once_is_measured_to_the_last_stable_offset() {
    const COMMITTED: usize = 60;
    const OPEN: usize = 20;
    let t = setup("mt", 1);
    let (bootstrap, input, output) = (&t.bootstrap, &t.input, &t.output);
    let transactional = |id: &str| -> rdkafka::producer::BaseProducer {
        let p: rdkafka::producer::BaseProducer = streams_testkit::kafka::client_config(bootstrap)
            .set("transactional.id", id)
            .create()
            .unwrap();
        p.init_transactions(Duration::from_secs(30)).unwrap();
        p.begin_transaction().unwrap();
        p
    };
    let committed = transactional(&unique("mt-committed"));
    for i in 0..COMMITTED {
        let key = format!("k{i}");
        send_retrying(&committed, BaseRecord::to(input).key(&key).payload("v")).unwrap();
    }
    committed
        .commit_transaction(Duration::from_secs(30))
        .unwrap();
    // Left open while the application runs.
    let open = transactional(&unique("mt-open"));
    for i in 0..OPEN {
        let key = format!("open{i}");
        send_retrying(&open, BaseRecord::to(input).key(&key).payload("v")).unwrap();
    }
    open.flush(Duration::from_secs(30)).unwrap();

    let builder = StreamsBuilder::new();
    builder.stream::<String, String>(input).to(output);
    let streams = KafkaStreams::new(builder.build().unwrap(), t.config()).unwrap();
    streams.start().unwrap();
    consume_until(bootstrap, output, Isolation::ReadCommitted, LONG, |got| {
        got.len() >= COMMITTED
    })
    .unwrap();
    wait_for_zero_lag(&streams, 1);
    let m = streams.metrics();
    assert_eq!(
        m.sum("kstreams_task_process_records_total", &[]),
        COMMITTED as f64,
        "the open transaction's records are not read"
    );
    open.abort_transaction(Duration::from_secs(30)).unwrap();
    assert!(streams.close(Duration::from_secs(60)));
}

/// Per record one get and one put; every tenth record a scan of the whole store.
struct CountAndScan;

impl kstreams::core::Processor for CountAndScan {
    type KeyIn = String;
    type ValueIn = String;
    type KeyOut = String;
    type ValueOut = u64;

    fn process(
        &mut self,
        record: kstreams::core::Record<String, String>,
        ctx: &mut kstreams::core::ProcessorContext<'_, String, u64>,
    ) -> kstreams::core::Result<()> {
        let store = ctx.state_store::<KeyValueStore<String, u64>>("counts")?;
        let n = store.get(record.key())?.unwrap_or(0) + 1;
        store.put(record.key(), &n)?;
        if record.value().ends_with('0') {
            let _ = store.all()?.count();
        }
        ctx.forward(record.with_value(n))
    }
}

#[test]
fn store_calls_are_counted_per_store() {
    const N: usize = 100;
    let t = setup("ms", 1);
    let (bootstrap, input, output) = (&t.bootstrap, &t.input, &t.output);
    let p = idempotent_producer(bootstrap).unwrap();
    for i in 0..N {
        let (key, value) = (format!("k{}", i % 7), format!("v{i}"));
        send_retrying(&p, BaseRecord::to(input).key(&key).payload(&value)).unwrap();
    }
    p.flush(Duration::from_secs(30)).unwrap();
    let topology = TopologyBuilder::new()
        .add_source("in", Source::new([input.as_str()], Utf8, Utf8))
        .add_processor("count", || CountAndScan, ["in"])
        .add_state_store(
            KeyValueStore::<String, u64>::builder("counts", Utf8, BigEndian),
            ["count"],
        )
        .add_sink(
            "out",
            Sink::<String, u64>::new(output.as_str(), Utf8, BigEndian),
            ["count"],
        )
        .build()
        .unwrap();
    let streams = KafkaStreams::new(topology, t.config()).unwrap();
    streams.start().unwrap();
    wait_for_metrics(&streams, LONG, |m| {
        m.sum("kstreams_task_process_records_total", &[]) >= N as f64
    });
    let m = streams.metrics();
    let store = [("store", "counts")];
    assert_eq!(
        m.sum("kstreams_store_get_total", &store),
        N as f64,
        "{m:#?}"
    );
    assert_eq!(m.sum("kstreams_store_put_total", &store), N as f64);
    assert_eq!(m.sum("kstreams_store_range_total", &store), (N / 10) as f64);
    assert!(streams.close(Duration::from_secs(60)));
}
