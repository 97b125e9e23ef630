//! Fraud detection with the DSL, exactly-once: card transactions checked against three rules.
//!
//! ```text
//! scripts/run-example.sh fraud_detection --generate 20000
//! ```
//!
//! Input `transactions` (key: card id, value
//! `{"txn_id", "card_id", "amount_cents", "merchant", "country", "ts"}`) and the table `cards`
//! (key: card id, value `{"card_id", "home_country"}`); event time is `ts`. Output
//! `fraud-alerts` (key: card id, a JSON alert), each alert exactly once:
//!
//! - `velocity`: the 5th transaction of a card in one 60-second tumbling window (grace 30 s),
//!   with `window_start` and `count`;
//! - `geo`: a transaction in another country than its card's `home_country` at that moment
//!   (a stream-table join; a card not in `cards` raises none), with `country` and
//!   `home_country`;
//! - `amount_spike`: a transaction of more than 10 times the mean of the card's earlier ones,
//!   when it has at least 3, with `amount_cents` and `mean_cents` (rounded down).
//!
//! A value that is not such JSON goes to the dead-letter topic (`fraud-dead-letters`) with the
//! error in its headers. Flags: `--bootstrap-servers` (default `KAFKA_BOOTSTRAP_SERVERS`, else
//! the project's broker is started), `--application-id`, `--state-dir`, `--transactions`,
//! `--cards`, `--alerts`, `--dead-letters`, `--generate N`, `--at-least-once`, `--describe`,
//! `--run-for SECONDS` (default: until Ctrl-C or SIGTERM), `--set key=value` (a librdkafka
//! client property, repeatable: `--set session.timeout.ms=6000` for a faster takeover after a
//! crash than the default 45 s).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kstreams::core::handlers::DeadLetterTopic;
use kstreams::core::serde::{Json, Utf8};
use kstreams::core::Topology;
use kstreams::dsl::{
    Consumed, Grouped, Joined, LateRecords, Materialized, Produced, StreamsBuilder, TimeWindows,
};
use serde::{Deserialize, Serialize};

/// A card transaction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Txn {
    /// The transaction's id.
    pub txn_id: String,
    /// The card paying (also the record key).
    pub card_id: String,
    /// The amount, in cents.
    pub amount_cents: i64,
    /// Who is paid.
    pub merchant: String,
    /// Where it happens.
    pub country: String,
    /// Event time, epoch milliseconds.
    pub ts: i64,
}

/// A row of the `cards` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Card {
    /// The card (also the record key).
    pub card_id: String,
    /// Where the card is at home.
    pub home_country: String,
}

/// An alert; the fields besides `rule`, `card_id` and `txn_id` depend on the rule.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// `velocity`, `geo` or `amount_spike`.
    pub rule: String,
    /// The card (also the record key).
    pub card_id: String,
    /// The transaction that raised it.
    pub txn_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// velocity: the window's start.
    pub window_start: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// velocity: the transactions in the window.
    pub count: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// geo: where the transaction happened.
    pub country: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// geo: the card's home country then.
    pub home_country: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// amount_spike: the transaction's amount.
    pub amount_cents: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// amount_spike: the mean of the card's earlier transactions, rounded down.
    pub mean_cents: Option<i64>,
}

/// The velocity rule: this many transactions of a card in one window raise an alert.
pub const VELOCITY_COUNT: u64 = 5;
/// The velocity rule's windows: 60 s tumbling, grace 30 s.
pub fn velocity_windows() -> TimeWindows {
    TimeWindows::of_size_and_grace(Duration::from_secs(60), Duration::from_secs(30))
}
/// The amount-spike rule: more than this many times the mean of the earlier transactions...
pub const SPIKE_FACTOR: i64 = 10;
/// ... of a card with at least this many earlier transactions.
pub const SPIKE_MIN_HISTORY: u64 = 3;

/// The topics the application reads and writes.
#[derive(Debug, Clone)]
pub struct Topics {
    /// Input: the transactions.
    pub transactions: String,
    /// Input: the cards table.
    pub cards: String,
    /// Output: the alerts.
    pub alerts: String,
    /// Output: the values that are not transactions.
    pub dead_letters: String,
}

impl Default for Topics {
    fn default() -> Self {
        Topics {
            transactions: "transactions".into(),
            cards: "cards".into(),
            alerts: "fraud-alerts".into(),
            dead_letters: "fraud-dead-letters".into(),
        }
    }
}

/// What the live summary counts.
#[derive(Clone, Default)]
pub struct Counters {
    /// Transactions read.
    pub transactions: Arc<AtomicU64>,
    /// Alerts written.
    pub alerts: Arc<AtomicU64>,
    /// Transactions dropped by the velocity rule as later than its grace period.
    pub late: LateRecords,
}

/// The velocity rule's aggregate: transactions in the window, the latest one's id.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Velocity {
    count: u64,
    txn_id: String,
}

/// The amount-spike rule's aggregate: the card's history before its latest transaction, and
/// whether that one is a spike.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Spend {
    count: u64,
    sum: i64,
    last: Option<Alert>,
}

/// The topology: the three rules over `topics`, counting into `counters` (its `late` becomes
/// the velocity rule's count of late transactions). The transactions'
/// serde is JSON; a value it rejects goes to the deserialization handler (the application
/// configures the dead-letter topic).
pub fn build_topology(
    topics: &Topics,
    counters: &mut Counters,
) -> kstreams::core::Result<Topology> {
    let builder = StreamsBuilder::new();
    let txn_serde = Json::<Txn>::default();
    let in_count = counters.transactions.clone();
    let txns = builder
        .stream_with::<String, Txn>(
            topics.transactions.as_str(),
            Consumed::with(Utf8, txn_serde.clone()).with_timestamp_extractor(|r, _| r.value().ts),
        )
        .peek(move |_, _| {
            in_count.fetch_add(1, Ordering::Relaxed);
        });
    let cards = builder.table::<String, Card>(
        &topics.cards,
        Materialized::with(Json::<Card>::default()).named("cards"),
    );
    let grouped = txns.group_by_key_with(Grouped::with(Utf8, txn_serde.clone()));

    // velocity: the 5th transaction of a card in a window.
    let windowed = grouped.windowed_by(velocity_windows());
    counters.late = windowed.late_records();
    let velocity = windowed
        .aggregate(
            Velocity::default,
            |_, txn: Txn, v: Velocity| Velocity {
                count: v.count + 1,
                txn_id: txn.txn_id,
            },
            // Every update is looked at (the 5th transaction alerts): no record cache.
            Materialized::with(Json::<Velocity>::default())
                .named("velocity-counts")
                .with_caching_disabled(),
        )
        .to_stream()
        .filter(|_, v| v.count == VELOCITY_COUNT)
        .map(|w, v| {
            let alert = Alert {
                rule: "velocity".into(),
                card_id: w.key.clone(),
                txn_id: v.txn_id,
                window_start: Some(w.start),
                count: Some(v.count),
                ..Alert::default()
            };
            (w.key, alert)
        });

    // geo: a transaction away from its card's home country.
    let geo = txns
        .join_table(
            &cards,
            |txn, card| (txn.clone(), card.home_country.clone()),
            Joined::with(txn_serde.clone()),
        )
        .filter(|_, (txn, home)| txn.country != *home)
        .map_values(|(txn, home)| Alert {
            rule: "geo".into(),
            card_id: txn.card_id,
            txn_id: txn.txn_id,
            country: Some(txn.country),
            home_country: Some(home),
            ..Alert::default()
        });

    // amount_spike: far above the card's mean so far.
    let spike = grouped
        .aggregate(
            Spend::default,
            |_, txn: Txn, s: Spend| {
                let spike = s.count >= SPIKE_MIN_HISTORY
                    && txn.amount_cents > SPIKE_FACTOR * (s.sum / s.count as i64);
                Spend {
                    count: s.count + 1,
                    sum: s.sum + txn.amount_cents,
                    last: spike.then(|| Alert {
                        rule: "amount_spike".into(),
                        card_id: txn.card_id.clone(),
                        txn_id: txn.txn_id.clone(),
                        amount_cents: Some(txn.amount_cents),
                        mean_cents: Some(s.sum / s.count as i64),
                        ..Alert::default()
                    }),
                }
            },
            Materialized::with(Json::<Spend>::default())
                .named("spend-history")
                .with_caching_disabled(),
        )
        .to_stream()
        .flat_map_values(|s| s.last);

    let out_count = counters.alerts.clone();
    velocity
        .merge(&geo)
        .merge(&spike)
        .peek(move |_, _| {
            out_count.fetch_add(1, Ordering::Relaxed);
        })
        .to_with(
            &topics.alerts,
            Produced::with(Utf8, Json::<Alert>::default()),
        );
    builder.build()
}

fn main() -> anyhow::Result<()> {
    real_main::run()
}

#[path = "support/app.rs"]
mod app;

/// The command line application: flags, topics, generated input, the live summary.
mod real_main {
    use super::*;
    use rdkafka::producer::{BaseRecord, Producer};
    use streams_testkit::kafka::{idempotent_producer, send_retrying};

    /// Cards and transactions with every rule's pattern, and a few malformed records.
    fn generate(bootstrap: &str, topics: &Topics, n: usize) -> anyhow::Result<()> {
        let p = idempotent_producer(bootstrap)?;
        let cards = (n / 20).max(10);
        let countries = ["FR", "DE", "IT", "NO", "PT", "ES"];
        // Transactions every 200 ms of event time, ending about now.
        let t0 = app::generated_event_times_start(Duration::from_millis(1_000 + n as u64 * 200));
        for c in 0..cards {
            let card = Card {
                card_id: format!("card-{c}"),
                home_country: countries[c % countries.len()].into(),
            };
            let v = serde_json::to_string(&card)?;
            send_retrying(
                &p,
                BaseRecord::to(&topics.cards)
                    .key(&card.card_id)
                    .payload(&v)
                    .timestamp(t0),
            )?;
        }
        p.flush(Duration::from_secs(30))?;
        println!("generated {cards} cards into {}", topics.cards);
        let mut rng_state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            rng_state ^= rng_state << 13;
            rng_state ^= rng_state >> 7;
            rng_state ^= rng_state << 17;
            rng_state
        };
        for i in 0..n {
            let c = (next() % cards as u64) as usize;
            let home = countries[c % countries.len()];
            let roll = next() % 100;
            let country = if roll < 3 {
                countries[(c + 1) % countries.len()]
            } else {
                home
            };
            let amount = if roll == 99 {
                500_000
            } else {
                1_000 + (next() % 9_000) as i64
            };
            // Bursts: now and then a card pays several times within seconds.
            let ts = t0 + 1_000 + (i as i64) * 200;
            let txn = Txn {
                txn_id: format!("txn-{i}"),
                card_id: format!("card-{c}"),
                amount_cents: amount,
                merchant: format!("merchant-{}", next() % 50),
                country: country.into(),
                ts,
            };
            let v = if i % 1_000 == 999 {
                "{\"txn_id\": \"broken".to_string() // malformed: goes to the dead-letter topic
            } else {
                serde_json::to_string(&txn)?
            };
            send_retrying(
                &p,
                BaseRecord::to(&topics.transactions)
                    .key(&txn.card_id)
                    .payload(&v)
                    .timestamp(ts),
            )?;
            if roll < 2 {
                for b in 0..5 {
                    let burst = Txn {
                        txn_id: format!("txn-{i}-burst-{b}"),
                        ts: ts + b,
                        ..txn.clone()
                    };
                    let v = serde_json::to_string(&burst)?;
                    send_retrying(
                        &p,
                        BaseRecord::to(&topics.transactions)
                            .key(&burst.card_id)
                            .payload(&v)
                            .timestamp(burst.ts),
                    )?;
                }
            }
        }
        p.flush(Duration::from_secs(60))?;
        println!(
            "generated {n} transactions (and bursts) into {}",
            topics.transactions
        );
        Ok(())
    }

    pub(super) fn run() -> anyhow::Result<()> {
        app::init_logging();
        let mut topics = Topics::default();
        let args = app::Args::parse(
            "fraud_detection",
            "fraud-detection",
            &mut [
                ("--transactions", &mut topics.transactions),
                ("--cards", &mut topics.cards),
                ("--alerts", &mut topics.alerts),
                ("--dead-letters", &mut topics.dead_letters),
            ],
        )?;
        let mut counters = Counters::default();
        let topology = build_topology(&topics, &mut counters)?;
        if args.describe {
            app::describe(&topology);
            return Ok(());
        }
        let bootstrap = args.bootstrap_servers();
        app::create_topics(
            &bootstrap,
            &[
                &topics.transactions,
                &topics.cards,
                &topics.alerts,
                &topics.dead_letters,
            ],
        )?;
        if args.generate > 0 {
            generate(&bootstrap, &topics, args.generate)?;
        }
        let config = args
            .config(&bootstrap)
            .deserialization_error_handler(DeadLetterTopic(topics.dead_letters.clone()));
        app::run(topology, config, args.run_for, || {
            let n = counters.transactions.load(Ordering::Relaxed);
            let line = format!(
                "transactions in {n}, alerts out {}, dropped as late {}",
                counters.alerts.load(Ordering::Relaxed),
                counters.late.count()
            );
            (n, line)
        })?;
        report(&bootstrap, &topics)
    }

    /// Reads the alerts and dead letters back (read_committed) and shows them.
    fn report(bootstrap: &str, topics: &Topics) -> anyhow::Result<()> {
        use streams_testkit::kafka::{read_to_end, Isolation};
        let alerts = read_to_end(
            bootstrap,
            &topics.alerts,
            Isolation::ReadCommitted,
            Duration::from_secs(60),
        )?;
        let mut per_rule: std::collections::BTreeMap<String, usize> = Default::default();
        for (i, r) in alerts.iter().enumerate() {
            let alert: Alert = serde_json::from_slice(r.value.as_deref().unwrap_or_default())?;
            if i < 10 {
                println!("alert: {}", r.value_str());
            }
            *per_rule.entry(alert.rule).or_default() += 1;
        }
        let dead = read_to_end(
            bootstrap,
            &topics.dead_letters,
            Isolation::ReadCommitted,
            Duration::from_secs(60),
        )?;
        println!(
            "{} alerts in {} (committed): {per_rule:?}; {} malformed records in {}",
            alerts.len(),
            topics.alerts,
            dead.len(),
            topics.dead_letters
        );
        Ok(())
    }
}
