//! Broker outages (issue 15, item 1): an exactly-once application with a repartition topic and a
//! state store keeps exactly-once through five outages of 2 to 35 seconds, injected by the
//! test proxy (every connection cut, new ones refused), some longer than the session timeout
//! (6 s) and the transaction timeout (10 s), so that its member is thrown out of the group and
//! its transaction cannot commit. After each outage it is `Running` again and processing,
//! without a restart by the test; at the end its output, read `read_committed`, equals the
//! oracle: every key's counts 1..n, each exactly once.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kstreams::core::{KafkaStreams, State, StreamsConfig};
use streams_testkit::kafka::create_topic;
use streams_testkit::{unique, BrokerOptions, ManagedBroker};

mod counting_app;

const GROUPS: usize = 20;
const LONG: Duration = Duration::from_secs(240);

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

    let config = StreamsConfig::new(&app, &through_proxy)
        .state_dir(std::env::temp_dir().join(unique("out-state")))
        .cache_max_bytes(0)
        .transaction_timeout(Duration::from_secs(10))
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "1000");
    let topology = counting_app::topology(&input, &output, GROUPS);
    let streams = KafkaStreams::new(topology, config).unwrap();
    let states = Arc::new(Mutex::new(vec![]));
    let s = states.clone();
    streams.set_state_listener(move |_, new| s.lock().unwrap().push(new));
    streams.start().unwrap();
    assert!(streams.wait_for(|s| s == State::Running, LONG));

    // 200 records/s, straight to the broker.
    let feeder = counting_app::Feeder::start(&direct, &input, 200, 100);

    for (i, secs) in [2_u64, 12, 5, 35, 20].into_iter().enumerate() {
        // Some processing first.
        let before = counting_app::committed(&direct, &app, &input);
        let deadline = Instant::now() + LONG;
        while counting_app::committed(&direct, &app, &input)
            .iter()
            .sum::<i64>()
            <= before.iter().sum::<i64>()
        {
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
        let at_outage = counting_app::committed(&direct, &app, &input);
        std::thread::sleep(outage); // the outage itself is the condition under test
                                    // Running again, and every partition's committed offset moves past where it was.
        let deadline = Instant::now() + LONG;
        loop {
            let now = counting_app::committed(&direct, &app, &input);
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
    let total = feeder.stop();
    counting_app::wait_consumed(&direct, &app, &input, total, LONG);
    assert!(streams.close(LONG));
    // read_committed through the proxy: it gives readers the aborted transactions.
    let check = counting_app::check(&through_proxy, &output, total, GROUPS);
    let states = states.lock().unwrap().clone();
    eprintln!(
        "outages: {total} records, {} output records, duplicates {}, missing {}, beyond {:?}; \
         state changes {states:?}",
        check.records, check.duplicates, check.missing, check.beyond
    );
    assert!(
        check.exact(),
        "not exactly once: unexpected keys {:?}",
        check.unexpected
    );
}
