//! Throughput through the test proxy versus straight to the broker, in the same run: on Apache
//! Kafka the transparent proxy the outage tests and the kill soak run through; on nisshi
//! (`KSTREAMS_BROKER=nisshi`) the patching one.
//!
//! ```text
//! cargo bench --bench proxy_throughput [-- RECORDS ROUNDS]
//! ```
//!
//! Each round, against one broker: a transactional producer writes RECORDS records of 100
//! bytes (a commit every 1000 records) to a fresh 4-partition topic, then a read_committed
//! consumer reads them all; once straight to the broker, once through the proxy. Prints
//! records/s for each and the ratio proxy/direct, per round and as the median over rounds. The
//! proxy is in this process, on threads of its own; the broker is a child process.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use streams_testkit::kafka::{client_config, create_topic, send_retrying};
use streams_testkit::{unique, BrokerOptions, ManagedBroker};

const PARTITIONS: i32 = 4;
const TXN_SIZE: usize = 1000;

/// Sends records `range` (key = the index, 100-byte value) round-robin over the partitions.
fn send_range(p: &BaseProducer, topic: &str, range: std::ops::Range<usize>) {
    let payload = [b'x'; 100];
    for i in range {
        let key = i.to_string();
        let record = BaseRecord::to(topic)
            .key(&key)
            .payload(&payload[..])
            .partition(i as i32 % PARTITIONS);
        send_retrying(p, record).unwrap();
    }
}

/// Plain (idempotent, not transactional) produce: the proxy's pass-through path.
fn produce_plain(bootstrap: &str, topic: &str, n: usize) -> f64 {
    let p: BaseProducer = client_config(bootstrap)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("batch.size", "262144")
        .create()
        .unwrap();
    let start = Instant::now();
    send_range(&p, topic, 0..n);
    p.flush(Duration::from_secs(60)).unwrap();
    n as f64 / start.elapsed().as_secs_f64()
}

/// Transactional produce, a commit every TXN_SIZE records.
fn produce(bootstrap: &str, topic: &str, n: usize) -> f64 {
    let p: BaseProducer = client_config(bootstrap)
        .set("transactional.id", unique("bench-txn"))
        .set("linger.ms", "5")
        .set("batch.size", "262144")
        .create()
        .unwrap();
    let timeout = Duration::from_secs(60);
    p.init_transactions(timeout).unwrap();
    let start = Instant::now();
    let mut sent = 0;
    while sent < n {
        p.begin_transaction().unwrap();
        let end = (sent + TXN_SIZE).min(n);
        send_range(&p, topic, sent..end);
        p.commit_transaction(timeout).unwrap();
        sent = end;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn consume(bootstrap: &str, topic: &str, n: usize) -> f64 {
    let c: BaseConsumer = client_config(bootstrap)
        .set("group.id", unique("bench-reader"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("fetch.max.bytes", "52428800")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    let start = Instant::now();
    let mut got = 0;
    let deadline = start + Duration::from_secs(300);
    while got < n {
        assert!(Instant::now() < deadline, "read only {got} of {n} records");
        if let Some(m) = c.poll(Duration::from_millis(100)) {
            m.unwrap();
            got += 1;
        }
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let records: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let rounds: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(3);
    let broker = ManagedBroker::start(BrokerOptions {
        fault_proxy: true,
        ..BrokerOptions::from_env()
    })
    .expect("starting the broker");
    let direct = broker.direct_address();
    let proxied = broker.bootstrap_servers();
    let mode = broker.proxy().expect("a proxy was asked for").mode();
    println!(
        "proxy_throughput: {records} records x {rounds} rounds, 100-byte values, {} behind the \
         {mode:?} proxy",
        broker.kind().name()
    );
    let (mut plain_ratios, mut produce_ratios, mut consume_ratios) =
        (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=rounds {
        let mut figures = Vec::new();
        for bootstrap in [&direct, &proxied] {
            let plain_topic = unique("bench-plain");
            create_topic(bootstrap, &plain_topic, PARTITIONS, &[]).unwrap();
            let plain = produce_plain(bootstrap, &plain_topic, records);
            let topic = unique("bench-proxy");
            create_topic(bootstrap, &topic, PARTITIONS, &[]).unwrap();
            let p = produce(bootstrap, &topic, records);
            let c = consume(bootstrap, &topic, records);
            figures.push((plain, p, c));
        }
        let (d, x) = (figures[0], figures[1]);
        println!(
            "round {round}: produce direct {:.0} rec/s, proxy {:.0} rec/s, ratio {:.3}; \
             transactional produce direct {:.0}, proxy {:.0}, ratio {:.3}; \
             consume read_committed direct {:.0}, proxy {:.0}, ratio {:.3}",
            d.0,
            x.0,
            x.0 / d.0,
            d.1,
            x.1,
            x.1 / d.1,
            d.2,
            x.2,
            x.2 / d.2
        );
        plain_ratios.push(x.0 / d.0);
        produce_ratios.push(x.1 / d.1);
        consume_ratios.push(x.2 / d.2);
    }
    println!(
        "median ratio proxy/direct: produce {:.3}, transactional produce {:.3}, \
         read_committed consume {:.3}",
        median(plain_ratios),
        median(produce_ratios),
        median(consume_ratios)
    );
}
