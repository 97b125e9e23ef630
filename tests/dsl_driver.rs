//! The DSL's operators on the `TopologyTestDriver`: exact outputs, keys and timestamps
//! included, out-of-order and late records for windows, and a randomised comparison of
//! windowed counts with a plain recomputation.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kstreams::core::processor::{
    FixedKeyProcessor, FixedKeyProcessorContext, Processor, ProcessorContext,
};
use kstreams::core::serde::{BigEndian, Utf8};
use kstreams::core::store::KeyValueStore;
use kstreams::core::{Error, FixedKeyRecord, Record, Result, TopologyTestDriver};
use kstreams::dsl::{
    Grouped, Materialized, Named, Produced, Repartitioned, StreamsBuilder, TimeWindows, Windowed,
    WindowedSerde,
};
use rand::{Rng, SeedableRng};

mod dsl_support;
use dsl_support::{drain, driver, s};

#[test]
fn stateless_operators_keep_timestamps_and_transform_exactly() {
    let builder = StreamsBuilder::new();
    let peeked = Arc::new(AtomicUsize::new(0));
    let seen = peeked.clone();
    let words = builder.stream::<String, String>("words");
    words
        .filter(|_, v| !v.is_empty())
        .filter_not(|k, _| k == "skip")
        .peek(move |_, _| {
            seen.fetch_add(1, Ordering::SeqCst);
        })
        .map_values(|v| v.len() as u64)
        .to("lengths");
    words
        .map(|k, v| (v, k))
        .select_key(|k, _| k.to_uppercase())
        .to("swapped");
    words
        .flat_map(|k, v| {
            v.chars()
                .map(move |c| (format!("{k}{c}"), 1_u64))
                .collect::<Vec<_>>()
        })
        .to("letters");
    words
        .flat_map_values(|v| v.split('-').map(s).collect::<Vec<_>>())
        .map_values_with_key(|k, v| format!("{k}:{v}"))
        .to("parts");
    let d = driver(builder);
    let input = d.input_topic("words", Utf8, Utf8);
    input.pipe_at(s("a"), s("xy"), 10).unwrap();
    input.pipe_at(s("b"), s(""), 20).unwrap();
    input.pipe_at(s("skip"), s("zz"), 30).unwrap();
    input.pipe_at(s("c"), s("p-q"), 5).unwrap();

    let lengths = d.output_topic::<String, u64>("lengths", Utf8, BigEndian);
    assert_eq!(
        drain(&lengths),
        vec![(s("a"), 2, 10), (s("c"), 3, 5)],
        "empty values and the key 'skip' are filtered out; timestamps kept"
    );
    assert_eq!(peeked.load(Ordering::SeqCst), 2);
    let swapped = d.output_topic::<String, String>("swapped", Utf8, Utf8);
    assert_eq!(
        drain(&swapped),
        vec![
            (s("XY"), s("a"), 10),
            (s(""), s("b"), 20),
            (s("ZZ"), s("skip"), 30),
            (s("P-Q"), s("c"), 5)
        ]
    );
    let letters = d.output_topic::<String, u64>("letters", Utf8, BigEndian);
    assert_eq!(
        drain(&letters),
        vec![
            (s("ax"), 1, 10),
            (s("ay"), 1, 10),
            (s("skipz"), 1, 30),
            (s("skipz"), 1, 30),
            (s("cp"), 1, 5),
            (s("c-"), 1, 5),
            (s("cq"), 1, 5)
        ]
    );
    let parts = d.output_topic::<String, String>("parts", Utf8, Utf8);
    assert_eq!(
        drain(&parts),
        vec![
            (s("a"), s("a:xy"), 10),
            (s("b"), s("b:"), 20),
            (s("skip"), s("skip:zz"), 30),
            (s("c"), s("c:p"), 5),
            (s("c"), s("c:q"), 5)
        ]
    );
}

#[test]
fn split_sends_each_record_to_the_first_matching_branch() {
    let builder = StreamsBuilder::new();
    let branches = builder
        .stream::<String, u64>("amounts")
        .split(Named::as_("amount-"))
        .branch("big", |_, v| *v >= 1000)
        .branch("medium", |_, v| *v >= 100)
        .default_branch("small");
    assert_eq!(
        branches.keys().cloned().collect::<Vec<_>>(),
        vec![s("amount-big"), s("amount-medium"), s("amount-small")]
    );
    for (name, stream) in &branches {
        stream.to(name);
    }
    let d = driver(builder);
    let input = d.input_topic::<String, u64>("amounts", Utf8, BigEndian);
    for (i, v) in [5_u64, 5000, 150, 1000, 99].into_iter().enumerate() {
        input.pipe_at(format!("k{i}"), v, i as i64).unwrap();
    }
    let read = |t: &str| drain(&d.output_topic::<String, u64>(t, Utf8, BigEndian));
    assert_eq!(
        read("amount-big"),
        vec![(s("k1"), 5000, 1), (s("k3"), 1000, 3)]
    );
    assert_eq!(read("amount-medium"), vec![(s("k2"), 150, 2)]);
    assert_eq!(
        read("amount-small"),
        vec![(s("k0"), 5, 0), (s("k4"), 99, 4)]
    );
}

#[test]
fn split_without_default_drops_what_no_branch_takes_and_merge_joins_streams() {
    let builder = StreamsBuilder::new();
    let a = builder.stream::<String, String>("a");
    let b = builder.stream::<String, String>("b");
    let mut only = a
        .merge(&b)
        .split(Named::default())
        .branch("x", |_, v| v.starts_with('x'))
        .no_default_branch();
    only.remove("x").unwrap().to("xs");
    let d = driver(builder);
    d.input_topic("a", Utf8, Utf8)
        .pipe_at(s("1"), s("x1"), 1)
        .unwrap();
    d.input_topic("b", Utf8, Utf8)
        .pipe_at(s("2"), s("y2"), 2)
        .unwrap();
    d.input_topic("b", Utf8, Utf8)
        .pipe_at(s("3"), s("x3"), 3)
        .unwrap();
    let xs = d.output_topic::<String, String>("xs", Utf8, Utf8);
    assert_eq!(drain(&xs), vec![(s("1"), s("x1"), 1), (s("3"), s("x3"), 3)]);
}

#[test]
fn count_reduce_and_aggregate_emit_every_update_with_the_latest_timestamp() {
    let builder = StreamsBuilder::new();
    let grouped = builder.stream::<String, u64>("in").group_by_key();
    grouped.count().to_stream().to("counts");
    grouped.reduce(|a, b| a.max(b)).to_stream().to("maxima");
    grouped
        .aggregate(
            String::new,
            |_, v, agg| format!("{agg}{v},"),
            Materialized::with(Utf8).named("lists"),
        )
        .to_stream()
        .to("lists");
    let d = driver(builder);
    let input = d.input_topic::<String, u64>("in", Utf8, BigEndian);
    input.pipe_at(s("a"), 3, 100).unwrap();
    input.pipe_at(s("b"), 7, 50).unwrap();
    input.pipe_at(s("a"), 9, 80).unwrap(); // out of order: the count keeps timestamp 100
    input.pipe_at(s("a"), 1, 120).unwrap();
    assert_eq!(
        drain(&d.output_topic::<String, u64>("counts", Utf8, BigEndian)),
        vec![
            (s("a"), 1, 100),
            (s("b"), 1, 50),
            (s("a"), 2, 100),
            (s("a"), 3, 120)
        ]
    );
    assert_eq!(
        drain(&d.output_topic::<String, u64>("maxima", Utf8, BigEndian)),
        vec![
            (s("a"), 3, 100),
            (s("b"), 7, 50),
            (s("a"), 9, 100),
            (s("a"), 9, 120)
        ]
    );
    assert_eq!(
        drain(&d.output_topic::<String, String>("lists", Utf8, Utf8)),
        vec![
            (s("a"), s("3,"), 100),
            (s("b"), s("7,"), 50),
            (s("a"), s("3,9,"), 100),
            (s("a"), s("3,9,1,"), 120)
        ]
    );
}

#[test]
fn group_by_a_new_key_reads_through_a_repartition_topic() {
    let builder = StreamsBuilder::new();
    builder
        .stream::<String, String>("orders")
        .group_by_with(
            |_, customer| customer.clone(),
            Grouped::with(Utf8, Utf8).named("by-customer"),
        )
        .count_with(Materialized::with(BigEndian).named("orders-per-customer"))
        .to_stream()
        .to("per-customer");
    let topology = builder.build().unwrap();
    let text = topology.describe().to_string();
    assert!(text.contains("by-customer"), "{text}");
    assert_eq!(
        topology.resolve_topic("shop", "by-customer"),
        "shop-by-customer-repartition"
    );
    assert!(
        topology
            .subtopologies()
            .iter()
            .any(|st| st.stores == vec![s("orders-per-customer")]),
        "{text}"
    );
    assert_eq!(
        topology.subtopologies().len(),
        2,
        "the repartition topic splits it: {text}"
    );
    let d = TopologyTestDriver::new(topology).unwrap();
    let orders = d.input_topic("orders", Utf8, Utf8);
    orders.pipe_at(s("o1"), s("ann"), 1).unwrap();
    orders.pipe_at(s("o2"), s("bob"), 2).unwrap();
    orders.pipe_at(s("o3"), s("ann"), 3).unwrap();
    assert_eq!(
        drain(&d.output_topic::<String, u64>("per-customer", Utf8, BigEndian)),
        vec![(s("ann"), 1, 1), (s("bob"), 1, 2), (s("ann"), 2, 3)]
    );
}

#[test]
fn explicit_repartition_with_a_partition_count() {
    let builder = StreamsBuilder::new();
    builder
        .stream::<String, String>("in")
        .repartition(
            Repartitioned::with(Utf8, Utf8)
                .named("spread")
                .with_partitions(6),
        )
        .to("out");
    let topology = builder.build().unwrap();
    assert_eq!(topology.repartition_topics().get("spread"), Some(&Some(6)));
    let d = TopologyTestDriver::new(topology).unwrap();
    d.input_topic("in", Utf8, Utf8)
        .pipe_at(s("k"), s("v"), 4)
        .unwrap();
    assert_eq!(
        drain(&d.output_topic::<String, String>("out", Utf8, Utf8)),
        vec![(s("k"), s("v"), 4)]
    );
}

fn windowed(key: &str, start: i64, size: i64) -> Windowed<String> {
    Windowed {
        key: s(key),
        start,
        end: start + size,
    }
}

#[test]
fn tumbling_windows_count_out_of_order_records_within_grace_and_drop_late_ones() {
    let builder = StreamsBuilder::new();
    let windows =
        TimeWindows::of_size_and_grace(Duration::from_millis(10), Duration::from_millis(5));
    let by_window = builder
        .stream::<String, String>("clicks")
        .group_by_key()
        .windowed_by(windows);
    let late = by_window.late_records();
    by_window.count().to("clicks-per-10ms");
    let d = driver(builder);
    let clicks = d.input_topic("clicks", Utf8, Utf8);
    let out = d.output_topic::<Windowed<String>, u64>(
        "clicks-per-10ms",
        WindowedSerde::new(Utf8, windows),
        BigEndian,
    );
    clicks.pipe_at(s("a"), s("x"), 3).unwrap(); // [0,10)
    clicks.pipe_at(s("a"), s("x"), 12).unwrap(); // [10,20), stream time 12
    clicks.pipe_at(s("a"), s("x"), 8).unwrap(); // [0,10) closes at 10+5: still open at 12
    clicks.pipe_at(s("b"), s("x"), 16).unwrap(); // stream time 16: [0,10) is closed
    clicks.pipe_at(s("a"), s("x"), 9).unwrap(); // late: dropped and counted
    clicks.pipe_at(s("a"), s("x"), 19).unwrap();
    assert_eq!(
        drain(&out),
        vec![
            (windowed("a", 0, 10), 1, 3),
            (windowed("a", 10, 10), 1, 12),
            (windowed("a", 0, 10), 2, 8),
            (windowed("b", 10, 10), 1, 16),
            (windowed("a", 10, 10), 2, 19)
        ]
    );
    assert_eq!(late.count(), 1);
}

#[test]
fn hopping_windows_put_each_record_in_every_window_that_holds_it() {
    let builder = StreamsBuilder::new();
    let windows = TimeWindows::of_size_with_no_grace(Duration::from_millis(10))
        .advance_by(Duration::from_millis(5));
    builder
        .stream::<String, u64>("readings")
        .group_by_key()
        .windowed_by(windows)
        .aggregate(|| 0_u64, |_, v, sum| sum + v, Materialized::with(BigEndian))
        .to("sums");
    let d = driver(builder);
    let input = d.input_topic::<String, u64>("readings", Utf8, BigEndian);
    let out = d.output_topic::<Windowed<String>, u64>(
        "sums",
        WindowedSerde::new(Utf8, windows),
        BigEndian,
    );
    input.pipe_at(s("t"), 1, 7).unwrap(); // windows [0,10) and [5,15)
    input.pipe_at(s("t"), 10, 12).unwrap(); // [5,15) and [10,20)
    input.pipe_at(s("t"), 100, 3).unwrap(); // [0,10) closed at stream time 12: late
    assert_eq!(
        drain(&out),
        vec![
            (windowed("t", 0, 10), 1, 7),
            (windowed("t", 5, 10), 1, 7),
            (windowed("t", 5, 10), 11, 12),
            (windowed("t", 10, 10), 10, 12)
        ]
    );
}

/// Counts per key in a user store; forwards the running count.
struct Tally;

impl Processor for Tally {
    type KeyIn = String;
    type ValueIn = String;
    type KeyOut = String;
    type ValueOut = u64;
    fn process(
        &mut self,
        r: Record<String, String>,
        ctx: &mut ProcessorContext<'_, String, u64>,
    ) -> Result<()> {
        let store = ctx.state_store::<KeyValueStore<String, u64>>("tally")?;
        let n = store.get(r.key())?.unwrap_or(0) + 1;
        store.put(r.key(), &n)?;
        let key = format!("{}#", r.key());
        ctx.forward(r.with_key(key).with_value(n))
    }
}

/// Appends the value's length, under the same key.
struct WithLength;

impl FixedKeyProcessor for WithLength {
    type Key = String;
    type ValueIn = String;
    type ValueOut = String;
    fn process(
        &mut self,
        r: FixedKeyRecord<String, String>,
        ctx: &mut FixedKeyProcessorContext<'_, String, String>,
    ) -> Result<()> {
        let v = format!("{}/{}", r.value(), r.value().len());
        ctx.forward(r.with_value(v))
    }
}

#[test]
fn processor_api_nodes_with_their_stores_inside_the_dsl() {
    let builder = StreamsBuilder::new();
    builder.add_state_store(KeyValueStore::<String, u64>::builder(
        "tally", Utf8, BigEndian,
    ));
    let words = builder.stream::<String, String>("words");
    words.process(|| Tally, &["tally"]).to("tallies");
    words.process_values(|| WithLength, &[]).to("lengths");
    let d = driver(builder);
    let input = d.input_topic("words", Utf8, Utf8);
    input.pipe_at(s("a"), s("hey"), 1).unwrap();
    input.pipe_at(s("a"), s("hi"), 2).unwrap();
    assert_eq!(
        drain(&d.output_topic::<String, u64>("tallies", Utf8, BigEndian)),
        vec![(s("a#"), 1, 1), (s("a#"), 2, 2)]
    );
    assert_eq!(
        drain(&d.output_topic::<String, String>("lengths", Utf8, Utf8)),
        vec![(s("a"), s("hey/3"), 1), (s("a"), s("hi/2"), 2)]
    );
    assert_eq!(
        d.with_store::<KeyValueStore<String, u64>, _>("tally", |st| st.get(&s("a")))
            .unwrap()
            .unwrap(),
        Some(2)
    );
}

#[test]
fn a_processor_naming_a_store_never_added_is_refused() {
    let builder = StreamsBuilder::new();
    builder
        .stream::<String, String>("words")
        .process(|| Tally, &["tally"])
        .to_with("out", Produced::with(Utf8, BigEndian));
    let Err(Error::Config(message)) = builder.build() else {
        panic!("expected a configuration error");
    };
    assert!(message.contains("tally"), "{message}");
}

/// The store names of a topology, from its description.
fn store_names(topology: &kstreams::core::Topology) -> Vec<String> {
    let mut names: Vec<String> = topology
        .subtopologies()
        .iter()
        .flat_map(|st| st.stores.clone())
        .collect();
    names.sort();
    names
}

#[test]
fn generated_store_names_do_not_shift_when_an_unrelated_operator_is_added_before() {
    let build = |extra: bool| {
        let builder = StreamsBuilder::new();
        if extra {
            // An unrelated stateful pipeline declared first.
            builder
                .stream::<String, String>("other")
                .group_by_key()
                .count()
                .to_stream()
                .to("other-counts");
        }
        let words = builder.stream::<String, String>("words");
        words.filter(|_, v| !v.is_empty()).to("non-empty");
        words.group_by_key().count().to_stream().to("counts");
        builder.build().unwrap()
    };
    let without = store_names(&build(false));
    let with = store_names(&build(true));
    assert_eq!(without.len(), 1);
    assert!(
        with.contains(&without[0]),
        "{without:?} must stay in {with:?}"
    );
}

#[test]
fn two_unnamed_aggregations_that_would_share_a_state_name_are_refused() {
    let builder = StreamsBuilder::new();
    let grouped = builder.stream::<String, String>("words").group_by_key();
    grouped.count();
    grouped.count();
    let Err(Error::Config(message)) = builder.build() else {
        panic!("expected a configuration error");
    };
    assert!(message.contains("name one of them"), "{message}");
    assert!(message.contains("count"), "{message}");
}

#[test]
fn describe_shows_every_dsl_node_and_store() {
    let builder = StreamsBuilder::new();
    builder
        .stream::<String, String>("words")
        .filter(|_, v| !v.is_empty())
        .map_values(|v| v.len() as u64)
        .group_by_key()
        .count_with(Materialized::with(BigEndian).named("word-counts"))
        .to_stream()
        .to("counts");
    let topology = builder.build().unwrap();
    let text = topology.describe().to_string();
    for kind in ["SOURCE", "FILTER", "MAPVALUES", "COUNT", "TOSTREAM", "SINK"] {
        assert!(text.contains(&format!("KSTREAM-{kind}-")), "{kind}: {text}");
    }
    assert!(text.contains("word-counts"), "{text}");
    let mermaid = topology.describe().to_mermaid();
    assert!(mermaid.contains("KSTREAM-FILTER-"), "{mermaid}");
}

/// What a windowed count must emit, recomputed plainly from Kafka Streams' rules
/// (`KStreamWindowAggregate`, `TimeWindows.windowsFor`): windows start at multiples of the
/// advance from the epoch and hold `[start, start + size)`; stream time is the largest
/// timestamp the aggregation has seen (`observedStreamTime`); a record updates each window
/// holding it whose end is after stream time minus grace (the others count it late), each
/// with the number of accepted records of its key in it so far and their largest timestamp.
fn windowed_count_oracle(
    input: &[(String, i64)],
    size: i64,
    advance: i64,
    grace: i64,
) -> (Vec<(Windowed<String>, u64, i64)>, u64) {
    let mut stream_time = i64::MIN;
    let mut accepted: Vec<(String, i64, i64)> = vec![]; // key, window start, timestamp
    let mut out = vec![];
    let mut late = 0;
    for (key, ts) in input {
        stream_time = stream_time.max(*ts);
        let mut start = 0;
        while start <= *ts {
            let end = start + size;
            if start <= *ts && *ts < end {
                if end > stream_time - grace {
                    accepted.push((key.clone(), start, *ts));
                    let same: Vec<i64> = accepted
                        .iter()
                        .filter(|(k, st, _)| k == key && *st == start)
                        .map(|(_, _, t)| *t)
                        .collect();
                    out.push((
                        Windowed {
                            key: key.clone(),
                            start,
                            end,
                        },
                        same.len() as u64,
                        *same.iter().max().unwrap(),
                    ));
                } else {
                    late += 1;
                }
            }
            start += advance;
        }
    }
    (out, late)
}

/// What a windowed count with emit-final must emit (Kafka Streams' `EmitStrategy.onWindowClose`,
/// KIP-825): after each input, every window that holds accepted records and closed since the
/// previous input (end in (previous close, close], close = stream time minus grace), by window
/// start, then key; with its count and largest timestamp.
fn windowed_final_oracle(
    input: &[(String, i64)],
    size: i64,
    advance: i64,
    grace: i64,
) -> Vec<(Windowed<String>, u64, i64)> {
    let (updates, _) = windowed_count_oracle(input, size, advance, grace);
    // The last update of each window is its final value; emitted once it closed.
    let mut out = vec![];
    let mut stream_time = i64::MIN;
    let mut last_close = i64::MIN;
    // How many updates the inputs up to each one produced.
    let mut per_input: Vec<usize> = vec![];
    for i in 0..input.len() {
        let (u, _) = windowed_count_oracle(&input[..=i], size, advance, grace);
        per_input.push(u.len());
    }
    for (i, (_, ts)) in input.iter().enumerate() {
        stream_time = stream_time.max(*ts);
        let seen = per_input[i];
        let close = stream_time - grace;
        if close > last_close {
            let mut closed: Vec<(Windowed<String>, u64, i64)> = vec![];
            for (w, n, t) in &updates[..seen] {
                if w.end > last_close && w.end <= close {
                    closed.retain(|(c, _, _)| c != w);
                    closed.push((w.clone(), *n, *t));
                }
            }
            closed.sort_by(|a, b| (a.0.start, &a.0.key).cmp(&(b.0.start, &b.0.key)));
            out.extend(closed);
            last_close = close;
        }
    }
    out
}

#[test]
fn emit_final_sends_each_window_once_when_it_closes() {
    let builder = StreamsBuilder::new();
    let windows =
        TimeWindows::of_size_and_grace(Duration::from_millis(10), Duration::from_millis(2));
    builder
        .stream::<String, String>("clicks")
        .group_by_key()
        .windowed_by(windows)
        .emit_final()
        .count()
        .to("final-counts");
    let d = driver(builder);
    let clicks = d.input_topic("clicks", Utf8, Utf8);
    let out = d.output_topic::<Windowed<String>, u64>(
        "final-counts",
        WindowedSerde::new(Utf8, windows),
        BigEndian,
    );
    clicks.pipe_at(s("b"), s("x"), 1).unwrap();
    clicks.pipe_at(s("a"), s("x"), 5).unwrap();
    clicks.pipe_at(s("a"), s("x"), 11).unwrap();
    assert_eq!(drain(&out), vec![], "nothing closed yet (close time 9)");
    clicks.pipe_at(s("a"), s("x"), 9).unwrap(); // within grace: counts
    clicks.pipe_at(s("a"), s("x"), 12).unwrap(); // close time 10: [0,10) closes
    assert_eq!(
        drain(&out),
        vec![(windowed("a", 0, 10), 2, 9), (windowed("b", 0, 10), 1, 1)]
    );
    clicks.pipe_at(s("a"), s("x"), 40).unwrap(); // closes [10,20); [20,30) was empty
    assert_eq!(drain(&out), vec![(windowed("a", 10, 10), 2, 12)]);
}

#[test]
fn windowed_counts_match_a_plain_recomputation_on_random_out_of_order_input() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
    for case in 0..80 {
        let size = rng.random_range(1..40_i64);
        let advance = if rng.random_bool(0.5) {
            size
        } else {
            rng.random_range(1..=size)
        };
        let grace = rng.random_range(0..20_i64);
        let n = rng.random_range(1..60);
        let mut t = 0_i64;
        let input: Vec<(String, i64)> = (0..n)
            .map(|_| {
                t += rng.random_range(0..8);
                // Now and then a record from the past, some within grace, some beyond.
                let ts = if rng.random_bool(0.3) {
                    (t - rng.random_range(0..40)).max(0)
                } else {
                    t
                };
                (format!("k{}", rng.random_range(0..3)), ts)
            })
            .collect();
        let windows = TimeWindows::of_size_and_grace(
            Duration::from_millis(size as u64),
            Duration::from_millis(grace as u64),
        )
        .advance_by(Duration::from_millis(advance as u64));
        let final_only = case % 2 == 1;
        let builder = StreamsBuilder::new();
        let mut w = builder
            .stream::<String, String>("in")
            .group_by_key()
            .windowed_by(windows);
        if final_only {
            w = w.emit_final();
        }
        let late = w.late_records();
        w.count().to("out");
        let d = driver(builder);
        let pipe = d.input_topic("in", Utf8, Utf8);
        for (k, ts) in &input {
            pipe.pipe_at(k.clone(), s("v"), *ts).unwrap();
        }
        let got = drain(&d.output_topic("out", WindowedSerde::new(Utf8, windows), BigEndian));
        let (updates, want_late) = windowed_count_oracle(&input, size, advance, grace);
        let want = if final_only {
            windowed_final_oracle(&input, size, advance, grace)
        } else {
            updates
        };
        assert_eq!(
            got, want,
            "case {case} (emit final: {final_only}): size {size} advance {advance} grace {grace} input {input:?}"
        );
        assert_eq!(late.count(), want_late, "case {case}: late records");
    }
}

#[test]
fn a_table_keeps_the_latest_value_per_key_and_a_null_deletes() {
    let builder = StreamsBuilder::new();
    let cards =
        builder.table::<String, String>("cards", Materialized::with(Utf8).named("cards-store"));
    assert_eq!(cards.store_name(), Some("cards-store"));
    cards.to_stream().to("card-updates");
    let d = driver(builder);
    let input = d.input_topic::<String, String>("cards", Utf8, Utf8);
    input.pipe_at(s("c1"), s("FR"), 1).unwrap();
    input.pipe_at(s("c2"), s("DE"), 2).unwrap();
    input.pipe_at(s("c1"), s("IT"), 3).unwrap();
    input
        .pipe_raw(Some(b"c2".to_vec()), None, 4, Default::default())
        .unwrap();
    assert_eq!(
        drain(&d.output_topic::<String, String>("card-updates", Utf8, Utf8)),
        vec![
            (s("c1"), s("FR"), 1),
            (s("c2"), s("DE"), 2),
            (s("c1"), s("IT"), 3)
        ]
    );
    let (c1, c2) = d
        .with_store::<KeyValueStore<String, String>, _>("cards-store", |st| {
            (st.get(&s("c1")).unwrap(), st.get(&s("c2")).unwrap())
        })
        .unwrap();
    assert_eq!((c1, c2), (Some(s("IT")), None));
}

#[test]
fn to_a_topic_chosen_per_record() {
    let builder = StreamsBuilder::new();
    builder.stream::<String, String>("events").to_chosen_topic(
        |_, v| format!("events-{}", &v[..1]),
        Produced::with(Utf8, Utf8),
    );
    let topology = builder.build().unwrap();
    assert!(
        topology
            .describe()
            .to_string()
            .contains("<chosen per record>"),
        "{}",
        topology.describe()
    );
    let d = TopologyTestDriver::new(topology).unwrap();
    let input = d.input_topic::<String, String>("events", Utf8, Utf8);
    input.pipe_at(s("1"), s("apple"), 1).unwrap();
    input.pipe_at(s("2"), s("berry"), 2).unwrap();
    input.pipe_at(s("3"), s("avocado"), 3).unwrap();
    let read = |t: &str| drain(&d.output_topic::<String, String>(t, Utf8, Utf8));
    assert_eq!(
        read("events-a"),
        vec![(s("1"), s("apple"), 1), (s("3"), s("avocado"), 3)]
    );
    assert_eq!(read("events-b"), vec![(s("2"), s("berry"), 2)]);
}

#[test]
fn every_operator_can_be_named() {
    let builder = StreamsBuilder::new();
    let words = builder.stream::<String, String>("words");
    let long = words.named("long-words").filter(|_, v| v.len() > 3);
    long.named("shout")
        .map_values(|v| v.to_uppercase())
        .named("to-loud")
        .to("loud");
    long.named("by-word")
        .group_by_key()
        .count()
        .to_stream()
        .to("counts");
    let text = builder.build().unwrap().describe().to_string();
    for name in ["long-words", "shout", "to-loud", "by-word"] {
        assert!(text.contains(&format!(": {name} ")), "{name}: {text}");
    }
}

/// One output of a session count: (key, start, end, count or None for a retraction, timestamp).
type SessionOut = (String, i64, i64, Option<u64>, i64);

/// What a session count must emit, recomputed plainly from Kafka Streams' rules
/// (`KStreamSessionWindowAggregate.process`), with sessions per key kept as lists:
///
/// - stream time is the largest timestamp the aggregation has seen (`observedStreamTime`); the
///   close time is stream time minus grace minus the gap;
/// - a record at `ts` forms the session `[ts, ts]` merged with every session of its key whose
///   end is at or after `ts - gap` and whose start is at or before `ts + gap`;
/// - it is late (dropped, counted) when that merged session ends before the close time;
/// - otherwise, when the merged session is not `[ts, ts]`, every session it merged is removed
///   and retracted (a tombstone at its end), by end then start, also one whose bounds did not
///   change; then the merged session is sent with its count, at its end;
/// - with emit-final: nothing is sent on update; once the close time passes the last one, the
///   sessions ending in `[last close, close)` are sent once, by end, then key, then start. Our
///   one deliberate difference (ADR 0006): a record that would merge into a session already
///   emitted is late too, where Kafka merges it and emits the merged session as final again.
fn session_oracle(
    input: &[(String, i64)],
    gap: i64,
    grace: i64,
    final_only: bool,
) -> (Vec<SessionOut>, u64) {
    let mut sessions: Vec<(String, i64, i64, u64)> = vec![];
    let mut out = vec![];
    let mut late = 0;
    let mut stream_time = i64::MIN;
    let mut last_close = i64::MIN;
    for (key, ts) in input {
        stream_time = stream_time.max(*ts);
        let mut found: Vec<(String, i64, i64, u64)> = sessions
            .iter()
            .filter(|(k, s, e, _)| k == key && *e >= ts - gap && *s <= ts + gap)
            .cloned()
            .collect();
        found.sort_by_key(|(_, s, e, _)| (*e, *s));
        let start = found.iter().map(|f| f.1).chain([*ts]).min().unwrap();
        let end = found.iter().map(|f| f.2).chain([*ts]).max().unwrap();
        let close = stream_time - grace - gap;
        let merges_emitted = final_only && found.iter().any(|f| f.2 < last_close);
        if end < close || merges_emitted {
            late += 1;
        } else {
            let count = found.iter().map(|f| f.3).sum::<u64>() + 1;
            for (k, s, e, _) in &found {
                sessions.retain(|x| !(x.0 == *k && x.1 == *s && x.2 == *e));
                if (start, end) != (*ts, *ts) && !final_only {
                    out.push((k.clone(), *s, *e, None, *e));
                }
            }
            sessions.push((key.clone(), start, end, count));
            if !final_only {
                out.push((key.clone(), start, end, Some(count), end));
            }
        }
        if final_only && close > last_close {
            let mut closed: Vec<&(String, i64, i64, u64)> = sessions
                .iter()
                .filter(|(_, _, e, _)| *e >= last_close && *e < close)
                .collect();
            closed.sort_by(|a, b| (a.2, &a.0, a.1).cmp(&(b.2, &b.0, b.1)));
            out.extend(
                closed
                    .into_iter()
                    .map(|(k, s, e, n)| (k.clone(), *s, *e, Some(*n), *e)),
            );
            last_close = close;
        }
    }
    (out, late)
}

#[test]
fn session_counts_match_a_plain_recomputation_on_random_out_of_order_input() {
    use kstreams::core::serde::Nullable;
    use kstreams::dsl::{SessionWindowedSerde, SessionWindows};
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5e55);
    for case in 0..80 {
        let gap = rng.random_range(1..30_i64);
        let grace = rng.random_range(0..20_i64);
        let final_only = case % 2 == 1;
        let mut t = 1_i64;
        let input: Vec<(String, i64)> = (0..rng.random_range(1..60))
            .map(|_| {
                t += rng.random_range(0..15);
                let ts = if rng.random_bool(0.3) {
                    (t - rng.random_range(0..40)).max(1)
                } else {
                    t
                };
                (format!("k{}", rng.random_range(0..3)), ts)
            })
            .collect();
        let builder = StreamsBuilder::new();
        let mut w = builder
            .stream::<String, String>("in")
            .group_by_key()
            .windowed_by_session(SessionWindows::with_inactivity_gap_and_grace(
                Duration::from_millis(gap as u64),
                Duration::from_millis(grace as u64),
            ));
        if final_only {
            w = w.emit_final();
        }
        let late = w.late_records();
        w.count().to("out");
        let d = driver(builder);
        let pipe = d.input_topic("in", Utf8, Utf8);
        for (k, ts) in &input {
            pipe.pipe_at(k.clone(), s("v"), *ts).unwrap();
        }
        let got: Vec<SessionOut> = drain(&d.output_topic::<Windowed<String>, Option<u64>>(
            "out",
            SessionWindowedSerde::new(Utf8),
            Nullable(BigEndian),
        ))
        .into_iter()
        .map(|(w, n, ts)| (w.key, w.start, w.end, n, ts))
        .collect();
        let (want, want_late) = session_oracle(&input, gap, grace, final_only);
        assert_eq!(
            got, want,
            "case {case} (emit final: {final_only}): gap {gap} grace {grace} input {input:?}"
        );
        assert_eq!(late.count(), want_late, "case {case}: late records");
    }
}

#[test]
fn a_filtered_table_deletes_rows_that_stop_matching() {
    use kstreams::core::serde::Nullable;
    let builder = StreamsBuilder::new();
    let users = builder.table::<String, String>("users", Materialized::with(Utf8));
    users.filter(|_, city| city != "X").to("matching");
    users
        .to_changelog_stream()
        .to_with("changelog", Produced::with(Utf8, Nullable(Utf8)));
    let d = driver(builder);
    let input = d.input_topic::<String, String>("users", Utf8, Utf8);
    input.pipe_at(s("u1"), s("Paris"), 1).unwrap();
    input.pipe_at(s("u2"), s("X"), 2).unwrap(); // never matched: nothing
    input.pipe_at(s("u1"), s("X"), 3).unwrap(); // stops matching: deleted
    input.pipe_at(s("u1"), s("Rome"), 4).unwrap();
    input
        .pipe_raw(Some(b"u1".to_vec()), None, 5, Default::default())
        .unwrap(); // deleted from the table
    input
        .pipe_raw(Some(b"u9".to_vec()), None, 6, Default::default())
        .unwrap(); // deleting what never existed: nothing
    assert_eq!(
        drain(&d.output_topic::<String, Option<String>>("matching", Utf8, Nullable(Utf8))),
        vec![
            (s("u1"), Some(s("Paris")), 1),
            (s("u1"), None, 3),
            (s("u1"), Some(s("Rome")), 4),
            (s("u1"), None, 5)
        ]
    );
    assert_eq!(
        drain(&d.output_topic::<String, Option<String>>("changelog", Utf8, Nullable(Utf8))),
        vec![
            (s("u1"), Some(s("Paris")), 1),
            (s("u2"), Some(s("X")), 2),
            (s("u1"), Some(s("X")), 3),
            (s("u1"), Some(s("Rome")), 4),
            (s("u1"), None, 5)
        ]
    );
}

#[test]
fn a_regrouped_table_subtracts_a_row_from_its_old_group() {
    let builder = StreamsBuilder::new();
    let users = builder.table::<String, String>("users", Materialized::with(Utf8));
    let by_city = users.group_by(|user, city| (city.clone(), user.clone()));
    by_city.count().to_stream().to("per-city");
    by_city
        .aggregate(
            String::new,
            |_, user, list| format!("{list}+{user}"),
            |_, user, list| format!("{list}-{user}"),
            Materialized::with(Utf8),
        )
        .to_stream()
        .to("history");
    let d = driver(builder);
    let input = d.input_topic::<String, String>("users", Utf8, Utf8);
    input.pipe_at(s("u1"), s("Paris"), 1).unwrap();
    input.pipe_at(s("u2"), s("Paris"), 2).unwrap();
    input.pipe_at(s("u1"), s("Rome"), 3).unwrap(); // moves: Paris loses u1, Rome gains it
    input
        .pipe_raw(Some(b"u2".to_vec()), None, 4, Default::default())
        .unwrap(); // deleted: Paris loses u2
    assert_eq!(
        drain(&d.output_topic::<String, u64>("per-city", Utf8, BigEndian)),
        vec![
            (s("Paris"), 1, 1),
            (s("Paris"), 2, 2),
            (s("Paris"), 1, 3),
            (s("Rome"), 1, 3),
            (s("Paris"), 0, 4)
        ]
    );
    assert_eq!(
        drain(&d.output_topic::<String, String>("history", Utf8, Utf8))
            .into_iter()
            .map(|(k, v, _)| (k, v))
            .collect::<Vec<_>>(),
        vec![
            (s("Paris"), s("+u1")),
            (s("Paris"), s("+u1+u2")),
            (s("Paris"), s("+u1+u2-u1")),
            (s("Rome"), s("+u1")),
            (s("Paris"), s("+u1+u2-u1-u2"))
        ]
    );
}

#[test]
fn a_stream_turned_into_a_table_keeps_the_latest_value_per_key() {
    let builder = StreamsBuilder::new();
    let latest = builder
        .stream::<String, String>("readings")
        .map(|k, v| (k.to_uppercase(), v))
        .to_table(Materialized::with(Utf8).named("latest"));
    latest.to_stream().to("latest-out");
    let topology = builder.build().unwrap();
    assert_eq!(
        topology.subtopologies().len(),
        2,
        "the re-keyed stream is repartitioned"
    );
    let d = TopologyTestDriver::new(topology).unwrap();
    let input = d.input_topic::<String, String>("readings", Utf8, Utf8);
    input.pipe_at(s("a"), s("1"), 1).unwrap();
    input.pipe_at(s("a"), s("2"), 2).unwrap();
    assert_eq!(
        drain(&d.output_topic::<String, String>("latest-out", Utf8, Utf8)),
        vec![(s("A"), s("1"), 1), (s("A"), s("2"), 2)]
    );
    let v = d
        .with_store::<KeyValueStore<String, String>, _>("latest", |st| st.get(&s("A")).unwrap())
        .unwrap();
    assert_eq!(v, Some(s("2")));
}

#[test]
fn suppression_emits_the_latest_update_per_key_after_the_time_limit() {
    use kstreams::dsl::Suppressed;
    let builder = StreamsBuilder::new();
    builder
        .table::<String, String>("readings", Materialized::with(Utf8))
        .suppress(Suppressed::until_time_limit(Duration::from_millis(10)))
        .to_stream()
        .to("calm");
    let d = driver(builder);
    let input = d.input_topic::<String, String>("readings", Utf8, Utf8);
    let out = d.output_topic::<String, String>("calm", Utf8, Utf8);
    input.pipe_at(s("a"), s("1"), 1).unwrap();
    input.pipe_at(s("a"), s("2"), 5).unwrap();
    input.pipe_at(s("b"), s("1"), 6).unwrap();
    input.pipe_at(s("a"), s("3"), 9).unwrap();
    assert_eq!(drain(&out), vec![], "nothing held for 10 ms yet");
    input.pipe_at(s("c"), s("1"), 11).unwrap(); // a, held since 1, is due
    assert_eq!(drain(&out), vec![(s("a"), s("3"), 9)]);
    input.pipe_at(s("b"), s("2"), 20).unwrap(); // b, held since 6, is due; c not yet
    assert_eq!(drain(&out), vec![(s("b"), s("2"), 20)]);
    input.pipe_at(s("a"), s("4"), 30).unwrap(); // c due; a held again from 30
    assert_eq!(drain(&out), vec![(s("c"), s("1"), 11)]);
}

#[test]
fn a_full_suppression_buffer_emits_early_or_stops_as_configured() {
    use kstreams::dsl::{Suppressed, WhenFull};
    let build = |when_full| {
        let builder = StreamsBuilder::new();
        builder
            .table::<String, String>("readings", Materialized::with(Utf8))
            .suppress(
                Suppressed::until_time_limit(Duration::from_secs(60))
                    .with_max_records(1, when_full),
            )
            .to_stream()
            .to("calm");
        driver(builder)
    };
    let early = build(WhenFull::EmitEarly);
    let input = early.input_topic::<String, String>("readings", Utf8, Utf8);
    input.pipe_at(s("a"), s("1"), 1).unwrap();
    input.pipe_at(s("b"), s("1"), 2).unwrap(); // two keys, one allowed: a goes out early
    assert_eq!(
        drain(&early.output_topic::<String, String>("calm", Utf8, Utf8)),
        vec![(s("a"), s("1"), 1)]
    );
    let strict = build(WhenFull::ShutDown);
    let input = strict.input_topic::<String, String>("readings", Utf8, Utf8);
    input.pipe_at(s("a"), s("1"), 1).unwrap();
    let e = input.pipe_at(s("b"), s("1"), 2).unwrap_err();
    assert!(e.to_string().contains("suppression buffer"), "{e}");
}

#[test]
fn windows_can_also_close_by_wall_clock_when_a_partition_goes_quiet() {
    let windows = TimeWindows::of_size_with_no_grace(Duration::from_millis(10));
    let builder = StreamsBuilder::new();
    let w = builder
        .stream::<String, String>("clicks")
        .group_by_key()
        .windowed_by(windows)
        .emit_final_closing_by_wall_clock();
    let late = w.late_records();
    w.count().to("final");
    let d = driver(builder);
    let clicks = d.input_topic::<String, String>("clicks", Utf8, Utf8);
    let out = d.output_topic::<Windowed<String>, u64>(
        "final",
        WindowedSerde::new(Utf8, windows),
        BigEndian,
    );
    clicks.pipe_at(s("a"), s("x"), 1).unwrap();
    clicks.pipe_at(s("a"), s("x"), 3).unwrap();
    assert_eq!(drain(&out), vec![], "stream time 3 closes nothing");
    d.advance_wall_clock(Duration::from_millis(15)).unwrap(); // no new record: quiet
    assert_eq!(drain(&out), vec![(windowed("a", 0, 10), 2, 3)]);
    clicks.pipe_at(s("a"), s("x"), 5).unwrap(); // its window was closed by the wall clock
    assert_eq!(late.count(), 1);
    clicks.pipe_at(s("a"), s("x"), 12).unwrap();
    assert_eq!(drain(&out), vec![]);
    d.advance_wall_clock(Duration::from_millis(10)).unwrap();
    assert_eq!(drain(&out), vec![(windowed("a", 10, 10), 1, 12)]);
}

/// The sliding windows of a key's records `times` with difference `d`, by start, as Kafka
/// Streams defines them (`KStreamSlidingWindowAggregate`): each record at `r` has its left
/// window `[r - d, r]` (`[0, d]` when `r < d`: `processEarly`), and its right window
/// `[r + 1, r + 1 + d]` exists once a later record falls in it.
fn sliding_windows_of(times: &[i64], d: i64) -> std::collections::BTreeSet<i64> {
    let mut starts = std::collections::BTreeSet::new();
    for &r in times {
        starts.insert((r - d).max(0));
        if times.iter().any(|&u| u > r && u <= r + 1 + d) {
            starts.insert(r + 1);
        }
    }
    starts
}

/// What a sliding-window count must emit, from Kafka Streams' rules
/// (`KStreamSlidingWindowAggregate`): stream time is the largest timestamp the aggregation has
/// seen, close time is stream time minus grace; a record at `ts` is late when `ts + d + 1` is
/// at or before the close time. An accepted record is forwarded in every window holding it
/// (existing or created) and in a window it creates without holding it (its right window),
/// except windows ending before the close time; by start, each with its number of records and
/// their largest timestamp.
fn sliding_oracle(
    input: &[(String, i64)],
    d: i64,
    grace: i64,
) -> (Vec<(Windowed<String>, u64, i64)>, u64) {
    let mut accepted: Vec<(String, i64)> = vec![];
    let mut stream_time = i64::MIN;
    let (mut out, mut late) = (vec![], 0);
    for (key, ts) in input {
        stream_time = stream_time.max(*ts);
        let close = stream_time - grace;
        if ts + d < close {
            // Kafka's rule reads `ts + 1 + d <= close time`.
            late += 1;
            continue;
        }
        let of_key = |acc: &[(String, i64)]| -> Vec<i64> {
            acc.iter()
                .filter(|(k, _)| k == key)
                .map(|(_, t)| *t)
                .collect()
        };
        let before = sliding_windows_of(&of_key(&accepted), d);
        accepted.push((key.clone(), *ts));
        let times = of_key(&accepted);
        for start in sliding_windows_of(&times, d) {
            let end = start + d;
            let holds = start <= *ts && *ts <= end;
            let created = !before.contains(&start);
            if !(holds || created) || end < close {
                continue;
            }
            let inside: Vec<i64> = times
                .iter()
                .copied()
                .filter(|t| *t >= start && *t <= end)
                .collect();
            out.push((
                Windowed {
                    key: key.clone(),
                    start,
                    end,
                },
                inside.len() as u64,
                *inside.iter().max().unwrap(),
            ));
        }
    }
    (out, late)
}

/// What a sliding-window count with emit-final must emit: when stream time minus grace passes
/// from `last` to `close`, every window (`sliding_windows_of` the records accepted before this
/// record) whose end is in `[last, close)`, by end, then key, then start, with its count and
/// largest timestamp. (Kafka Streams' emit-final for sliding windows, KIP-825, emits a window
/// once its end is before the close time.)
fn sliding_final_oracle(
    input: &[(String, i64)],
    d: i64,
    grace: i64,
) -> Vec<(Windowed<String>, u64, i64)> {
    let mut accepted: Vec<(String, i64)> = vec![];
    let mut stream_time = i64::MIN;
    let mut last = i64::MIN;
    let mut out = vec![];
    for (key, ts) in input {
        stream_time = stream_time.max(*ts);
        let close = stream_time - grace;
        if close > last {
            let mut closed: Vec<(i64, String, i64, u64, i64)> = vec![];
            let mut keys: Vec<&String> = accepted.iter().map(|(k, _)| k).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let times: Vec<i64> = accepted
                    .iter()
                    .filter(|(x, _)| x == k)
                    .map(|(_, t)| *t)
                    .collect();
                let ending: Vec<i64> = sliding_windows_of(&times, d)
                    .into_iter()
                    .filter(|start| start + d >= last && start + d < close)
                    .collect();
                for start in ending {
                    let inside: Vec<i64> = times
                        .iter()
                        .copied()
                        .filter(|t| *t >= start && *t <= start + d)
                        .collect();
                    closed.push((
                        start + d,
                        k.clone(),
                        start,
                        inside.len() as u64,
                        *inside.iter().max().unwrap(),
                    ));
                }
            }
            closed.sort();
            out.extend(
                closed
                    .into_iter()
                    .map(|(end, k, start, n, t)| (Windowed { key: k, start, end }, n, t)),
            );
            last = close;
        }
        if ts + d >= close {
            accepted.push((key.clone(), *ts));
        }
    }
    out
}

#[test]
fn sliding_window_counts_match_a_plain_recomputation_on_random_out_of_order_input() {
    use kstreams::dsl::SlidingWindows;
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x511d);
    for case in 0..80 {
        let d = rng.random_range(0..25_i64);
        let grace = rng.random_range(0..20_i64);
        let mut t = 1_i64;
        let input: Vec<(String, i64)> = (0..rng.random_range(1..50))
            .map(|_| {
                t += rng.random_range(0..10);
                let ts = if rng.random_bool(0.3) {
                    (t - rng.random_range(0..40)).max(1)
                } else {
                    t
                };
                (format!("k{}", rng.random_range(0..3)), ts)
            })
            .collect();
        let windows = SlidingWindows::of_time_difference_and_grace(
            Duration::from_millis(d as u64),
            Duration::from_millis(grace as u64),
        );
        let final_only = case % 2 == 1;
        let builder = StreamsBuilder::new();
        let mut w = builder
            .stream::<String, String>("in")
            .group_by_key()
            .windowed_by_sliding(windows);
        if final_only {
            w = w.emit_final();
        }
        let late = w.late_records();
        w.count().to("out");
        let dr = driver(builder);
        let pipe = dr.input_topic("in", Utf8, Utf8);
        for (k, ts) in &input {
            pipe.pipe_at(k.clone(), s("v"), *ts).unwrap();
        }
        let got = drain(&dr.output_topic::<Windowed<String>, u64>(
            "out",
            windows.key_serde(Utf8),
            BigEndian,
        ));
        let (updates, want_late) = sliding_oracle(&input, d, grace);
        let want = if final_only {
            sliding_final_oracle(&input, d, grace)
        } else {
            updates
        };
        assert_eq!(
            got, want,
            "case {case} (emit final: {final_only}): d {d} grace {grace} input {input:?}"
        );
        assert_eq!(late.count(), want_late, "case {case}: late records");
    }
}

#[test]
fn sliding_windows_follow_the_records() {
    use kstreams::dsl::SlidingWindows;
    // Grace 5: the window [13, 23] the out-of-order record creates is still open at stream
    // time 25 (without grace it would be closed, and not created).
    let windows = SlidingWindows::of_time_difference_and_grace(
        Duration::from_millis(10),
        Duration::from_millis(5),
    );
    let builder = StreamsBuilder::new();
    builder
        .stream::<String, String>("in")
        .group_by_key()
        .windowed_by_sliding(windows)
        .count()
        .to("out");
    let d = driver(builder);
    let input = d.input_topic::<String, String>("in", Utf8, Utf8);
    input.pipe_at(s("a"), s("x"), 20).unwrap(); // [10, 20]
    input.pipe_at(s("a"), s("x"), 25).unwrap(); // [15, 25]; [21, 31] after 20 now holds 25
    input.pipe_at(s("a"), s("x"), 23).unwrap(); // out of order: in [15, 25], [21, 31], new [13, 23]
    let w = |start: i64| Windowed {
        key: s("a"),
        start,
        end: start + 10,
    };
    assert_eq!(
        drain(&d.output_topic::<Windowed<String>, u64>("out", windows.key_serde(Utf8), BigEndian)),
        vec![
            (w(10), 1, 20),
            (w(15), 2, 25),
            (w(21), 1, 25),
            (w(13), 2, 23),
            (w(15), 3, 25),
            (w(21), 2, 25),
            (w(24), 1, 25)
        ]
    );
}
