//! The optional HTTP endpoint (`StreamsConfig::http_endpoint`): HTTP/1.1 (hyper) on a tokio
//! runtime of its own, on a thread beside the stream threads.
//!
//! - `GET /metrics`: every metric in the Prometheus text format (OpenMetrics flavour);
//! - `GET /health`: 200 `Running` when the instance runs with every task restored, else 503 and
//!   the state's name;
//! - `GET /topology`: the topology's description, then its Mermaid form;
//! - `GET /stores/...`: interactive queries of the key-value and window stores, answered by
//!   whichever instance holds the key (see `queries`); `GET /stores` lists the stores.
//!
//! Anything else is answered 404 (an unknown path) or 405 (a method other than GET).
//!
//! Limits, so that no client can take the instance down: at most
//! `StreamsConfig::http_max_connections` connections at once (the others wait in the listen
//! backlog), a request head must arrive within `StreamsConfig::http_header_timeout` (on a new
//! connection and between the requests of a kept-alive one, so idle and half-sent connections
//! are closed), a connection lives at most [`CONNECTION_LIFETIME`], and an accept error (say,
//! out of descriptors) is retried after a pause, not at once. Store reads run on a small pool
//! of blocking threads (`queries`), never on the runtime's workers: `/health` answers while a
//! large query runs, and the endpoint stops within a second of being dropped.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::CONTENT_TYPE;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};

use super::queries::Queries;
use super::{Shared, State};
use crate::{Error, Result};

/// The longest a connection is served, however busy: a client that stops reading an answer
/// cannot hold its connection for ever.
pub(super) const CONNECTION_LIFETIME: std::time::Duration = std::time::Duration::from_secs(300);

/// The pause after a failed accept (out of descriptors, say) before the next.
const ACCEPT_BACKOFF: std::time::Duration = std::time::Duration::from_millis(200);

/// How the endpoint limits its clients (`StreamsConfig::http_max_connections`,
/// `http_header_timeout`).
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    pub(super) max_connections: usize,
    pub(super) header_timeout: std::time::Duration,
}

/// Who may ask what (`StreamsConfig::http_token`, `http_allowed_hosts`, `http_queries`).
#[derive(Debug, Clone, Default)]
pub(super) struct Guard {
    pub(super) token: Option<String>,
    /// Names accepted in `Host` besides IP addresses and `localhost`, lower case.
    pub(super) hosts: Vec<String>,
    pub(super) queries: bool,
}

impl Guard {
    /// The refusal of a request, if it is refused.
    fn refuse<B>(&self, req: &Request<B>) -> Option<Response<Full<Bytes>>> {
        if let Some(host) = req.headers().get(hyper::header::HOST) {
            let host = host.to_str().unwrap_or("");
            if !self.host_allowed(host) {
                return Some(text(
                    StatusCode::MISDIRECTED_REQUEST,
                    PLAIN,
                    "this host name is not served here; allow it with StreamsConfig::http_allowed_hosts\n".into(),
                ));
            }
        }
        let path = req.uri().path();
        if let Some(token) = &self.token {
            let given = req
                .headers()
                .get(hyper::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .unwrap_or("");
            if path != "/health" && !same(given.as_bytes(), token.as_bytes()) {
                let mut r = text(
                    StatusCode::UNAUTHORIZED,
                    PLAIN,
                    "this endpoint needs Authorization: Bearer <token>\n".into(),
                );
                r.headers_mut().insert(
                    hyper::header::WWW_AUTHENTICATE,
                    hyper::header::HeaderValue::from_static("Bearer"),
                );
                return Some(r);
            }
        }
        if !self.queries && (path == "/stores" || path.starts_with("/stores/")) {
            return Some(text(
                StatusCode::NOT_FOUND,
                PLAIN,
                "interactive queries are off on this instance (StreamsConfig::http_queries)\n"
                    .into(),
            ));
        }
        None
    }

    /// Whether `Host` (a name or address, and maybe a port) may be served: an IP address,
    /// `localhost`, or a name allowed.
    fn host_allowed(&self, host: &str) -> bool {
        let name = match host.strip_prefix('[') {
            // [v6]:port
            Some(rest) => rest.split(']').next().unwrap_or(""),
            None => host.rsplit_once(':').map_or(host, |(n, port)| {
                if port.chars().all(|c| c.is_ascii_digit()) {
                    n
                } else {
                    host
                }
            }),
        };
        let name = name.to_ascii_lowercase();
        name.parse::<std::net::IpAddr>().is_ok()
            || name == "localhost"
            || self.hosts.contains(&name)
    }
}

/// Equal bytes, compared in a time that does not depend on where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A running endpoint; dropping it stops it.
pub(super) struct Endpoint {
    address: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Endpoint {
    /// The address it listens on.
    pub(super) fn address(&self) -> SocketAddr {
        self.address
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What the endpoint serves besides the shared state.
struct Pages {
    guard: Guard,
    shared: Arc<Shared>,
    topology: String,
    queries: Arc<Queries>,
}

/// Binds `address` and serves the endpoint until the returned value is dropped.
pub(super) fn start(
    address: SocketAddr,
    limits: Limits,
    guard: Guard,
    shared: Arc<Shared>,
    topology: String,
    tls: Option<tokio_rustls::TlsAcceptor>,
    queries: impl FnOnce(SocketAddr) -> Queries,
) -> Result<Endpoint> {
    let io = |context: String| move |source| Error::Io { context, source };
    let listener = std::net::TcpListener::bind(address)
        .map_err(io(format!("bind the HTTP endpoint to {address}")))?;
    listener
        .set_nonblocking(true)
        .map_err(io("set the HTTP listener non-blocking".into()))?;
    let bound = listener
        .local_addr()
        .map_err(io("the HTTP listener's address".into()))?;
    // Two workers for connections; store reads go to at most four blocking threads.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(4)
        .thread_name("kstreams-http-worker")
        .enable_all()
        .build()
        .map_err(io("start the HTTP endpoint's runtime".into()))?;
    let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
    let pages = Arc::new(Pages {
        guard,
        shared,
        topology,
        queries: Arc::new(queries(bound)),
    });
    let thread = std::thread::Builder::new()
        .name("kstreams-http".into())
        .spawn(move || {
            runtime.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!(error = %e, "the HTTP endpoint cannot listen");
                        return;
                    }
                };
                tracing::info!(address = %bound, "HTTP endpoint listening");
                let permits = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
                loop {
                    // A connection is accepted only with a permit: beyond the cap, clients wait
                    // in the listen backlog and take no descriptor of ours.
                    let permit = tokio::select! {
                        _ = &mut rx => break,
                        p = permits.clone().acquire_owned() => p.expect("the semaphore is never closed"),
                    };
                    let accepted = tokio::select! {
                        _ = &mut rx => break,
                        accepted = listener.accept() => accepted,
                    };
                    let stream = match accepted {
                        Ok((stream, _)) => stream,
                        Err(e) => {
                            tracing::warn!(error = %e, "the HTTP endpoint cannot accept a connection; pausing");
                            tokio::select! {
                                _ = &mut rx => break,
                                _ = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                            }
                        }
                    };
                    let pages = pages.clone();
                    let tls = tls.clone();
                    tokio::spawn(async move {
                        let _permit = permit;
                        match tls {
                            None => serve(stream, pages, limits).await,
                            // The handshake is part of the request head's time.
                            Some(tls) => match tokio::time::timeout(limits.header_timeout, tls.accept(stream)).await {
                                Ok(Ok(stream)) => serve(stream, pages, limits).await,
                                Ok(Err(e)) => tracing::debug!(error = %e, "a TLS handshake failed"),
                                Err(_) => tracing::debug!("a TLS handshake timed out"),
                            },
                        }
                    });
                }
            });
            // A question to the coordinator still under way is not waited for long.
            runtime.shutdown_timeout(std::time::Duration::from_secs(1));
        })
        .map_err(io("start the HTTP endpoint's thread".into()))?;
    Ok(Endpoint {
        address: bound,
        shutdown: Some(tx),
        thread: Some(thread),
    })
}

/// Serves the requests of one connection (plain or TLS) for at most its lifetime.
async fn serve<IO>(io: IO, pages: Arc<Pages>, limits: Limits)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req| {
        let pages = pages.clone();
        async move { Ok::<_, Infallible>(respond(&pages, &req).await) }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .serve_connection(TokioIo::new(io), service);
    let _ = tokio::time::timeout(CONNECTION_LIFETIME, connection).await;
}

fn text(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(CONTENT_TYPE, v);
    }
    r
}

const PLAIN: &str = "text/plain; charset=utf-8";

/// Answers a request. Every answer to a query forwarded by another instance, refusals of the
/// guard included, is marked with this instance's address, which the sender checks (it passes
/// on nothing else).
async fn respond<B>(pages: &Pages, req: &Request<B>) -> Response<Full<Bytes>> {
    let answer = respond_unmarked(pages, req).await;
    if pages.queries.is_forwarded(req.headers()) {
        pages.queries.mine(answer)
    } else {
        answer
    }
}

async fn respond_unmarked<B>(pages: &Pages, req: &Request<B>) -> Response<Full<Bytes>> {
    if let Some(refusal) = pages.guard.refuse(req) {
        return refusal;
    }
    if req.method() != Method::GET {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            PLAIN,
            format!("{} is not served; use GET\n", req.method()),
        );
    }
    let path = req.uri().path();
    if path == "/stores" || path.starts_with("/stores/") {
        return pages.queries.clone().answer(req).await;
    }
    match path {
        "/metrics" => text(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            pages.shared.metrics.text(),
        ),
        "/health" => {
            let state = *super::lock(&pages.shared.state);
            let status = if state == State::Running {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            text(status, PLAIN, format!("{state:?}\n"))
        }
        "/topology" => text(StatusCode::OK, PLAIN, pages.topology.clone()),
        other => text(
            StatusCode::NOT_FOUND,
            PLAIN,
            format!(
                "no page {other}; the endpoint serves /metrics, /health, /topology and /stores\n"
            ),
        ),
    }
}
