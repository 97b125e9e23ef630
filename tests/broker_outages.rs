//! Broker outages (issue 15, item 1): an exactly-once application with a repartition topic and a
//! state store keeps exactly-once through five outages of 2 to 35 seconds, injected by the
//! test proxy in front of a broker of the test's own (transparent in front of Apache Kafka:
//! every connection cut, new ones refused), some longer than the session timeout
//! (6 s) and the transaction timeout (10 s), so that its member is thrown out of the group and
//! its transaction cannot commit. After each outage it is `Running` again and processing,
//! without a restart by the test; at the end its output, read `read_committed`, equals the
//! oracle: every key's counts 1..n, each exactly once. The same application also goes through
//! a network that drops everything (a black hole: connections cut, new ones accepted and never
//! answered) and through added latency.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kstreams::core::{KafkaStreams, State, StreamsConfig};
use streams_testkit::kafka::create_topic;
use streams_testkit::proxy::TxnProxy;
use streams_testkit::{unique, BrokerOptions, ManagedBroker};

mod counting_app;

const GROUPS: usize = 20;
const LONG: Duration = Duration::from_secs(240);

/// A fault the proxy injects, and for how long.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// Every connection cut, new ones refused.
    Outage(u64),
    /// Every connection cut, new ones accepted and never answered.
    BlackHole(u64),
    /// Every response delayed by the given milliseconds.
    Latency { millis: u64, secs: u64 },
}

impl Fault {
    fn secs(self) -> u64 {
        match self {
            Fault::Outage(s) | Fault::BlackHole(s) | Fault::Latency { secs: s, .. } => s,
        }
    }

    /// Injects it, lasts it out, and ends it.
    fn inject(self, proxy: &TxnProxy) {
        let d = Duration::from_secs(self.secs());
        match self {
            Fault::Outage(_) => proxy.outage(d),
            Fault::BlackHole(_) => {
                proxy.black_hole_for(d);
                proxy.cut_connections();
            }
            Fault::Latency { millis, .. } => proxy.set_latency(Duration::from_millis(millis)),
        }
        std::thread::sleep(d); // the fault itself is the condition under test
        if let Fault::Latency { .. } = self {
            proxy.set_latency(Duration::ZERO);
        }
    }
}

/// Runs the counting application through the proxy while `faults` are injected one after the
/// other, each after some processing; after each it must be `Running` and every input
/// partition's committed offset must move; at the end the output must equal the oracle.
/// A broker of the test's own behind the fault proxy, with the address through the proxy (the
/// application's) and the direct one (the feeder's and the checks', so that input keeps coming
/// during the faults).
fn broker_behind_proxy() -> (ManagedBroker, String, String) {
    let broker = ManagedBroker::start(BrokerOptions {
        fault_proxy: true,
        ..BrokerOptions::from_env()
    })
    .unwrap();
    let (through_proxy, direct) = (broker.bootstrap_servers(), broker.direct_address());
    (broker, through_proxy, direct)
}

fn exactly_once_through(faults: &[Fault]) {
    let (broker, through_proxy, direct) = broker_behind_proxy();
    let proxy = broker
        .proxy()
        .expect("the test broker runs behind the proxy");
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

    for (i, fault) in faults.iter().enumerate() {
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
                "no progress before fault {}",
                i + 1
            );
            std::thread::sleep(Duration::from_millis(100)); // polling the group's offsets
        }
        let started = Instant::now();
        let at_fault = counting_app::committed(&direct, &app, &input);
        fault.inject(proxy);
        // Running again, and every partition's committed offset moves past where it was.
        let deadline = Instant::now() + LONG;
        loop {
            let now = counting_app::committed(&direct, &app, &input);
            if streams.state() == State::Running
                && now.len() == at_fault.len()
                && now.iter().zip(&at_fault).all(|(n, a)| n > a)
            {
                break;
            }
            assert_ne!(streams.state(), State::Error, "{:?}", streams.error());
            assert!(
                Instant::now() < deadline,
                "not processing again after fault {} ({fault:?}): state {:?}",
                i + 1,
                streams.state()
            );
            std::thread::sleep(Duration::from_millis(200)); // polling state and offsets
        }
        eprintln!(
            "fault {} ({fault:?}): processing again {:?} after it began",
            i + 1,
            started.elapsed()
        );
    }
    let total = feeder.stop();
    counting_app::wait_consumed(&direct, &app, &input, total, LONG);
    counting_app::wait_counted(&through_proxy, &output, total, GROUPS, LONG);
    assert!(streams.close(LONG));
    // read_committed through the proxy (on nisshi, it gives readers the aborted transactions).
    let check = counting_app::check(&through_proxy, &output, total, GROUPS);
    let states = states.lock().unwrap().clone();
    eprintln!(
        "faults {faults:?}: {total} records, {} output records, duplicates {}, missing {}, \
         beyond {:?}; state changes {states:?}",
        check.records, check.duplicates, check.missing, check.beyond
    );
    check.assert_exact();
}

#[test]
fn exactly_once_holds_through_broker_outages_longer_than_the_session_and_transaction_timeouts() {
    let outages = [2, 12, 5, 35, 20].map(Fault::Outage);
    exactly_once_through(&outages);
}

/// A black hole longer than the session and transaction timeouts (clients wait for their own
/// timeouts instead of seeing connections refused), then 10 s with 300 ms added to every
/// response (longer than the commit interval).
#[test]
fn exactly_once_holds_through_a_black_hole_and_added_latency() {
    exactly_once_through(&[
        Fault::BlackHole(15),
        Fault::Latency {
            millis: 300,
            secs: 10,
        },
    ]);
}

/// Pauses the first restoration at its start until the test has injected its fault.
struct HoldAtRestoreStart {
    held: std::sync::atomic::AtomicBool,
    started: std::sync::mpsc::SyncSender<()>,
    go: Mutex<std::sync::mpsc::Receiver<()>>,
}

impl kstreams::core::config::RestoreListener for HoldAtRestoreStart {
    fn on_restore_start(&self, _store: &str, _partition: i32, _from: i64) {
        if !self.held.swap(true, std::sync::atomic::Ordering::SeqCst) {
            let _ = self.started.try_send(());
            let _ = self.go.lock().unwrap().recv_timeout(LONG);
        }
    }
}

/// Issue 27, finding 6: a broker outage in the middle of a restoration, longer than the client
/// timeout, does not stop the instance: the restoration's consumer errors are retried (up to
/// the task timeout), and the instance runs once the broker is back, counting on from the
/// restored state. Instance A counts 3,000 records and stops; B, on a fresh state directory,
/// restores A's changelogs through the proxy, which refuses every connection for 20 s just
/// as the first restoration starts.
#[test]
fn a_broker_outage_during_restoration_does_not_stop_the_instance() {
    const N: usize = 3_000;
    let (broker, through_proxy, direct) = broker_behind_proxy();
    let proxy = broker
        .proxy()
        .expect("the test broker runs behind the proxy");
    let (input, output, app) = (unique("ro-in"), unique("ro-out"), unique("ro-app"));
    create_topic(&direct, &input, 2, &[]).unwrap();
    create_topic(&direct, &output, 2, &[]).unwrap();
    let config = |listener: Option<HoldAtRestoreStart>| {
        let c = StreamsConfig::new(&app, &through_proxy)
            .state_dir(std::env::temp_dir().join(unique("ro-state")))
            .cache_max_bytes(0)
            .client_timeout(Duration::from_secs(5))
            .transaction_timeout(Duration::from_secs(10))
            .set("session.timeout.ms", "6000")
            .set("heartbeat.interval.ms", "1000");
        match listener {
            Some(l) => c.restore_listener(l),
            None => c,
        }
    };
    let a = KafkaStreams::new(
        counting_app::topology(&input, &output, GROUPS),
        config(None),
    )
    .unwrap();
    a.start().unwrap();
    assert!(a.wait_for(|s| s == State::Running, LONG));
    let p = streams_testkit::kafka::idempotent_producer(&direct).unwrap();
    let produce = |from: usize, to: usize| {
        for n in from..to {
            let (key, value) = (format!("u{}", n % 100), n.to_string());
            let record = rdkafka::producer::BaseRecord::to(&input)
                .key(&key)
                .payload(&value);
            streams_testkit::kafka::send_retrying(&p, record).unwrap();
        }
        rdkafka::producer::Producer::flush(&p, Duration::from_secs(30)).unwrap();
    };
    produce(0, N);
    let total = N as u64;
    counting_app::wait_counted(&through_proxy, &output, total, GROUPS, LONG);
    assert!(a.close(LONG));

    let (started_tx, started) = std::sync::mpsc::sync_channel(1);
    let (go, go_rx) = std::sync::mpsc::channel();
    let hold = HoldAtRestoreStart {
        held: std::sync::atomic::AtomicBool::new(false),
        started: started_tx,
        go: Mutex::new(go_rx),
    };
    let b = KafkaStreams::new(
        counting_app::topology(&input, &output, GROUPS),
        config(Some(hold)),
    )
    .unwrap();
    b.start().unwrap();
    started.recv_timeout(LONG).expect("B never restores");
    let outage = Duration::from_secs(20);
    proxy.outage(outage);
    let began = Instant::now();
    go.send(()).unwrap();
    let deadline = Instant::now() + LONG;
    while began.elapsed() < outage || b.state() != State::Running {
        assert_ne!(b.state(), State::Error, "{:?}", b.error());
        assert!(
            Instant::now() < deadline,
            "never running again: {:?}",
            b.state()
        );
        std::thread::sleep(Duration::from_millis(100)); // polling the state through the outage
    }
    // B counts on from the restored state: one more record per group gives counts past A's.
    produce(N, N + GROUPS);
    let all = (N + GROUPS) as u64;
    counting_app::wait_counted(&through_proxy, &output, all, GROUPS, LONG);
    assert!(b.close(LONG));
    counting_app::check(&through_proxy, &output, all, GROUPS).assert_exact();
}
