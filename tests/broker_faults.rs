//! The runtime against a broker that stops answering for a while: its process is paused
//! (SIGSTOP) and resumed (SIGCONT). A transient outage under exactly-once must end in
//! abort-and-rewind (or a replaced producer), never in the Error state, and the output must
//! stay exactly-once. Each test pauses a broker of its own, so these tests need the project's
//! broker: with `KAFKA_BOOTSTRAP_SERVERS` set they fail and say so (a paused process is the
//! only fault this harness injects until the proxy can black-hole connections).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use kstreams::core::serde::{BigEndian, Utf8};
use kstreams::core::store::KeyValueStore;
use kstreams::core::{
    KafkaStreams, Processor, ProcessorContext, Record, Result, Sink, Source, State, StreamsConfig,
    Topology, TopologyBuilder,
};
use rdkafka::producer::{BaseRecord, Producer};
use streams_testkit::broker::external_bootstrap_servers;
use streams_testkit::kafka::{
    consume_until, create_topic, idempotent_producer, read_to_end, send_retrying, Isolation,
};
use streams_testkit::{unique, BrokerOptions, ManagedBroker};

const LONG: Duration = Duration::from_secs(180);
const KEYS: usize = 10;

/// Counts records per key and emits the new count.
struct Count;

impl Processor for Count {
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

fn topology(input: &str, output: &str) -> Topology {
    TopologyBuilder::new()
        .add_source("in", Source::new([input], Utf8, Utf8))
        .add_processor("count", || Count, ["in"])
        .add_state_store(
            KeyValueStore::<String, u64>::builder("counts", Utf8, BigEndian),
            ["count"],
        )
        .add_sink(
            "out",
            Sink::<String, u64>::new(output, Utf8, BigEndian),
            ["count"],
        )
        .build()
        .unwrap()
}

fn own_broker() -> ManagedBroker {
    assert!(
        external_bootstrap_servers().is_none(),
        "this test pauses the project's own broker process (SIGSTOP) and cannot pause the \
         broker named in KAFKA_BOOTSTRAP_SERVERS; run it without that variable"
    );
    ManagedBroker::start(BrokerOptions::from_env()).unwrap()
}

/// The broker process stopped until dropped (then continued).
struct Paused(libc::pid_t);

impl Paused {
    fn new(broker: &ManagedBroker) -> Paused {
        let pid = broker.pid().expect("the broker runs") as libc::pid_t;
        assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
        Paused(pid)
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        unsafe { libc::kill(self.0, libc::SIGCONT) };
    }
}

fn key_of(i: usize) -> String {
    format!("key-{:02}", i % KEYS)
}

/// Per key, the output counts must be 1..=n each exactly once.
fn check_exactly_once(out: &[streams_testkit::kafka::Received], n: usize) {
    let mut per_key: HashMap<String, Vec<u64>> = HashMap::new();
    for r in out {
        let count = u64::from_be_bytes(r.value.as_deref().unwrap().try_into().unwrap());
        per_key.entry(r.key_str()).or_default().push(count);
    }
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    for i in 0..n {
        *expected.entry(key_of(i)).or_default() += 1;
    }
    for (k, want) in expected {
        let mut got = per_key.remove(&k).unwrap_or_default();
        got.sort();
        assert_eq!(
            got,
            (1..=want).collect::<Vec<_>>(),
            "{k}: each count once, none missing"
        );
    }
    assert!(per_key.is_empty());
}

/// Runs a counting application under exactly-once, pauses the broker for `pause` while input
/// keeps coming, and checks that the application is running again afterwards, never went to
/// Error, and wrote each count exactly once.
fn survive_a_pause(name: &str, pause: Duration, tune: impl Fn(StreamsConfig) -> StreamsConfig) {
    streams_testkit::init_tracing();
    let broker = own_broker();
    let bootstrap = broker.bootstrap_servers();
    let (input, output, app) = (
        unique(&format!("{name}-in")),
        unique(&format!("{name}-out")),
        unique(&format!("{name}-app")),
    );
    create_topic(&bootstrap, &input, 2, &[]).unwrap();
    create_topic(&bootstrap, &output, 2, &[]).unwrap();
    let dir = std::env::temp_dir().join(unique(&format!("{name}-state")));
    let config = tune(
        StreamsConfig::new(&app, &bootstrap)
            .state_dir(&dir)
            .set("session.timeout.ms", "30000")
            .set("heartbeat.interval.ms", "1000")
            .transaction_timeout(Duration::from_secs(30)),
    );
    let streams = KafkaStreams::new(topology(&input, &output), config).unwrap();
    let states = std::sync::Arc::new(std::sync::Mutex::new(vec![]));
    let seen = states.clone();
    streams.set_state_listener(move |_, new| seen.lock().unwrap().push(new));
    streams.start().unwrap();
    assert!(streams.wait_for(|s| s == State::Running, LONG));

    const N: usize = 1200;
    let feeder = {
        let (bootstrap, input) = (bootstrap.clone(), input.clone());
        std::thread::spawn(move || {
            let p = idempotent_producer(&bootstrap).unwrap();
            let start = Instant::now();
            for i in 0..N {
                let (key, value) = (key_of(i), format!("v{i}"));
                send_retrying(&p, BaseRecord::to(&input).key(&key).payload(&value)).unwrap();
                if i % 20 == 19 {
                    // Pacing the load (200 records/s) so that commits run across the pause.
                    let due = start + Duration::from_secs_f64((i + 1) as f64 / 200.0);
                    std::thread::sleep(due.saturating_duration_since(Instant::now()));
                }
            }
            p.flush(LONG).unwrap();
        })
    };
    consume_until(&bootstrap, &output, Isolation::ReadCommitted, LONG, |g| {
        g.len() >= 300
    })
    .unwrap();
    {
        let _paused = Paused::new(&broker);
        // The outage itself: the broker does not answer for this long.
        std::thread::sleep(pause);
    }
    feeder.join().unwrap();
    consume_until(&bootstrap, &output, Isolation::ReadCommitted, LONG, |g| {
        g.len() >= N
    })
    .unwrap();
    let running = streams.wait_for(|s| s == State::Running, LONG);
    let error = streams.error().map(|e| e.to_string());
    assert!(streams.close(LONG));
    let states = states.lock().unwrap().clone();
    eprintln!("{name}: states {states:?}, error {error:?}");
    assert_eq!(error, None, "no error after a {pause:?} outage");
    assert!(
        !states.contains(&State::Error) && !states.contains(&State::PendingError),
        "never in Error: {states:?}"
    );
    assert!(running);
    let out = read_to_end(&bootstrap, &output, Isolation::ReadCommitted, LONG).unwrap();
    check_exactly_once(&out, N);
    assert_eq!(out.len(), N);
}

/// Issue 9, item 7: a pause longer than the commit's timeout (and its retries) used to end in
/// Error: after the timed-out commit, librdkafka refuses the abort while the commit is in
/// flight. Now the producer is replaced and the tasks rewind.
#[test]
fn a_broker_pause_longer_than_the_commit_timeout_ends_in_a_rewind() {
    survive_a_pause("commit-timeout", Duration::from_secs(9), |c| {
        c.client_timeout(Duration::from_secs(2))
    });
}

/// Issue 9, item 8: records not delivered within `message.timeout.ms` (the broker paused) used
/// to be fatal under exactly-once; they abort the transaction, and the tasks rewind.
#[test]
fn delivery_timeouts_under_exactly_once_end_in_a_rewind() {
    survive_a_pause("delivery-timeout", Duration::from_secs(6), |c| {
        c.client_timeout(Duration::from_secs(10))
            .set("message.timeout.ms", "2000")
    });
}
