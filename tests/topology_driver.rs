//! The Processor API, topology validation and the `TopologyTestDriver`, with no broker.
//!
//! Every test builds a topology by hand (sources, processors, sinks, stores, repartition
//! topics), runs it in the driver and checks what comes out: records read one by one from the
//! output topics, the contents of state stores, when punctuations fire, and the errors the
//! builder, the driver and the deserialization handlers report.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use streams_core::driver::{TestOutputTopic, TopologyTestDriver};
use streams_core::handlers::{headers, DeadLetterTopic, LogAndContinue, LogAndFail};
use streams_core::processor::{Processor, ProcessorContext, PunctuationType, PunctuatorId};
use streams_core::serde::{BigEndian, Nullable, RawBytes, Utf8};
use streams_core::store::KeyValueStore;
use streams_core::topology::{Sink, Source, Topology, TopologyBuilder};
use streams_core::TaskId;
use streams_core::{Error, Headers, Record, Result};

fn s(x: &str) -> String {
    x.to_string()
}

/// The message of the `Error::Config` that `build()` must return.
fn build_error(builder: &mut TopologyBuilder) -> String {
    match builder.build() {
        Ok(t) => panic!("expected a validation error, got a topology:\n{t:?}"),
        Err(Error::Config(message)) => message,
        Err(other) => panic!("expected Error::Config, got {other:?}"),
    }
}

/// The task id and the wrapped error of an `Error::Task`.
fn task_error(e: Error) -> (String, Error) {
    match e {
        Error::Task { task, source } => (task, *source),
        other => panic!("expected Error::Task, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Processors used by the tests.
// ---------------------------------------------------------------------------------------------

/// Upper-cases keys, replaces values by their length, moves timestamps 1 s later, drops empty
/// values and adds a header with the source offset of the record.
struct Measure;

impl Processor for Measure {
    type KeyIn = String;
    type ValueIn = String;
    type KeyOut = String;
    type ValueOut = u64;

    fn process(
        &mut self,
        record: Record<String, String>,
        ctx: &mut ProcessorContext<'_, String, u64>,
    ) -> Result<()> {
        if record.value().is_empty() {
            return Ok(());
        }
        let meta = ctx
            .record_metadata()
            .expect("a record being processed has metadata");
        let offset = meta.offset.to_string();
        let headers = record
            .headers()
            .clone()
            .with("offset", Some(offset.as_bytes()));
        let key = record.key().to_uppercase();
        let len = record.value().len() as u64;
        let ts = record.timestamp() + 1_000;
        ctx.forward(
            record
                .with_key(key)
                .with_value(len)
                .with_timestamp(ts)
                .with_headers(headers),
        )
    }
}

/// Upper-cases values.
struct Upper;

impl Processor for Upper {
    type KeyIn = String;
    type ValueIn = String;
    type KeyOut = String;
    type ValueOut = String;

    fn process(
        &mut self,
        record: Record<String, String>,
        ctx: &mut ProcessorContext<'_, String, String>,
    ) -> Result<()> {
        let v = record.value().to_uppercase();
        ctx.forward(record.with_value(v))
    }
}

/// Doubles u64 values (used where its input type does not match its parent's output).
struct Doubler;

impl Processor for Doubler {
    type KeyIn = String;
    type ValueIn = u64;
    type KeyOut = String;
    type ValueOut = u64;

    fn process(
        &mut self,
        record: Record<String, u64>,
        ctx: &mut ProcessorContext<'_, String, u64>,
    ) -> Result<()> {
        let v = record.value() * 2;
        ctx.forward(record.with_value(v))
    }
}

/// Routes orders by amount: `>= threshold` to the child `big-sink`, else to `small-sink`.
/// Keys starting with `all-` go to every child; keys starting with `lost-` are sent to
/// `big-orders`, which is the *topic* of a sink, not the name of a child.
struct OrderRouter {
    threshold: u64,
}

impl Processor for OrderRouter {
    type KeyIn = String;
    type ValueIn = u64;
    type KeyOut = String;
    type ValueOut = u64;

    fn process(
        &mut self,
        record: Record<String, u64>,
        ctx: &mut ProcessorContext<'_, String, u64>,
    ) -> Result<()> {
        if record.key().starts_with("all-") {
            ctx.forward(record)
        } else if record.key().starts_with("lost-") {
            ctx.forward_to("big-orders", record)
        } else if *record.value() >= self.threshold {
            ctx.forward_to("big-sink", record)
        } else {
            ctx.forward_to("small-sink", record)
        }
    }
}

/// Passes records through and, every 10 s of stream time, emits a record keyed `tick` whose
/// value is `<stream time>|<whether record_metadata() is None>`, at the punctuation timestamp.
struct StreamTicker;

impl Processor for StreamTicker {
    type KeyIn = String;
    type ValueIn = String;
    type KeyOut = String;
    type ValueOut = String;

    fn init(&mut self, ctx: &mut ProcessorContext<'_, String, String>) -> Result<()> {
        ctx.schedule(Duration::from_secs(10), PunctuationType::StreamTime)?;
        Ok(())
    }

    fn process(
        &mut self,
        record: Record<String, String>,
        ctx: &mut ProcessorContext<'_, String, String>,
    ) -> Result<()> {
        ctx.forward(record)
    }

    fn punctuate(
        &mut self,
        _id: PunctuatorId,
        timestamp: i64,
        ctx: &mut ProcessorContext<'_, String, String>,
    ) -> Result<()> {
        let value = format!("{}|{}", ctx.stream_time(), ctx.record_metadata().is_none());
        ctx.forward(Record::new(s("tick"), value, timestamp))
    }
}

/// Every second of wall-clock time emits `beat` with the wall-clock time as value; a record
/// with value `stop` cancels the punctuation. Other records pass through.
struct Heartbeat {
    id: Option<PunctuatorId>,
}

impl Processor for Heartbeat {
    type KeyIn = String;
    type ValueIn = String;
    type KeyOut = String;
    type ValueOut = String;

    fn init(&mut self, ctx: &mut ProcessorContext<'_, String, String>) -> Result<()> {
        self.id = Some(ctx.schedule(Duration::from_secs(1), PunctuationType::WallClockTime)?);
        Ok(())
    }

    fn process(
        &mut self,
        record: Record<String, String>,
        ctx: &mut ProcessorContext<'_, String, String>,
    ) -> Result<()> {
        if record.value() == "stop" {
            if let Some(id) = self.id.take() {
                ctx.cancel(id);
            }
        }
        ctx.forward(record)
    }

    fn punctuate(
        &mut self,
        id: PunctuatorId,
        timestamp: i64,
        ctx: &mut ProcessorContext<'_, String, String>,
    ) -> Result<()> {
        assert_eq!(Some(id), self.id, "only the scheduled punctuation fires");
        let value = ctx.wall_clock_time().to_string();
        ctx.forward(Record::new(s("beat"), value, timestamp))
    }
}

/// Counts words (the values) in the store `counts` and forwards `(word, count)`.
struct WordCounter;

impl Processor for WordCounter {
    type KeyIn = String;
    type ValueIn = String;
    type KeyOut = String;
    type ValueOut = u64;

    fn process(
        &mut self,
        record: Record<String, String>,
        ctx: &mut ProcessorContext<'_, String, u64>,
    ) -> Result<()> {
        let word = record.value().clone();
        let store = ctx.state_store::<KeyValueStore<String, u64>>("counts")?;
        let count = store.get(&word)?.unwrap_or(0) + 1;
        store.put(&word, &count)?;
        ctx.forward(record.with_key(word).with_value(count))
    }
}

/// Reads the store `counts` (with the given value type) without being connected to it, or
/// connected but with the wrong type.
struct StoreThief;

impl Processor for StoreThief {
    type KeyIn = String;
    type ValueIn = String;
    type KeyOut = String;
    type ValueOut = String;

    fn process(
        &mut self,
        record: Record<String, String>,
        ctx: &mut ProcessorContext<'_, String, String>,
    ) -> Result<()> {
        let store = ctx.state_store::<KeyValueStore<String, String>>("counts")?;
        let _ = store.len();
        ctx.forward(record)
    }
}

/// Parses `customer,amount` values and re-keys the record by customer.
struct ReKeyByCustomer;

impl Processor for ReKeyByCustomer {
    type KeyIn = String;
    type ValueIn = String;
    type KeyOut = String;
    type ValueOut = u64;

    fn process(
        &mut self,
        record: Record<String, String>,
        ctx: &mut ProcessorContext<'_, String, u64>,
    ) -> Result<()> {
        let (customer, amount) = record
            .value()
            .split_once(',')
            .ok_or_else(|| Error::Config(format!("bad order {}", record.value())))?;
        let customer = customer.to_string();
        let amount: u64 = amount
            .parse()
            .map_err(|e| Error::Config(format!("bad amount {amount}: {e}")))?;
        ctx.forward(record.with_key(customer).with_value(amount))
    }
}

/// What [`CustomerTotal`] saw: the task, and the topic and offset of each record.
type Seen = Arc<Mutex<Vec<(TaskId, String, i64)>>>;

/// Sums amounts per customer in the store `totals`, forwards the running total, and records
/// where each record came from. Fails on an amount of 13.
struct CustomerTotal {
    seen: Seen,
}

impl Processor for CustomerTotal {
    type KeyIn = String;
    type ValueIn = u64;
    type KeyOut = String;
    type ValueOut = u64;

    fn process(
        &mut self,
        record: Record<String, u64>,
        ctx: &mut ProcessorContext<'_, String, u64>,
    ) -> Result<()> {
        if *record.value() == 13 {
            return Err(Error::Config(s("unlucky amount 13")));
        }
        let meta = ctx.record_metadata().expect("metadata").clone();
        self.seen
            .lock()
            .unwrap()
            .push((ctx.task_id(), meta.topic.to_string(), meta.offset));
        let store = ctx.state_store::<KeyValueStore<String, u64>>("totals")?;
        let total = store.get(record.key())?.unwrap_or(0) + record.value();
        store.put(record.key(), &total)?;
        ctx.forward(record.with_value(total))
    }
}

/// Fails on the value `boom`, passes everything else through.
struct Fragile;

impl Processor for Fragile {
    type KeyIn = String;
    type ValueIn = String;
    type KeyOut = String;
    type ValueOut = String;

    fn process(
        &mut self,
        record: Record<String, String>,
        ctx: &mut ProcessorContext<'_, String, String>,
    ) -> Result<()> {
        if record.value() == "boom" {
            return Err(Error::Config(format!(
                "fragile refuses {} at offset {}",
                record.value(),
                ctx.record_metadata().map_or(-1, |m| m.offset)
            )));
        }
        ctx.forward(record)
    }
}

// ---------------------------------------------------------------------------------------------
// Topologies used by several tests.
// ---------------------------------------------------------------------------------------------

fn words_topology<P, F>(name: &str, supplier: F) -> Topology
where
    P: Processor<KeyIn = String, ValueIn = String, KeyOut = String, ValueOut = String>,
    F: Fn() -> P + Send + Sync + 'static,
{
    TopologyBuilder::new()
        .add_source("words-source", Source::new(["words"], Utf8, Utf8))
        .add_processor(name, supplier, ["words-source"])
        .add_sink("out-sink", Sink::new("out", Utf8, Utf8), [name])
        .build()
        .unwrap()
}

fn router_topology() -> Topology {
    TopologyBuilder::new()
        .add_source(
            "orders-source",
            Source::<String, u64>::new(["orders"], Utf8, BigEndian),
        )
        .add_processor(
            "router",
            || OrderRouter { threshold: 1_000 },
            ["orders-source"],
        )
        .add_sink(
            "big-sink",
            Sink::<String, u64>::new("big-orders", Utf8, BigEndian),
            ["router"],
        )
        .add_sink(
            "small-sink",
            Sink::<String, u64>::new("small-orders", Utf8, BigEndian),
            ["router"],
        )
        .build()
        .unwrap()
}

/// Sub-topology 0 re-keys orders by customer into the repartition topic `by-customer`;
/// sub-topology 1 reads it and keeps a running total per customer in the store `totals`.
fn repartition_topology(seen: Seen) -> Topology {
    TopologyBuilder::new()
        .add_repartition_topic("by-customer", Some(3))
        .add_source("orders-source", Source::new(["orders"], Utf8, Utf8))
        .add_processor("rekey", || ReKeyByCustomer, ["orders-source"])
        .add_sink(
            "to-repartition",
            Sink::<String, u64>::new("by-customer", Utf8, BigEndian),
            ["rekey"],
        )
        .add_source(
            "from-repartition",
            Source::<String, u64>::new(["by-customer"], Utf8, BigEndian),
        )
        .add_processor(
            "total",
            move || CustomerTotal { seen: seen.clone() },
            ["from-repartition"],
        )
        .add_sink(
            "totals-sink",
            Sink::<String, u64>::new("customer-totals", Utf8, BigEndian),
            ["total"],
        )
        .add_state_store(
            KeyValueStore::<String, u64>::builder("totals", Utf8, BigEndian),
            ["total"],
        )
        .build()
        .unwrap()
}

/// `(key, value, timestamp)` of every record not read yet.
fn drain<K: 'static, V: 'static>(out: &TestOutputTopic<K, V>) -> Vec<(K, V, i64)> {
    out.read_records()
        .unwrap()
        .into_iter()
        .map(|r| {
            let ts = r.timestamp();
            let (k, v) = r.into_key_value();
            (k, v, ts)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// 1. A custom processor, read record by record.
// ---------------------------------------------------------------------------------------------

#[test]
fn custom_processor_output_read_record_by_record() {
    let topology = TopologyBuilder::new()
        .add_source("words-source", Source::new(["words"], Utf8, Utf8))
        .add_processor("measure", || Measure, ["words-source"])
        .add_sink(
            "lengths-sink",
            Sink::<String, u64>::new("lengths", Utf8, BigEndian),
            ["measure"],
        )
        .build()
        .unwrap();
    let driver = TopologyTestDriver::new(topology).unwrap();
    let input = driver.input_topic::<String, String>("words", Utf8, Utf8);
    let output = driver.output_topic::<String, u64>("lengths", Utf8, BigEndian);
    assert!(output.is_empty());
    assert!(output.read_record().unwrap().is_none());

    input.pipe_at(s("a"), s("hello"), 100).unwrap();
    input
        .pipe_record(Record::new(s("bee"), s(""), 200))
        .unwrap(); // dropped by the processor
    input
        .pipe_record(
            Record::new(s("c"), s("xyz"), 300)
                .with_headers(Headers::new().with("trace", Some(b"t-1"))),
        )
        .unwrap();
    // `pipe` reuses the previous record's timestamp (300).
    input.pipe(s("d"), s("ab")).unwrap();
    assert!(!output.is_empty());

    let r = output.read_record().unwrap().expect("first record");
    assert_eq!(
        (r.key().as_str(), *r.value(), r.timestamp()),
        ("A", 5, 1_100)
    );
    assert_eq!(r.headers().last("offset"), Some(&b"0"[..]));
    assert_eq!(r.headers().len(), 1);

    let r = output.read_record().unwrap().expect("second record");
    assert_eq!(
        (r.key().as_str(), *r.value(), r.timestamp()),
        ("C", 3, 1_300)
    );
    assert_eq!(
        r.headers().last("trace"),
        Some(&b"t-1"[..]),
        "input headers are kept"
    );
    assert_eq!(r.headers().last("offset"), Some(&b"2"[..]));
    let names: Vec<&str> = r.headers().iter().map(|(k, _)| k).collect();
    assert_eq!(names, ["trace", "offset"]);

    let r = output.read_record().unwrap().expect("third record");
    assert_eq!(
        (r.key().as_str(), *r.value(), r.timestamp()),
        ("D", 2, 1_300)
    );
    assert_eq!(r.headers().last("offset"), Some(&b"3"[..]));

    assert!(output.read_record().unwrap().is_none());
    assert!(output.is_empty());
    driver.close().unwrap();
}

#[test]
fn pipe_into_a_topic_nobody_reads_is_an_error() {
    let driver = TopologyTestDriver::new(words_topology("upper", || Upper)).unwrap();
    let e = driver
        .input_topic::<String, String>("nobody-reads-this", Utf8, Utf8)
        .pipe(s("k"), s("v"))
        .unwrap_err();
    assert!(
        e.to_string().contains("nobody-reads-this"),
        "error should name the topic: {e}"
    );
}

// ---------------------------------------------------------------------------------------------
// 2. forward_to: routing by child name.
// ---------------------------------------------------------------------------------------------

#[test]
fn forward_to_routes_by_child_name_and_forward_reaches_all_children() {
    let driver = TopologyTestDriver::new(router_topology()).unwrap();
    let orders = driver.input_topic::<String, u64>("orders", Utf8, BigEndian);
    let big = driver.output_topic::<String, u64>("big-orders", Utf8, BigEndian);
    let small = driver.output_topic::<String, u64>("small-orders", Utf8, BigEndian);

    orders.pipe_at(s("o1"), 50_u64, 1).unwrap();
    orders.pipe_at(s("o2"), 5_000_u64, 2).unwrap();
    orders.pipe_at(s("o3"), 1_000_u64, 3).unwrap();
    orders.pipe_at(s("o4"), 999_u64, 4).unwrap();
    orders.pipe_at(s("all-o5"), 7_u64, 5).unwrap();

    assert_eq!(
        drain(&big),
        vec![
            (s("o2"), 5_000, 2),
            (s("o3"), 1_000, 3),
            (s("all-o5"), 7, 5)
        ]
    );
    assert_eq!(
        drain(&small),
        vec![(s("o1"), 50, 1), (s("o4"), 999, 4), (s("all-o5"), 7, 5)]
    );
}

#[test]
fn forward_to_an_unknown_child_is_an_error_naming_it() {
    let driver = TopologyTestDriver::new(router_topology()).unwrap();
    let orders = driver.input_topic::<String, u64>("orders", Utf8, BigEndian);
    let big = driver.output_topic::<String, u64>("big-orders", Utf8, BigEndian);
    let small = driver.output_topic::<String, u64>("small-orders", Utf8, BigEndian);

    // `big-orders` is the sink's topic; the child is named `big-sink`.
    let e = orders.pipe_at(s("lost-o6"), 5_000_u64, 6).unwrap_err();
    let (task, source) = task_error(e);
    assert_eq!(task, "0_0");
    let Error::Config(message) = source else {
        panic!("expected Error::Config, got {source:?}");
    };
    assert!(message.contains("big-orders"), "{message}");
    assert!(message.contains("router"), "{message}");
    assert!(big.is_empty() && small.is_empty());

    // The driver is still usable.
    orders.pipe_at(s("o7"), 1_u64, 7).unwrap();
    assert_eq!(drain(&small), vec![(s("o7"), 1, 7)]);
}

// ---------------------------------------------------------------------------------------------
// 3. Stream-time punctuation.
// ---------------------------------------------------------------------------------------------

#[test]
fn stream_time_punctuation_fires_on_records_and_never_goes_back() {
    let driver = TopologyTestDriver::new(words_topology("ticker", || StreamTicker)).unwrap();
    let input = driver.input_topic::<String, String>("words", Utf8, Utf8);
    let output = driver.output_topic::<String, String>("out", Utf8, Utf8);

    // No record yet: no stream time, the wall clock does not drive it.
    driver.advance_wall_clock(Duration::from_secs(60)).unwrap();
    assert!(output.is_empty());

    let step = |ts: i64| {
        input.pipe_at(s("k"), format!("r{ts}"), ts).unwrap();
        drain(&output)
    };
    let rec = |ts: i64| (s("k"), format!("r{ts}"), ts);
    let tick = |ts: i64| (s("tick"), format!("{ts}|true"), ts);

    // First fire at the first record, after it has been processed.
    assert_eq!(step(1_000), vec![rec(1_000), tick(1_000)]);
    assert_eq!(step(5_000), vec![rec(5_000)]);
    assert_eq!(step(11_000), vec![rec(11_000), tick(11_000)]);
    assert_eq!(step(12_000), vec![rec(12_000)]);
    // 21 000 and 31 000 were skipped over: one fire, then aligned to 41 000.
    assert_eq!(step(35_000), vec![rec(35_000), tick(35_000)]);
    // An older record does not move stream time back, nor fire.
    assert_eq!(step(20_000), vec![rec(20_000)]);
    assert_eq!(step(40_999), vec![rec(40_999)]);
    assert_eq!(step(41_000), vec![rec(41_000), tick(41_000)]);
    assert_eq!(step(41_000), vec![rec(41_000)]);
}

// ---------------------------------------------------------------------------------------------
// 4. Wall-clock punctuation.
// ---------------------------------------------------------------------------------------------

#[test]
fn wall_clock_punctuation_follows_the_driver_clock_and_cancel_stops_it() {
    let driver = TopologyTestDriver::with_options(
        words_topology("heartbeat", || Heartbeat { id: None }),
        "hb-app",
        10_000,
        Box::new(LogAndFail),
    )
    .unwrap();
    let input = driver.input_topic::<String, String>("words", Utf8, Utf8);
    let output = driver.output_topic::<String, String>("out", Utf8, Utf8);
    let advance = |ms: u64| {
        driver
            .advance_wall_clock(Duration::from_millis(ms))
            .unwrap();
        drain(&output)
    };
    let beat = |ts: i64| (s("beat"), ts.to_string(), ts);

    assert_eq!(advance(500), vec![]);
    assert_eq!(advance(500), vec![beat(11_000)]);
    // 12 000 and 13 000 passed: one fire at 13 500, the next one at 14 000.
    assert_eq!(advance(2_500), vec![beat(13_500)]);
    assert_eq!(advance(400), vec![]);
    assert_eq!(advance(100), vec![beat(14_000)]);

    // Records (and stream time) do not drive wall-clock punctuations.
    input.pipe_at(s("k"), s("v"), 1_000_000).unwrap();
    assert_eq!(drain(&output), vec![(s("k"), s("v"), 1_000_000)]);

    input.pipe_at(s("k"), s("stop"), 1_000_001).unwrap();
    assert_eq!(drain(&output), vec![(s("k"), s("stop"), 1_000_001)]);
    assert_eq!(advance(10_000), vec![]);
    assert_eq!(advance(1_000), vec![]);
}

/// Schedules a punctuation with the given interval in `init`.
struct BadSchedule(Duration);

impl Processor for BadSchedule {
    type KeyIn = String;
    type ValueIn = String;
    type KeyOut = String;
    type ValueOut = String;

    fn init(&mut self, ctx: &mut ProcessorContext<'_, String, String>) -> Result<()> {
        ctx.schedule(self.0, PunctuationType::WallClockTime)?;
        Ok(())
    }

    fn process(
        &mut self,
        record: Record<String, String>,
        ctx: &mut ProcessorContext<'_, String, String>,
    ) -> Result<()> {
        ctx.forward(record)
    }
}

#[test]
fn a_punctuation_interval_below_one_millisecond_fails_the_task_creation() {
    let Err(e) = TopologyTestDriver::new(words_topology("bad", || {
        BadSchedule(Duration::from_micros(500))
    })) else {
        panic!("creating the driver should fail");
    };
    let (task, source) = task_error(e);
    assert_eq!(task, "0_0");
    assert!(source.to_string().contains("at least 1 ms"), "{source}");
    assert!(source.to_string().contains("bad"), "{source}");
}

// ---------------------------------------------------------------------------------------------
// 5. State stores.
// ---------------------------------------------------------------------------------------------

fn counting_topology() -> Topology {
    TopologyBuilder::new()
        .add_source("words-source", Source::new(["words"], Utf8, Utf8))
        .add_processor("counter", || WordCounter, ["words-source"])
        .add_sink(
            "counts-sink",
            Sink::<String, u64>::new("counts", Utf8, BigEndian),
            ["counter"],
        )
        .add_state_store(
            KeyValueStore::<String, u64>::builder("counts", Utf8, BigEndian),
            ["counter"],
        )
        .build()
        .unwrap()
}

#[test]
fn counting_processor_keeps_its_counts_in_a_store() {
    let driver = TopologyTestDriver::new(counting_topology()).unwrap();
    let input = driver.input_topic::<String, String>("words", Utf8, Utf8);
    let output = driver.output_topic::<String, u64>("counts", Utf8, BigEndian);
    for (i, w) in ["b", "a", "b", "c", "b", "a"].into_iter().enumerate() {
        input.pipe_at(s("line"), s(w), i as i64).unwrap();
    }
    assert_eq!(
        output.read_key_values().unwrap(),
        vec![
            (s("b"), 1_u64),
            (s("a"), 1),
            (s("b"), 2),
            (s("c"), 1),
            (s("b"), 3),
            (s("a"), 2)
        ]
    );
    let all = driver
        .with_store::<KeyValueStore<String, u64>, _>("counts", |store| {
            store
                .all()
                .unwrap()
                .collect::<std::result::Result<Vec<_>, _>>()
                .unwrap()
        })
        .unwrap();
    assert_eq!(all, vec![(s("a"), 2), (s("b"), 3), (s("c"), 1)]);

    // Writes through with_store are seen by the processor.
    driver
        .with_store::<KeyValueStore<String, u64>, _>("counts", |store| {
            store.put(&s("c"), &41).unwrap();
            store.delete(&s("a")).unwrap()
        })
        .map(|old| assert_eq!(old, Some(2)))
        .unwrap();
    input.pipe_at(s("line"), s("c"), 10).unwrap();
    input.pipe_at(s("line"), s("a"), 11).unwrap();
    assert_eq!(
        output.read_key_values().unwrap(),
        vec![(s("c"), 42), (s("a"), 1)]
    );

    let e = driver
        .with_store::<KeyValueStore<String, u64>, _>("no-such-store", |s| s.len())
        .unwrap_err();
    assert!(
        matches!(&e, Error::Config(m) if m.contains("no-such-store")),
        "{e:?}"
    );
    let e = driver
        .with_store::<KeyValueStore<String, String>, _>("counts", |s| s.len())
        .unwrap_err();
    assert!(
        matches!(&e, Error::State { store, .. } if store == "counts"),
        "{e:?}"
    );
}

#[test]
fn a_processor_not_connected_to_a_store_cannot_use_it() {
    let topology = TopologyBuilder::new()
        .add_source("words-source", Source::new(["words"], Utf8, Utf8))
        .add_processor("counter", || WordCounter, ["words-source"])
        .add_processor("thief", || StoreThief, ["words-source"])
        .add_sink("thief-sink", Sink::new("stolen", Utf8, Utf8), ["thief"])
        .add_state_store(
            KeyValueStore::<String, u64>::builder("counts", Utf8, BigEndian),
            ["counter"],
        )
        .build()
        .unwrap();
    let driver = TopologyTestDriver::new(topology).unwrap();
    let e = driver
        .input_topic::<String, String>("words", Utf8, Utf8)
        .pipe(s("k"), s("w"))
        .unwrap_err();
    let (task, source) = task_error(e);
    assert_eq!(task, "0_0");
    let Error::Config(message) = source else {
        panic!("expected Error::Config, got {source:?}");
    };
    assert!(message.contains("thief"), "{message}");
    assert!(message.contains("not connected"), "{message}");
    assert!(message.contains("counts"), "{message}");
    assert!(driver
        .output_topic::<String, String>("stolen", Utf8, Utf8)
        .is_empty());
}

#[test]
fn a_store_asked_for_with_the_wrong_type_is_a_state_error() {
    let topology = TopologyBuilder::new()
        .add_source("words-source", Source::new(["words"], Utf8, Utf8))
        .add_processor("thief", || StoreThief, ["words-source"])
        .add_sink("thief-sink", Sink::new("stolen", Utf8, Utf8), ["thief"])
        .add_state_store(
            KeyValueStore::<String, u64>::builder("counts", Utf8, BigEndian),
            ["thief"],
        )
        .build()
        .unwrap();
    let driver = TopologyTestDriver::new(topology).unwrap();
    let e = driver
        .input_topic::<String, String>("words", Utf8, Utf8)
        .pipe(s("k"), s("w"))
        .unwrap_err();
    let (_, source) = task_error(e);
    assert!(
        matches!(&source, Error::State { store, .. } if store == "counts"),
        "{source:?}"
    );
}

#[test]
fn a_shared_store_puts_two_sources_in_one_subtopology() {
    let topology = TopologyBuilder::new()
        .add_source("left-source", Source::new(["left"], Utf8, Utf8))
        .add_source("right-source", Source::new(["right"], Utf8, Utf8))
        .add_processor("count-left", || WordCounter, ["left-source"])
        .add_processor("count-right", || WordCounter, ["right-source"])
        .add_sink(
            "counts-sink",
            Sink::<String, u64>::new("counts", Utf8, BigEndian),
            ["count-left", "count-right"],
        )
        .add_state_store(
            KeyValueStore::<String, u64>::builder("counts", Utf8, BigEndian),
            ["count-left", "count-right"],
        )
        .build()
        .unwrap();
    assert_eq!(topology.subtopologies().len(), 1);
    assert_eq!(topology.subtopologies()[0].source_topics, ["left", "right"]);

    let driver = TopologyTestDriver::new(topology).unwrap();
    let left = driver.input_topic::<String, String>("left", Utf8, Utf8);
    let right = driver.input_topic::<String, String>("right", Utf8, Utf8);
    left.pipe_at(s("k"), s("x"), 1).unwrap();
    right.pipe_at(s("k"), s("x"), 2).unwrap();
    left.pipe_at(s("k"), s("y"), 3).unwrap();
    assert_eq!(
        driver
            .output_topic::<String, u64>("counts", Utf8, BigEndian)
            .read_key_values()
            .unwrap(),
        vec![(s("x"), 1_u64), (s("x"), 2), (s("y"), 1)]
    );
}

// ---------------------------------------------------------------------------------------------
// 6. Repartition topics.
// ---------------------------------------------------------------------------------------------

#[test]
fn repartition_topic_connects_two_subtopologies() {
    let seen: Seen = Arc::default();
    let topology = repartition_topology(seen.clone());

    let subs = topology.subtopologies();
    assert_eq!(subs.len(), 2);
    assert_eq!((subs[0].id, subs[1].id), (0, 1));
    assert_eq!(subs[0].source_topics, ["orders"]);
    assert_eq!(subs[0].sink_topics, ["by-customer"]);
    assert!(subs[0].stores.is_empty());
    assert_eq!(subs[1].source_topics, ["by-customer"]);
    assert_eq!(subs[1].sink_topics, ["customer-totals"]);
    assert_eq!(subs[1].stores, ["totals"]);
    assert_eq!(
        topology.resolve_topic("shop", "by-customer"),
        "shop-by-customer-repartition"
    );
    assert_eq!(topology.resolve_topic("shop", "orders"), "orders");
    assert_eq!(
        topology.repartition_topics().get("by-customer"),
        Some(&Some(3))
    );

    let driver =
        TopologyTestDriver::with_options(topology, "shop", 0, Box::new(LogAndFail)).unwrap();
    let orders = driver.input_topic::<String, String>("orders", Utf8, Utf8);
    let totals = driver.output_topic::<String, u64>("customer-totals", Utf8, BigEndian);
    let repartitioned = driver.output_topic::<String, u64>("by-customer", Utf8, BigEndian);

    orders.pipe_at(s("o1"), s("alice,10"), 1_000).unwrap();
    orders.pipe_at(s("o2"), s("bob,5"), 2_000).unwrap();
    orders.pipe_at(s("o3"), s("alice,7"), 3_000).unwrap();

    assert_eq!(
        drain(&totals),
        vec![
            (s("alice"), 10_u64, 1_000),
            (s("bob"), 5, 2_000),
            (s("alice"), 17, 3_000)
        ]
    );
    assert_eq!(
        drain(&repartitioned),
        vec![
            (s("alice"), 10_u64, 1_000),
            (s("bob"), 5, 2_000),
            (s("alice"), 7, 3_000)
        ]
    );
    let task1 = TaskId {
        subtopology: 1,
        partition: 0,
    };
    let topic = s("shop-by-customer-repartition");
    assert_eq!(
        *seen.lock().unwrap(),
        vec![
            (task1, topic.clone(), 0),
            (task1, topic.clone(), 1),
            (task1, topic, 2)
        ]
    );
    let all = driver
        .with_store::<KeyValueStore<String, u64>, _>("totals", |s| {
            s.all()
                .unwrap()
                .collect::<std::result::Result<Vec<_>, _>>()
                .unwrap()
        })
        .unwrap();
    assert_eq!(all, vec![(s("alice"), 17), (s("bob"), 5)]);
}

#[test]
fn an_error_downstream_of_a_repartition_topic_names_the_second_task() {
    let driver = TopologyTestDriver::new(repartition_topology(Arc::default())).unwrap();
    let orders = driver.input_topic::<String, String>("orders", Utf8, Utf8);
    let e = orders.pipe_at(s("o1"), s("carol,13"), 1).unwrap_err();
    let (task, source) = task_error(e);
    assert_eq!(task, "1_0");
    assert!(source.to_string().contains("unlucky amount 13"), "{source}");

    // An error in sub-topology 0 names task 0_0.
    let e = orders.pipe_at(s("o2"), s("no comma"), 2).unwrap_err();
    let (task, source) = task_error(e);
    assert_eq!(task, "0_0");
    assert!(
        source.to_string().contains("bad order no comma"),
        "{source}"
    );
}

// ---------------------------------------------------------------------------------------------
// 7. Validation errors.
// ---------------------------------------------------------------------------------------------

#[test]
fn build_rejects_an_unknown_parent() {
    let message = build_error(
        TopologyBuilder::new()
            .add_source("src", Source::new(["words"], Utf8, Utf8))
            .add_processor("upper", || Upper, ["ghost"]),
    );
    assert!(
        message.contains("upper names an unknown parent ghost"),
        "{message}"
    );
}

#[test]
fn build_rejects_a_cycle() {
    let message = build_error(
        TopologyBuilder::new()
            .add_source("src", Source::new(["words"], Utf8, Utf8))
            .add_processor("a", || Upper, ["src", "b"])
            .add_processor("b", || Upper, ["a"])
            .add_sink("out", Sink::new("out", Utf8, Utf8), ["b"]),
    );
    assert!(message.contains("cycle"), "{message}");
    assert!(message.contains("a -> b -> a"), "{message}");
}

#[test]
fn build_rejects_a_type_mismatch_between_parent_and_child() {
    let message = build_error(
        TopologyBuilder::new()
            .add_source("src", Source::new(["words"], Utf8, Utf8))
            .add_processor("doubler", || Doubler, ["src"]),
    );
    assert!(message.contains("src forwards"), "{message}");
    assert!(message.contains("its child doubler takes"), "{message}");
    assert!(message.contains("u64"), "{message}");

    // A sink with other types than its parent is caught too.
    let message = build_error(
        TopologyBuilder::new()
            .add_source("src", Source::new(["words"], Utf8, Utf8))
            .add_sink(
                "out",
                Sink::<String, u64>::new("out", Utf8, BigEndian),
                ["src"],
            ),
    );
    assert!(message.contains("its child out takes"), "{message}");
}

#[test]
fn build_rejects_a_duplicate_node_name() {
    let message = build_error(
        TopologyBuilder::new()
            .add_source("src", Source::new(["a"], Utf8, Utf8))
            .add_source("src", Source::new(["b"], Utf8, Utf8)),
    );
    assert!(message.contains("node name src is used twice"), "{message}");
}

#[test]
fn build_rejects_a_store_connected_to_an_unknown_processor() {
    let message = build_error(
        TopologyBuilder::new()
            .add_source("src", Source::new(["words"], Utf8, Utf8))
            .add_processor("counter", || WordCounter, ["src"])
            .add_state_store(
                KeyValueStore::<String, u64>::builder("counts", Utf8, BigEndian),
                ["counter", "ghost"],
            ),
    );
    assert!(
        message.contains("store counts is connected to an unknown processor ghost"),
        "{message}"
    );
}

#[test]
fn build_rejects_a_topic_read_by_two_sources() {
    let message = build_error(
        TopologyBuilder::new()
            .add_source("s1", Source::new(["words", "other"], Utf8, Utf8))
            .add_source("s2", Source::new(["words"], Utf8, Utf8)),
    );
    assert!(
        message.contains("topic words is read by two sources, s1 and s2"),
        "{message}"
    );
}

#[test]
fn build_rejects_a_sink_used_as_a_parent() {
    let message = build_error(
        TopologyBuilder::new()
            .add_source("src", Source::new(["words"], Utf8, Utf8))
            .add_sink("out", Sink::new("out", Utf8, Utf8), ["src"])
            .add_processor("after-sink", || Upper, ["out"]),
    );
    assert!(
        message.contains("after-sink names sink out as a parent"),
        "{message}"
    );
}

#[test]
fn build_rejects_other_mistakes() {
    let cases: Vec<(&str, String)> = vec![
        ("it has no nodes", build_error(&mut TopologyBuilder::new())),
        (
            "upper has no parents",
            build_error(
                TopologyBuilder::new()
                    .add_source("src", Source::new(["words"], Utf8, Utf8))
                    .add_processor("upper", || Upper, Vec::<String>::new()),
            ),
        ),
        (
            "source src has no topics",
            build_error(
                TopologyBuilder::new()
                    .add_source("src", Source::new(Vec::<String>::new(), Utf8, Utf8)),
            ),
        ),
        (
            "store counts is connected to no processor",
            build_error(
                TopologyBuilder::new()
                    .add_source("src", Source::new(["words"], Utf8, Utf8))
                    .add_state_store(
                        KeyValueStore::<String, u64>::builder("counts", Utf8, BigEndian),
                        Vec::<String>::new(),
                    ),
            ),
        ),
        (
            "store counts is connected to src, which is not a processor",
            build_error(
                TopologyBuilder::new()
                    .add_source("src", Source::new(["words"], Utf8, Utf8))
                    .add_state_store(
                        KeyValueStore::<String, u64>::builder("counts", Utf8, BigEndian),
                        ["src"],
                    ),
            ),
        ),
        (
            "store name counts is used twice",
            build_error(
                TopologyBuilder::new()
                    .add_source("src", Source::new(["words"], Utf8, Utf8))
                    .add_processor("counter", || WordCounter, ["src"])
                    .add_state_store(
                        KeyValueStore::<String, u64>::builder("counts", Utf8, BigEndian),
                        ["counter"],
                    )
                    .add_state_store(
                        KeyValueStore::<String, u64>::builder("counts", Utf8, BigEndian),
                        ["counter"],
                    ),
            ),
        ),
        (
            "upper names parent src twice",
            build_error(
                TopologyBuilder::new()
                    .add_source("src", Source::new(["words"], Utf8, Utf8))
                    .add_processor("upper", || Upper, ["src", "src"]),
            ),
        ),
        (
            "repartition topic r needs at least one partition",
            build_error(
                TopologyBuilder::new()
                    .add_source("src", Source::new(["words"], Utf8, Utf8))
                    .add_repartition_topic("r", Some(0)),
            ),
        ),
    ];
    for (expected, message) in cases {
        assert!(
            message.starts_with("topology: ") && message.contains(expected),
            "expected {expected:?} in {message:?}"
        );
    }
}

#[test]
fn build_takes_the_builder_content() {
    // build() takes the builder's content; a second build sees an empty builder.
    let mut builder = TopologyBuilder::new();
    builder.add_source("src", Source::new(["words"], Utf8, Utf8));
    builder.build().unwrap();
    assert!(build_error(&mut builder).contains("it has no nodes"));
}

// ---------------------------------------------------------------------------------------------
// 8. describe() and to_mermaid().
// ---------------------------------------------------------------------------------------------

#[test]
fn describe_lists_subtopologies_nodes_topics_stores_and_edges() {
    let topology = repartition_topology(Arc::default());
    let text = topology.describe().to_string();
    for expected in [
        "Topologies:",
        "Sub-topology: 0",
        "Sub-topology: 1",
        "Source: orders-source (topics: [orders])",
        "Processor: rekey (stores: [])",
        "Sink: to-repartition (topic: by-customer)",
        "Source: from-repartition (topics: [by-customer])",
        "Processor: total (stores: [totals])",
        "Sink: totals-sink (topic: customer-totals)",
        "--> rekey",
        "<-- orders-source",
        "--> to-repartition",
        "<-- rekey",
        "--> total",
        "--> totals-sink",
        "<-- total",
    ] {
        assert!(
            text.contains(expected),
            "{expected:?} missing from:\n{text}"
        );
    }
    let pos = |needle: &str| text.find(needle).unwrap();
    assert!(pos("Sub-topology: 0") < pos("Source: orders-source"));
    assert!(pos("Sink: to-repartition") < pos("Sub-topology: 1"));
    assert!(pos("Sub-topology: 1") < pos("Source: from-repartition"));
    assert_eq!(format!("{topology:?}"), text, "Debug is the description");

    let router = router_topology().describe().to_string();
    assert!(router.contains("--> big-sink, small-sink"), "{router}");
    assert!(
        router.contains("Sink: big-sink (topic: big-orders)"),
        "{router}"
    );

    let mermaid = topology.describe().to_mermaid();
    assert!(mermaid.starts_with("flowchart"), "{mermaid}");
    for expected in [
        "subgraph sub0",
        "subgraph sub1",
        "n0[\"orders-source\"]",
        "n1[\"rekey\"]",
        "n0 --> n1",
        "n1 --> n2",
        "t_orders[(\"orders\")] --> n0",
        "n2 --> t_by_customer[(\"by-customer\")]",
        "t_by_customer[(\"by-customer\")] --> n3",
        "n5 --> t_customer_totals",
    ] {
        assert!(
            mermaid.contains(expected),
            "{expected:?} missing from:\n{mermaid}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 9. Poison records.
// ---------------------------------------------------------------------------------------------

#[test]
fn poison_record_with_log_and_fail_is_a_deserialization_error() {
    let driver = TopologyTestDriver::with_options(
        words_topology("upper", || Upper),
        "app",
        0,
        Box::new(LogAndFail),
    )
    .unwrap();
    let input = driver.input_topic::<String, String>("words", Utf8, Utf8);
    let output = driver.output_topic::<String, String>("out", Utf8, Utf8);
    input.pipe_at(s("k"), s("fine"), 1).unwrap();
    let e = input
        .pipe_raw(
            Some(b"k".to_vec()),
            Some(vec![0xff, 0xfe]),
            2,
            Headers::new(),
        )
        .unwrap_err();
    let text = e.to_string();
    let Error::Deserialization {
        task,
        topic,
        partition,
        offset,
        message,
    } = e
    else {
        panic!("expected Error::Deserialization, got {e:?}");
    };
    assert_eq!(
        (task.as_str(), topic.as_str(), partition, offset),
        ("0_0", "words", 0, 1)
    );
    assert!(message.contains("Utf8"), "{message}");
    assert!(text.contains("words-0@1"), "{text}");
    assert_eq!(drain(&output), vec![(s("k"), s("FINE"), 1)]);
}

#[test]
fn poison_record_with_the_default_handler_fails_too() {
    let topology = TopologyBuilder::new()
        .add_source(
            "amounts-source",
            Source::<String, u64>::new(["amounts"], Utf8, BigEndian),
        )
        .add_processor("doubler", || Doubler, ["amounts-source"])
        .add_sink(
            "out-sink",
            Sink::<String, u64>::new("out", Utf8, BigEndian),
            ["doubler"],
        )
        .build()
        .unwrap();
    let driver = TopologyTestDriver::new(topology).unwrap();
    let input = driver.input_topic::<String, u64>("amounts", Utf8, BigEndian);
    let e = input
        .pipe_raw(Some(b"k".to_vec()), Some(vec![1, 2, 3]), 0, Headers::new())
        .unwrap_err();
    match &e {
        Error::Deserialization {
            topic,
            offset,
            message,
            ..
        } => {
            assert_eq!((topic.as_str(), *offset), ("amounts", 0));
            assert!(message.contains("3 bytes for a u64 (needs 8)"), "{message}");
        }
        other => panic!("expected Error::Deserialization, got {other:?}"),
    }
    assert!(e.is_fatal());
    // Later good records still go through the same driver.
    input.pipe_at(s("k"), 21_u64, 1).unwrap();
    assert_eq!(
        driver
            .output_topic::<String, u64>("out", Utf8, BigEndian)
            .read_key_values()
            .unwrap(),
        vec![(s("k"), 42_u64)]
    );
}

#[test]
fn poison_record_with_log_and_continue_is_skipped() {
    let driver = TopologyTestDriver::with_options(
        words_topology("upper", || Upper),
        "app",
        0,
        Box::new(LogAndContinue),
    )
    .unwrap();
    let input = driver.input_topic::<String, String>("words", Utf8, Utf8);
    let output = driver.output_topic::<String, String>("out", Utf8, Utf8);
    input.pipe_at(s("k1"), s("one"), 1).unwrap();
    input
        .pipe_raw(
            Some(b"k2".to_vec()),
            Some(vec![0xc3, 0x28]),
            2,
            Headers::new(),
        )
        .unwrap();
    // A null value is not a string either.
    input
        .pipe_raw(Some(b"k3".to_vec()), None, 3, Headers::new())
        .unwrap();
    input.pipe_at(s("k4"), s("four"), 4).unwrap();
    assert_eq!(
        drain(&output),
        vec![(s("k1"), s("ONE"), 1), (s("k4"), s("FOUR"), 4)]
    );
}

#[test]
fn a_negative_extracted_timestamp_goes_to_the_handler() {
    let topology = || {
        TopologyBuilder::new()
            .add_source(
                "words-source",
                Source::new(["words"], Utf8, Utf8).with_timestamp_extractor(|r, _| {
                    if r.value() == "bad" {
                        -1
                    } else {
                        r.timestamp()
                    }
                }),
            )
            .add_processor("upper", || Upper, ["words-source"])
            .add_sink("out-sink", Sink::new("out", Utf8, Utf8), ["upper"])
            .build()
            .unwrap()
    };
    let driver = TopologyTestDriver::new(topology()).unwrap();
    let e = driver
        .input_topic::<String, String>("words", Utf8, Utf8)
        .pipe_at(s("k"), s("bad"), 5)
        .unwrap_err();
    assert!(
        matches!(&e, Error::Deserialization { message, .. } if message.contains("negative")),
        "{e:?}"
    );

    let driver =
        TopologyTestDriver::with_options(topology(), "app", 0, Box::new(LogAndContinue)).unwrap();
    let input = driver.input_topic::<String, String>("words", Utf8, Utf8);
    input.pipe_at(s("k"), s("bad"), 5).unwrap();
    input.pipe_at(s("k"), s("good"), 6).unwrap();
    assert_eq!(
        drain(&driver.output_topic::<String, String>("out", Utf8, Utf8)),
        vec![(s("k"), s("GOOD"), 6)]
    );
}

#[test]
fn poison_record_with_a_dead_letter_topic_keeps_its_bytes_and_says_why() {
    let topology = TopologyBuilder::new()
        .add_source(
            "amounts-source",
            Source::<String, u64>::new(["amounts"], Utf8, BigEndian),
        )
        .add_processor("doubler", || Doubler, ["amounts-source"])
        .add_sink(
            "out-sink",
            Sink::<String, u64>::new("out", Utf8, BigEndian),
            ["doubler"],
        )
        .build()
        .unwrap();
    let driver = TopologyTestDriver::with_options(
        topology,
        "app",
        0,
        Box::new(DeadLetterTopic("dlq".into())),
    )
    .unwrap();
    let input = driver.input_topic::<String, u64>("amounts", Utf8, BigEndian);
    let output = driver.output_topic::<String, u64>("out", Utf8, BigEndian);
    let dlq = driver.output_topic("dlq", Nullable(RawBytes), Nullable(RawBytes));

    input.pipe_at(s("a"), 1_u64, 10).unwrap();
    input
        .pipe_raw(
            Some(b"key-2".to_vec()),
            Some(vec![1, 2, 3]),
            777,
            Headers::new().with("origin", Some(b"legacy")),
        )
        .unwrap();
    input
        .pipe_raw(None, Some(vec![9]), 778, Headers::new())
        .unwrap();
    input.pipe_at(s("c"), 4_u64, 20).unwrap();

    assert_eq!(drain(&output), vec![(s("a"), 2_u64, 10), (s("c"), 8, 20)]);

    let dead = dlq.read_record().unwrap().expect("a dead letter");
    assert_eq!(dead.key().as_deref(), Some(&b"key-2"[..]));
    assert_eq!(dead.value().as_deref(), Some(&[1_u8, 2, 3][..]));
    assert_eq!(dead.timestamp(), 777);
    let h = dead.headers();
    let names: Vec<&str> = h.iter().map(|(k, _)| k).collect();
    assert_eq!(
        names,
        [
            "origin",
            headers::MESSAGE,
            headers::TOPIC,
            headers::PARTITION,
            headers::OFFSET,
            headers::TASK
        ]
    );
    assert!(names[1..].iter().all(|n| n.starts_with("kstreams.error.")));
    assert_eq!(h.last("origin"), Some(&b"legacy"[..]));
    assert_eq!(h.last(headers::TOPIC), Some(&b"amounts"[..]));
    assert_eq!(h.last(headers::PARTITION), Some(&b"0"[..]));
    assert_eq!(h.last(headers::OFFSET), Some(&b"1"[..]));
    assert_eq!(h.last(headers::TASK), Some(&b"0_0"[..]));
    let message = String::from_utf8(h.last(headers::MESSAGE).unwrap().to_vec()).unwrap();
    assert!(message.contains("3 bytes for a u64 (needs 8)"), "{message}");

    let dead = dlq.read_record().unwrap().expect("a second dead letter");
    assert_eq!(*dead.key(), None, "an absent key stays absent");
    assert_eq!(dead.value().as_deref(), Some(&[9_u8][..]));
    assert_eq!(dead.headers().last(headers::OFFSET), Some(&b"2"[..]));
    let message =
        String::from_utf8(dead.headers().last(headers::MESSAGE).unwrap().to_vec()).unwrap();
    assert!(
        message.contains("Utf8"),
        "the key serde fails first: {message}"
    );
    assert!(dlq.is_empty());
}

// ---------------------------------------------------------------------------------------------
// 10. Processor errors.
// ---------------------------------------------------------------------------------------------

#[test]
fn a_processor_error_is_returned_wrapped_with_the_task_id() {
    let driver = TopologyTestDriver::new(words_topology("fragile", || Fragile)).unwrap();
    let input = driver.input_topic::<String, String>("words", Utf8, Utf8);
    let output = driver.output_topic::<String, String>("out", Utf8, Utf8);
    input.pipe_at(s("k"), s("ok"), 1).unwrap();
    let e = input.pipe_at(s("k"), s("boom"), 2).unwrap_err();
    assert!(
        e.to_string().starts_with("task 0_0: "),
        "display names the task: {e}"
    );
    assert!(matches!(e.root(), Error::Config(m) if m == "fragile refuses boom at offset 1"));
    let (task, source) = task_error(e);
    assert_eq!(task, "0_0");
    assert!(matches!(source, Error::Config(_)));

    // The driver goes on with the next record.
    input.pipe_at(s("k"), s("after"), 3).unwrap();
    assert_eq!(
        drain(&output),
        vec![(s("k"), s("ok"), 1), (s("k"), s("after"), 3)]
    );
}

/// Fails in every wall-clock punctuation.
struct FailingPunctuation;

impl Processor for FailingPunctuation {
    type KeyIn = String;
    type ValueIn = String;
    type KeyOut = String;
    type ValueOut = String;

    fn init(&mut self, ctx: &mut ProcessorContext<'_, String, String>) -> Result<()> {
        ctx.schedule(Duration::from_millis(100), PunctuationType::WallClockTime)?;
        Ok(())
    }

    fn process(
        &mut self,
        record: Record<String, String>,
        ctx: &mut ProcessorContext<'_, String, String>,
    ) -> Result<()> {
        ctx.forward(record)
    }

    fn punctuate(
        &mut self,
        _id: PunctuatorId,
        timestamp: i64,
        _ctx: &mut ProcessorContext<'_, String, String>,
    ) -> Result<()> {
        Err(Error::Config(format!("punctuation at {timestamp} failed")))
    }
}

#[test]
fn a_punctuation_error_is_returned_wrapped_with_the_task_id() {
    let driver = TopologyTestDriver::new(words_topology("failing", || FailingPunctuation)).unwrap();
    driver
        .advance_wall_clock(Duration::from_millis(99))
        .unwrap();
    let e = driver
        .advance_wall_clock(Duration::from_millis(1))
        .unwrap_err();
    let (task, source) = task_error(e);
    assert_eq!(task, "0_0");
    assert!(
        source.to_string().contains("punctuation at 100 failed"),
        "{source}"
    );
}

/// Counts `close` calls.
struct Closing(Arc<Mutex<u32>>);

impl Processor for Closing {
    type KeyIn = String;
    type ValueIn = String;
    type KeyOut = String;
    type ValueOut = String;

    fn process(
        &mut self,
        record: Record<String, String>,
        ctx: &mut ProcessorContext<'_, String, String>,
    ) -> Result<()> {
        ctx.forward(record)
    }

    fn close(&mut self) -> Result<()> {
        *self.0.lock().unwrap() += 1;
        Ok(())
    }
}

#[test]
fn closing_the_driver_closes_the_processors() {
    let closed = Arc::new(Mutex::new(0));
    let c = closed.clone();
    let driver =
        TopologyTestDriver::new(words_topology("closing", move || Closing(c.clone()))).unwrap();
    assert_eq!(*closed.lock().unwrap(), 0);
    driver.close().unwrap();
    assert_eq!(*closed.lock().unwrap(), 1);
}

// ---------------------------------------------------------------------------------------------
// More: several punctuators, init, sinks, poison records in a repartition topic.
// ---------------------------------------------------------------------------------------------

/// A slow (10 s) and a fast (3 s) stream-time punctuation; the third fast one cancels the slow.
#[derive(Default)]
struct TwoTickers {
    slow: Option<PunctuatorId>,
    fast: Option<PunctuatorId>,
    fast_fires: u32,
}

impl Processor for TwoTickers {
    type KeyIn = String;
    type ValueIn = String;
    type KeyOut = String;
    type ValueOut = String;

    fn init(&mut self, ctx: &mut ProcessorContext<'_, String, String>) -> Result<()> {
        self.slow = Some(ctx.schedule(Duration::from_secs(10), PunctuationType::StreamTime)?);
        self.fast = Some(ctx.schedule(Duration::from_secs(3), PunctuationType::StreamTime)?);
        Ok(())
    }

    fn process(
        &mut self,
        record: Record<String, String>,
        ctx: &mut ProcessorContext<'_, String, String>,
    ) -> Result<()> {
        ctx.forward(record)
    }

    fn punctuate(
        &mut self,
        id: PunctuatorId,
        timestamp: i64,
        ctx: &mut ProcessorContext<'_, String, String>,
    ) -> Result<()> {
        let name = if Some(id) == self.fast {
            self.fast_fires += 1;
            "fast"
        } else if Some(id) == self.slow {
            "slow"
        } else {
            "unknown"
        };
        ctx.forward(Record::new(s(name), timestamp.to_string(), timestamp))?;
        if self.fast_fires == 3 {
            if let Some(slow) = self.slow.take() {
                ctx.cancel(slow);
            }
        }
        Ok(())
    }
}

#[test]
fn punctuations_due_together_run_in_schedule_order_and_can_cancel_each_other() {
    let driver = TopologyTestDriver::new(words_topology("tickers", TwoTickers::default)).unwrap();
    let input = driver.input_topic::<String, String>("words", Utf8, Utf8);
    let output = driver.output_topic::<String, String>("out", Utf8, Utf8);
    let step = |ts: i64| {
        input.pipe_at(s("k"), s("r"), ts).unwrap();
        drain(&output)
            .into_iter()
            .skip(1) // the record itself
            .map(|(k, _, ts)| (k, ts))
            .collect::<Vec<_>>()
    };
    // Both are first due at the first record: same time, so in the order they were scheduled.
    assert_eq!(step(1_000), vec![(s("slow"), 1_000), (s("fast"), 1_000)]);
    assert_eq!(step(4_000), vec![(s("fast"), 4_000)]);
    // fast was due at 7 000, slow at 11 000: fast runs first, and (its third run) cancels
    // slow, which then must not run although it was due in the same round.
    assert_eq!(step(11_500), vec![(s("fast"), 11_500)]);
    assert_eq!(step(13_000), vec![(s("fast"), 13_000)]);
    assert_eq!(step(30_000), vec![(s("fast"), 30_000)]);
}

/// Forwards a record from `init`, which is not allowed.
struct EagerInit;

impl Processor for EagerInit {
    type KeyIn = String;
    type ValueIn = String;
    type KeyOut = String;
    type ValueOut = String;

    fn init(&mut self, ctx: &mut ProcessorContext<'_, String, String>) -> Result<()> {
        assert!(ctx.record_metadata().is_none());
        assert_eq!(ctx.stream_time(), i64::MIN);
        assert_eq!(ctx.application_id(), "eager-app");
        ctx.forward(Record::new(s("k"), s("too early"), 0))
    }

    fn process(
        &mut self,
        record: Record<String, String>,
        ctx: &mut ProcessorContext<'_, String, String>,
    ) -> Result<()> {
        ctx.forward(record)
    }
}

#[test]
fn forwarding_from_init_fails_the_task_creation() {
    let Err(e) = TopologyTestDriver::with_options(
        words_topology("eager", || EagerInit),
        "eager-app",
        0,
        Box::new(LogAndFail),
    ) else {
        panic!("creating the driver should fail");
    };
    let (task, source) = task_error(e);
    assert_eq!(task, "0_0");
    assert!(source.to_string().contains("from init"), "{source}");
}

#[test]
fn a_partitioner_choosing_a_missing_partition_is_an_error() {
    let topology = TopologyBuilder::new()
        .add_source("words-source", Source::new(["words"], Utf8, Utf8))
        .add_sink(
            "out-sink",
            Sink::<String, String>::new("out", Utf8, Utf8)
                .with_partitioner(|k, _, count| Some(if k == "far" { count } else { count - 1 })),
            ["words-source"],
        )
        .build()
        .unwrap();
    let driver = TopologyTestDriver::new(topology).unwrap();
    let input = driver.input_topic::<String, String>("words", Utf8, Utf8);
    input.pipe(s("near"), s("v")).unwrap();
    let e = input.pipe(s("far"), s("v")).unwrap_err();
    let (task, source) = task_error(e);
    assert_eq!(task, "0_0");
    let message = source.to_string();
    assert!(message.contains("out-sink"), "{message}");
    assert!(
        message.contains("partition 1 of topic out which has 1"),
        "{message}"
    );
    assert_eq!(
        driver
            .output_topic::<String, String>("out", Utf8, Utf8)
            .read_key_values()
            .unwrap(),
        vec![(s("near"), s("v"))]
    );
}

/// A string serde that refuses to serialize `unsayable`.
struct Picky;

impl streams_core::Serde<String> for Picky {
    fn serialize(
        &self,
        topic: &str,
        value: &String,
    ) -> std::result::Result<Option<Vec<u8>>, streams_core::SerdeError> {
        if value == "unsayable" {
            return Err(streams_core::SerdeError::new(
                "Picky",
                topic,
                "cannot say that",
            ));
        }
        Ok(Some(value.as_bytes().to_vec()))
    }
    fn deserialize(
        &self,
        topic: &str,
        data: Option<&[u8]>,
    ) -> std::result::Result<String, streams_core::SerdeError> {
        streams_core::Serde::<String>::deserialize(&Utf8, topic, data)
    }
}

#[test]
fn an_output_record_that_cannot_be_serialized_fails_the_pipe() {
    let topology = TopologyBuilder::new()
        .add_source("words-source", Source::new(["words"], Utf8, Utf8))
        .add_sink("out-sink", Sink::new("out", Utf8, Picky), ["words-source"])
        .build()
        .unwrap();
    let driver = TopologyTestDriver::new(topology).unwrap();
    let input = driver.input_topic::<String, String>("words", Utf8, Utf8);
    input.pipe(s("k"), s("fine")).unwrap();
    let e = input.pipe(s("k"), s("unsayable")).unwrap_err();
    let (task, source) = task_error(e);
    assert_eq!(task, "0_0");
    let message = source.to_string();
    assert!(message.contains("out-sink"), "{message}");
    assert!(message.contains("cannot say that"), "{message}");
    assert_eq!(
        driver
            .output_topic::<String, String>("out", Utf8, Utf8)
            .read_values()
            .unwrap(),
        vec![s("fine")]
    );
}

/// Sub-topology 0 writes strings to the repartition topic `r`; sub-topology 1 reads it as u64.
fn mismatched_repartition_topology() -> Topology {
    TopologyBuilder::new()
        .add_repartition_topic("r", None)
        .add_source("words-source", Source::new(["words"], Utf8, Utf8))
        .add_sink("to-r", Sink::new("r", Utf8, Utf8), ["words-source"])
        .add_source("from-r", Source::<String, u64>::new(["r"], Utf8, BigEndian))
        .add_processor("doubler", || Doubler, ["from-r"])
        .add_sink(
            "out-sink",
            Sink::<String, u64>::new("out", Utf8, BigEndian),
            ["doubler"],
        )
        .build()
        .unwrap()
}

#[test]
fn a_poison_record_in_a_repartition_topic_names_the_reading_task_and_real_topic() {
    let driver = TopologyTestDriver::with_options(
        mismatched_repartition_topology(),
        "app",
        0,
        Box::new(LogAndFail),
    )
    .unwrap();
    let input = driver.input_topic::<String, String>("words", Utf8, Utf8);
    let e = input.pipe(s("k"), s("abc")).unwrap_err();
    match &e {
        Error::Deserialization {
            task,
            topic,
            partition,
            offset,
            ..
        } => assert_eq!(
            (task.as_str(), topic.as_str(), *partition, *offset),
            ("1_0", "app-r-repartition", 0, 0)
        ),
        other => panic!("expected Error::Deserialization, got {other:?}"),
    }

    let driver = TopologyTestDriver::with_options(
        mismatched_repartition_topology(),
        "app",
        0,
        Box::new(DeadLetterTopic("dlq".into())),
    )
    .unwrap();
    let input = driver.input_topic::<String, String>("words", Utf8, Utf8);
    input.pipe_at(s("k1"), s("abc"), 5).unwrap();
    input.pipe_at(s("k2"), s("12345678"), 6).unwrap();
    assert_eq!(
        drain(&driver.output_topic::<String, u64>("out", Utf8, BigEndian)),
        vec![(s("k2"), u64::from_be_bytes(*b"12345678") * 2, 6)]
    );
    let dlq = driver.output_topic::<String, String>("dlq", Utf8, Utf8);
    let dead = dlq.read_record().unwrap().expect("a dead letter");
    assert_eq!((dead.key().as_str(), dead.value().as_str()), ("k1", "abc"));
    let h = dead.headers();
    assert_eq!(h.last(headers::TOPIC), Some(&b"app-r-repartition"[..]));
    assert_eq!(h.last(headers::TASK), Some(&b"1_0"[..]));
    assert_eq!(h.last(headers::OFFSET), Some(&b"0"[..]));
    assert!(dlq.is_empty());
}

#[test]
fn subtopologies_are_numbered_in_the_order_of_their_first_node() {
    let topology = TopologyBuilder::new()
        .add_source("a-source", Source::new(["a"], Utf8, Utf8))
        .add_source("b-source", Source::new(["b1", "b2"], Utf8, Utf8))
        .add_sink("b-sink", Sink::new("b-out", Utf8, Utf8), ["b-source"])
        .add_sink("a-sink", Sink::new("a-out", Utf8, Utf8), ["a-source"])
        .build()
        .unwrap();
    let subs = topology.subtopologies();
    assert_eq!(subs.len(), 2);
    assert_eq!(
        (
            subs[0].source_topics.as_slice(),
            subs[0].sink_topics.as_slice()
        ),
        (&[s("a")][..], &[s("a-out")][..])
    );
    assert_eq!(subs[1].source_topics, ["b1", "b2"]);
    assert_eq!(subs[1].sink_topics, ["b-out"]);
    assert!(topology
        .describe()
        .to_string()
        .contains("Source: b-source (topics: [b1, b2])"));

    // Both topics of the multi-topic source feed the same task; record_metadata tells them apart.
    let driver = TopologyTestDriver::new(topology).unwrap();
    driver
        .input_topic::<String, String>("b2", Utf8, Utf8)
        .pipe(s("x"), s("from b2"))
        .unwrap();
    driver
        .input_topic::<String, String>("b1", Utf8, Utf8)
        .pipe(s("y"), s("from b1"))
        .unwrap();
    assert_eq!(
        driver
            .output_topic::<String, String>("b-out", Utf8, Utf8)
            .read_key_values()
            .unwrap(),
        vec![(s("x"), s("from b2")), (s("y"), s("from b1"))]
    );
    assert!(driver
        .output_topic::<String, String>("a-out", Utf8, Utf8)
        .is_empty());
}

#[test]
fn a_timestamp_extractor_sees_the_partition_time() {
    let topology = TopologyBuilder::new()
        .add_source(
            "words-source",
            Source::<String, String>::new(["words"], Utf8, Utf8).with_timestamp_extractor(
                |r, partition_time| {
                    if r.value() == "late" {
                        partition_time
                    } else {
                        r.timestamp()
                    }
                },
            ),
        )
        .add_sink("out-sink", Sink::new("out", Utf8, Utf8), ["words-source"])
        .build()
        .unwrap();
    let driver =
        TopologyTestDriver::with_options(topology, "app", 0, Box::new(LogAndContinue)).unwrap();
    let input = driver.input_topic::<String, String>("words", Utf8, Utf8);
    let output = driver.output_topic::<String, String>("out", Utf8, Utf8);
    // Before any record the partition time is i64::MIN: an invalid timestamp, so skipped.
    input.pipe_at(s("k0"), s("late"), 50).unwrap();
    input.pipe_at(s("k1"), s("a"), 100).unwrap();
    input.pipe_at(s("k2"), s("b"), 300).unwrap();
    input.pipe_at(s("k3"), s("c"), 200).unwrap();
    input.pipe_at(s("k4"), s("late"), 5).unwrap();
    let got: Vec<(String, i64)> = drain(&output)
        .into_iter()
        .map(|(k, _, ts)| (k, ts))
        .collect();
    assert_eq!(
        got,
        vec![
            (s("k1"), 100),
            (s("k2"), 300),
            (s("k3"), 200),
            (s("k4"), 300)
        ]
    );
}

/// Counts the characters of each value; it cannot touch the key.
struct CharCount;

impl streams_core::processor::FixedKeyProcessor for CharCount {
    type Key = String;
    type ValueIn = String;
    type ValueOut = u64;
    fn process(
        &mut self,
        record: streams_core::FixedKeyRecord<String, String>,
        ctx: &mut streams_core::processor::FixedKeyProcessorContext<'_, String, u64>,
    ) -> Result<()> {
        let n = record.value().chars().count() as u64;
        ctx.forward(record.with_value(n))
    }
}

#[test]
fn a_fixed_key_processor_forwards_under_the_same_key_and_timestamp() {
    let topology = TopologyBuilder::new()
        .add_source("words", Source::new(["words"], Utf8, Utf8))
        .add_fixed_key_processor("chars", || CharCount, ["words"])
        .add_sink(
            "out",
            Sink::<String, u64>::new("chars", Utf8, BigEndian),
            ["chars"],
        )
        .build()
        .unwrap();
    let driver = TopologyTestDriver::new(topology).unwrap();
    let input = driver.input_topic::<String, String>("words", Utf8, Utf8);
    let output = driver.output_topic::<String, u64>("chars", Utf8, BigEndian);
    input.pipe_at(s("a"), s("héllo"), 7).unwrap();
    input.pipe_at(s("b"), s(""), 9).unwrap();
    let got: Vec<(String, u64, i64)> = output
        .read_records()
        .unwrap()
        .into_iter()
        .map(|r| (r.key().clone(), *r.value(), r.timestamp()))
        .collect();
    assert_eq!(got, vec![(s("a"), 5, 7), (s("b"), 0, 9)]);
}
