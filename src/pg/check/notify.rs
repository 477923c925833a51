//! `pgsse check`'s notify findings: writers queued on the NOTIFY lock, and the relay's state.

use std::time::Duration;

use super::{Level, Report};
use crate::pg::PgError;

const LOCK_WAITERS: &str = "SELECT count(*) FROM pg_locks WHERE locktype = 'object' \
     AND classid = 'pg_database'::regclass AND objid = 0 AND NOT granted";

pub(super) async fn check(client: &tokio_postgres::Client, mode: &str, report: &mut Report) -> Result<(), PgError> {
    // A few samples: one waiter for an instant is normal under load, writers waiting in every
    // sample are not.
    let mut seen = Vec::new();
    for _ in 0..5 {
        seen.push(client.query_one(LOCK_WAITERS, &[]).await?.try_get::<_, i64>(0)?);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (min, max) = (seen.iter().min().copied().unwrap_or(0), seen.iter().max().copied().unwrap_or(0));
    let relay_fix =
        Some("SELECT pgsse.set_notify_mode('relay');  -- as the DBA: writers stop NOTIFYing at once".to_string());
    match (mode, min, max) {
        ("commit", 1.., _) => report.add("notify lock", Level::Error, format!("{max} sessions are waiting on PostgreSQL's NOTIFY commit lock (commit mode: writers NOTIFY as they commit, one at a time)"), relay_fix),
        ("commit", 0, 1..) => report.add("notify lock", Level::Warning, format!("up to {max} sessions waited on the NOTIFY commit lock in 0.5 s (commit mode)"), relay_fix),
        (_, _, 1..) => report.add("notify lock", Level::Warning, format!("up to {max} sessions wait on the NOTIFY commit lock though pgsse's writers do not NOTIFY in relay mode: another NOTIFY user of this instance, or session revocations"), Some("find them: SELECT pid, query FROM pg_stat_activity WHERE wait_event = 'object'".into())),
        _ => report.ok("notify lock", "no session waits on PostgreSQL's NOTIFY commit lock"),
    }
    if mode != "relay" {
        // As in relay mode below: a state this role cannot read is a finding, not a failed check.
        if let Err(e) = draining(client, report).await {
            report.add("notify mode", Level::Warning, format!("commit; cannot read the relay's state: {e}"), None);
        }
        return Ok(());
    }
    let row = client
        .query_one(
            "SELECT relay_owner, extract(epoch FROM now() - relay_until)::float8, \
                    (SELECT count(*) FROM pgsse.events AS e WHERE e.tx >= pg_snapshot_xmax(m.relay_snapshot)) \
               FROM pgsse.meta AS m",
            &[],
        )
        .await;
    match row {
        Ok(row) => {
            let owner: Option<String> = row.try_get(0)?;
            let expired: Option<f64> = row.try_get(1)?;
            let waiting: i64 = row.try_get(2)?;
            match (owner, expired) {
                (Some(o), Some(e)) if e < 5.0 => report.ok("notify mode", format!("relay, relayed by gateway {o}")),
                _ => report.add(
                    "notify mode",
                    if waiting > 0 { Level::Error } else { Level::Warning },
                    format!("relay, but no gateway is relaying: {waiting} events wait in the log until one runs"),
                    Some("start a gateway (`pgsse serve`), or SELECT pgsse.set_notify_mode('commit')".into()),
                ),
            }
        }
        Err(e) => report.add(
            "notify mode",
            Level::Warning,
            format!("relay; cannot read the relay's state: {}", crate::pg::describe(&e)),
            None,
        ),
    }
    Ok(())
}

/// Commit mode, and whether the relay has finished what relay mode left: after a switch back it
/// keeps relaying (and so announces commits twice) until every transaction of the database that
/// was running then has ended. Normally a moment; one left open holds it for as long as it is.
async fn draining(client: &tokio_postgres::Client, report: &mut Report) -> Result<(), PgError> {
    // Whether relay mode left something, whether a relay holds the lease to finish it (renewed by
    // every round), and what it waits for, by pid and then by prepared transaction.
    const STATE: &str = "SELECT m.relay_snapshot IS NOT NULL, \
            coalesce(m.relay_until > now() - interval '1 second', false), \
            (SELECT string_agg(w.what, ', ' ORDER BY w.k, w.n) FROM ( \
                SELECT 0 AS k, a.pid::bigint AS n, 'pid ' || a.pid || coalesce(' (open since ' \
                       || to_char(a.xact_start, 'YYYY-MM-DD HH24:MI:SS TZ') || ', ' || a.state || ')', \
                       ' (its details are hidden from this role)') AS what \
                  FROM pg_locks AS l JOIN pg_stat_activity AS a ON a.pid = l.pid \
                 WHERE l.locktype = 'virtualxid' AND l.granted AND l.virtualxid = ANY (m.relay_drain) \
                UNION ALL \
                SELECT 1, p.transaction::text::bigint, 'prepared transaction ' || quote_literal(p.gid) \
                       || ' (prepared ' || to_char(p.prepared, 'YYYY-MM-DD HH24:MI:SS TZ') || ')' \
                  FROM pg_prepared_xacts AS p \
                 WHERE 'prepared ' || p.transaction::text = ANY (m.relay_drain)) AS w) \
       FROM pgsse.meta AS m";
    let row = client.query_one(STATE, &[]).await?;
    let (leftover, relaying): (bool, bool) = (row.try_get(0)?, row.try_get(1)?);
    let waits: Option<String> = row.try_get(2)?;
    let commit = "commit: each writing statement NOTIFYs in the app's transaction";
    match (leftover, relaying, waits) {
        (false, ..) => report.ok("notify mode", format!("{commit} (relay mode spares writers the NOTIFY lock)")),
        (true, false, _) => report.add(
            "notify mode",
            Level::Warning,
            format!("{commit}, but no gateway is relaying to finish the switch from relay mode: what writers logged in relay mode and is not announced yet waits in the log until one does"),
            Some("start a gateway (`pgsse serve`)".into()),
        ),
        (true, true, Some(waits)) => report.add(
            "notify mode",
            Level::Warning,
            format!("{commit}; the relay is still finishing relay mode, announcing every commit a second time (gateways drop the copies) until these transactions, running at the switch, end: {waits}"),
            Some("let them finish, or end them (SELECT pg_terminate_backend(<pid>) / COMMIT PREPARED)".into()),
        ),
        (true, true, None) => report.ok("notify mode", format!("{commit}; the relay is finishing relay mode (its next round ends it)")),
    }
    Ok(())
}
