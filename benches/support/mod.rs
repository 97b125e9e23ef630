//! What several benchmarks share: filling an input topic and watching a group's progress.

// Each benchmark compiles this module for itself and uses part of it.
#![allow(dead_code)]

use std::time::{Duration, Instant};

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

/// How long a pipeline may commit nothing new before its round is given up.
pub const STALL: Duration = Duration::from_secs(120);

/// Waits until `group` has committed offsets covering `n` records of `topic`; returns how
/// many it covers then, or `None` (with a line saying so) when the committed total did not
/// grow for [`STALL`].
pub fn wait_committed(bootstrap: &str, group: &str, topic: &str, n: usize) -> Option<usize> {
    let (mut seen, mut since) = (-1, Instant::now());
    loop {
        let done = committed_total(bootstrap, group, topic);
        if done >= n as i64 {
            return Some(done as usize);
        }
        if done > seen {
            (seen, since) = (done, Instant::now());
        } else if since.elapsed() > STALL {
            println!(
                "stalled: group {group} committed {done} of {n} records of {topic} and nothing \
                 more for {STALL:?}; the round is void; committed per partition {:?}, records \
                 per input partition {}",
                streams_testkit::kafka::committed_offsets(bootstrap, group, topic),
                streams_testkit::kafka::partition_census(
                    bootstrap,
                    topic,
                    streams_testkit::kafka::Isolation::ReadUncommitted
                )
            );
            return None;
        }
        std::thread::sleep(Duration::from_millis(20)); // the watcher's polling period
    }
}
