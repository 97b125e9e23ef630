//! Configuration of a running application.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::handlers::{
    DeserializationErrorHandler, FailOnProductionError, LogAndFail, ProductionErrorHandler,
};
use crate::store::{RocksConfigSetter, RocksResources};
use crate::{Error, Result};

/// How input records affect output topics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessingGuarantee {
    /// Output and consumed offsets are committed in one Kafka transaction per stream thread
    /// (exactly-once v2); readers of the output see each input's effect once.
    ExactlyOnce,
    /// Output is flushed before offsets are committed; after a crash some input is processed
    /// again and its output appears twice.
    AtLeastOnce,
}

/// The configuration of a [`KafkaStreams`](crate::runtime::KafkaStreams) application.
///
/// ```
/// use std::time::Duration;
/// use streams_core::config::{ProcessingGuarantee, StreamsConfig};
///
/// let config = StreamsConfig::new("orders-app", "localhost:9092")
///     .processing_guarantee(ProcessingGuarantee::ExactlyOnce)
///     .num_stream_threads(2)
///     .set("fetch.min.bytes", "1");
/// assert_eq!(config.effective_commit_interval(), Duration::from_millis(100));
/// // Secrets among the client properties are not printed.
/// let config = config.set("sasl.password", "hunter2");
/// assert!(!format!("{config:?}").contains("hunter2"));
/// ```
#[derive(Clone)]
pub struct StreamsConfig {
    pub(crate) application_id: String,
    pub(crate) bootstrap_servers: String,
    pub(crate) guarantee: ProcessingGuarantee,
    pub(crate) commit_interval: Option<Duration>,
    pub(crate) repartition_purge_interval: Duration,
    pub(crate) num_stream_threads: usize,
    pub(crate) state_dir: PathBuf,
    pub(crate) instance_id: Option<String>,
    pub(crate) client_properties: BTreeMap<String, String>,
    pub(crate) on_poison: Arc<dyn DeserializationErrorHandler>,
    pub(crate) on_production_error: Arc<dyn ProductionErrorHandler>,
    pub(crate) replication_factor: i32,
    pub(crate) poll_batch: usize,
    pub(crate) transaction_timeout: Duration,
    pub(crate) client_timeout: Duration,
    pub(crate) state_cleanup_delay: Duration,
    pub(crate) task_timeout: Duration,
    pub(crate) restore_listener: Option<Arc<dyn RestoreListener>>,
    pub(crate) rocks_block_cache: usize,
    pub(crate) rocks_write_buffers: usize,
    pub(crate) rocks_setter: Option<RocksConfigSetter>,
    pub(crate) cache_max_bytes: usize,
    pub(crate) max_task_idle: Option<Duration>,
    pub(crate) metrics_recording: bool,
    pub(crate) http_endpoint: Option<std::net::SocketAddr>,
    pub(crate) http_max_connections: usize,
    pub(crate) http_header_timeout: Duration,
    pub(crate) http_token: Option<String>,
    pub(crate) http_allowed_hosts: Vec<String>,
    pub(crate) http_queries: bool,
    pub(crate) http_tls: Option<HttpTls>,
    pub(crate) query_partitioners: BTreeMap<String, crate::KeyPartitioner>,
    pub(crate) application_server: Option<String>,
    pub(crate) num_standby_replicas: usize,
}

/// Whether a client property holds a secret (its value is never printed).
fn is_secret(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    [
        "password",
        "secret",
        "jaas",
        "token",
        "credential",
        "ssl.key",
        "private",
    ]
    .iter()
    .any(|s| key.contains(s))
}

impl std::fmt::Debug for StreamsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let properties: BTreeMap<&str, &str> = self
            .client_properties
            .iter()
            .map(|(k, v)| {
                let v = if is_secret(k) {
                    "[redacted]"
                } else {
                    v.as_str()
                };
                (k.as_str(), v)
            })
            .collect();
        f.debug_struct("StreamsConfig")
            .field("application_id", &self.application_id)
            .field("bootstrap_servers", &self.bootstrap_servers)
            .field("guarantee", &self.guarantee)
            .field("commit_interval", &self.effective_commit_interval())
            .field(
                "repartition_purge_interval",
                &self.repartition_purge_interval,
            )
            .field("num_stream_threads", &self.num_stream_threads)
            .field("state_dir", &self.state_dir)
            .field("instance_id", &self.instance_id)
            .field("client_properties", &properties)
            .field("replication_factor", &self.replication_factor)
            .field("poll_batch", &self.poll_batch)
            .field("transaction_timeout", &self.transaction_timeout)
            .field("client_timeout", &self.client_timeout)
            .field("state_cleanup_delay", &self.state_cleanup_delay)
            .field("task_timeout", &self.task_timeout)
            .field("restore_listener", &self.restore_listener.is_some())
            .field("rocksdb_block_cache", &self.rocks_block_cache)
            .field("rocksdb_write_buffers", &self.rocks_write_buffers)
            .field("rocksdb_config_setter", &self.rocks_setter.is_some())
            .field("cache_max_bytes", &self.cache_max_bytes)
            .field("max_task_idle", &self.max_task_idle)
            .field("metrics_recording", &self.metrics_recording)
            .field("http_endpoint", &self.http_endpoint)
            .field("http_max_connections", &self.http_max_connections)
            .field("http_header_timeout", &self.http_header_timeout)
            .field("http_token", &self.http_token.as_ref().map(|_| "<set>"))
            .field("http_allowed_hosts", &self.http_allowed_hosts)
            .field("http_queries", &self.http_queries)
            .field("http_tls", &self.http_tls)
            .field("query_partitioners", &self.query_partitioners)
            .field("application_server", &self.application_server)
            .field("num_standby_replicas", &self.num_standby_replicas)
            .finish_non_exhaustive()
    }
}

/// Told about the restoration of every change-logged store a task opens.
pub trait RestoreListener: Send + Sync + 'static {
    /// Restoration of `store`'s `partition` starts at changelog offset `from`.
    fn on_restore_start(&self, store: &str, partition: i32, from: i64) {
        let _ = (store, partition, from);
    }
    /// A batch of `records` was written, up to changelog offset `last_offset`.
    fn on_batch_restored(&self, store: &str, partition: i32, last_offset: i64, records: u64) {
        let _ = (store, partition, last_offset, records);
    }
    /// Restoration ended after `total` records.
    fn on_restore_end(&self, store: &str, partition: i32, total: u64) {
        let _ = (store, partition, total);
    }
}

impl StreamsConfig {
    /// A configuration with Kafka Streams' defaults: exactly-once, one stream thread, state
    /// under the system temp directory's `kstreams`, failing on poison records.
    pub fn new(application_id: &str, bootstrap_servers: &str) -> Self {
        StreamsConfig {
            application_id: application_id.to_string(),
            bootstrap_servers: bootstrap_servers.to_string(),
            guarantee: ProcessingGuarantee::ExactlyOnce,
            commit_interval: None,
            repartition_purge_interval: Duration::from_secs(30),
            num_stream_threads: 1,
            state_dir: std::env::temp_dir().join("kstreams"),
            instance_id: None,
            client_properties: BTreeMap::new(),
            on_poison: Arc::new(LogAndFail),
            on_production_error: Arc::new(FailOnProductionError),
            replication_factor: 1,
            poll_batch: 1000,
            transaction_timeout: Duration::from_secs(60),
            client_timeout: Duration::from_secs(30),
            state_cleanup_delay: Duration::from_secs(600),
            task_timeout: Duration::from_secs(300),
            restore_listener: None,
            rocks_block_cache: 64 << 20,
            rocks_write_buffers: 32 << 20,
            rocks_setter: None,
            cache_max_bytes: 10 << 20,
            max_task_idle: Some(Duration::ZERO),
            metrics_recording: true,
            http_endpoint: None,
            http_max_connections: 256,
            http_header_timeout: Duration::from_secs(10),
            http_token: None,
            http_allowed_hosts: vec![],
            http_queries: true,
            http_tls: None,
            query_partitioners: BTreeMap::new(),
            application_server: None,
            num_standby_replicas: 0,
        }
    }

    /// How a task that reads several partitions (a join's two topics, a merge) waits when some
    /// of them have no record fetched, so that it processes records in event-time order
    /// across them (Kafka Streams' `max.task.idle.ms`). `Some(d)` (default: zero) waits while
    /// such a partition has records on the broker not yet fetched, and then up to `d` more for
    /// new records; `None` (Kafka's -1) never waits and processes what has been fetched.
    pub fn max_task_idle(mut self, idle: Option<Duration>) -> Self {
        self.max_task_idle = idle;
        self
    }

    pub(crate) fn task_idle(&self) -> crate::task::TaskIdle {
        match self.max_task_idle {
            Some(d) => crate::task::TaskIdle::Wait(d),
            None => crate::task::TaskIdle::Never,
        }
    }

    /// The bytes of record caches per instance (default 10 MiB, Kafka Streams'
    /// `statestore.cache.max.bytes`), shared equally by the stream threads; each caching
    /// aggregation of a task may hold up to its thread's share. A cache keeps only the latest
    /// update of each key between commits, so the changelog and the records downstream see
    /// one update per key and commit interval. 0 turns caching off: every update is
    /// forwarded at once (what tests usually want).
    pub fn cache_max_bytes(mut self, bytes: usize) -> Self {
        self.cache_max_bytes = bytes;
        self
    }

    /// Whether the runtime records metrics (default true; see [`crate::metrics`]). Off, the
    /// stream threads and tasks record nothing and the metrics show only the instance's state
    /// (Kafka Streams' `metrics.recording.level` has levels; we have on and off).
    pub fn metrics_recording(mut self, on: bool) -> Self {
        self.metrics_recording = on;
        self
    }

    /// Serves the instance's HTTP endpoint on `address` (off by default; port 0 picks a free
    /// one, see `KafkaStreams::http_address`): `GET /metrics` (the Prometheus text format),
    /// `/health` (200 when running with every task restored, else 503 and the state) and
    /// `/topology` (the description and its Mermaid form).
    pub fn http_endpoint(mut self, address: std::net::SocketAddr) -> Self {
        self.http_endpoint = Some(address);
        self
    }

    /// How many connections the HTTP endpoint serves at once (default 256); further clients
    /// wait in the listen backlog until one closes, so that clients cannot take the file
    /// descriptors RocksDB and the Kafka clients need.
    pub fn http_max_connections(mut self, n: usize) -> Self {
        self.http_max_connections = n.max(1);
        self
    }

    /// A token the HTTP endpoint requires of every request but `GET /health`, as
    /// `Authorization: Bearer <token>` (401 otherwise); instances send it with the queries they
    /// forward to each other, so every instance needs the same. Off by default: anyone who
    /// reaches the port can read the stores (see `docs/SECURITY.md`).
    pub fn http_token(mut self, token: impl Into<String>) -> Self {
        self.http_token = Some(token.into());
        self
    }

    /// Host names the HTTP endpoint answers to, besides IP addresses, `localhost` and the
    /// advertised host (`application_server`): a request naming another host is refused with
    /// 421, so that a web page rebinding its own name to this address (DNS rebinding) cannot
    /// read the endpoint from a browser.
    pub fn http_allowed_hosts<S: Into<String>>(
        mut self,
        hosts: impl IntoIterator<Item = S>,
    ) -> Self {
        self.http_allowed_hosts = hosts.into_iter().map(Into::into).collect();
        self
    }

    /// Whether the HTTP endpoint serves interactive queries (`/stores`, default true); off, it
    /// serves the operations pages only (`/metrics`, `/health`, `/topology`), and an instance
    /// can still be asked by the others only when it is on.
    pub fn http_queries(mut self, on: bool) -> Self {
        self.http_queries = on;
        self
    }

    /// Serves the HTTP endpoint over TLS only (HTTPS), with the certificate chain and the
    /// private key in these PEM files; queries forwarded to other instances go over TLS too,
    /// and trust an instance whose certificate chains to
    /// [`http_tls_trust`](Self::http_tls_trust)'s certificates, or else to this chain's own
    /// (one certificate shared by every instance, or a chain ending in their common
    /// authority). The certificate must name the host other instances reach this one by
    /// (`application_server`). Read at `start`; an unreadable file fails it.
    pub fn http_tls(
        mut self,
        certificate_chain: impl Into<PathBuf>,
        private_key: impl Into<PathBuf>,
    ) -> Self {
        let trust = self.http_tls.take().and_then(|t| t.trust);
        self.http_tls = Some(HttpTls {
            certificate_chain: certificate_chain.into(),
            private_key: private_key.into(),
            trust,
        });
        self
    }

    /// The certificates (a PEM file) that forwarded queries trust other instances' certificates
    /// to chain to, with [`http_tls`](Self::http_tls); without it, a configuration error.
    pub fn http_tls_trust(mut self, certificates: impl Into<PathBuf>) -> Self {
        let certificates = certificates.into();
        match self.http_tls.as_mut() {
            Some(t) => t.trust = Some(certificates),
            None => {
                self.http_tls = Some(HttpTls {
                    certificate_chain: PathBuf::new(),
                    private_key: PathBuf::new(),
                    trust: Some(certificates),
                })
            }
        }
        self
    }

    /// How the keys of store `store`'s source topic were placed on its partitions, for
    /// interactive queries to look for a key where it is (default
    /// [`KeyPartitioner::Murmur2`](crate::KeyPartitioner::Murmur2), Kafka's default and this
    /// runtime's). Needed for a table over a topic that producers built on librdkafka wrote
    /// with their default (`KeyPartitioner::Crc32`), or with a partitioner of their own; every
    /// instance needs the same.
    pub fn query_partitioner(mut self, store: &str, partitioner: crate::KeyPartitioner) -> Self {
        self.query_partitioners
            .insert(store.to_string(), partitioner);
        self
    }

    /// How long the HTTP endpoint waits for a request's head (default 10 s), on a new
    /// connection and between the requests of a kept-alive one: an idle or half-sent
    /// connection is closed after it.
    pub fn http_header_timeout(mut self, timeout: Duration) -> Self {
        self.http_header_timeout = timeout;
        self
    }

    /// How many other instances keep a warm copy of each task's stores (default 0; Kafka
    /// Streams' `num.standby.replicas`). A standby follows the task's changelogs
    /// (`read_committed`) into its own stores, so that when the task moves to it restoration
    /// replays only the changelogs' tail. Standbys are placed on other instances than the
    /// task's active one (`docs/adr/0011-instance-discovery-for-queries-and-standbys.md`).
    pub fn num_standby_replicas(mut self, n: usize) -> Self {
        self.num_standby_replicas = n;
        self
    }

    /// The `host:port` other instances reach this instance's HTTP endpoint at, for interactive
    /// queries of keys it holds (Kafka Streams' `application.server`). Default: the endpoint's
    /// bound address, with `127.0.0.1` for an unspecified IP (enough on one machine; set it when
    /// instances run on several). It travels in the consumers' client ids, so the group
    /// coordinator's view of the group tells every instance who holds which partition.
    pub fn application_server(mut self, host_port: &str) -> Self {
        self.application_server = Some(host_port.to_string());
        self
    }

    /// Exactly-once (default) or at-least-once.
    pub fn processing_guarantee(mut self, guarantee: ProcessingGuarantee) -> Self {
        self.guarantee = guarantee;
        self
    }

    /// How often tasks commit (default 100 ms under exactly-once, 30 s under at-least-once;
    /// Kafka Streams' `commit.interval.ms`).
    pub fn commit_interval(mut self, interval: Duration) -> Self {
        self.commit_interval = Some(interval);
        self
    }

    /// How often the records of repartition topics that the group has committed past are
    /// deleted (default 30 s, Kafka Streams' `repartition.purge.interval.ms`). Repartition
    /// topics keep records without a time limit, so that nothing is lost however long the
    /// application stops; this purging keeps them small.
    pub fn repartition_purge_interval(mut self, interval: Duration) -> Self {
        self.repartition_purge_interval = interval;
        self
    }

    /// The number of stream threads (default 1); each has its own consumer and producer.
    pub fn num_stream_threads(mut self, n: usize) -> Self {
        self.num_stream_threads = n;
        self
    }

    /// The state directory; the application's state lives in `<dir>/<application id>/`.
    pub fn state_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.state_dir = dir.into();
        self
    }

    /// A fixed id for this instance (default: generated once and kept in the state directory).
    /// It names the transactional ids, so two live instances must never share one.
    pub fn instance_id(mut self, id: &str) -> Self {
        self.instance_id = Some(id.to_string());
        self
    }

    /// Passes a librdkafka property to every client the runtime creates (consumer, producer,
    /// admin); it overrides the runtime's own choice of that property.
    pub fn set(mut self, key: &str, value: &str) -> Self {
        self.client_properties
            .insert(key.to_string(), value.to_string());
        self
    }

    /// What to do with records that cannot be deserialized (default [`LogAndFail`]).
    pub fn deserialization_error_handler(
        mut self,
        handler: impl DeserializationErrorHandler,
    ) -> Self {
        self.on_poison = Arc::new(handler);
        self
    }

    /// What to do with output records that cannot be produced (default [`FailOnProductionError`]).
    pub fn production_error_handler(mut self, handler: impl ProductionErrorHandler) -> Self {
        self.on_production_error = Arc::new(handler);
        self
    }

    /// The replication factor of the internal topics the runtime creates (default 1).
    pub fn replication_factor(mut self, factor: i32) -> Self {
        self.replication_factor = factor;
        self
    }

    /// The transaction timeout (default 60 s): how long the broker waits before aborting a
    /// transaction of an instance that vanished without a successor.
    pub fn transaction_timeout(mut self, timeout: Duration) -> Self {
        self.transaction_timeout = timeout;
        self
    }

    /// How long one blocking call to the broker (a flush, a transaction commit or abort,
    /// offsets) may take before it counts as failed (default 30 s). A commit that fails this
    /// way is aborted, or its producer replaced, and the tasks go back to the last commit.
    pub fn client_timeout(mut self, timeout: Duration) -> Self {
        self.client_timeout = timeout;
        self
    }

    /// How long the local state of a task this instance no longer owns is kept (default
    /// 10 minutes, Kafka Streams' `state.cleanup.delay.ms`). Within it, a task that comes back
    /// restores only the changelog's tail; after it the state is deleted and a returning task
    /// restores from the start, since the changelog may have compacted away tombstones the old
    /// copy never saw. Keep it well below the changelogs' `delete.retention.ms` (1 day).
    pub fn state_cleanup_delay(mut self, delay: Duration) -> Self {
        self.state_cleanup_delay = delay;
        self
    }

    /// How long at-least-once commits may keep failing (a broker away) before the thread
    /// stops with an error (default 5 minutes, Kafka Streams' `task.timeout.ms`). Meanwhile
    /// the thread fetches no more input, so what waits for a commit stays bounded.
    pub fn task_timeout(mut self, timeout: Duration) -> Self {
        self.task_timeout = timeout;
        self
    }

    /// Attaches a listener to every store restoration.
    pub fn restore_listener(mut self, listener: impl RestoreListener) -> Self {
        self.restore_listener = Some(Arc::new(listener));
        self
    }

    /// Bounds RocksDB's memory for the whole instance: one block cache of `block_cache_bytes`
    /// shared by every store, with the memtables (`write_buffer_bytes` at most) counted in it.
    /// Defaults: 64 MiB and 32 MiB.
    pub fn rocksdb_memory(mut self, block_cache_bytes: usize, write_buffer_bytes: usize) -> Self {
        self.rocks_block_cache = block_cache_bytes;
        self.rocks_write_buffers = write_buffer_bytes;
        self
    }

    /// Lets `setter(store name, options)` change each RocksDB store's options after the
    /// runtime's own settings.
    pub fn rocksdb_config_setter(
        mut self,
        setter: impl Fn(&str, &mut rocksdb::Options) + Send + Sync + 'static,
    ) -> Self {
        self.rocks_setter = Some(Arc::new(setter));
        self
    }

    pub(crate) fn rocks_resources(&self) -> RocksResources {
        RocksResources::new(
            self.rocks_block_cache,
            self.rocks_write_buffers,
            self.rocks_setter.clone(),
        )
    }

    /// The application id.
    pub fn application_id(&self) -> &str {
        &self.application_id
    }

    /// The commit interval in effect: the one set, or the guarantee's default.
    pub fn effective_commit_interval(&self) -> Duration {
        self.commit_interval.unwrap_or(match self.guarantee {
            ProcessingGuarantee::ExactlyOnce => Duration::from_millis(100),
            ProcessingGuarantee::AtLeastOnce => Duration::from_secs(30),
        })
    }

    /// The guarantee in effect.
    pub fn guarantee(&self) -> ProcessingGuarantee {
        self.guarantee
    }

    pub(crate) fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::Config(m.to_string()));
        if self.application_id.is_empty()
            || !self
                .application_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        {
            return bad("the application id must be non-empty and use only letters, digits, '.', '_' and '-'");
        }
        if self.bootstrap_servers.is_empty() {
            return bad("no bootstrap servers");
        }
        if self.num_stream_threads == 0 {
            return bad("num_stream_threads must be at least 1");
        }
        if self.effective_commit_interval().is_zero() {
            return bad("the commit interval must be positive");
        }
        if let Some(id) = &self.instance_id {
            if id.is_empty()
                || !id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
            {
                return Err(Error::Config(format!(
                    "instance id {id:?} must be non-empty and use only letters, digits, '.', '_' and '-'"
                )));
            }
        }
        if self.num_standby_replicas > 8 {
            return bad("num_standby_replicas above 8 is not supported");
        }
        if let Some(tls) = &self.http_tls {
            if tls.certificate_chain.as_os_str().is_empty() {
                return bad("http_tls_trust is set without http_tls; set http_tls too");
            }
            if self.http_endpoint.is_none() {
                return bad("http_tls is set but the HTTP endpoint is off; set http_endpoint too");
            }
        }
        if let Some(server) = &self.application_server {
            if self.http_endpoint.is_none() {
                return bad(
                    "application_server is set but the HTTP endpoint is off; set http_endpoint too",
                );
            }
            let port = server.rsplit_once(':').map(|(h, p)| (h, p.parse::<u16>()));
            if !matches!(port, Some((h, Ok(_))) if !h.is_empty())
                || server.contains(['/', '@', ' '])
            {
                return Err(Error::Config(format!(
                    "application_server {server:?} is not host:port"
                )));
            }
        }
        Ok(())
    }
}

/// The endpoint's TLS files (`StreamsConfig::http_tls`).
#[derive(Debug, Clone)]
pub(crate) struct HttpTls {
    pub(crate) certificate_chain: PathBuf,
    pub(crate) private_key: PathBuf,
    pub(crate) trust: Option<PathBuf>,
}
