//! Opening the source's connections within the deadline, and driving the LISTEN connection.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_postgres::tls::NoTlsStream;
use tokio_postgres::{AsyncMessage, NoTls, Notification, Socket};
use tokio_util::sync::CancellationToken;

use super::{End, Source};
use crate::pg::within;

pub(super) enum Msg {
    Notify(Notification),
    Closed(Option<tokio_postgres::Error>),
}

type Connection = tokio_postgres::Connection<Socket, NoTlsStream>;

impl Source {
    /// One connection attempt (`conn`: listen or marker), given up when `shutdown` is cancelled.
    pub(super) async fn connect(
        &self,
        conn: &'static str,
        shutdown: &CancellationToken,
    ) -> Result<(tokio_postgres::Client, Connection), End> {
        // The URL's connect_timeout bounds only the TCP connect; this bounds the startup too.
        let limit = self.timeout.max(self.db.get_connect_timeout().copied().unwrap_or_default());
        tokio::select! {
            _ = shutdown.cancelled() => Err(End::Shutdown),
            r = within(conn, limit, self.db.connect(NoTls)) => r.map_err(End::Lost),
        }
    }
}

/// Spawns the LISTEN connection's driver, which forwards notifications; unbounded because it must
/// never stop polling the socket while the source awaits a query on the same connection.
pub(super) fn drive(mut conn: Connection) -> (JoinHandle<()>, mpsc::UnboundedReceiver<Msg>) {
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

/// Full jitter between half and all of `d`, so replicas do not reconnect in lockstep.
pub(super) fn jitter(d: Duration) -> Duration {
    let half = d / 2;
    half + Duration::from_micros(rand::random::<u64>() % (half.as_micros() as u64 + 1))
}
