//! The DSL's per-record cost next to the same logic hand-written as one processor, on the
//! `TopologyTestDriver` (no broker): a chain of filter, map_values and to, against one
//! Processor API node doing the same.
//!
//! ```text
//! cargo bench --bench dsl_chain [-- RECORDS ROUNDS]
//! ```
//!
//! Each round pipes RECORDS records through each topology (alternating which goes first) and
//! prints nanoseconds per record for both and the ratio DSL / hand-written; the medians over
//! the rounds come last. The driver commits after every record for both, so the ratio is an
//! upper bound on what the DSL adds to a topology's own work.

use std::time::Instant;

use kstreams::core::processor::{Processor, ProcessorContext};
use kstreams::core::serde::Utf8;
use kstreams::core::{Record, Result, Sink, Source, Topology, TopologyBuilder, TopologyTestDriver};
use kstreams::dsl::StreamsBuilder;

/// filter (non-empty) → map_values (upper-case) → to.
fn dsl() -> Topology {
    let builder = StreamsBuilder::new();
    builder
        .stream::<String, String>("in")
        .filter(|_, v| !v.is_empty())
        .map_values(|v| v.to_uppercase())
        .to("out");
    builder.build().unwrap()
}

struct Hand;

impl Processor for Hand {
    type KeyIn = String;
    type ValueIn = String;
    type KeyOut = String;
    type ValueOut = String;
    fn process(
        &mut self,
        r: Record<String, String>,
        ctx: &mut ProcessorContext<'_, String, String>,
    ) -> Result<()> {
        if r.value().is_empty() {
            return Ok(());
        }
        ctx.forward(r.map_value(|v| v.to_uppercase()))
    }
}

fn hand() -> Topology {
    TopologyBuilder::new()
        .add_source("in", Source::new(["in"], Utf8, Utf8))
        .add_processor("hand", || Hand, ["in"])
        .add_sink("out", Sink::new("out", Utf8, Utf8), ["hand"])
        .build()
        .unwrap()
}

/// Nanoseconds per record to pipe `n` records through `topology`.
fn run(topology: Topology, n: usize) -> f64 {
    let driver = TopologyTestDriver::new(topology).unwrap();
    let input = driver.input_topic("in", Utf8, Utf8);
    let output = driver.output_topic::<String, String>("out", Utf8, Utf8);
    let keys: Vec<String> = (0..n).map(|i| format!("k{}", i % 1000)).collect();
    let start = Instant::now();
    for (i, key) in keys.into_iter().enumerate() {
        let value = if i % 10 == 0 {
            String::new()
        } else {
            format!("value-{i}")
        };
        input.pipe_at(key, value, i as i64 + 1).unwrap();
        if i % 10_000 == 9_999 {
            output.read_records().unwrap(); // keep the output queue small
        }
    }
    let ns = start.elapsed().as_nanos() as f64 / n as f64;
    let left = output.read_records().unwrap().len();
    assert!(left <= 10_000);
    ns
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let n = args.first().copied().unwrap_or(200_000);
    let rounds = args.get(1).copied().unwrap_or(5);
    let mut ratios = vec![];
    let (mut d_all, mut h_all) = (vec![], vec![]);
    for round in 1..=rounds {
        let (d, h) = if round % 2 == 1 {
            let d = run(dsl(), n);
            (d, run(hand(), n))
        } else {
            let h = run(hand(), n);
            (run(dsl(), n), h)
        };
        println!(
            "round {round}: DSL chain {d:.0} ns/record, hand-written processor {h:.0} ns/record, ratio DSL/hand {:.3}",
            d / h
        );
        ratios.push(d / h);
        d_all.push(d);
        h_all.push(h);
    }
    println!(
        "medians over {rounds} rounds of {n} records: DSL {:.0} ns/record, hand-written {:.0} ns/record, ratio DSL/hand {:.3}",
        median(d_all),
        median(h_all),
        median(ratios)
    );
}
