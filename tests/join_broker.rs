//! Joins against the real broker: a stream-table join that starts with both topics already
//! full applies every table record older than a stream record before joining that stream
//! record (the task waits for the table partition's fetched data); a re-keyed stream joined
//! with a table goes through a repartition topic with the table's partition count; topics
//! that are not co-partitioned stop the start with a message naming both.

use std::collections::BTreeMap;
use std::time::Duration;

use kstreams::core::serde::Utf8;
use kstreams::core::{KafkaStreams, State, StreamsConfig};
use kstreams::dsl::{Joined, Materialized, StreamsBuilder};
use rdkafka::producer::{BaseRecord, Producer};
use streams_testkit::kafka::{
    consume_until, create_topic, idempotent_producer, partition_count, read_to_end, send_retrying,
    Isolation,
};
use streams_testkit::{bootstrap_servers, unique};

const LONG: Duration = Duration::from_secs(120);

fn config(app: &str, idle: Option<Duration>) -> StreamsConfig {
    StreamsConfig::new(app, &bootstrap_servers())
        .state_dir(std::env::temp_dir().join(unique("kstreams-join-state")))
        .max_task_idle(idle)
        .commit_interval(Duration::from_millis(200))
}

/// Writes `(key, value, timestamp)` records to `topic`.
fn produce(topic: &str, records: impl IntoIterator<Item = (String, String, i64)>) {
    let p = idempotent_producer(&bootstrap_servers()).unwrap();
    for (k, v, ts) in records {
        send_retrying(&p, BaseRecord::to(topic).key(&k).payload(&v).timestamp(ts)).unwrap();
    }
    p.flush(Duration::from_secs(30)).unwrap();
}

/// Cards (card -> country) and payments (card -> payment id), every payment later in event
/// time than every card; started with both topics full, the inner join must find the card of
/// every payment. Returns (payments, joined outputs, outputs per payment).
fn join_with_full_topics(idle: Option<Duration>) -> (usize, usize, BTreeMap<String, String>) {
    const CARDS: usize = 20_000;
    let bootstrap = bootstrap_servers();
    let (cards, payments, out, app) = (
        unique("cards"),
        unique("payments"),
        unique("paid-from"),
        unique("join-app"),
    );
    for t in [&cards, &payments, &out] {
        create_topic(&bootstrap, t, 2, &[]).unwrap();
    }
    let country = |i: usize| ["FR", "DE", "IT", "NO"][i % 4].to_string();
    produce(
        &cards,
        (0..CARDS).map(|i| (format!("card{i}"), country(i), 1 + i as i64)),
    );
    produce(
        &payments,
        (0..CARDS).map(|i| (format!("card{i}"), format!("pay{i}"), 1_000_000 + i as i64)),
    );
    let builder = StreamsBuilder::new();
    let table = builder.table::<String, String>(&cards, Materialized::with(Utf8));
    builder
        .stream::<String, String>(&payments)
        .join_table(&table, |pay, c| format!("{pay}:{c}"), Joined::default())
        .to(&out);
    let streams = KafkaStreams::new(builder.build().unwrap(), config(&app, idle)).unwrap();
    streams.start().unwrap();
    assert!(streams.wait_for(|s| s == State::Running, LONG));
    // Every payment processed: the group committed the end of the payments topic.
    let deadline = std::time::Instant::now() + LONG;
    loop {
        let done: i64 = streams_testkit::kafka::committed_offsets(&bootstrap, &app, &payments)
            .unwrap()
            .into_iter()
            .map(|o| o.unwrap_or(0))
            .sum();
        if done >= CARDS as i64 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "payments not consumed: {done}"
        );
        std::thread::sleep(Duration::from_millis(200)); // polling the group's offsets
    }
    assert!(streams.close(Duration::from_secs(60)));
    let got = read_to_end(&bootstrap, &out, Isolation::ReadCommitted, LONG).unwrap();
    let mut by_payment = BTreeMap::new();
    for r in &got {
        let v = r.value_str();
        let (pay, c) = v.split_once(':').unwrap();
        by_payment.insert(pay.to_string(), c.to_string());
    }
    let wrong = (0..CARDS)
        .filter(|i| by_payment.get(&format!("pay{i}")) != Some(&country(*i)))
        .count();
    eprintln!(
        "stream-table join, topics full at start (max_task_idle {idle:?}): payments {CARDS}, \
         joined outputs {}, payments without their card's country {wrong}",
        got.len()
    );
    (CARDS, got.len(), by_payment)
}

#[test]
fn a_stream_table_join_started_on_full_topics_applies_older_table_records_first() {
    let (payments, outputs, by_payment) = join_with_full_topics(Some(Duration::ZERO));
    assert_eq!(outputs, payments, "one output per payment, no duplicate");
    assert_eq!(by_payment.len(), payments);
    for (i, (pay, country)) in by_payment.iter().enumerate().take(3) {
        eprintln!("sample {i}: {pay} -> {country}");
    }
    let wrong = by_payment
        .iter()
        .filter(|(pay, c)| {
            let i: usize = pay.trim_start_matches("pay").parse().unwrap();
            **c != ["FR", "DE", "IT", "NO"][i % 4]
        })
        .count();
    assert_eq!(wrong, 0);
}

#[test]
fn a_rekeyed_stream_joins_a_table_through_a_repartition_topic_with_the_tables_partition_count() {
    let bootstrap = bootstrap_servers();
    let (users, logins, out, app) = (
        unique("users"),
        unique("logins"),
        unique("login-names"),
        unique("rekey-join-app"),
    );
    create_topic(&bootstrap, &users, 2, &[]).unwrap();
    create_topic(&bootstrap, &logins, 5, &[]).unwrap();
    create_topic(&bootstrap, &out, 1, &[]).unwrap();
    produce(
        &users,
        (0..50).map(|u| (format!("u{u}"), format!("name{u}"), 1)),
    );
    // Logins keyed by session id, the user in the value.
    produce(
        &logins,
        (0..500).map(|i| (format!("s{i}"), format!("u{}", i % 50), 10 + i as i64)),
    );
    let builder = StreamsBuilder::new();
    let table = builder.table::<String, String>(&users, Materialized::with(Utf8));
    builder
        .stream::<String, String>(&logins)
        .select_key(|_, user| user.clone())
        .join_table(
            &table,
            |user, name| format!("{user}={name}"),
            Joined::default().named("by-user"),
        )
        .to(&out);
    let streams =
        KafkaStreams::new(builder.build().unwrap(), config(&app, Some(Duration::ZERO))).unwrap();
    streams.start().unwrap();
    let got = consume_until(&bootstrap, &out, Isolation::ReadCommitted, LONG, |r| {
        r.len() >= 500
    })
    .unwrap();
    assert!(streams.close(Duration::from_secs(60)));
    let repartition = format!("{app}-by-user-repartition");
    assert_eq!(partition_count(&bootstrap, &repartition).unwrap(), 2);
    assert_eq!(got.len(), 500);
    for r in &got {
        let v = r.value_str();
        let (user, name) = v.split_once('=').unwrap();
        assert_eq!(name, format!("name{}", user.trim_start_matches('u')));
    }
}

#[test]
fn a_join_of_topics_that_are_not_copartitioned_refuses_to_start_naming_both() {
    let bootstrap = bootstrap_servers();
    let (cards, payments, app) = (unique("cards"), unique("payments"), unique("copart-app"));
    create_topic(&bootstrap, &cards, 2, &[]).unwrap();
    create_topic(&bootstrap, &payments, 3, &[]).unwrap();
    let builder = StreamsBuilder::new();
    let table = builder.table::<String, String>(&cards, Materialized::with(Utf8));
    builder
        .stream::<String, String>(&payments)
        .join_table(&table, |p, c| format!("{p}{c}"), Joined::default())
        .to("never-written");
    let streams =
        KafkaStreams::new(builder.build().unwrap(), config(&app, Some(Duration::ZERO))).unwrap();
    let err = streams.start().unwrap_err().to_string();
    assert!(
        err.contains(&format!("{cards} (2)")) && err.contains(&format!("{payments} (3)")),
        "{err}"
    );
    assert!(err.contains("co-partitioned"), "{err}");
}

const CARDS: usize = 100;
const PRODUCTS: usize = 20;
const ORDERS: usize = 500;
/// Payments and order updates, interleaved, one every 10 ms of event time from `T0`.
const EVENTS: usize = 3000;
const T0: i64 = 1_000;

fn country_of(card: usize) -> String {
    ["FR", "DE", "IT", "NO", "PT"][card % 5].to_string()
}

fn product_name(p: usize) -> String {
    format!("product-{p}")
}

/// Event `i`: a payment (even `i`) of card `i % CARDS`, or an update (odd `i`) of order
/// `i % ORDERS` to product `(i * 7) % PRODUCTS`, version `i`.
fn event(i: usize) -> (bool, String, String) {
    if i % 2 == 0 {
        (true, format!("card{}", i % CARDS), format!("pay{i}"))
    } else {
        (
            false,
            format!("order{}", i % ORDERS),
            format!("p{}|v{i}", (i * 7) % PRODUCTS),
        )
    }
}

fn run_join_child(args: &str) {
    streams_testkit::init_tracing();
    let parts: Vec<&str> = args.split('|').collect();
    let [app, cards, payments, orders, products, paid, ordered, dir, label] = parts[..] else {
        panic!("bad child arguments {args}");
    };
    let builder = StreamsBuilder::new();
    let card_table =
        builder.table::<String, String>(cards, Materialized::with(Utf8).named("cards"));
    builder
        .stream::<String, String>(payments)
        .join_table(
            &card_table,
            |pay, c| format!("{pay}:{c}"),
            Joined::default(),
        )
        .to(paid);
    let order_table =
        builder.table::<String, String>(orders, Materialized::with(Utf8).named("orders"));
    let product_table =
        builder.table::<String, String>(products, Materialized::with(Utf8).named("products"));
    order_table
        .foreign_key_join(
            &product_table,
            |order| order.split('|').next().unwrap_or_default().to_string(),
            |order, product| format!("{order}={product}"),
            Materialized::with(Utf8).named("order-products"),
        )
        .to(ordered);
    let config = StreamsConfig::new(app, &bootstrap_servers())
        .state_dir(dir)
        .transaction_timeout(Duration::from_secs(10))
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "1000");
    let streams = KafkaStreams::new(builder.build().unwrap(), config).unwrap();
    streams.start().unwrap();
    assert!(streams.wait_for(|s| s == State::Running, LONG));
    println!("KSTREAMS-APP-RUNNING {label}");
    streams_testkit::child::wait_for_stop_request();
    let closed = streams.close(Duration::from_secs(60));
    println!("KSTREAMS-APP-CLOSED {label} clean={closed}");
}

#[test]
fn a_stream_table_join_and_a_foreign_key_join_are_exactly_once_under_sigkill() {
    use rand::Rng;
    use streams_testkit::child::{child_mode, ChildProcess};
    if let Some(args) = child_mode() {
        return run_join_child(&args);
    }
    let bootstrap = bootstrap_servers();
    let names: Vec<String> = ["cards", "payments", "orders", "products", "paid", "ordered"]
        .iter()
        .map(|n| unique(n))
        .collect();
    let [cards, payments, orders, products, paid, ordered] = &names[..] else {
        unreachable!()
    };
    // The foreign-key join needs no co-partitioning: products has its own count.
    for (t, n) in [
        (cards, 3),
        (payments, 3),
        (orders, 3),
        (products, 2),
        (paid, 3),
        (ordered, 3),
    ] {
        create_topic(&bootstrap, t, n, &[]).unwrap();
    }
    produce(
        cards,
        (0..CARDS).map(|c| (format!("card{c}"), country_of(c), 1)),
    );
    produce(
        products,
        (0..PRODUCTS).map(|p| (format!("p{p}"), product_name(p), 1)),
    );
    let app = unique("join-crash-app");
    let dir = std::env::temp_dir().join(unique("kstreams-join-crash"));
    let args = format!(
        "{app}|{cards}|{payments}|{orders}|{products}|{paid}|{ordered}|{}",
        dir.display()
    );
    let spawn = |label: &str| {
        ChildProcess::spawn(
            label,
            "a_stream_table_join_and_a_foreign_key_join_are_exactly_once_under_sigkill",
            &format!("{args}|{label}"),
            &[("KAFKA_BOOTSTRAP_SERVERS", bootstrap.as_str())],
        )
        .unwrap()
    };
    let feeder = {
        let (bootstrap, payments, orders) = (bootstrap.clone(), payments.clone(), orders.clone());
        std::thread::spawn(move || {
            let p = idempotent_producer(&bootstrap).unwrap();
            let start = std::time::Instant::now();
            for i in 0..EVENTS {
                let (is_payment, key, value) = event(i);
                let topic = if is_payment { &payments } else { &orders };
                let ts = T0 + 10 * i as i64;
                send_retrying(
                    &p,
                    BaseRecord::to(topic)
                        .key(&key)
                        .payload(&value)
                        .timestamp(ts),
                )
                .unwrap();
                if i % 50 == 49 {
                    p.flush(Duration::from_secs(30)).unwrap();
                    // Pacing the load (about 150 events a second), not waiting for a condition.
                    let due = start + Duration::from_secs_f64((i + 1) as f64 / 150.0);
                    std::thread::sleep(due.saturating_duration_since(std::time::Instant::now()));
                }
            }
            p.flush(Duration::from_secs(30)).unwrap();
        })
    };
    let mut rng = rand::rng();
    const KILLS: usize = 3;
    for kill in 0..KILLS {
        let mut child = spawn(&format!("run{kill}"));
        child.wait_for_line("KSTREAMS-APP-RUNNING", LONG).unwrap();
        let after = Duration::from_millis(rng.random_range(300..3000));
        std::thread::sleep(after); // the random kill point
        child.kill().unwrap();
        eprintln!("kill {} after {:?} of running", kill + 1, after);
    }
    let mut last = spawn("final");
    last.wait_for_line("KSTREAMS-APP-RUNNING", LONG).unwrap();
    feeder.join().unwrap();

    // The oracle: every payment once, with its card's country; per order, the versions it
    // went through, the last one last.
    let want_paid: BTreeMap<String, String> = (0..EVENTS)
        .filter(|i| i % 2 == 0)
        .map(|i| (format!("pay{i}"), country_of(i % CARDS)))
        .collect();
    let mut final_version: BTreeMap<String, usize> = BTreeMap::new();
    for i in (0..EVENTS).filter(|i| i % 2 == 1) {
        final_version.insert(format!("order{}", i % ORDERS), i);
    }
    let version = |v: &str| -> usize {
        let (order, _) = v.split_once('=').unwrap();
        order.split("|v").nth(1).unwrap().parse().unwrap()
    };
    consume_until(
        &bootstrap,
        paid,
        Isolation::ReadCommitted,
        Duration::from_secs(240),
        |r| r.len() >= want_paid.len(),
    )
    .unwrap();
    consume_until(
        &bootstrap,
        ordered,
        Isolation::ReadCommitted,
        Duration::from_secs(240),
        |r| {
            let mut last: BTreeMap<String, usize> = BTreeMap::new();
            for rec in r {
                last.insert(rec.key_str(), version(&rec.value_str()));
            }
            last == final_version
        },
    )
    .unwrap();
    let status = last.stop(Duration::from_secs(90)).unwrap();
    assert!(status.success(), "final run exit: {status}");

    let got_paid = read_to_end(&bootstrap, paid, Isolation::ReadCommitted, LONG).unwrap();
    let mut seen = BTreeMap::new();
    let mut duplicates = 0;
    for r in &got_paid {
        let v = r.value_str();
        let (pay, country) = v.split_once(':').unwrap();
        if seen.insert(pay.to_string(), country.to_string()).is_some() {
            duplicates += 1;
        }
    }
    let missing = want_paid.keys().filter(|p| !seen.contains_key(*p)).count();
    let wrong = want_paid
        .iter()
        .filter(|(p, c)| seen.get(*p).is_some_and(|g| g != *c))
        .count();
    let got_ordered = read_to_end(&bootstrap, ordered, Isolation::ReadCommitted, LONG).unwrap();
    let mut per_order: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    let mut wrong_products = 0;
    for r in &got_ordered {
        let v = r.value_str();
        let (order, product) = v.split_once('=').unwrap();
        let pid: usize = order.split('|').next().unwrap()[1..].parse().unwrap();
        if product != product_name(pid) {
            wrong_products += 1;
        }
        per_order.entry(r.key_str()).or_default().push(version(&v));
    }
    let not_increasing = per_order
        .values()
        .filter(|vs| vs.windows(2).any(|w| w[0] >= w[1]))
        .count();
    let finals: BTreeMap<String, usize> = per_order
        .iter()
        .map(|(k, vs)| (k.clone(), *vs.last().unwrap()))
        .collect();
    eprintln!(
        "join crash test: kills {KILLS}; payments {}, joined read_committed {}, duplicates \
         {duplicates}, missing {missing}, wrong country {wrong}; order updates {}, results {}, \
         orders whose results repeat or go back {not_increasing}, wrong products {wrong_products}",
        want_paid.len(),
        got_paid.len(),
        EVENTS / 2,
        got_ordered.len()
    );
    assert_eq!((duplicates, missing, wrong), (0, 0, 0));
    assert_eq!(got_paid.len(), want_paid.len());
    assert_eq!((not_increasing, wrong_products), (0, 0));
    assert_eq!(finals, final_version);
}

#[test]
fn a_second_instance_with_a_global_table_reads_it_whole_before_processing() {
    let bootstrap = bootstrap_servers();
    let (rates, events, out, app) = (
        unique("rates"),
        unique("events"),
        unique("rated"),
        unique("global-app"),
    );
    create_topic(&bootstrap, &rates, 3, &[]).unwrap();
    create_topic(&bootstrap, &events, 2, &[]).unwrap();
    create_topic(&bootstrap, &out, 2, &[]).unwrap();
    const ROWS: usize = 5_000;
    const EVENTS: usize = 2_000;
    produce(
        &rates,
        (0..ROWS).map(|r| (format!("r{r}"), format!("rate{r}"), 1)),
    );
    let build = || {
        let builder = StreamsBuilder::new();
        let table =
            builder.global_table::<String, String>(&rates, Materialized::with(Utf8).named("rates"));
        builder
            .stream::<String, String>(&events)
            .left_join_global(
                &table,
                |_, rate| rate.clone(),
                |rate, found| format!("{rate}={}", found.map_or("-", String::as_str)),
            )
            .to(&out);
        builder.build().unwrap()
    };
    let first = KafkaStreams::new(build(), config(&app, Some(Duration::ZERO))).unwrap();
    first.start().unwrap();
    assert_eq!(first.global_store("rates").unwrap().len(), ROWS);
    let feeder = {
        let events = events.clone();
        std::thread::spawn(move || {
            produce(
                &events,
                (0..EVENTS).map(|i| {
                    (
                        format!("e{i}"),
                        format!("r{}", (i * 13) % ROWS),
                        10 + i as i64,
                    )
                }),
            )
        })
    };
    assert!(first.wait_for(|s| s == State::Running, LONG));
    // The second instance: start returns once its global table is read whole, before any of
    // its stream threads runs.
    let second = KafkaStreams::new(build(), config(&app, Some(Duration::ZERO))).unwrap();
    second.start().unwrap();
    let rows_at_start = second.global_store("rates").unwrap().len();
    feeder.join().unwrap();
    let got = consume_until(&bootstrap, &out, Isolation::ReadCommitted, LONG, |r| {
        r.len() >= EVENTS
    })
    .unwrap();
    // Kept up to date while running: an update of the topic reaches both instances.
    produce(&rates, [(s("r7"), s("rate7-new"), 2)]);
    let deadline = std::time::Instant::now() + LONG;
    let updated = |k: &KafkaStreams| {
        k.global_store("rates")
            .unwrap()
            .get(&Utf8, &Utf8, &s("r7"))
            .unwrap()
            == Some(s("rate7-new"))
    };
    while !(updated(&first) && updated(&second)) {
        assert!(
            std::time::Instant::now() < deadline,
            "the update did not arrive"
        );
        std::thread::sleep(Duration::from_millis(50)); // polling the stores
    }
    assert!(second.close(Duration::from_secs(60)));
    assert!(first.close(Duration::from_secs(60)));
    let unmatched = got.iter().filter(|r| r.value_str().ends_with("=-")).count();
    eprintln!(
        "global table: rows {ROWS}, second instance had {rows_at_start} at start; events \
         {EVENTS}, outputs {}, without their row {unmatched}",
        got.len()
    );
    assert_eq!(rows_at_start, ROWS);
    assert_eq!((got.len(), unmatched), (EVENTS, 0));
}

fn s(x: &str) -> String {
    x.to_string()
}
