//! Malformed input at volume (issue 15, item 3): 10,000 malformed records among 100,000 good
//! ones (bad JSON, wrong types, empty and missing values, oversized values, null keys), read by
//! an exactly-once application three times: with log-and-continue every good record is
//! processed once and exactly 10,000 skips are counted; with the dead-letter topic it holds
//! exactly the 10,000, with their original bytes and the error in headers; with log-and-fail the
//! application stops with an error naming the first malformed record's topic, partition and
//! offset. Never a panic, never a lost good record.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kstreams::core::handlers::{
    headers, DeadLetterTopic, DeserializationErrorHandler, DeserializationResponse, ErrorContext,
    LogAndContinue, LogAndFail,
};
use kstreams::core::serde::{Json, Utf8};
use kstreams::core::{KafkaStreams, State, StreamsConfig};
use kstreams::dsl::{Consumed, Produced, StreamsBuilder};
use rdkafka::producer::{BaseRecord, Producer};
use serde::{Deserialize, Serialize};
use streams_testkit::kafka::{
    committed_offsets, create_topic, idempotent_producer, read_to_end, send_retrying, Isolation,
    Received,
};
use streams_testkit::{bootstrap_servers, unique};

const GOOD: usize = 100_000;
const BAD: usize = 10_000;
const LONG: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Order {
    id: u64,
    amount: i64,
}

/// A record's key and value bytes.
type KeyAndValue = (Option<Vec<u8>>, Option<Vec<u8>>);

/// The malformed record number `i`: its key and value (`None`: absent).
fn malformed(i: usize) -> (Option<String>, Option<Vec<u8>>) {
    let key = Some(format!("bad-{i}"));
    match i % 6 {
        0 => (key, Some(b"{\"id\": 1, \"amount\":".to_vec())), // cut short
        1 => (key, Some(b"{\"id\": \"seven\", \"amount\": 1}".to_vec())), // wrong type
        2 => (key, Some(Vec::new())),                          // empty value
        3 => (key, None),                                      // no value at all
        4 => (None, Some(b"{\"id\": 1, \"amount\": 1}".to_vec())), // null key
        _ if i % 60 == 5 => (key, Some(vec![b'x'; 256 * 1024])), // oversized, not JSON
        _ => (key, Some(b"[1, 2, 3]".to_vec())),               // not an object
    }
}

/// Writes the good and malformed records, interleaved (one malformed after every tenth good
/// one), to `topic`.
fn fill(bootstrap: &str, topic: &str) {
    let p = idempotent_producer(bootstrap).unwrap();
    let mut bad = 0;
    for i in 0..GOOD {
        let order = Order {
            id: i as u64,
            amount: (i % 97) as i64,
        };
        let v = serde_json::to_vec(&order).unwrap();
        let key = format!("k{}", i % 1000);
        send_retrying(&p, BaseRecord::to(topic).key(&key).payload(&v)).unwrap();
        if i % 10 == 9 {
            let (key, value) = malformed(bad);
            let mut r = BaseRecord::<str, [u8]>::to(topic);
            if let Some(k) = &key {
                r = r.key(k.as_str());
            }
            if let Some(v) = &value {
                r = r.payload(v.as_slice());
            }
            send_retrying(&p, r).unwrap();
            bad += 1;
        }
    }
    p.flush(Duration::from_secs(60)).unwrap();
    assert_eq!(bad, BAD);
}

/// Counts the records it is asked about, then does what `inner` does.
struct Counting<H> {
    inner: H,
    calls: Arc<AtomicU64>,
}

impl<H: DeserializationErrorHandler> DeserializationErrorHandler for Counting<H> {
    fn handle(&self, context: &ErrorContext<'_>, error: &str) -> DeserializationResponse {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.inner.handle(context, error)
    }
}

/// The application: every order's id, keyed as read, to `output`.
fn start(
    input: &str,
    output: &str,
    app: &str,
    handler: impl DeserializationErrorHandler,
) -> KafkaStreams {
    let builder = StreamsBuilder::new();
    builder
        .stream_with::<String, Order>(input, Consumed::with(Utf8, Json::<Order>::default()))
        .map_values(|o| o.id.to_string())
        .to_with(output, Produced::with(Utf8, Utf8));
    let config = StreamsConfig::new(app, &bootstrap_servers())
        .state_dir(std::env::temp_dir().join(unique("mf-state")))
        .deserialization_error_handler(handler);
    let streams = KafkaStreams::new(builder.build().unwrap(), config).unwrap();
    streams.start().unwrap();
    streams
}

/// Waits until group `app` committed the whole of `input` (`total` records).
fn wait_consumed(bootstrap: &str, app: &str, input: &str, total: i64, streams: &KafkaStreams) {
    let deadline = Instant::now() + LONG;
    loop {
        let done: i64 = committed_offsets(bootstrap, app, input)
            .unwrap()
            .into_iter()
            .map(|o| o.unwrap_or(0))
            .sum();
        if done >= total {
            return;
        }
        assert_ne!(streams.state(), State::Error, "{:?}", streams.error());
        assert!(Instant::now() < deadline, "consumed {done} of {total}");
        std::thread::sleep(Duration::from_millis(200)); // polling the group's offsets
    }
}

/// Every good order's id exactly once.
fn check_good(out: &[Received]) {
    let mut ids: Vec<u64> = out.iter().map(|r| r.value_str().parse().unwrap()).collect();
    ids.sort_unstable();
    let n = ids.len();
    ids.dedup();
    assert_eq!(n, ids.len(), "{} duplicates", n - ids.len());
    assert_eq!(
        ids,
        (0..GOOD as u64).collect::<Vec<_>>(),
        "good records lost"
    );
}

#[test]
fn malformed_records_at_volume_are_skipped_dead_lettered_or_stop_the_application() {
    let bootstrap = bootstrap_servers();
    let input = unique("mf-in");
    create_topic(&bootstrap, &input, 4, &[]).unwrap();
    fill(&bootstrap, &input);
    let written = read_to_end(&bootstrap, &input, Isolation::ReadCommitted, LONG).unwrap();
    let total = written.len() as i64;
    assert_eq!(total as usize, GOOD + BAD);
    // The malformed records as the topic holds them, by (partition, offset).
    let is_bad = |r: &Received| {
        r.key.is_none()
            || serde_json::from_slice::<Order>(r.value.as_deref().unwrap_or_default()).is_err()
    };
    let bad: BTreeMap<(i32, i64), KeyAndValue> = written
        .iter()
        .filter(|r| is_bad(r))
        .map(|r| ((r.partition, r.offset), (r.key.clone(), r.value.clone())))
        .collect();
    assert_eq!(bad.len(), BAD);

    // 1. Log and continue.
    let (output, app) = (unique("mf-out"), unique("mf-skip"));
    create_topic(&bootstrap, &output, 4, &[]).unwrap();
    let skips = Arc::new(AtomicU64::new(0));
    let streams = start(
        &input,
        &output,
        &app,
        Counting {
            inner: LogAndContinue,
            calls: skips.clone(),
        },
    );
    wait_consumed(&bootstrap, &app, &input, total, &streams);
    // The runtime's own metrics count the same (issue 14).
    let m = streams.metrics();
    assert_eq!(
        m.sum(
            "kstreams_task_dropped_records_total",
            &[("reason", "deserialization")]
        ),
        BAD as f64
    );
    assert_eq!(
        m.sum("kstreams_task_process_records_total", &[]),
        GOOD as f64
    );
    assert!(streams.close(Duration::from_secs(60)));
    let out = read_to_end(&bootstrap, &output, Isolation::ReadCommitted, LONG).unwrap();
    eprintln!(
        "log and continue: {} outputs, {} skips counted",
        out.len(),
        skips.load(Ordering::Relaxed)
    );
    check_good(&out);
    assert_eq!(skips.load(Ordering::Relaxed), BAD as u64);

    // 2. Dead-letter topic.
    let (output, app, dlq) = (unique("mf-out"), unique("mf-dlq-app"), unique("mf-dlq"));
    create_topic(&bootstrap, &output, 4, &[]).unwrap();
    create_topic(&bootstrap, &dlq, 4, &[]).unwrap();
    let streams = start(&input, &output, &app, DeadLetterTopic(dlq.clone()));
    wait_consumed(&bootstrap, &app, &input, total, &streams);
    assert!(streams.close(Duration::from_secs(60)));
    check_good(&read_to_end(&bootstrap, &output, Isolation::ReadCommitted, LONG).unwrap());
    let dead = read_to_end(&bootstrap, &dlq, Isolation::ReadCommitted, LONG).unwrap();
    eprintln!("dead-letter topic: {} records", dead.len());
    assert_eq!(dead.len(), BAD);
    let header = |r: &Received, name: &str| -> String {
        r.headers
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.clone())
            .map(|v| String::from_utf8(v).unwrap())
            .unwrap_or_else(|| panic!("no header {name}"))
    };
    let mut seen = std::collections::BTreeSet::new();
    for r in &dead {
        let at = (
            header(r, headers::PARTITION).parse::<i32>().unwrap(),
            header(r, headers::OFFSET).parse::<i64>().unwrap(),
        );
        assert_eq!(header(r, headers::TOPIC), input);
        assert!(!header(r, headers::MESSAGE).is_empty());
        let original = bad
            .get(&at)
            .unwrap_or_else(|| panic!("dead letter for {at:?}, which is not malformed"));
        assert_eq!(
            (&r.key, &r.value),
            (&original.0, &original.1),
            "original bytes at {at:?}"
        );
        assert!(seen.insert(at), "{at:?} dead-lettered twice");
    }

    // 3. Log and fail: stops at the first malformed record of some partition, named.
    let (output, app) = (unique("mf-out"), unique("mf-fail"));
    create_topic(&bootstrap, &output, 4, &[]).unwrap();
    let streams = start(&input, &output, &app, LogAndFail);
    assert!(
        streams.wait_for(|s| s == State::Error, LONG),
        "state {:?}",
        streams.state()
    );
    let e = streams.error().expect("the error that stopped it");
    let m = e.to_string();
    eprintln!("log and fail: {m}");
    let first_bad: Vec<String> = (0..4)
        .filter_map(|p| bad.keys().find(|(bp, _)| *bp == p))
        .map(|(p, o)| format!("record {input}-{p}@{o} cannot be deserialized"))
        .collect();
    assert!(
        first_bad.iter().any(|want| m.contains(want.as_str())),
        "{m} names none of {first_bad:?}"
    );
    streams.close(Duration::from_secs(60));
}
