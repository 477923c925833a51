//! HTTP: accepts connections, routes requests (stream, health, readiness) and drains on shutdown.

mod stream;

pub use stream::heartbeat;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::header::{HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::config::Config;
use crate::hub::{CloseReason, Hub};
use crate::pg::source::SourceState;

/// A client must send its request head within this time, or the connection is closed
/// (a slowloris client cannot hold a slot forever).
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head accepted; larger gets 431 from hyper.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 16 * 1024;

/// Everything a request handler needs. One per gateway.
pub struct Shared {
    pub config: Config,
    pub hub: Arc<Hub>,
    pub source: Arc<SourceState>,
    pub pool: deadpool_postgres::Pool,
    pub draining: AtomicBool,
    /// Routes served besides the gateway's own (the demo's page and endpoints); never set by `serve`.
    pub extra: Option<Arc<dyn ExtraRoutes>>,
}

/// Extra routes mounted next to the stream endpoint, checked first.
pub trait ExtraRoutes: Send + Sync + 'static {
    fn matches(&self, method: &Method, path: &str) -> bool;
    fn call(&self, req: Request<Incoming>) -> Pin<Box<dyn std::future::Future<Output = Response<Body>> + Send + '_>>;
}

/// Accepts connections until `shutdown` resolves, then closes every stream and waits (up to the
/// shutdown timeout) for connections to finish.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, shutdown: impl std::future::Future<Output = ()>) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(DEFAULT_HEADER_READ_TIMEOUT)
        .max_buf_size(DEFAULT_MAX_HEADER_BYTES.max(8192))
        .writev(false);
    tokio::pin!(shutdown);
    loop {
        let (socket, peer) = tokio::select! {
            _ = &mut shutdown => break,
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
        let shared = shared.clone();
        let service = hyper::service::service_fn(move |req| {
            let shared = shared.clone();
            async move { Ok::<_, Infallible>(route(req, &shared, peer).await) }
        });
        let conn = builder.serve_connection(TokioIo::new(socket), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                // Peers hanging up mid-stream is normal life for SSE.
                tracing::debug!(%peer, error = %e, "connection ended");
            }
        });
    }
    shared.draining.store(true, Ordering::Release);
    tracing::info!(streams = shared.hub.connection_count(), "shutting down: closing streams");
    shared.hub.close_all(None, CloseReason::Shutdown);
    let timeout = shared.config.shutdown_timeout;
    if tokio::time::timeout(timeout, graceful.shutdown()).await.is_err() {
        tracing::warn!(?timeout, "shutdown timeout reached with connections still open");
    }
}

async fn route(req: Request<Incoming>, shared: &Shared, peer: SocketAddr) -> Response<Body> {
    let path = req.uri().path();
    if let Some(extra) = shared.extra.as_ref().filter(|e| e.matches(req.method(), path)) {
        return extra.call(req).await;
    }
    if path == shared.config.path {
        return match *req.method() {
            Method::GET => stream::open(req, shared, peer).await,
            _ => method_not_allowed("GET"),
        };
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

fn readiness(shared: &Shared) -> Response<Body> {
    let listening = shared.source.is_ready();
    let draining = shared.draining.load(Ordering::Acquire);
    let ready = listening && !draining;
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    json(
        status,
        serde_json::json!({
            "status": if ready { "ready" } else { "not_ready" },
            "listening": listening,
            "draining": draining,
            "horizon": shared.source.horizon().map(|h| h.to_string()),
            "connections": shared.hub.connection_count(),
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
