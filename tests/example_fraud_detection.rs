//! `examples/fraud_detection.rs` on the `TopologyTestDriver`: its topology against an oracle
//! written here from the rules' definitions (not from the example's code), over generated
//! transactions with every rule's pattern, a card's home country changing midway, a late
//! transaction, and malformed values (to the dead-letter topic).

#[allow(dead_code)]
#[path = "../examples/fraud_detection.rs"]
mod fraud_detection;

mod example_process;

use std::collections::BTreeMap;

use fraud_detection::{build_topology, Alert, Card, Counters, Topics, Txn};
use kstreams::core::handlers::DeadLetterTopic;
use kstreams::core::serde::{Json, RawBytes, Utf8};
use kstreams::core::TopologyTestDriver;
use rand::{Rng, SeedableRng};

/// One input, in the order it is piped.
enum Input {
    Card(Card, i64),
    Txn(Txn),
    Malformed(String, String),
}

/// The alerts the rules define, in input order (per transaction: velocity, geo, spike).
fn oracle(inputs: &[Input]) -> Vec<(String, Alert)> {
    let mut homes: BTreeMap<String, String> = BTreeMap::new();
    let mut in_window: BTreeMap<(String, i64), u64> = BTreeMap::new();
    let mut history: BTreeMap<String, (i64, i64)> = BTreeMap::new(); // card -> (count, sum)
    let mut stream_time = i64::MIN;
    let mut out = vec![];
    for input in inputs {
        let t = match input {
            Input::Card(c, _) => {
                homes.insert(c.card_id.clone(), c.home_country.clone());
                continue;
            }
            Input::Malformed(..) => continue,
            Input::Txn(t) => t,
        };
        stream_time = stream_time.max(t.ts);
        // velocity: 60 s windows from the epoch; late once end + 30 s <= stream time.
        let start = t.ts - t.ts.rem_euclid(60_000);
        if start + 60_000 + 30_000 > stream_time {
            let n = in_window.entry((t.card_id.clone(), start)).or_default();
            *n += 1;
            if *n == 5 {
                out.push(Alert {
                    rule: "velocity".into(),
                    card_id: t.card_id.clone(),
                    txn_id: t.txn_id.clone(),
                    window_start: Some(start),
                    count: Some(5),
                    ..Alert::default()
                });
            }
        }
        if let Some(home) = homes.get(&t.card_id) {
            if *home != t.country {
                out.push(Alert {
                    rule: "geo".into(),
                    card_id: t.card_id.clone(),
                    txn_id: t.txn_id.clone(),
                    country: Some(t.country.clone()),
                    home_country: Some(home.clone()),
                    ..Alert::default()
                });
            }
        }
        let (count, sum) = history.entry(t.card_id.clone()).or_default();
        if *count >= 3 && t.amount_cents > 10 * (*sum / *count) {
            out.push(Alert {
                rule: "amount_spike".into(),
                card_id: t.card_id.clone(),
                txn_id: t.txn_id.clone(),
                amount_cents: Some(t.amount_cents),
                mean_cents: Some(*sum / *count),
                ..Alert::default()
            });
        }
        *count += 1;
        *sum += t.amount_cents;
    }
    out.into_iter().map(|a| (a.card_id.clone(), a)).collect()
}

fn inputs() -> Vec<Input> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0xf4a7d);
    let countries = ["FR", "DE", "IT", "NO"];
    let mut inputs: Vec<Input> = (0..12)
        .map(|c| {
            Input::Card(
                Card {
                    card_id: format!("card{c}"),
                    home_country: countries[c % 4].into(),
                },
                1,
            )
        })
        .collect();
    let mut ts = 1_000_i64;
    for i in 0..3_000 {
        if i == 1_500 {
            // card0 moves to Norway: later transactions are judged against that.
            inputs.push(Input::Card(
                Card {
                    card_id: "card0".into(),
                    home_country: "NO".into(),
                },
                ts,
            ));
        }
        ts += rng.random_range(0..4_000);
        // card12 and card13 are not in `cards`: no geo alert for them.
        let c = rng.random_range(0..14);
        let home = countries[c % 4];
        let country = if rng.random_bool(0.05) {
            countries[rng.random_range(0..4)]
        } else {
            home
        };
        let amount = if rng.random_bool(0.03) {
            rng.random_range(100_000..1_000_000)
        } else {
            rng.random_range(500..10_000)
        };
        inputs.push(Input::Txn(Txn {
            txn_id: format!("t{i}"),
            card_id: format!("card{c}"),
            amount_cents: amount,
            merchant: "m".into(),
            country: country.into(),
            ts,
        }));
        if i % 500 == 250 {
            // A burst: six more of the same card within a second.
            for b in 0..6 {
                inputs.push(Input::Txn(Txn {
                    txn_id: format!("t{i}-b{b}"),
                    card_id: format!("card{c}"),
                    amount_cents: 1_000,
                    merchant: "m".into(),
                    country: home.into(),
                    ts: ts + b,
                }));
            }
        }
        if i % 700 == 0 {
            inputs.push(Input::Malformed(
                format!("card{c}"),
                "{\"txn_id\": 7}".into(),
            ));
        }
    }
    // A transaction 5 minutes late: its velocity window closed; still judged by the others.
    inputs.push(Input::Txn(Txn {
        txn_id: "late".into(),
        card_id: "card1".into(),
        amount_cents: 1_000,
        merchant: "m".into(),
        country: "FR".into(),
        ts: ts - 300_000,
    }));
    inputs
}

#[test]
fn the_fraud_rules_raise_exactly_the_alerts_their_definitions_give() {
    let topics = Topics::default();
    let mut counters = Counters::default();
    let topology = build_topology(&topics, &mut counters).unwrap();
    let driver = TopologyTestDriver::with_options(
        topology,
        "fraud-test",
        0,
        Box::new(DeadLetterTopic("dlq".into())),
    )
    .unwrap();
    let cards = driver.input_topic::<String, Card>(&topics.cards, Utf8, Json::<Card>::default());
    let txns = driver.input_topic::<String, Vec<u8>>(&topics.transactions, Utf8, RawBytes);
    let inputs = inputs();
    let mut malformed = 0;
    for input in &inputs {
        match input {
            Input::Card(c, ts) => cards.pipe_at(c.card_id.clone(), c.clone(), *ts).unwrap(),
            Input::Txn(t) => txns
                .pipe_at(t.card_id.clone(), serde_json::to_vec(t).unwrap(), t.ts)
                .unwrap(),
            Input::Malformed(k, v) => {
                malformed += 1;
                txns.pipe_at(k.clone(), v.clone().into_bytes(), 1).unwrap()
            }
        }
    }
    let got: Vec<(String, Alert)> = driver
        .output_topic::<String, Alert>(&topics.alerts, Utf8, Json::<Alert>::default())
        .read_key_values()
        .unwrap();
    let want = oracle(&inputs);
    let per_rule = |alerts: &[(String, Alert)]| {
        let mut n: BTreeMap<String, usize> = BTreeMap::new();
        for (_, a) in alerts {
            *n.entry(a.rule.clone()).or_default() += 1;
        }
        n
    };
    eprintln!(
        "fraud rules: {} inputs, alerts {:?}, late {}, malformed {malformed}",
        inputs.len(),
        per_rule(&got),
        counters.late.count()
    );
    assert_eq!(got, want);
    assert!(
        per_rule(&want).values().all(|&n| n > 0),
        "every rule fires: {:?}",
        per_rule(&want)
    );
    assert_eq!(counters.late.count(), 1, "the late transaction");
    let dead = driver
        .output_topic::<String, Vec<u8>>("dlq", Utf8, RawBytes)
        .read_values()
        .unwrap();
    assert_eq!(dead.len(), malformed);
    assert!(dead.iter().all(|v| v == b"{\"txn_id\": 7}"));
}

#[test]
fn the_example_binary_is_exactly_once_under_sigkill() {
    use std::time::Duration;
    use streams_testkit::kafka::{read_to_end, Isolation};
    use streams_testkit::unique;
    let bootstrap = streams_testkit::bootstrap_servers();
    let (txns, cards, alerts, dlq, app) = (
        unique("fx-txns"),
        unique("fx-cards"),
        unique("fx-alerts"),
        unique("fx-dlq"),
        unique("fx-app"),
    );
    let dir = std::env::temp_dir().join(unique("fx-state"));
    let dir = dir.to_str().unwrap().to_string();
    let common = |extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = [
            "--application-id",
            &app,
            "--state-dir",
            &dir,
            "--transactions",
            &txns,
            "--cards",
            &cards,
            "--alerts",
            &alerts,
            "--dead-letters",
            &dlq,
            // A killed instance's group membership ends after 6 s, not 45.
            "--set",
            "session.timeout.ms=6000",
            "--set",
            "heartbeat.interval.ms=1000",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    const KILLS: usize = 2;
    example_process::kill_then_finish(
        "fraud_detection",
        common,
        // Enough input that the kills land while the example processes (8,000 were
        // processed whole before the first kill once start-up got faster).
        &["--generate", "30000"],
        KILLS,
        "transactions in ",
        (&app, &txns),
    );

    // The oracle, from the input as it is in the topics: every card is older than every
    // transaction, and each card's transactions are in one partition in event-time order.
    let mut inputs = vec![];
    for r in read_to_end(
        &bootstrap,
        &cards,
        Isolation::ReadCommitted,
        Duration::from_secs(60),
    )
    .unwrap()
    {
        let c: Card = serde_json::from_slice(r.value.as_deref().unwrap()).unwrap();
        inputs.push(Input::Card(c, 0));
    }
    let mut malformed = 0;
    let mut by_partition: BTreeMap<i32, Vec<Txn>> = BTreeMap::new();
    for r in read_to_end(
        &bootstrap,
        &txns,
        Isolation::ReadCommitted,
        Duration::from_secs(60),
    )
    .unwrap()
    {
        match serde_json::from_slice::<Txn>(r.value.as_deref().unwrap_or_default()) {
            Ok(t) => by_partition.entry(r.partition).or_default().push(t),
            Err(_) => malformed += 1,
        }
    }
    // Per partition: each task has its own stream time.
    let mut want: Vec<(String, String)> = vec![];
    let mut transactions = 0;
    for txns in by_partition.into_values() {
        transactions += txns.len();
        let mut partition: Vec<Input> = inputs
            .iter()
            .map(|i| match i {
                Input::Card(c, ts) => Input::Card(c.clone(), *ts),
                _ => unreachable!("cards only"),
            })
            .collect();
        partition.extend(txns.into_iter().map(Input::Txn));
        want.extend(
            oracle(&partition)
                .into_iter()
                .map(|(k, a)| (k, serde_json::to_string(&a).unwrap())),
        );
    }
    let mut got: Vec<(String, String)> = read_to_end(
        &bootstrap,
        &alerts,
        Isolation::ReadCommitted,
        Duration::from_secs(60),
    )
    .unwrap()
    .into_iter()
    .map(|r| {
        let a: Alert = serde_json::from_slice(r.value.as_deref().unwrap()).unwrap();
        (r.key_str(), serde_json::to_string(&a).unwrap())
    })
    .collect();
    want.sort();
    got.sort();
    let dead = read_to_end(
        &bootstrap,
        &dlq,
        Isolation::ReadCommitted,
        Duration::from_secs(60),
    )
    .unwrap()
    .len();
    let duplicates = got.windows(2).filter(|w| w[0] == w[1]).count();
    let missing = want
        .iter()
        .filter(|a| got.binary_search(a).is_err())
        .count();
    let extra = got
        .iter()
        .filter(|a| want.binary_search(a).is_err())
        .count();
    eprintln!(
        "fraud example under SIGKILL: kills {KILLS}, transactions {}, alerts expected {}, \
         read_committed {}, duplicates {duplicates}, missing {missing}, extra {extra}; \
         malformed {malformed}, dead letters {dead}",
        transactions,
        want.len(),
        got.len()
    );
    assert_eq!((duplicates, missing, extra), (0, 0, 0));
    assert_eq!(got, want);
    assert_eq!(dead, malformed);
}
