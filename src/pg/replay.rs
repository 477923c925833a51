//! Replay: the events a resuming stream missed, read from `pgsse.events` by transaction id.
//!
//! Never `id > last_id`: ids are taken at insert time, not commit time. A stream resuming from
//! horizon H gets every committed row of its user (and every broadcast) with `tx >= H`, in log
//! id order, which follows the order of changes to any one row.

use std::time::Duration;

use super::{within, PgError, StoredEvent, EVENT_COLUMNS};
use crate::sse::{EventId, History};

#[derive(Debug)]
pub enum Replay {
    Events(Vec<StoredEvent>),
    Reset(ResetReason),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetReason {
    /// Rows at or above the horizon were pruned by retention.
    Pruned,
    /// The horizon is beyond any transaction id the database has handed out.
    Future,
    /// More than the replay limit.
    TooMany,
    /// The position belongs to another history of the database (before a failover or restore),
    /// or to a gateway version that did not say which.
    HistoryChanged,
}

impl ResetReason {
    pub fn as_str(self) -> &'static str {
        match self {
            ResetReason::Pruned => "history_pruned",
            ResetReason::Future => "unknown_position",
            ResetReason::TooMany => "too_many_missed_events",
            ResetReason::HistoryChanged => "history_changed",
        }
    }

    /// What the client is told, beside the reason.
    pub fn message(self) -> &'static str {
        match self {
            ResetReason::HistoryChanged => {
                "refetch: the database's history changed (failover or restore) since this position"
            }
            _ => "refetch: the missed events cannot be replayed",
        }
    }
}

/// What `user` missed from position `from`, or why the stream must reset; read within `limit` in
/// all and `--db-timeout` per round trip (a connection that does not answer in time is dropped
/// from the pool). `history` is the gateway's current history; the database's is checked too, in
/// the same snapshot as the rows, so a replay on a database that failed over before the gateway
/// noticed resets as well.
pub async fn replay(
    pool: &super::Pool,
    user: &str,
    from: EventId,
    history: u32,
    max: usize,
    limit: Duration,
) -> Result<Replay, PgError> {
    if from.history != History::Known(history) {
        return Ok(Replay::Reset(ResetReason::HistoryChanged));
    }
    let t = pool.timeout();
    pool.run_for(limit, async |client| read(client, t, user, from.horizon, history, max).await).await
}

async fn read(
    client: &mut deadpool_postgres::Client,
    t: Duration,
    user: &str,
    from: u64,
    history: u32,
    max: usize,
) -> Result<Replay, PgError> {
    // One snapshot for the checks and the rows, so a concurrent prune cannot slip between them.
    let start = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start();
    let tx = within("pool", t, start).await?;
    let row = within(
        "pool",
        t,
        tx.query_one(
            "SELECT pruned_tx::text, pg_snapshot_xmax(pg_current_snapshot())::text, pgsse.history() FROM pgsse.meta",
            &[],
        ),
    )
    .await?;
    let pruned = super::parse_xid(row.try_get(0)?)?;
    let xmax = super::parse_xid(row.try_get(1)?)?;
    if super::payload::parse_history(row.try_get(2)?) != Some(history) {
        return Ok(Replay::Reset(ResetReason::HistoryChanged));
    }
    if from > xmax {
        return Ok(Replay::Reset(ResetReason::Future));
    }
    if from <= pruned {
        return Ok(Replay::Reset(ResetReason::Pruned));
    }
    let limit = i64::try_from(max).unwrap_or(i64::MAX).saturating_add(1);
    let q = format!(
        "SELECT {EVENT_COLUMNS} FROM pgsse.events \
         WHERE (user_id = $1 OR user_id IS NULL) AND tx >= $2::text::xid8 ORDER BY id LIMIT $3"
    );
    let rows = within("pool", t, tx.query(&q, &[&user, &from.to_string(), &limit])).await?;
    within("pool", t, tx.commit()).await?;
    if rows.len() > max {
        return Ok(Replay::Reset(ResetReason::TooMany));
    }
    rows.iter().map(StoredEvent::from_row).collect::<Result<_, _>>().map(Replay::Events)
}
