//! Quickstart: produces a few orders in a Kafka transaction and reads them back
//! `read_committed`, through the project's test broker (or `KAFKA_BOOTSTRAP_SERVERS`).
//!
//! ```text
//! scripts/run-example.sh quickstart
//! ```
//!
//! This is the set-up check for a new machine; the fraud-detection example replaces it as the
//! main example once the runtime exists.

use std::time::Duration;

use anyhow::Context;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use streams_testkit::kafka::{client_config, consume_until, create_topic, Isolation};

fn main() -> anyhow::Result<()> {
    let bootstrap = streams_testkit::bootstrap_servers();
    println!("broker: {bootstrap}");
    let topic = streams_testkit::unique("quickstart-orders");
    create_topic(&bootstrap, &topic, 3, &[])?;

    let producer: BaseProducer = client_config(&bootstrap)
        .set("transactional.id", streams_testkit::unique("quickstart"))
        .create()?;
    let timeout = Duration::from_secs(30);
    producer.init_transactions(timeout)?;

    // One aborted transaction, which read_committed readers must never see...
    producer.begin_transaction()?;
    producer
        .send(BaseRecord::to(&topic).key("order-0").payload("cancelled"))
        .map_err(|(e, _)| e)?;
    producer.flush(timeout)?;
    producer.abort_transaction(timeout)?;

    // ...and one committed transaction of five orders.
    producer.begin_transaction()?;
    for i in 1..=5 {
        let key = format!("order-{i}");
        let value = format!("{{\"order\":{i},\"amount\":{}}}", i * 10);
        producer
            .send(BaseRecord::to(&topic).key(&key).payload(&value))
            .map_err(|(e, _)| e)?;
    }
    producer.commit_transaction(timeout)?;
    println!("produced 1 aborted and 5 committed orders to {topic}");

    let got = consume_until(&bootstrap, &topic, Isolation::ReadCommitted, timeout, |r| {
        r.len() >= 5
    })
    .context("reading the orders back")?;
    for r in &got {
        println!(
            "  partition {} offset {}: {} = {}",
            r.partition,
            r.offset,
            r.key_str(),
            r.value_str()
        );
    }
    anyhow::ensure!(
        got.iter().all(|r| r.value_str() != "cancelled"),
        "an aborted record was delivered to a read_committed reader"
    );
    println!("read {} committed orders, none aborted: OK", got.len());
    Ok(())
}
