//! Retention: prunes old rows of `pgsse.events` in small batches and records how far it went.

use std::sync::Mutex;
use std::time::Duration;

use tokio_postgres::error::SqlState;
use tokio_util::sync::CancellationToken;

use super::PgError;
use crate::metrics::Metrics;

/// Rows deleted per statement: small enough not to hold locks or bloat WAL bursts.
pub const BATCH: i64 = 1000;
/// Pause between batches when there is more to delete.
const BATCH_PAUSE: Duration = Duration::from_millis(50);
/// Advisory lock (per database) held by each pruning transaction, so replicas take turns instead
/// of deleting the same batch. Unlike row locks it needs no privilege. "pgsse_rt" in ASCII.
pub const LOCK_KEY: i64 = 0x7067_7373_655f_7274;

/// What one call of [`prune_batch`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Batch {
    /// Deleted this many rows.
    Pruned(u64),
    /// Another replica holds the retention lock: nothing was done.
    Busy,
}

/// Deletes at most one batch, unless another replica is pruning. Needs only the documented
/// grants: SELECT, DELETE on `pgsse.events` and SELECT, UPDATE on `pgsse.meta`.
pub async fn prune_batch(pool: &super::Pool, retention: Duration) -> Result<Batch, PgError> {
    pool.run(async |client| prune_on(client, retention).await).await
}

async fn prune_on(client: &mut deadpool_postgres::Client, retention: Duration) -> Result<Batch, PgError> {
    let tx = client.transaction().await?;
    let locked: bool = tx.query_one("SELECT pg_try_advisory_xact_lock($1)", &[&LOCK_KEY]).await?.try_get(0)?;
    if !locked {
        tx.rollback().await?;
        return Ok(Batch::Busy);
    }
    // `pruned_tx` only moves up: the gateway resets streams asking for history at or below it.
    // The oldest rows by transaction: the primary key (tx, id) walks them in the order
    // transactions took their ids, close to the order of created_at (their start), without an
    // index on created_at (which would cost every writer an index insert). A transaction that
    // started long before it took its id sits among newer ones in that order, and waits for them.
    let row = tx
        .query_one(
            "WITH doomed AS ( \
                 SELECT f.tx, f.id FROM (SELECT tx, id, created_at FROM pgsse.events ORDER BY tx, id LIMIT $2) AS f \
                 WHERE f.created_at < now() - make_interval(secs => $1)), \
             gone AS (DELETE FROM pgsse.events WHERE (tx, id) IN (SELECT tx, id FROM doomed) RETURNING tx), \
             top AS (SELECT tx FROM gone ORDER BY tx DESC LIMIT 1), \
             moved AS (UPDATE pgsse.meta SET pruned_tx = top.tx FROM top WHERE pgsse.meta.pruned_tx < top.tx RETURNING 1) \
             SELECT count(*) FROM gone",
            &[&retention.as_secs_f64(), &BATCH],
        )
        .await?;
    let n: i64 = row.try_get(0)?;
    tx.commit().await?;
    Ok(Batch::Pruned(n.max(0) as u64))
}

/// How retention is doing, for `/readyz`: written by [`run`], read by the HTTP handlers.
#[derive(Debug, Default)]
pub struct RetentionStatus(Mutex<StatusInner>);

#[derive(Debug, Default)]
struct StatusInner {
    last_error: Option<String>,
    last_success_at: Option<u64>,
}

impl RetentionStatus {
    fn inner(&self) -> std::sync::MutexGuard<'_, StatusInner> {
        // The data stays consistent even if a holder panicked: two plain fields.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a round that ended without error; true when the previous one had failed.
    fn succeeded(&self) -> bool {
        let mut s = self.inner();
        s.last_success_at = Some(crate::clock::unix_now());
        s.last_error.take().is_some()
    }

    /// Records a failed round; true when its error differs from the previous round's.
    fn failed(&self, error: &str) -> bool {
        let mut s = self.inner();
        let new = s.last_error.as_deref() != Some(error);
        s.last_error = Some(error.to_string());
        new
    }

    /// `{"ok", "lastError", "lastSuccessAt"}`: `ok` is false while the last round failed;
    /// `lastSuccessAt` (unix seconds) is null until a round ends without error.
    pub fn to_json(&self) -> serde_json::Value {
        let s = self.inner();
        serde_json::json!({
            "ok": s.last_error.is_none(),
            "lastError": s.last_error,
            "lastSuccessAt": s.last_success_at,
        })
    }
}

/// The server's own message when there is one ("permission denied for table events"), and for a
/// missing privilege the grant that fixes it.
fn explain(e: &PgError) -> (String, Option<&'static str>) {
    let Some(db) = (match e {
        PgError::Db(e) => e.as_db_error(),
        _ => None,
    }) else {
        return (e.to_string(), None);
    };
    let message = db.message().to_string();
    if *db.code() != SqlState::INSUFFICIENT_PRIVILEGE {
        return (message, None);
    }
    let grant = if message.contains("schema pgsse") {
        "GRANT USAGE ON SCHEMA pgsse"
    } else if message.contains("table meta") {
        "GRANT SELECT, UPDATE ON pgsse.meta"
    } else {
        "GRANT SELECT, DELETE ON pgsse.events"
    };
    (message, Some(grant))
}

/// Prunes every `interval` until shutdown. A failed round is retried the next one; it is
/// counted, shown in `status`, and logged once per distinct error rather than every round.
pub async fn run(
    pool: super::Pool,
    retention: Duration,
    interval: Duration,
    status: std::sync::Arc<RetentionStatus>,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        let mut total = 0u64;
        let outcome = loop {
            match prune_batch(&pool, retention).await {
                Ok(Batch::Pruned(n)) => {
                    total += n;
                    metrics.retention_pruned_rows.inc_by(n);
                    if n < BATCH as u64 {
                        break Ok(());
                    }
                }
                Ok(Batch::Busy) => break Ok(()),
                Err(e) => break Err(e),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(BATCH_PAUSE) => {}
            }
        };
        match outcome {
            Ok(()) => {
                if status.succeeded() {
                    tracing::info!("retention: pruning pgsse.events works again");
                }
            }
            Err(e) => {
                metrics.retention_failures.inc();
                let (error, grant) = explain(&e);
                if status.failed(&error) {
                    match grant {
                        Some(grant) => tracing::warn!(
                            %error,
                            "retention: permission denied, so pgsse.events is not pruned and keeps growing; \
                             {grant} TO the gateway's role (see the Privileges section of sql/install.sql)"
                        ),
                        None => tracing::warn!(%error, "retention: pruning pgsse.events failed; retrying every round"),
                    }
                }
            }
        }
        if total > 0 {
            tracing::info!(rows = total, "retention: pruned old events");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_reports_the_last_round_and_flags_new_errors_once() {
        let s = RetentionStatus::default();
        assert_eq!(s.to_json(), serde_json::json!({"ok": true, "lastError": null, "lastSuccessAt": null}));
        assert!(s.failed("permission denied for table events"));
        assert!(!s.failed("permission denied for table events"), "the same error is not new");
        assert_eq!(s.to_json()["ok"], false);
        assert_eq!(s.to_json()["lastError"], "permission denied for table events");
        assert!(s.failed("connection pool: timed out"), "a different error is new");
        assert!(s.succeeded(), "a success after a failure is news");
        assert!(!s.succeeded());
        let v = s.to_json();
        assert_eq!((v["ok"].as_bool(), v["lastError"].is_null()), (Some(true), true), "{v}");
        assert!(v["lastSuccessAt"].as_u64().is_some_and(|t| t > 1_600_000_000), "{v}");
    }
}
