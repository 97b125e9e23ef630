//! Broker outages (issue 15, item 1): an exactly-once application with a repartition topic and a
//! state store keeps exactly-once through five outages of 2 to 35 seconds, injected by the
//! test proxy (every connection cut, new ones refused), some longer than the session timeout
//! (6 s) and the transaction timeout (10 s), so that its member is thrown out of the group and
//! its transaction cannot commit. After each outage it is `Running` again and processing,
//! without a restart by the test; at the end its output, read `read_committed`, equals the
//! oracle: every key's counts 1..n, each exactly once.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kstreams::core::serde::{BigEndian, Utf8};
use kstreams::core::{KafkaStreams, State, StreamsConfig};
use kstreams::dsl::{Materialized, Produced, StreamsBuilder};
use rdkafka::producer::{BaseRecord, Producer};
use streams_testkit::kafka::{
    committed_offsets, create_topic, idempotent_producer, read_to_end, send_retrying, Isolation,
};
use streams_testkit::{unique, BrokerOptions, ManagedBroker};

const GROUPS: usize = 20;
const LONG: Duration = Duration::from_secs(240);

fn committed(bootstrap: &str, app: &str, topic: &str) -> Vec<i64> {
    committed_offsets(bootstrap, app, topic)
        .map(|v| v.into_iter().map(|o| o.unwrap_or(0)).collect())
        .unwrap_or_default()
}

#[test]
fn exactly_once_holds_through_broker_outages_longer_than_the_session_and_transaction_timeouts() {
    let broker = ManagedBroker::start(BrokerOptions::default()).unwrap();
    let proxy = broker
        .proxy()
        .expect("the test broker runs behind the proxy");
    // The application talks through the proxy; the feeder and the checks go straight to the
    // broker, so that input keeps coming during the outages.
    let (through_proxy, direct) = (broker.bootstrap_servers(), broker.nisshi_address());
    let (input, output, app) = (unique("out-in"), unique("out-out"), unique("out-app"));
    create_topic(&direct, &input, 2, &[]).unwrap();
    create_topic(&direct, &output, 2, &[]).unwrap();

    let builder = StreamsBuilder::new();
    builder
        .stream::<String, String>(input.as_str())
        .select_key(|_, v| format!("g{}", v.parse::<usize>().unwrap() % GROUPS))
        .group_by_key()
        .count_with(Materialized::with(BigEndian).named("counts"))
        .to_stream()
        .to_with(output.as_str(), Produced::with(Utf8, BigEndian));
    let config = StreamsConfig::new(&app, &through_proxy)
        .state_dir(std::env::temp_dir().join(unique("out-state")))
        .cache_max_bytes(0)
        .transaction_timeout(Duration::from_secs(10))
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "1000");
    let streams = KafkaStreams::new(builder.build().unwrap(), config).unwrap();
    let states = Arc::new(Mutex::new(vec![]));
    let s = states.clone();
    streams.set_state_listener(move |_, new| s.lock().unwrap().push(new));
    streams.start().unwrap();
    assert!(streams.wait_for(|s| s == State::Running, LONG));

    let stop = Arc::new(AtomicBool::new(false));
    let produced = Arc::new(AtomicU64::new(0));
    let feeder = {
        let (direct, input, stop, produced) = (
            direct.clone(),
            input.clone(),
            stop.clone(),
            produced.clone(),
        );
        std::thread::spawn(move || {
            let p = idempotent_producer(&direct).unwrap();
            let start = Instant::now();
            let mut n = 0_u64;
            while !stop.load(Ordering::Relaxed) {
                for _ in 0..10 {
                    let (key, value) = (format!("u{}", n % 100), n.to_string());
                    send_retrying(&p, BaseRecord::to(&input).key(&key).payload(&value)).unwrap();
                    n += 1;
                }
                p.flush(Duration::from_secs(30)).unwrap();
                produced.store(n, Ordering::Relaxed);
                // Pacing the load (200 records/s), not waiting for a condition.
                let due = start + Duration::from_secs_f64(n as f64 / 200.0);
                std::thread::sleep(due.saturating_duration_since(Instant::now()));
            }
        })
    };

    for (i, secs) in [2_u64, 12, 5, 35, 20].into_iter().enumerate() {
        // Some processing first.
        let before = committed(&direct, &app, &input);
        let deadline = Instant::now() + LONG;
        while committed(&direct, &app, &input).iter().sum::<i64>() <= before.iter().sum::<i64>() {
            assert!(
                Instant::now() < deadline,
                "no progress before outage {}",
                i + 1
            );
            std::thread::sleep(Duration::from_millis(100)); // polling the group's offsets
        }
        let outage = Duration::from_secs(secs);
        proxy.outage(outage);
        let started = Instant::now();
        let at_outage = committed(&direct, &app, &input);
        std::thread::sleep(outage); // the outage itself is the condition under test
                                    // Running again, and every partition's committed offset moves past where it was.
        let deadline = Instant::now() + LONG;
        loop {
            let now = committed(&direct, &app, &input);
            if streams.state() == State::Running
                && now.len() == at_outage.len()
                && now.iter().zip(&at_outage).all(|(n, a)| n > a)
            {
                break;
            }
            assert_ne!(streams.state(), State::Error, "{:?}", streams.error());
            assert!(
                Instant::now() < deadline,
                "not processing again after outage {} ({secs} s): state {:?}",
                i + 1,
                streams.state()
            );
            std::thread::sleep(Duration::from_millis(200)); // polling state and offsets
        }
        eprintln!(
            "outage {} of {secs} s: processing again {:?} after it began",
            i + 1,
            started.elapsed()
        );
    }
    stop.store(true, Ordering::Relaxed);
    feeder.join().unwrap();
    let total = produced.load(Ordering::Relaxed);
    let deadline = Instant::now() + LONG;
    while committed(&direct, &app, &input).iter().sum::<i64>() < total as i64 {
        assert!(Instant::now() < deadline, "input not consumed");
        std::thread::sleep(Duration::from_millis(200)); // polling the group's offsets
    }
    assert!(streams.close(LONG));

    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    for n in 0..total {
        *expected
            .entry(format!("g{}", n as usize % GROUPS))
            .or_default() += 1;
    }
    // read_committed through the proxy: it gives readers the aborted transactions.
    let out = read_to_end(&through_proxy, &output, Isolation::ReadCommitted, LONG).unwrap();
    let mut got: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for r in &out {
        let count = u64::from_be_bytes(r.value.as_deref().unwrap().try_into().unwrap());
        got.entry(r.key_str()).or_default().push(count);
    }
    let (mut duplicates, mut missing) = (0, 0);
    for (k, n) in &expected {
        let counts = got.remove(k).unwrap_or_default();
        let seen: BTreeSet<u64> = counts.iter().copied().collect();
        duplicates += counts.len() - seen.len();
        missing += (1..=*n).filter(|c| !seen.contains(c)).count();
        assert!(
            seen.iter().all(|c| *c >= 1 && c <= n),
            "{k}: counts beyond {n}"
        );
    }
    let states = states.lock().unwrap().clone();
    eprintln!(
        "outages: {total} records, {} output records, duplicates {duplicates}, missing {missing}; \
         state changes {states:?}",
        out.len()
    );
    assert!(got.is_empty(), "unexpected keys {:?}", got.keys());
    assert_eq!((duplicates, missing), (0, 0));
}
