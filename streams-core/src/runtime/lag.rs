//! Consumer lag per input partition (`kstreams_consumer_lag_records`): the partition's end minus
//! the consumer's position, updated every commit interval from librdkafka's caches (no request
//! to the broker). The end is, as Kafka's `records-lag` takes it, the last stable offset under
//! read_committed (exactly-once; from librdkafka's statistics, every second) and the high
//! watermark of the last fetch response otherwise.

use std::collections::HashMap;

use prometheus_client::metrics::gauge::Gauge;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::Offset;

use super::rebalance::ThreadContext;
use crate::metrics::StreamsMetrics;

/// The lag gauges of one thread's assigned partitions.
#[derive(Default)]
pub(super) struct LagGauges {
    gauges: HashMap<(String, i32), Gauge>,
}

impl LagGauges {
    /// Sets the lag of every assigned partition the consumer has a position and an end offset
    /// for; drops the gauges of partitions no longer assigned.
    pub(super) fn update(
        &mut self,
        consumer: &BaseConsumer<ThreadContext>,
        metrics: &StreamsMetrics,
        thread: &str,
        read_committed: bool,
    ) {
        let Ok(positions) = consumer.position() else {
            return;
        };
        let assigned: Vec<(String, i32)> = positions
            .elements()
            .iter()
            .map(|e| (e.topic().to_string(), e.partition()))
            .collect();
        self.gauges.retain(|(topic, partition), _| {
            let keep = assigned.iter().any(|(t, p)| t == topic && p == partition);
            if !keep {
                metrics.remove_lag(thread, topic, *partition);
            }
            keep
        });
        for e in positions.elements() {
            let Offset::Offset(position) = e.offset() else {
                continue; // nothing consumed yet
            };
            let end = if read_committed {
                consumer.context().stable_end(e.topic(), e.partition())
            } else {
                super::clients::cached_end_offset(consumer, e.topic(), e.partition())
            };
            let Some(end) = end else {
                continue;
            };
            self.gauges
                .entry((e.topic().to_string(), e.partition()))
                .or_insert_with(|| metrics.lag(thread, e.topic(), e.partition()))
                .set((end - position).max(0));
        }
    }
}
