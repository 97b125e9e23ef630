//! What the DSL's driver tests share: building a driver, reading an output topic whole.

// Each test crate uses its own subset.
#![allow(dead_code)]

use std::time::Duration;

use kstreams::core::driver::TestOutputTopic;
use kstreams::core::TopologyTestDriver;
use kstreams::dsl::StreamsBuilder;

pub fn s(x: &str) -> String {
    x.to_string()
}

pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A driver of `builder`'s topology.
pub fn driver(builder: StreamsBuilder) -> TopologyTestDriver {
    TopologyTestDriver::new(builder.build().unwrap()).unwrap()
}

/// Every record of an output topic: (key, value, timestamp).
pub fn drain<K: 'static, V: 'static>(out: &TestOutputTopic<K, V>) -> Vec<(K, V, i64)> {
    out.read_records()
        .unwrap()
        .into_iter()
        .map(|r| {
            let ts = r.timestamp();
            let (k, v) = r.into_key_value();
            (k, v, ts)
        })
        .collect()
}
