//! Deadlines on database round trips, measured in the application.
//!
//! A connection can go silent without closing: a failover to a new address, a dead NAT entry or a
//! hung server leave the socket open, and TCP keepalive never fires against a peer (or proxy)
//! that still acknowledges. Only a deadline on each round trip notices it; the connection is then
//! treated as lost: the LISTEN path reconnects and catches up, a pooled connection is dropped.

use std::future::Future;
use std::time::Duration;

use super::PgError;
use crate::metrics::Metrics;

/// `fut`, or `PgError::Deadline` once `limit` has passed.
pub(crate) async fn within<T, E>(
    conn: &'static str,
    limit: Duration,
    fut: impl Future<Output = Result<T, E>>,
) -> Result<T, PgError>
where
    PgError: From<E>,
{
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => r.map_err(PgError::from),
        Err(_) => Err(PgError::Deadline { conn, limit }),
    }
}

/// The pool for replays, session lookups and housekeeping, with the deadline each use keeps.
/// Cheap to clone.
#[derive(Clone)]
pub struct Pool {
    inner: deadpool_postgres::Pool,
    timeout: Duration,
    metrics: Metrics,
}

impl Pool {
    pub fn new(
        cfg: &tokio_postgres::Config,
        size: usize,
        timeout: Duration,
        metrics: Metrics,
    ) -> Result<Self, PgError> {
        Ok(Self { inner: super::pool(cfg, size)?, timeout, metrics })
    }

    /// `work` on a pooled connection; waiting for the connection and the work together get the
    /// database deadline.
    pub async fn run<T>(
        &self,
        work: impl AsyncFnOnce(&mut deadpool_postgres::Client) -> Result<T, PgError>,
    ) -> Result<T, PgError> {
        self.run_for(self.timeout, work).await
    }

    /// The deadline of one round trip.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// `work` on a pooled connection, within `limit` in all (`work` may bound each of its round
    /// trips with `within` and `timeout()`). A connection that overran a deadline is taken out of
    /// the pool and closed: if it went silent, handing it out again would hang the next caller too.
    pub async fn run_for<T>(
        &self,
        limit: Duration,
        work: impl AsyncFnOnce(&mut deadpool_postgres::Client) -> Result<T, PgError>,
    ) -> Result<T, PgError> {
        let deadline = tokio::time::Instant::now() + limit;
        let expired = PgError::Deadline { conn: "pool", limit };
        let Ok(got) = tokio::time::timeout_at(deadline, self.inner.get()).await else {
            self.metrics.db_timeout("pool");
            return Err(expired);
        };
        let mut client = got?;
        let r = tokio::time::timeout_at(deadline, work(&mut client)).await.unwrap_or(Err(expired));
        if let Err(PgError::Deadline { .. }) = r {
            self.metrics.db_timeout("pool");
            drop(deadpool_postgres::Object::take(client));
        }
        r
    }
}
