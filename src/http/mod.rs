//! HTTP: accepts connections, routes requests (stream, health, readiness) and drains on shutdown.

mod cors;
mod front;
mod pump;
mod stream;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::field::Empty;
use tracing::Instrument;

use bytes::Bytes;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::header::{HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::config::Config;
use crate::hub::{CloseReason, Hub, Item};
use crate::metrics::Metrics;
use crate::pg::retention::RetentionStatus;
use crate::pg::source::SourceState;
use crate::sse;

/// Everything a request handler needs. One per gateway.
pub struct Shared {
    pub config: Config,
    pub hub: Arc<Hub>,
    pub source: Arc<SourceState>,
    pub pool: crate::pg::Pool,
    pub metrics: Metrics,
    /// Session lookups for cookie authentication (`--auth better-auth`).
    pub sessions: Option<Arc<crate::pg::sessions::SessionStore>>,
    /// Cancelled when the drain starts: streams are refused and idle connections closed.
    pub draining: CancellationToken,
    /// How pruning `pgsse.events` is going (reported by `/readyz`, never a reason for 503).
    pub retention: Arc<RetentionStatus>,
    /// Routes served besides the gateway's own (the demo's page and endpoints); never set by `serve`.
    pub extra: Option<Arc<dyn ExtraRoutes>>,
}

/// Extra routes mounted next to the stream endpoint, checked first.
pub trait ExtraRoutes: Send + Sync + 'static {
    fn matches(&self, method: &Method, path: &str) -> bool;
    fn call(&self, req: Request<Incoming>) -> Pin<Box<dyn Future<Output = Response<Body>> + Send + '_>>;
}

/// Accepts connections until `shutdown` resolves; then drains (readiness 503, new streams
/// refused, open streams closed spread over the drain period) and waits for connections to end,
/// all within the shutdown timeout.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, shutdown: impl Future<Output = ()>) {
    // Every connection task holds a watcher, so shutdown waits for streams and hyper's
    // connections alike; hyper's are also told to finish after their current request.
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let hyper_conn = Arc::new(HyperConn::new(&shared.config));
    let started_drain = tokio::sync::OnceCell::new();
    let mut drain: Option<tokio::task::JoinHandle<()>> = None;
    tokio::pin!(shutdown);
    loop {
        let (socket, peer) = tokio::select! {
            _ = &mut shutdown, if drain.is_none() => {
                let _ = started_drain.set(Instant::now());
                shared.draining.cancel();
                tracing::info!(streams = shared.hub.connection_count(), period = ?shared.config.drain_period, "draining");
                drain = Some(tokio::spawn(drain_streams(shared.hub.clone(), shared.config.drain_period)));
                continue;
            }
            _ = async { if let Some(d) = drain.as_mut() { let _ = d.await; } }, if drain.is_some() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Usually EMFILE: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = socket.set_nodelay(true);
        let span = tracing::info_span!("conn", %peer, client = Empty, user = Empty, stream = Empty);
        let conn = front::serve(socket, peer, shared.clone(), hyper_conn.clone(), graceful.watcher());
        tokio::spawn(conn.instrument(span));
    }
    let spent = started_drain.get().map_or(Duration::ZERO, Instant::elapsed);
    let left = shared.config.shutdown_timeout.saturating_sub(spent);
    if tokio::time::timeout(left, graceful.shutdown()).await.is_err() {
        tracing::warn!(timeout = ?shared.config.shutdown_timeout, "shutdown timeout reached; cutting remaining connections");
    }
}

/// Serves connections with hyper from wherever the front left them: every request that is not
/// a plain stream GET (health, readiness, preflight, the demo's routes), and all later requests
/// on that connection, streams included.
pub(crate) struct HyperConn {
    builder: hyper::server::conn::http1::Builder,
}

impl HyperConn {
    fn new(config: &Config) -> Self {
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(config.header_read_timeout)
            .max_buf_size(config.max_header_bytes.max(8192))
            .writev(false);
        Self { builder }
    }

    async fn serve(
        &self,
        io: TokioIo<front::Rewound>,
        peer: SocketAddr,
        shared: Arc<Shared>,
        watcher: hyper_util::server::graceful::Watcher,
    ) {
        let abort = Arc::new(Notify::new());
        let service = {
            let abort = abort.clone();
            hyper::service::service_fn(move |req| {
                let (shared, abort) = (shared.clone(), abort.clone());
                // Boxed: hyper keeps the service future's slot for the connection's whole life.
                let fut: Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>> =
                    Box::pin(async move { Ok::<_, Infallible>(route(req, &shared, peer, abort).await) });
                fut
            })
        };
        let conn = watcher.watch(self.builder.serve_connection(io, service));
        tokio::select! {
            r = conn => if let Err(e) = r {
                // Peers hanging up mid-stream is normal life for SSE.
                tracing::debug!(error = %e, "connection ended");
            },
            _ = abort.notified() => tracing::debug!("connection cut: client not reading"),
        }
    }
}

/// Closes every open stream, spread evenly over `period` in random order; each first gets the
/// drain's `retry:` ([`sse::drain_retry`]) so reconnects spread further.
async fn drain_streams(hub: Arc<Hub>, period: Duration) {
    use rand::seq::SliceRandom;
    let mut conns = hub.snapshot();
    conns.shuffle(&mut rand::thread_rng());
    let (n, start) = (conns.len(), Instant::now());
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut done = 0;
    while done < n {
        tick.tick().await;
        let due = if period.is_zero() {
            n
        } else {
            ((start.elapsed().as_secs_f64() / period.as_secs_f64()) * n as f64).ceil() as usize
        };
        for c in conns[done..due.min(n)].iter().filter_map(|w| w.upgrade()) {
            c.finish(&Item::notice(sse::drain_retry()), CloseReason::Shutdown);
        }
        done = due.min(n);
    }
    // Streams opened while draining were refused, but close any straggler too.
    hub.close_all(CloseReason::Shutdown);
}

async fn route(req: Request<Incoming>, shared: &Shared, peer: SocketAddr, abort: Arc<Notify>) -> Response<Body> {
    let path = req.uri().path();
    if let Some(extra) = shared.extra.as_ref().filter(|e| e.matches(req.method(), path)) {
        return extra.call(req).await;
    }
    if path == shared.config.path {
        let (parts, _body) = req.into_parts();
        return stream_endpoint(Request::from_parts(parts, ()), shared, peer, Some(abort)).await;
    }
    match path {
        "/healthz" => match *req.method() {
            Method::GET | Method::HEAD => json(StatusCode::OK, serde_json::json!({"status": "ok"})),
            _ => method_not_allowed("GET, HEAD"),
        },
        "/readyz" => match *req.method() {
            Method::GET | Method::HEAD => readiness(shared),
            _ => method_not_allowed("GET, HEAD"),
        },
        _ => error(StatusCode::NOT_FOUND, "not_found", "no such endpoint"),
    }
}

/// The stream path: GET opens a stream, OPTIONS answers a CORS preflight.
async fn stream_endpoint(
    req: Request<()>,
    shared: &Shared,
    peer: SocketAddr,
    abort: Option<Arc<Notify>>,
) -> Response<Body> {
    let origin = cors::allowed_origin(&shared.config, req.headers());
    let mut resp = match *req.method() {
        Method::GET => stream::open(req, shared, peer, abort).await,
        Method::OPTIONS => cors::preflight(&shared.config, req.headers(), origin.is_some()),
        _ => method_not_allowed("GET, OPTIONS"),
    };
    cors::decorate(&shared.config, &mut resp, origin);
    resp
}

/// Serves `/metrics` (Prometheus text) on its own listener until `stop`.
pub async fn serve_metrics(listener: TcpListener, metrics: Metrics, stop: CancellationToken) {
    loop {
        let socket = tokio::select! {
            _ = stop.cancelled() => return,
            a = listener.accept() => match a {
                Ok((s, _)) => s,
                Err(_) => { tokio::time::sleep(Duration::from_millis(50)).await; continue }
            },
        };
        let metrics = metrics.clone();
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let resp = match (req.method(), req.uri().path()) {
                (&Method::GET, "/metrics") => {
                    full(StatusCode::OK, "application/openmetrics-text; version=1.0.0; charset=utf-8", metrics.encode())
                }
                _ => error(StatusCode::NOT_FOUND, "not_found", "metrics are at /metrics"),
            };
            async move { Ok::<_, Infallible>(resp) }
        });
        let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(socket), service);
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
}

fn readiness(shared: &Shared) -> Response<Body> {
    let listening = shared.source.is_ready();
    let draining = shared.draining.is_cancelled();
    let ready = listening && !draining;
    let position = shared.source.position();
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    json(
        status,
        serde_json::json!({
            "status": if ready { "ready" } else { "not_ready" },
            "listening": listening,
            "draining": draining,
            "horizon": position.map(|p| p.horizon.to_string()),
            "history": position.map(|p| format!("{:08x}", p.history)),
            "connections": shared.hub.connection_count(),
            "jwks": shared.config.jwt.as_ref().and_then(|a| a.remote()).map(|r| r.describe()),
            // Streams work while retention fails, so it is reported, not a reason to be unready.
            "retention": shared.retention.to_json(),
        }),
    )
}

fn method_not_allowed(allow: &'static str) -> Response<Body> {
    let mut r = error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "method not allowed");
    r.headers_mut().insert(ALLOW, HeaderValue::from_static(allow));
    r
}

/// `{"error": code, "message": text}` with the given status.
pub fn error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    json(status, serde_json::json!({"error": code, "message": message}))
}

pub(crate) fn unavailable(code: &str, message: &str, retry_after_secs: u32) -> Response<Body> {
    let mut r = error(StatusCode::SERVICE_UNAVAILABLE, code, message);
    r.headers_mut().insert(RETRY_AFTER, HeaderValue::from(retry_after_secs));
    r
}

/// A JSON response.
pub fn json(status: StatusCode, body: serde_json::Value) -> Response<Body> {
    let mut r = Response::new(Body::Full(Some(Bytes::from(body.to_string()))));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// A complete response with the given content type.
pub fn full(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Body::Full(Some(body.into())));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// Response bodies: a fixed document, or an event stream.
pub enum Body {
    Full(Option<Bytes>),
    Stream(Box<stream::StreamBody>),
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            Body::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Body::Stream(s) => s.poll_data(cx).map(|o| o.map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, Body::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Body::Full(None) => SizeHint::with_exact(0),
            Body::Stream(_) => SizeHint::default(),
        }
    }
}
