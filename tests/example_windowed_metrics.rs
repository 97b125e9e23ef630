//! `examples/windowed_metrics.rs` on the `TopologyTestDriver`: its final window results
//! against an oracle written here from the definitions (1-minute tumbling and 5-minute hopping
//! windows, grace 10 s, final results once a window closes, late records dropped), over random
//! measurements of several hosts and metrics, out of order within the grace period and beyond
//! it, and malformed values (to the dead-letter topic).

#[allow(dead_code)]
#[path = "../examples/windowed_metrics.rs"]
mod windowed_metrics;

mod example_process;

use std::collections::BTreeMap;

use kstreams::core::handlers::DeadLetterTopic;
use kstreams::core::serde::{Json, RawBytes, Utf8};
use kstreams::core::TopologyTestDriver;
use rand::{Rng, SeedableRng};
use windowed_metrics::{build_topology, Counters, Metric, Topics, WindowStats};

/// The final results of windows of `size` advancing by `advance` (grace 10 s), in the order
/// they close (by window end, then key), and the drops of late records (one per closed
/// window a record falls in).
fn oracle(input: &[Metric], size: i64, advance: i64) -> (Vec<(String, WindowStats)>, u64) {
    const GRACE: i64 = 10_000;
    let mut stream_time = i64::MIN;
    let mut late = 0;
    // (start, host, metric) -> values in arrival order
    let mut windows: BTreeMap<(i64, String, String), Vec<f64>> = BTreeMap::new();
    for m in input {
        stream_time = stream_time.max(m.ts);
        let first = (m.ts - size + advance).div_euclid(advance) * advance;
        let starts: Vec<i64> = (0..)
            .map(|i| first + i * advance)
            .take_while(|s| *s <= m.ts)
            .filter(|s| *s >= 0 && s + size > m.ts)
            .collect();
        // Each window the record falls in that has closed drops it once (as Kafka Streams
        // counts: per window).
        let (open, closed): (Vec<i64>, Vec<i64>) = starts
            .into_iter()
            .partition(|s| s + size + GRACE > stream_time);
        late += closed.len() as u64;
        for s in open {
            windows
                .entry((s, m.host.clone(), m.metric.clone()))
                .or_default()
                .push(m.value);
        }
    }
    let mut out: Vec<(i64, String, WindowStats)> = windows
        .into_iter()
        .filter(|((s, _, _), _)| s + size + GRACE <= stream_time)
        .map(|((start, host, metric), values)| {
            let sum = values.iter().fold(0.0, |a, v| a + v);
            let stats = WindowStats {
                host: host.clone(),
                metric: metric.clone(),
                window_start: start,
                window_end: start + size,
                count: values.len() as u64,
                sum,
                min: values.iter().copied().fold(f64::INFINITY, f64::min),
                max: values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                avg: sum / values.len() as f64,
            };
            (start, format!("{host}|{metric}"), stats)
        })
        .collect();
    out.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    (out.into_iter().map(|(_, k, s)| (k, s)).collect(), late)
}

#[test]
fn final_window_results_equal_a_recomputation_from_the_definitions() {
    let topics = Topics::default();
    let mut counters = Counters::default();
    let driver = TopologyTestDriver::with_options(
        build_topology(&topics, &mut counters).unwrap(),
        "metrics-test",
        0,
        Box::new(DeadLetterTopic("dlq".into())),
    )
    .unwrap();
    let input_topic = driver.input_topic::<String, Vec<u8>>(&topics.metrics, Utf8, RawBytes);
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x3e7);
    let mut ts = 1_000_i64;
    let mut input = vec![];
    let mut malformed = 0;
    for i in 0..4_000 {
        ts += rng.random_range(0..400);
        // Mostly in order; some records up to 40 s late (beyond the 10 s grace at times).
        let t = if rng.random_bool(0.1) {
            (ts - rng.random_range(0..40_000)).max(1)
        } else {
            ts
        };
        let m = Metric {
            host: format!("h{}", rng.random_range(0..3)),
            metric: ["cpu", "mem"][rng.random_range(0..2)].into(),
            value: f64::from(rng.random_range(0..10_000)) / 100.0,
            ts: t,
        };
        if i % 1_000 == 500 {
            malformed += 1;
            input_topic
                .pipe_at(m.host.clone(), b"{\"host\": 1}".to_vec(), t)
                .unwrap();
            continue;
        }
        input_topic
            .pipe_at(m.host.clone(), serde_json::to_vec(&m).unwrap(), t)
            .unwrap();
        input.push(m);
    }
    let read = |topic: &str| {
        driver
            .output_topic::<String, WindowStats>(topic, Utf8, Json::<WindowStats>::default())
            .read_key_values()
            .unwrap()
    };
    let (got_1m, got_5m) = (read(&topics.out_1m), read(&topics.out_5m));
    let (want_1m, late_1m) = oracle(&input, 60_000, 60_000);
    let (want_5m, late_5m) = oracle(&input, 300_000, 60_000);
    eprintln!(
        "windowed metrics: {} measurements, 1m results {} (late {}), 5m results {} (late {}), malformed {malformed}",
        input.len(),
        got_1m.len(),
        counters.late_1m.count(),
        got_5m.len(),
        counters.late_5m.count()
    );
    // Windows closing at the same stream time come out in an order of their own: compare
    // the results as sets, and check there is one per window.
    let sorted = |mut v: Vec<(String, WindowStats)>| {
        v.sort_by(|a, b| (a.1.window_start, &a.0).cmp(&(b.1.window_start, &b.0)));
        v
    };
    assert_eq!(sorted(got_1m), sorted(want_1m));
    assert_eq!(sorted(got_5m), sorted(want_5m));
    assert_eq!(counters.late_1m.count(), late_1m);
    assert_eq!(counters.late_5m.count(), late_5m);
    assert!(late_1m > 0 && late_5m > 0, "the input has late records");
    let dead = driver
        .output_topic::<String, Vec<u8>>("dlq", Utf8, RawBytes)
        .read_values()
        .unwrap();
    assert_eq!(dead.len(), malformed);
}

#[test]
fn the_example_binary_is_exactly_once_under_sigkill() {
    use std::time::Duration;
    use streams_testkit::kafka::{read_to_end, Isolation};
    use streams_testkit::unique;
    let bootstrap = streams_testkit::bootstrap_servers();
    let names: Vec<String> = ["wm-in", "wm-1m", "wm-5m", "wm-dlq", "wm-app"]
        .iter()
        .map(|n| unique(n))
        .collect();
    let dir = std::env::temp_dir().join(unique("wm-state"));
    let common = |extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = vec![
            "--application-id".into(),
            names[4].clone(),
            "--state-dir".into(),
            dir.display().to_string(),
            "--metrics".into(),
            names[0].clone(),
            "--out-1m".into(),
            names[1].clone(),
            "--out-5m".into(),
            names[2].clone(),
            "--dead-letters".into(),
            names[3].clone(),
            // A killed instance's group membership ends after 6 s, not 45.
            "--set".into(),
            "session.timeout.ms=6000".into(),
            "--set".into(),
            "heartbeat.interval.ms=1000".into(),
        ];
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    const KILLS: usize = 2;
    example_process::kill_then_finish(
        "windowed_metrics",
        common,
        &["--generate", "30000"],
        KILLS,
        "records in ",
        (&names[4], &names[0]),
    );

    // The oracle, per input partition (each task has its own stream time), from the input as
    // it is in the topic.
    let mut by_partition: BTreeMap<i32, Vec<Metric>> = BTreeMap::new();
    let mut malformed = 0;
    for r in read_to_end(
        &bootstrap,
        &names[0],
        Isolation::ReadCommitted,
        Duration::from_secs(60),
    )
    .unwrap()
    {
        match serde_json::from_slice::<Metric>(r.value.as_deref().unwrap_or_default()) {
            Ok(m) => by_partition.entry(r.partition).or_default().push(m),
            Err(_) => malformed += 1,
        }
    }
    let (mut want_1m, mut want_5m) = (vec![], vec![]);
    for input in by_partition.values() {
        want_1m.extend(oracle(input, 60_000, 60_000).0);
        want_5m.extend(oracle(input, 300_000, 60_000).0);
    }
    let read = |topic: &str| -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = read_to_end(
            &bootstrap,
            topic,
            Isolation::ReadCommitted,
            Duration::from_secs(60),
        )
        .unwrap()
        .into_iter()
        .map(|r| {
            let s: WindowStats = serde_json::from_slice(r.value.as_deref().unwrap()).unwrap();
            (r.key_str(), serde_json::to_string(&s).unwrap())
        })
        .collect();
        v.sort();
        v
    };
    let as_json = |v: Vec<(String, WindowStats)>| -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = v
            .into_iter()
            .map(|(k, s)| (k, serde_json::to_string(&s).unwrap()))
            .collect();
        v.sort();
        v
    };
    let (got_1m, got_5m) = (read(&names[1]), read(&names[2]));
    let (want_1m, want_5m) = (as_json(want_1m), as_json(want_5m));
    let dead = read_to_end(
        &bootstrap,
        &names[3],
        Isolation::ReadCommitted,
        Duration::from_secs(60),
    )
    .unwrap()
    .len();
    let duplicates = |v: &[(String, String)]| v.windows(2).filter(|w| w[0] == w[1]).count();
    eprintln!(
        "windowed metrics under SIGKILL: kills {KILLS}, measurements {}, 1m results {} \
         (expected {}, duplicates {}), 5m results {} (expected {}, duplicates {}), malformed \
         {malformed}, dead letters {dead}",
        by_partition.values().map(Vec::len).sum::<usize>(),
        got_1m.len(),
        want_1m.len(),
        duplicates(&got_1m),
        got_5m.len(),
        want_5m.len(),
        duplicates(&got_5m)
    );
    assert_eq!(got_1m, want_1m);
    assert_eq!(got_5m, want_5m);
    assert_eq!(dead, malformed);
}
