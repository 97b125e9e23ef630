//! The DSL against Kafka Streams' results: for each input here, the output Kafka Streams 4.x
//! gives for the same topology and input, with the Kafka class whose behaviour it follows
//! named. Each test was written to fail against the code before its fix; findings are numbered
//! as in issue 26 (remaining deliberate differences: `docs/adr/0006-dsl.md`).

use std::time::Duration;

use kstreams::core::serde::{BigEndian, Nullable, Utf8};
use kstreams::core::TopologyTestDriver;
use kstreams::dsl::{
    Materialized, SessionWindowedSerde, SessionWindows, StreamsBuilder, TimeWindows, Windowed,
    WindowedSerde,
};

mod dsl_support;
use dsl_support::{drain, driver, ms, s};

/// A session count's output: (key, start, end, count or None for a retraction, timestamp).
type SessionOut = (String, i64, i64, Option<u64>, i64);

/// Counts the records of topic `in` per key in sessions (`emit_final` as given), after
/// dropping records whose value is `skip`; pipes `input` (key, value, timestamp); returns the
/// output and the late count.
fn session_counts(
    windows: SessionWindows,
    emit_final: bool,
    input: &[(&str, &str, i64)],
) -> (Vec<SessionOut>, u64) {
    let builder = StreamsBuilder::new();
    let mut w = builder
        .stream::<String, String>("in")
        .filter(|_, v| v != "skip")
        .group_by_key()
        .windowed_by_session(windows);
    if emit_final {
        w = w.emit_final();
    }
    let late = w.late_records();
    w.count().to("out");
    let d = driver(builder);
    let pipe = d.input_topic::<String, String>("in", Utf8, Utf8);
    for (k, v, ts) in input {
        pipe.pipe_at(s(k), s(v), *ts).unwrap();
    }
    let out = drain(&d.output_topic::<Windowed<String>, Option<u64>>(
        "out",
        SessionWindowedSerde::new(Utf8),
        Nullable(BigEndian),
    ))
    .into_iter()
    .map(|(w, n, ts)| (w.key, w.start, w.end, n, ts))
    .collect();
    (out, late.count())
}

fn session(k: &str, start: i64, end: i64, n: Option<u64>) -> SessionOut {
    (s(k), start, end, n, end)
}

/// Finding 3. `KStreamSessionWindowAggregate`: a record is late only when its merged session
/// ends before observed time minus grace minus the gap; gap 10, no grace: at stream time
/// 100 the close time is 90, so records at 95 are on time.
#[test]
fn a_session_record_is_late_only_when_its_session_ends_before_stream_time_minus_grace_and_gap() {
    let gap = SessionWindows::with_inactivity_gap_and_no_grace(ms(10));
    let (out, late) = session_counts(gap, false, &[("a", "x", 100), ("b", "x", 95)]);
    assert_eq!(
        out,
        vec![
            session("a", 100, 100, Some(1)),
            session("b", 95, 95, Some(1))
        ]
    );
    assert_eq!(late, 0);
    // Same key: the record at 95 merges with the session at 100.
    let (out, late) = session_counts(gap, false, &[("a", "x", 100), ("a", "x", 95)]);
    assert_eq!(
        out,
        vec![
            session("a", 100, 100, Some(1)),
            session("a", 100, 100, None),
            session("a", 95, 100, Some(2)),
        ]
    );
    assert_eq!(late, 0);
    // Before the close time: late.
    let (out, late) = session_counts(gap, false, &[("a", "x", 100), ("b", "x", 89)]);
    assert_eq!(out, vec![session("a", 100, 100, Some(1))]);
    assert_eq!(late, 1);
}

/// Finding 19 / item 10. `KStreamSessionWindowAggregate`: a record inside an existing session
/// (the merged session is not `[ts, ts]`) removes and retracts the session it merged, even
/// when the bounds stay the same, then sends the new aggregate.
#[test]
fn a_record_inside_a_session_retracts_it_before_the_update() {
    let gap = SessionWindows::with_inactivity_gap_and_no_grace(ms(10));
    let (out, _) = session_counts(gap, false, &[("k", "x", 0), ("k", "x", 10), ("k", "x", 5)]);
    assert_eq!(
        out,
        vec![
            session("k", 0, 0, Some(1)),
            session("k", 0, 0, None),
            session("k", 0, 10, Some(2)),
            session("k", 0, 10, None),
            session("k", 0, 10, Some(3)),
        ]
    );
}

/// Finding 6. Gap 10, no grace, emit-final: at 15 the session [0, 0] is final (close time 5).
/// The record at 7 would merge it with [15, 15]; Kafka Streams would merge and later emit
/// [0, 15] = 3 as final too (the record at 0 in two final results). Here it is late: a final
/// result stays final (a deliberate difference, ADR 0006).
#[test]
fn an_emitted_final_session_is_never_superseded_by_a_merged_one() {
    let gap = SessionWindows::with_inactivity_gap_and_no_grace(ms(10));
    let input = [
        ("k", "x", 0),
        ("k", "x", 15),
        ("k", "x", 7),
        ("k", "x", 100),
    ];
    let (out, late) = session_counts(gap, true, &input);
    assert_eq!(
        out,
        vec![session("k", 0, 0, Some(1)), session("k", 15, 15, Some(1))]
    );
    assert_eq!(late, 1);
}

/// Finding 4, sessions. `KStreamSessionWindowAggregate` keeps its own observed stream time: a
/// record filtered away before the aggregation (at 1,000) does not make a record at 5 late.
#[test]
fn a_session_aggregation_keeps_its_own_stream_time() {
    let gap = SessionWindows::with_inactivity_gap_and_no_grace(ms(10));
    let (out, late) = session_counts(gap, false, &[("a", "skip", 1_000), ("a", "x", 5)]);
    assert_eq!(out, vec![session("a", 5, 5, Some(1))]);
    assert_eq!(late, 0);
}

/// Finding 4, time windows. `KStreamWindowAggregate` (via
/// `AbstractKStreamTimeWindowAggregateProcessor`) keeps its own observed stream time.
#[test]
fn a_window_aggregation_keeps_its_own_stream_time() {
    for emit_final in [false, true] {
        let builder = StreamsBuilder::new();
        let mut w = builder
            .stream::<String, String>("in")
            .filter(|_, v| v != "skip")
            .group_by_key()
            .windowed_by(TimeWindows::of_size_with_no_grace(ms(10)));
        if emit_final {
            w = w.emit_final();
        }
        let late = w.late_records();
        w.count().to("out");
        let d = driver(builder);
        let pipe = d.input_topic::<String, String>("in", Utf8, Utf8);
        pipe.pipe_at(s("a"), s("skip"), 1_000).unwrap();
        pipe.pipe_at(s("a"), s("x"), 5).unwrap();
        pipe.pipe_at(s("a"), s("x"), 30).unwrap(); // closes [0, 10) for emit-final
        let out = drain(&d.output_topic::<Windowed<String>, u64>(
            "out",
            WindowedSerde::new(Utf8, TimeWindows::of_size_with_no_grace(ms(10))),
            BigEndian,
        ));
        let first = out.first().map(|(w, n, ts)| (w.start, *n, *ts));
        assert_eq!(first, Some((0, 1, 5)), "emit final {emit_final}: {out:?}");
        assert_eq!(late.count(), 0, "emit final {emit_final}");
    }
}

/// The records of a table written to `topic`: (key, value or None for a deletion, timestamp).
fn table_out(d: &TopologyTestDriver, topic: &str) -> Vec<(String, Option<String>, i64)> {
    drain(&d.output_topic::<String, Option<String>>(topic, Utf8, Nullable(Utf8)))
}

/// Finding 2, suppress then filter. Kafka Streams' suppression buffer
/// (`InMemoryTimeOrderedKeyValueChangeBuffer`) evicts a key's change with an old value, and
/// `KTableFilter` turns a change whose new value no longer matches into a deletion: the row `k`
/// is deleted downstream when it becomes "X".
#[test]
fn a_suppressed_change_carries_the_old_value_so_a_filter_deletes_the_row() {
    let builder = StreamsBuilder::new();
    builder
        .table::<String, String>("t", kstreams::dsl::Materialized::with(Utf8))
        .suppress(kstreams::dsl::Suppressed::until_time_limit(ms(10)))
        .filter(|_, v| v != "X")
        .to("out");
    let d = driver(builder);
    let t = d.input_topic::<String, String>("t", Utf8, Utf8);
    t.pipe_at(s("k"), s("A"), 0).unwrap();
    t.pipe_at(s("z"), s("-"), 20).unwrap();
    t.pipe_at(s("k"), s("X"), 30).unwrap();
    t.pipe_at(s("z"), s("-"), 50).unwrap();
    let k: Vec<_> = table_out(&d, "out")
        .into_iter()
        .filter(|(key, _, _)| key == "k")
        .collect();
    assert_eq!(k, vec![(s("k"), Some(s("A")), 0), (s("k"), None, 30)]);
}

/// Finding 2, suppress then regroup. `KTableRepartitionMap` subtracts the old value from its
/// group: `k` moving from A to B after suppression counts A back down to 0 (today's code
/// counted `k` in both groups).
#[test]
fn a_suppressed_change_carries_the_old_value_so_a_regrouping_subtracts_it() {
    let builder = StreamsBuilder::new();
    builder
        .table::<String, String>("t", kstreams::dsl::Materialized::with(Utf8))
        .suppress(kstreams::dsl::Suppressed::until_time_limit(ms(10)))
        .group_by(|k, v| (v.clone(), k.clone()))
        .count()
        .to_stream()
        .to("out");
    let d = driver(builder);
    let t = d.input_topic::<String, String>("t", Utf8, Utf8);
    t.pipe_at(s("k"), s("A"), 0).unwrap();
    t.pipe_at(s("z"), s("-"), 20).unwrap();
    t.pipe_at(s("k"), s("B"), 30).unwrap();
    t.pipe_at(s("z"), s("-"), 50).unwrap();
    let counts: Vec<(String, u64)> = drain(&d.output_topic::<String, u64>("out", Utf8, BigEndian))
        .into_iter()
        .filter(|(g, _, _)| g != "-")
        .map(|(g, n, _)| (g, n))
        .collect();
    assert_eq!(counts, vec![(s("A"), 1), (s("A"), 0), (s("B"), 1)]);
}

/// Finding 4, suppress. `KTableSuppressProcessorSupplier` keeps its own observed stream time:
/// a table update filtered away before the suppression (at 1,000) does not make it emit a row
/// held since 5 with a limit of 10.
#[test]
fn a_suppression_keeps_its_own_stream_time() {
    let builder = StreamsBuilder::new();
    builder
        .table::<String, String>("t", kstreams::dsl::Materialized::with(Utf8))
        .filter(|_, v| v != "skip")
        .suppress(kstreams::dsl::Suppressed::until_time_limit(ms(10)))
        .to("out");
    let d = driver(builder);
    let t = d.input_topic::<String, String>("t", Utf8, Utf8);
    t.pipe_at(s("k"), s("skip"), 1_000).unwrap();
    t.pipe_at(s("j"), s("x"), 5).unwrap();
    assert_eq!(
        table_out(&d, "out"),
        vec![],
        "nothing due at the suppression's time 5"
    );
    t.pipe_at(s("j"), s("y"), 20).unwrap();
    assert_eq!(table_out(&d, "out"), vec![(s("j"), Some(s("y")), 20)]);
}

/// Finding 18. A byte bound counts the values: ten keys with values of 1,000 bytes under a
/// bound of 3,000 bytes keep at most two held back, the rest emitted early, oldest first (Kafka
/// Streams' buffer counts keys, values and record context, `computeRecordSize`).
#[test]
fn a_suppression_byte_bound_counts_values() {
    let builder = StreamsBuilder::new();
    builder
        .table::<String, String>("t", kstreams::dsl::Materialized::with(Utf8))
        .suppress(
            kstreams::dsl::Suppressed::until_time_limit(Duration::from_secs(3600))
                .with_max_bytes(3_000, kstreams::dsl::WhenFull::EmitEarly),
        )
        .to("out");
    let d = driver(builder);
    let t = d.input_topic::<String, String>("t", Utf8, Utf8);
    for i in 0..10 {
        t.pipe_at(format!("k{i}"), "v".repeat(1_000), 1 + i)
            .unwrap();
    }
    let keys: Vec<String> = table_out(&d, "out")
        .into_iter()
        .map(|(k, _, _)| k)
        .collect();
    assert_eq!(keys, (0..8).map(|i| format!("k{i}")).collect::<Vec<_>>());
}

/// Finding 5 (KIP-904). `KTableRepartitionMap` sends a row that changes within its group as
/// one record with both values, and `KTableAggregate` applies the subtractor and the adder
/// before forwarding once: no false intermediate aggregate (Paris = 0, a total without p1).
#[test]
fn a_row_changing_within_its_group_updates_the_aggregate_once() {
    let builder = StreamsBuilder::new();
    let users = builder.table::<String, String>("cities", kstreams::dsl::Materialized::with(Utf8));
    users
        .group_by(|user, city| (city.clone(), user.clone()))
        .count()
        .to_stream()
        .to("per-city");
    builder
        .table::<String, String>("scores", kstreams::dsl::Materialized::with(Utf8))
        .group_by(|_, score| (s("all"), score.clone()))
        .aggregate(
            || 0_u64,
            |_, v, total| total + v.parse::<u64>().unwrap(),
            |_, v, total| total - v.parse::<u64>().unwrap(),
            kstreams::dsl::Materialized::with(BigEndian),
        )
        .to_stream()
        .to("total");
    let d = driver(builder);
    let c = d.input_topic::<String, String>("cities", Utf8, Utf8);
    c.pipe_at(s("u1"), s("Paris"), 1).unwrap();
    c.pipe_at(s("u1"), s("Paris"), 2).unwrap();
    c.pipe_at(s("u1"), s("Rome"), 3).unwrap(); // another group: subtract, then add
    let sc = d.input_topic::<String, String>("scores", Utf8, Utf8);
    sc.pipe_at(s("p1"), s("5"), 1).unwrap();
    sc.pipe_at(s("p2"), s("3"), 2).unwrap();
    sc.pipe_at(s("p1"), s("7"), 3).unwrap();
    let read = |topic: &str| drain(&d.output_topic::<String, u64>(topic, Utf8, BigEndian));
    let row = |k: &str, n: u64, ts: i64| (s(k), n, ts);
    assert_eq!(
        read("per-city"),
        vec![
            row("Paris", 1, 1),
            row("Paris", 1, 2),
            row("Paris", 0, 3),
            row("Rome", 1, 3)
        ]
    );
    assert_eq!(
        read("total"),
        vec![row("all", 5, 1), row("all", 8, 2), row("all", 10, 3)]
    );
}

/// A sliding-window result: (start, end, value or None for a deletion, timestamp).
type SlidingOut<V> = (i64, i64, Option<V>, i64);

fn sliding_rows<V: 'static>(
    d: &TopologyTestDriver,
    windows: kstreams::dsl::SlidingWindows,
    values: impl kstreams::core::Serde<V> + 'static,
) -> Vec<SlidingOut<V>> {
    drain(&d.output_topic::<Windowed<String>, Option<V>>(
        "out",
        windows.key_serde(Utf8),
        Nullable(values),
    ))
    .into_iter()
    .map(|(w, v, ts)| (w.start, w.end, v, ts))
    .collect()
}

/// Finding 2, sliding windows. `KStreamSlidingWindowAggregate` forwards a window's update with
/// its previous aggregate, so `KTableFilter` deletes the window [90, 100] downstream when its
/// count reaches 2.
#[test]
fn a_sliding_window_update_carries_the_old_aggregate_so_a_filter_deletes_it() {
    let windows = kstreams::dsl::SlidingWindows::of_time_difference_and_grace(ms(10), ms(0));
    let builder = StreamsBuilder::new();
    builder
        .stream::<String, String>("in")
        .group_by_key()
        .windowed_by_sliding(windows)
        .count()
        .filter(|_, n| *n < 2)
        .to("out");
    let d = driver(builder);
    let pipe = d.input_topic::<String, String>("in", Utf8, Utf8);
    pipe.pipe_at(s("k"), s("x"), 100).unwrap();
    pipe.pipe_at(s("k"), s("x"), 95).unwrap();
    // [85, 95] ends before the close time 100: not forwarded. [96, 106] is new (it holds 100).
    assert_eq!(
        sliding_rows::<u64>(&d, windows, BigEndian),
        vec![
            (90, 100, Some(1), 100),
            (90, 100, None, 100),
            (96, 106, Some(1), 100)
        ]
    );
}

/// Finding 12. `KStreamSlidingWindowAggregate.processEarly`: a record before the time
/// difference goes into the window [0, d], not a window with a negative start.
#[test]
fn an_early_sliding_record_falls_in_the_window_from_zero() {
    let windows = kstreams::dsl::SlidingWindows::of_time_difference_and_grace(ms(10), ms(100));
    let builder = StreamsBuilder::new();
    builder
        .stream::<String, String>("in")
        .group_by_key()
        .windowed_by_sliding(windows)
        .count()
        .to("out");
    let d = driver(builder);
    let pipe = d.input_topic::<String, String>("in", Utf8, Utf8);
    pipe.pipe_at(s("k"), s("x"), 5).unwrap();
    pipe.pipe_at(s("k"), s("x"), 8).unwrap();
    pipe.pipe_at(s("k"), s("x"), 12).unwrap();
    assert_eq!(
        sliding_rows::<u64>(&d, windows, BigEndian),
        vec![
            (0, 10, Some(1), 5),
            (0, 10, Some(2), 8),
            (6, 16, Some(1), 8), // the right window of 5, created by 8
            (2, 12, Some(3), 12),
            (6, 16, Some(2), 12),
            (9, 19, Some(1), 12), // the right window of 8, created by 12
        ]
    );
}

/// Finding 13. Kafka Streams aggregates sliding windows incrementally, in arrival order: a
/// "last value" aggregate of the window [100, 110] is the value that arrived last ("y", at
/// 105), not the one with the largest timestamp.
#[test]
fn a_sliding_aggregate_folds_records_in_arrival_order() {
    let windows = kstreams::dsl::SlidingWindows::of_time_difference_and_grace(ms(10), ms(0));
    let builder = StreamsBuilder::new();
    builder
        .stream::<String, String>("in")
        .group_by_key()
        .windowed_by_sliding(windows)
        .aggregate(
            String::new,
            |_, v, _| v,
            kstreams::dsl::Materialized::with(Utf8),
        )
        .to("out");
    let d = driver(builder);
    let pipe = d.input_topic::<String, String>("in", Utf8, Utf8);
    pipe.pipe_at(s("k"), s("x"), 110).unwrap();
    pipe.pipe_at(s("k"), s("y"), 105).unwrap();
    assert_eq!(
        sliding_rows(&d, windows, Utf8),
        vec![
            (100, 110, Some(s("x")), 110),
            (100, 110, Some(s("y")), 110),
            (106, 116, Some(s("x")), 110),
        ]
    );
}

/// Finding 16. `KTableAggregate` applies the subtractor only when the group has an aggregate: a
/// subtraction reaching a group that has none (here written straight to the repartition
/// topic, as one left over from before a reset would be) changes nothing, where a fresh
/// initializer minus the value would write a count of 0 and a negative sum.
#[test]
fn a_subtraction_for_a_group_without_an_aggregate_changes_nothing() {
    let builder = StreamsBuilder::new();
    builder
        .table::<String, String>("scores", kstreams::dsl::Materialized::with(Utf8))
        .group_by_with(
            |_, score| (s("all"), score.clone()),
            kstreams::dsl::Grouped::with(Utf8, Utf8).named("by-all"),
        )
        .aggregate(
            || 0_i64,
            |_, v, total| total + v.parse::<i64>().unwrap(),
            |_, v, total| total - v.parse::<i64>().unwrap(),
            kstreams::dsl::Materialized::with(BigEndian),
        )
        .to_stream()
        .to("total");
    let d = driver(builder);
    // A subtraction of "5" (kind 0, then the value) for the group "ghost".
    let mut subtract = vec![0_u8];
    subtract.extend_from_slice(b"5");
    d.input_topic::<String, String>("by-all", Utf8, Utf8)
        .pipe_raw(
            Some(b"ghost".to_vec()),
            Some(subtract),
            1,
            Default::default(),
        )
        .unwrap();
    d.input_topic::<String, String>("scores", Utf8, Utf8)
        .pipe_at(s("p1"), s("3"), 2)
        .unwrap();
    assert_eq!(
        drain(&d.output_topic::<String, i64>("total", Utf8, BigEndian)),
        vec![(s("all"), 3, 2)]
    );
}

/// Finding 17. Kafka Streams' aggregations (`KStreamAggregate`, `KStreamWindowAggregate`,
/// `KStreamSessionWindowAggregate`, `KStreamSlidingWindowAggregate`) and `toTable` skip a
/// record with a null key, with a warning and the dropped-records metric; the application
/// goes on. A left stream-table join joins it with no row (KIP-962, Kafka 3.7).
#[test]
fn aggregations_skip_records_with_a_null_key_and_a_left_join_joins_them() {
    use kstreams::dsl::{Consumed, Grouped, Joined, Materialized, Produced, SlidingWindows};
    let key = || Nullable(Utf8);
    let tumbling = TimeWindows::of_size_with_no_grace(ms(10));
    let sliding = SlidingWindows::of_time_difference_and_grace(ms(10), ms(100));
    let sessions = SessionWindows::with_inactivity_gap_and_grace(ms(10), ms(100));
    let builder = StreamsBuilder::new();
    let input = builder.stream_with::<Option<String>, String>("in", Consumed::with(key(), Utf8));
    let grouped = input.group_by_key_with(Grouped::with(key(), Utf8));
    grouped
        .count()
        .to_stream()
        .to_with("count", Produced::with(key(), BigEndian));
    grouped.windowed_by(tumbling).count().to("tumbling");
    grouped.windowed_by_sliding(sliding).count().to("sliding");
    grouped.windowed_by_session(sessions).count().to("session");
    let table = input.to_table_with(key(), Materialized::with(Utf8));
    table
        .to_stream()
        .to_with("table", Produced::with(key(), Utf8));
    let levels =
        builder.table_with::<Option<String>, String>("levels", key(), Materialized::with(Utf8));
    input
        .left_join_table(
            &levels,
            |v, l| format!("{v}/{}", l.map_or("-", String::as_str)),
            Joined::with(Utf8),
        )
        .to_with("joined", Produced::with(key(), Utf8));
    let d = driver(builder);
    let pipe = d.input_topic::<Option<String>, String>("in", key(), Utf8);
    pipe.pipe_at(None, s("x"), 1).unwrap();
    pipe.pipe_at(Some(s("a")), s("y"), 2).unwrap();
    let keys_of = |topic: &str| -> Vec<Option<String>> {
        d.output_topic::<Option<String>, Vec<u8>>(topic, key(), kstreams::core::serde::RawBytes)
            .read_records()
            .unwrap()
            .into_iter()
            .map(|r| r.into_key_value().0)
            .collect()
    };
    assert_eq!(keys_of("count"), vec![Some(s("a"))]);
    assert_eq!(keys_of("table"), vec![Some(s("a"))]);
    let windowed = |topic: &str, serde: &dyn kstreams::core::Serde<Windowed<Option<String>>>| {
        let raw = d.output_topic::<Vec<u8>, Vec<u8>>(
            topic,
            kstreams::core::serde::RawBytes,
            kstreams::core::serde::RawBytes,
        );
        raw.read_records()
            .unwrap()
            .into_iter()
            .map(|r| {
                let k = r.into_key_value().0;
                serde.deserialize(topic, Some(&k)).unwrap().key
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(
        windowed("tumbling", &WindowedSerde::new(key(), tumbling)),
        vec![Some(s("a"))]
    );
    assert_eq!(
        windowed("sliding", &sliding.key_serde(key())),
        vec![Some(s("a"))]
    );
    assert_eq!(
        windowed("session", &SessionWindowedSerde::new(key())),
        vec![Some(s("a"))]
    );
    let joined = drain(&d.output_topic::<Option<String>, String>("joined", key(), Utf8));
    assert_eq!(
        joined,
        vec![(None, s("x/-"), 1), (Some(s("a")), s("y/-"), 2)]
    );
}

/// Finding 15. A re-keyed stream feeding two stateful operators builds and both see every
/// record: two aggregations of one grouped stream, and an aggregation beside a stream-table
/// join of the same re-keyed stream (Kafka Streams gives each its repartition topic, or one
/// shared with `topology.optimization`; here they share one). Before, the build failed: both
/// would get the same generated repartition topic.
#[test]
fn a_rekeyed_stream_feeds_two_stateful_operators() {
    use kstreams::dsl::{Joined, Materialized};
    let builder = StreamsBuilder::new();
    let by_user = builder
        .stream::<String, String>("visits") // keyed by visit id, value = user
        .select_key(|_, user| user.clone());
    let grouped = by_user.group_by_key();
    grouped.count().to_stream().to("counts");
    grouped
        .reduce(|a, b| format!("{a}+{b}"))
        .to_stream()
        .to("reduced");
    let names = builder.table::<String, String>("names", Materialized::with(Utf8));
    by_user
        .join_table(&names, |u, n| format!("{u}={n}"), Joined::default())
        .to("named");
    let d = driver(builder);
    d.input_topic::<String, String>("names", Utf8, Utf8)
        .pipe_at(s("ann"), s("Ann"), 1)
        .unwrap();
    let v = d.input_topic::<String, String>("visits", Utf8, Utf8);
    v.pipe_at(s("v1"), s("ann"), 2).unwrap();
    v.pipe_at(s("v2"), s("ann"), 3).unwrap();
    let values = |topic: &str| -> Vec<String> {
        d.output_topic::<String, String>(topic, Utf8, Utf8)
            .read_values()
            .unwrap()
    };
    let counts: Vec<u64> = d
        .output_topic::<String, u64>("counts", Utf8, BigEndian)
        .read_values()
        .unwrap();
    assert_eq!(counts, vec![1, 2]);
    assert_eq!(values("reduced"), vec![s("ann"), s("ann+ann")]);
    assert_eq!(values("named"), vec![s("ann=Ann"), s("ann=Ann")]);
}

/// Item 11: `reduce` on every windowed stream (Kafka Streams' `TimeWindowedKStream`,
/// `SessionWindowedKStream` and `SlidingWindowedKStream` have it): a window's first value is
/// its aggregate, each later one is combined with `reducer`; sessions a record bridges are
/// combined with `reducer` too.
#[test]
fn windowed_streams_reduce() {
    use kstreams::dsl::{Materialized, SlidingWindows};
    let tumbling = TimeWindows::of_size_and_grace(ms(10), ms(100));
    let sliding = SlidingWindows::of_time_difference_and_grace(ms(10), ms(100));
    let sessions = SessionWindows::with_inactivity_gap_and_grace(ms(5), ms(100));
    let builder = StreamsBuilder::new();
    let grouped = builder.stream::<String, String>("in").group_by_key();
    let join = |a: String, b: String| format!("{a}+{b}");
    grouped
        .windowed_by(tumbling)
        .reduce(join, Materialized::with(Utf8))
        .to("tumbling");
    grouped
        .windowed_by_sliding(sliding)
        .reduce(join, Materialized::with(Utf8))
        .to("sliding");
    grouped
        .windowed_by_session(sessions)
        .reduce(join, Materialized::with(Utf8))
        .to("session");
    let d = driver(builder);
    let pipe = d.input_topic::<String, String>("in", Utf8, Utf8);
    for (v, ts) in [("a", 1), ("b", 3), ("c", 12), ("d", 7)] {
        pipe.pipe_at(s("k"), s(v), ts).unwrap();
    }
    let rows = |topic: &str, keys: &dyn kstreams::core::Serde<Windowed<String>>| {
        drain(&d.output_topic::<Vec<u8>, Option<String>>(
            topic,
            kstreams::core::serde::RawBytes,
            Nullable(Utf8),
        ))
        .into_iter()
        .map(|(k, v, _)| {
            let w = keys.deserialize(topic, Some(&k)).unwrap();
            (w.start, w.end, v)
        })
        .collect::<Vec<_>>()
    };
    let row = |start, end, v: Option<&str>| (start, end, v.map(s));
    assert_eq!(
        rows("tumbling", &WindowedSerde::new(Utf8, tumbling)),
        vec![
            row(0, 10, Some("a")),
            row(0, 10, Some("a+b")),
            row(10, 20, Some("c")),
            row(0, 10, Some("a+b+d")),
        ]
    );
    // Sessions (gap 5): [1,1], then [1,3], then [12,12]; d at 7 bridges [1,3] and [12,12].
    assert_eq!(
        rows("session", &SessionWindowedSerde::new(Utf8)),
        vec![
            row(1, 1, Some("a")),
            row(1, 1, None),
            row(1, 3, Some("a+b")),
            row(12, 12, Some("c")),
            row(1, 3, None),
            row(12, 12, None),
            row(1, 12, Some("a+b+c+d")),
        ]
    );
    // Sliding (difference 10): the last update of each window folds its records in arrival
    // order.
    let last: std::collections::BTreeMap<(i64, i64), Option<String>> =
        rows("sliding", &sliding.key_serde(Utf8))
            .into_iter()
            .map(|(a, b, v)| ((a, b), v))
            .collect();
    assert_eq!(last[&(0, 10)], Some(s("a+b+d")));
    assert_eq!(last[&(2, 12)], Some(s("b+c+d")));
}

/// Item 11: stores of every aggregation can be named (`count_with` on session and sliding
/// windows and on grouped tables, as Kafka Streams' `count(Materialized)`), and queried by
/// that name.
#[test]
fn every_count_can_name_its_store() {
    use kstreams::dsl::{Materialized, SlidingWindows};
    let builder = StreamsBuilder::new();
    let grouped = builder.stream::<String, String>("in").group_by_key();
    grouped
        .windowed_by_session(SessionWindows::with_inactivity_gap_and_no_grace(ms(5)))
        .count_with(Materialized::with(BigEndian).named("session-counts"));
    grouped
        .windowed_by_sliding(SlidingWindows::of_time_difference_with_no_grace(ms(5)))
        .count_with(Materialized::with(BigEndian).named("sliding-counts"));
    builder
        .table::<String, String>("users", Materialized::with(Utf8))
        .group_by(|u, city| (city.clone(), u.clone()))
        .count_with(Materialized::with(BigEndian).named("users-per-city"));
    let topology = builder.build().unwrap();
    let names: Vec<String> = topology
        .subtopologies()
        .iter()
        .flat_map(|st| st.stores.clone())
        .collect();
    for want in ["session-counts", "sliding-counts", "users-per-city"] {
        assert!(names.iter().any(|n| n == want), "{want} in {names:?}");
    }
}

/// Item 11: `suppress(untilWindowCloses)` on any windowed table (Kafka Streams'
/// `KTableSuppressProcessorSupplier` with the window-end time definition): each window's
/// final result once, when stream time reaches its end plus `close_after`; sessions merged
/// away are not emitted.
#[test]
fn a_windowed_table_is_suppressed_until_its_windows_close() {
    let tumbling = TimeWindows::of_size_with_no_grace(ms(10));
    let builder = StreamsBuilder::new();
    let grouped = builder.stream::<String, String>("in").group_by_key();
    grouped
        .windowed_by(tumbling)
        .count()
        // An operator between the aggregation and the suppression.
        .map_values(|n| n * 100, BigEndian)
        .suppress_until_window_closes(ms(0))
        .to("tumbling");
    grouped
        .windowed_by_session(SessionWindows::with_inactivity_gap_and_no_grace(ms(5)))
        .count()
        .suppress_until_window_closes(ms(5))
        .to("session");
    let d = driver(builder);
    let pipe = d.input_topic::<String, String>("in", Utf8, Utf8);
    for ts in [1, 2, 3, 12] {
        pipe.pipe_at(s("k"), s("x"), ts).unwrap();
    }
    let tumbling_out = || {
        drain(&d.output_topic::<Windowed<String>, Option<u64>>(
            "tumbling",
            WindowedSerde::new(Utf8, tumbling),
            Nullable(BigEndian),
        ))
        .into_iter()
        .map(|(w, n, ts)| (w.start, n, ts))
        .collect::<Vec<_>>()
    };
    let session_out = || {
        drain(&d.output_topic::<Windowed<String>, Option<u64>>(
            "session",
            SessionWindowedSerde::new(Utf8),
            Nullable(BigEndian),
        ))
        .into_iter()
        .map(|(w, n, _)| (w.start, w.end, n))
        .collect::<Vec<_>>()
    };
    // At 12: [0, 10) closed (3 records); the session [1, 3] closes at 3 + 5 = 8.
    assert_eq!(tumbling_out(), vec![(0, Some(300), 3)]);
    assert_eq!(session_out(), vec![(1, 3, Some(3))]);
    pipe.pipe_at(s("k"), s("x"), 30).unwrap();
    assert_eq!(tumbling_out(), vec![(10, Some(100), 12)]);
    assert_eq!(session_out(), vec![(12, 12, Some(1))]);
}

/// Item 11: `cogroup` (Kafka's `CogroupedKStream`, KIP-150). Each grouped stream adds to one
/// aggregate per key with its own aggregator (Kafka's `CogroupedStreamAggregateBuilder` puts
/// one aggregate processor per stream on one shared store); a re-keyed stream goes through a
/// repartition topic of its own; each input record updates the aggregate and goes out at the
/// largest timestamp of the key's records, as with one stream (`KStreamAggregate`).
#[test]
fn cogrouped_streams_aggregate_into_one_table_per_key_window_and_session() {
    let builder = StreamsBuilder::new();
    let clicks = builder.stream::<String, String>("clicks").group_by_key();
    // Purchases are keyed by order, "user:amount": re-grouped by user.
    let buys = builder
        .stream::<String, String>("buys")
        .group_by(|_, v| v.split(':').next().unwrap_or_default().to_string());
    let amount = |v: &str| v.split(':').nth(1).unwrap_or_default().to_string();
    let cogrouped = clicks
        .cogroup(|_, _page: String, agg: String| agg + "c")
        .cogroup(&buys, move |_, v: String, agg: String| {
            agg + "p" + &amount(&v)
        });
    cogrouped
        .aggregate(String::new, Materialized::with(Utf8).named("activity"))
        .to("per-user");
    let tumbling = TimeWindows::of_size_with_no_grace(ms(10));
    cogrouped
        .windowed_by(tumbling)
        .aggregate(String::new, Materialized::with(Utf8))
        .to("per-window");
    cogrouped
        .windowed_by_session(SessionWindows::with_inactivity_gap_and_no_grace(ms(5)))
        .aggregate(String::new, |_, a, b| a + &b, Materialized::with(Utf8))
        .to("per-session");
    let d = driver(builder);
    let c = d.input_topic::<String, String>("clicks", Utf8, Utf8);
    let b = d.input_topic::<String, String>("buys", Utf8, Utf8);
    c.pipe_at(s("u1"), s("home"), 1).unwrap();
    b.pipe_at(s("o1"), s("u1:5"), 4).unwrap();
    c.pipe_at(s("u2"), s("home"), 3).unwrap();
    c.pipe_at(s("u1"), s("cart"), 12).unwrap();
    b.pipe_at(s("o2"), s("u1:7"), 11).unwrap();
    let v = |x: &str| Some(s(x));
    assert_eq!(
        drain(&d.output_topic::<String, Option<String>>("per-user", Utf8, Nullable(Utf8))),
        vec![
            (s("u1"), v("c"), 1),
            (s("u1"), v("cp5"), 4),
            (s("u2"), v("c"), 3),
            (s("u1"), v("cp5c"), 12),
            (s("u1"), v("cp5cp7"), 12),
        ]
    );
    let windowed = drain(&d.output_topic::<Windowed<String>, Option<String>>(
        "per-window",
        WindowedSerde::new(Utf8, tumbling),
        Nullable(Utf8),
    ));
    assert_eq!(
        windowed
            .into_iter()
            .map(|(w, agg, ts)| (w.key, w.start, agg, ts))
            .collect::<Vec<_>>(),
        vec![
            (s("u1"), 0, v("c"), 1),
            (s("u1"), 0, v("cp5"), 4),
            (s("u2"), 0, v("c"), 3),
            (s("u1"), 10, v("c"), 12),
            (s("u1"), 10, v("cp7"), 12),
        ]
    );
    let sessions = drain(&d.output_topic::<Windowed<String>, Option<String>>(
        "per-session",
        SessionWindowedSerde::new(Utf8),
        Nullable(Utf8),
    ));
    // Kafka's KStreamSessionWindowAggregate: merged sessions are retracted, then the new one
    // (initializer, merged with the old sessions' aggregates, then the record added) goes out.
    assert_eq!(
        sessions
            .into_iter()
            .map(|(w, agg, _)| (w.key, w.start, w.end, agg))
            .collect::<Vec<_>>(),
        vec![
            (s("u1"), 1, 1, v("c")),
            (s("u1"), 1, 1, None),
            (s("u1"), 1, 4, v("cp5")),
            (s("u2"), 3, 3, v("c")),
            (s("u1"), 12, 12, v("c")),
            (s("u1"), 12, 12, None),
            (s("u1"), 11, 12, v("cp7")),
        ]
    );
}
