//! Consumer lag per input partition (`kstreams_consumer_lag_records`): the end offset of the
//! consumer's last fetch response minus its position, updated every commit interval from
//! librdkafka's caches (no request to the broker).

use std::collections::HashMap;

use prometheus_client::metrics::gauge::Gauge;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::Offset;

use crate::metrics::StreamsMetrics;

/// The lag gauges of one thread's assigned partitions.
#[derive(Default)]
pub(super) struct LagGauges {
    gauges: HashMap<(String, i32), Gauge>,
}

impl LagGauges {
    /// Sets the lag of every assigned partition the consumer has a position and an end offset
    /// for; drops the gauges of partitions no longer assigned.
    pub(super) fn update<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        metrics: &StreamsMetrics,
        thread: &str,
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
            let Some(end) = super::clients::cached_end_offset(consumer, e.topic(), e.partition())
            else {
                continue;
            };
            self.gauges
                .entry((e.topic().to_string(), e.partition()))
                .or_insert_with(|| metrics.lag(thread, e.topic(), e.partition()))
                .set((end - position).max(0));
        }
    }
}
