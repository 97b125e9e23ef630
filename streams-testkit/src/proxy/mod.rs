//! A Kafka-protocol proxy in front of the test broker: fault injection in front of any broker,
//! and, in front of the fallback broker nisshi, Kafka's `read_committed` semantics.
//!
//! Two modes:
//!
//! - **Transparent** ([`TxnProxy::start_transparent`]), in front of Apache Kafka: every request
//!   and response passes unchanged except broker addresses (Metadata, FindCoordinator,
//!   DescribeCluster, and the node endpoints of Fetch and Produce responses, which librdkafka
//!   follows when a partition's leader moves) and the versions ApiVersions advertises (capped at
//!   what the proxy decodes). The proxy makes no request of its own, so an injected outage is
//!   total. This is what the outage tests and the kill soak run through.
//! - **Patching** ([`TxnProxy::start`]), in front of nisshi only; what follows.
//!
//! nisshi 0.7.0 writes transactional batches and their COMMIT/ABORT markers correctly, but every
//! Fetch response it sends carries an empty aborted-transactions list, so clients deliver the
//! records of aborted transactions (see `docs/BROKER.md`). Kafka clients drop those records
//! themselves when the list is there. This proxy forwards every request and response unchanged
//! except:
//!
//! - **Fetch, `read_committed`**: asked of the broker `read_uncommitted`; for each partition
//!   the proxy decides the last stable offset itself and fills in the aborted-transactions list
//!   (producer id, first offset) from a [`PartitionIndex`](index::PartitionIndex) built by
//!   reading the partition's own log up to its high watermark, control markers included: from
//!   the responses that pass through, and by fetching ahead itself. It cuts the records at that
//!   last stable offset and reports it. (nisshi's own last stable offset can stop for good
//!   behind a transaction whose COMMIT markers are in the log: see `docs/BROKER.md`.)
//! - **Metadata, FindCoordinator, DescribeCluster** (and Fetch's node endpoints): every broker
//!   address is replaced by the proxy's own, so clients keep talking through it.
//! - **ApiVersions**: versions are capped at what the protocol crate can decode, for the APIs the
//!   proxy decodes.
//! - **Transactions' consumed offsets** (TxnOffsetCommit, EndTxn, InitProducerId, JoinGroup):
//!   nisshi 0.7.0 holds a committed transaction's offsets back while another producer's
//!   transaction on one of its partitions is open, and can lose them or apply them out of order
//!   later; the proxy keeps them itself and commits them to the group when the transaction
//!   commits, and fences offsets from a generation that has passed ([`txns`]).
//! - **Fetch past a partition's end**: nisshi 0.7.0 answers a fetch from an offset beyond the
//!   high watermark with no records and no error, where Kafka answers `OFFSET_OUT_OF_RANGE`
//!   (which is how a client learns that the log it reads is not the one it read before, say a
//!   deleted and recreated topic). The proxy sets that error on such a partition.
//!
//! Tests can also inject faults ([`TxnProxy::cut_connections`], [`TxnProxy::refuse_for`],
//! [`TxnProxy::black_hole_for`], [`TxnProxy::set_latency`], and [`TxnProxy::outage`], which
//! cuts and refuses): what clients see when the broker or the network goes away.
//!
//! The index is derived from the log, so it survives client disconnects and broker restarts on
//! a durable engine; if a broker comes back with a shorter log (memory engine), the partition's
//! index starts over.

mod batches;
mod index;
mod txns;

pub use batches::{parse as parse_batches, BatchInfo, ControlType};
pub use index::{AbortedTxn, PartitionIndex};
pub use txns::held_group;

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::fetch_response::AbortedTransaction;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsResponse, DescribeClusterResponse, FetchRequest, FetchResponse,
    FindCoordinatorResponse, MetadataResponse, ProduceRequest, ProduceResponse, RequestHeader,
    ResponseHeader,
};
use kafka_protocol::protocol::{
    decode_request_header_from_buffer, encode_request_header_into_buffer, Decodable, Encodable,
    StrBytes,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// Fetches above this many bytes are refused (a corrupt length prefix).
const MAX_FRAME: usize = 512 * 1024 * 1024;
/// How much one look-ahead fetch of the index asks for.
const SCAN_BYTES: i32 = 8 * 1024 * 1024;

/// Counters of what the proxy did, for tests and benchmarks.
#[derive(Debug, Default)]
pub struct ProxyStats {
    /// Client connections accepted.
    pub connections: AtomicU64,
    /// read_committed Fetch responses that passed through.
    pub read_committed_fetches: AtomicU64,
    /// Fetch responses that got a non-empty aborted-transactions list.
    pub fetches_with_aborted: AtomicU64,
    /// Look-ahead fetches the index made itself.
    pub index_fetches: AtomicU64,
    /// Partitions of read_committed responses cut short: records past the last stable offset,
    /// or records whose transactions could not be checked.
    pub held_back: AtomicU64,
    /// Partitions of Fetch responses answered `OFFSET_OUT_OF_RANGE` (fetched past their end).
    pub out_of_range: AtomicU64,
    /// Committed transactions whose offsets the proxy committed to their group.
    pub txn_offsets_committed: AtomicU64,
    /// TxnOffsetCommit requests answered `ILLEGAL_GENERATION` (from a generation that passed).
    pub txn_offsets_fenced: AtomicU64,
    /// Committed transactions whose offsets the proxy could not commit (logged as errors).
    pub txn_offset_commit_failures: AtomicU64,
    /// Transactions the proxy aborted because they were open longer than their timeout.
    pub txns_timed_out: AtomicU64,
    /// Transactional Produce requests from a fenced epoch, answered `INVALID_PRODUCER_EPOCH`.
    pub stale_produce_fenced: AtomicU64,
}

/// Whether the proxy patches the broker's transaction gaps or only forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyMode {
    /// Addresses, versions and faults only: for Apache Kafka (or any complete broker).
    Transparent,
    /// Everything the module documentation lists: for nisshi 0.7.0 only. In front of Kafka it
    /// breaks exactly-once (its renamed offset commits are refused, and its read_committed
    /// index misreads transaction version 2's markers).
    Patching,
}

/// A running proxy. Dropping it stops it and closes every connection.
pub struct TxnProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for TxnProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TxnProxy")
            .field("addr", &self.addr)
            .field("upstream", &self.shared.upstream)
            .finish()
    }
}

impl TxnProxy {
    /// A patching proxy ([`ProxyMode::Patching`], for nisshi): listens on `listen` (port 0 for
    /// a free one) and forwards to the broker at `upstream`. The proxy runs on a thread of its
    /// own.
    pub fn start(listen: SocketAddr, upstream: SocketAddr) -> io::Result<TxnProxy> {
        Self::start_in(ProxyMode::Patching, listen, upstream)
    }

    /// A transparent proxy ([`ProxyMode::Transparent`], for Apache Kafka): addresses rewritten,
    /// faults injected, nothing else changed.
    pub fn start_transparent(listen: SocketAddr, upstream: SocketAddr) -> io::Result<TxnProxy> {
        Self::start_in(ProxyMode::Transparent, listen, upstream)
    }

    /// A proxy in the given mode.
    pub fn start_in(
        mode: ProxyMode,
        listen: SocketAddr,
        upstream: SocketAddr,
    ) -> io::Result<TxnProxy> {
        let std_listener = std::net::TcpListener::bind(listen)?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let shared = Arc::new(Shared::new(mode, upstream, addr));
        let (tx, rx) = tokio::sync::oneshot::channel();
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("txn-proxy".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .thread_name("txn-proxy-worker")
                    .enable_all()
                    .build()
                    .expect("building the proxy's runtime");
                runtime.block_on(async move {
                    let listener =
                        TcpListener::from_std(std_listener).expect("registering the listener");
                    let expire = async {
                        match mode {
                            ProxyMode::Patching => {
                                txns::expire_transactions(thread_shared.clone()).await
                            }
                            // Kafka's coordinator aborts transactions past their timeout.
                            ProxyMode::Transparent => std::future::pending().await,
                        }
                    };
                    tokio::select! {
                        _ = accept_loop(listener, thread_shared.clone()) => {}
                        _ = expire => {}
                        _ = rx => {}
                    }
                });
                runtime.shutdown_background();
            })?;
        Ok(TxnProxy {
            addr,
            shared,
            shutdown: Some(tx),
            thread: Some(thread),
        })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The proxy's mode.
    pub fn mode(&self) -> ProxyMode {
        self.shared.mode
    }

    /// Cuts every open client connection (and its broker side): clients see the broker go
    /// away and reconnect.
    pub fn cut_connections(&self) {
        self.shared.cut.send_modify(|g| *g += 1);
    }

    /// Closes every new connection at once for `d` (a broker that is down).
    pub fn refuse_for(&self, d: Duration) {
        let mut f = self.shared.faults.lock().unwrap_or_else(|e| e.into_inner());
        f.refuse_until = Some(Instant::now() + d);
    }

    /// Accepts new connections for `d` but answers nothing on them, closing them at the end (a
    /// network that drops packets: clients wait for their timeouts).
    pub fn black_hole_for(&self, d: Duration) {
        let mut f = self.shared.faults.lock().unwrap_or_else(|e| e.into_inner());
        f.black_hole_until = Some(Instant::now() + d);
    }

    /// Delays every response by `latency` from now on (zero: none).
    pub fn set_latency(&self, latency: Duration) {
        let mut f = self.shared.faults.lock().unwrap_or_else(|e| e.into_inner());
        f.latency = latency;
    }

    /// A broker outage of `d`: every connection is cut and new ones are refused until `d` has
    /// passed.
    pub fn outage(&self, d: Duration) {
        self.refuse_for(d);
        self.cut_connections();
    }

    /// What the proxy has done so far.
    pub fn stats(&self) -> &ProxyStats {
        &self.shared.stats
    }

    /// The number of aborted transactions indexed, over all partitions.
    pub fn aborted_transactions_indexed(&self) -> usize {
        let partitions = self
            .shared
            .partitions
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        partitions
            .values()
            .map(|p| p.try_lock().map(|p| p.aborted_count()).unwrap_or(0))
            .sum()
    }
}

impl Drop for TxnProxy {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// How a Fetch names a topic: by name up to version 12, by id from 13.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum TopicKey {
    Name(StrBytes),
    Id(uuid::Uuid),
}

impl TopicKey {
    fn of_response(
        topic: &kafka_protocol::messages::fetch_response::FetchableTopicResponse,
        version: i16,
    ) -> Self {
        if version >= 13 {
            TopicKey::Id(topic.topic_id)
        } else {
            TopicKey::Name(topic.topic.0.clone())
        }
    }
}

type PartitionKey = (TopicKey, i32);

struct Shared {
    mode: ProxyMode,
    upstream: SocketAddr,
    advertised_host: StrBytes,
    advertised_port: i32,
    partitions: Mutex<HashMap<PartitionKey, Arc<tokio::sync::Mutex<PartitionIndex>>>>,
    /// Idle connections for the index's own fetches.
    scan_conns: Mutex<Vec<TcpStream>>,
    stats: ProxyStats,
    next_correlation: AtomicU64,
    faults: Mutex<Faults>,
    /// Bumped to cut every open connection.
    cut: tokio::sync::watch::Sender<u64>,
    /// Transactions' offsets and groups' generations ([`txns`]).
    txns: Mutex<txns::Transactions>,
}

/// Faults injected by a test.
#[derive(Debug, Default, Clone, Copy)]
struct Faults {
    /// New connections are closed at once until then.
    refuse_until: Option<Instant>,
    /// New connections are accepted and held silent until then, then closed.
    black_hole_until: Option<Instant>,
    /// Added before every response is forwarded.
    latency: Duration,
}

impl Shared {
    /// The state of a proxy in `mode` that forwards to `upstream` and tells clients to connect
    /// to `advertised`.
    fn new(mode: ProxyMode, upstream: SocketAddr, advertised: SocketAddr) -> Shared {
        Shared {
            mode,
            upstream,
            advertised_host: StrBytes::from_string(advertised.ip().to_string()),
            advertised_port: i32::from(advertised.port()),
            partitions: Mutex::new(HashMap::new()),
            scan_conns: Mutex::new(Vec::new()),
            stats: ProxyStats::default(),
            next_correlation: AtomicU64::new(1),
            faults: Mutex::new(Faults::default()),
            cut: tokio::sync::watch::channel(0).0,
            txns: Mutex::new(txns::Transactions::default()),
        }
    }

    fn faults(&self) -> Faults {
        *self.faults.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn partition(&self, key: PartitionKey) -> Arc<tokio::sync::Mutex<PartitionIndex>> {
        self.partitions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key)
            .or_default()
            .clone()
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((client, _)) => {
                shared.stats.connections.fetch_add(1, Ordering::Relaxed);
                let faults = shared.faults();
                let now = Instant::now();
                if faults.refuse_until.is_some_and(|t| t > now) {
                    drop(client);
                    continue;
                }
                if let Some(until) = faults.black_hole_until.filter(|t| *t > now) {
                    tokio::spawn(async move {
                        tokio::time::sleep_until(until.into()).await;
                        drop(client);
                    });
                    continue;
                }
                let shared = shared.clone();
                tokio::spawn(async move {
                    if let Err(e) = serve(client, shared).await {
                        tracing::debug!("proxy connection closed: {e:#}");
                    }
                });
            }
            Err(e) => {
                tracing::warn!("proxy accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// A request forwarded upstream whose response is still to come.
struct Pending {
    correlation_id: i32,
    api_key: i16,
    api_version: i16,
    read_committed: bool,
    /// A Fetch's offset per partition.
    fetch_offsets: HashMap<PartitionKey, i64>,
    /// A request of the transaction tracking ([`txns`]).
    txn: Option<txns::TxnRequest>,
}

async fn serve(client: TcpStream, shared: Arc<Shared>) -> anyhow::Result<()> {
    let mut cut = shared.cut.subscribe();
    tokio::select! {
        r = forward(client, shared.clone()) => r,
        _ = cut.changed() => {
            tracing::debug!("proxy cuts a connection");
            Ok(())
        }
    }
}

async fn forward(client: TcpStream, shared: Arc<Shared>) -> anyhow::Result<()> {
    let upstream = TcpStream::connect(shared.upstream)
        .await
        .context("connecting to the broker")?;
    client.set_nodelay(true)?;
    upstream.set_nodelay(true)?;
    let (client_read, mut client_write) = client.into_split();
    let (upstream_read, mut upstream_write) = upstream.into_split();
    let (pending_tx, mut pending_rx) = mpsc::unbounded_channel::<Pending>();

    // Aborted when this connection ends, also when it is cut (this future dropped).
    let request_shared = shared.clone();
    let requests = AbortOnDrop(tokio::spawn(async move {
        let mut reader = BufReader::with_capacity(64 * 1024, client_read);
        while let Some(frame) = read_frame(&mut reader).await? {
            let (pending, replaced) = inspect_request(&request_shared, &frame);
            if let Some(pending) = pending {
                if pending_tx.send(pending).is_err() {
                    break;
                }
            }
            upstream_write
                .write_all(replaced.as_ref().unwrap_or(&frame))
                .await?;
        }
        anyhow::Ok(())
    }));

    let mut reader = BufReader::with_capacity(256 * 1024, upstream_read);
    // Once the client is gone, the responses still coming are read and acted on (a
    // transaction's end among them), not forwarded.
    let mut client_gone: Option<io::Error> = None;
    let result = async {
        while let Some(frame) = read_frame(&mut reader).await? {
            let correlation_id = (&frame[4..8]).get_i32();
            let pending = pending_rx
                .recv()
                .await
                .context("a response came without a request")?;
            if pending.correlation_id != correlation_id {
                bail!(
                    "response correlation id {correlation_id} does not match the request's {}",
                    pending.correlation_id
                );
            }
            let out = match transform_response(&shared, &pending, frame.slice(4..)).await {
                Ok(Some(body)) => with_length(body),
                Ok(None) => frame,
                Err(e) => {
                    tracing::warn!(
                        api_key = pending.api_key,
                        api_version = pending.api_version,
                        "proxy passes a response through unchanged: {e:#}"
                    );
                    frame
                }
            };
            let latency = shared.faults().latency;
            if !latency.is_zero() {
                tokio::time::sleep(latency).await;
            }
            if client_gone.is_none() {
                if let Err(e) = client_write.write_all(&out).await {
                    client_gone = Some(e);
                }
            }
        }
        match client_gone {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }
    .await;
    drop(requests);
    result
}

/// A task aborted when this is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<anyhow::Result<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Reads one length-prefixed frame (prefix included); `None` at a clean end of stream.
async fn read_frame<R: AsyncReadExt + Unpin>(reader: &mut R) -> io::Result<Option<Bytes>> {
    let len = match reader.read_i32().await {
        Ok(len) => len,
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    };
    if len < 8 || len as usize > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame length {len}"),
        ));
    }
    let mut buf = BytesMut::with_capacity(4 + len as usize);
    buf.put_i32(len);
    buf.resize(4 + len as usize, 0);
    reader.read_exact(&mut buf[4..]).await?;
    Ok(Some(buf.freeze()))
}

fn with_length(body: BytesMut) -> Bytes {
    let mut out = BytesMut::with_capacity(4 + body.len());
    out.put_i32(body.len() as i32);
    out.extend_from_slice(&body);
    out.freeze()
}

/// What the response to this request will need (`None` for a request that gets no response:
/// Produce with acks=0), and the frame to forward instead when the request must change.
fn inspect_request(shared: &Arc<Shared>, frame: &Bytes) -> (Option<Pending>, Option<Bytes>) {
    let mut raw = &frame[4..];
    let api_key = raw.get_i16();
    let api_version = raw.get_i16();
    let correlation_id = raw.get_i32();
    let mut pending = Pending {
        correlation_id,
        api_key,
        api_version,
        read_committed: false,
        fetch_offsets: HashMap::new(),
        txn: None,
    };
    let mut body = frame.slice(4..);
    let Ok(header) = decode_request_header_from_buffer(&mut body) else {
        return (Some(pending), None);
    };
    if shared.mode == ProxyMode::Transparent {
        // Only whether a response comes: Produce with acks=0 gets none.
        if api_key == ApiKey::Produce as i16 {
            if let Ok(req) = ProduceRequest::decode(&mut body, api_version) {
                if req.acks == 0 {
                    return (None, None);
                }
            }
        }
        return (Some(pending), None);
    }
    match txns::inspect_request(shared, &header, &mut body) {
        Ok(None) => {}
        Ok(Some((txn, replaced))) => {
            pending.txn = Some(txn);
            return (Some(pending), replaced.map(with_length));
        }
        Err(e) => {
            tracing::warn!(
                api_key,
                api_version,
                "proxy cannot decode a transaction request: {e:#}"
            );
            return (Some(pending), None);
        }
    }
    if api_key == ApiKey::Fetch as i16 {
        if let Ok(mut req) = FetchRequest::decode(&mut body, api_version) {
            pending.read_committed = req.isolation_level == 1;
            // Asked of the broker read_uncommitted: the proxy decides from the log itself
            // where the last stable offset is (nisshi's own can stop for good, docs/BROKER.md).
            let mut replaced = None;
            if pending.read_committed {
                req.isolation_level = 0;
                let mut out = BytesMut::new();
                if encode_request_header_into_buffer(&mut out, &header).is_ok()
                    && req.encode(&mut out, api_version).is_ok()
                {
                    replaced = Some(with_length(out));
                }
            }
            for t in &req.topics {
                let topic = if api_version >= 13 {
                    TopicKey::Id(t.topic_id)
                } else {
                    TopicKey::Name(t.topic.0.clone())
                };
                for p in &t.partitions {
                    pending
                        .fetch_offsets
                        .insert((topic.clone(), p.partition), p.fetch_offset);
                }
            }
            return (Some(pending), replaced);
        }
    } else if api_key == ApiKey::Produce as i16 {
        if let Ok(req) = ProduceRequest::decode(&mut body, api_version) {
            if req.acks == 0 {
                return (None, None);
            }
            if let Some(partitions) = txns::fenced_produce(shared, &req) {
                if let Ok(placeholder) = txns::placeholder_request(correlation_id) {
                    pending.txn = Some(txns::TxnRequest::FencedProduce(partitions));
                    return (Some(pending), Some(with_length(placeholder)));
                }
            }
        }
    }
    (Some(pending), None)
}

/// The new response body (header included), or `None` to forward the original.
async fn transform_response(
    shared: &Arc<Shared>,
    pending: &Pending,
    mut body: Bytes,
) -> anyhow::Result<Option<BytesMut>> {
    let Ok(api_key) = ApiKey::try_from(pending.api_key) else {
        return Ok(None);
    };
    let version = pending.api_version;
    let header_version = api_key.response_header_version(version);
    let decode_header =
        |body: &mut Bytes| ResponseHeader::decode(body, header_version).context("header");
    if let Some(txn) = &pending.txn {
        return txns::on_response(shared, txn, api_key, version, body).await;
    }
    match api_key {
        ApiKey::Fetch if shared.mode == ProxyMode::Transparent => {
            let header = decode_header(&mut body)?;
            let mut resp = FetchResponse::decode(&mut body, version)?;
            if rewrite_node_endpoints(shared, &mut resp.node_endpoints) {
                return encode(&header, header_version, &resp, version).map(Some);
            }
            Ok(None)
        }
        // Node endpoints came to Produce responses with version 10 (KIP-951); nisshi never
        // sends them.
        ApiKey::Produce if version >= 10 => {
            let header = decode_header(&mut body)?;
            let mut resp = ProduceResponse::decode(&mut body, version)?;
            if rewrite_node_endpoints(shared, &mut resp.node_endpoints) {
                return encode(&header, header_version, &resp, version).map(Some);
            }
            Ok(None)
        }
        ApiKey::Fetch => {
            let header = decode_header(&mut body)?;
            let mut resp = FetchResponse::decode(&mut body, version)?;
            let changed_range = out_of_range(shared, pending, &mut resp, version);
            // read_uncommitted readers need nothing more than that and the right node
            // endpoints, which a response only carries when leadership moved.
            let changed_index = pending.read_committed
                && add_aborted_transactions(shared, &mut resp, version).await?;
            let changed_hosts = rewrite_node_endpoints(shared, &mut resp.node_endpoints);
            if changed_range || changed_index || changed_hosts {
                return encode(&header, header_version, &resp, version).map(Some);
            }
            Ok(None)
        }
        ApiKey::Metadata => {
            let header = decode_header(&mut body)?;
            let mut resp = MetadataResponse::decode(&mut body, version)?;
            for b in &mut resp.brokers {
                b.host = shared.advertised_host.clone();
                b.port = shared.advertised_port;
            }
            encode(&header, header_version, &resp, version).map(Some)
        }
        ApiKey::FindCoordinator => {
            let header = decode_header(&mut body)?;
            let mut resp = FindCoordinatorResponse::decode(&mut body, version)?;
            if version < 4 {
                if resp.error_code == 0 {
                    resp.host = shared.advertised_host.clone();
                    resp.port = shared.advertised_port;
                }
            } else {
                for c in &mut resp.coordinators {
                    if c.error_code == 0 {
                        c.host = shared.advertised_host.clone();
                        c.port = shared.advertised_port;
                    }
                }
            }
            encode(&header, header_version, &resp, version).map(Some)
        }
        ApiKey::DescribeCluster => {
            let header = decode_header(&mut body)?;
            let mut resp = DescribeClusterResponse::decode(&mut body, version)?;
            for b in &mut resp.brokers {
                b.host = shared.advertised_host.clone();
                b.port = shared.advertised_port;
            }
            encode(&header, header_version, &resp, version).map(Some)
        }
        ApiKey::ApiVersions => {
            let header = decode_header(&mut body)?;
            let mut resp = ApiVersionsResponse::decode(&mut body, version)?;
            let mut changed = false;
            for v in &mut resp.api_keys {
                let decoded = [
                    ApiKey::Fetch,
                    ApiKey::Produce,
                    ApiKey::Metadata,
                    ApiKey::FindCoordinator,
                    ApiKey::DescribeCluster,
                    ApiKey::ApiVersions,
                    ApiKey::TxnOffsetCommit,
                    ApiKey::EndTxn,
                    ApiKey::InitProducerId,
                    ApiKey::JoinGroup,
                    ApiKey::AddPartitionsToTxn,
                    ApiKey::AddOffsetsToTxn,
                ];
                if let Some(key) = decoded.iter().find(|k| **k as i16 == v.api_key) {
                    let max = key.valid_versions().max;
                    if v.max_version > max {
                        v.max_version = max;
                        changed = true;
                    }
                }
            }
            if changed {
                return encode(&header, header_version, &resp, version).map(Some);
            }
            Ok(None)
        }
        _ => Ok(None),
    }
}

fn encode<M: Encodable>(
    header: &ResponseHeader,
    header_version: i16,
    body: &M,
    version: i16,
) -> anyhow::Result<BytesMut> {
    let mut out = BytesMut::new();
    header.encode(&mut out, header_version)?;
    body.encode(&mut out, version)?;
    Ok(out)
}

/// Points the node endpoints of a Fetch or Produce response (sent when a partition's leader
/// moved, KIP-951) at the proxy; whether there were any.
fn rewrite_node_endpoints<N: NodeEndpoint>(shared: &Shared, endpoints: &mut [N]) -> bool {
    for n in endpoints.iter_mut() {
        n.set_address(shared.advertised_host.clone(), shared.advertised_port);
    }
    !endpoints.is_empty()
}

/// A node endpoint of a Fetch or Produce response.
trait NodeEndpoint {
    fn set_address(&mut self, host: StrBytes, port: i32);
}

impl NodeEndpoint for kafka_protocol::messages::fetch_response::NodeEndpoint {
    fn set_address(&mut self, host: StrBytes, port: i32) {
        self.host = host;
        self.port = port;
    }
}

impl NodeEndpoint for kafka_protocol::messages::produce_response::NodeEndpoint {
    fn set_address(&mut self, host: StrBytes, port: i32) {
        self.host = host;
        self.port = port;
    }
}

/// Answers `OFFSET_OUT_OF_RANGE` for every partition fetched from past its high watermark, as
/// Kafka does (nisshi answers with no records and no error). Returns whether the response
/// changed.
fn out_of_range(
    shared: &Shared,
    pending: &Pending,
    resp: &mut FetchResponse,
    version: i16,
) -> bool {
    const OFFSET_OUT_OF_RANGE: i16 = 1;
    let mut changed = false;
    for topic in &mut resp.responses {
        let topic_key = TopicKey::of_response(topic, version);
        for part in &mut topic.partitions {
            let Some(&offset) = pending
                .fetch_offsets
                .get(&(topic_key.clone(), part.partition_index))
            else {
                continue;
            };
            if part.error_code == 0 && part.high_watermark >= 0 && offset > part.high_watermark {
                part.error_code = OFFSET_OUT_OF_RANGE;
                part.records = Some(Bytes::new());
                shared.stats.out_of_range.fetch_add(1, Ordering::Relaxed);
                changed = true;
            }
        }
    }
    changed
}

/// Fills in the aborted-transactions list of every partition of a read_committed Fetch
/// response, and holds back records at or past the last stable offset. Returns whether the
/// response changed (it must be re-encoded).
async fn add_aborted_transactions(
    shared: &Shared,
    resp: &mut FetchResponse,
    version: i16,
) -> anyhow::Result<bool> {
    shared
        .stats
        .read_committed_fetches
        .fetch_add(1, Ordering::Relaxed);
    let mut changed = false;
    for topic in &mut resp.responses {
        let topic_key = TopicKey::of_response(topic, version);
        for part in &mut topic.partitions {
            match fix_partition(shared, &topic_key, part, version).await {
                Ok(c) => changed |= c,
                Err(e) => {
                    // Never deliver records whose transactions could not be checked: the client
                    // gets none for this partition and fetches the same offset again.
                    tracing::warn!(
                        partition = part.partition_index,
                        "proxy holds back a read_committed fetch: {e:#}"
                    );
                    shared.stats.held_back.fetch_add(1, Ordering::Relaxed);
                    part.records = Some(Bytes::new());
                    changed = true;
                }
            }
        }
    }
    if changed {
        shared
            .stats
            .fetches_with_aborted
            .fetch_add(1, Ordering::Relaxed);
    }
    Ok(changed)
}

/// One partition of a read_committed Fetch response: index what it carries, look ahead until
/// every transaction in it is decided, cut it at the last stable offset, and list the aborted
/// transactions it overlaps.
async fn fix_partition(
    shared: &Shared,
    topic_key: &TopicKey,
    part: &mut kafka_protocol::messages::fetch_response::PartitionData,
    version: i16,
) -> anyhow::Result<bool> {
    if part.error_code != 0 {
        return Ok(false);
    }
    let records = part.records.clone().unwrap_or_default();
    let mut batches = batches::parse(&records);
    let index = shared.partition((topic_key.clone(), part.partition_index));
    let mut index = index.lock().await;
    if part.high_watermark >= 0 && part.high_watermark < index.next() {
        tracing::warn!(
            partition = part.partition_index,
            "the log is shorter than the index: the broker lost data; indexing anew"
        );
        index.reset();
    }
    index.apply_contiguous(&batches);
    // The whole log up to the high watermark is indexed, so that the last stable offset comes
    // from the log's markers, not from the broker.
    let range_last = batches.last().map(|b| b.last_offset).unwrap_or(-1);
    let end = if part.high_watermark >= 0 {
        part.high_watermark
    } else {
        range_last + 1
    };
    while index.next() < end {
        let from = index.next();
        let scan = scan_fetch(shared, topic_key, part.partition_index, from, version)
            .await
            .with_context(|| format!("index fetch at offset {from}"))?;
        if scan.error_code == 1 && scan.log_start_offset > from {
            index.skip_to(scan.log_start_offset); // OFFSET_OUT_OF_RANGE: the log starts later
            continue;
        }
        if scan.error_code != 0 {
            bail!(
                "index fetch at offset {from}: error code {}",
                scan.error_code
            );
        }
        if scan.batches.is_empty() {
            break; // the end of the log
        }
        tracing::trace!(from, batches = ?scan.batches, "index fetch");
        index.apply_from_next(&scan.batches);
    }
    let lso = index.first_open_offset().unwrap_or(index.next()).min(end);
    let mut changed = part.last_stable_offset != lso;
    part.last_stable_offset = lso;
    if batches.is_empty() {
        return Ok(changed);
    }
    let mut range_last = range_last;
    if index.next() <= range_last {
        bail!(
            "the index reached offset {} only, short of the response's last offset {range_last}",
            index.next()
        );
    }
    // Records at or past the first open transaction are not stable yet: hold them back.
    if lso <= range_last {
        let keep = batches.iter().take_while(|b| b.last_offset < lso).count();
        tracing::trace!(
            partition = part.partition_index,
            lso,
            high_watermark = part.high_watermark,
            keep,
            of = batches.len(),
            ?batches,
            "read_committed fetch cut at the last stable offset; index {index:?}"
        );
        keep_batches(part, &records, &mut batches, keep);
        changed = true;
        shared.stats.held_back.fetch_add(1, Ordering::Relaxed);
        let Some(last) = batches.last() else {
            return Ok(true);
        };
        range_last = last.last_offset;
    }
    let range_first = batches[0].base_offset;
    let mut aborted = index.aborted_overlapping(range_first, range_last);
    // A transaction aborted without a marker in the log: clients skip its producer's batches
    // until they see an ABORT marker, so the response must end before the producer's next epoch.
    let cut = aborted
        .iter()
        .filter(|t| !t.has_marker)
        .filter_map(|t| {
            batches
                .iter()
                .position(|b| b.producer_id == t.producer_id && b.base_offset > t.marker_offset)
        })
        .filter(|keep| *keep > 0)
        .min();
    if let Some(keep) = cut {
        keep_batches(part, &records, &mut batches, keep);
        range_last = batches[keep - 1].last_offset;
        aborted = index.aborted_overlapping(range_first, range_last);
        changed = true;
    }
    tracing::trace!(
        partition = part.partition_index,
        high_watermark = part.high_watermark,
        last_stable_offset = part.last_stable_offset,
        ?batches,
        ?aborted,
        "read_committed fetch"
    );
    if !aborted.is_empty() {
        changed = true;
        part.aborted_transactions = Some(
            aborted
                .iter()
                .map(|t| {
                    AbortedTransaction::default()
                        .with_producer_id(t.producer_id.into())
                        .with_first_offset(t.first_offset)
                })
                .collect(),
        );
    }
    Ok(changed)
}

/// Cuts a partition's records (and their parsed `batches`) down to the first `keep` batches.
fn keep_batches(
    part: &mut kafka_protocol::messages::fetch_response::PartitionData,
    records: &Bytes,
    batches: &mut Vec<BatchInfo>,
    keep: usize,
) {
    let end = keep
        .checked_sub(1)
        .map(|i| batches[i].end_position)
        .unwrap_or(0);
    part.records = Some(records.slice(..end));
    batches.truncate(keep);
}

struct ScanResult {
    error_code: i16,
    log_start_offset: i64,
    batches: Vec<BatchInfo>,
}

/// The index's own read_uncommitted fetch of one partition at `offset`.
async fn scan_fetch(
    shared: &Shared,
    topic: &TopicKey,
    partition: i32,
    offset: i64,
    version: i16,
) -> anyhow::Result<ScanResult> {
    shared.stats.index_fetches.fetch_add(1, Ordering::Relaxed);
    let mut fetch_topic = FetchTopic::default().with_partitions(vec![FetchPartition::default()
        .with_partition(partition)
        .with_current_leader_epoch(-1)
        .with_fetch_offset(offset)
        .with_last_fetched_epoch(-1)
        .with_log_start_offset(-1)
        .with_partition_max_bytes(SCAN_BYTES)]);
    match topic {
        TopicKey::Name(name) => fetch_topic.topic = name.clone().into(),
        TopicKey::Id(id) => fetch_topic.topic_id = *id,
    }
    let request = FetchRequest::default()
        .with_replica_id((-1).into())
        // nisshi answers a fetch with max_wait 0 before it has read anything: wait a little.
        .with_max_wait_ms(500)
        .with_min_bytes(1)
        .with_max_bytes(SCAN_BYTES)
        .with_isolation_level(0)
        .with_session_id(0)
        .with_session_epoch(-1)
        .with_topics(vec![fetch_topic]);
    let mut resp_body = side_request(shared, ApiKey::Fetch, version, |out| {
        request.encode(out, version)
    })
    .await?;
    let resp = FetchResponse::decode(&mut resp_body, version)?;
    if resp.error_code != 0 {
        bail!("index fetch: error code {}", resp.error_code);
    }
    // nisshi leaves out a partition that has nothing at the offset.
    let Some(part) = resp
        .responses
        .into_iter()
        .flat_map(|t| t.partitions)
        .find(|p| p.partition_index == partition)
    else {
        return Ok(ScanResult {
            error_code: 0,
            log_start_offset: -1,
            batches: Vec::new(),
        });
    };
    Ok(ScanResult {
        error_code: part.error_code,
        log_start_offset: part.log_start_offset,
        batches: part
            .records
            .as_deref()
            .map(batches::parse)
            .unwrap_or_default(),
    })
}

/// A request of the proxy's own on one of its idle connections to the broker; returns the
/// response body after its header.
async fn side_request(
    shared: &Shared,
    api_key: ApiKey,
    version: i16,
    encode_body: impl FnOnce(&mut BytesMut) -> anyhow::Result<()>,
) -> anyhow::Result<Bytes> {
    let correlation_id =
        (shared.next_correlation.fetch_add(1, Ordering::Relaxed) & 0x3fff_ffff) as i32;
    let header = RequestHeader::default()
        .with_request_api_key(api_key as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str("kstreams-txn-proxy")));
    let mut body = BytesMut::new();
    encode_request_header_into_buffer(&mut body, &header)?;
    encode_body(&mut body)?;

    let conn = shared
        .scan_conns
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .pop();
    let mut conn = match conn {
        Some(c) => c,
        None => {
            let c = TcpStream::connect(shared.upstream).await?;
            c.set_nodelay(true)?;
            c
        }
    };
    conn.write_all(&with_length(body)).await?;
    let frame = read_frame(&mut conn)
        .await?
        .context("the broker closed the index connection")?;
    shared
        .scan_conns
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(conn);

    let mut resp_body = frame.slice(4..);
    let header = ResponseHeader::decode(&mut resp_body, api_key.response_header_version(version))?;
    if header.correlation_id != correlation_id {
        bail!("{api_key:?} of the proxy: correlation id mismatch");
    }
    Ok(resp_body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::fetch_request::FetchPartition;
    use kafka_protocol::messages::produce_response::{
        LeaderIdAndEpoch, NodeEndpoint, PartitionProduceResponse, TopicProduceResponse,
    };
    use kafka_protocol::messages::{BrokerId, TopicName};

    const NOT_LEADER_OR_FOLLOWER: i16 = 6;

    fn shared(mode: ProxyMode) -> Arc<Shared> {
        Arc::new(Shared::new(
            mode,
            ([127, 0, 0, 1], 19092).into(),
            ([127, 0, 0, 1], 40000).into(),
        ))
    }

    fn response_body<M: Encodable>(api_key: ApiKey, version: i16, message: &M) -> Bytes {
        let header = ResponseHeader::default().with_correlation_id(7);
        encode(
            &header,
            api_key.response_header_version(version),
            message,
            version,
        )
        .unwrap()
        .freeze()
    }

    fn pending(api_key: ApiKey, version: i16) -> Pending {
        Pending {
            correlation_id: 7,
            api_key: api_key as i16,
            api_version: version,
            read_committed: false,
            fetch_offsets: HashMap::new(),
            txn: None,
        }
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    /// KIP-951: a Produce response that says the partition's leader moved names the new
    /// leader's address, and librdkafka (2.5 and later) sends there at once. Unrewritten, the
    /// client would bypass the proxy, and its faults, from then on.
    #[test]
    fn produce_responses_send_clients_to_the_proxy_when_the_leader_moves() {
        for mode in [ProxyMode::Transparent, ProxyMode::Patching] {
            let version = 10;
            let resp = ProduceResponse::default()
                .with_responses(vec![TopicProduceResponse::default()
                    .with_name(TopicName(StrBytes::from_static_str("t")))
                    .with_partition_responses(vec![PartitionProduceResponse::default()
                        .with_index(0)
                        .with_error_code(NOT_LEADER_OR_FOLLOWER)
                        .with_current_leader(
                            LeaderIdAndEpoch::default()
                                .with_leader_id(BrokerId(2))
                                .with_leader_epoch(5),
                        )])])
                .with_node_endpoints(vec![NodeEndpoint::default()
                    .with_node_id(BrokerId(2))
                    .with_host(StrBytes::from_static_str("10.1.2.3"))
                    .with_port(9092)]);
            let body = response_body(ApiKey::Produce, version, &resp);
            let out = block_on(transform_response(
                &shared(mode),
                &pending(ApiKey::Produce, version),
                body,
            ))
            .unwrap()
            .expect("the response is rewritten");
            let mut out = out.freeze();
            ResponseHeader::decode(&mut out, ApiKey::Produce.response_header_version(version))
                .unwrap();
            let got = ProduceResponse::decode(&mut out, version).unwrap();
            let endpoint = &got.node_endpoints[0];
            assert_eq!(
                (endpoint.node_id, endpoint.host.as_str(), endpoint.port),
                (BrokerId(2), "127.0.0.1", 40000),
                "{mode:?}"
            );
            let partition = &got.responses[0].partition_responses[0];
            assert_eq!(partition.error_code, NOT_LEADER_OR_FOLLOWER, "{mode:?}");
            assert_eq!(partition.current_leader.leader_id, BrokerId(2), "{mode:?}");
        }
    }

    /// A Produce response without endpoints passes as it came.
    #[test]
    fn produce_responses_without_endpoints_pass_unchanged() {
        let version = 10;
        let resp = ProduceResponse::default().with_responses(vec![TopicProduceResponse::default()
            .with_name(TopicName(StrBytes::from_static_str("t")))
            .with_partition_responses(vec![PartitionProduceResponse::default()])]);
        let body = response_body(ApiKey::Produce, version, &resp);
        let out = block_on(transform_response(
            &shared(ProxyMode::Transparent),
            &pending(ApiKey::Produce, version),
            body,
        ))
        .unwrap();
        assert!(out.is_none());
    }

    /// In front of Kafka the proxy leaves read_committed fetches to the broker: the request
    /// goes as it came (the patching mode asks nisshi read_uncommitted and decides itself).
    #[test]
    fn a_transparent_proxy_forwards_read_committed_fetches_unchanged() {
        let version = 12;
        let header = RequestHeader::default()
            .with_request_api_key(ApiKey::Fetch as i16)
            .with_request_api_version(version)
            .with_correlation_id(9)
            .with_client_id(Some(StrBytes::from_static_str("c")));
        let req = FetchRequest::default()
            .with_isolation_level(1)
            .with_topics(vec![FetchTopic::default()
                .with_topic(TopicName(StrBytes::from_static_str("t")))
                .with_partitions(vec![
                    FetchPartition::default().with_fetch_offset(5)
                ])]);
        let mut frame = BytesMut::new();
        encode_request_header_into_buffer(&mut frame, &header).unwrap();
        req.encode(&mut frame, version).unwrap();
        let frame = with_length(frame);

        let (pending, replaced) = inspect_request(&shared(ProxyMode::Transparent), &frame);
        assert!(replaced.is_none(), "forwarded unchanged");
        let pending = pending.expect("a response is expected");
        assert!(!pending.read_committed && pending.txn.is_none());

        let (pending, replaced) = inspect_request(&shared(ProxyMode::Patching), &frame);
        assert!(
            replaced.is_some(),
            "the patching mode asks read_uncommitted"
        );
        assert!(pending.unwrap().read_committed);
    }
}
