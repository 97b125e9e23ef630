//! Metrics of a running application: how it is doing, readable in code
//! ([`KafkaStreams::metrics`](crate::runtime::KafkaStreams::metrics)) and in the Prometheus text
//! format ([`KafkaStreams::metrics_text`](crate::runtime::KafkaStreams::metrics_text)).
//!
//! The values live in the Prometheus project's Rust client (`prometheus-client`, one registry
//! per [`KafkaStreams`](crate::runtime::KafkaStreams) instance; docs/adr/0010-metrics.md says
//! why). Names follow Kafka Streams' metrics where one exists, in Prometheus' spelling
//! (`kstreams_` prefix, units in the name, counters ending in `_total`):
//!
//! | name | labels | Kafka Streams |
//! |---|---|---|
//! | `kstreams_thread_process_records_total` | `thread_id` | `process-total` (stream-thread-metrics); `process-rate` is its rate |
//! | `kstreams_thread_poll_latency_seconds` (histogram) | `thread_id` | `poll-latency-avg` (sum / count) |
//! | `kstreams_thread_poll_latency_max_seconds` | `thread_id` | `poll-latency-max` (over the last 30 s window) |
//! | `kstreams_thread_commit_latency_seconds` (histogram) | `thread_id` | `commit-latency-avg`, `commit-total` (its count) |
//! | `kstreams_thread_commit_latency_max_seconds` | `thread_id` | `commit-latency-max` (over the last 30 s window) |
//! | `kstreams_thread_tasks` | `thread_id` | the thread's tasks, running or restoring |
//! | `kstreams_task_process_records_total` | `thread_id`, `task_id` | `process-total` (stream-task-metrics) |
//! | `kstreams_task_dropped_records_total` | `thread_id`, `task_id`, `reason` | `dropped-records-total`; `reason` is `deserialization` (skipped or dead-lettered by the handler), `late` (past a window's grace) or `null_key` |
//! | `kstreams_consumer_lag_records` | `thread_id`, `topic`, `partition` | the consumer's `records-lag` per input partition: its end (the last stable offset under exactly-once, else the high watermark) minus the position, each commit interval |
//! | `kstreams_restore_records_total` | `thread_id`, `task_id` | `restore-total`: changelog records restored into the task's stores (a restoration that starts over from the changelog's start counts its records again) |
//! | `kstreams_restore_remaining_records` | `thread_id`, `task_id` | `restore-remaining-records-total`: what the task's changelog partitions being read still lack (a task's changelogs restore together); 0 once restored or interrupted |
//! | `kstreams_restore_waiting_on_transactions` | `thread_id`, `task_id` | (ours) 1 while one of the task's changelog partitions being restored is read to its last stable offset and waits for a transaction below the high watermark to end (a previous owner's last commit, say), else 0 |
//! | `kstreams_store_get_total`, `_put_total`, `_range_total` | `thread_id`, `task_id`, `store` | the calls counted by `get-rate`, `put-rate`, `range-rate` (state-store metrics; a delete is a get and a put, window and session fetches are ranges) |
//! | `kstreams_state` | `state` | `state` (client metrics): 1 for the current state, 0 for the others |
//! | `kstreams_rocksdb_block_cache_usage_bytes`, `_capacity_bytes` | | RocksDB's `block-cache-usage` and `block-cache-capacity`, of the instance's one shared cache (the memtables are charged to it, so usage against capacity is the whole budget) |
//! | `kstreams_rocksdb_memtable_usage_bytes`, `_limit_bytes` | | the shared write buffer manager's usage and limit (`size-all-mem-tables` over all stores) |

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::TaskId;

type Labels = Vec<(String, String)>;
type FloatGauge = Gauge<f64, AtomicU64>;

/// One value of one metric, as [`KafkaStreams::metrics`](crate::runtime::KafkaStreams::metrics)
/// returns it. A histogram gives three: `<name>_count`, `<name>_sum` and `<name>_avg`.
#[derive(Debug, Clone, PartialEq)]
pub struct Metric {
    /// The metric's name (see the module's table).
    pub name: String,
    /// Its labels, by name.
    pub labels: Vec<(String, String)>,
    /// Its value.
    pub value: f64,
}

impl Metric {
    /// The value of label `name`, if the metric has it.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// All metrics of an instance at one moment.
#[derive(Debug, Clone, Default)]
pub struct Metrics(pub Vec<Metric>);

impl Metrics {
    /// Every value of metric `name`.
    pub fn named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Metric> + 'a {
        self.0.iter().filter(move |m| m.name == name)
    }

    /// The sum of every value of metric `name` whose labels include all of `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.named(name)
            .filter(|m| labels.iter().all(|(k, v)| m.label(k) == Some(*v)))
            .map(|m| m.value)
            .sum()
    }
}

/// A metric family whose label sets are remembered, so that a snapshot can list them (the
/// client library encodes families but does not list their members).
struct Tracked<M> {
    family: Family<Labels, M, fn() -> M>,
    seen: Mutex<Vec<Labels>>,
}

impl<M> Tracked<M>
where
    M: Clone
        + std::fmt::Debug
        + prometheus_client::metrics::TypedMetric
        + prometheus_client::encoding::EncodeMetric
        + Send
        + Sync
        + 'static,
{
    fn new(registry: &mut Registry, name: &str, help: &str, make: fn() -> M) -> Self {
        let family = Family::<Labels, M, fn() -> M>::new_with_constructor(make);
        registry.register(name, help, family.clone());
        Tracked {
            family,
            seen: Mutex::new(Vec::new()),
        }
    }

    fn get(&self, labels: Labels) -> M {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if !seen.contains(&labels) {
            seen.push(labels.clone());
        }
        self.family.get_or_create_owned(&labels)
    }

    fn remove(&self, labels: &Labels) {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|l| l != labels);
        self.family.remove(labels);
    }

    fn each(&self, mut f: impl FnMut(&Labels, &M)) {
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for labels in seen {
            if let Some(m) = self.family.get(&labels) {
                f(&labels, &m);
            }
        }
    }
}

fn latency_histogram() -> Histogram {
    // 50 µs to about 13 s.
    Histogram::new(exponential_buckets(0.000_05, 4.0, 10))
}

fn thread_labels(thread: &str) -> Labels {
    vec![("thread_id".into(), thread.into())]
}

fn task_labels(thread: &str, task: TaskId) -> Labels {
    vec![
        ("thread_id".into(), thread.into()),
        ("task_id".into(), task.to_string()),
    ]
}

fn partition_labels(thread: &str, topic: &str, partition: i32) -> Labels {
    vec![
        ("thread_id".into(), thread.into()),
        ("topic".into(), topic.into()),
        ("partition".into(), partition.to_string()),
    ]
}

/// Why a record was dropped (the `reason` label of `kstreams_task_dropped_records_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// It could not be deserialized; the deserialization error handler skipped it or sent it
    /// to the dead-letter topic.
    Deserialization,
    /// It came after its window's grace period.
    Late,
    /// An operator that needs a key got a record without one.
    NullKey,
}

impl DropReason {
    fn label(self) -> &'static str {
        match self {
            DropReason::Deserialization => "deserialization",
            DropReason::Late => "late",
            DropReason::NullKey => "null_key",
        }
    }
}

/// The registry of one instance and its metric families.
pub(crate) struct StreamsMetrics {
    registry: Registry,
    thread_process: Tracked<Counter>,
    poll_latency: Tracked<Histogram>,
    poll_latency_max: Tracked<FloatGauge>,
    commit_latency: Tracked<Histogram>,
    commit_latency_max: Tracked<FloatGauge>,
    thread_tasks: Tracked<Gauge>,
    task_process: Tracked<Counter>,
    dropped: Tracked<Counter>,
    lag: Tracked<Gauge>,
    restored: Tracked<Counter>,
    restore_remaining: Tracked<Gauge>,
    restore_waiting: Tracked<Gauge>,
    state: Tracked<Gauge>,
    store_gets: Tracked<Counter>,
    store_puts: Tracked<Counter>,
    store_ranges: Tracked<Counter>,
    group_describes: Tracked<Counter>,
    /// Count and sum of each latency histogram (the client library does not read them back).
    latency_totals: Mutex<Vec<(&'static str, Labels, Arc<LatencyTotals>)>>,
    /// RocksDB's shared memory, read when the metrics are (block cache usage and capacity,
    /// memtable usage and limit, in bytes).
    rocks: Mutex<Option<RocksProbe>>,
    rocks_gauges: [Gauge; 4],
}

/// Reads RocksDB's memory use: (block cache usage, capacity, memtable usage, limit).
pub(crate) type RocksProbe = Box<dyn Fn() -> [usize; 4] + Send + Sync>;

const ROCKS_GAUGES: [(&str, &str); 4] = [
    (
        "rocksdb_block_cache_usage_bytes",
        "Bytes in RocksDB's shared block cache, the memtables' charge included",
    ),
    (
        "rocksdb_block_cache_capacity_bytes",
        "Capacity of RocksDB's shared block cache: the instance's RocksDB budget",
    ),
    (
        "rocksdb_memtable_usage_bytes",
        "Bytes of the RocksDB stores' memtables",
    ),
    (
        "rocksdb_memtable_limit_bytes",
        "Limit of the RocksDB stores' memtables",
    ),
];

/// Observations of one latency histogram, for snapshots.
#[derive(Default)]
pub(crate) struct LatencyTotals {
    count: AtomicU64,
    nanos: AtomicU64,
}

impl StreamsMetrics {
    pub(crate) fn new() -> Self {
        let mut r = Registry::with_prefix("kstreams");
        StreamsMetrics {
            thread_process: Tracked::new(
                &mut r,
                "thread_process_records",
                "Records processed by the thread",
                Counter::default,
            ),
            poll_latency: Tracked::new(
                &mut r,
                "thread_poll_latency_seconds",
                "Time one poll of the consumer took",
                latency_histogram,
            ),
            poll_latency_max: Tracked::new(
                &mut r,
                "thread_poll_latency_max_seconds",
                "Longest poll in the last 30 s window",
                FloatGauge::default,
            ),
            commit_latency: Tracked::new(
                &mut r,
                "thread_commit_latency_seconds",
                "Time one commit of the thread's tasks took",
                latency_histogram,
            ),
            commit_latency_max: Tracked::new(
                &mut r,
                "thread_commit_latency_max_seconds",
                "Longest commit in the last 30 s window",
                FloatGauge::default,
            ),
            thread_tasks: Tracked::new(
                &mut r,
                "thread_tasks",
                "Tasks of the thread, running or restoring",
                Gauge::default,
            ),
            task_process: Tracked::new(
                &mut r,
                "task_process_records",
                "Records processed by the task",
                Counter::default,
            ),
            dropped: Tracked::new(
                &mut r,
                "task_dropped_records",
                "Records the task dropped, by reason",
                Counter::default,
            ),
            lag: Tracked::new(
                &mut r,
                "consumer_lag_records",
                "Records of the input partition not consumed yet",
                Gauge::default,
            ),
            restored: Tracked::new(
                &mut r,
                "restore_records",
                "Changelog records restored into the task's stores",
                Counter::default,
            ),
            restore_remaining: Tracked::new(
                &mut r,
                "restore_remaining_records",
                "Changelog records the task still has to restore",
                Gauge::default,
            ),
            restore_waiting: Tracked::new(
                &mut r,
                "restore_waiting_on_transactions",
                "1 while a restoration waits for a transaction open on its changelog to end",
                Gauge::default,
            ),
            state: Tracked::new(
                &mut r,
                "state",
                "1 for the instance's current state",
                Gauge::default,
            ),
            store_gets: Tracked::new(
                &mut r,
                "store_get",
                "Point reads of the store",
                Counter::default,
            ),
            store_puts: Tracked::new(
                &mut r,
                "store_put",
                "Writes and deletes of the store",
                Counter::default,
            ),
            store_ranges: Tracked::new(
                &mut r,
                "store_range",
                "Range reads of the store (ranges, prefix scans, full scans, window fetches)",
                Counter::default,
            ),
            group_describes: Tracked::new(
                &mut r,
                "group_describes",
                "Descriptions of the application's consumer group asked of its coordinator, by purpose (queries: routing interactive queries; standbys: placing standby tasks)",
                Counter::default,
            ),
            rocks_gauges: ROCKS_GAUGES.map(|(name, help)| {
                let g = Gauge::default();
                r.register(name, help, g.clone());
                g
            }),
            registry: r,
            latency_totals: Mutex::new(Vec::new()),
            rocks: Mutex::new(None),
        }
    }

    /// Sets the `state` gauge: 1 for `current`, 0 for the other states in `all`.
    pub(crate) fn set_state(&self, current: &str, all: &[&str]) {
        for s in all {
            self.state
                .get(vec![("state".into(), (*s).to_string())])
                .set(i64::from(*s == current));
        }
    }

    pub(crate) fn thread(&self, thread: &str) -> ThreadMetrics {
        let l = thread_labels(thread);
        let totals = |name: &'static str| {
            let t = Arc::new(LatencyTotals::default());
            let mut all = self
                .latency_totals
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            all.retain(|(n, labels, _)| !(*n == name && *labels == l));
            all.push((name, l.clone(), t.clone()));
            t
        };
        ThreadMetrics {
            poll: LatencyMetrics {
                histogram: self.poll_latency.get(l.clone()),
                max: self.poll_latency_max.get(l.clone()),
                totals: totals("thread_poll_latency_seconds"),
                window_start: Instant::now(),
            },
            commit: LatencyMetrics {
                histogram: self.commit_latency.get(l.clone()),
                max: self.commit_latency_max.get(l.clone()),
                totals: totals("thread_commit_latency_seconds"),
                window_start: Instant::now(),
            },
            tasks: self.thread_tasks.get(l),
        }
    }

    pub(crate) fn task(&self, thread: &str, task: TaskId) -> TaskMetrics {
        let l = task_labels(thread, task);
        let dropped = |reason: DropReason| {
            let mut l = l.clone();
            l.push(("reason".into(), reason.label().into()));
            self.dropped.get(l)
        };
        TaskMetrics {
            thread_process: self.thread_process.get(thread_labels(thread)),
            process: self.task_process.get(l.clone()),
            dropped_deserialization: dropped(DropReason::Deserialization),
            dropped_late: dropped(DropReason::Late),
            dropped_null_key: dropped(DropReason::NullKey),
        }
    }

    pub(crate) fn store(&self, thread: &str, task: TaskId, store: &str) -> StoreMetrics {
        let mut l = task_labels(thread, task);
        l.push(("store".into(), store.into()));
        StoreMetrics {
            gets: self.store_gets.get(l.clone()),
            puts: self.store_puts.get(l.clone()),
            ranges: self.store_ranges.get(l),
        }
    }

    pub(crate) fn restoration(&self, thread: &str, task: TaskId) -> (Counter, Gauge) {
        let l = task_labels(thread, task);
        (self.restored.get(l.clone()), self.restore_remaining.get(l))
    }

    /// Descriptions of the group asked for `purpose` (`queries` or `standbys`).
    pub(crate) fn group_describes(&self, purpose: &str) -> Counter {
        self.group_describes
            .get(vec![("purpose".into(), purpose.into())])
    }

    /// 1 while the task's restoration waits for a transaction open on its changelog to end.
    pub(crate) fn restoration_waiting(&self, thread: &str, task: TaskId) -> Gauge {
        self.restore_waiting.get(task_labels(thread, task))
    }

    pub(crate) fn lag(&self, thread: &str, topic: &str, partition: i32) -> Gauge {
        self.lag.get(partition_labels(thread, topic, partition))
    }

    pub(crate) fn remove_lag(&self, thread: &str, topic: &str, partition: i32) {
        self.lag.remove(&partition_labels(thread, topic, partition));
    }

    /// Where the RocksDB gauges are read from (once the instance has started).
    pub(crate) fn set_rocks_probe(&self, probe: RocksProbe) {
        *self.rocks.lock().unwrap_or_else(|e| e.into_inner()) = Some(probe);
    }

    fn refresh_rocks(&self) {
        if let Some(probe) = &*self.rocks.lock().unwrap_or_else(|e| e.into_inner()) {
            for (gauge, value) in self.rocks_gauges.iter().zip(probe()) {
                gauge.set(value as i64);
            }
        }
    }

    /// The Prometheus text format (OpenMetrics flavour, ending in `# EOF`).
    pub(crate) fn text(&self) -> String {
        self.refresh_rocks();
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }

    pub(crate) fn snapshot(&self) -> Metrics {
        self.refresh_rocks();
        let mut all = Vec::new();
        let mut push = |name: &str, labels: &Labels, value: f64| {
            all.push(Metric {
                name: format!("kstreams_{name}"),
                labels: labels.clone(),
                value,
            })
        };
        let counters = [
            ("thread_process_records_total", &self.thread_process),
            ("task_process_records_total", &self.task_process),
            ("task_dropped_records_total", &self.dropped),
            ("restore_records_total", &self.restored),
            ("store_get_total", &self.store_gets),
            ("store_put_total", &self.store_puts),
            ("store_range_total", &self.store_ranges),
            ("group_describes_total", &self.group_describes),
        ];
        for (name, family) in counters {
            family.each(|l, c| push(name, l, c.get() as f64));
        }
        let gauges = [
            ("thread_tasks", &self.thread_tasks),
            ("consumer_lag_records", &self.lag),
            ("restore_remaining_records", &self.restore_remaining),
            ("restore_waiting_on_transactions", &self.restore_waiting),
            ("state", &self.state),
        ];
        for (name, family) in gauges {
            family.each(|l, g| push(name, l, g.get() as f64));
        }
        for (name, family) in [
            ("thread_poll_latency_max_seconds", &self.poll_latency_max),
            (
                "thread_commit_latency_max_seconds",
                &self.commit_latency_max,
            ),
        ] {
            family.each(|l, g| push(name, l, g.get()));
        }
        let totals = self
            .latency_totals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for (name, l, t) in totals {
            let count = t.count.load(Ordering::Relaxed);
            let sum = t.nanos.load(Ordering::Relaxed) as f64 / 1e9;
            push(&format!("{name}_count"), &l, count as f64);
            push(&format!("{name}_sum"), &l, sum);
            let avg = if count == 0 { 0.0 } else { sum / count as f64 };
            push(&format!("{name}_avg"), &l, avg);
        }
        if self
            .rocks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
        {
            for ((name, _), gauge) in ROCKS_GAUGES.iter().zip(&self.rocks_gauges) {
                all.push(Metric {
                    name: format!("kstreams_{name}"),
                    labels: vec![],
                    value: gauge.get() as f64,
                });
            }
        }
        Metrics(all)
    }
}

/// Runs the metric operations of the stream loop's hot path outside of it, for the benchmark of
/// what metrics cost (`benches/eos_pipeline.rs --metrics-cost`): `records` records counted as a
/// task counts each one it processed, and `polls` poll rounds timed as the stream loop times
/// each one, on a fresh registry.
#[cfg(feature = "internals")]
pub fn exercise_hot_path(records: u64, polls: u64) {
    let metrics = StreamsMetrics::new();
    let task = metrics.task(
        "bench",
        TaskId {
            subtopology: 0,
            partition: 0,
        },
    );
    for _ in 0..records {
        std::hint::black_box(&task).processed();
    }
    let mut thread = metrics.thread("bench");
    for _ in 0..polls {
        let started = Instant::now();
        std::hint::black_box(&mut thread)
            .poll
            .observe(started.elapsed());
    }
}

impl std::fmt::Debug for StreamsMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamsMetrics").finish_non_exhaustive()
    }
}

/// How long the max-latency gauges remember a value.
const MAX_WINDOW: Duration = Duration::from_secs(30);

/// A latency histogram and its windowed maximum; written by one thread.
#[derive(Clone)]
pub(crate) struct LatencyMetrics {
    histogram: Histogram,
    max: FloatGauge,
    totals: Arc<LatencyTotals>,
    window_start: Instant,
}

impl LatencyMetrics {
    pub(crate) fn observe(&mut self, took: Duration) {
        let secs = took.as_secs_f64();
        self.histogram.observe(secs);
        self.totals.count.fetch_add(1, Ordering::Relaxed);
        self.totals
            .nanos
            .fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
        if self.window_start.elapsed() >= MAX_WINDOW {
            self.window_start = Instant::now();
            self.max.set(secs);
        } else if secs > self.max.get() {
            self.max.set(secs);
        }
    }
}

/// What a stream thread records.
#[derive(Clone)]
pub(crate) struct ThreadMetrics {
    pub(crate) poll: LatencyMetrics,
    pub(crate) commit: LatencyMetrics,
    pub(crate) tasks: Gauge,
}

/// What a state store records: calls on its read and write path (a delete is a get and a put).
#[derive(Clone)]
pub(crate) struct StoreMetrics {
    pub(crate) gets: Counter,
    pub(crate) puts: Counter,
    pub(crate) ranges: Counter,
}

/// What a task records.
#[derive(Clone)]
pub(crate) struct TaskMetrics {
    /// The thread's counter, counted with the task's.
    pub(crate) thread_process: Counter,
    pub(crate) process: Counter,
    pub(crate) dropped_deserialization: Counter,
    pub(crate) dropped_late: Counter,
    pub(crate) dropped_null_key: Counter,
}

impl TaskMetrics {
    pub(crate) fn processed(&self) {
        self.process.inc();
        self.thread_process.inc();
    }

    pub(crate) fn dropped(&self, reason: DropReason) {
        match reason {
            DropReason::Deserialization => self.dropped_deserialization.inc(),
            DropReason::Late => self.dropped_late.inc(),
            DropReason::NullKey => self.dropped_null_key.inc(),
        };
    }
}
