//! The DSL's joins on the `TopologyTestDriver`: exact outputs (keys, values, timestamps) of
//! every join kind, with out-of-order records, records after grace, null keys and deletes on
//! the table side, and a randomised comparison of the three stream-stream joins with a
//! recomputation from their definition.

use std::collections::BTreeMap;

use kstreams::core::serde::{Nullable, Utf8};
use kstreams::core::store::KeyValueStore;
use kstreams::core::TopologyTestDriver;
use kstreams::dsl::{
    Consumed, DroppedRecords, JoinWindows, Joined, KStream, Materialized, StreamJoined,
    StreamsBuilder,
};
use rand::{Rng, SeedableRng};

mod dsl_support;
use dsl_support::{drain, driver, ms, s};

fn show(v: Option<&String>) -> &str {
    v.map_or("-", String::as_str)
}

/// The kinds of stream-stream join.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Inner,
    Left,
    Outer,
}

/// `left` joined with `right` as `kind` says, values shown as `this|other` ("-" for none).
fn stream_join(
    left: &KStream<String, String>,
    right: &KStream<String, String>,
    kind: Kind,
    windows: JoinWindows,
    joined: StreamJoined<String, String, String>,
) -> KStream<String, String> {
    match kind {
        Kind::Inner => left.join(right, |a, b| format!("{a}|{b}"), windows, joined),
        Kind::Left => left.left_join(right, |a, b| format!("{a}|{}", show(b)), windows, joined),
        Kind::Outer => left.outer_join(
            right,
            |a, b| format!("{}|{}", show(a), show(b)),
            windows,
            joined,
        ),
    }
}

type Out = Vec<(String, String, i64)>;

/// Builds a stream-stream join of `left` and `right` and pipes `input` ((is left, key, value,
/// timestamp), in order); returns the output and the dropped count.
fn run_stream_join(
    kind: Kind,
    windows: JoinWindows,
    input: &[(bool, String, String, i64)],
) -> (Out, u64) {
    let builder = StreamsBuilder::new();
    let dropped = DroppedRecords::default();
    let l = builder.stream::<String, String>("left");
    let r = builder.stream::<String, String>("right");
    stream_join(
        &l,
        &r,
        kind,
        windows,
        StreamJoined::default().count_dropped_in(&dropped),
    )
    .to("joined");
    let d = driver(builder);
    let (tl, tr) = (
        d.input_topic::<String, String>("left", Utf8, Utf8),
        d.input_topic::<String, String>("right", Utf8, Utf8),
    );
    for (is_left, k, v, ts) in input {
        let t = if *is_left { &tl } else { &tr };
        t.pipe_at(k.clone(), v.clone(), *ts).unwrap();
    }
    let out = drain(&d.output_topic::<String, String>("joined", Utf8, Utf8));
    (out, dropped.count())
}

fn rec(is_left: bool, k: &str, v: &str, ts: i64) -> (bool, String, String, i64) {
    (is_left, s(k), s(v), ts)
}

fn row(k: &str, v: &str, ts: i64) -> (String, String, i64) {
    (s(k), s(v), ts)
}

#[test]
fn inner_stream_join_pairs_records_within_the_window_late_ones_too_while_the_store_holds_them() {
    // Window 10 both ways, grace 5: each side's store holds 25 ms behind the largest timestamp
    // it has seen (Kafka's window store for a join: size + grace, nothing at or before that).
    let windows = JoinWindows::of_time_difference_and_grace(ms(10), ms(5));
    let input = [
        rec(true, "a", "l1", 100),
        rec(false, "a", "r1", 105),
        rec(false, "a", "r2", 95),  // out of order, within grace
        rec(true, "b", "l2", 120),  // stream time 120
        rec(true, "a", "l3", 112),  // joins r1 (105), not r2 (95)
        rec(false, "a", "r3", 104), // late (104 + 10 + 5 < 120), still joins l1 and l3
        rec(true, "a", "l4", 106),  // joins r3 and r1
        rec(false, "a", "r4", 60),  // at or before 105 - 25: not kept, counted; no partner left
    ];
    let (out, dropped) = run_stream_join(Kind::Inner, windows, &input);
    assert_eq!(
        out,
        vec![
            row("a", "l1|r1", 105),
            row("a", "l1|r2", 100),
            row("a", "l3|r1", 112),
            row("a", "l1|r3", 104),
            row("a", "l3|r3", 112),
            row("a", "l4|r3", 106),
            row("a", "l4|r1", 106),
        ]
    );
    assert_eq!(dropped, 1);
}

#[test]
fn left_stream_join_emits_a_record_alone_only_after_its_window_closed() {
    // Window 10 both ways, no grace: a lone record is final 20 ms after its timestamp.
    let windows = JoinWindows::of_time_difference_with_no_grace(ms(10));
    let input = [
        rec(true, "a", "l1", 100),
        rec(true, "b", "l2", 105),
        rec(false, "a", "r1", 108), // a partner for l1: l1 is never emitted alone
        rec(true, "c", "l3", 130),  // stream time 130: l2 (105) can no longer join
        rec(false, "c", "r2", 135),
        rec(true, "d", "l4", 200),  // l3 joined; l4 waits (the input ends)
        rec(false, "e", "r3", 201), // a right record alone: not emitted by a left join
    ];
    let (out, _) = run_stream_join(Kind::Left, windows, &input);
    assert_eq!(
        out,
        vec![
            row("a", "l1|r1", 108),
            row("b", "l2|-", 105),
            row("c", "l3|r2", 135),
        ]
    );
}

#[test]
fn outer_stream_join_emits_lone_records_of_both_sides_in_timestamp_order() {
    let windows = JoinWindows::of_time_difference_with_no_grace(ms(5));
    let input = [
        rec(true, "a", "l1", 10),
        rec(false, "b", "r1", 12),
        rec(false, "a", "r2", 14), // joins l1
        rec(true, "x", "l2", 30),  // r1 (12) is final: 12 + 10 < 30
        rec(true, "a", "l3", 31),
        rec(false, "z", "r3", 50), // l2 and l3 are final, in timestamp order
    ];
    let (out, _) = run_stream_join(Kind::Outer, windows, &input);
    assert_eq!(
        out,
        vec![
            row("a", "l1|r2", 14),
            row("b", "-|r1", 12),
            row("x", "l2|-", 30),
            row("a", "l3|-", 31),
        ]
    );
}

#[test]
fn asymmetric_windows_reach_back_and_forward_as_configured() {
    // A left record at t joins right records in [t - 2, t + 20].
    let windows = JoinWindows::of_time_difference_with_no_grace(ms(0))
        .before(ms(2))
        .after(ms(20));
    let input = [
        rec(false, "a", "r-early", 95),
        rec(false, "a", "r-close", 99),
        rec(true, "a", "l1", 100),
        rec(false, "a", "r-late", 119),
        rec(false, "a", "r-too-late", 121),
    ];
    let (out, _) = run_stream_join(Kind::Inner, windows, &input);
    assert_eq!(
        out,
        vec![row("a", "l1|r-close", 100), row("a", "l1|r-late", 119)]
    );
}

// Item 10 of issue 26: Kafka Streams 4.x's stream-stream join, scenario by scenario. The
// expected outputs are those of Kafka's own tests for the same input (the test named in each
// comment), restated in this crate's terms; the rules are those of Kafka's
// `KStreamKStreamJoin` processor and its window stores.

#[test]
fn a_lone_record_goes_out_once_its_window_and_grace_pass_and_still_joins_later_partners() {
    // Kafka: KStreamKStreamLeftJoinTest.testLeftJoinedRecordsWithZeroAfterAreEmitted. Window
    // 100 back, 0 forward, no grace: a left record at t is alone for good once stream time
    // passes t + 0 + 0, and stays in its window store, where a right record arriving later
    // at t' finds it when t is in [t', t' + 100].
    let windows = JoinWindows::of_time_difference_with_no_grace(ms(100)).after(ms(0));
    let keys = ["0", "1", "2", "3"];
    let mut input = vec![];
    for (i, k) in keys.iter().enumerate() {
        input.push(rec(true, k, &format!("A{k}"), 1000 + i as i64));
    }
    for (round, ts) in [
        ("a", 999),
        ("b", 1000),
        ("c", 1001),
        ("d", 1002),
        ("e", 1003),
        ("f", 1100),
    ] {
        for k in keys {
            input.push(rec(false, k, &format!("{round}{k}"), ts));
        }
    }
    let (out, dropped) = run_stream_join(Kind::Left, windows, &input);
    let mut want = vec![
        row("0", "A0|-", 1000),
        row("1", "A1|-", 1001),
        row("2", "A2|-", 1002),
    ];
    for (round, from) in [("a", 0), ("b", 0), ("c", 1), ("d", 2), ("e", 3)] {
        for (i, k) in keys.iter().enumerate().skip(from) {
            want.push(row(k, &format!("A{k}|{round}{k}"), 1000 + i as i64));
        }
    }
    assert_eq!(out, want);
    assert_eq!(dropped, 0);
}

#[test]
fn lone_records_of_equal_timestamp_go_out_right_side_first() {
    // Kafka: KStreamKStreamOuterJoinTest.testGracePeriod. Window 100, grace 10: a record at 0
    // is alone for good once stream time passes 110; Kafka's store of lone records is ordered
    // by timestamp, then side (right before left), then key.
    let windows = JoinWindows::of_time_difference_and_grace(ms(100), ms(10));
    let input = [
        rec(true, "0", "A0", 0),
        rec(false, "1", "11", 0),
        rec(true, "1", "A1", 101),
        rec(false, "0", "10", 101),
        rec(false, "0", "100", 112),
    ];
    let (out, _) = run_stream_join(Kind::Outer, windows, &input);
    assert_eq!(out, vec![row("1", "-|11", 0), row("0", "A0|-", 0)]);
}

#[test]
fn a_right_record_is_alone_for_good_after_the_before_interval() {
    // Kafka: KStreamKStreamOuterJoinTest.testEmitAllNonJoinedResultsForAsymmetricWindow.
    // 5 back, 20 forward, no grace: a left record at t closes at t + 20, a right one at t + 5.
    let windows = JoinWindows::of_time_difference_with_no_grace(ms(5)).after(ms(20));
    let input = [
        rec(true, "0", "A0", 29),
        rec(true, "1", "A1", 30),
        rec(false, "2", "12", 31),
        rec(false, "3", "13", 36),
        rec(false, "4", "14", 37), // 31 + 5 < 37: 12 goes out
        rec(false, "5", "15", 50), // 29 + 20 < 50, 36 + 5 < 50, 37 + 5 < 50; not 30 + 20
    ];
    let (out, _) = run_stream_join(Kind::Outer, windows, &input);
    assert_eq!(
        out,
        vec![
            row("2", "-|12", 31),
            row("0", "A0|-", 29),
            row("3", "-|13", 36),
            row("4", "-|14", 37),
        ]
    );
}

#[test]
fn a_late_record_joins_what_the_other_side_still_holds_or_goes_out_alone_at_once() {
    // Kafka's KStreamKStreamJoin drops no record for lateness: it looks a late record's
    // partners up in the other side's window store (which still holds records newer than its
    // own stream time minus the retention, before + after + grace), and a late record of an
    // outer side without partners goes out alone at once (its window, t + after, is behind
    // stream time). Window 10 both ways, no grace: retention 20.
    let windows = JoinWindows::of_time_difference_with_no_grace(ms(10));
    let input = [
        rec(true, "a", "l1", 100),
        rec(false, "z", "r1", 200), // stream time 200: l1 (100 + 10 < 200) goes out alone
        rec(false, "a", "r2", 105), // late (105 + 10 < 200), yet the left store holds l1
        rec(false, "b", "r3", 150), // late, no partner: alone at once
        rec(true, "c", "l2", 120),  // late, no partner: alone at once
    ];
    let (out, dropped) = run_stream_join(Kind::Outer, windows, &input);
    assert_eq!(
        out,
        vec![
            row("a", "l1|-", 100),
            row("a", "l1|r2", 105),
            row("b", "-|r3", 150),
            row("c", "l2|-", 120),
        ]
    );
    // r2 and r3 are older than the right store's retention (200 - 20): kept out of it, and
    // counted as dropped by the store, as Kafka's expired-record sensor counts them; l2 is not
    // (the left store has seen only 100 and 120).
    assert_eq!(dropped, 2);
}

/// A join of `kind` of two streams with nullable keys, fed `x` (left) and `y` (right) with
/// null keys, then `l` and `r` with key `a`: the output and the dropped count.
fn null_key_join(kind: Kind) -> (Vec<(Option<String>, String, i64)>, u64) {
    let builder = StreamsBuilder::new();
    let dropped = DroppedRecords::default();
    let consumed = || Consumed::with(Nullable(Utf8), Utf8);
    let l = builder.stream_with::<Option<String>, String>("left", consumed());
    let r = builder.stream_with::<Option<String>, String>("right", consumed());
    let windows = JoinWindows::of_time_difference_with_no_grace(ms(10));
    let joined = StreamJoined::with(Nullable(Utf8), Utf8, Utf8).count_dropped_in(&dropped);
    let out = match kind {
        Kind::Inner => l.join(&r, |a, b| format!("{a}|{b}"), windows, joined),
        Kind::Left => l.left_join(&r, |a, b| format!("{a}|{}", show(b)), windows, joined),
        Kind::Outer => l.outer_join(
            &r,
            |a, b| format!("{}|{}", show(a), show(b)),
            windows,
            joined,
        ),
    };
    out.to_with(
        "joined",
        kstreams::dsl::Produced::with(Nullable(Utf8), Utf8),
    );
    let d = driver(builder);
    let tl = d.input_topic::<Option<String>, String>("left", Nullable(Utf8), Utf8);
    let tr = d.input_topic::<Option<String>, String>("right", Nullable(Utf8), Utf8);
    tl.pipe_at(None, s("x"), 1).unwrap();
    tr.pipe_at(None, s("y"), 2).unwrap();
    tl.pipe_at(Some(s("a")), s("l"), 3).unwrap();
    tr.pipe_at(Some(s("a")), s("r"), 4).unwrap();
    let out = drain(&d.output_topic::<Option<String>, String>("joined", Nullable(Utf8), Utf8));
    (out, dropped.count())
}

#[test]
fn left_and_outer_stream_joins_emit_null_keys_alone_at_once() {
    // KIP-962 (Kafka 3.7): a left join's left record, or either record of an outer join, with
    // a null key cannot join, and goes out alone at once.
    assert_eq!(
        null_key_join(Kind::Left),
        (vec![(None, s("x|-"), 1), (Some(s("a")), s("l|r"), 4)], 1)
    );
    assert_eq!(
        null_key_join(Kind::Outer),
        (
            vec![
                (None, s("x|-"), 1),
                (None, s("-|y"), 2),
                (Some(s("a")), s("l|r"), 4)
            ],
            0
        )
    );
}

#[test]
fn a_stream_joins_itself() {
    let builder = StreamsBuilder::new();
    let st = builder.stream::<String, String>("events");
    st.join(
        &st,
        |a, b| format!("{a}|{b}"),
        JoinWindows::of_time_difference_with_no_grace(ms(10)),
        StreamJoined::default(),
    )
    .to("pairs");
    let d = driver(builder);
    let input = d.input_topic::<String, String>("events", Utf8, Utf8);
    input.pipe_at(s("a"), s("v1"), 1).unwrap();
    input.pipe_at(s("a"), s("v2"), 5).unwrap();
    assert_eq!(
        drain(&d.output_topic::<String, String>("pairs", Utf8, Utf8)),
        vec![
            row("a", "v1|v1", 1),
            row("a", "v2|v1", 5),
            row("a", "v1|v2", 5),
            row("a", "v2|v2", 5),
        ]
    );
}

#[test]
fn stream_join_drops_and_counts_null_keys() {
    // An inner join drops both null keys and counts them.
    assert_eq!(
        null_key_join(Kind::Inner),
        (vec![(Some(s("a")), s("l|r"), 4)], 2)
    );
}

#[test]
fn a_stream_whose_key_changed_is_repartitioned_before_a_stream_join() {
    let builder = StreamsBuilder::new();
    // Orders keyed by order id, re-keyed by customer; customers' messages keyed by customer.
    let orders = builder
        .stream::<String, String>("orders")
        .select_key(|_, customer| customer.clone());
    let messages = builder.stream::<String, String>("messages");
    orders
        .join(
            &messages,
            |customer, message| format!("{customer}:{message}"),
            JoinWindows::of_time_difference_with_no_grace(ms(100)),
            StreamJoined::default().named("order-messages"),
        )
        .to("joined");
    let topology = builder.build().unwrap();
    let described = format!("{}", topology.describe());
    assert!(
        described.contains("order-messages-left"),
        "the re-keyed side goes through its repartition topic:\n{described}"
    );
    let d = TopologyTestDriver::new(topology).unwrap();
    d.input_topic::<String, String>("orders", Utf8, Utf8)
        .pipe_at(s("o1"), s("ann"), 10)
        .unwrap();
    d.input_topic::<String, String>("messages", Utf8, Utf8)
        .pipe_at(s("ann"), s("hello"), 20)
        .unwrap();
    assert_eq!(
        drain(&d.output_topic::<String, String>("joined", Utf8, Utf8)),
        vec![row("ann", "ann:hello", 20)]
    );
}

#[test]
fn stream_table_joins_look_up_the_current_row_and_table_updates_alone_emit_nothing() {
    let builder = StreamsBuilder::new();
    let dropped = DroppedRecords::default();
    let cards = builder.table::<String, String>("cards", Materialized::with(Utf8));
    let txns = builder.stream::<String, String>("txns");
    txns.join_table(&cards, |t, c| format!("{t}@{c}"), Joined::default())
        .to("inner");
    txns.left_join_table(
        &cards,
        |t, c| format!("{t}@{}", show(c)),
        Joined::default().count_dropped_in(&dropped),
    )
    .to("left");
    let d = driver(builder);
    let c = d.input_topic::<String, Option<String>>("cards", Utf8, Nullable(Utf8));
    let t = d.input_topic::<String, String>("txns", Utf8, Utf8);
    c.pipe_at(s("c1"), Some(s("FR")), 1).unwrap();
    t.pipe_at(s("c1"), s("t1"), 2).unwrap();
    c.pipe_at(s("c1"), Some(s("IT")), 3).unwrap();
    t.pipe_at(s("c1"), s("t2"), 4).unwrap();
    c.pipe_at(s("c1"), None, 5).unwrap(); // the card is deleted
    t.pipe_at(s("c1"), s("t3"), 6).unwrap();
    t.pipe_at(s("c2"), s("t4"), 7).unwrap(); // no such card
    c.pipe_at(s("c2"), Some(s("DE")), 8).unwrap(); // a table update alone: nothing
    assert_eq!(
        drain(&d.output_topic::<String, String>("inner", Utf8, Utf8)),
        vec![row("c1", "t1@FR", 2), row("c1", "t2@IT", 4)]
    );
    assert_eq!(
        drain(&d.output_topic::<String, String>("left", Utf8, Utf8)),
        vec![
            row("c1", "t1@FR", 2),
            row("c1", "t2@IT", 4),
            row("c1", "t3@-", 6),
            row("c2", "t4@-", 7),
        ]
    );
    assert_eq!(dropped.count(), 0);
}

#[test]
fn stream_table_join_drops_and_counts_null_keys_and_joins_a_derived_table() {
    let builder = StreamsBuilder::new();
    let dropped = DroppedRecords::default();
    let key = || Nullable(Utf8);
    let table = builder
        .table_with::<Option<String>, String>("limits", key(), Materialized::with(Utf8))
        // A derived table without a store of its own: the join materializes it.
        .map_values(|v| v.to_uppercase(), Utf8);
    builder
        .stream_with::<Option<String>, String>("requests", Consumed::with(key(), Utf8))
        .join_table(
            &table,
            |r, l| format!("{r}<={l}"),
            Joined::with(Utf8).count_dropped_in(&dropped),
        )
        .to_with("out", kstreams::dsl::Produced::with(key(), Utf8));
    let d = driver(builder);
    let l = d.input_topic::<Option<String>, String>("limits", key(), Utf8);
    let r = d.input_topic::<Option<String>, String>("requests", key(), Utf8);
    l.pipe_at(None, s("no key: skipped"), 1).unwrap();
    l.pipe_at(Some(s("u1")), s("low"), 1).unwrap();
    r.pipe_at(None, s("anonymous"), 2).unwrap();
    r.pipe_at(Some(s("u1")), s("get"), 3).unwrap();
    assert_eq!(
        drain(&d.output_topic::<Option<String>, String>("out", key(), Utf8)),
        vec![(Some(s("u1")), s("get<=LOW"), 3)]
    );
    assert_eq!(dropped.count(), 1);
}

#[test]
fn a_rekeyed_stream_is_repartitioned_before_a_stream_table_join() {
    let builder = StreamsBuilder::new();
    let countries = builder.table::<String, String>("countries", Materialized::with(Utf8));
    builder
        .stream::<String, String>("logins") // keyed by session, value = user
        .select_key(|_, user| user.clone())
        .join_table(
            &countries,
            |user, c| format!("{user} in {c}"),
            Joined::default().named("logins-by-user"),
        )
        .to("located");
    let d = driver(builder);
    d.input_topic::<String, String>("countries", Utf8, Utf8)
        .pipe_at(s("ann"), s("NO"), 1)
        .unwrap();
    d.input_topic::<String, String>("logins", Utf8, Utf8)
        .pipe_at(s("session-9"), s("ann"), 2)
        .unwrap();
    assert_eq!(
        drain(&d.output_topic::<String, String>("located", Utf8, Utf8)),
        vec![row("ann", "ann in NO", 2)]
    );
}

#[test]
fn table_table_joins_update_and_retract_rows_when_either_side_changes() {
    let builder = StreamsBuilder::new();
    let names = builder.table::<String, String>("names", Materialized::with(Utf8));
    let emails = builder.table::<String, String>("emails", Materialized::with(Utf8));
    names
        .join(
            &emails,
            |n, e| format!("{n}|{e}"),
            Materialized::with(Utf8).named("inner-store"),
        )
        .to("inner");
    names
        .left_join(
            &emails,
            |n, e| format!("{n}|{}", show(e)),
            Materialized::with(Utf8).named("left-store"),
        )
        .to("left");
    names
        .outer_join(
            &emails,
            |n, e| format!("{}|{}", show(n), show(e)),
            Materialized::with(Utf8).named("outer-store"),
        )
        .to("outer");
    let d = driver(builder);
    let n = d.input_topic::<String, Option<String>>("names", Utf8, Nullable(Utf8));
    let e = d.input_topic::<String, Option<String>>("emails", Utf8, Nullable(Utf8));
    n.pipe_at(s("u1"), Some(s("Ann")), 1).unwrap();
    e.pipe_at(s("u1"), Some(s("a@x")), 2).unwrap();
    e.pipe_at(s("u2"), Some(s("b@x")), 3).unwrap();
    n.pipe_at(s("u1"), None, 4).unwrap(); // Ann is deleted
    e.pipe_at(s("u1"), None, 5).unwrap(); // and her email
    let read =
        |topic: &str| drain(&d.output_topic::<String, Option<String>>(topic, Utf8, Nullable(Utf8)));
    let r = |k: &str, v: Option<&str>, ts| (s(k), v.map(s), ts);
    assert_eq!(
        read("inner"),
        vec![r("u1", Some("Ann|a@x"), 2), r("u1", None, 4)]
    );
    assert_eq!(
        read("left"),
        vec![
            r("u1", Some("Ann|-"), 1),
            r("u1", Some("Ann|a@x"), 2),
            r("u1", None, 4)
        ]
    );
    assert_eq!(
        read("outer"),
        vec![
            r("u1", Some("Ann|-"), 1),
            r("u1", Some("Ann|a@x"), 2),
            r("u2", Some("-|b@x"), 3),
            r("u1", Some("-|a@x"), 4),
            r("u1", None, 5),
        ]
    );
    // The joined tables are materialized and can be queried.
    let rows = |store: &str| {
        d.with_store::<KeyValueStore<String, String>, _>(store, |st| {
            st.all()
                .unwrap()
                .map(|e| e.unwrap())
                .collect::<Vec<(String, String)>>()
        })
        .unwrap()
    };
    assert_eq!(rows("inner-store"), vec![]);
    assert_eq!(rows("outer-store"), vec![(s("u2"), s("-|b@x"))]);
}

#[test]
fn table_table_join_results_carry_the_larger_of_the_two_rows_timestamps() {
    // Kafka's KTableKTableInnerJoin / LeftJoin / OuterJoin: a change joined with the other
    // side's row goes out at the larger of its own timestamp and that row's (read from the
    // timestamped store); with no row on the other side, at its own.
    let builder = StreamsBuilder::new();
    let names = builder.table::<String, String>("names", Materialized::with(Utf8));
    let emails = builder.table::<String, String>("emails", Materialized::with(Utf8));
    names
        .join(&emails, |n, e| format!("{n}|{e}"), Materialized::with(Utf8))
        .to("inner");
    names
        .left_join(
            &emails,
            |n, e| format!("{n}|{}", show(e)),
            Materialized::with(Utf8),
        )
        .to("left");
    let d = driver(builder);
    let n = d.input_topic::<String, Option<String>>("names", Utf8, Nullable(Utf8));
    let e = d.input_topic::<String, Option<String>>("emails", Utf8, Nullable(Utf8));
    e.pipe_at(s("u1"), Some(s("e1")), 10).unwrap();
    n.pipe_at(s("u1"), Some(s("Ann")), 4).unwrap(); // the email row is newer: 10
    n.pipe_at(s("u1"), Some(s("Anna")), 6).unwrap(); // 10
    e.pipe_at(s("u1"), Some(s("e2")), 7).unwrap(); // the name row is at 6: 7
    e.pipe_at(s("u1"), None, 5).unwrap(); // the name row is at 6: 6
    n.pipe_at(s("u2"), Some(s("Bob")), 3).unwrap(); // no email row: 3
    let read =
        |topic: &str| drain(&d.output_topic::<String, Option<String>>(topic, Utf8, Nullable(Utf8)));
    let r = |k: &str, v: Option<&str>, ts| (s(k), v.map(s), ts);
    assert_eq!(
        read("inner"),
        vec![
            r("u1", Some("Ann|e1"), 10),
            r("u1", Some("Anna|e1"), 10),
            r("u1", Some("Anna|e2"), 7),
            r("u1", None, 6),
        ]
    );
    assert_eq!(
        read("left"),
        vec![
            r("u1", Some("Ann|e1"), 10),
            r("u1", Some("Anna|e1"), 10),
            r("u1", Some("Anna|e2"), 7),
            r("u1", Some("Anna|-"), 6),
            r("u2", Some("Bob|-"), 3),
        ]
    );
}

/// What a stream-stream join emits, by the rules of Kafka Streams 4.x's `KStreamKStreamJoin`
/// processor and the window stores it keeps (`InMemoryWindowStore`'s put and fetch bounds),
/// applied record by record in arrival order. Stream time is the largest timestamp seen on
/// either side; each side's store has its own (the largest timestamp of that side), and the
/// retention is `before + after + grace`. For a record at `t`, the window is
/// `[t - before, t + after]` on the left, `[t - after, t + before]` on the right, and its reach
/// is `after` on the left, `before` on the right:
/// 1. if `t` is stream time (left and outer joins), the lone records whose timestamp plus reach
///    plus grace is before stream time go out alone (order is checked elsewhere);
/// 2. the record enters its side's store unless `t` is at or before that side's time minus the
///    retention: then it is counted as dropped (and still joined);
/// 3. it joins each stored record of the other side with its key, a timestamp in its window and
///    after that side's time minus the retention, at the larger timestamp; the records of the
///    partner's side, key and timestamp that were waiting alone stop waiting;
/// 4. without a partner, a record of an outer side goes out alone at once if the end of its
///    window is before stream time, and otherwise waits alone.
fn stream_join_oracle(
    kind: Kind,
    (before, after, grace): (i64, i64, i64),
    input: &[(bool, String, String, i64)],
) -> (Vec<(String, String, i64)>, u64) {
    let retention = before + after + grace;
    let outer_side = |is_left: bool| kind == Kind::Outer || (kind == Kind::Left && is_left);
    let reach = |is_left: bool| if is_left { after } else { before };
    let alone = |i: usize| {
        let (is_left, k, v, ts) = &input[i];
        let v = if *is_left {
            format!("{v}|-")
        } else {
            format!("-|{v}")
        };
        (k.clone(), v, *ts)
    };
    let mut st = i64::MIN;
    let mut side_time = [i64::MIN, i64::MIN]; // [right, left]
    let mut stored: Vec<usize> = vec![];
    let mut waiting: Vec<usize> = vec![];
    let mut out = vec![];
    let mut dropped = 0;
    for (i, (is_left, key, value, ts)) in input.iter().enumerate() {
        let (is_left, ts) = (*is_left, *ts);
        st = st.max(ts);
        if ts == st {
            let (gone, kept): (Vec<usize>, Vec<usize>) = waiting
                .iter()
                .partition(|&&j| input[j].3 + reach(input[j].0) + grace < st);
            out.extend(gone.into_iter().map(alone));
            waiting = kept;
        }
        let own = &mut side_time[is_left as usize];
        *own = (*own).max(ts);
        if ts <= *own - retention {
            dropped += 1;
        } else {
            stored.push(i);
        }
        let other_time = side_time[!is_left as usize];
        let (from, to) = if is_left {
            (ts - before, ts + after)
        } else {
            (ts - after, ts + before)
        };
        let partners: Vec<usize> = stored
            .iter()
            .copied()
            .filter(|&j| {
                let (l, k, _, t) = &input[j];
                *l != is_left && k == key && *t >= from && *t <= to && *t > other_time - retention
            })
            .collect();
        for &j in &partners {
            let (l, r) = if is_left {
                (value, &input[j].2)
            } else {
                (&input[j].2, value)
            };
            out.push((key.clone(), format!("{l}|{r}"), ts.max(input[j].3)));
            // Kafka's store of lone records is keyed by (timestamp, side, key): a partner
            // takes every lone record of its side with its key and timestamp.
            let (pl, pt) = (input[j].0, input[j].3);
            waiting.retain(|&w| !(input[w].0 == pl && &input[w].1 == key && input[w].3 == pt));
        }
        if partners.is_empty() && outer_side(is_left) {
            if to < st {
                out.push(alone(i));
            } else {
                waiting.push(i);
            }
        }
    }
    (out, dropped)
}

#[test]
fn stream_joins_match_a_recomputation_from_their_definition_on_random_input() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x701e);
    let mut compared = BTreeMap::new();
    for case in 0..150 {
        let kind = [Kind::Inner, Kind::Left, Kind::Outer][case % 3];
        // At least 1 ms back: a window and grace of 0 keep nothing in Kafka's stores.
        let before = rng.random_range(1..15_i64);
        let after = rng.random_range(0..15_i64);
        let grace = rng.random_range(0..10_i64);
        let windows = JoinWindows::of_time_difference_and_grace(ms(0), ms(grace as u64))
            .before(ms(before as u64))
            .after(ms(after as u64));
        let mut t = 1_i64;
        let input: Vec<(bool, String, String, i64)> = (0..rng.random_range(1..50))
            .map(|i| {
                t += rng.random_range(0..6);
                let ts = if rng.random_bool(0.3) {
                    (t - rng.random_range(0..30)).max(1)
                } else {
                    t
                };
                let is_left = rng.random_bool(0.5);
                let key = format!("k{}", rng.random_range(0..3));
                let value = format!("{}{i}", if is_left { "L" } else { "R" });
                (is_left, key, value, ts)
            })
            .collect();
        let (mut got, got_dropped) = run_stream_join(kind, windows, &input);
        let (mut want, want_dropped) = stream_join_oracle(kind, (before, after, grace), &input);
        got.sort();
        want.sort();
        assert_eq!(
            got, want,
            "case {case}: {kind:?} join, before {before}, after {after}, grace {grace}, input {input:?}"
        );
        assert_eq!(got_dropped, want_dropped, "case {case}: dropped records");
        *compared.entry(format!("{kind:?}")).or_insert(0) += got.len();
    }
    // The comparison saw results of every kind.
    assert!(compared.values().all(|&n| n > 100), "{compared:?}");
}

#[test]
fn foreign_key_join_results_carry_the_larger_row_timestamp_when_this_side_changes() {
    // Kafka's foreign-key join: a change of this table is answered at the larger of its
    // timestamp and the foreign row's (SubscriptionJoinProcessorSupplier); a change of the
    // foreign table goes to every subscriber at its own timestamp
    // (ForeignTableJoinProcessorSupplier).
    let builder = StreamsBuilder::new();
    let orders = builder.table::<String, String>("orders", Materialized::with(Utf8));
    let products = builder.table::<String, String>("products", Materialized::with(Utf8));
    orders
        .foreign_key_left_join(
            &products,
            |pid| pid.clone(),
            |pid, name| format!("{pid}={}", show(name)),
            Materialized::with(Utf8),
        )
        .to("left");
    let d = driver(builder);
    let o = d.input_topic::<String, Option<String>>("orders", Utf8, Nullable(Utf8));
    let p = d.input_topic::<String, Option<String>>("products", Utf8, Nullable(Utf8));
    p.pipe_at(s("p1"), Some(s("pen")), 10).unwrap();
    o.pipe_at(s("o1"), Some(s("p1")), 2).unwrap(); // the product row is newer: 10
    o.pipe_at(s("o2"), Some(s("p9")), 3).unwrap(); // no product row: 3
    p.pipe_at(s("p1"), Some(s("red pen")), 4).unwrap(); // a foreign change: its own, 4
    let r = |k: &str, v: Option<&str>, ts| (s(k), v.map(s), ts);
    assert_eq!(
        drain(&d.output_topic::<String, Option<String>>("left", Utf8, Nullable(Utf8))),
        vec![
            r("o1", Some("p1=pen"), 10),
            r("o2", Some("p9=-"), 3),
            r("o1", Some("p1=red pen"), 4),
        ]
    );
}

#[test]
fn foreign_key_joins_follow_changes_of_the_foreign_key_and_deletes_on_both_sides() {
    let builder = StreamsBuilder::new();
    let orders = builder.table::<String, String>("orders", Materialized::with(Utf8));
    let products = builder.table::<String, String>("products", Materialized::with(Utf8));
    orders
        .foreign_key_join(
            &products,
            |pid| pid.clone(),
            |pid, name| format!("{pid}={name}"),
            Materialized::with(Utf8).named("fk-inner"),
        )
        .to("inner");
    orders
        .foreign_key_left_join(
            &products,
            |pid| pid.clone(),
            |pid, name| format!("{pid}={}", show(name)),
            Materialized::with(Utf8).named("fk-left"),
        )
        .to("left");
    let d = driver(builder);
    let o = d.input_topic::<String, Option<String>>("orders", Utf8, Nullable(Utf8));
    let p = d.input_topic::<String, Option<String>>("products", Utf8, Nullable(Utf8));
    p.pipe_at(s("p1"), Some(s("pen")), 1).unwrap();
    o.pipe_at(s("o1"), Some(s("p1")), 2).unwrap();
    o.pipe_at(s("o2"), Some(s("p9")), 3).unwrap(); // no such product yet
    p.pipe_at(s("p9"), Some(s("ink")), 4).unwrap();
    o.pipe_at(s("o1"), Some(s("p9")), 5).unwrap(); // o1's foreign key changes
    p.pipe_at(s("p1"), Some(s("red pen")), 6).unwrap(); // nobody refers to p1 any more
    p.pipe_at(s("p9"), None, 7).unwrap(); // the product both refer to is deleted
    o.pipe_at(s("o2"), None, 8).unwrap(); // an order is deleted
    let read =
        |topic: &str| drain(&d.output_topic::<String, Option<String>>(topic, Utf8, Nullable(Utf8)));
    let r = |k: &str, v: Option<&str>, ts| (s(k), v.map(s), ts);
    assert_eq!(
        read("inner"),
        vec![
            r("o1", Some("p1=pen"), 2),
            r("o2", Some("p9=ink"), 4),
            r("o1", Some("p9=ink"), 5),
            r("o1", None, 7),
            r("o2", None, 7),
        ]
    );
    assert_eq!(
        read("left"),
        vec![
            r("o1", Some("p1=pen"), 2),
            r("o2", Some("p9=-"), 3),
            r("o2", Some("p9=ink"), 4),
            r("o1", Some("p9=ink"), 5),
            r("o1", Some("p9=-"), 7),
            r("o2", Some("p9=-"), 7),
            r("o2", None, 8),
        ]
    );
    // A response to an older version of a row (its hash is not the hash of the row's
    // current value) is dropped: here one answering o1 with a product "stale".
    let responses = d.input_topic::<String, String>("fk-left-subscription-response", Utf8, Utf8);
    let stale_hash = [7_u8; 16];
    let mut bytes = vec![1];
    bytes.extend_from_slice(&stale_hash);
    bytes.push(1);
    bytes.extend_from_slice(b"stale");
    responses
        .pipe_raw(Some(b"o1".to_vec()), Some(bytes), 9, Default::default())
        .unwrap();
    assert_eq!(read("left"), vec![], "the stale response changed nothing");
    let left_rows = d
        .with_store::<KeyValueStore<String, String>, _>("fk-left", |st| {
            st.all().unwrap().map(|e| e.unwrap()).collect::<Vec<_>>()
        })
        .unwrap();
    assert_eq!(left_rows, vec![(s("o1"), s("p9=-"))]);
}

#[test]
fn global_table_joins_map_each_record_to_a_key_of_the_whole_table() {
    let builder = StreamsBuilder::new();
    let countries = builder.global_table::<String, String>(
        "card-countries",
        Materialized::with(Utf8).named("countries"),
    );
    let payments = builder.stream::<String, String>("payments"); // payment id -> card
    payments
        .join_global(
            &countries,
            |_, card| card.clone(),
            |card, c| format!("{card}@{c}"),
        )
        .to("inner");
    payments
        .left_join_global(
            &countries,
            |_, card| card.clone(),
            |card, c| format!("{card}@{}", show(c)),
        )
        .to("left");
    let d = driver(builder);
    let c = d.input_topic::<String, Option<String>>("card-countries", Utf8, Nullable(Utf8));
    let p = d.input_topic::<String, String>("payments", Utf8, Utf8);
    c.pipe_at(s("card1"), Some(s("FR")), 1).unwrap();
    p.pipe_at(s("pay1"), s("card1"), 2).unwrap();
    c.pipe_at(s("card1"), Some(s("IT")), 3).unwrap(); // updates alone emit nothing
    p.pipe_at(s("pay2"), s("card1"), 4).unwrap();
    p.pipe_at(s("pay3"), s("card9"), 5).unwrap(); // no such card
    c.pipe_at(s("card1"), None, 6).unwrap(); // deleted
    p.pipe_at(s("pay4"), s("card1"), 7).unwrap();
    assert_eq!(
        drain(&d.output_topic::<String, String>("inner", Utf8, Utf8)),
        vec![row("pay1", "card1@FR", 2), row("pay2", "card1@IT", 4)]
    );
    assert_eq!(
        drain(&d.output_topic::<String, String>("left", Utf8, Utf8)),
        vec![
            row("pay1", "card1@FR", 2),
            row("pay2", "card1@IT", 4),
            row("pay3", "card9@-", 5),
            row("pay4", "card1@-", 7),
        ]
    );
    let store = d.global_store("countries").unwrap();
    assert!(store.is_empty());
}

/// Joins `table` (rows keyed by user) every way a table can be joined, each written to its own
/// topic: a stream looks it up (`st`), tables join it as their other side (`tt`) and as their
/// own side (`tt-rev`), a table refers to it by foreign key (`fk`), and it refers to another
/// table by a foreign key taken from its value (`fk-rev`). Kafka Streams reads the other side
/// of every one of these joins through the table's value getter
/// (`KTableValueGetterSupplier`), whatever operator made the table: a source, an aggregation
/// (`KStreamAggregate.view()`, `KTableAggregate.view()`), `mapValues`, `filter`, `suppress`.
fn join_every_way<V: Clone + std::fmt::Display + 'static>(
    builder: &StreamsBuilder,
    table: &kstreams::dsl::KTable<String, V>,
) {
    builder
        .stream::<String, String>("clicks")
        .join_table(table, |c, v| format!("{c}:{v}"), Joined::default())
        .to("st");
    let names = builder.table::<String, String>("names", Materialized::with(Utf8));
    names
        .join(table, |n, v| format!("{n}:{v}"), Materialized::with(Utf8))
        .to("tt");
    table
        .join(&names, |v, n| format!("{v}:{n}"), Materialized::with(Utf8))
        .to("tt-rev");
    builder
        .table::<String, String>("orders", Materialized::with(Utf8))
        .foreign_key_join(
            table,
            |user| user.clone(),
            |user, v| format!("{user}:{v}"),
            Materialized::with(Utf8),
        )
        .to("fk");
    let tiers = builder.table::<String, String>("tiers", Materialized::with(Utf8));
    table
        .foreign_key_join(
            &tiers,
            |v| v.to_string(),
            |v, tier| format!("{v}:{tier}"),
            Materialized::with(Utf8),
        )
        .to("fk-rev");
}

/// Pipes, after the table's own input (all before time 30), a record on each joining side for
/// user `ann`, and checks that each join found `ann`'s row `want` in the table.
fn assert_every_join_sees(d: &TopologyTestDriver, want: &str) {
    let topic = |t: &str| d.input_topic::<String, String>(t, Utf8, Utf8);
    topic("clicks").pipe_at(s("ann"), s("click"), 30).unwrap();
    topic("names").pipe_at(s("ann"), s("Ann"), 31).unwrap();
    topic("orders").pipe_at(s("o1"), s("ann"), 32).unwrap();
    topic("tiers").pipe_at(s(want), s("gold"), 33).unwrap();
    let read =
        |topic: &str| drain(&d.output_topic::<String, Option<String>>(topic, Utf8, Nullable(Utf8)));
    let r = |k: &str, v: String, ts| (s(k), Some(v), ts);
    assert_eq!(
        drain(&d.output_topic::<String, String>("st", Utf8, Utf8)),
        vec![row("ann", &format!("click:{want}"), 30)],
        "stream-table join"
    );
    assert_eq!(
        read("tt"),
        vec![r("ann", format!("Ann:{want}"), 31)],
        "table-table join, other side"
    );
    assert_eq!(
        read("tt-rev"),
        vec![r("ann", format!("{want}:Ann"), 31)],
        "table-table join, this side"
    );
    assert_eq!(
        read("fk"),
        vec![r("o1", format!("ann:{want}"), 32)],
        "foreign-key join, foreign side"
    );
    assert_eq!(
        read("fk-rev"),
        vec![r("ann", format!("{want}:gold"), 33)],
        "foreign-key join, this side"
    );
}

#[test]
fn joins_read_a_source_table() {
    let builder = StreamsBuilder::new();
    let table = builder.table::<String, String>("levels", Materialized::with(Utf8));
    join_every_way(&builder, &table);
    let d = driver(builder);
    d.input_topic::<String, String>("levels", Utf8, Utf8)
        .pipe_at(s("ann"), s("silver"), 1)
        .unwrap();
    assert_every_join_sees(&d, "silver");
}

#[test]
fn joins_read_a_count_of_a_grouped_stream() {
    let builder = StreamsBuilder::new();
    let table = builder
        .stream::<String, String>("purchases")
        .group_by_key()
        .count();
    join_every_way(&builder, &table);
    let d = driver(builder);
    let p = d.input_topic::<String, String>("purchases", Utf8, Utf8);
    p.pipe_at(s("ann"), s("p1"), 1).unwrap();
    p.pipe_at(s("ann"), s("p2"), 2).unwrap();
    assert_every_join_sees(&d, "2");
}

#[test]
fn joins_read_an_aggregate_of_a_regrouped_table() {
    let builder = StreamsBuilder::new();
    // Accounts (account -> owner), counted per owner.
    let table = builder
        .table::<String, String>("accounts", Materialized::with(Utf8))
        .group_by(|account, owner| (owner.clone(), account.clone()))
        .count();
    join_every_way(&builder, &table);
    let d = driver(builder);
    let a = d.input_topic::<String, String>("accounts", Utf8, Utf8);
    a.pipe_at(s("a1"), s("ann"), 1).unwrap();
    a.pipe_at(s("a2"), s("ann"), 2).unwrap();
    a.pipe_at(s("a3"), s("bob"), 3).unwrap();
    assert_every_join_sees(&d, "2");
}

#[test]
fn joins_read_a_mapped_table() {
    let builder = StreamsBuilder::new();
    let table = builder
        .table::<String, String>("levels", Materialized::with(Utf8))
        .map_values(|v| v.to_uppercase(), Utf8);
    join_every_way(&builder, &table);
    let d = driver(builder);
    d.input_topic::<String, String>("levels", Utf8, Utf8)
        .pipe_at(s("ann"), s("silver"), 1)
        .unwrap();
    assert_every_join_sees(&d, "SILVER");
}

#[test]
fn joins_read_a_filtered_table() {
    let builder = StreamsBuilder::new();
    let table = builder
        .table::<String, String>("levels", Materialized::with(Utf8))
        .filter(|_, v| v != "banned");
    join_every_way(&builder, &table);
    let d = driver(builder);
    let l = d.input_topic::<String, String>("levels", Utf8, Utf8);
    l.pipe_at(s("ann"), s("banned"), 1).unwrap();
    l.pipe_at(s("ann"), s("silver"), 2).unwrap();
    l.pipe_at(s("bob"), s("banned"), 3).unwrap();
    assert_every_join_sees(&d, "silver");
}

#[test]
fn joins_read_a_suppressed_table() {
    let builder = StreamsBuilder::new();
    let table = builder
        .table::<String, String>("levels", Materialized::with(Utf8))
        .suppress(kstreams::dsl::Suppressed::until_time_limit(ms(10)));
    join_every_way(&builder, &table);
    let d = driver(builder);
    let l = d.input_topic::<String, String>("levels", Utf8, Utf8);
    l.pipe_at(s("ann"), s("bronze"), 1).unwrap();
    l.pipe_at(s("ann"), s("silver"), 2).unwrap();
    // Time on the table's own topic passes ann's limit: ann's latest row goes out.
    l.pipe_at(s("zed"), s("none"), 20).unwrap();
    assert_every_join_sees(&d, "silver");
}
