//! HTTP: accepts connections, routes requests (stream, health, readiness) and drains on shutdown.

mod body;
mod cap;
mod catchup;
mod cors;
mod front;
mod pump;
mod routes;
mod shared;
mod stream;

pub use body::{error, full, json, Body};
pub use shared::{ExtraRoutes, Shared};

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::field::Empty;
use tracing::Instrument;

use crate::hub::{CloseReason, Hub, Item};
use crate::metrics::Metrics;
use crate::sse;

/// Accepts connections until `shutdown` resolves; then drains (readiness 503, new streams
/// refused, open streams closed spread over the drain period) and waits for connections to end,
/// all within the shutdown timeout.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, shutdown: impl Future<Output = ()>) {
    // Every connection task holds a watcher, so shutdown waits for streams and hyper's
    // connections alike; hyper's are also told to finish after their current request.
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let hyper_conn = Arc::new(front::HyperConn::new(&shared.config));
    let started_drain = tokio::sync::OnceCell::new();
    let mut drain: Option<tokio::task::JoinHandle<()>> = None;
    let cap = cap::Cap::new(shared.config.max_tcp_connections, cap::Listener::Main, &shared.metrics);
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
                    crate::warn_throttled!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some(slot) = cap.admit(&socket) else { continue };
        let _ = socket.set_nodelay(true);
        let span = tracing::info_span!("conn", %peer, client = Empty, user = Empty, stream = Empty);
        let conn = front::serve(socket, peer, shared.clone(), hyper_conn.clone(), graceful.watcher(), slot);
        tokio::spawn(conn.instrument(span));
    }
    let spent = started_drain.get().map_or(Duration::ZERO, Instant::elapsed);
    let left = shared.config.shutdown_timeout.saturating_sub(spent);
    if tokio::time::timeout(left, graceful.shutdown()).await.is_err() {
        tracing::warn!(timeout = ?shared.config.shutdown_timeout, "shutdown timeout reached; cutting remaining connections");
    }
}

/// Closes every open stream, spread evenly over `period` in random order; each first gets the
/// drain's `retry:` ([`sse::drain_retry`]) so reconnects spread further.
async fn drain_streams(hub: Arc<Hub>, period: Duration) {
    use rand::seq::SliceRandom;
    let mut conns = hub.snapshot();
    conns.shuffle(&mut rand::rng());
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

/// Serves `/metrics` (Prometheus text) on its own listener until `stop`: at most `max`
/// connections, each closed when it sends no complete request head within `header_timeout`
/// (idle keep-alive included), so scrapers and strays alike cannot pile up file descriptors.
pub async fn serve_metrics(
    listener: TcpListener,
    metrics: Metrics,
    stop: CancellationToken,
    header_timeout: Duration,
    max: usize,
) {
    let cap = cap::Cap::new(max, cap::Listener::Metrics, &metrics);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(header_timeout);
    loop {
        let socket = tokio::select! {
            _ = stop.cancelled() => return,
            a = listener.accept() => match a {
                Ok((s, _)) => s,
                Err(e) => {
                    crate::warn_throttled!(error = %e, "metrics listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some(slot) = cap.admit(&socket) else { continue };
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
        let conn = builder.serve_connection(TokioIo::new(socket), service);
        tokio::spawn(async move {
            let _ = conn.await;
            drop(slot);
        });
    }
}
