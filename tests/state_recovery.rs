//! State stores against the real broker: recovery from the changelog after the state directory
//! is deleted, a SIGKILL crash test under exactly-once that must restore only the changelog's
//! tail, and a task migrating to a second instance.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kstreams::core::config::RestoreListener;
use kstreams::core::serde::{BigEndian, Utf8};
use kstreams::core::store::KeyValueStore;
use kstreams::core::{
    KafkaStreams, Processor, ProcessorContext, Record, Result, Sink, Source, State, StreamsConfig,
    Topology, TopologyBuilder,
};
use rand::Rng;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use streams_testkit::child::{child_mode, wait_for_stop_request, ChildProcess};
use streams_testkit::kafka::{
    consume_until, create_topic, delete_topic, idempotent_producer, read_to_end, send_retrying,
    Isolation, Received,
};
use streams_testkit::{bootstrap_servers, unique};

const LONG: Duration = Duration::from_secs(120);
const KEYS: usize = 20;

/// Counts records per key in a RocksDB store and emits the new count; with a probe, `init`
/// records how many keys the store held when the processor was initialised.
#[derive(Default)]
struct Counter {
    probe: Option<Arc<Mutex<Vec<usize>>>>,
}

impl Processor for Counter {
    type KeyIn = String;
    type ValueIn = String;
    type KeyOut = String;
    type ValueOut = u64;

    fn init(&mut self, ctx: &mut ProcessorContext<'_, String, u64>) -> Result<()> {
        if let Some(probe) = &self.probe {
            let store = ctx.state_store::<KeyValueStore<String, u64>>("counts")?;
            probe.lock().unwrap().push(store.len()?);
        }
        Ok(())
    }

    fn process(
        &mut self,
        record: Record<String, String>,
        ctx: &mut ProcessorContext<'_, String, u64>,
    ) -> Result<()> {
        let store = ctx.state_store::<KeyValueStore<String, u64>>("counts")?;
        let n = store.get(record.key())?.unwrap_or(0) + 1;
        store.put(record.key(), &n)?;
        ctx.forward(record.with_value(n))
    }
}

fn counting_topology(input: &str, output: &str) -> Topology {
    probed_counting_topology(input, output, None)
}

fn probed_counting_topology(
    input: &str,
    output: &str,
    probe: Option<Arc<Mutex<Vec<usize>>>>,
) -> Topology {
    TopologyBuilder::new()
        .add_source("in", Source::new([input], Utf8, Utf8))
        .add_processor(
            "count",
            move || Counter {
                probe: probe.clone(),
            },
            ["in"],
        )
        .add_state_store(
            KeyValueStore::<String, u64>::builder("counts", Utf8, BigEndian),
            ["count"],
        )
        .add_sink(
            "out",
            Sink::<String, u64>::new(output, Utf8, BigEndian),
            ["count"],
        )
        .build()
        .unwrap()
}

#[derive(Default, Clone)]
struct Restores(Arc<Mutex<Vec<(i32, i64, u64)>>>);

impl RestoreListener for Restores {
    fn on_restore_start(&self, _store: &str, partition: i32, from: i64) {
        self.0.lock().unwrap().push((partition, from, 0));
    }
    fn on_restore_end(&self, _store: &str, partition: i32, total: u64) {
        let mut v = self.0.lock().unwrap();
        if let Some(e) = v.iter_mut().rev().find(|e| e.0 == partition) {
            e.2 = total;
        }
    }
}

impl Restores {
    fn total(&self) -> u64 {
        self.0.lock().unwrap().iter().map(|e| e.2).sum()
    }
}

fn producer(bootstrap: &str) -> BaseProducer {
    idempotent_producer(bootstrap).unwrap()
}

fn key_of(i: usize) -> String {
    format!("key-{:02}", i % KEYS)
}

fn produce_range(p: &BaseProducer, topic: &str, from: usize, to: usize) {
    for i in from..to {
        let (key, value) = (key_of(i), format!("v{i}"));
        send_retrying(p, BaseRecord::to(topic).key(&key).payload(&value)).unwrap();
    }
    p.flush(Duration::from_secs(30)).unwrap();
}

fn oracle(n: usize) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for i in 0..n {
        *m.entry(key_of(i)).or_insert(0) += 1;
    }
    m
}

fn count_of(r: &Received) -> u64 {
    u64::from_be_bytes(r.value.as_deref().unwrap().try_into().unwrap())
}

/// Exactly-once for a count: per key the output counts are 1, 2, …, n, each once.
fn check_counts(out: &[Received], n: usize) -> (usize, usize) {
    let mut per_key: HashMap<String, Vec<u64>> = HashMap::new();
    for r in out {
        per_key.entry(r.key_str()).or_default().push(count_of(r));
    }
    let expected = oracle(n);
    let (mut duplicates, mut missing) = (0, 0);
    for (k, want) in &expected {
        let mut got = per_key.remove(k).unwrap_or_default();
        got.sort();
        let mut seen = std::collections::BTreeSet::new();
        for c in &got {
            if !seen.insert(*c) {
                duplicates += 1;
            }
        }
        missing += (1..=*want).filter(|c| !seen.contains(c)).count();
        assert!(
            got.iter().all(|c| *c >= 1 && *c <= *want),
            "{k}: counts beyond {want}: {got:?}"
        );
    }
    assert!(per_key.is_empty(), "unexpected keys {:?}", per_key.keys());
    (duplicates, missing)
}

fn config(app: &str, dir: &std::path::Path, restores: &Restores) -> StreamsConfig {
    StreamsConfig::new(app, &bootstrap_servers())
        .state_dir(dir)
        .restore_listener(restores.clone())
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "1000")
}

/// Unique names for a test's input, output and application, with the input and output topics
/// created with one partition, and the store's changelog (compacted) when asked for.
fn one_partition_app(prefix: &str, changelog: bool) -> (String, String, String) {
    let bootstrap = bootstrap_servers();
    let (input, output, app) = (
        unique(&format!("{prefix}-in")),
        unique(&format!("{prefix}-out")),
        unique(&format!("{prefix}-app")),
    );
    create_topic(&bootstrap, &input, 1, &[]).unwrap();
    create_topic(&bootstrap, &output, 1, &[]).unwrap();
    if changelog {
        let topic = format!("{app}-counts-changelog");
        create_topic(&bootstrap, &topic, 1, &[("cleanup.policy", "compact")]).unwrap();
    }
    (input, output, app)
}

/// Writes `n` records with distinct keys `k0000000`, … (value: their number + 1) straight to
/// partition 0 of a store's changelog; returns them as the store should hold them.
fn fill_changelog(bootstrap: &str, changelog: &str, n: u64) -> BTreeMap<String, u64> {
    let p = producer(bootstrap);
    let mut expected = BTreeMap::new();
    for i in 0..n {
        let key = format!("k{i:07}");
        send_retrying(
            &p,
            BaseRecord::to(changelog)
                .partition(0)
                .key(&key)
                .payload(&(i + 1).to_be_bytes()[..]),
        )
        .unwrap();
        expected.insert(key, i + 1);
    }
    p.flush(LONG).unwrap();
    expected
}

/// Polls `condition` (every 50 ms) for up to two minutes.
fn wait_until(condition: impl Fn() -> bool) {
    let deadline = Instant::now() + LONG;
    while !condition() {
        assert!(Instant::now() < deadline, "condition not met in {LONG:?}");
        std::thread::sleep(Duration::from_millis(50)); // polling a view of another thread's state
    }
}

fn store_contents(streams: &KafkaStreams) -> BTreeMap<String, u64> {
    streams
        .key_value_store::<String, u64>("counts")
        .unwrap()
        .all()
        .unwrap()
        .collect::<std::result::Result<Vec<_>, _>>()
        .unwrap()
        .into_iter()
        .collect()
}

#[test]
fn recovery_from_changelog_after_the_state_directory_is_deleted() {
    streams_testkit::init_tracing();
    let bootstrap = bootstrap_servers();
    let (input, output, app) = (unique("rec-in"), unique("rec-out"), unique("rec-app"));
    create_topic(&bootstrap, &input, 3, &[]).unwrap();
    create_topic(&bootstrap, &output, 3, &[]).unwrap();
    let dir = std::env::temp_dir().join(unique("rec-state"));
    const FIRST: usize = 600;
    const N: usize = 900;

    let restores = Restores::default();
    let streams = KafkaStreams::new(
        counting_topology(&input, &output),
        config(&app, &dir, &restores),
    )
    .unwrap();
    streams.start().unwrap();
    assert!(streams.wait_for(|s| s == State::Running, LONG));
    produce_range(&producer(&bootstrap), &input, 0, FIRST);
    consume_until(&bootstrap, &output, Isolation::ReadCommitted, LONG, |g| {
        g.len() >= FIRST
    })
    .unwrap();
    // The stores commit right after the transaction; wait until the view shows it.
    wait_until(|| store_contents(&streams) == oracle(FIRST));
    let before = store_contents(&streams);
    assert!(streams.close(LONG));
    assert_eq!(restores.total(), 0, "a fresh application restores nothing");

    std::fs::remove_dir_all(&dir).unwrap();
    let restores = Restores::default();
    let streams = KafkaStreams::new(
        counting_topology(&input, &output),
        config(&app, &dir, &restores),
    )
    .unwrap();
    streams.start().unwrap();
    assert!(streams.wait_for(|s| s == State::Running, LONG));
    let rebuilt = store_contents(&streams);
    let changelog = format!("{app}-counts-changelog");
    let changelog_records =
        read_to_end(&bootstrap, &changelog, Isolation::ReadCommitted, LONG).unwrap();
    eprintln!(
        "recovery: {} keys compared, rebuilt equal: {}; restored {} records from a changelog of {}",
        before.len(),
        rebuilt == before,
        restores.total(),
        changelog_records.len()
    );
    assert_eq!(
        rebuilt, before,
        "store rebuilt from the changelog, key by key"
    );
    assert_eq!(restores.total() as usize, changelog_records.len());
    assert!(
        restores.0.lock().unwrap().iter().all(|e| e.1 == 0),
        "from offset 0"
    );

    produce_range(&producer(&bootstrap), &input, FIRST, N);
    consume_until(&bootstrap, &output, Isolation::ReadCommitted, LONG, |g| {
        g.len() >= N
    })
    .unwrap();
    wait_until(|| store_contents(&streams) == oracle(N));
    assert!(streams.close(LONG));
    let out = read_to_end(&bootstrap, &output, Isolation::ReadCommitted, LONG).unwrap();
    assert_eq!(out.len(), N);
    assert_eq!(
        check_counts(&out, N),
        (0, 0),
        "counts continue 1..n per key"
    );
}

/// Child mode: counting app until asked to stop; prints its restorations and final store.
fn run_child(args: &str) {
    let parts: Vec<&str> = args.split('|').collect();
    let [app, input, output, dir] = parts[..] else {
        panic!("bad child arguments {args}");
    };
    let restores = Restores::default();
    let config = config(app, std::path::Path::new(dir), &restores)
        .transaction_timeout(Duration::from_secs(10));
    let streams = KafkaStreams::new(counting_topology(input, output), config).unwrap();
    streams.start().unwrap();
    assert!(streams.wait_for(|s| s == State::Running, LONG));
    for (p, from, total) in restores.0.lock().unwrap().iter() {
        println!("KSTREAMS-RESTORED partition={p} from={from} records={total}");
    }
    println!("KSTREAMS-APP-RUNNING");
    wait_for_stop_request();
    let closed = streams.close(LONG);
    println!("KSTREAMS-APP-CLOSED clean={closed}");
}

fn field(line: &str, name: &str) -> i64 {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{name}=")))
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn crash_under_exactly_once_restores_only_the_tail() {
    if let Some(args) = child_mode() {
        return run_child(&args);
    }
    let bootstrap = bootstrap_servers();
    let (input, output, app) = (unique("cc-in"), unique("cc-out"), unique("cc-app"));
    create_topic(&bootstrap, &input, 3, &[]).unwrap();
    create_topic(&bootstrap, &output, 3, &[]).unwrap();
    let dir = std::env::temp_dir().join(unique("cc-state"));
    let args = format!("{app}|{input}|{output}|{}", dir.display());
    const N: usize = 3000;
    const KILLS: usize = 4;
    let mut feeder = Some({
        let (bootstrap, input) = (bootstrap.clone(), input.clone());
        std::thread::spawn(move || {
            let p = producer(&bootstrap);
            let start = Instant::now();
            for chunk in (0..N).step_by(50) {
                produce_range(&p, &input, chunk, (chunk + 50).min(N));
                // Pacing the load (250 records/s), not waiting for a condition.
                let due = start + Duration::from_secs_f64((chunk + 50) as f64 / 250.0);
                std::thread::sleep(due.saturating_duration_since(Instant::now()));
            }
        })
    });
    let test = "crash_under_exactly_once_restores_only_the_tail";
    let mut rng = rand::rng();
    let mut restored_per_run = vec![];
    let mut resumed_runs = 0;
    for kill in 0..=KILLS {
        let mut child = ChildProcess::spawn(
            &format!("run{kill}"),
            test,
            &args,
            &[("KAFKA_BOOTSTRAP_SERVERS", bootstrap.as_str())],
        )
        .unwrap();
        let mut restored = 0;
        let mut resumed = false;
        loop {
            let line = child.wait_for_line("KSTREAMS-", LONG).unwrap();
            if line.contains("KSTREAMS-APP-RUNNING") {
                break;
            }
            if line.contains("KSTREAMS-RESTORED") {
                restored += field(&line, "records");
                resumed |= field(&line, "from") > 0;
            }
        }
        restored_per_run.push(restored);
        resumed_runs += usize::from(resumed);
        if kill == KILLS {
            feeder.take().unwrap().join().unwrap();
            consume_until(
                &bootstrap,
                &output,
                Isolation::ReadCommitted,
                Duration::from_secs(240),
                |g| g.len() >= N,
            )
            .unwrap();
            let status = child.stop(LONG).unwrap();
            assert!(status.success(), "final run: {status}");
        } else {
            std::thread::sleep(Duration::from_millis(rng.random_range(300..2500))); // the kill point
            child.kill().unwrap();
        }
    }
    let out = read_to_end(&bootstrap, &output, Isolation::ReadCommitted, LONG).unwrap();
    let changelog = read_to_end(
        &bootstrap,
        &format!("{app}-counts-changelog"),
        Isolation::ReadCommitted,
        LONG,
    )
    .unwrap();
    let (duplicates, missing) = check_counts(&out, N);
    // The final store content, restored by one more start from what is on disk.
    let restores = Restores::default();
    let streams = KafkaStreams::new(
        counting_topology(&input, &output),
        config(&app, &dir, &restores),
    )
    .unwrap();
    streams.start().unwrap();
    assert!(streams.wait_for(|s| s == State::Running, LONG));
    let store = store_contents(&streams);
    assert!(streams.close(LONG));
    eprintln!(
        "crash test with state: kills {KILLS}, input {N}, output {}, duplicates {duplicates}, missing {missing}; \
         changelog {} records; restored per run {restored_per_run:?} ({resumed_runs} runs resumed from a stored offset); \
         store equals oracle: {}",
        out.len(),
        changelog.len(),
        store == oracle(N)
    );
    assert_eq!((duplicates, missing), (0, 0));
    assert_eq!(out.len(), N);
    assert_eq!(store, oracle(N), "store equals the oracle key by key");
    for r in &restored_per_run[1..] {
        assert!(
            (*r as usize) < changelog.len(),
            "a restart replayed only the tail: {r} < {}",
            changelog.len()
        );
    }
    assert!(
        resumed_runs >= 1,
        "at least one restart resumed from a stored offset"
    );
}

#[test]
fn a_migrated_task_restores_from_the_changelog_and_keeps_counting() {
    streams_testkit::init_tracing();
    let bootstrap = bootstrap_servers();
    let (input, output, app) = (unique("mig-in"), unique("mig-out"), unique("mig-app"));
    create_topic(&bootstrap, &input, 4, &[]).unwrap();
    create_topic(&bootstrap, &output, 4, &[]).unwrap();
    const FIRST: usize = 800;
    const N: usize = 1600;
    let (ra, rb) = (Restores::default(), Restores::default());
    let a = KafkaStreams::new(
        counting_topology(&input, &output),
        config(&app, &std::env::temp_dir().join(unique("mig-a")), &ra),
    )
    .unwrap();
    a.start().unwrap();
    assert!(a.wait_for(|s| s == State::Running, LONG));
    produce_range(&producer(&bootstrap), &input, 0, FIRST);
    consume_until(&bootstrap, &output, Isolation::ReadCommitted, LONG, |g| {
        g.len() >= FIRST
    })
    .unwrap();
    assert_eq!(a.store_partitions("counts"), vec![0, 1, 2, 3]);

    let b = KafkaStreams::new(
        counting_topology(&input, &output),
        config(&app, &std::env::temp_dir().join(unique("mig-b")), &rb),
    )
    .unwrap();
    b.start().unwrap();
    let deadline = Instant::now() + LONG;
    while b.store_partitions("counts").len() != 2 || a.store_partitions("counts").len() != 2 {
        assert!(Instant::now() < deadline, "the tasks were not split");
        std::thread::sleep(Duration::from_millis(50)); // polling the instances' task lists
    }
    let moved = b.store_partitions("counts");
    eprintln!(
        "migration: B took partitions {moved:?}, restored {} records",
        rb.total()
    );
    assert!(
        rb.total() > 0,
        "B restored the moved tasks from the changelog"
    );
    // The restoration metrics count what the restore listener saw end (and, were a
    // restoration interrupted by another rebalance, what it restored before; issue 14).
    assert!(b.wait_for(|s| s == State::Running, LONG));
    let m = b.metrics();
    let restored = m.sum("kstreams_restore_records_total", &[]);
    eprintln!("B's restoration metrics: {restored} records restored");
    assert!(restored >= rb.total() as f64, "{m:#?}");
    assert_eq!(m.sum("kstreams_restore_remaining_records", &[]), 0.0);
    produce_range(&producer(&bootstrap), &input, FIRST, N);
    consume_until(&bootstrap, &output, Isolation::ReadCommitted, LONG, |g| {
        g.len() >= N
    })
    .unwrap();
    wait_until(|| {
        let mut merged = store_contents(&a);
        merged.extend(store_contents(&b));
        merged == oracle(N)
    });
    let mut merged = store_contents(&a);
    merged.extend(store_contents(&b));
    assert!(a.close(LONG) && b.close(LONG));
    let out = read_to_end(&bootstrap, &output, Isolation::ReadCommitted, LONG).unwrap();
    assert_eq!(out.len(), N);
    assert_eq!(check_counts(&out, N), (0, 0));
    assert_eq!(
        merged,
        oracle(N),
        "the two instances' stores together equal the oracle"
    );
}

/// Issue 9, item 6: a processor's `init` runs after its stores are restored, so it sees the
/// restored state (here: after the state directory was deleted, the whole store).
#[test]
fn processors_are_initialised_after_restoration() {
    let bootstrap = bootstrap_servers();
    let (input, output, app) = one_partition_app("init", false);
    let dir = std::env::temp_dir().join(unique("init-state"));
    const N: usize = 100;
    let restores = Restores::default();
    let streams = KafkaStreams::new(
        counting_topology(&input, &output),
        config(&app, &dir, &restores),
    )
    .unwrap();
    streams.start().unwrap();
    assert!(streams.wait_for(|s| s == State::Running, LONG));
    produce_range(&producer(&bootstrap), &input, 0, N);
    wait_until(|| store_contents(&streams) == oracle(N));
    assert!(streams.close(LONG));

    std::fs::remove_dir_all(&dir).unwrap();
    let probe = Arc::new(Mutex::new(vec![]));
    let streams = KafkaStreams::new(
        probed_counting_topology(&input, &output, Some(probe.clone())),
        config(&app, &dir, &restores),
    )
    .unwrap();
    streams.start().unwrap();
    assert!(streams.wait_for(|s| s == State::Running, LONG));
    let seen = probe.lock().unwrap().clone();
    assert!(streams.close(LONG));
    assert_eq!(
        seen,
        vec![KEYS],
        "init saw the restored store ({KEYS} keys), once"
    );
}

/// Issue 9, item 4: restoration ends when the position reaches the changelog's end offset,
/// also when a transaction another producer left open sits before the stored offset (the
/// position then starts past the last stable offset, where no end-of-partition event comes).
/// The stored offset gets past the open transaction through an at-least-once run, whose
/// producer writes the changelog without a transaction.
#[test]
fn restoration_ends_when_the_stored_offset_is_past_an_open_transaction() {
    let bootstrap = bootstrap_servers();
    let (input, output, app) = one_partition_app("lso", true);
    let changelog = format!("{app}-counts-changelog");
    // A zombie: a transaction on the changelog that stays open for the whole test.
    let zombie: BaseProducer = streams_testkit::kafka::client_config(&bootstrap)
        .set("transactional.id", unique("lso-zombie"))
        .create()
        .unwrap();
    zombie.init_transactions(LONG).unwrap();
    zombie.begin_transaction().unwrap();
    send_retrying(
        &zombie,
        BaseRecord::to(&changelog)
            .partition(0)
            .key("zombie")
            .payload(&7u64.to_be_bytes()[..]),
    )
    .unwrap();
    zombie.flush(LONG).unwrap();

    let dir = std::env::temp_dir().join(unique("lso-state"));
    let alos = |restores: &Restores| {
        config(&app, &dir, restores)
            .processing_guarantee(kstreams::core::ProcessingGuarantee::AtLeastOnce)
    };
    const N: usize = 40;
    let restores = Restores::default();
    let streams = KafkaStreams::new(counting_topology(&input, &output), alos(&restores)).unwrap();
    streams.start().unwrap();
    assert!(streams.wait_for(|s| s == State::Running, LONG));
    produce_range(&producer(&bootstrap), &input, 0, N);
    wait_until(|| store_contents(&streams) == oracle(N));
    assert!(streams.close(LONG));

    let restores = Restores::default();
    let streams = KafkaStreams::new(counting_topology(&input, &output), alos(&restores)).unwrap();
    streams.start().unwrap();
    let running = streams.wait_for(|s| s == State::Running, Duration::from_secs(60));
    let store = running.then(|| store_contents(&streams));
    assert!(streams.close(LONG));
    let _ = zombie.abort_transaction(Duration::from_secs(5));
    assert!(
        running,
        "restoration ended although the stored offset is past the open transaction"
    );
    assert_eq!(store, Some(oracle(N)));
}

/// Issue 15, item 6: an exactly-once application keeps committing while another producer's
/// transaction is open on its output partition and its changelog partition (on nisshi 0.7.0
/// alone, such commits' offsets were held back: the instance "completed no commit after its
/// first"), and its output reaches read_committed readers once that transaction is aborted on
/// its timeout (the coordinator's job, which the test broker's proxy does for nisshi).
#[test]
fn an_application_keeps_committing_beside_a_foreign_open_transaction() {
    let bootstrap = bootstrap_servers();
    let (input, output, app) = one_partition_app("beside", true);
    let changelog = format!("{app}-counts-changelog");
    let zombie: BaseProducer = streams_testkit::kafka::client_config(&bootstrap)
        .set("transactional.id", unique("beside-zombie"))
        .set("transaction.timeout.ms", "5000")
        .set("socket.timeout.ms", "5000")
        .set("message.timeout.ms", "5000")
        .create()
        .unwrap();
    zombie.init_transactions(LONG).unwrap();
    zombie.begin_transaction().unwrap();
    for topic in [&output, &changelog] {
        send_retrying(
            &zombie,
            BaseRecord::to(topic)
                .partition(0)
                .key("zombie")
                .payload(&7u64.to_be_bytes()[..]),
        )
        .unwrap();
    }
    zombie.flush(LONG).unwrap();

    let dir = std::env::temp_dir().join(unique("beside-state"));
    let restores = Restores::default();
    let eos = config(&app, &dir, &restores)
        .processing_guarantee(kstreams::core::ProcessingGuarantee::ExactlyOnce);
    let streams = KafkaStreams::new(counting_topology(&input, &output), eos).unwrap();
    streams.start().unwrap();
    assert!(streams.wait_for(|s| s == State::Running, LONG));
    const N: usize = 40;
    let p = producer(&bootstrap);
    for i in 0..N {
        // One at a time, so that there are many commits.
        produce_range(&p, &input, i, i + 1);
    }
    wait_until(|| {
        streams_testkit::kafka::committed_offsets(&bootstrap, &app, &input)
            .is_ok_and(|o| o == [Some(N as i64)])
    });
    let out = consume_until(&bootstrap, &output, Isolation::ReadCommitted, LONG, |g| {
        g.len() >= N
    })
    .unwrap();
    assert!(streams.close(LONG));
    let keys: Vec<String> = out.iter().map(Received::key_str).collect();
    assert!(
        !keys.contains(&"zombie".to_string()),
        "the timed-out transaction's record is hidden"
    );
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for r in &out {
        let n = u64::from_be_bytes(r.value.as_deref().unwrap().try_into().unwrap());
        let c = counts.entry(r.key_str()).or_default();
        *c = (*c).max(n);
    }
    assert_eq!(out.len(), N, "one output record per input");
    assert_eq!(counts, oracle(N));
}

/// Child of the restore-crash test: restores with a small memtable budget (so RocksDB
/// flushes while restoring) and SIGKILLs itself in the middle of the restoration, right after
/// a flush wrote a small table file (the offset's column family alone is the danger).
fn run_restore_crash_child(args: &str) {
    let parts: Vec<&str> = args.split('|').collect();
    let [app, input, output, dir] = parts[..] else {
        panic!("bad child arguments {args}");
    };
    struct KillMidway {
        store_dir: std::path::PathBuf,
        batches: Mutex<(u64, usize)>,
    }
    fn small_tables(dir: &std::path::Path) -> usize {
        std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".sst"))
                    .filter(|e| e.metadata().is_ok_and(|m| m.len() < 16 * 1024))
                    .count()
            })
            .unwrap_or(0)
    }
    impl RestoreListener for KillMidway {
        fn on_batch_restored(&self, _: &str, _: i32, last_offset: i64, _: u64) {
            let mut b = self.batches.lock().unwrap();
            b.0 += 1;
            let small = small_tables(&self.store_dir);
            if b.0 >= 3 && (small > b.1 || b.0 >= 15) {
                println!(
                    "KSTREAMS-KILLING batches={} offset={last_offset} small_tables={small}",
                    b.0
                );
                use std::io::Write;
                let _ = std::io::stdout().flush();
                unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
            }
            b.1 = small;
        }
    }
    let listener = KillMidway {
        store_dir: std::path::Path::new(dir)
            .join(app)
            .join("0_0")
            .join("counts"),
        batches: Mutex::new((0, 0)),
    };
    let config = StreamsConfig::new(app, &bootstrap_servers())
        .state_dir(dir)
        .restore_listener(listener)
        .rocksdb_memory(8 << 20, 1 << 20);
    let streams = KafkaStreams::new(counting_topology(input, output), config).unwrap();
    streams.start().unwrap();
    streams.wait_for(|s| s == State::Running, LONG);
    println!("KSTREAMS-APP-RUNNING");
}

/// Issue 9, item 2: a process killed in the middle of a restoration (written with the WAL
/// off) must not leave a stored changelog offset ahead of the data it stored: after a
/// restart the store equals the changelog, key by key.
#[test]
fn a_crash_in_the_middle_of_a_restoration_leaves_a_consistent_store() {
    if let Some(args) = child_mode() {
        return run_restore_crash_child(&args);
    }
    let bootstrap = bootstrap_servers();
    let (input, output, app) = one_partition_app("rk", true);
    let changelog = format!("{app}-counts-changelog");
    const N: u64 = 250_000;
    let expected = fill_changelog(&bootstrap, &changelog, N);
    let dir = std::env::temp_dir().join(unique("rk-state"));
    let args = format!("{app}|{input}|{output}|{}", dir.display());
    let test = "a_crash_in_the_middle_of_a_restoration_leaves_a_consistent_store";
    let mut child = ChildProcess::spawn(
        "restore",
        test,
        &args,
        &[("KAFKA_BOOTSTRAP_SERVERS", bootstrap.as_str())],
    )
    .unwrap();
    let line = child.wait_for_line("KSTREAMS-", LONG).unwrap();
    assert!(line.contains("KSTREAMS-KILLING"), "{line}");
    let _ = child.kill();

    let restores = Restores::default();
    let streams = KafkaStreams::new(
        counting_topology(&input, &output),
        config(&app, &dir, &restores),
    )
    .unwrap();
    streams.start().unwrap();
    assert!(streams.wait_for(|s| s == State::Running, LONG));
    let store = store_contents(&streams);
    assert!(streams.close(LONG));
    let missing = expected.keys().filter(|k| !store.contains_key(*k)).count();
    let wrong = store
        .iter()
        .filter(|(k, v)| expected.get(*k) != Some(v))
        .count();
    eprintln!(
        "restore crash: {line}; restart restored {:?}; store {} keys, missing {missing}, wrong {wrong}",
        restores.0.lock().unwrap(),
        store.len()
    );
    assert_eq!((missing, wrong), (0, 0), "the store equals the changelog");
}

/// Issue 9, item 3: local state of a task that this instance has not owned for longer than
/// the cleanup delay is deleted (its changelog may have compacted away tombstones that copy
/// never saw, and restoring from its stored offset would resurrect deleted keys); within the
/// delay it is kept, and a restart restores only the tail.
#[test]
fn state_unowned_for_longer_than_the_cleanup_delay_is_rebuilt_from_the_changelog() {
    let bootstrap = bootstrap_servers();
    let (input, output, app) = one_partition_app("cl", false);
    let dir = std::env::temp_dir().join(unique("cl-state"));
    const DELAY: Duration = Duration::from_secs(2);
    let run = |n: usize| {
        let restores = Restores::default();
        let streams = KafkaStreams::new(
            counting_topology(&input, &output),
            config(&app, &dir, &restores).state_cleanup_delay(DELAY),
        )
        .unwrap();
        streams.start().unwrap();
        assert!(streams.wait_for(|s| s == State::Running, LONG));
        if n > 0 {
            produce_range(&producer(&bootstrap), &input, 0, n);
        }
        wait_until(|| store_contents(&streams) == oracle(40));
        assert!(streams.close(LONG));
        let restored = restores.0.lock().unwrap().clone();
        restored
    };
    assert_eq!(run(40), vec![(0, 0, 0)], "a fresh start restores nothing");
    let quick = run(0);
    assert_eq!(quick.len(), 1);
    assert!(
        quick[0].1 > 0 && quick[0].2 == 0,
        "restarted within the delay: resumes from the stored offset, nothing to replay: {quick:?}"
    );
    // The delay must pass: that is the condition under test.
    let due = Instant::now() + DELAY + Duration::from_millis(200);
    wait_until(|| Instant::now() >= due);
    let later = run(0);
    let changelog = read_to_end(
        &bootstrap,
        &format!("{app}-counts-changelog"),
        Isolation::ReadCommitted,
        LONG,
    )
    .unwrap();
    eprintln!("cleanup: restart within the delay restored {quick:?}; after the delay {later:?}");
    assert_eq!(
        later,
        vec![(0, 0, changelog.len() as u64)],
        "after the delay the state was deleted and rebuilt from the changelog's start"
    );
}

/// Issue 9, item 3: a changelog deleted and recreated while the application was stopped no
/// longer holds the stored offset. Before, the restore consumer's `auto.offset.reset=earliest`
/// silently replayed the new topic onto the old state (deleted keys came back); now the
/// out-of-range offset is detected, the store wiped and rebuilt from the new changelog alone,
/// as Kafka Streams does when a task's checkpoint is out of range.
#[test]
fn a_deleted_and_recreated_changelog_rebuilds_the_store_from_the_new_changelog() {
    let bootstrap = bootstrap_servers();
    let (input, output, app) = one_partition_app("rc", true);
    let changelog = format!("{app}-counts-changelog");
    let dir = std::env::temp_dir().join(unique("rc-state"));
    let start = || {
        let restores = Restores::default();
        let streams = KafkaStreams::new(
            counting_topology(&input, &output),
            config(&app, &dir, &restores),
        )
        .unwrap();
        streams.start().unwrap();
        assert!(streams.wait_for(|s| s == State::Running, LONG));
        (streams, restores)
    };
    let (streams, _) = start();
    produce_range(&producer(&bootstrap), &input, 0, 60);
    wait_until(|| store_contents(&streams) == oracle(60));
    assert!(streams.close(LONG));
    let old_len = read_to_end(&bootstrap, &changelog, Isolation::ReadCommitted, LONG)
        .unwrap()
        .len();

    // Someone deletes the changelog and recreates it with three records of other keys.
    delete_topic(&bootstrap, &changelog).unwrap();
    create_topic(&bootstrap, &changelog, 1, &[("cleanup.policy", "compact")]).unwrap();
    let expected = fill_changelog(&bootstrap, &changelog, 3);

    let (streams, restores) = start();
    let got = store_contents(&streams);
    let restored = restores.0.lock().unwrap().clone();
    eprintln!(
        "recreated changelog: old changelog {old_len} records, restorations {restored:?}, \
         store now {got:?}"
    );
    assert!(streams.close(LONG));
    assert_eq!(
        got, expected,
        "the store holds the new changelog's records and nothing of the old state"
    );
}

/// Issue 9, item 5: restoration runs between processing rounds, not inside the rebalance
/// callback, so a restoration longer than `max.poll.interval.ms` does not get the member
/// thrown out of the group (which closed the tasks and restored them again, over and over).
/// The restoration is slowed down by its listener (a slow disk, a slow broker).
#[test]
fn a_restoration_longer_than_the_poll_interval_runs_once() {
    let bootstrap = bootstrap_servers();
    let (input, output, app) = one_partition_app("slow", true);
    let changelog = format!("{app}-counts-changelog");
    const N: u64 = 100_000;
    fill_changelog(&bootstrap, &changelog, N);

    #[derive(Clone, Default)]
    struct Slow(Arc<Mutex<(usize, u64)>>);
    impl RestoreListener for Slow {
        fn on_restore_start(&self, _: &str, _: i32, _: i64) {
            self.0.lock().unwrap().0 += 1;
        }
        fn on_batch_restored(&self, _: &str, _: i32, _: i64, records: u64) {
            self.0.lock().unwrap().1 += records;
            // A slow restoration: 10 batches take about 8 s, more than max.poll.interval.ms.
            std::thread::sleep(Duration::from_millis(800));
        }
    }
    let slow = Slow::default();
    let dir = std::env::temp_dir().join(unique("slow-state"));
    let config = StreamsConfig::new(&app, &bootstrap)
        .state_dir(&dir)
        .restore_listener(slow.clone())
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "1000")
        .set("max.poll.interval.ms", "6000");
    let streams = KafkaStreams::new(counting_topology(&input, &output), config).unwrap();
    streams.start().unwrap();
    assert!(streams.wait_for(|s| s == State::Running, LONG));
    let keys = streams
        .key_value_store::<String, u64>("counts")
        .unwrap()
        .all()
        .unwrap()
        .collect::<std::result::Result<Vec<_>, _>>()
        .unwrap()
        .len();
    produce_range(&producer(&bootstrap), &input, 0, 10);
    consume_until(&bootstrap, &output, Isolation::ReadCommitted, LONG, |g| {
        g.len() >= 10
    })
    .unwrap();
    assert!(streams.close(LONG));
    let (starts, restored) = *slow.0.lock().unwrap();
    eprintln!("slow restoration: {starts} start(s), {restored} records restored, {keys} keys");
    assert_eq!(keys as u64, N);
    assert_eq!(
        starts, 1,
        "restored once: the member was not thrown out during the restoration"
    );
}

/// Issue 27, finding 3: restoration ends at the changelog's high watermark, read committed, so
/// that a transaction still open on the changelog when a new owner starts restoring (the
/// previous owner's last commit, whose end marker is late) is in the new owner's store once it
/// commits, and is never lost (Kafka Streams: `StoreChangelogReader` lists end offsets
/// read_uncommitted since KAFKA-10167). Instance A counts `k` to 5 and stops; a transactional
/// producer standing in for A's late commit writes `k = 6` to the changelog and holds its
/// transaction open; B, on a fresh state directory, starts restoring; then the transaction
/// commits; one more record for `k` must count 7. Restoring only to the last stable offset,
/// B ends before the open transaction and counts 6.
#[test]
fn restoration_waits_for_a_transaction_open_on_the_changelog() {
    use rdkafka::producer::Producer as _;
    let bootstrap = bootstrap_servers();
    let (input, output, app) = (unique("rw-in"), unique("rw-out"), unique("rw-app"));
    create_topic(&bootstrap, &input, 1, &[]).unwrap();
    create_topic(&bootstrap, &output, 1, &[]).unwrap();
    let p = producer(&bootstrap);
    let start = |restores: Restores| {
        let config = StreamsConfig::new(&app, &bootstrap)
            .state_dir(std::env::temp_dir().join(unique("rw-state")))
            .restore_listener(restores);
        let streams = KafkaStreams::new(counting_topology(&input, &output), config).unwrap();
        streams.start().unwrap();
        streams
    };
    let counts_of = |n: usize| {
        consume_until(&bootstrap, &output, Isolation::ReadCommitted, LONG, |got| {
            got.len() >= n
        })
        .unwrap()
        .iter()
        .map(|r| u64::from_be_bytes(r.value.clone().unwrap().try_into().unwrap()))
        .collect::<Vec<u64>>()
    };

    // A counts k to 5 and stops cleanly.
    let a = start(Restores::default());
    assert!(a.wait_for(|s| s == State::Running, LONG));
    for _ in 0..5 {
        send_retrying(&p, BaseRecord::to(&input).key("k").payload("v")).unwrap();
    }
    p.flush(Duration::from_secs(30)).unwrap();
    assert_eq!(counts_of(5), [1, 2, 3, 4, 5]);
    assert!(a.close(LONG));

    // A transaction on the changelog, open while B starts restoring.
    let changelog = kstreams::core::store::changelog_topic(&app, "counts");
    let late: BaseProducer = streams_testkit::kafka::client_config(&bootstrap)
        .set("transactional.id", unique("rw-late"))
        .create()
        .unwrap();
    late.init_transactions(Duration::from_secs(30)).unwrap();
    late.begin_transaction().unwrap();
    let six = 6u64.to_be_bytes();
    send_retrying(
        &late,
        BaseRecord::to(&changelog)
            .partition(0)
            .key("k")
            .payload(&six[..]),
    )
    .unwrap();
    late.flush(Duration::from_secs(30)).unwrap();

    // B restores; the transaction commits once B has read all it can read committed: once B
    // says it waits for the transaction (the restoration's gauge), or, restoring only to the
    // last stable offset, once B runs.
    let b = start(Restores::default());
    let deadline = Instant::now() + LONG;
    loop {
        let waiting = b
            .metrics()
            .sum("kstreams_restore_waiting_on_transactions", &[]);
        if waiting > 0.0 || b.state() == State::Running {
            break;
        }
        assert!(Instant::now() < deadline, "B neither waits nor runs");
        std::thread::yield_now();
    }
    late.commit_transaction(Duration::from_secs(30)).unwrap();
    assert!(b.wait_for(|s| s == State::Running, LONG));
    send_retrying(&p, BaseRecord::to(&input).key("k").payload("v")).unwrap();
    p.flush(Duration::from_secs(30)).unwrap();
    assert_eq!(
        counts_of(6).last(),
        Some(&7),
        "the committed update of the open transaction is in B's store"
    );
    assert!(b.close(LONG));
}

/// Keeps the latest value of each key in store `latest` (with a changelog).
struct Latest;

impl Processor for Latest {
    type KeyIn = String;
    type ValueIn = String;
    type KeyOut = String;
    type ValueOut = String;

    fn process(
        &mut self,
        record: Record<String, String>,
        ctx: &mut ProcessorContext<'_, String, String>,
    ) -> Result<()> {
        let store = ctx.state_store::<KeyValueStore<String, String>>("latest")?;
        store.put(record.key(), record.value())
    }
}

/// Batches restored, as (records, last offset).
#[derive(Default, Clone)]
struct Batches(Arc<Mutex<Vec<u64>>>);

impl RestoreListener for Batches {
    fn on_batch_restored(&self, _store: &str, _partition: i32, _last: i64, records: u64) {
        self.0.lock().unwrap().push(records);
    }
}

/// Issue 27, finding 13: restoration batches are bounded by bytes as well as by records, so that
/// a changelog of large values is not held whole in memory before it is written. 100 values of
/// 512 KiB restore in batches of at most 16 MiB (32 of them); before, in one batch of 100.
#[test]
fn restoration_batches_are_bounded_by_bytes() {
    let bootstrap = bootstrap_servers();
    let (input, app) = (unique("rb-in"), unique("rb-app"));
    create_topic(&bootstrap, &input, 1, &[]).unwrap();
    let topology = || {
        TopologyBuilder::new()
            .add_source("in", Source::new([input.as_str()], Utf8, Utf8))
            .add_processor("latest", || Latest, ["in"])
            .add_state_store(
                KeyValueStore::<String, String>::builder("latest", Utf8, Utf8),
                ["latest"],
            )
            .build()
            .unwrap()
    };
    let start = |batches: Batches| {
        let config = StreamsConfig::new(&app, &bootstrap)
            .state_dir(std::env::temp_dir().join(unique("rb-state")))
            .restore_listener(batches);
        let streams = KafkaStreams::new(topology(), config).unwrap();
        streams.start().unwrap();
        assert!(streams.wait_for(|s| s == State::Running, LONG));
        streams
    };
    let a = start(Batches::default());
    let p = producer(&bootstrap);
    let big = "x".repeat(512 << 10);
    for i in 0..100 {
        let key = format!("k{i}");
        send_retrying(&p, BaseRecord::to(&input).key(&key).payload(&big)).unwrap();
    }
    p.flush(Duration::from_secs(60)).unwrap();
    // Until A has written all of them to its changelog.
    let changelog = kstreams::core::store::changelog_topic(&app, "latest");
    consume_until(
        &bootstrap,
        &changelog,
        Isolation::ReadCommitted,
        LONG,
        |got| got.len() >= 100,
    )
    .unwrap();
    assert!(a.close(LONG));

    let batches = Batches::default();
    let b = start(batches.clone());
    let sizes = batches.0.lock().unwrap().clone();
    assert_eq!(sizes.iter().sum::<u64>(), 100, "{sizes:?}");
    assert!(
        sizes.iter().all(|&n| n <= 32),
        "batches of {sizes:?} records of 512 KiB"
    );
    assert!(b.close(LONG));
}

/// Issue 27, finding 7: a store view from `KafkaStreams::key_value_store` fails with a clear
/// error once a partition it reads has moved to another instance, as Kafka Streams' store
/// views do ("may have migrated to another instance"), never answering from a task this
/// instance no longer runs. A runs both partitions and makes a view; B joins and takes one.
#[test]
fn a_store_view_fails_once_its_task_moved_away() {
    let bootstrap = bootstrap_servers();
    let (input, output, app) = (unique("mv-in"), unique("mv-out"), unique("mv-app"));
    create_topic(&bootstrap, &input, 2, &[]).unwrap();
    create_topic(&bootstrap, &output, 2, &[]).unwrap();
    let start = || {
        let config = StreamsConfig::new(&app, &bootstrap)
            .state_dir(std::env::temp_dir().join(unique("mv-state")));
        let streams = KafkaStreams::new(counting_topology(&input, &output), config).unwrap();
        streams.start().unwrap();
        assert!(streams.wait_for(|s| s == State::Running, LONG));
        streams
    };
    let a = start();
    produce_range(&producer(&bootstrap), &input, 0, KEYS);
    consume_until(&bootstrap, &output, Isolation::ReadCommitted, LONG, |got| {
        got.len() >= KEYS
    })
    .unwrap();
    let view = a.key_value_store::<String, u64>("counts").unwrap();
    assert_eq!(view.partitions(), [0, 1]);
    assert!(view.get(&key_of(0)).is_ok());

    let b = start();
    let deadline = Instant::now() + LONG;
    while a.store_partitions("counts").len() != 1
        || a.state() != State::Running
        || b.state() != State::Running
    {
        assert!(Instant::now() < deadline, "B never takes a partition");
        // Polling the instances' state, which a rebalance changes.
        std::thread::sleep(Duration::from_millis(100));
    }
    let moved: Vec<String> = (0..KEYS)
        .map(|i| match view.get(&key_of(i)) {
            Ok(v) => format!("{}: Ok({v:?})", key_of(i)),
            Err(e) => e.to_string(),
        })
        .collect();
    assert!(
        moved.iter().all(|m| m.contains("moved")),
        "answers of the old view: {moved:?}"
    );
    // A new view reads the partition A still runs.
    let fresh = a.key_value_store::<String, u64>("counts").unwrap();
    assert_eq!(fresh.partitions(), a.store_partitions("counts"));
    assert!(a.close(LONG) && b.close(LONG));
}
