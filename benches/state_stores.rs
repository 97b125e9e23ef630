//! State-store benchmarks, figures printed:
//!
//! ```text
//! cargo bench --bench state_stores [-- RESTORE_RECORDS DRIVER_RECORDS]
//! ```
//!
//! 1. Restoration: a changelog topic (1 partition) is filled with RESTORE_RECORDS records
//!    (default 1,000,000; 100,000 distinct keys, 8-byte values). Then, in the same run, (a) a
//!    raw rdkafka consumer reads the topic `read_committed` from the beginning to its end (with
//!    `fetch.queue.backoff.ms=10`, as the restore consumer), and
//!    (b) a `KafkaStreams` application whose store uses that topic as its changelog restores it
//!    into RocksDB (timed from the restore listener's start to its end). Prints records/s for
//!    both and the ratio (b)/(a), twice, alternating the order.
//! 2. Count per key in the `TopologyTestDriver` with a RocksDB store: DRIVER_RECORDS records
//!    (default 200,000) over 10,000 keys; prints the time per record, and, as a baseline in the
//!    same run, the same topology with an in-memory store.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kstreams::core::config::RestoreListener;
use kstreams::core::serde::{BigEndian, Utf8};
use kstreams::core::store::KeyValueStore;
use kstreams::core::{
    KafkaStreams, Processor, ProcessorContext, Record, Result, Sink, Source, State, StreamsConfig,
    Topology, TopologyBuilder, TopologyTestDriver,
};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use streams_testkit::kafka::{client_config, create_topic, send_retrying};
use streams_testkit::{bootstrap_servers, unique};

struct Counter;

impl Processor for Counter {
    type KeyIn = String;
    type ValueIn = String;
    type KeyOut = String;
    type ValueOut = u64;
    fn process(
        &mut self,
        record: Record<String, String>,
        ctx: &mut ProcessorContext<'_, String, u64>,
    ) -> Result<()> {
        let store = ctx.state_store::<KeyValueStore<String, u64>>("counts")?;
        let n = store.get(record.key())?.unwrap_or(0) + 1;
        store.put(record.key(), &n)?;
        ctx.forward(record.with_value(n))
    }
}

fn topology(input: &str, output: &str, in_memory: bool) -> Topology {
    let store = KeyValueStore::<String, u64>::builder("counts", Utf8, BigEndian);
    let store = if in_memory { store.in_memory() } else { store };
    TopologyBuilder::new()
        .add_source("in", Source::new([input], Utf8, Utf8))
        .add_processor("count", || Counter, ["in"])
        .add_state_store(store, ["count"])
        .add_sink(
            "out",
            Sink::<String, u64>::new(output, Utf8, BigEndian),
            ["count"],
        )
        .build()
        .unwrap()
}

fn fill(bootstrap: &str, topic: &str, n: usize) {
    let p: BaseProducer = client_config(bootstrap)
        .set("enable.idempotence", "true")
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .create()
        .unwrap();
    for i in 0..n {
        let key = format!("key-{:06}", i % 100_000);
        let value = (i as u64).to_be_bytes();
        send_retrying(
            &p,
            BaseRecord::to(topic)
                .key(&key)
                .payload(&value[..])
                .partition(0),
        )
        .unwrap();
    }
    p.flush(Duration::from_secs(120)).unwrap();
}

fn raw_read(bootstrap: &str, topic: &str) -> (usize, f64) {
    let c: BaseConsumer = client_config(bootstrap)
        .set("group.id", unique("bench-raw-reader"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", "read_committed")
        // As the restore consumer: fetching again 10 ms after the local queue drained.
        .set("fetch.queue.backoff.ms", "10")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .unwrap();
    let start = Instant::now();
    c.assign(&tpl).unwrap();
    let mut n = 0usize;
    loop {
        match c.poll(Duration::from_millis(500)) {
            Some(Ok(_)) => n += 1,
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => break,
            Some(Err(e)) => panic!("{e}"),
            None => {}
        }
    }
    (n, n as f64 / start.elapsed().as_secs_f64())
}

/// Start, end and record count of a restoration.
type Span = (Option<Instant>, Option<Instant>, u64);

#[derive(Default, Clone)]
struct Timing(Arc<Mutex<Span>>);

impl RestoreListener for Timing {
    fn on_restore_start(&self, _: &str, _: i32, _: i64) {
        self.0.lock().unwrap().0 = Some(Instant::now());
    }
    fn on_restore_end(&self, _: &str, _: i32, total: u64) {
        let mut t = self.0.lock().unwrap();
        t.1 = Some(Instant::now());
        t.2 = total;
    }
}

fn restore(bootstrap: &str, app: &str, input: &str, output: &str) -> (u64, f64) {
    let timing = Timing::default();
    let config = StreamsConfig::new(app, bootstrap)
        .state_dir(std::env::temp_dir().join(unique("bench-restore")))
        .restore_listener(timing.clone());
    let streams = KafkaStreams::new(topology(input, output, false), config).unwrap();
    streams.start().unwrap();
    assert!(streams.wait_for(|s| s == State::Running, Duration::from_secs(600)));
    assert!(streams.close(Duration::from_secs(60)));
    let (start, end, total) = *timing.0.lock().unwrap();
    let secs = (end.unwrap() - start.unwrap()).as_secs_f64();
    (total, total as f64 / secs)
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let restore_n = args.first().copied().unwrap_or(1_000_000);
    let driver_n = args.get(1).copied().unwrap_or(200_000);
    let bootstrap = if restore_n > 0 {
        bootstrap_servers()
    } else {
        String::new()
    };
    // 1. Restoration versus a raw consumer (skipped when RESTORE_RECORDS is 0).
    if restore_n > 0 {
        restoration(&bootstrap, restore_n);
    }
    // 2. Count per key in the TopologyTestDriver.
    driver_counts(driver_n);
}

fn restoration(bootstrap: &str, restore_n: usize) {
    let bootstrap = bootstrap.to_string();
    let (input, output) = (unique("bench-st-in"), unique("bench-st-out"));
    create_topic(&bootstrap, &input, 1, &[]).unwrap();
    create_topic(&bootstrap, &output, 1, &[]).unwrap();
    let apps = [unique("bench-st-app"), unique("bench-st-app")];
    for app in &apps {
        let changelog = format!("{app}-counts-changelog");
        create_topic(&bootstrap, &changelog, 1, &[("cleanup.policy", "compact")]).unwrap();
        let start = Instant::now();
        fill(&bootstrap, &changelog, restore_n);
        println!(
            "filled {changelog} with {restore_n} records in {:.1}s",
            start.elapsed().as_secs_f64()
        );
    }
    let mut ratios = vec![];
    for (round, app) in apps.iter().enumerate() {
        let changelog = format!("{app}-counts-changelog");
        let (raw, restored) = if round % 2 == 0 {
            let raw = raw_read(&bootstrap, &changelog);
            (raw, restore(&bootstrap, app, &input, &output))
        } else {
            let restored = restore(&bootstrap, app, &input, &output);
            (raw_read(&bootstrap, &changelog), restored)
        };
        assert_eq!(raw.0 as u64, restored.0, "both read every record");
        let ratio = restored.1 / raw.1;
        println!(
            "restore round {}: raw consumer {} records at {:.0} rec/s, restoration {} records at {:.0} rec/s, ratio {:.3}",
            round + 1,
            raw.0,
            raw.1,
            restored.0,
            restored.1,
            ratio
        );
        ratios.push(ratio);
    }
    println!(
        "restoration/raw ratio: {}",
        ratios
            .iter()
            .map(|r| format!("{r:.3}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
}

fn driver_counts(driver_n: usize) {
    for in_memory in [false, true] {
        let driver = TopologyTestDriver::new(topology("in", "out", in_memory)).unwrap();
        let input = driver.input_topic("in", Utf8, Utf8);
        let keys: Vec<String> = (0..10_000).map(|i| format!("key-{i:05}")).collect();
        let value = "x".to_string();
        let start = Instant::now();
        for i in 0..driver_n {
            input
                .pipe_at(keys[i % keys.len()].clone(), value.clone(), i as i64)
                .unwrap();
        }
        let per = start.elapsed().as_secs_f64() / driver_n as f64 * 1e6;
        println!(
            "driver count per key, {} store: {driver_n} records, {per:.2} µs per record",
            if in_memory { "in-memory" } else { "RocksDB" }
        );
    }
}
