//! Opening the source's connections within the deadline, and driving the LISTEN connection.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_postgres::tls::NoTlsStream;
use tokio_postgres::{AsyncMessage, NoTls, Notification, Socket};
use tokio_util::sync::CancellationToken;

use super::{End, Source};
use crate::defaults::{DEFAULT_BACKOFF_MAX, DEFAULT_BACKOFF_MIN};
use crate::pg::{within, PgError};

pub(in crate::pg) enum Msg {
    Notify(Notification),
    Closed(Option<tokio_postgres::Error>),
}

pub(in crate::pg) type Connection = tokio_postgres::Connection<Socket, NoTlsStream>;

impl Source {
    /// One connection attempt (`conn`: listen or marker), given up when `shutdown` is cancelled.
    pub(super) async fn connect(
        &self,
        conn: &'static str,
        shutdown: &CancellationToken,
    ) -> Result<(tokio_postgres::Client, Connection), End> {
        match open(&self.db, self.timeout, conn, shutdown).await {
            Some(r) => r.map_err(End::Lost),
            None => Err(End::Shutdown),
        }
    }
}

/// One connection attempt within the deadline; `None` when `shutdown` was cancelled first.
pub(in crate::pg) async fn open(
    db: &tokio_postgres::Config,
    timeout: Duration,
    conn: &'static str,
    shutdown: &CancellationToken,
) -> Option<Result<(tokio_postgres::Client, Connection), PgError>> {
    // The URL's connect_timeout bounds only the TCP connect; this bounds the startup too.
    let limit = timeout.max(db.get_connect_timeout().copied().unwrap_or_default());
    tokio::select! {
        _ = shutdown.cancelled() => None,
        r = within(conn, limit, db.connect(NoTls)) => Some(r),
    }
}

/// Spawns the LISTEN connection's driver, which forwards notifications; unbounded because it must
/// never stop polling the socket while the source awaits a query on the same connection.
pub(in crate::pg) fn drive(mut conn: Connection) -> (JoinHandle<()>, mpsc::UnboundedReceiver<Msg>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| conn.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    if tx.send(Msg::Notify(n)).is_err() {
                        break;
                    }
                }
                Some(Ok(AsyncMessage::Notice(n))) => tracing::debug!(notice = %n, "postgres notice"),
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    let _ = tx.send(Msg::Closed(Some(e)));
                    break;
                }
                None => {
                    let _ = tx.send(Msg::Closed(None));
                    break;
                }
            }
        }
    });
    (driver, rx)
}

/// Capped exponential backoff between reconnects; a connection that lived a while starts over.
pub(in crate::pg) struct Backoff(Duration);

impl Backoff {
    pub(in crate::pg) fn new() -> Self {
        Self(DEFAULT_BACKOFF_MIN)
    }

    /// How long to wait before the next attempt, after a connection that lived `lived`.
    pub(in crate::pg) fn next(&mut self, lived: Duration) -> Duration {
        // A connection that lived a while resets the backoff: this is a new outage.
        if lived > DEFAULT_BACKOFF_MAX * 2 {
            self.0 = DEFAULT_BACKOFF_MIN;
        }
        let sleep = jitter(self.0);
        self.0 = (self.0 * 2).min(DEFAULT_BACKOFF_MAX);
        sleep
    }
}

/// Full jitter between half and all of `d`, so replicas do not reconnect in lockstep.
fn jitter(d: Duration) -> Duration {
    let half = d / 2;
    half + Duration::from_micros(rand::random::<u64>() % (half.as_micros() as u64 + 1))
}
