//! read_committed semantics of the test broker (Apache Kafka; or nisshi behind its patching
//! proxy), under load: several transactional producers, hundreds of transactions each, randomly committed or
//! aborted, some producers SIGKILLed mid-transaction and replaced. The consumers' output is
//! checked against an oracle of what each transaction did.
//!
//! A killed producer is a real child process: this test binary run again with
//! `KSTREAMS_TXN_CHILD` set, which opens a transaction, writes records, flushes them, reports
//! READY and waits to be killed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use streams_testkit::kafka::{
    client_config, consume_until, create_topic, send_retrying, Isolation, Received,
};
use streams_testkit::proxy::ProxyMode;
use streams_testkit::{bootstrap_servers, unique, BrokerOptions, ManagedBroker};

const TIMEOUT: Duration = Duration::from_secs(60);

fn txn_producer(bootstrap: &str, txn_id: &str) -> BaseProducer {
    let p: BaseProducer = client_config(bootstrap)
        .set("transactional.id", txn_id)
        .set("linger.ms", "2")
        .create()
        .expect("creating a producer");
    p.init_transactions(TIMEOUT).expect("init_transactions");
    p
}

fn send(p: &BaseProducer, topic: &str, partition: i32, value: &str) {
    let record = BaseRecord::to(topic)
        .key(value)
        .payload(value)
        .partition(partition);
    send_retrying(p, record).unwrap_or_else(|e| panic!("send {value}: {e}"));
}

/// The child side of a kill: writes the records named in KSTREAMS_TXN_CHILD inside an open
/// transaction, flushes, says READY, and waits for SIGKILL.
#[test]
fn txn_child_process() {
    let Ok(spec) = std::env::var("KSTREAMS_TXN_CHILD") else {
        return; // only meaningful as a child of txn_stress_*
    };
    let mut parts = spec.split('|');
    let bootstrap = parts.next().unwrap();
    let txn_id = parts.next().unwrap();
    let topic = parts.next().unwrap();
    let p = txn_producer(bootstrap, txn_id);
    p.begin_transaction().unwrap();
    for item in parts {
        let (partition, value) = item.split_once(':').unwrap();
        send(&p, topic, partition.parse().unwrap(), value);
    }
    p.flush(TIMEOUT).unwrap();
    println!("KSTREAMS-CHILD-READY");
    loop {
        std::thread::park();
    }
}

/// Runs a child that leaves `records` in an open transaction of `txn_id`, and SIGKILLs it.
fn write_and_get_killed(bootstrap: &str, txn_id: &str, topic: &str, records: &[(i32, String)]) {
    let mut spec = format!("{bootstrap}|{txn_id}|{topic}");
    for (p, v) in records {
        spec.push_str(&format!("|{p}:{v}"));
    }
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "txn_child_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("KSTREAMS_TXN_CHILD", spec)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawning the child producer");
    let stdout = child.stdout.take().unwrap();
    let ready = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        // libtest may print "test txn_child_process ... " on the same line first.
        .any(|l| l.trim_end().ends_with("KSTREAMS-CHILD-READY"));
    assert!(ready, "the child producer did not get ready");
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
}

/// What the producers did, for the oracle.
#[derive(Default)]
struct Oracle {
    committed: BTreeSet<String>,
    aborted: BTreeSet<String>,
    /// Records each producer wrote to each partition, in send order.
    order: HashMap<(usize, i32), Vec<String>>,
    transactions: BTreeMap<&'static str, usize>,
}

const PARTITIONS: i32 = 3;

/// How the producers take turns.
#[derive(Clone, Copy, Debug)]
enum Drive {
    /// One thread per producer, all calling the broker at once.
    Threads,
    /// One thread: every producer opens its transaction and writes, then each ends its own in
    /// turn, so transactions overlap in every partition without concurrent broker calls.
    RoundRobin,
}

/// One transactional producer of the stress test and what it did.
struct StressProducer<'a> {
    pi: usize,
    bootstrap: &'a str,
    topic: &'a str,
    rng: StdRng,
    txn_id: String,
    kill_at: BTreeSet<usize>,
    producer: Option<BaseProducer>,
    oracle: Oracle,
}

impl<'a> StressProducer<'a> {
    fn new(
        pi: usize,
        bootstrap: &'a str,
        topic: &'a str,
        seed: u64,
        txns: usize,
        kills: usize,
    ) -> Self {
        let mut rng = StdRng::seed_from_u64(seed + pi as u64);
        let kill_at = (0..kills).map(|_| rng.random_range(0..txns)).collect();
        let txn_id = unique(&format!("txn-stress-{pi}"));
        let producer = Some(txn_producer(bootstrap, &txn_id));
        StressProducer {
            pi,
            bootstrap,
            topic,
            rng,
            txn_id,
            kill_at,
            producer,
            oracle: Oracle::default(),
        }
    }

    /// Opens transaction `t` and writes its records; `None` when this one was killed instead.
    fn begin(&mut self, t: usize) -> Option<Vec<(i32, String)>> {
        let pi = self.pi;
        let n = self.rng.random_range(1..=6);
        let records: Vec<(i32, String)> = (0..n)
            .map(|r| {
                (
                    self.rng.random_range(0..PARTITIONS),
                    format!("p{pi}-t{t}-r{r}"),
                )
            })
            .collect();
        if self.kill_at.contains(&t) {
            // The child takes the transactional id over (fencing our producer), leaves its
            // transaction open and dies; a successor's init_transactions aborts it.
            drop(self.producer.take());
            write_and_get_killed(self.bootstrap, &self.txn_id, self.topic, &records);
            self.oracle
                .aborted
                .extend(records.iter().map(|(_, v)| v.clone()));
            *self.oracle.transactions.entry("killed").or_default() += 1;
            self.producer = Some(txn_producer(self.bootstrap, &self.txn_id));
            return None;
        }
        let p = self.producer.as_ref().unwrap();
        p.begin_transaction().unwrap();
        for (partition, value) in &records {
            send(p, self.topic, *partition, value);
        }
        Some(records)
    }

    /// Commits or aborts (at random) the open transaction.
    fn end(&mut self, records: Vec<(i32, String)>) {
        let p = self.producer.as_ref().unwrap();
        if self.rng.random_bool(0.6) {
            p.commit_transaction(TIMEOUT).unwrap();
            self.oracle
                .committed
                .extend(records.iter().map(|(_, v)| v.clone()));
            for (partition, value) in records {
                self.oracle
                    .order
                    .entry((self.pi, partition))
                    .or_default()
                    .push(value);
            }
            *self.oracle.transactions.entry("committed").or_default() += 1;
        } else {
            // Flush first so that the aborted records really are in the log.
            p.flush(TIMEOUT).unwrap();
            p.abort_transaction(TIMEOUT).unwrap();
            self.oracle
                .aborted
                .extend(records.iter().map(|(_, v)| v.clone()));
            *self.oracle.transactions.entry("aborted").or_default() += 1;
        }
    }
}

fn run_stress(
    bootstrap: &str,
    drive: Drive,
    seed: u64,
    producers: usize,
    txns_each: usize,
    kills_each: usize,
) {
    let topic = unique("txn-stress");
    create_topic(bootstrap, &topic, PARTITIONS, &[]).unwrap();
    println!("txn stress: {drive:?}, seed {seed}, topic {topic}");
    let topic_ref: &str = &topic;

    let oracles: Vec<Oracle> = match drive {
        Drive::Threads => std::thread::scope(|s| {
            let handles: Vec<_> = (0..producers)
                .map(|pi| {
                    s.spawn(move || {
                        let mut p = StressProducer::new(
                            pi, bootstrap, topic_ref, seed, txns_each, kills_each,
                        );
                        for t in 0..txns_each {
                            if let Some(records) = p.begin(t) {
                                p.end(records);
                            }
                        }
                        p.oracle
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        }),
        Drive::RoundRobin => {
            let mut ps: Vec<StressProducer<'_>> = (0..producers)
                .map(|pi| {
                    StressProducer::new(pi, bootstrap, topic_ref, seed, txns_each, kills_each)
                })
                .collect();
            for t in 0..txns_each {
                let open: Vec<_> = ps.iter_mut().map(|p| p.begin(t)).collect();
                for (p, records) in ps.iter_mut().zip(open) {
                    if let Some(records) = records {
                        p.end(records);
                    }
                }
            }
            ps.into_iter().map(|p| p.oracle).collect()
        }
    };

    // A committed sentinel at the end of every partition: once a reader has it, every record
    // before it has been delivered or dropped.
    let closer = txn_producer(bootstrap, &unique("txn-stress-closer"));
    closer.begin_transaction().unwrap();
    for p in 0..PARTITIONS {
        send(&closer, &topic, p, &format!("end-{p}"));
    }
    closer.commit_transaction(TIMEOUT).unwrap();
    let all_sentinels = |r: &[Received]| {
        (0..PARTITIONS).all(|p| r.iter().any(|x| x.value_str() == format!("end-{p}")))
    };

    let mut committed = BTreeSet::new();
    let mut aborted = BTreeSet::new();
    let mut transactions: BTreeMap<&str, usize> = BTreeMap::new();
    for o in &oracles {
        committed.extend(o.committed.iter().cloned());
        aborted.extend(o.aborted.iter().cloned());
        for (k, v) in &o.transactions {
            *transactions.entry(k).or_default() += v;
        }
    }

    let got = consume_until(
        bootstrap,
        &topic,
        Isolation::ReadCommitted,
        TIMEOUT,
        all_sentinels,
    )
    .unwrap();
    let data: Vec<&Received> = got
        .iter()
        .filter(|r| !r.value_str().starts_with("end-"))
        .collect();
    let delivered: Vec<String> = data.iter().map(|r| r.value_str()).collect();
    let distinct: BTreeSet<String> = delivered.iter().cloned().collect();
    let duplicates = delivered.len() - distinct.len();
    let aborted_delivered = distinct.intersection(&aborted).count();
    let missing = committed.difference(&distinct).count();
    println!(
        "txn stress: transactions {transactions:?}; committed records {}, aborted records {}; \
         read_committed delivered {}, duplicates {duplicates}, aborted delivered \
         {aborted_delivered}, missing {missing}",
        committed.len(),
        aborted.len(),
        delivered.len()
    );
    if aborted_delivered > 0 || missing > 0 {
        let wrong: Vec<String> = data
            .iter()
            .filter(|r| aborted.contains(&r.value_str()))
            .map(|r| format!("p{}@{}={}", r.partition, r.offset, r.value_str()))
            .collect();
        println!("txn stress: aborted but delivered: {wrong:?}");
        let lost: Vec<&String> = committed.difference(&distinct).collect();
        println!("txn stress: committed but missing: {lost:?}");
    }
    assert_eq!(duplicates, 0, "duplicates delivered");
    assert_eq!(aborted_delivered, 0, "aborted records delivered");
    assert_eq!(missing, 0, "committed records missing");
    assert_eq!(distinct, committed);
    // Per partition: offsets increase, and each producer's records keep their send order.
    for p in 0..PARTITIONS {
        let in_p: Vec<&&Received> = data.iter().filter(|r| r.partition == p).collect();
        assert!(in_p.windows(2).all(|w| w[0].offset < w[1].offset));
        for (pi, o) in oracles.iter().enumerate() {
            let seen: Vec<String> = in_p
                .iter()
                .map(|r| r.value_str())
                .filter(|v| v.starts_with(&format!("p{pi}-")))
                .collect();
            let expected = o.order.get(&(pi, p)).cloned().unwrap_or_default();
            assert_eq!(seen, expected, "producer {pi} partition {p}");
        }
    }

    let everything = consume_until(
        bootstrap,
        &topic,
        Isolation::ReadUncommitted,
        TIMEOUT,
        all_sentinels,
    )
    .unwrap();
    let seen: BTreeSet<String> = everything
        .iter()
        .map(|r| r.value_str())
        .filter(|v| !v.starts_with("end-"))
        .collect();
    let written: BTreeSet<String> = committed.union(&aborted).cloned().collect();
    println!(
        "txn stress: read_uncommitted delivered {} distinct of {} written",
        seen.len(),
        written.len()
    );
    assert_eq!(seen, written, "read_uncommitted sees every record written");
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// The stress test of the issue: 4 producers, 200 transactions each (60 % committed), 3 of each
/// producer's transactions left open by a SIGKILLed child and aborted by its successor.
/// Transactions overlap in every partition; broker calls are made from one thread.
#[test]
fn txn_stress_read_committed_sees_exactly_the_committed_records() {
    if std::env::var("KSTREAMS_TXN_CHILD").is_ok() {
        return;
    }
    let seed = env_or("KSTREAMS_TEST_SEED", rand::random::<u64>());
    let txns = env_or("KSTREAMS_STRESS_TXNS", 200);
    let kills = env_or("KSTREAMS_STRESS_KILLS", 3);
    run_stress(
        &bootstrap_servers(),
        Drive::RoundRobin,
        seed,
        4,
        txns,
        kills,
    );
}

/// The same with one thread per producer, all calling the broker at once. On nisshi 0.7.0
/// alone its last stable offset sometimes stops for good here (a transaction it keeps
/// prepared, docs/BROKER.md); the proxy decides read_committed from the log's markers instead.
#[test]
fn txn_stress_concurrent_producers() {
    let seed = env_or("KSTREAMS_TEST_SEED", rand::random::<u64>());
    let txns = env_or("KSTREAMS_STRESS_TXNS", 200);
    let kills = env_or("KSTREAMS_STRESS_KILLS", 3);
    run_stress(&bootstrap_servers(), Drive::Threads, seed, 4, txns, kills);
}

/// Committed and aborted transactions written before and after a broker restart: a new reader
/// from the start gets every committed record and no aborted one. Behind nisshi's patching
/// proxy, the proxy's index of aborted transactions also survives the restart (it is derived
/// from the log); Kafka keeps its own on disk.
#[test]
fn read_committed_survives_reconnects_and_broker_restarts() {
    if std::env::var("KSTREAMS_TXN_CHILD").is_ok() {
        return;
    }
    let mut broker = ManagedBroker::start(BrokerOptions {
        durable: true,
        ..BrokerOptions::from_env()
    })
    .unwrap();
    let patching_proxy = broker
        .proxy()
        .is_some_and(|p| p.mode() == ProxyMode::Patching);
    let bootstrap = broker.bootstrap_servers();
    let topic = unique("txn-restart");
    create_topic(&bootstrap, &topic, 1, &[]).unwrap();

    let write = |tag: &str| {
        let p = txn_producer(&bootstrap, &unique("txn-restart"));
        for (i, commit) in [true, false, true, false].into_iter().enumerate() {
            p.begin_transaction().unwrap();
            for r in 0..3 {
                send(&p, &topic, 0, &format!("{tag}-{i}-{r}-{commit}"));
            }
            if commit {
                p.commit_transaction(TIMEOUT).unwrap();
            } else {
                p.flush(TIMEOUT).unwrap();
                p.abort_transaction(TIMEOUT).unwrap();
            }
        }
    };
    let read_committed = |last: &str| {
        let got = consume_until(&bootstrap, &topic, Isolation::ReadCommitted, TIMEOUT, |r| {
            r.iter().any(|x| x.value_str() == last)
        })
        .unwrap();
        got.iter().map(Received::value_str).collect::<Vec<_>>()
    };

    write("before");
    let first = read_committed("before-2-2-true");
    assert!(first.iter().all(|v| v.ends_with("true")), "{first:?}");
    assert_eq!(first.len(), 6);
    if patching_proxy {
        let indexed = broker.proxy().unwrap().aborted_transactions_indexed();
        assert_eq!(indexed, 2, "two aborted transactions indexed");
    }

    broker.restart().unwrap();
    write("after");
    // A new reader (new connections) from the start: both halves, aborted ones dropped.
    let second = read_committed("after-2-2-true");
    assert_eq!(second.len(), 12, "{second:?}");
    assert!(second.iter().all(|v| v.ends_with("true")), "{second:?}");
    if patching_proxy {
        assert_eq!(
            broker.proxy().unwrap().aborted_transactions_indexed(),
            4,
            "the index kept what it knew and added the new aborts"
        );
    }
}

/// The stress test against a durable broker of its own. Fails on the fallback broker: nisshi
/// 0.7.0's sqlite engine loses COMMIT/ABORT markers under concurrent transactional producers
/// (docs/BROKER.md, known gaps of nisshi).
#[test]
fn txn_stress_through_a_durable_broker() {
    if std::env::var("KSTREAMS_TXN_CHILD").is_ok() {
        return;
    }
    // Fewer transactions (nisshi's durable engine is about 10x slower than its memory one).
    let broker = ManagedBroker::start(BrokerOptions {
        durable: true,
        ..BrokerOptions::from_env()
    })
    .unwrap();
    let kills = env_or("KSTREAMS_STRESS_KILLS", 1);
    run_stress(
        &broker.bootstrap_servers(),
        Drive::Threads,
        rand::random(),
        3,
        40,
        kills,
    );
}
