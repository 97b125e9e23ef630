//! What several benchmarks share: filling an input topic and watching a group's progress.

use std::time::Duration;

use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use streams_testkit::kafka::{client_config, committed_offsets, send_retrying};

/// Fills `topic` with `n` records of a 100-byte value, the i-th keyed `key_of(i)`, through an
/// idempotent producer; returns once all are acknowledged.
pub fn fill(bootstrap: &str, topic: &str, n: usize, key_of: impl Fn(usize) -> String) {
    let p: BaseProducer = client_config(bootstrap)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let payload = [b'x'; 100];
    for i in 0..n {
        let key = key_of(i);
        send_retrying(&p, BaseRecord::to(topic).key(&key).payload(&payload[..])).unwrap();
    }
    p.flush(Duration::from_secs(120)).unwrap();
}

/// How many records of `topic` the group `group` has committed, over all partitions (0 while
/// the broker cannot say).
pub fn committed_total(bootstrap: &str, group: &str, topic: &str) -> i64 {
    committed_offsets(bootstrap, group, topic)
        .map(|v| v.into_iter().map(|o| o.unwrap_or(0)).sum())
        .unwrap_or(0)
}
