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
    Events(Page),
    Reset(ResetReason),
}

/// Which of a user's log rows to read: `tx` in `from..until` (no upper bound when `None`), log
/// id above `after`, in log id order; at most `rows`, and only as many as fit in `bytes` (at
/// least one).
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub from: u64,
    pub until: Option<u64>,
    pub after: i64,
    pub rows: usize,
    pub bytes: usize,
}

/// The first rows of a window, and how much the window held.
#[derive(Debug, Default)]
pub struct Page {
    pub events: Vec<StoredEvent>,
    /// Rows in the window, counted up to `rows` + 1.
    pub total: usize,
    /// Their size (event name and data).
    pub total_bytes: u64,
    /// The window holds rows past `events`.
    more: bool,
}

impl Page {
    /// Every row of the window is in `events`.
    pub fn complete(&self) -> bool {
        !self.more
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetReason {
    /// Rows at or above the horizon were pruned by retention.
    Pruned,
    /// The horizon is beyond any transaction id the database has handed out.
    Future,
    /// More than the replay limit (`DEFAULT_MAX_REPLAY_EVENTS` events or
    /// `DEFAULT_MAX_REPLAY_BYTES` bytes).
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

/// The rows of `window` for `user` (what it missed from position `from`, whose horizon is
/// `window.from`), or why the
/// stream must reset; read within `limit` in all and `--db-timeout` per round trip (a connection
/// that does not answer in time is dropped from the pool). `history` is the gateway's current
/// history; the database's is checked too, in the same snapshot as the rows, so a replay on a
/// database that failed over before the gateway noticed resets as well.
pub async fn replay(
    pool: &super::Pool,
    user: &str,
    from: EventId,
    history: u32,
    window: Window,
    limit: Duration,
) -> Result<Replay, PgError> {
    if from.history != History::Known(history) {
        return Ok(Replay::Reset(ResetReason::HistoryChanged));
    }
    let t = pool.timeout();
    pool.run_for(limit, async |client| read(client, t, user, history, window).await).await
}

async fn read(
    client: &mut deadpool_postgres::Client,
    t: Duration,
    user: &str,
    history: u32,
    w: Window,
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
    if w.from > xmax {
        return Ok(Replay::Reset(ResetReason::Future));
    }
    if w.from <= pruned {
        return Ok(Replay::Reset(ResetReason::Pruned));
    }
    // The sizes are summed in the database, so rows past `bytes` are never sent here: memory
    // per read is bounded by the window, whatever the user missed.
    let q = format!(
        "SELECT {EVENT_COLUMNS}, n::bigint, total::bigint FROM ( \
           SELECT *, sum(len) OVER (ORDER BY id) AS upto, count(*) OVER () AS n, sum(len) OVER () AS total FROM ( \
             SELECT id, tx, user_id, event, data, octet_length(event) + octet_length(data::text) AS len \
             FROM pgsse.events \
             WHERE (user_id = $1 OR user_id IS NULL) AND tx >= $2::text::xid8 AND tx < $3::text::xid8 AND id > $4 \
             ORDER BY id LIMIT $5) l) w \
         WHERE upto - len < $6 ORDER BY id"
    );
    let until = w.until.unwrap_or(u64::MAX).to_string();
    let rows = i64::try_from(w.rows).unwrap_or(i64::MAX).saturating_add(1);
    let bytes = i64::try_from(w.bytes.max(1)).unwrap_or(i64::MAX);
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 6] =
        [&user, &w.from.to_string(), &until, &w.after, &rows, &bytes];
    let rows = within("pool", t, tx.query(&q, &params)).await?;
    within("pool", t, tx.commit()).await?;
    let mut page = Page::default();
    if let Some(first) = rows.first() {
        page.total = usize::try_from(first.try_get::<_, i64>(5)?).unwrap_or(usize::MAX);
        page.total_bytes = u64::try_from(first.try_get::<_, i64>(6)?).unwrap_or(0);
    }
    page.events = rows.iter().take(w.rows).map(StoredEvent::from_row).collect::<Result<_, _>>()?;
    page.more = page.events.len() < page.total;
    Ok(Replay::Events(page))
}
