//! The DSL against the real broker under exactly-once: a topology that re-keys (group_by on a
//! new key, through a repartition topic), counts in hopping windows with emit-final, and
//! writes the final counts; SIGKILLed at random points three times. The output, read
//! read_committed, must equal what an oracle computes from the input: every window's final
//! count exactly once, nothing missing, no non-final result.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kstreams::core::serde::{BigEndian, Serde, Utf8};
use kstreams::core::{KafkaStreams, ProcessingGuarantee, State, StreamsConfig};
use kstreams::dsl::{
    Grouped, Joined, Materialized, StreamsBuilder, Suppressed, TimeWindows, WindowedSerde,
};
use rand::Rng;
use rdkafka::consumer::Consumer;
use rdkafka::producer::{BaseRecord, Producer};
use streams_testkit::child::{child_mode, wait_for_stop_request, ChildProcess};
use streams_testkit::kafka::{
    committed_offsets, consume_until, create_topic, describe_topic_config, idempotent_producer,
    read_to_end, send_retrying, topic_config_overrides, Isolation, Received,
};
use streams_testkit::{bootstrap_servers, unique};

const LONG: Duration = Duration::from_secs(120);
/// Input records, one every 10 ms of event time from `T0`.
const N: usize = 3000;
/// The first record's event time. Not 0: librdkafka replaces a timestamp of 0 with the time
/// of the send.
const T0: i64 = 1_000;
const USERS: usize = 7;
/// Event time far after every real record: closes every real window.
const SENTINEL_TS: i64 = 10_000_000;

fn windows() -> TimeWindows {
    // Grace longer than the input's whole event-time span: however the repartitioned
    // records interleave, none is late, so the oracle does not depend on processing order.
    TimeWindows::of_size_and_grace(Duration::from_millis(1000), Duration::from_secs(100))
        .advance_by(Duration::from_millis(500))
}

fn user_of(i: usize) -> String {
    format!("u{}", (i * 7 + i / 13) % USERS)
}

fn run_child(args: &str) {
    streams_testkit::init_tracing();
    let parts: Vec<&str> = args.split('|').collect();
    let [app, input, output, dir, label] = parts[..] else {
        panic!("bad child arguments {args}");
    };
    let builder = StreamsBuilder::new();
    builder
        .stream::<String, String>(input)
        .group_by_with(
            |_, user| user.clone(),
            Grouped::with(Utf8, Utf8).named("by-user"),
        )
        .windowed_by(windows())
        .emit_final()
        .count_with(Materialized::with(BigEndian).named("user-counts"))
        .to(output);
    let config = StreamsConfig::new(app, &bootstrap_servers())
        .state_dir(dir)
        .transaction_timeout(Duration::from_secs(10))
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "1000");
    let streams = KafkaStreams::new(builder.build().unwrap(), config).unwrap();
    streams.start().unwrap();
    assert!(streams.wait_for(|s| s == State::Running, LONG));
    println!("KSTREAMS-APP-RUNNING {label}");
    wait_for_stop_request();
    let closed = streams.close(Duration::from_secs(60));
    println!("KSTREAMS-APP-CLOSED {label} clean={closed}");
}

fn spawn(label: &str, app: &str, input: &str, output: &str, dir: &str) -> ChildProcess {
    let bootstrap = bootstrap_servers();
    ChildProcess::spawn(
        label,
        "a_rekeyed_hopping_window_count_with_emit_final_is_exactly_once_under_sigkill",
        &format!("{app}|{input}|{output}|{dir}|{label}"),
        &[("KAFKA_BOOTSTRAP_SERVERS", bootstrap.as_str())],
    )
    .unwrap()
}

/// Produces records `0..N` (key `e<i>`, value the user, timestamp `T0 + 10 * i`) at about
/// `per_second`, in the background.
fn produce_events(topic: &str, per_second: usize) -> std::thread::JoinHandle<()> {
    let (bootstrap, topic) = (bootstrap_servers(), topic.to_string());
    std::thread::spawn(move || {
        let p = idempotent_producer(&bootstrap).unwrap();
        let start = Instant::now();
        for i in 0..N {
            let (key, user) = (format!("e{i}"), user_of(i));
            send_retrying(
                &p,
                BaseRecord::to(&topic)
                    .key(&key)
                    .payload(&user)
                    .timestamp(T0 + 10 * i as i64),
            )
            .unwrap();
            if i % 50 == 49 {
                p.flush(Duration::from_secs(30)).unwrap();
                // Pacing the load, not waiting for a condition.
                let due = start + Duration::from_secs_f64((i + 1) as f64 / per_second as f64);
                std::thread::sleep(due.saturating_duration_since(Instant::now()));
            }
        }
        p.flush(Duration::from_secs(30)).unwrap();
    })
}

/// The final count of every (user, window start), computed from the input.
fn oracle() -> BTreeMap<(String, i64), u64> {
    let w = windows();
    let (size, advance) = (1000_i64, 500_i64);
    assert_eq!(w.size_ms(), size);
    let mut counts = BTreeMap::new();
    for i in 0..N {
        let ts = T0 + 10 * i as i64;
        let mut start = 0;
        while start <= ts {
            if ts < start + size {
                *counts.entry((user_of(i), start)).or_insert(0) += 1;
            }
            start += advance;
        }
    }
    counts
}

fn decode(records: &[Received]) -> Vec<((String, i64), u64)> {
    let keys = WindowedSerde::new(Utf8, windows());
    records
        .iter()
        .map(|r| {
            let w = keys.deserialize("out", r.key.as_deref()).unwrap();
            let n = Serde::<u64>::deserialize(&BigEndian, "out", r.value.as_deref()).unwrap();
            ((w.key, w.start), n)
        })
        .collect()
}

#[test]
fn a_rekeyed_hopping_window_count_with_emit_final_is_exactly_once_under_sigkill() {
    if let Some(args) = child_mode() {
        return run_child(&args);
    }
    let bootstrap = bootstrap_servers();
    let (input, output, app) = (unique("dsl-in"), unique("dsl-out"), unique("dsl-app"));
    create_topic(&bootstrap, &input, 3, &[]).unwrap();
    create_topic(&bootstrap, &output, 3, &[]).unwrap();
    let dir = std::env::temp_dir().join(unique("kstreams-dsl-state"));
    let dir = dir.to_str().unwrap();
    let feeder = produce_events(&input, 250);
    let mut rng = rand::rng();
    const KILLS: usize = 3;
    for kill in 0..KILLS {
        let mut child = spawn(&format!("run{kill}"), &app, &input, &output, dir);
        child.wait_for_line("KSTREAMS-APP-RUNNING", LONG).unwrap();
        let after = Duration::from_millis(rng.random_range(300..3000));
        std::thread::sleep(after); // the random kill point
        child.kill().unwrap();
        eprintln!("kill {} after {:?} of running", kill + 1, after);
    }
    let mut last = spawn("final", &app, &input, &output, dir);
    last.wait_for_line("KSTREAMS-APP-RUNNING", LONG).unwrap();
    feeder.join().unwrap();

    // Once every input record is processed (its offset committed, so its repartitioned copy
    // is in the repartition topic), one record per user far in the future closes every
    // window: it lands after all real records in each repartition partition.
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let done: i64 = committed_offsets(&bootstrap, &app, &input)
            .unwrap()
            .into_iter()
            .map(|o| o.unwrap_or(0))
            .sum();
        if done >= N as i64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "input not consumed: {done} of {N}"
        );
        std::thread::sleep(Duration::from_millis(200)); // polling the group's offsets
    }
    let p = idempotent_producer(&bootstrap).unwrap();
    for u in 0..USERS {
        let user = format!("u{u}");
        send_retrying(
            &p,
            BaseRecord::to(&input)
                .key("sentinel")
                .payload(&user)
                .timestamp(SENTINEL_TS),
        )
        .unwrap();
    }
    p.flush(Duration::from_secs(30)).unwrap();

    let want = oracle();
    consume_until(
        &bootstrap,
        &output,
        Isolation::ReadCommitted,
        Duration::from_secs(240),
        |got| got.len() >= want.len(),
    )
    .unwrap();
    let status = last.stop(Duration::from_secs(90)).unwrap();
    assert!(status.success(), "final run exit: {status}");

    let committed =
        decode(&read_to_end(&bootstrap, &output, Isolation::ReadCommitted, LONG).unwrap());
    let all = read_to_end(&bootstrap, &output, Isolation::ReadUncommitted, LONG).unwrap();
    let mut got: BTreeMap<(String, i64), u64> = BTreeMap::new();
    let mut duplicates = 0;
    for (window, n) in &committed {
        if got.insert(window.clone(), *n).is_some() {
            duplicates += 1;
        }
    }
    let missing = want.keys().filter(|w| !got.contains_key(*w)).count();
    let unexpected = got.keys().filter(|w| !want.contains_key(*w)).count();
    let wrong: Vec<_> = want
        .iter()
        .filter(|(w, n)| got.get(*w).is_some_and(|g| g != *n))
        .take(5)
        .collect();
    eprintln!(
        "dsl crash test: kills {KILLS}, input {N}, windows {}, output read_committed {}, \
         duplicates {duplicates}, missing {missing}, unexpected {unexpected}, wrong counts {}; \
         written in all (read_uncommitted, incl. aborted) {}",
        want.len(),
        committed.len(),
        wrong.len(),
        all.len()
    );
    assert_eq!((duplicates, missing, unexpected), (0, 0, 0));
    assert!(wrong.is_empty(), "non-final or wrong counts: {wrong:?}");
    assert_eq!(got, want);
}

/// Counts per key of 2,000 records over 10 keys, read from the output once every key reached
/// its final count: (output records, final count per key).
/// Counts 2,000 records over 10 keys with `cache_bytes` of record cache (`caching` off: the
/// count's store opts out with `Materialized::with_caching_disabled`); returns the number of
/// updates that came out and the final counts.
fn count_through_the_runtime(cache_bytes: usize, caching: bool) -> (usize, BTreeMap<String, u64>) {
    let bootstrap = bootstrap_servers();
    let (input, output, app) = (unique("cache-in"), unique("cache-out"), unique("cache-app"));
    create_topic(&bootstrap, &input, 1, &[]).unwrap();
    create_topic(&bootstrap, &output, 1, &[]).unwrap();
    let p = idempotent_producer(&bootstrap).unwrap();
    for i in 0..2000 {
        let key = format!("k{}", i % 10);
        send_retrying(&p, BaseRecord::to(&input).key(&key).payload("x")).unwrap();
    }
    p.flush(Duration::from_secs(30)).unwrap();
    let builder = StreamsBuilder::new();
    let mut store = Materialized::with(BigEndian);
    if !caching {
        store = store.with_caching_disabled();
    }
    builder
        .stream::<String, String>(input.as_str())
        .group_by_key()
        .count_with(store)
        .to_stream()
        .to(&output);
    let config = StreamsConfig::new(&app, &bootstrap)
        .state_dir(std::env::temp_dir().join(unique("kstreams-cache-state")))
        .cache_max_bytes(cache_bytes);
    let streams = KafkaStreams::new(builder.build().unwrap(), config).unwrap();
    streams.start().unwrap();
    let finals = |got: &[Received]| -> BTreeMap<String, u64> {
        let mut last = BTreeMap::new();
        for r in got {
            let n = Serde::<u64>::deserialize(&BigEndian, "out", r.value.as_deref()).unwrap();
            last.insert(r.key_str(), n);
        }
        last
    };
    let got = consume_until(&bootstrap, &output, Isolation::ReadCommitted, LONG, |got| {
        finals(got).values().filter(|n| **n == 200).count() == 10
    })
    .unwrap();
    assert!(streams.close(Duration::from_secs(60)));
    let counts = finals(&got);
    (got.len(), counts)
}

#[test]
fn a_record_cache_forwards_each_key_once_per_commit_and_can_be_turned_off() {
    let (cached, counts) = count_through_the_runtime(10 << 20, true);
    assert_eq!(counts.len(), 10);
    assert!(counts.values().all(|n| *n == 200), "{counts:?}");
    let (uncached, counts) = count_through_the_runtime(0, true);
    assert!(counts.values().all(|n| *n == 200), "{counts:?}");
    // One aggregation opting out of a cache the others have (Kafka Streams'
    // Materialized.withCachingDisabled).
    let (opted_out, counts) = count_through_the_runtime(10 << 20, false);
    assert!(counts.values().all(|n| *n == 200), "{counts:?}");
    eprintln!("count of 2,000 records over 10 keys: {cached} updates out with the cache, {uncached} without, {opted_out} with the store's caching disabled");
    assert_eq!(uncached, 2000, "without a cache every update goes out");
    assert_eq!(
        opted_out, 2000,
        "a store without caching forwards every update"
    );
    assert!(
        cached < 200,
        "with a cache, one update per key and commit: {cached} records for 10 keys"
    );
}

/// Suppression input: 2,000 records over 10 keys, value `v<i>`, event time `T0 + 7 * i`, one
/// partition (a single task, so the processing order is the input order whatever the kills).
const SUPPRESS_N: usize = 2000;
const SUPPRESS_LIMIT_MS: i64 = 500;

fn suppress_child(args: &str) {
    streams_testkit::init_tracing();
    let parts: Vec<&str> = args.split('|').collect();
    let [app, input, output, dir, label] = parts[..] else {
        panic!("bad child arguments {args}");
    };
    let builder = StreamsBuilder::new();
    builder
        .table::<String, String>(input, Materialized::with(Utf8))
        .suppress(Suppressed::until_time_limit(Duration::from_millis(
            SUPPRESS_LIMIT_MS as u64,
        )))
        .to_stream()
        .to(output);
    let config = StreamsConfig::new(app, &bootstrap_servers())
        .state_dir(dir)
        .transaction_timeout(Duration::from_secs(10))
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "1000");
    let streams = KafkaStreams::new(builder.build().unwrap(), config).unwrap();
    streams.start().unwrap();
    assert!(streams.wait_for(|s| s == State::Running, LONG));
    println!("KSTREAMS-APP-RUNNING {label}");
    wait_for_stop_request();
    let closed = streams.close(Duration::from_secs(60));
    println!("KSTREAMS-APP-CLOSED {label} clean={closed}");
}

/// What the suppression must emit, recomputed plainly: per key the latest value, held from
/// its first update until stream time passes that update's time plus the limit; emitted
/// oldest first (then by key).
fn suppress_oracle(input: &[(String, String, i64)]) -> Vec<(String, String)> {
    let mut held: BTreeMap<String, (i64, String)> = BTreeMap::new();
    let mut out = vec![];
    let mut stream_time = i64::MIN;
    for (key, value, ts) in input {
        stream_time = stream_time.max(*ts);
        let since = held.get(key).map_or(*ts, |(s, _)| *s);
        held.insert(key.clone(), (since, value.clone()));
        let mut due: Vec<(i64, String)> = held
            .iter()
            .filter(|(_, (s, _))| *s <= stream_time - SUPPRESS_LIMIT_MS)
            .map(|(k, (s, _))| (*s, k.clone()))
            .collect();
        due.sort();
        for (_, k) in due {
            let (_, v) = held.remove(&k).unwrap();
            out.push((k, v));
        }
    }
    out
}

#[test]
fn a_suppression_buffer_survives_sigkill_and_emits_each_update_once() {
    if let Some(args) = child_mode() {
        return suppress_child(&args);
    }
    let bootstrap = bootstrap_servers();
    let (input, output, app) = (unique("sup-in"), unique("sup-out"), unique("sup-app"));
    create_topic(&bootstrap, &input, 1, &[]).unwrap();
    create_topic(&bootstrap, &output, 1, &[]).unwrap();
    let dir = std::env::temp_dir().join(unique("kstreams-sup-state"));
    let dir = dir.to_str().unwrap().to_string();
    let records: Vec<(String, String, i64)> = (0..SUPPRESS_N)
        .map(|i| (format!("k{}", i % 10), format!("v{i}"), T0 + 7 * i as i64))
        .collect();
    let feeder = {
        let (bootstrap, input, records) = (bootstrap.clone(), input.clone(), records.clone());
        std::thread::spawn(move || {
            let p = idempotent_producer(&bootstrap).unwrap();
            let start = Instant::now();
            for (i, (k, v, ts)) in records.iter().enumerate() {
                send_retrying(&p, BaseRecord::to(&input).key(k).payload(v).timestamp(*ts)).unwrap();
                if i % 50 == 49 {
                    p.flush(Duration::from_secs(30)).unwrap();
                    // Pacing the load, not waiting for a condition.
                    let due = start + Duration::from_secs_f64((i + 1) as f64 / 200.0);
                    std::thread::sleep(due.saturating_duration_since(Instant::now()));
                }
            }
            p.flush(Duration::from_secs(30)).unwrap();
        })
    };
    let spawn = |label: &str| {
        ChildProcess::spawn(
            label,
            "a_suppression_buffer_survives_sigkill_and_emits_each_update_once",
            &format!("{app}|{input}|{output}|{dir}|{label}"),
            &[("KAFKA_BOOTSTRAP_SERVERS", bootstrap.as_str())],
        )
        .unwrap()
    };
    let mut rng = rand::rng();
    for kill in 0..2 {
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
    let want = suppress_oracle(&records);
    consume_until(
        &bootstrap,
        &output,
        Isolation::ReadCommitted,
        Duration::from_secs(240),
        |got| got.len() >= want.len(),
    )
    .unwrap();
    let status = last.stop(Duration::from_secs(90)).unwrap();
    assert!(status.success(), "final run exit: {status}");
    let all = read_to_end(&bootstrap, &output, Isolation::ReadCommitted, LONG).unwrap();
    let got: Vec<(String, String)> = all.iter().map(|r| (r.key_str(), r.value_str())).collect();
    eprintln!(
        "suppression under SIGKILL: input {SUPPRESS_N}, emitted read_committed {} (oracle {})",
        got.len(),
        want.len()
    );
    assert_eq!(got, want);
}

/// Runs `users` (a table, using its topic as its changelog when `reuse`) regrouped by city and
/// counted, until the output shows `want` as the latest count of every city; returns after a
/// clean close.
fn run_city_counts(
    app: &str,
    (users, reuse): (&str, bool),
    output: &str,
    dir: &std::path::Path,
    want: &BTreeMap<String, u64>,
) {
    let bootstrap = bootstrap_servers();
    let builder = StreamsBuilder::new();
    let mut materialized = Materialized::with(Utf8).named("users-store");
    if reuse {
        materialized = materialized.reuse_source_topic_as_changelog();
    }
    builder
        .table::<String, String>(users, materialized)
        .group_by(|user, city| (city.clone(), user.clone()))
        .count()
        .to_stream()
        .to(output);
    let config = StreamsConfig::new(app, &bootstrap)
        .state_dir(dir)
        .cache_max_bytes(0);
    let streams = KafkaStreams::new(builder.build().unwrap(), config).unwrap();
    streams.start().unwrap();
    let latest = |got: &[Received]| -> BTreeMap<String, u64> {
        let mut last = BTreeMap::new();
        for r in got {
            let n = Serde::<u64>::deserialize(&BigEndian, "out", r.value.as_deref()).unwrap();
            last.insert(r.key_str(), n);
        }
        last
    };
    consume_until(&bootstrap, output, Isolation::ReadCommitted, LONG, |got| {
        &latest(got) == want
    })
    .unwrap();
    assert!(streams.close(Duration::from_secs(60)));
}

/// A table reusing its source topic as its changelog is restored from it up to the committed
/// offset.
#[test]
fn a_table_is_restored_from_its_source_topic_up_to_the_committed_offset() {
    table_restoration(true);
}

/// By default a table has a changelog topic of its own, as in Kafka Streams (whose source-topic
/// reuse is an optimization, off by default): the table is restored from it. Before, the
/// source topic was always the changelog, whatever its retention (rows older than a
/// delete-policy topic's retention were lost from a restored table).
#[test]
fn a_table_has_a_changelog_of_its_own_by_default() {
    table_restoration(false);
}

/// Counts users per city from a table, loses the state directory, changes three users and
/// counts again: each move must leave its old city. With `reuse` the table's topic is its
/// changelog (and no changelog topic exists); without, a compacted changelog topic of its
/// own exists.
fn table_restoration(reuse: bool) {
    let bootstrap = bootstrap_servers();
    let (users, output, app) = (unique("users"), unique("city-counts"), unique("table-app"));
    create_topic(&bootstrap, &users, 1, &[]).unwrap();
    create_topic(&bootstrap, &output, 1, &[]).unwrap();
    let p = idempotent_producer(&bootstrap).unwrap();
    for i in 0..10 {
        let (user, city) = (format!("u{i}"), format!("c{}", i % 2));
        send_retrying(&p, BaseRecord::to(&users).key(&user).payload(&city)).unwrap();
    }
    p.flush(Duration::from_secs(30)).unwrap();
    let counts =
        |c0: u64, c1: u64| BTreeMap::from([("c0".to_string(), c0), ("c1".to_string(), c1)]);
    let dir = std::env::temp_dir().join(unique("kstreams-table-state"));
    run_city_counts(&app, (&users, reuse), &output, &dir, &counts(5, 5));

    // With reuse, the source topic is the table's log: no changelog topic was created for it
    // (asked by listing every topic: a metadata request for one topic may create it).
    let changelog = format!("{app}-users-store-changelog");
    let lister: rdkafka::producer::BaseProducer = streams_testkit::kafka::client_config(&bootstrap)
        .create()
        .unwrap();
    let md = lister
        .client()
        .fetch_metadata(None, Duration::from_secs(10))
        .unwrap();
    let names: Vec<&str> = md.topics().iter().map(|t| t.name()).collect();
    assert!(
        names.contains(&users.as_str()),
        "the listing works: {names:?}"
    );
    assert_eq!(
        names.contains(&changelog.as_str()),
        !reuse,
        "{changelog} exists: {names:?}"
    );
    if !reuse {
        let config = describe_topic_config(&bootstrap, &changelog).unwrap();
        assert_eq!(
            config.get("cleanup.policy").map(String::as_str),
            Some("compact")
        );
    }

    // The machine is lost; meanwhile u0 moves to c1, u1 to c0, and u2 is deleted. The new
    // instance must restore the table from the topic (up to what was committed: the moves
    // are processed, not restored), so that each move subtracts the old city.
    std::fs::remove_dir_all(&dir).unwrap();
    for (user, city) in [("u0", Some("c1")), ("u1", Some("c0")), ("u2", None)] {
        let mut record = BaseRecord::to(&users).key(user);
        if let Some(c) = city {
            record = record.payload(c);
        }
        send_retrying(&p, record).unwrap();
    }
    p.flush(Duration::from_secs(30)).unwrap();
    run_city_counts(&app, (&users, reuse), &output, &dir, &counts(4, 5));
}

/// A join reads an aggregation's current rows while the aggregation's record cache holds the
/// updates back from the downstream, and so does a join of a table derived from it
/// (`map_values`): Kafka Streams' value getters read through the aggregation's caching store
/// (`CachingKeyValueStore`, `KTableMapValues` getter over `KStreamAggregate.view()`). The
/// commit interval is longer than the test, so no commit flushes the cache meanwhile.
#[test]
fn joins_read_an_aggregation_through_its_record_cache() {
    let bootstrap = bootstrap_servers();
    let (orders, clicks) = (unique("rt-orders"), unique("rt-clicks"));
    let (direct, derived) = (unique("rt-direct"), unique("rt-derived"));
    for topic in [&orders, &clicks, &direct, &derived] {
        create_topic(&bootstrap, topic, 1, &[]).unwrap();
    }
    let builder = StreamsBuilder::new();
    let counts = builder
        .stream::<String, String>(orders.as_str())
        .group_by_key()
        .count();
    let tens = counts.map_values(|n| n * 10, BigEndian);
    let show = |n: Option<&u64>| n.map_or("-".to_string(), u64::to_string);
    let click_stream = builder.stream::<String, String>(clicks.as_str());
    click_stream
        .left_join_table(
            &counts,
            move |c, n| format!("{c}:{}", show(n)),
            Joined::default(),
        )
        .to(&direct);
    click_stream
        .left_join_table(
            &tens,
            move |c, n| format!("{c}:{}", show(n)),
            Joined::default(),
        )
        .to(&derived);
    let config = StreamsConfig::new(&unique("rt-app"), &bootstrap)
        .state_dir(std::env::temp_dir().join(unique("kstreams-read-through")))
        .processing_guarantee(ProcessingGuarantee::AtLeastOnce)
        .cache_max_bytes(10 << 20)
        .commit_interval(Duration::from_secs(600));
    let streams = KafkaStreams::new(builder.build().unwrap(), config).unwrap();
    streams.start().unwrap();
    assert!(streams.wait_for(|s| s == State::Running, LONG));
    let p = idempotent_producer(&bootstrap).unwrap();
    for (i, order) in ["o1", "o2", "o3"].into_iter().enumerate() {
        let ts = T0 + i as i64;
        send_retrying(
            &p,
            BaseRecord::to(&orders)
                .key("ann")
                .payload(order)
                .timestamp(ts),
        )
        .unwrap();
    }
    p.flush(Duration::from_secs(30)).unwrap();
    // The click goes in once the three orders are processed (held in the cache).
    let deadline = Instant::now() + LONG;
    while streams
        .metrics()
        .sum("kstreams_task_process_records_total", &[])
        < 3.0
    {
        assert!(
            Instant::now() < deadline,
            "the orders were not processed within {LONG:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    send_retrying(
        &p,
        BaseRecord::to(&clicks)
            .key("ann")
            .payload("click")
            .timestamp(T0 + 10),
    )
    .unwrap();
    p.flush(Duration::from_secs(30)).unwrap();
    let joined = |topic: &str| {
        let got = consume_until(&bootstrap, topic, Isolation::ReadUncommitted, LONG, |got| {
            !got.is_empty()
        })
        .unwrap();
        got.iter().map(|r| r.value_str()).collect::<Vec<_>>()
    };
    let (d, v) = (joined(&direct), joined(&derived));
    assert!(streams.close(Duration::from_secs(60)));
    assert_eq!(d, vec!["click:3".to_string()], "the join of the count");
    assert_eq!(
        v,
        vec!["click:30".to_string()],
        "the join of the count times ten"
    );
}

/// Repartition topics keep records without a time limit and lose the records the group has
/// committed past: Kafka Streams creates them with `retention.ms=-1`
/// (`RepartitionTopicConfig`) and deletes committed records every purge interval
/// (`TaskManager.maybePurgeCommittedRecords`). Before, they had the broker's retention (records
/// older than it lost while the application was stopped) and were never purged.
#[test]
fn repartition_topics_have_no_time_limit_and_are_purged_after_commits() {
    let bootstrap = bootstrap_servers();
    let (input, output, app) = (unique("purge-in"), unique("purge-out"), unique("purge-app"));
    create_topic(&bootstrap, &input, 2, &[]).unwrap();
    create_topic(&bootstrap, &output, 2, &[]).unwrap();
    let builder = StreamsBuilder::new();
    builder
        .stream::<String, String>(input.as_str())
        .group_by_with(
            |_, v| v.clone(),
            Grouped::with(Utf8, Utf8).named("by-value"),
        )
        .count()
        .to_stream()
        .to(&output);
    let config = StreamsConfig::new(&app, &bootstrap)
        .state_dir(std::env::temp_dir().join(unique("kstreams-purge")))
        .cache_max_bytes(0)
        .repartition_purge_interval(Duration::from_millis(200));
    let streams = KafkaStreams::new(builder.build().unwrap(), config).unwrap();
    streams.start().unwrap();
    let p = idempotent_producer(&bootstrap).unwrap();
    for i in 0..200 {
        let key = format!("k{i}");
        let value = format!("v{}", i % 5);
        send_retrying(&p, BaseRecord::to(&input).key(&key).payload(&value)).unwrap();
    }
    p.flush(Duration::from_secs(30)).unwrap();
    consume_until(&bootstrap, &output, Isolation::ReadCommitted, LONG, |got| {
        got.len() >= 200
    })
    .unwrap();
    let repartition = format!("{app}-by-value-repartition");
    // Set on the topic, not inherited: the test broker's own default is no time limit too.
    let config = topic_config_overrides(&bootstrap, &repartition).unwrap();
    assert_eq!(
        config.get("retention.ms").map(String::as_str),
        Some("-1"),
        "{config:?}"
    );
    // The records the group committed past are deleted: every partition's start offset moves
    // past the records the application read (it wrote all 200 there).
    let consumer: rdkafka::consumer::BaseConsumer =
        streams_testkit::kafka::client_config(&bootstrap)
            .set("group.id", unique("purge-check"))
            .create()
            .unwrap();
    let deadline = Instant::now() + LONG;
    let starts = loop {
        let starts: Vec<(i64, i64)> = (0..2)
            .map(|p| {
                consumer
                    .fetch_watermarks(&repartition, p, Duration::from_secs(5))
                    .unwrap()
            })
            .collect();
        let written: i64 = starts.iter().map(|(_, high)| high).sum();
        if written >= 200 && starts.iter().all(|(low, high)| *high == 0 || *low > 0) {
            break starts;
        }
        assert!(
            Instant::now() < deadline,
            "repartition partitions (start, end) not purged within {LONG:?}: {starts:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(streams.close(Duration::from_secs(60)));
    eprintln!("repartition partitions (start, end) after purging: {starts:?}");
}

/// Windowed results are partitioned by their inner key: every window of a key lands in the
/// partition of the key itself, as Kafka Streams' `WindowedStreamPartitioner` places them
/// (murmur2 of the inner key's bytes). Before, the bytes of key and window start were hashed,
/// spreading a key's windows over the partitions.
#[test]
fn windowed_results_are_partitioned_by_their_inner_key() {
    let bootstrap = bootstrap_servers();
    let (input, windowed, plain) = (unique("win-in"), unique("win-out"), unique("win-plain"));
    create_topic(&bootstrap, &input, 1, &[]).unwrap();
    create_topic(&bootstrap, &windowed, 4, &[]).unwrap();
    create_topic(&bootstrap, &plain, 4, &[]).unwrap();
    let windows = TimeWindows::of_size_with_no_grace(Duration::from_millis(10));
    let builder = StreamsBuilder::new();
    let counts = builder
        .stream::<String, String>(input.as_str())
        .group_by_key()
        .windowed_by(windows)
        .count();
    counts.to(&windowed);
    counts
        .to_stream()
        .map(|w, n| (w.key.clone(), n))
        .to_with(&plain, kstreams::dsl::Produced::with(Utf8, BigEndian));
    let config = StreamsConfig::new(&unique("win-app"), &bootstrap)
        .state_dir(std::env::temp_dir().join(unique("kstreams-win-partitions")))
        .cache_max_bytes(0);
    let streams = KafkaStreams::new(builder.build().unwrap(), config).unwrap();
    streams.start().unwrap();
    let p = idempotent_producer(&bootstrap).unwrap();
    for i in 0..8 {
        let ts = T0 + 10 * i;
        send_retrying(
            &p,
            BaseRecord::to(&input).key("k").payload("x").timestamp(ts),
        )
        .unwrap();
    }
    p.flush(Duration::from_secs(30)).unwrap();
    let read = |topic: &str| {
        consume_until(&bootstrap, topic, Isolation::ReadCommitted, LONG, |got| {
            got.len() >= 8
        })
        .unwrap()
    };
    let (w, k) = (read(&windowed), read(&plain));
    assert!(streams.close(Duration::from_secs(60)));
    let key_partition = k[0].partition;
    assert!(
        k.iter().all(|r| r.partition == key_partition),
        "the key's own records"
    );
    let spread: Vec<i32> = w.iter().map(|r| r.partition).collect();
    assert_eq!(
        spread,
        vec![key_partition; 8],
        "the windows of k, by partition"
    );
}
