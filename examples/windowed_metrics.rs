//! Windowed metrics with the DSL, exactly-once: per host and metric, the count, sum, min, max
//! and mean of each 1-minute window and of each 5-minute window advancing by a minute, final
//! results only.
//!
//! ```text
//! scripts/run-example.sh windowed_metrics --generate 100000 --run-for 60
//! ```
//!
//! Input `metrics` (key: host, value `{"host", "metric", "value", "ts"}`); event time is `ts`.
//! Outputs `metrics-1m` (60 s tumbling windows, grace 10 s) and `metrics-5m` (5-minute windows
//! advancing by 60 s, grace 10 s): key `"<host>|<metric>"`, value `{"host", "metric",
//! "window_start", "window_end", "count", "sum", "min", "max", "avg"}`, once per window when it
//! closes. Records later than the grace period are dropped and counted.
//!
//! Each host's records stay in the task that reads its partition: the aggregation is per host
//! (the input's key), one aggregate holding every metric of the host, and each closed window
//! emits one record per metric. Re-keying by `host|metric` would send records through a
//! repartition topic, where partitions interleave at different paces and a valid record can
//! arrive behind stream time and be dropped as late.
//!
//! A value that is not such JSON goes to the dead-letter topic (`metrics-dead-letters`). Flags
//! as `examples/fraud_detection.rs`: `--bootstrap-servers`, `--application-id`,
//! `--state-dir`, `--metrics`, `--out-1m`, `--out-5m`, `--dead-letters`, `--generate N`,
//! `--at-least-once`, `--describe`, `--run-for SECONDS`, `--set key=value`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kstreams::core::handlers::DeadLetterTopic;
use kstreams::core::serde::{Json, Utf8};
use kstreams::core::Topology;
use kstreams::dsl::{
    Consumed, Grouped, LateRecords, Materialized, Produced, StreamsBuilder, TimeWindows,
};
use serde::{Deserialize, Serialize};

/// One measurement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metric {
    /// The host measured (also the record key).
    pub host: String,
    /// What was measured.
    pub metric: String,
    /// The value.
    pub value: f64,
    /// Event time, epoch milliseconds.
    pub ts: i64,
}

/// The statistics of one metric of one host in one window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowStats {
    /// The host.
    pub host: String,
    /// The metric.
    pub metric: String,
    /// The window's start (inclusive), epoch milliseconds.
    pub window_start: i64,
    /// The window's end (exclusive).
    pub window_end: i64,
    /// Measurements in the window.
    pub count: u64,
    /// Their sum, in arrival order.
    pub sum: f64,
    /// The smallest.
    pub min: f64,
    /// The largest.
    pub max: f64,
    /// `sum / count`.
    pub avg: f64,
}

/// The running statistics of one metric.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Running {
    count: u64,
    sum: f64,
    min: f64,
    max: f64,
}

/// The 1-minute windows: 60 s tumbling, grace 10 s.
pub fn one_minute() -> TimeWindows {
    TimeWindows::of_size_and_grace(Duration::from_secs(60), Duration::from_secs(10))
}

/// The 5-minute windows: advancing by 60 s, grace 10 s.
pub fn five_minutes() -> TimeWindows {
    TimeWindows::of_size_and_grace(Duration::from_secs(300), Duration::from_secs(10))
        .advance_by(Duration::from_secs(60))
}

/// The topics the application reads and writes.
#[derive(Debug, Clone)]
pub struct Topics {
    /// Input.
    pub metrics: String,
    /// Output: 1-minute windows.
    pub out_1m: String,
    /// Output: 5-minute windows.
    pub out_5m: String,
    /// Output: the values that are not measurements.
    pub dead_letters: String,
}

impl Default for Topics {
    fn default() -> Self {
        Topics {
            metrics: "metrics".into(),
            out_1m: "metrics-1m".into(),
            out_5m: "metrics-5m".into(),
            dead_letters: "metrics-dead-letters".into(),
        }
    }
}

/// What the live summary counts.
#[derive(Clone, Default)]
pub struct Counters {
    /// Measurements read.
    pub records: Arc<AtomicU64>,
    /// Window results written.
    pub results: Arc<AtomicU64>,
    /// Measurements dropped as late by the 1-minute windows.
    pub late_1m: LateRecords,
    /// ... and by the 5-minute windows.
    pub late_5m: LateRecords,
}

/// The topology: both window sizes over `topics`, counting into `counters`.
pub fn build_topology(
    topics: &Topics,
    counters: &mut Counters,
) -> kstreams::core::Result<Topology> {
    let builder = StreamsBuilder::new();
    let serde = Json::<Metric>::default();
    let records = counters.records.clone();
    let grouped = builder
        .stream_with::<String, Metric>(
            topics.metrics.as_str(),
            Consumed::with(Utf8, serde.clone()).with_timestamp_extractor(|r, _| r.value().ts),
        )
        .peek(move |_, _| {
            records.fetch_add(1, Ordering::Relaxed);
        })
        .group_by_key_with(Grouped::with(Utf8, serde));
    for (windows, topic, store, late) in [
        (
            one_minute(),
            &topics.out_1m,
            "per-host-1m",
            &mut counters.late_1m,
        ),
        (
            five_minutes(),
            &topics.out_5m,
            "per-host-5m",
            &mut counters.late_5m,
        ),
    ] {
        let windowed = grouped.windowed_by(windows).emit_final();
        *late = windowed.late_records();
        let results = counters.results.clone();
        windowed
            .aggregate(
                BTreeMap::<String, Running>::new,
                |_, m: Metric, mut per_metric| {
                    let r = per_metric.entry(m.metric).or_insert(Running {
                        count: 0,
                        sum: 0.0,
                        min: f64::INFINITY,
                        max: f64::NEG_INFINITY,
                    });
                    r.count += 1;
                    r.sum += m.value;
                    r.min = r.min.min(m.value);
                    r.max = r.max.max(m.value);
                    per_metric
                },
                Materialized::with(Json::<BTreeMap<String, Running>>::default()).named(store),
            )
            .to_stream()
            .flat_map(|w, per_metric| {
                per_metric
                    .into_iter()
                    .map(|(metric, r)| {
                        let stats = WindowStats {
                            host: w.key.clone(),
                            metric: metric.clone(),
                            window_start: w.start,
                            window_end: w.end,
                            count: r.count,
                            sum: r.sum,
                            min: r.min,
                            max: r.max,
                            avg: r.sum / r.count as f64,
                        };
                        (format!("{}|{metric}", w.key), stats)
                    })
                    .collect::<Vec<_>>()
            })
            .peek(move |_, _| {
                results.fetch_add(1, Ordering::Relaxed);
            })
            .to_with(topic, Produced::with(Utf8, Json::<WindowStats>::default()));
    }
    builder.build()
}

fn main() -> anyhow::Result<()> {
    cli::run()
}

#[path = "support/app.rs"]
mod app;

/// The command line application: flags, topics, generated input, the live summary.
mod cli {
    use super::*;
    use rdkafka::producer::{BaseRecord, Producer};
    use streams_testkit::kafka::{idempotent_producer, send_retrying};

    /// Hosts reporting cpu, memory and latency every second of event time, in order.
    fn generate(bootstrap: &str, topic: &str, n: usize) -> anyhow::Result<()> {
        let p = idempotent_producer(bootstrap)?;
        let hosts = 20;
        let metrics = ["cpu", "memory", "latency"];
        let t0 = app::generated_event_times_start(Duration::from_secs((n / hosts) as u64 + 1));
        for i in 0..n {
            let host = format!("host-{}", i % hosts);
            let metric = metrics[(i / hosts) % metrics.len()];
            let ts = t0 + (i / hosts) as i64 * 1_000;
            let m = Metric {
                host: host.clone(),
                metric: metric.into(),
                value: ((i * 37) % 1_000) as f64 / 10.0,
                ts,
            };
            let v = if i % 5_000 == 4_999 {
                "{\"host\": 1}".to_string() // malformed: goes to the dead-letter topic
            } else {
                serde_json::to_string(&m)?
            };
            send_retrying(
                &p,
                BaseRecord::to(topic).key(&host).payload(&v).timestamp(ts),
            )?;
        }
        p.flush(Duration::from_secs(60))?;
        println!("generated {n} measurements into {topic}");
        Ok(())
    }

    pub(super) fn run() -> anyhow::Result<()> {
        app::init_logging();
        let mut topics = Topics::default();
        let args = app::Args::parse(
            "windowed_metrics",
            "windowed-metrics",
            &mut [
                ("--metrics", &mut topics.metrics),
                ("--out-1m", &mut topics.out_1m),
                ("--out-5m", &mut topics.out_5m),
                ("--dead-letters", &mut topics.dead_letters),
            ],
        )?;
        let mut counters = Counters::default();
        let topology = build_topology(&topics, &mut counters)?;
        if args.describe {
            app::describe(&topology);
            return Ok(());
        }
        let bootstrap = args.bootstrap_servers();
        app::create_topics(
            &bootstrap,
            &[
                &topics.metrics,
                &topics.out_1m,
                &topics.out_5m,
                &topics.dead_letters,
            ],
        )?;
        if args.generate > 0 {
            generate(&bootstrap, &topics.metrics, args.generate)?;
        }
        let config = args
            .config(&bootstrap)
            .deserialization_error_handler(DeadLetterTopic(topics.dead_letters.clone()));
        app::run(topology, config, args.run_for, || {
            let n = counters.records.load(Ordering::Relaxed);
            let line = format!(
                "records in {n}, window results out {}, dropped as late {} (1m) {} (5m)",
                counters.results.load(Ordering::Relaxed),
                counters.late_1m.count(),
                counters.late_5m.count()
            );
            (n, line)
        })
    }
}
