//! Standby replicas (issue 14, item 3), against the real broker: two instances of the counting
//! application with `num_standby_replicas = 1` count 400,000 records, about 200,000 changelog
//! records per count task; one instance is SIGKILLed; the survivor takes its tasks over and
//! restores at most 5 % of any changelog partition (the test prints the figures), and the
//! output is still exactly once.

// The feeder is the soak's; this file writes its input at once.
#[allow(dead_code)]
mod counting_app;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kstreams::core::config::RestoreListener;
use kstreams::core::{KafkaStreams, State, StreamsConfig};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, Producer};
use streams_testkit::child::{child_mode, wait_for_stop_request, ChildProcess};
use streams_testkit::kafka::{
    client_config, consume_until, create_topic, idempotent_producer, send_retrying, Isolation,
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

fn run_child(args: &str) {
    streams_testkit::init_tracing();
    let [app, input, output, dir] = args.split('|').collect::<Vec<_>>()[..] else {
        panic!("bad child arguments {args}");
    };
    let config = StreamsConfig::new(app, &bootstrap_servers())
        .state_dir(dir)
        .num_standby_replicas(1)
        // Every count is an output record, for the exactly-once check.
        .cache_max_bytes(0)
        .restore_listener(Print)
        .transaction_timeout(Duration::from_secs(10))
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "1000");
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

/// The end offset of every partition of `topic`.
fn end_offsets(bootstrap: &str, topic: &str, partitions: i32) -> BTreeMap<i32, i64> {
    let c: BaseConsumer = client_config(bootstrap).create().unwrap();
    (0..partitions)
        .map(|p| {
            let (_, high) = c
                .fetch_watermarks(topic, p, Duration::from_secs(30))
                .unwrap();
            (p, high)
        })
        .collect()
}

#[test]
fn a_survivor_with_a_standby_restores_only_the_changelogs_tail() {
    if let Some(args) = child_mode() {
        return run_child(&args);
    }
    const N: u64 = 400_000;
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
    // Every record counted: one count per record in the output.
    consume_until(&bootstrap, &output, Isolation::ReadCommitted, LONG, |got| {
        got.len() as u64 >= N
    })
    .unwrap();
    let changelog = format!("{app}-counts-changelog");
    let sizes = end_offsets(&bootstrap, &changelog, 2);
    eprintln!(
        "{N} records counted in {:.0} s; changelog records per partition {sizes:?}",
        started.elapsed().as_secs_f64()
    );

    // What B printed so far (its own start and the first rebalance) is not the takeover's.
    b.unread_lines(usize::MAX);
    a.kill().unwrap();
    let killed = Instant::now();
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
        let got = restored.get(partition).copied().unwrap_or(0);
        let share = got as f64 / *size as f64 * 100.0;
        eprintln!(
            "changelog partition {partition}: {size} records, {got} restored by the survivor ({share:.2} %)"
        );
        assert!(*size >= 150_000, "partition {partition}: {size} records");
        assert!(
            share <= 5.0,
            "partition {partition}: {got} of {size} restored ({share:.2} %), more than 5 %"
        );
    }
    counting_app::check(&bootstrap, &output, N, GROUPS).assert_exact();
    b.stop(Duration::from_secs(60)).unwrap();
}
