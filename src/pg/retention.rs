//! Retention: prunes old rows of `pgsse.events` in small batches and records how far it went.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::PgError;

pub const DEFAULT_RETENTION: Duration = Duration::from_secs(24 * 3600);
/// Rows deleted per statement: small enough not to hold locks or bloat WAL bursts.
pub const BATCH: i64 = 1000;
/// Pause between batches when there is more to delete.
const BATCH_PAUSE: Duration = Duration::from_millis(50);

/// Deletes at most one batch. Returns how many rows went. Every replica may run this: batches
/// skip rows another replica is deleting.
pub async fn prune_batch(pool: &super::Pool, retention: Duration) -> Result<u64, PgError> {
    pool.run(async |client| prune_on(client, retention).await).await
}

async fn prune_on(client: &deadpool_postgres::Client, retention: Duration) -> Result<u64, PgError> {
    // `pruned_tx` only moves up: the gateway resets streams asking for history at or below it.
    let row = client
        .query_one(
            "WITH doomed AS ( \
                 SELECT id FROM pgsse.events WHERE created_at < now() - make_interval(secs => $1) \
                 ORDER BY created_at LIMIT $2 FOR UPDATE SKIP LOCKED), \
             gone AS (DELETE FROM pgsse.events e USING doomed d WHERE e.id = d.id RETURNING e.tx), \
             top AS (SELECT tx FROM gone ORDER BY tx DESC LIMIT 1), \
             moved AS (UPDATE pgsse.meta SET pruned_tx = top.tx FROM top WHERE pgsse.meta.pruned_tx < top.tx RETURNING 1) \
             SELECT count(*) FROM gone",
            &[&retention.as_secs_f64(), &BATCH],
        )
        .await?;
    let n: i64 = row.try_get(0)?;
    Ok(n.max(0) as u64)
}

/// Prunes every `interval` until shutdown; errors are logged and retried next round.
pub async fn run(pool: super::Pool, retention: Duration, interval: Duration, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        let mut total = 0u64;
        loop {
            match prune_batch(&pool, retention).await {
                Ok(n) => {
                    total += n;
                    if n < BATCH as u64 {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "retention: pruning pgsse.events failed; will retry");
                    break;
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(BATCH_PAUSE) => {}
            }
        }
        if total > 0 {
            tracing::info!(rows = total, "retention: pruned old events");
        }
    }
}
