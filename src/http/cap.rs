//! Connection caps of the listeners: a slot per open connection, and beyond the cap a cheap refusal at accept.
//!
//! Without a cap, idle connections to any listener (450 to the metrics port were enough) use up
//! the process's file descriptors, and then the main port cannot accept streams or `/readyz`.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, LazyLock};

use prometheus_client::metrics::gauge::Gauge;
use tokio::net::TcpStream;

use crate::metrics::Metrics;

/// Which listener a cap guards, for metrics labels and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Listener {
    Main,
    Metrics,
}

impl Listener {
    fn label(self) -> &'static str {
        match self {
            Self::Main => "main",
            Self::Metrics => "metrics",
        }
    }
}

/// The open connections of one listener, at most `max`.
pub(super) struct Cap {
    count: Arc<Count>,
    max: usize,
    listener: Listener,
    metrics: Metrics,
}

struct Count {
    open: AtomicUsize,
    gauge: Gauge,
}

/// An accepted connection's place under the cap; given back when the connection ends. One
/// pointer: every open stream's task carries it for its whole life.
pub(super) struct Slot(Arc<Count>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Relaxed);
        self.0.gauge.dec();
    }
}

/// What a connection over the cap gets before it is closed: written without waiting, in one
/// piece that fits any socket buffer, so refusing costs no task and no timer.
static REFUSED: LazyLock<Vec<u8>> = LazyLock::new(|| {
    let body = r#"{"error":"too_many_connections","message":"this listener is at its connection limit; retry"}"#;
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 5\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
});

impl Cap {
    /// `max` is `usize::MAX` for no limit.
    pub(super) fn new(max: usize, listener: Listener, metrics: &Metrics) -> Self {
        let count = Count { open: AtomicUsize::new(0), gauge: metrics.tcp_open(listener.label()) };
        Self { count: Arc::new(count), max, listener, metrics: metrics.clone() }
    }

    /// A slot for a connection just accepted, or `None` when the listener is full: the socket
    /// has then been answered 503, and the caller drops (closes) it.
    pub(super) fn admit(&self, socket: &TcpStream) -> Option<Slot> {
        // Only the accept loop adds, so the check and the increment cannot race past `max`.
        if self.count.open.load(Relaxed) < self.max {
            self.count.open.fetch_add(1, Relaxed);
            self.count.gauge.inc();
            return Some(Slot(self.count.clone()));
        }
        let _ = socket.try_write(&REFUSED);
        self.metrics.tcp_refused(self.listener.label());
        // One call site per listener, so each has its own rate limit.
        match self.listener {
            Listener::Main => crate::warn_throttled!(
                max = self.max,
                "connection refused: --max-tcp-connections reached on the main listener"
            ),
            Listener::Metrics => crate::warn_throttled!(
                max = self.max,
                "connection refused: --metrics-max-connections reached on the metrics listener"
            ),
        }
        None
    }
}
