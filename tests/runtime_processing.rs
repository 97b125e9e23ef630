//! The runtime against the real broker: a multi-partition topology under both guarantees, poison
//! records under each handler, a crash test with SIGKILL, and two instances sharing the work.
//!
//! The crash and takeover tests run the application in child processes (this test binary run
//! again with `KSTREAMS_TEST_CHILD` set; see `streams_testkit::child`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kstreams::core::handlers::{headers, DeadLetterTopic, LogAndContinue, LogAndFail};
use kstreams::core::serde::{BigEndian, Utf8};
use kstreams::core::{
    Error, Headers, KafkaStreams, ProcessingGuarantee, Processor, ProcessorContext, Record, Result,
    Sink, Source, State, StreamsConfig, Topology, TopologyBuilder,
};
use rand::Rng;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use streams_testkit::child::{child_mode, wait_for_stop_request, ChildProcess};
use streams_testkit::kafka::{
    committed_offsets, consume_until, create_topic, idempotent_producer, partition_census,
    read_to_end, send_retrying, Isolation, Received,
};
use streams_testkit::{bootstrap_servers, unique};

const LONG: Duration = Duration::from_secs(120);

/// Appends `:done` to each value and tags the record with the instance that processed it.
struct Tag {
    instance: String,
}

impl Processor for Tag {
    type KeyIn = String;
    type ValueIn = String;
    type KeyOut = String;
    type ValueOut = String;

    fn process(
        &mut self,
        record: Record<String, String>,
        ctx: &mut ProcessorContext<'_, String, String>,
    ) -> Result<()> {
        let task = ctx.task_id().to_string();
        let value = format!("{}:done", record.value());
        let headers = Headers::new()
            .with("instance", Some(self.instance.as_bytes()))
            .with("task", Some(task.as_bytes()));
        ctx.forward(record.with_value(value).with_headers(headers))
    }
}

fn tag_topology(input: &str, output: &str, instance: &str) -> Topology {
    let instance = instance.to_string();
    TopologyBuilder::new()
        .add_source("in", Source::new([input], Utf8, Utf8))
        .add_processor(
            "tag",
            move || Tag {
                instance: instance.clone(),
            },
            ["in"],
        )
        .add_sink("out", Sink::new(output, Utf8, Utf8), ["tag"])
        .build()
        .unwrap()
}

fn state_dir() -> std::path::PathBuf {
    std::env::temp_dir().join(unique("kstreams-state"))
}

fn producer(bootstrap: &str) -> BaseProducer {
    idempotent_producer(bootstrap).unwrap()
}

/// Sends records `from..to` as key `k<i % 23>`, value `v<i>`.
fn produce_range(p: &BaseProducer, topic: &str, from: usize, to: usize) {
    for i in from..to {
        let key = format!("k{}", i % 23);
        let value = format!("v{i}");
        send_retrying(p, BaseRecord::to(topic).key(&key).payload(&value)).unwrap();
    }
    p.flush(Duration::from_secs(30)).unwrap();
}

/// Counts each value; the oracle for "every input exactly once".
fn census(records: &[Received]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for r in records {
        *counts.entry(r.value_str()).or_insert(0) += 1;
    }
    counts
}

struct Verdict {
    duplicates: usize,
    missing: usize,
    unexpected: usize,
}

fn check_exactly_once(records: &[Received], expected: usize) -> Verdict {
    let counts = census(records);
    let wanted: BTreeSet<String> = (0..expected).map(|i| format!("v{i}:done")).collect();
    Verdict {
        duplicates: counts.values().filter(|&&c| c > 1).map(|c| c - 1).sum(),
        missing: wanted.iter().filter(|v| !counts.contains_key(*v)).count(),
        unexpected: counts.keys().filter(|v| !wanted.contains(*v)).count(),
    }
}

fn header<'a>(r: &'a Received, name: &str) -> Option<&'a [u8]> {
    r.headers
        .iter()
        .rev()
        .find(|(k, _)| k == name)
        .and_then(|(_, v)| v.as_deref())
}

fn run_multi_partition(guarantee: ProcessingGuarantee) {
    streams_testkit::init_tracing();
    let bootstrap = bootstrap_servers();
    let (input, output, app) = (unique("in"), unique("out"), unique("app"));
    create_topic(&bootstrap, &input, 3, &[]).unwrap();
    create_topic(&bootstrap, &output, 3, &[]).unwrap();
    // Two stream threads; one under at-least-once on nisshi, the fallback test broker, where
    // two threads mean two idempotent producers per output partition, which nisshi mishandles
    // (docs/BROKER.md).
    let nisshi = streams_testkit::BrokerKind::from_env() == streams_testkit::BrokerKind::Nisshi;
    let threads = match guarantee {
        ProcessingGuarantee::ExactlyOnce => 2,
        ProcessingGuarantee::AtLeastOnce if nisshi => 1,
        ProcessingGuarantee::AtLeastOnce => 2,
    };
    let config = StreamsConfig::new(&app, &bootstrap)
        .processing_guarantee(guarantee)
        .num_stream_threads(threads)
        .commit_interval(Duration::from_millis(100))
        .state_dir(state_dir());
    let streams = KafkaStreams::new(tag_topology(&input, &output, "solo"), config).unwrap();
    let transitions = Arc::new(Mutex::new(vec![]));
    let seen = transitions.clone();
    streams.set_state_listener(move |old, new| seen.lock().unwrap().push((old, new)));
    streams.start().unwrap();
    assert!(
        streams.wait_for(|s| s == State::Running, LONG),
        "not running: {:?}",
        streams.state()
    );
    assert_eq!(streams.assigned_tasks().len(), 3, "one task per partition");

    const N: usize = 600;
    // At-least-once writes no transactions; read its output as a plain consumer would.
    let isolation = match guarantee {
        ProcessingGuarantee::ExactlyOnce => Isolation::ReadCommitted,
        ProcessingGuarantee::AtLeastOnce => Isolation::ReadUncommitted,
    };
    produce_range(&producer(&bootstrap), &input, 0, N);
    if let Err(e) = consume_until(&bootstrap, &output, isolation, LONG, |got| {
        census(got).len() >= N
    }) {
        // Who missed what (docs/BROKER.md, records skipped with idempotent producers): the
        // application (its committed input offsets) or the reader (a fresh one's view).
        panic!(
            "{e:#}\ncommitted input offsets {:?}; a fresh reader gets (records, last offset) \
             per output partition {}; state {:?}",
            committed_offsets(&bootstrap, &app, &input),
            partition_census(&bootstrap, &output, isolation),
            streams.state()
        );
    }
    assert!(streams.close(Duration::from_secs(60)), "close timed out");
    assert_eq!(streams.state(), State::NotRunning);

    let out = read_to_end(&bootstrap, &output, isolation, LONG).unwrap();
    let verdict = check_exactly_once(&out, N);
    let mut per_partition = BTreeMap::new();
    for r in &out {
        *per_partition.entry(r.partition).or_insert(0) += 1;
    }
    assert_eq!(
        (verdict.duplicates, verdict.missing, verdict.unexpected),
        (0, 0, 0),
        "records per output partition: {per_partition:?}"
    );
    assert_eq!(out.len(), N);
    // Record by record: key kept, value transformed, per-key order as produced.
    let mut per_key: HashMap<String, Vec<usize>> = HashMap::new();
    for r in &out {
        let v = r.value_str();
        let i: usize = v
            .strip_prefix('v')
            .and_then(|s| s.strip_suffix(":done"))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(r.key_str(), format!("k{}", i % 23), "key of {v}");
        assert_eq!(header(r, "instance"), Some(&b"solo"[..]));
        per_key.entry(r.key_str()).or_default().push(i);
    }
    for (k, seq) in &per_key {
        assert!(seq.windows(2).all(|w| w[0] < w[1]), "order of {k}: {seq:?}");
    }
    let committed: i64 = committed_offsets(&bootstrap, &app, &input)
        .unwrap()
        .into_iter()
        .map(|o| o.unwrap_or(0))
        .sum();
    assert_eq!(committed, N as i64, "offsets committed for every input");
    let t = transitions.lock().unwrap().clone();
    assert_eq!(
        t.first(),
        Some(&(State::Created, State::Rebalancing)),
        "{t:?}"
    );
    assert!(t.contains(&(State::Rebalancing, State::Running)), "{t:?}");
    assert_eq!(
        &t[t.len() - 2..],
        &[
            (State::Running, State::PendingShutdown),
            (State::PendingShutdown, State::NotRunning)
        ],
        "{t:?}"
    );
}

#[test]
fn multi_partition_topology_exactly_once() {
    run_multi_partition(ProcessingGuarantee::ExactlyOnce);
}

#[test]
fn multi_partition_topology_at_least_once() {
    run_multi_partition(ProcessingGuarantee::AtLeastOnce);
}

/// Doubles u64 values; the input has one value that is not 8 bytes.
struct Double;

impl Processor for Double {
    type KeyIn = String;
    type ValueIn = u64;
    type KeyOut = String;
    type ValueOut = u64;
    fn process(
        &mut self,
        r: Record<String, u64>,
        ctx: &mut ProcessorContext<'_, String, u64>,
    ) -> Result<()> {
        let v = r.value() * 2;
        ctx.forward(r.with_value(v))
    }
}

enum Handler {
    Continue,
    DeadLetter(String),
    Fail,
}

/// Writes values 1..=5 around a 3-byte poison record at offset 2, and runs the doubling topology
/// with `handler`. Returns the application, the output read so far and the topic names.
fn run_poison(handler: Handler) -> (KafkaStreams, String, String, String) {
    streams_testkit::init_tracing();
    let bootstrap = bootstrap_servers();
    let (input, output, app) = (unique("poison-in"), unique("poison-out"), unique("app"));
    create_topic(&bootstrap, &input, 1, &[]).unwrap();
    create_topic(&bootstrap, &output, 1, &[]).unwrap();
    let p = producer(&bootstrap);
    let mut values: Vec<Vec<u8>> = (1u64..=5).map(|v| v.to_be_bytes().to_vec()).collect();
    values.insert(2, vec![1, 2, 3]);
    for v in &values {
        send_retrying(&p, BaseRecord::to(&input).key("k").payload(v)).unwrap();
    }
    p.flush(Duration::from_secs(30)).unwrap();
    let topology = TopologyBuilder::new()
        .add_source(
            "in",
            Source::<String, u64>::new([input.as_str()], Utf8, BigEndian),
        )
        .add_processor("double", || Double, ["in"])
        .add_sink(
            "out",
            Sink::<String, u64>::new(output.as_str(), Utf8, BigEndian),
            ["double"],
        )
        .build()
        .unwrap();
    let config = StreamsConfig::new(&app, &bootstrap).state_dir(state_dir());
    let config = match handler {
        Handler::Continue => config.deserialization_error_handler(LogAndContinue),
        Handler::DeadLetter(t) => config.deserialization_error_handler(DeadLetterTopic(t)),
        Handler::Fail => config.deserialization_error_handler(LogAndFail),
    };
    let streams = KafkaStreams::new(topology, config).unwrap();
    streams.start().unwrap();
    (streams, input, output, app)
}

fn doubled(records: &[Received]) -> Vec<u64> {
    records
        .iter()
        .map(|r| u64::from_be_bytes(r.value.as_deref().unwrap().try_into().unwrap()))
        .collect()
}

#[test]
fn poison_record_log_and_continue_skips_it() {
    let (streams, input, output, app) = run_poison(Handler::Continue);
    let bootstrap = bootstrap_servers();
    let got = consume_until(&bootstrap, &output, Isolation::ReadCommitted, LONG, |g| {
        g.len() >= 5
    })
    .unwrap();
    assert_eq!(doubled(&got), vec![2, 4, 6, 8, 10]);
    assert!(streams.close(Duration::from_secs(60)));
    assert_eq!(streams.state(), State::NotRunning);
    assert_eq!(
        committed_offsets(&bootstrap, &app, &input).unwrap(),
        vec![Some(6)],
        "the poison record's offset is committed past"
    );
}

#[test]
fn poison_record_goes_to_the_dead_letter_topic() {
    let bootstrap = bootstrap_servers();
    let dlq = unique("dlq");
    create_topic(&bootstrap, &dlq, 1, &[]).unwrap();
    let (streams, input, output, _app) = run_poison(Handler::DeadLetter(dlq.clone()));
    let got = consume_until(&bootstrap, &output, Isolation::ReadCommitted, LONG, |g| {
        g.len() >= 5
    })
    .unwrap();
    assert_eq!(doubled(&got), vec![2, 4, 6, 8, 10]);
    let dead = consume_until(&bootstrap, &dlq, Isolation::ReadCommitted, LONG, |g| {
        !g.is_empty()
    })
    .unwrap();
    assert!(streams.close(Duration::from_secs(60)));
    assert_eq!(dead.len(), 1);
    let d = &dead[0];
    assert_eq!(d.value.as_deref(), Some(&[1u8, 2, 3][..]), "original bytes");
    assert_eq!(d.key.as_deref(), Some(&b"k"[..]));
    assert_eq!(header(d, headers::TOPIC), Some(input.as_bytes()));
    assert_eq!(header(d, headers::PARTITION), Some(&b"0"[..]));
    assert_eq!(header(d, headers::OFFSET), Some(&b"2"[..]));
    let message = String::from_utf8_lossy(header(d, headers::MESSAGE).unwrap()).into_owned();
    assert!(message.contains("BigEndian"), "{message}");
}

#[test]
fn poison_record_log_and_fail_stops_with_a_clear_error() {
    let (streams, input, output, app) = run_poison(Handler::Fail);
    let bootstrap = bootstrap_servers();
    if !streams.wait_for(|s| s == State::Error, LONG) {
        // Seen once in a full run on Kafka: still Running after 120 s. What the instance and
        // the group say, for the next time.
        let metrics: Vec<String> = streams
            .metrics_text()
            .lines()
            .filter(|l| {
                !l.starts_with('#')
                    && (l.contains("tasks") || l.contains("records") || l.contains("lag"))
            })
            .map(str::to_string)
            .collect();
        panic!(
            "state {:?} after {LONG:?}, never Error; committed input offsets {:?}; input {}; \
             metrics {metrics:#?}",
            streams.state(),
            committed_offsets(&bootstrap, &app, &input),
            streams_testkit::kafka::partition_census(
                &bootstrap,
                &input,
                Isolation::ReadUncommitted
            ),
        );
    }
    let error = streams.error().expect("an error is recorded");
    match error.root() {
        Error::Deserialization {
            topic,
            partition,
            offset,
            message,
            ..
        } => {
            assert_eq!(
                (topic.as_str(), *partition, *offset),
                (input.as_str(), 0, 2)
            );
            assert!(message.contains("BigEndian"), "{message}");
        }
        other => panic!("unexpected error: {other}"),
    }
    // Nothing past the poison record is committed: it is not lost, a restart meets it again.
    let committed = committed_offsets(&bootstrap, &app, &input).unwrap();
    assert!(
        committed[0].unwrap_or(0) <= 2,
        "committed past the poison record: {committed:?}"
    );
    let out = read_to_end(&bootstrap, &output, Isolation::ReadCommitted, LONG).unwrap();
    assert!(
        doubled(&out).iter().all(|v| [2, 4].contains(v)),
        "only records before the poison one may be committed: {:?}",
        doubled(&out)
    );
}

/// Child mode: runs the tag topology until asked to stop.
/// Arguments: `app|input|output|state dir|instance label|threads`.
fn run_child(args: &str) {
    streams_testkit::init_tracing();
    let parts: Vec<&str> = args.split('|').collect();
    let [app, input, output, dir, label, threads] = parts[..] else {
        panic!("bad child arguments {args}");
    };
    let bootstrap = bootstrap_servers();
    let config = StreamsConfig::new(app, &bootstrap)
        .num_stream_threads(threads.parse().unwrap())
        .state_dir(dir)
        .transaction_timeout(Duration::from_secs(10))
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "1000");
    let streams = KafkaStreams::new(tag_topology(input, output, label), config).unwrap();
    streams.start().unwrap();
    assert!(streams.wait_for(|s| s == State::Running, LONG));
    println!(
        "KSTREAMS-APP-RUNNING {label} tasks={:?}",
        streams.assigned_tasks()
    );
    wait_for_stop_request();
    let closed = streams.close(Duration::from_secs(60));
    println!("KSTREAMS-APP-CLOSED {label} clean={closed}");
}

fn spawn_app(
    test: &str,
    label: &str,
    app: &str,
    input: &str,
    output: &str,
    dir: &str,
) -> ChildProcess {
    let bootstrap = bootstrap_servers();
    // The runtime's own log lines (to the child's stdout), for a failing test's report.
    let log = std::env::var("RUST_LOG").unwrap_or_else(|_| "streams_core=info".into());
    ChildProcess::spawn(
        label,
        test,
        &format!("{app}|{input}|{output}|{dir}|{label}|1"),
        &[
            ("KAFKA_BOOTSTRAP_SERVERS", bootstrap.as_str()),
            ("RUST_LOG", log.as_str()),
        ],
    )
    .unwrap()
}

/// Produces records `from..to` in the background at about `per_second`.
fn produce_in_background(
    topic: &str,
    from: usize,
    to: usize,
    per_second: usize,
) -> std::thread::JoinHandle<()> {
    let (bootstrap, topic) = (bootstrap_servers(), topic.to_string());
    std::thread::spawn(move || {
        let p = producer(&bootstrap);
        let start = Instant::now();
        let step = 50;
        let mut i = from;
        while i < to {
            let end = (i + step).min(to);
            produce_range(&p, &topic, i, end);
            i = end;
            // Pacing the load, not waiting for a condition.
            let due = start + Duration::from_secs_f64((i - from) as f64 / per_second as f64);
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
        }
    })
}

#[test]
fn crash_test_exactly_once_under_sigkill() {
    if let Some(args) = child_mode() {
        return run_child(&args);
    }
    let bootstrap = bootstrap_servers();
    let (input, output, app) = (unique("crash-in"), unique("crash-out"), unique("crash-app"));
    create_topic(&bootstrap, &input, 3, &[]).unwrap();
    create_topic(&bootstrap, &output, 3, &[]).unwrap();
    let dir = state_dir();
    let dir = dir.to_str().unwrap();
    const N: usize = 4000;
    const KILLS: usize = 4;
    let feeder = produce_in_background(&input, 0, N, 250);
    let mut rng = rand::rng();
    for kill in 0..KILLS {
        let mut child = spawn_app(
            "crash_test_exactly_once_under_sigkill",
            &format!("run{kill}"),
            &app,
            &input,
            &output,
            dir,
        );
        child.wait_for_line("KSTREAMS-APP-RUNNING", LONG).unwrap();
        let after = Duration::from_millis(rng.random_range(300..2500));
        std::thread::sleep(after); // the random kill point
        child.kill().unwrap();
        eprintln!("kill {} after {:?} of running", kill + 1, after);
    }
    let mut last = spawn_app(
        "crash_test_exactly_once_under_sigkill",
        "final",
        &app,
        &input,
        &output,
        dir,
    );
    last.wait_for_line("KSTREAMS-APP-RUNNING", LONG).unwrap();
    feeder.join().unwrap();
    consume_until(
        &bootstrap,
        &output,
        Isolation::ReadCommitted,
        Duration::from_secs(240),
        |g| census(g).len() >= N,
    )
    .unwrap();
    let status = last.stop(Duration::from_secs(90)).unwrap();
    assert!(status.success(), "final run exit: {status}");

    let committed = read_to_end(&bootstrap, &output, Isolation::ReadCommitted, LONG).unwrap();
    let all = read_to_end(&bootstrap, &output, Isolation::ReadUncommitted, LONG).unwrap();
    let verdict = check_exactly_once(&committed, N);
    eprintln!(
        "crash test: kills {KILLS}, input records {N}, output read_committed {}, duplicates {}, missing {}, unexpected {}; \
         written in all (read_uncommitted, incl. aborted) {}",
        committed.len(),
        verdict.duplicates,
        verdict.missing,
        verdict.unexpected,
        all.len()
    );
    assert_eq!(
        (verdict.duplicates, verdict.missing, verdict.unexpected),
        (0, 0, 0)
    );
    assert_eq!(committed.len(), N);
}

#[test]
fn two_instances_split_partitions_and_take_over() {
    if let Some(args) = child_mode() {
        return run_child(&args);
    }
    let bootstrap = bootstrap_servers();
    let (input, output, app) = (unique("pair-in"), unique("pair-out"), unique("pair-app"));
    create_topic(&bootstrap, &input, 4, &[]).unwrap();
    create_topic(&bootstrap, &output, 4, &[]).unwrap();
    let (dir_a, dir_b) = (state_dir(), state_dir());
    let test = "two_instances_split_partitions_and_take_over";
    let mut a = spawn_app(test, "A", &app, &input, &output, dir_a.to_str().unwrap());
    a.wait_for_line("KSTREAMS-APP-RUNNING", LONG).unwrap();
    let mut b = spawn_app(test, "B", &app, &input, &output, dir_b.to_str().unwrap());
    b.wait_for_line("KSTREAMS-APP-RUNNING", LONG).unwrap();

    const FIRST: usize = 800;
    const N: usize = 2000;
    produce_range(&producer(&bootstrap), &input, 0, FIRST);
    let first = consume_until(&bootstrap, &output, Isolation::ReadCommitted, LONG, |g| {
        census(g).len() >= FIRST
    })
    .unwrap();
    let by: BTreeSet<Vec<u8>> = first
        .iter()
        .filter_map(|r| header(r, "instance").map(<[u8]>::to_vec))
        .collect();
    assert_eq!(
        by,
        BTreeSet::from([b"A".to_vec(), b"B".to_vec()]),
        "both instances processed part of the input"
    );
    let tasks_of = |who: &[u8]| -> BTreeSet<String> {
        first
            .iter()
            .filter(|r| header(r, "instance") == Some(who))
            .map(|r| String::from_utf8_lossy(header(r, "task").unwrap()).into_owned())
            .collect()
    };
    let (ta, tb) = (tasks_of(b"A"), tasks_of(b"B"));
    assert!(ta.is_disjoint(&tb), "A {ta:?} and B {tb:?} share no task");

    let index = |r: &Received| -> usize {
        r.value_str()
            .strip_prefix('v')
            .and_then(|s| s.strip_suffix(":done"))
            .unwrap()
            .parse()
            .unwrap()
    };
    let feeder = produce_in_background(&input, FIRST, N, 400);
    // The kill point: once A has written (not necessarily committed) a random number of the
    // second batch's records, so that A is killed mid-stream, most often with a transaction
    // open on its output partitions.
    let written_by_a = rand::rng().random_range(1..200);
    consume_until(&bootstrap, &output, Isolation::ReadUncommitted, LONG, |g| {
        g.iter()
            .filter(|r| header(r, "instance") == Some(&b"A"[..]) && index(r) >= FIRST)
            .count()
            >= written_by_a
    })
    .unwrap();
    a.kill().unwrap();
    // A's last transaction (output and consumed offsets) was left open by the SIGKILL, and A
    // is not restarted: the transaction coordinator aborts it after transaction.timeout.ms
    // (10 s here; on nisshi, the fallback test broker, its proxy does). Until then its records
    // hold read_committed readers of its partitions back.
    feeder.join().unwrap();
    if let Err(e) = consume_until(&bootstrap, &output, Isolation::ReadCommitted, LONG, |g| {
        census(g).len() >= N
    }) {
        // Where it stands: per output partition, how far read_committed and read_uncommitted
        // readers get, and what B logged.
        panic!(
            "{e:#}\n(records, last offset) per output partition: read_committed {}, \
             read_uncommitted {}\nB's last log lines:\n{}",
            partition_census(&bootstrap, &output, Isolation::ReadCommitted),
            partition_census(&bootstrap, &output, Isolation::ReadUncommitted),
            b.unread_lines(60).join("\n")
        );
    }
    let status = b.stop(Duration::from_secs(90)).unwrap();
    assert!(status.success(), "B exit: {status}");
    let out = read_to_end(&bootstrap, &output, Isolation::ReadCommitted, LONG).unwrap();
    let verdict = check_exactly_once(&out, N);
    let second: Vec<&Received> = out.iter().filter(|r| index(r) >= FIRST).collect();
    let second_by: BTreeSet<Vec<u8>> = second
        .iter()
        .filter_map(|r| header(r, "instance").map(<[u8]>::to_vec))
        .collect();
    let second_tasks: BTreeSet<String> = second
        .iter()
        .map(|r| String::from_utf8_lossy(header(r, "task").unwrap()).into_owned())
        .collect();
    eprintln!(
        "takeover: A had {ta:?}, B had {tb:?}; after the kill the input of tasks {second_tasks:?} was processed by {:?}; \
         output {} records, duplicates {}, missing {}, unexpected {}",
        second_by.iter().map(|b| String::from_utf8_lossy(b).into_owned()).collect::<Vec<_>>(),
        out.len(),
        verdict.duplicates,
        verdict.missing,
        verdict.unexpected
    );
    // Records of the second batch that A committed before the kill carry A; all others, and
    // in particular those of A's tasks after the kill, carry B.
    assert!(
        ta.is_subset(&second_tasks),
        "A's tasks {ta:?} got input after the kill"
    );
    let b_tasks: BTreeSet<String> = second
        .iter()
        .filter(|r| header(r, "instance") == Some(&b"B"[..]))
        .map(|r| String::from_utf8_lossy(header(r, "task").unwrap()).into_owned())
        .collect();
    assert!(
        ta.is_subset(&b_tasks),
        "B processed A's tasks {ta:?} after the kill: {b_tasks:?}"
    );
    assert_eq!(
        (verdict.duplicates, verdict.missing, verdict.unexpected),
        (0, 0, 0)
    );
    assert_eq!(out.len(), N);
}

/// Panics on the value "boom".
struct Fragile;

impl Processor for Fragile {
    type KeyIn = String;
    type ValueIn = String;
    type KeyOut = String;
    type ValueOut = String;
    fn process(
        &mut self,
        r: Record<String, String>,
        ctx: &mut ProcessorContext<'_, String, String>,
    ) -> Result<()> {
        assert_ne!(r.value(), "boom", "a bug in user code");
        ctx.forward(r)
    }
}

#[test]
fn a_panicking_processor_stops_the_instance_and_commits_nothing_of_its_record() {
    for guarantee in [
        ProcessingGuarantee::ExactlyOnce,
        ProcessingGuarantee::AtLeastOnce,
    ] {
        let bootstrap = bootstrap_servers();
        let (input, output, app) = (unique("panic-in"), unique("panic-out"), unique("app"));
        create_topic(&bootstrap, &input, 1, &[]).unwrap();
        create_topic(&bootstrap, &output, 1, &[]).unwrap();
        let p = producer(&bootstrap);
        for v in ["a", "b", "boom", "c"] {
            send_retrying(&p, BaseRecord::to(&input).key("k").payload(v)).unwrap();
        }
        p.flush(Duration::from_secs(30)).unwrap();
        let topology = TopologyBuilder::new()
            .add_source("in", Source::new([input.as_str()], Utf8, Utf8))
            .add_processor("fragile", || Fragile, ["in"])
            .add_sink("out", Sink::new(output.as_str(), Utf8, Utf8), ["fragile"])
            .build()
            .unwrap();
        let config = StreamsConfig::new(&app, &bootstrap)
            .processing_guarantee(guarantee)
            .state_dir(state_dir());
        let streams = KafkaStreams::new(topology, config).unwrap();
        streams.start().unwrap();
        assert!(
            streams.wait_for(|s| s == State::Error, LONG),
            "{guarantee:?}: state {:?}",
            streams.state()
        );
        let error = streams.error().unwrap();
        assert!(
            matches!(error.root(), Error::ThreadDied { message, .. } if message.contains("a bug in user code")),
            "{guarantee:?}: {error}"
        );
        let committed = committed_offsets(&bootstrap, &app, &input).unwrap();
        assert!(
            committed[0].unwrap_or(0) <= 2,
            "{guarantee:?}: committed past the record that panicked: {committed:?}"
        );
        let isolation = match guarantee {
            ProcessingGuarantee::ExactlyOnce => Isolation::ReadCommitted,
            ProcessingGuarantee::AtLeastOnce => Isolation::ReadUncommitted,
        };
        let out = read_to_end(&bootstrap, &output, isolation, LONG).unwrap();
        let values: Vec<String> = out.iter().map(Received::value_str).collect();
        assert!(
            values.iter().all(|v| v == "a" || v == "b"),
            "{guarantee:?}: output after the panic: {values:?}"
        );
    }
}

/// Issue 27, finding 16: the state listener runs on a thread of its own, in order, outside
/// every lock of the runtime: a slow listener does not stall the stream threads, and one that
/// closes the instance when it runs (a "run once" pattern) closes it in time. Before, it ran on
/// the stream thread that made the change, under the lock of the threads' states: with two
/// threads the close waited for a thread that waited for the listener.
#[test]
fn a_state_listener_may_block_and_close_the_instance() {
    let bootstrap = bootstrap_servers();
    let (input, output, app) = (unique("sl-in"), unique("sl-out"), unique("sl-app"));
    create_topic(&bootstrap, &input, 2, &[]).unwrap();
    create_topic(&bootstrap, &output, 2, &[]).unwrap();
    let config = StreamsConfig::new(&app, &bootstrap)
        .num_stream_threads(2)
        .state_dir(state_dir());
    let streams = Arc::new(KafkaStreams::new(tag_topology(&input, &output, "sl"), config).unwrap());
    let closed: Arc<Mutex<Option<(bool, Duration)>>> = Arc::default();
    let (weak, result) = (Arc::downgrade(&streams), closed.clone());
    streams.set_state_listener(move |_, new| {
        if new != State::Running {
            return;
        }
        // A slow listener (remote logging, say), then a close from within it.
        std::thread::sleep(Duration::from_secs(1));
        if let Some(s) = weak.upgrade() {
            let asked = Instant::now();
            let done = s.close(Duration::from_secs(10));
            *result.lock().unwrap() = Some((done, asked.elapsed()));
        }
    });
    streams.start().unwrap();
    let deadline = Instant::now() + LONG;
    let (done, took) = loop {
        if let Some(r) = *closed.lock().unwrap() {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "the listener never closed: {:?}",
            streams.state()
        );
        // Polling the listener's result, which comes from another thread.
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(done, "close from the listener timed out after {took:?}");
    assert!(took < Duration::from_secs(5), "close took {took:?}");
    assert_eq!(streams.state(), State::NotRunning);
}
