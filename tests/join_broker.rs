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
