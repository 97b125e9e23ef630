//! Order routing with the Processor API, exactly-once, on a real broker.
//!
//! ```text
//! scripts/run-example.sh            # starts the project's broker unless KAFKA_BOOTSTRAP_SERVERS is set
//! scripts/run-example.sh order_routing 5000
//! ```
//!
//! Generates orders (JSON) onto a 3-partition `orders` topic, some of them malformed. The
//! topology reads them with a dead-letter topic for the malformed ones, numbers each
//! customer's orders in a state store, and routes every order either to `large-orders`
//! (amount ≥ 1000) or `small-orders`. It runs on two stream threads under exactly-once; the
//! example then reads the outputs `read_committed` and checks that every order arrived exactly
//! once on the right topic.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use kstreams::core::handlers::DeadLetterTopic;
use kstreams::core::serde::{BigEndian, Json, Utf8};
use kstreams::core::store::KeyValueStore;
use kstreams::core::{
    KafkaStreams, Processor, ProcessorContext, Record, Result, Sink, Source, State, StreamsConfig,
    TopologyBuilder,
};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use serde::{Deserialize, Serialize};
use streams_testkit::kafka::{
    client_config, consume_until, create_topic, send_retrying, Isolation,
};
use streams_testkit::unique;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Order {
    id: u64,
    customer: String,
    amount: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Routed {
    order: Order,
    /// This customer's n-th order.
    customer_order_number: u64,
}

/// Numbers each customer's orders and routes by amount.
struct Router;

impl Processor for Router {
    type KeyIn = String;
    type ValueIn = Order;
    type KeyOut = String;
    type ValueOut = Routed;

    fn process(
        &mut self,
        record: Record<String, Order>,
        ctx: &mut ProcessorContext<'_, String, Routed>,
    ) -> Result<()> {
        let customer = record.value().customer.clone();
        let counts = ctx.state_store::<KeyValueStore<String, u64>>("orders-per-customer")?;
        let n = counts.get(&customer)?.unwrap_or(0) + 1;
        counts.put(&customer, &n)?;
        let large = record.value().amount >= 1000.0;
        let routed = Routed {
            order: record.value().clone(),
            customer_order_number: n,
        };
        let child = if large { "large" } else { "small" };
        ctx.forward_to(child, record.with_value(routed))
    }
}

fn main() -> anyhow::Result<()> {
    let n: u64 = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()
        .context("the argument is the number of orders")?
        .unwrap_or(2000);
    let bootstrap = streams_testkit::bootstrap_servers();
    println!("broker: {bootstrap}");
    let (orders, large, small, dlq) = (
        unique("orders"),
        unique("large-orders"),
        unique("small-orders"),
        unique("orders-dlq"),
    );
    for t in [&orders, &large, &small, &dlq] {
        create_topic(&bootstrap, t, 3, &[])?;
    }

    let topology = TopologyBuilder::new()
        .add_source(
            "orders",
            Source::new([orders.as_str()], Utf8, Json::<Order>::default()),
        )
        .add_processor("router", || Router, ["orders"])
        .add_state_store(
            KeyValueStore::<String, u64>::builder("orders-per-customer", Utf8, BigEndian),
            ["router"],
        )
        .add_sink(
            "large",
            Sink::new(large.as_str(), Utf8, Json::<Routed>::default()),
            ["router"],
        )
        .add_sink(
            "small",
            Sink::new(small.as_str(), Utf8, Json::<Routed>::default()),
            ["router"],
        )
        .build()?;
    println!("{}", topology.describe());

    let config = StreamsConfig::new(&unique("order-routing"), &bootstrap)
        .num_stream_threads(2)
        .state_dir(std::env::temp_dir().join(unique("order-routing-state")))
        .deserialization_error_handler(DeadLetterTopic(dlq.clone()));
    let streams = KafkaStreams::new(topology, config)?;
    streams.set_state_listener(|old, new| println!("state: {old:?} -> {new:?}"));
    streams.start()?;
    if !streams.wait_for(|s| s == State::Running, Duration::from_secs(60)) {
        bail!(
            "the application did not reach Running: {:?}",
            streams.state()
        );
    }

    // Generated input: every 97th order is malformed JSON.
    let producer: BaseProducer = client_config(&bootstrap)
        .set("enable.idempotence", "true")
        .create()?;
    let mut expected_large = 0;
    let mut malformed = 0;
    let started = Instant::now();
    for id in 0..n {
        let customer = format!("customer-{}", id % 50);
        let amount = ((id * 7919) % 2000) as f64 + 0.5;
        let payload = if id % 97 == 96 {
            malformed += 1;
            format!("{{\"id\": {id}, \"customer\": ")
        } else {
            if amount >= 1000.0 {
                expected_large += 1;
            }
            serde_json::to_string(&Order {
                id,
                customer: customer.clone(),
                amount,
            })?
        };
        send_retrying(
            &producer,
            BaseRecord::to(&orders).key(&customer).payload(&payload),
        )?;
    }
    producer.flush(Duration::from_secs(30))?;
    let valid = n - malformed;
    println!("produced {n} orders ({malformed} malformed)");

    let timeout = Duration::from_secs(120);
    let large_out = consume_until(&bootstrap, &large, Isolation::ReadCommitted, timeout, |g| {
        g.len() as u64 >= expected_large
    })?;
    let small_out = consume_until(&bootstrap, &small, Isolation::ReadCommitted, timeout, |g| {
        g.len() as u64 >= valid - expected_large
    })?;
    let dead = consume_until(&bootstrap, &dlq, Isolation::ReadCommitted, timeout, |g| {
        g.len() as u64 >= malformed
    })?;
    let elapsed = started.elapsed();
    if !streams.close(Duration::from_secs(30)) {
        bail!("the application did not stop in time");
    }

    let mut seen: BTreeMap<u64, usize> = BTreeMap::new();
    let mut per_customer: BTreeMap<String, u64> = BTreeMap::new();
    for (records, is_large) in [(&large_out, true), (&small_out, false)] {
        for r in records {
            let routed: Routed = serde_json::from_slice(r.value.as_deref().unwrap_or_default())?;
            if (routed.order.amount >= 1000.0) != is_large {
                bail!("order {} routed to the wrong topic", routed.order.id);
            }
            *seen.entry(routed.order.id).or_default() += 1;
            let max = per_customer.entry(routed.order.customer).or_default();
            *max = (*max).max(routed.customer_order_number);
        }
    }
    let duplicates = seen.values().filter(|&&c| c > 1).count();
    println!(
        "routed {} orders in {:.1}s: {} large, {} small, {} to the dead-letter topic; duplicates {duplicates}",
        seen.len(),
        elapsed.as_secs_f64(),
        large_out.len(),
        small_out.len(),
        dead.len()
    );
    for r in large_out.iter().take(3) {
        println!("  large-orders: {} = {}", r.key_str(), r.value_str());
    }
    let numbered: u64 = per_customer.values().sum();
    println!(
        "customers numbered 1..n: {} customers, {numbered} orders counted in the store",
        per_customer.len()
    );
    if seen.len() as u64 != valid
        || duplicates != 0
        || dead.len() as u64 != malformed
        || numbered != valid
    {
        bail!("unexpected output");
    }
    println!("every order exactly once, on the right topic: OK");
    Ok(())
}
