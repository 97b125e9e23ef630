//! Interactive queries through the HTTP endpoint, across instances.
//!
//! - `GET /stores/{store}/keys/{key}`: a key of a key-value store, `{"key": .., "value": ..}`;
//! - `GET /stores/{store}/keys/{key}/windows?from=<ms>&to=<ms>`: a key's windows starting in
//!   `[from, to]` of a window store, `[{"start": .., "value": ..}]`;
//! - `GET /stores/{store}/range?from=<key>&to=<key>&limit=<n>`: the entries of a key-value
//!   store with keys in `[from, to]` (both optional), over every partition: `[{"key": ..,
//!   "value": .., "partition": ..}]`, partition by partition, in key-byte order within, at most
//!   `limit` per partition (default 1,000, fewer when many partitions are asked); `partitions=`
//!   narrows it to a list of partitions (each asked once however often listed).
//!
//! Every answer is bounded: at most [`MAX_ANSWER_ROWS`] rows (a range whose `limit` times its
//! partitions asks for more is refused with 413 before any read) and about
//! [`MAX_ANSWER_BYTES`] of keys and values (413 when a scan reaches it); another instance's
//! answer is read up to that size only. Paths and query strings are decoded strictly: an
//! invalid `%` escape, text that is not UTF-8 once decoded, an empty path segment or `from`
//! after `to` is answered 400. Store reads and JSON building run on the runtime's blocking
//! threads, so that the endpoint's workers stay free for `/health` and other queries.
//!
//! A key's partition is the one Kafka's default partitioner gives its bytes (murmur2, as the
//! runtime's producers and the Java client use), or the one the store's configured
//! partitioner gives (`StreamsConfig::query_partitioner`, for a source topic written by other
//! producers). An instance answers from a store partition
//! only while it runs that task, restored; any other partition is asked of the instance the
//! group's placement names (`discovery`), once: a forwarded request that finds the partition
//! gone answers 503 rather than ask again. During a rebalance, or when the owner is restoring
//! or does not answer, the answer is 503 with `Retry-After`: never a value from a task this
//! instance does not run.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Bytes;
use hyper::header::{CONTENT_TYPE, HOST, RETRY_AFTER};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rdkafka::consumer::BaseConsumer;

use super::discovery::{describe_group, GroupView};
use super::{lock, Shared, State};
use crate::store::{committed_windows, BytesStore, QueryKind, StoreQueries};
use crate::topology::Topology;

/// Marks a request one instance forwarded to another: it is answered locally or not at all.
pub(super) const FORWARDED: &str = "x-kstreams-forwarded";

/// A forwarded request's application id: an instance of another application (a port reused,
/// say) refuses it rather than answer from its own stores of the same name.
pub(super) const APPLICATION: &str = "x-kstreams-application";

/// The address a forwarded request expects to reach (the owner the group's placement named):
/// any other instance refuses it.
pub(super) const OWNER: &str = "x-kstreams-owner";

/// Names the instance that answered from its own store (its advertised address).
pub(super) const ANSWERED_BY: &str = "x-kstreams-answered-by";

/// How long a description of the group is reused before the coordinator is asked again.
const VIEW_TTL: Duration = Duration::from_secs(1);

/// The entries a range answers per partition, unless `limit=` says otherwise, and at most.
const DEFAULT_RANGE_LIMIT: usize = 1_000;
const MAX_RANGE_LIMIT: usize = 100_000;

/// The most rows one answer holds (a range over all its partitions, a key's windows).
pub(super) const MAX_ANSWER_ROWS: usize = 100_000;

/// About the most bytes of keys and values one answer holds; also the most read of another
/// instance's answer (plus a margin for the JSON around them).
pub(super) const MAX_ANSWER_BYTES: usize = 64 << 20;

/// How long the coordinator may take to describe the group.
const DESCRIBE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a forwarded request may take.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);

/// A queryable store: what it answers, and the topic whose partitions its tasks follow.
struct Route {
    queries: StoreQueries,
    topic: String,
    partitions: i32,
    /// How the source topic's keys were placed (`StreamsConfig::query_partitioner`).
    partitioner: crate::KeyPartitioner,
}

/// What the endpoint needs to answer queries.
pub(super) struct Queries {
    shared: Arc<Shared>,
    group: String,
    advertised: Option<String>,
    routes: BTreeMap<String, Route>,
    /// Stores of the topology that the endpoint cannot query (custom or session stores).
    others: BTreeSet<String>,
    client: Arc<BaseConsumer>,
    timeout: Duration,
    /// The endpoint's token, sent with forwarded queries (`StreamsConfig::http_token`).
    token: Option<String>,
    view: Mutex<Option<(Instant, Described)>>,
    refresh: tokio::sync::Mutex<()>,
    /// Counts the descriptions asked of the coordinator (when metrics are recorded).
    describes: Option<prometheus_client::metrics::counter::Counter>,
    /// With `StreamsConfig::http_tls`, how forwarded queries speak TLS to other instances.
    tls: Option<tokio_rustls::TlsConnector>,
}

type Answer = Response<Full<Bytes>>;

/// The coordinator's description of the group, or why there is none.
type Described = Result<Arc<GroupView>, String>;

/// Where a key's query is answered.
enum Located {
    /// Here: the key's bytes, its partition, the store's committed bytes.
    Here(Vec<u8>, i32, Arc<dyn BytesStore>),
    /// Elsewhere, or not at all: the answer.
    Answered(Box<Answer>),
}

impl Queries {
    /// The queryable stores of `topology`; `partitions` gives the partition count of each of
    /// its source topics (logical names, as topic preparation found them).
    pub(super) fn new(
        shared: Arc<Shared>,
        topology: &Topology,
        config: &crate::StreamsConfig,
        partitions: &BTreeMap<String, i32>,
        advertised: Option<String>,
        client: BaseConsumer,
        tls: Option<tokio_rustls::TlsConnector>,
    ) -> Self {
        let (application_id, timeout, token) = (
            config.application_id.as_str(),
            config.client_timeout,
            config.http_token.clone(),
        );
        let builders: BTreeMap<&str, _> = topology
            .store_builders()
            .iter()
            .map(|b| (b.name(), b.queries()))
            .collect();
        let mut routes = BTreeMap::new();
        let mut others = BTreeSet::new();
        for st in topology.subtopologies() {
            let Some(source) = st.source_topics.first() else {
                continue;
            };
            for store in &st.stores {
                match (builders.get(store.as_str()), partitions.get(source)) {
                    (Some(Some(queries)), Some(n)) => {
                        routes.insert(
                            store.clone(),
                            Route {
                                queries: queries.clone(),
                                topic: topology.resolve_topic(application_id, source),
                                partitions: *n,
                                partitioner: config
                                    .query_partitioners
                                    .get(store.as_str())
                                    .cloned()
                                    .unwrap_or(crate::KeyPartitioner::Murmur2),
                            },
                        );
                    }
                    _ => {
                        others.insert(store.clone());
                    }
                }
            }
        }
        let describes = config
            .metrics_recording
            .then(|| shared.metrics.group_describes("queries"));
        Queries {
            shared,
            group: application_id.to_string(),
            advertised,
            routes,
            others,
            client: Arc::new(client),
            timeout,
            token,
            view: Mutex::new(None),
            refresh: tokio::sync::Mutex::new(()),
            describes,
            tls,
        }
    }

    /// Whether a request is a query forwarded by another instance.
    pub(super) fn is_forwarded(&self, headers: &hyper::HeaderMap) -> bool {
        headers.contains_key(FORWARDED)
    }

    /// Answers `GET /stores/...` (the endpoint marks answers to forwarded queries).
    pub(super) async fn answer<B>(self: Arc<Self>, req: &Request<B>) -> Answer {
        let forwarded = self.is_forwarded(req.headers());
        if forwarded {
            if let Some(refusal) = self.refuse_forwarded(req.headers()) {
                return refusal;
            }
        }
        let path = req.uri().path();
        let (params, segments) = match (params(req.uri().query().unwrap_or("")), segments(path)) {
            (Ok(p), Ok(s)) => (p, s),
            (Err(a), _) | (_, Err(a)) => return a.answer(),
        };
        let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
        let state = *lock(&self.shared.state);
        if !matches!(state, State::Running | State::Rebalancing) {
            return retry(format!("the instance is {state:?}"));
        }
        let Some(store) = segments.first() else {
            return self.store_list();
        };
        let route = match self.route(store) {
            Ok(r) => r,
            Err(a) => return a.answer(),
        };
        let path_and_query = req
            .uri()
            .path_and_query()
            .map_or(path.to_string(), |p| p.to_string());
        match (&segments[1..], route.queries.kind) {
            (["keys", key], QueryKind::KeyValue) => {
                self.key(store, route, key, &path_and_query, forwarded)
                    .await
            }
            (["keys", key, "windows"], QueryKind::Window { segment_interval }) => {
                let (from, to) = match (
                    time(&params, "from", i64::MIN),
                    time(&params, "to", i64::MAX),
                ) {
                    (Ok(f), Ok(t)) if f <= t => (f, t),
                    (Ok(f), Ok(t)) => {
                        return text(StatusCode::BAD_REQUEST, format!("from={f} is after to={t}"))
                    }
                    (Err(a), _) | (_, Err(a)) => return a.answer(),
                };
                self.windows(
                    store,
                    route,
                    key,
                    (segment_interval, from, to),
                    &path_and_query,
                    forwarded,
                )
                .await
            }
            (["range"], QueryKind::KeyValue) => {
                self.range(store, route, &params, &path_and_query, forwarded)
                    .await
            }
            (rest, kind) => text(
                StatusCode::NOT_FOUND,
                format!(
                    "no query /{}{} for {} store {store}; {}",
                    rest.join("/"),
                    if rest.is_empty() { "" } else { " " },
                    kind_name(kind),
                    usage(kind)
                ),
            ),
        }
    }

    /// A forwarded request is answered only by the instance of this application it was sent
    /// to; anything else gets this refusal (503, retriable: the sender's view of the group is
    /// stale).
    fn refuse_forwarded(&self, headers: &hyper::HeaderMap) -> Option<Answer> {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        if header(APPLICATION) != Some(self.group.as_str()) {
            return Some(retry(format!(
                "this instance serves application {}, not the one the forwarded query is for",
                self.group
            )));
        }
        if header(OWNER) != self.advertised.as_deref() {
            return Some(retry(
                "this instance is not the one the forwarded query was sent to (its address was reused)"
                    .to_string(),
            ));
        }
        None
    }

    /// An answer from this instance, marked with its address.
    pub(super) fn mine(&self, mut answer: Answer) -> Answer {
        if let Some(v) = self
            .advertised
            .as_deref()
            .and_then(|a| hyper::header::HeaderValue::from_str(a).ok())
        {
            answer.headers_mut().insert(ANSWERED_BY, v);
        }
        answer
    }

    fn store_list(&self) -> Answer {
        let stores: Vec<serde_json::Value> = self
            .routes
            .iter()
            .map(|(name, r)| {
                serde_json::json!({
                    "store": name,
                    "kind": kind_name(r.queries.kind),
                    "partitions": r.partitions,
                    "queries": usage(r.queries.kind),
                })
            })
            .collect();
        json(StatusCode::OK, &serde_json::Value::Array(stores))
    }

    fn route(&self, store: &str) -> Result<&Route, Refusal> {
        if let Some(r) = self.routes.get(store) {
            return Ok(r);
        }
        if self.others.contains(store) {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                format!("store {store} cannot be queried over HTTP: only the built-in key-value and window stores can"),
            ));
        }
        let known: Vec<&str> = self.routes.keys().map(String::as_str).collect();
        Err(refuse(
            StatusCode::NOT_FOUND,
            format!(
                "no store {store}; the queryable stores are: {}",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            ),
        ))
    }

    /// The committed bytes of partition `partition` of `store`, if this instance runs its
    /// task, restored, now.
    fn local(&self, store: &str, partition: i32) -> Option<Arc<dyn BytesStore>> {
        lock(&self.shared.stores)
            .iter()
            .flatten()
            .find(|(n, p, _)| n == store && *p == partition)
            .map(|(_, _, h)| h.bytes.clone())
    }

    fn key_bytes(&self, store: &str, route: &Route, key: &str) -> Result<Vec<u8>, Refusal> {
        match route.queries.codec.key_from_text(store, key) {
            None => Err(refuse(
                StatusCode::BAD_REQUEST,
                format!("the key serde of store {store} does not read keys from text"),
            )),
            Some(Err(e)) => Err(refuse(
                StatusCode::BAD_REQUEST,
                format!(
                    "key {key:?} does not decode for store {store}: {}",
                    e.message
                ),
            )),
            Some(Ok(b)) => Ok(b),
        }
    }

    /// A key's bytes, its partition and this instance's store of it; or the answer when the key
    /// does not decode or its partition is held elsewhere (then the holder's answer).
    async fn locate(
        &self,
        store: &str,
        route: &Route,
        key: &str,
        path_and_query: &str,
        forwarded: bool,
    ) -> Located {
        let kb = match self.key_bytes(store, route, key) {
            Ok(b) => b,
            Err(a) => return Located::Answered(Box::new(a.answer())),
        };
        let p = route.partitioner.partition(&kb, route.partitions);
        match self.local(store, p) {
            Some(bytes) => Located::Here(kb, p, bytes),
            None => Located::Answered(Box::new(
                self.forward(store, route, &[p], true, path_and_query, forwarded)
                    .await,
            )),
        }
    }

    async fn key(
        &self,
        store: &str,
        route: &Route,
        key: &str,
        path_and_query: &str,
        forwarded: bool,
    ) -> Answer {
        let (kb, p, bytes) = match self
            .locate(store, route, key, path_and_query, forwarded)
            .await
        {
            Located::Here(kb, p, bytes) => (kb, p, bytes),
            Located::Answered(a) => return *a,
        };
        let (codec, store_name, key_text, partitioner) = (
            route.queries.codec.clone(),
            store.to_string(),
            key.to_string(),
            route.partitioner.name(),
        );
        let answer = off_thread(move || {
            let store = store_name.as_str();
            let value = match bytes.get(&kb) {
                Ok(Some(v)) => v,
                Ok(None) => {
                    return text(
                        StatusCode::NOT_FOUND,
                        format!(
                            "store {store} has no value for key {key_text:?} on partition {p}, \
                             where {partitioner} places it (a source topic written with another \
                             partitioner needs StreamsConfig::query_partitioner)"
                        ),
                    )
                }
                Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
            };
            match (
                json_of(codec.key_to_json(store, &kb), "key", store),
                json_of(codec.value_to_json(store, &value), "value", store),
            ) {
                (Ok(k), Ok(v)) => json(
                    StatusCode::OK,
                    &serde_json::json!({"key": k, "value": v, "partition": p}),
                ),
                (Err(a), _) | (_, Err(a)) => a.answer(),
            }
        })
        .await
        .unwrap_or_else(|a| a);
        match answer.status() {
            StatusCode::OK | StatusCode::NOT_FOUND => self.mine(answer),
            _ => answer,
        }
    }

    async fn windows(
        &self,
        store: &str,
        route: &Route,
        key: &str,
        (interval, from, to): (i64, i64, i64),
        path_and_query: &str,
        forwarded: bool,
    ) -> Answer {
        let (kb, bytes) = match self
            .locate(store, route, key, path_and_query, forwarded)
            .await
        {
            Located::Here(kb, _, bytes) => (kb, bytes),
            Located::Answered(a) => return *a,
        };
        let (codec, store_name) = (route.queries.codec.clone(), store.to_string());
        let answer = off_thread(move || {
            let store = store_name.as_str();
            let found = match committed_windows(&*bytes, interval, &kb, from, to) {
                Ok(f) => f,
                Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
            };
            if found.len() > MAX_ANSWER_ROWS {
                return text(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!(
                        "{} windows, more than the {MAX_ANSWER_ROWS} an answer holds; ask a narrower from/to",
                        found.len()
                    ),
                );
            }
            let mut budget = MAX_ANSWER_BYTES;
            let mut out = Vec::with_capacity(found.len());
            for (start, v) in found {
                if let Err(a) = spend(&mut budget, 16 + v.len()) {
                    return a.answer();
                }
                match json_of(codec.value_to_json(store, &v), "value", store) {
                    Ok(v) => out.push(serde_json::json!({"start": start, "value": v})),
                    Err(a) => return a.answer(),
                }
            }
            json(StatusCode::OK, &serde_json::Value::Array(out))
        })
        .await
        .unwrap_or_else(|a| a);
        match answer.status() {
            StatusCode::OK => self.mine(answer),
            _ => answer,
        }
    }

    async fn range(
        &self,
        store: &str,
        route: &Route,
        params: &BTreeMap<String, String>,
        path_and_query: &str,
        forwarded: bool,
    ) -> Answer {
        let bound = |name: &str| -> Result<Option<Vec<u8>>, Refusal> {
            params
                .get(name)
                .map(|t| self.key_bytes(store, route, t))
                .transpose()
        };
        let (from, to) = match (bound("from"), bound("to")) {
            (Ok(Some(f)), Ok(Some(t))) if f > t => {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "from={} is after to={} (keys are ordered by their bytes)",
                        params["from"], params["to"]
                    ),
                )
            }
            (Ok(f), Ok(t)) => (f, t),
            (Err(a), _) | (_, Err(a)) => return a.answer(),
        };
        let wanted: BTreeSet<i32> = match params.get("partitions") {
            Some(list) => match list
                .split(',')
                .map(|p| {
                    p.parse::<i32>()
                        .ok()
                        .filter(|p| (0..route.partitions).contains(p))
                })
                .collect::<Option<BTreeSet<i32>>>()
            {
                Some(ps) => ps,
                None => {
                    return text(
                        StatusCode::BAD_REQUEST,
                        format!(
                        "partitions={list} is not a list of partitions of store {store} (0 to {})",
                        route.partitions - 1
                    ),
                    )
                }
            },
            None => (0..route.partitions).collect(),
        };
        let limit = match params.get("limit").map(|l| l.parse::<usize>()) {
            // By default as many per partition as keep the answer within its bound.
            None => DEFAULT_RANGE_LIMIT
                .min(MAX_ANSWER_ROWS / wanted.len())
                .max(1),
            Some(Ok(l)) if (1..=MAX_RANGE_LIMIT).contains(&l) => l,
            Some(_) => {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!("limit must be a number from 1 to {MAX_RANGE_LIMIT}"),
                )
            }
        };
        if limit.saturating_mul(wanted.len()) > MAX_ANSWER_ROWS {
            return text(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "a range answers at most {MAX_ANSWER_ROWS} rows: limit={limit} over {} partition(s) asks up to {}; ask fewer partitions (partitions=) or a lower limit",
                    wanted.len(),
                    limit * wanted.len()
                ),
            );
        }
        let (mut here, mut remote) = (vec![], vec![]);
        for p in wanted {
            match self.local(store, p) {
                Some(bytes) => here.push((p, bytes)),
                None => remote.push(p),
            }
        }
        let (codec, store_name) = (route.queries.codec.clone(), store.to_string());
        let scanned = off_thread(move || {
            let mut budget = MAX_ANSWER_BYTES;
            let mut rows: Vec<(i32, serde_json::Value)> = vec![];
            for (p, bytes) in here {
                let found = scan(
                    &store_name,
                    &*codec,
                    &*bytes,
                    p,
                    (&from, &to),
                    limit,
                    &mut budget,
                )?;
                rows.extend(found.into_iter().map(|v| (p, v)));
            }
            Ok::<_, Refusal>(rows)
        })
        .await;
        let mut rows = match scanned {
            Ok(Ok(rows)) => rows,
            Ok(Err(refusal)) => return refusal.answer(),
            Err(a) => return a,
        };
        if !remote.is_empty() {
            let answer = self
                .forward(store, route, &remote, false, path_and_query, forwarded)
                .await;
            if answer.status() != StatusCode::OK {
                return answer;
            }
            let body = match answer.into_body().collect().await {
                Ok(b) => b.to_bytes(),
                Err(never) => match never {},
            };
            let Ok(serde_json::Value::Array(more)) = serde_json::from_slice(&body) else {
                return text(
                    StatusCode::BAD_GATEWAY,
                    "another instance's range answer is not a JSON array".into(),
                );
            };
            for v in more {
                let p = v["partition"].as_i64().unwrap_or(-1) as i32;
                rows.push((p, v));
            }
        }
        // Partition by partition; each part is in key order already.
        rows.sort_by_key(|(p, _)| *p);
        self.mine(json(
            StatusCode::OK,
            &serde_json::Value::Array(rows.into_iter().map(|(_, v)| v).collect()),
        ))
    }

    /// Asks the instances that hold `partitions` of `store` (the group's placement); a
    /// request that was forwarded already is not forwarded again. A key's query goes as it is
    /// (its key names the partition); a range goes to each holder with the partitions it is
    /// to answer for (`partitions=`), and the answers are joined.
    async fn forward(
        &self,
        store: &str,
        route: &Route,
        partitions: &[i32],
        one_key: bool,
        path_and_query: &str,
        forwarded: bool,
    ) -> Answer {
        if forwarded {
            return retry(format!(
                "this instance does not hold partition(s) {partitions:?} of store {store} now (a rebalance moved them)"
            ));
        }
        let view = match self.view().await {
            Ok(v) => v,
            Err(message) => return retry(message),
        };
        if view.members.is_empty() {
            return retry(format!(
                "the group coordinator knows no members of group {} yet (state {:?})",
                self.group, view.state
            ));
        }
        if !view.is_stable() {
            return retry(format!(
                "the application's group is rebalancing (state {})",
                view.state
            ));
        }
        let mut by_address: BTreeMap<String, Vec<i32>> = BTreeMap::new();
        for &p in partitions {
            let Some(owner) = view.range_owner(route.partitions, p) else {
                return retry(format!(
                    "no instance holds partition {p} of store {store} (topic {})",
                    route.topic
                ));
            };
            let Some(address) = owner.address() else {
                return text(
                    StatusCode::BAD_GATEWAY,
                    // No member or transactional ids in answers: they would tell a client
                    // how to fence the application's producers.
                    format!(
                        "partition {p} of store {store} is held by an instance which advertises no HTTP endpoint; turn the endpoint on in every instance"
                    ),
                );
            };
            if Some(address) == self.advertised.as_deref() {
                return retry(format!(
                    "partition {p} of store {store} is assigned to this instance and not restored yet"
                ));
            }
            by_address.entry(address.to_string()).or_default().push(p);
        }
        if one_key {
            let (address, _) = by_address
                .into_iter()
                .next()
                .expect("a key has one partition");
            return self.relay(&address, path_and_query).await;
        }
        // A range: each holder answers for its partitions.
        let mut rows: Vec<serde_json::Value> = vec![];
        for (address, ps) in by_address {
            let list: Vec<String> = ps.iter().map(ToString::to_string).collect();
            let sep = if path_and_query.contains('?') {
                '&'
            } else {
                '?'
            };
            let target = format!("{path_and_query}{sep}partitions={}", list.join(","));
            let answer = self.relay(&address, &target).await;
            if answer.status() != StatusCode::OK {
                return answer;
            }
            let body = match answer.into_body().collect().await {
                Ok(b) => b.to_bytes(),
                Err(never) => match never {},
            };
            match serde_json::from_slice::<serde_json::Value>(&body) {
                Ok(serde_json::Value::Array(more)) => rows.extend(more),
                _ => {
                    return text(
                        StatusCode::BAD_GATEWAY,
                        format!("the range answer of {address} is not a JSON array"),
                    )
                }
            }
        }
        json(StatusCode::OK, &serde_json::Value::Array(rows))
    }

    /// Sends the request to `address` and passes its answer on (a failure is retriable). A
    /// failed relay or a 503 keeps the group's description: it is at most `VIEW_TTL` old, so
    /// the client's retry (`Retry-After: 1`) finds a fresh one, and the coordinator is asked
    /// at most once per `VIEW_TTL` however many queries fail meanwhile.
    async fn relay(&self, address: &str, path_and_query: &str) -> Answer {
        let asked = get(
            address,
            self.tls.as_ref(),
            path_and_query,
            &self.group,
            self.token.as_deref(),
        );
        match tokio::time::timeout(FORWARD_TIMEOUT, asked).await {
            // Whatever answers there without being the instance the group places there (a
            // member may advertise any address) is not passed on.
            Ok(Ok((status, headers, _)))
                if headers.get(ANSWERED_BY).and_then(|v| v.to_str().ok()) != Some(address) =>
            {
                retry(format!(
                    "{address} did not answer as an instance of this application (it answered {status})"
                ))
            }
            Ok(Ok((status, headers, body))) => {
                let mut r = Response::new(Full::new(body));
                *r.status_mut() = status;
                for name in [CONTENT_TYPE.as_str(), ANSWERED_BY] {
                    if let Some(v) = headers.get(name) {
                        r.headers_mut().insert(name, v.clone());
                    }
                }
                if status == StatusCode::SERVICE_UNAVAILABLE {
                    r.headers_mut()
                        .insert(RETRY_AFTER, hyper::header::HeaderValue::from_static("1"));
                }
                r
            }
            Ok(Err(e)) => {
                retry(format!("the instance at {address} did not answer: {e}"))
            }
            Err(_) => {
                retry(format!(
                    "the instance at {address} did not answer within {FORWARD_TIMEOUT:?}"
                ))
            }
        }
    }

    /// The group's description, at most `VIEW_TTL` old.
    async fn view(&self) -> Described {
        let fresh = || -> Option<Described> {
            lock(&self.view)
                .as_ref()
                .filter(|(at, _)| at.elapsed() < VIEW_TTL)
                .map(|(_, v)| v.clone())
        };
        if let Some(v) = fresh() {
            return v;
        }
        // One question to the coordinator at a time; the others take its answer.
        let _refreshing = self.refresh.lock().await;
        if let Some(v) = fresh() {
            return v;
        }
        let (client, group) = (self.client.clone(), self.group.clone());
        let timeout = self.timeout.min(DESCRIBE_TIMEOUT);
        if let Some(c) = &self.describes {
            c.inc();
        }
        let described = tokio::task::spawn_blocking(move || {
            let described = describe_group(&client, &group, timeout);
            // Serves the client's queued events (logs, errors): nothing else polls it.
            let _ = client.poll(Duration::ZERO);
            described
        })
        .await
        .map_err(|e| format!("describing the group failed: {e}"))
        .and_then(|d| d.map_err(|e| e.to_string()))
        .map(Arc::new);
        // Failures are kept for a while too: a coordinator in trouble is not asked per query.
        *lock(&self.view) = Some((Instant::now(), described.clone()));
        described
    }
}

/// A GET to another instance's endpoint, marked as forwarded, over TLS when `tls` is given.
async fn get(
    address: &str,
    tls: Option<&tokio_rustls::TlsConnector>,
    path_and_query: &str,
    application: &str,
    token: Option<&str>,
) -> Result<(StatusCode, hyper::HeaderMap, Bytes), String> {
    let stream = tokio::net::TcpStream::connect(address)
        .await
        .map_err(|e| e.to_string())?;
    match tls {
        None => get_over(stream, address, path_and_query, application, token).await,
        Some(tls) => {
            let name = super::tls::server_name(address)?;
            let stream = tls
                .connect(name, stream)
                .await
                .map_err(|e| format!("TLS: {e}"))?;
            get_over(stream, address, path_and_query, application, token).await
        }
    }
}

/// [`get`] over a connection made.
async fn get_over<IO>(
    io: IO,
    address: &str,
    path_and_query: &str,
    application: &str,
    token: Option<&str>,
) -> Result<(StatusCode, hyper::HeaderMap, Bytes), String>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let mut req = Request::get(path_and_query).header(HOST, address);
    if let Some(token) = token {
        req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let req = req
        .header(FORWARDED, "1")
        .header(APPLICATION, application)
        .header(OWNER, address)
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let headers = resp.headers().clone();
    // Another instance's answer is bounded as ours are: read no more than that.
    let body = http_body_util::Limited::new(resp.into_body(), MAX_ANSWER_BYTES + (8 << 20))
        .collect()
        .await
        .map_err(|e| format!("its answer: {e}"))?
        .to_bytes();
    Ok((status, headers, body))
}

/// Up to `limit` entries of one store partition with keys in `[from, to]`, as JSON rows,
/// spending their bytes from `budget`.
fn scan(
    store: &str,
    codec: &dyn crate::store::Codec,
    bytes: &dyn BytesStore,
    partition: i32,
    (from, to): (&Option<Vec<u8>>, &Option<Vec<u8>>),
    limit: usize,
    budget: &mut usize,
) -> Result<Vec<serde_json::Value>, Refusal> {
    use std::ops::Bound;
    let lower = from.as_deref().map_or(Bound::Unbounded, Bound::Included);
    let upper = to.as_deref().map_or(Bound::Unbounded, Bound::Included);
    let entries = bytes
        .range_limited(lower, upper, limit)
        .map_err(|e| refuse(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    entries
        .into_iter()
        .map(|(k, v)| {
            spend(budget, k.len() + v.len() + 32)?;
            let key = json_of(codec.key_to_json(store, &k), "key", store)?;
            let value = json_of(codec.value_to_json(store, &v), "value", store)?;
            Ok(serde_json::json!({"key": key, "value": value, "partition": partition}))
        })
        .collect()
}

/// Takes `n` bytes from an answer's budget; 413 once it is spent.
fn spend(budget: &mut usize, n: usize) -> Result<(), Refusal> {
    *budget = budget.checked_sub(n).ok_or_else(|| {
        refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the answer would hold more than {} MiB of keys and values; ask a narrower range, fewer partitions or a lower limit",
                MAX_ANSWER_BYTES >> 20
            ),
        )
    })?;
    Ok(())
}

/// Runs `read` (store reads, JSON building) on the runtime's blocking threads; a read that
/// panicked is answered 500.
async fn off_thread<T: Send + 'static>(
    read: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Answer> {
    tokio::task::spawn_blocking(read).await.map_err(|e| {
        text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("reading the store failed: {e}"),
        )
    })
}

fn kind_name(kind: QueryKind) -> &'static str {
    match kind {
        QueryKind::KeyValue => "key-value",
        QueryKind::Window { .. } => "window",
    }
}

fn usage(kind: QueryKind) -> &'static str {
    match kind {
        QueryKind::KeyValue => "ask /keys/{key} or /range?from={key}&to={key}",
        QueryKind::Window { .. } => "ask /keys/{key}/windows?from={ms}&to={ms}",
    }
}

fn json_of(
    converted: Option<Result<serde_json::Value, crate::serde::SerdeError>>,
    what: &str,
    store: &str,
) -> Result<serde_json::Value, Refusal> {
    match converted {
        Some(Ok(v)) => Ok(v),
        Some(Err(e)) => Err(refuse(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!(
                "a stored {what} of store {store} does not decode: {}",
                e.message
            ),
        )),
        None => Err(refuse(
            StatusCode::NOT_IMPLEMENTED,
            format!("the {what} serde of store {store} gives no JSON (Serde::bytes_to_json)"),
        )),
    }
}

fn time(params: &BTreeMap<String, String>, name: &str, default: i64) -> Result<i64, Refusal> {
    match params.get(name) {
        None => Ok(default),
        Some(t) => t.parse().map_err(|_| {
            refuse(
                StatusCode::BAD_REQUEST,
                format!("{name}={t} is not a time in milliseconds since the epoch"),
            )
        }),
    }
}

/// The query string's parameters, percent-decoded; 400 for an invalid escape or text that is
/// not UTF-8.
fn params(query: &str) -> Result<BTreeMap<String, String>, Refusal> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            Ok((decode(k, true)?, decode(v, true)?))
        })
        .collect()
}

/// The segments of a `/stores/...` path, percent-decoded (none for `/stores` and `/stores/`);
/// 400 for an empty segment, an invalid escape or text that is not UTF-8.
fn segments(path: &str) -> Result<Vec<String>, Refusal> {
    let rest = path.strip_prefix("/stores").unwrap_or(path);
    if rest.is_empty() || rest == "/" {
        return Ok(vec![]);
    }
    let rest = rest.strip_prefix('/').unwrap_or(rest);
    rest.split('/')
        .map(|segment| {
            if segment.is_empty() {
                return Err(refuse(
                    StatusCode::BAD_REQUEST,
                    format!("the path {path} has an empty segment"),
                ));
            }
            decode(segment, false)
        })
        .collect()
}

/// `%XX` escapes decoded (and `+` as a space, in a query string); 400 for an invalid escape or
/// a result that is not UTF-8 (never another text silently).
fn decode(s: &str, plus_is_space: bool) -> Result<String, Refusal> {
    let b = s.as_bytes();
    let hex = |c: u8| (c as char).to_digit(16);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let escape = (
                    b.get(i + 1).copied().and_then(hex),
                    b.get(i + 2).copied().and_then(hex),
                );
                let (Some(h), Some(l)) = escape else {
                    return Err(refuse(
                        StatusCode::BAD_REQUEST,
                        format!("{s:?} has an invalid %-escape"),
                    ));
                };
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
            b'+' if plus_is_space => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| {
        refuse(
            StatusCode::BAD_REQUEST,
            format!("{s:?} is not UTF-8 once decoded"),
        )
    })
}

/// A query that gets no data: the status and what to say.
struct Refusal {
    status: StatusCode,
    message: String,
}

impl Refusal {
    fn answer(self) -> Answer {
        text(self.status, self.message)
    }
}

fn refuse(status: StatusCode, message: String) -> Refusal {
    Refusal { status, message }
}

fn text(status: StatusCode, message: String) -> Answer {
    let mut r = Response::new(Full::new(Bytes::from(message + "\n")));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// 503 with `Retry-After`: the answer may come once a rebalance or restoration is over.
fn retry(message: String) -> Answer {
    let mut r = text(StatusCode::SERVICE_UNAVAILABLE, message);
    r.headers_mut()
        .insert(RETRY_AFTER, hyper::header::HeaderValue::from_static("1"));
    r
}

fn json(status: StatusCode, value: &serde_json::Value) -> Answer {
    let mut r = Response::new(Full::new(Bytes::from(value.to_string() + "\n")));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_are_percent_decoded_strictly() {
        let p = params("from=a%20b&to=c+d").ok().unwrap();
        assert_eq!(p["from"], "a b");
        assert_eq!(p["to"], "c d");
        assert_eq!(
            segments("/stores/caf%C3%A9/keys/a+b").ok().unwrap(),
            ["café", "keys", "a+b"]
        );
        assert!(segments("/stores").ok().unwrap().is_empty());
        assert!(segments("/stores/").ok().unwrap().is_empty());
        for bad in ["x=%zz", "y=%4", "z=%FF"] {
            assert_eq!(
                params(bad).err().unwrap().status,
                StatusCode::BAD_REQUEST,
                "{bad}"
            );
        }
        for bad in [
            "/stores/a//windows",
            "/stores/a/keys/",
            "/stores//a",
            "/stores/%FF",
        ] {
            assert_eq!(
                segments(bad).err().unwrap().status,
                StatusCode::BAD_REQUEST,
                "{bad}"
            );
        }
    }

    #[test]
    fn an_answers_budget_refuses_once_spent() {
        let mut budget = 100;
        assert!(spend(&mut budget, 60).is_ok());
        assert!(spend(&mut budget, 40).is_ok());
        let refused = spend(&mut budget, 1).err().unwrap();
        assert_eq!(refused.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(refused.message.contains("MiB"), "{}", refused.message);
    }
}
