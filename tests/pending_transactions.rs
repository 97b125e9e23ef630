//! The runtime beside a dead instance's transaction that the broker has not ended yet.
//!
//! An instance killed in the middle of a transaction leaves it open, with the input offsets it
//! sent (`send_offsets_to_transaction`) pending at the group coordinator. Until the
//! transaction coordinator aborts it (`transaction.timeout.ms` after its start), Kafka answers
//! every OffsetFetch that asks for stable offsets (librdkafka asks under `read_committed`) for
//! those partitions with `UNSTABLE_OFFSET_COMMIT`. The new owner of the partitions must wait,
//! whatever its own client timeout, and then go on from the offsets committed before the dead
//! transaction: Kafka Streams' `StoreChangelogReader` and its consumer do the same (the
//! consumer's committed-offset fetch retries while offsets are unstable).
//!
//! The dead instance is a child process (this test binary in a child mode) that opens a
//! transaction, writes a record and sends offsets in it, reports READY and is SIGKILLed.

use std::time::{Duration, Instant};

use kstreams::core::serde::{BigEndian, Utf8};
use kstreams::core::{KafkaStreams, State, StreamsConfig};
use kstreams::dsl::{Joined, Materialized, Produced, StreamsBuilder};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use streams_testkit::child::{child_mode, wait_for_stop_request, ChildProcess};
use streams_testkit::kafka::{
    client_config, committed_offsets, create_topic, idempotent_producer, read_to_end,
    send_retrying, Isolation,
};
use streams_testkit::{bootstrap_servers, unique};

const LONG: Duration = Duration::from_secs(120);
/// The dead instance's transaction timeout: far longer than the survivor's client timeout.
const DEAD_TXN_TIMEOUT: Duration = Duration::from_secs(15);
const TEST: &str = "a_table_restores_after_a_dead_instances_pending_offsets_are_aborted";

/// The dead instance: a transaction that writes `zombie` to the output and sends the offsets
/// `topic:0 -> offset` for the group, then waits to be killed.
fn play_dead_instance(args: &str) {
    let [group, output, topic, offset] = args.split('|').collect::<Vec<_>>()[..] else {
        panic!("bad child arguments {args}");
    };
    let bootstrap = bootstrap_servers();
    let producer: BaseProducer = client_config(&bootstrap)
        .set("transactional.id", unique("dead-instance"))
        .set(
            "transaction.timeout.ms",
            DEAD_TXN_TIMEOUT.as_millis().to_string(),
        )
        .set("message.timeout.ms", "10000")
        .create()
        .unwrap();
    producer.init_transactions(LONG).unwrap();
    producer.begin_transaction().unwrap();
    send_retrying(
        &producer,
        BaseRecord::to(output).key("zombie").payload("zombie"),
    )
    .unwrap();
    producer.flush(LONG).unwrap();
    // The group's metadata as a consumer that never joined sees it (generation -1): Kafka
    // takes such transactional offsets for a group without members.
    let consumer: BaseConsumer = client_config(&bootstrap)
        .set("group.id", group)
        .create()
        .unwrap();
    let mut offsets = TopicPartitionList::new();
    offsets
        .add_partition_offset(topic, 0, Offset::Offset(offset.parse().unwrap()))
        .unwrap();
    producer
        .send_offsets_to_transaction(&offsets, &consumer.group_metadata().unwrap(), LONG)
        .unwrap();
    println!("READY");
    wait_for_stop_request();
}

/// A stream-table join whose table is built from its source topic (its changelog): a new
/// owner restores the table up to the group's committed offset of that topic, which it must
/// fetch stable. A dead instance's transaction holds offsets for it pending for 15 s; the new
/// owner's client timeout is 2 s. It must wait, never fail, restore the table to the offset
/// committed before the dead transaction (5 of 10 rows), process the rest, and join every
/// payment with its card; the dead transaction's record never becomes visible.
#[test]
fn a_table_restores_after_a_dead_instances_pending_offsets_are_aborted() {
    if let Some(args) = child_mode() {
        play_dead_instance(&args);
        return;
    }
    let bootstrap = bootstrap_servers();
    let (cards, payments, out, app) = (
        unique("pending-cards"),
        unique("pending-payments"),
        unique("pending-out"),
        unique("pending-app"),
    );
    for t in [&cards, &payments, &out] {
        create_topic(&bootstrap, t, 1, &[]).unwrap();
    }
    let p = idempotent_producer(&bootstrap).unwrap();
    for i in 0..10 {
        let (k, v) = (format!("card{i}"), format!("country{i}"));
        send_retrying(
            &p,
            BaseRecord::to(&cards).key(&k).payload(&v).timestamp(1 + i),
        )
        .unwrap();
    }
    p.flush(LONG).unwrap();
    // A previous owner committed half of the table's topic...
    let c: BaseConsumer = client_config(&bootstrap)
        .set("group.id", &app)
        .create()
        .unwrap();
    let mut half = TopicPartitionList::new();
    half.add_partition_offset(&cards, 0, Offset::Offset(5))
        .unwrap();
    c.commit(&half, rdkafka::consumer::CommitMode::Sync)
        .unwrap();
    drop(c);
    // ...then died in a transaction that was about to commit all of it.
    let mut dead = ChildProcess::spawn(
        "dead-instance",
        TEST,
        &format!("{app}|{out}|{cards}|10"),
        &[("KAFKA_BOOTSTRAP_SERVERS", &bootstrap)],
    )
    .unwrap();
    dead.wait_for_line("READY", LONG).unwrap();
    dead.kill().unwrap();
    let killed = Instant::now();

    let builder = StreamsBuilder::new();
    let table = builder.table::<String, String>(
        &cards,
        Materialized::with(Utf8)
            .named("cards")
            .reuse_source_topic_as_changelog(),
    );
    builder
        .stream::<String, String>(&payments)
        .join_table(&table, |pay, c| format!("{pay}:{c}"), Joined::default())
        .to(&out);
    let config = StreamsConfig::new(&app, &bootstrap)
        .state_dir(std::env::temp_dir().join(unique("pending-state")))
        .client_timeout(Duration::from_secs(2))
        .commit_interval(Duration::from_millis(200));
    let streams = KafkaStreams::new(builder.build().unwrap(), config).unwrap();
    let states = std::sync::Arc::new(std::sync::Mutex::new(vec![]));
    let seen = states.clone();
    streams.set_state_listener(move |_, new| seen.lock().unwrap().push(new));
    streams.start().unwrap();
    for i in 0..10 {
        let (k, v) = (format!("card{i}"), format!("pay{i}"));
        send_retrying(
            &p,
            BaseRecord::to(&payments)
                .key(&k)
                .payload(&v)
                .timestamp(100 + i),
        )
        .unwrap();
    }
    p.flush(LONG).unwrap();

    let deadline = Instant::now() + LONG;
    while committed_offsets(&bootstrap, &app, &payments).unwrap_or_default() != [Some(10)] {
        assert!(
            Instant::now() < deadline,
            "payments not processed within {LONG:?}: state {:?}, error {:?}",
            streams.state(),
            streams.error().map(|e| e.to_string())
        );
        assert_ne!(
            streams.state(),
            State::Error,
            "the application failed: {:?}",
            streams.error().map(|e| e.to_string())
        );
        std::thread::sleep(Duration::from_millis(100)); // polling the group's offsets
    }
    let waited = killed.elapsed();
    assert!(streams.close(LONG));
    let states = states.lock().unwrap().clone();
    assert!(
        !states.contains(&State::Error),
        "never in Error: {states:?}"
    );
    assert!(
        waited >= DEAD_TXN_TIMEOUT - Duration::from_secs(1),
        "the payments were processed {waited:?} after the kill, before the dead transaction \
         could have been aborted"
    );

    let got = read_to_end(&bootstrap, &out, Isolation::ReadCommitted, LONG).unwrap();
    let mut values: Vec<String> = got.iter().map(|r| r.value_str()).collect();
    values.sort();
    let mut expected: Vec<String> = (0..10).map(|i| format!("pay{i}:country{i}")).collect();
    expected.sort();
    assert_eq!(
        values, expected,
        "every payment joined once, no zombie record"
    );
    eprintln!("processed {waited:?} after the dead instance was killed; states {states:?}");
}

/// Restoration reads every changelog partition of the new tasks at once: a transaction left
/// open on one changelog partition holds back only the task of that partition. Here a count
/// over a 2-partition topic, and a producer that keeps a transaction open on the changelog's
/// partition 0 (as a dead instance would until the broker aborts it). Task 0_1, whose
/// changelog partition is free, must process its input while task 0_0 still waits for that
/// transaction to end (Kafka Streams' state updater restores its tasks' changelogs together
/// and hands each task over to processing once its own are done).
#[test]
fn a_changelog_held_by_an_open_transaction_holds_back_only_its_own_task() {
    let bootstrap = bootstrap_servers();
    let (input, out, app) = (unique("held-in"), unique("held-out"), unique("held-app"));
    let changelog = format!("{app}-counts-changelog");
    create_topic(&bootstrap, &input, 2, &[]).unwrap();
    create_topic(&bootstrap, &out, 1, &[]).unwrap();
    create_topic(&bootstrap, &changelog, 2, &[("cleanup.policy", "compact")]).unwrap();
    // The transaction that stays open on changelog partition 0 while the test runs.
    let holder: BaseProducer = client_config(&bootstrap)
        .set("transactional.id", unique("held-holder"))
        .set("transaction.timeout.ms", "300000")
        .create()
        .unwrap();
    holder.init_transactions(LONG).unwrap();
    holder.begin_transaction().unwrap();
    send_retrying(
        &holder,
        BaseRecord::to(&changelog)
            .partition(0)
            .key("a")
            .payload(&7u64.to_be_bytes()[..]),
    )
    .unwrap();
    holder.flush(LONG).unwrap();

    let p = idempotent_producer(&bootstrap).unwrap();
    for (partition, key) in [(0, "a"), (1, "b")] {
        for i in 0..5 {
            send_retrying(
                &p,
                BaseRecord::to(&input)
                    .partition(partition)
                    .key(key)
                    .payload("x")
                    .timestamp(1 + i),
            )
            .unwrap();
        }
    }
    p.flush(LONG).unwrap();

    let builder = StreamsBuilder::new();
    builder
        .stream::<String, String>(&input)
        .group_by_key()
        .count_with(Materialized::with(BigEndian).named("counts"))
        .to_stream()
        .to_with(&out, Produced::with(Utf8, BigEndian));
    // The transaction is waited for up to this timeout + 10 s: longer than the test runs.
    let config = StreamsConfig::new(&app, &bootstrap)
        .state_dir(std::env::temp_dir().join(unique("held-state")))
        .transaction_timeout(Duration::from_secs(240))
        .commit_interval(Duration::from_millis(200));
    let streams = KafkaStreams::new(builder.build().unwrap(), config).unwrap();
    streams.start().unwrap();
    let deadline = Instant::now() + LONG;
    let committed = loop {
        let committed = committed_offsets(&bootstrap, &app, &input).unwrap_or_default();
        if committed.get(1) == Some(&Some(5)) {
            break committed;
        }
        assert!(
            Instant::now() < deadline,
            "partition 1 not processed within {LONG:?} while changelog partition 0 has an open \
             transaction: committed {committed:?}, state {:?}, error {:?}",
            streams.state(),
            streams.error().map(|e| e.to_string())
        );
        std::thread::sleep(Duration::from_millis(100)); // polling the group's offsets
    };
    assert_eq!(
        committed[0], None,
        "partition 0's task still waits for the open transaction on its changelog"
    );
    holder.abort_transaction(LONG).unwrap();
    // Once the transaction is aborted, task 0_0 restores without its record and processes.
    let deadline = Instant::now() + LONG;
    while committed_offsets(&bootstrap, &app, &input).unwrap_or_default() != [Some(5), Some(5)] {
        assert!(
            Instant::now() < deadline,
            "partition 0 not processed within {LONG:?} after the abort"
        );
        std::thread::sleep(Duration::from_millis(100)); // polling the group's offsets
    }
    assert!(streams.close(LONG));
    // The aborted record (a count of 7) never reached the store: each key counted 5.
    let got = read_to_end(&bootstrap, &out, Isolation::ReadCommitted, LONG).unwrap();
    let last: std::collections::BTreeMap<String, u64> = got
        .iter()
        .map(|r| {
            let v = r.value.clone().unwrap_or_default();
            (r.key_str(), u64::from_be_bytes(v[..].try_into().unwrap()))
        })
        .collect();
    assert_eq!(
        last,
        [("a".to_string(), 5), ("b".to_string(), 5)].into(),
        "the last count of each key"
    );
}
