//! The chaos run's harness (`tests/chaos.rs`): writers that tolerate PostgreSQL going away and
//! record what they committed, browser-like clients that reconnect at random, and what both saw.

use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use super::gateway::try_stream;
use super::split_id;

/// Final drain: a client is done when no row event came for this long (after its replay).
pub const QUIET: Duration = Duration::from_secs(2);
pub const FINAL_DRAIN_MAX: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Created,
    Read,
    Updated,
    Deleted,
}

/// What a row event says: kind, notification row id, and a hash of the whole data (as JSON value).
pub fn parse_change(data: &str) -> Option<(Kind, i64, u64)> {
    let v: serde_json::Value = serde_json::from_str(data).ok()?;
    let kind = match v["type"].as_str()? {
        "created" => Kind::Created,
        "read" => Kind::Read,
        "updated" => Kind::Updated,
        "deleted" => Kind::Deleted,
        _ => return None,
    };
    let row = match kind {
        Kind::Created | Kind::Updated => v["notification"]["id"].as_i64()?,
        Kind::Read | Kind::Deleted => v["notificationId"].as_i64()?,
    };
    let mut h = std::collections::hash_map::DefaultHasher::new();
    v.to_string().hash(&mut h);
    Some((kind, row, h.finish()))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// COMMIT returned OK.
    Acked,
    /// The connection was gone before COMMIT could be sent: cannot have committed.
    NotSent,
    /// COMMIT was sent but its outcome is unknown; resolved from `pgsse.events`.
    Unknown,
    UnknownCommitted,
    UnknownAborted,
}

/// One writer transaction (one statement, one event).
#[derive(Debug, Clone)]
pub struct TxRecord {
    pub writer: usize,
    pub tx: u64,
    pub commit_sent: Instant,
    pub outcome: Outcome,
    pub kind: Kind,
    pub row: i64,
    pub user: String,
    pub large: bool,
    /// The row's read flag after this change, when it changes it.
    pub sets_read: Option<bool>,
}

pub struct WriterRow {
    id: i64,
    user: String,
    read: bool,
}

pub enum Op {
    Insert { user: String, large: bool },
    Read(usize),
    Unread(usize),
    Title(usize),
    Delete(usize),
}

pub async fn writer_connect(db: &str) -> Option<tokio_postgres::Client> {
    let (client, conn) = tokio_postgres::connect(db, tokio_postgres::NoTls).await.ok()?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Some(client)
}

/// Inserts, updates (read flips and other changes) and deletes rows it created, one statement per
/// transaction, holding each transaction open 0-200 ms before COMMIT. Tolerates Postgres going away.
pub async fn writer(db: String, w: usize, users: Arc<Vec<String>>, stop: Arc<AtomicBool>, seed: u64) -> Vec<TxRecord> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut records: Vec<TxRecord> = Vec::new();
    let mut rows: Vec<WriterRow> = Vec::new();
    let mut client: Option<tokio_postgres::Client> = None;
    let mut unresolved: Option<usize> = None;
    let mut seq = 0u64;
    let apply = |rows: &mut Vec<WriterRow>, r: &TxRecord| match r.kind {
        Kind::Created => rows.push(WriterRow { id: r.row, user: r.user.clone(), read: false }),
        Kind::Read | Kind::Updated => {
            if let Some(read) = r.sets_read {
                rows.iter_mut().filter(|x| x.id == r.row).for_each(|x| x.read = read);
            }
        }
        Kind::Deleted => rows.retain(|x| x.id != r.row),
    };
    while !stop.load(Ordering::Acquire) {
        let c = match client.take() {
            Some(c) if !c.is_closed() => c,
            _ => match writer_connect(&db).await {
                Some(c) => c,
                None => {
                    tokio::time::sleep(Duration::from_millis(rng.random_range(50..250))).await;
                    continue;
                }
            },
        };
        // A COMMIT whose outcome is unknown: the log says whether it committed (the server that
        // answered this query has no trace of that transaction in progress any more).
        if let Some(i) = unresolved {
            let q = c
                .query_one("SELECT count(*) FROM pgsse.events WHERE tx = $1::text::xid8", &[&records[i].tx.to_string()])
                .await;
            match q {
                Ok(row) => {
                    let n: i64 = row.get(0);
                    records[i].outcome = if n > 0 { Outcome::UnknownCommitted } else { Outcome::UnknownAborted };
                    if n > 0 {
                        let r = records[i].clone();
                        apply(&mut rows, &r);
                    }
                    unresolved = None;
                }
                Err(_) => continue,
            }
        }
        seq += 1;
        let op = if rows.is_empty() || rng.random_bool(0.4) {
            Op::Insert { user: users[rng.random_range(0..users.len())].clone(), large: rng.random_bool(0.1) }
        } else {
            let i = rng.random_range(0..rows.len());
            match rng.random_range(0..10) {
                0..=3 if !rows[i].read => Op::Read(i),
                0..=1 => Op::Unread(i),
                2..=6 => Op::Title(i),
                _ => Op::Delete(i),
            }
        };
        if c.batch_execute("BEGIN").await.is_err() {
            continue; // reconnect
        }
        let title = format!("w{w}-{seq}");
        let sets_read = match &op {
            Op::Read(_) => Some(true),
            Op::Unread(_) => Some(false),
            _ => None,
        };
        let (q, kind, user, large) = match &op {
            Op::Insert { user, large } => {
                let message = if *large {
                    let len = rng.random_range(10_000..20_000);
                    (0..len).map(|i| char::from(b'a' + ((i + seq as usize) % 26) as u8)).collect()
                } else {
                    format!("message {seq} of writer {w}")
                };
                let meta = format!("{{\"writer\": {w}, \"seq\": {seq}}}");
                let q = c
                    .query_one(
                        "INSERT INTO notifications (user_id, type, title, message, metadata) \
                         VALUES ($1, 'info', $2, $3, $4::text::jsonb) RETURNING id, pg_current_xact_id()::text",
                        &[user, &title, &message, &meta],
                    )
                    .await;
                (q, Kind::Created, user.clone(), *large)
            }
            Op::Read(i) | Op::Unread(i) | Op::Title(i) | Op::Delete(i) => {
                let (sql, kind) = match &op {
                    Op::Read(_) => {
                        ("UPDATE notifications SET read = true WHERE id = $1 AND $2::text IS NOT NULL", Kind::Read)
                    }
                    Op::Unread(_) => {
                        ("UPDATE notifications SET read = false WHERE id = $1 AND $2::text IS NOT NULL", Kind::Updated)
                    }
                    Op::Title(_) => ("UPDATE notifications SET title = $2 WHERE id = $1", Kind::Updated),
                    _ => ("DELETE FROM notifications WHERE id = $1 AND $2::text IS NOT NULL", Kind::Deleted),
                };
                let sql = format!("{sql} RETURNING id, pg_current_xact_id()::text");
                let id = rows[*i].id as i32;
                let q = c.query_one(&sql, &[&id, &title]).await;
                (q, kind, rows[*i].user.clone(), false)
            }
        };
        let (row, tx) = match q {
            Ok(r) => {
                let id: i32 = r.get(0);
                let tx: String = r.get(1);
                (id as i64, tx.parse::<u64>().expect("xid"))
            }
            Err(_) => {
                let _ = c.batch_execute("ROLLBACK").await;
                client = Some(c);
                continue;
            }
        };
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..=200))).await;
        let commit_sent = Instant::now();
        let mut rec =
            TxRecord { writer: w, tx, commit_sent, outcome: Outcome::NotSent, kind, row, user, large, sets_read };
        if c.is_closed() {
            records.push(rec);
            continue;
        }
        match c.batch_execute("COMMIT").await {
            Ok(()) => {
                rec.outcome = Outcome::Acked;
                apply(&mut rows, &rec);
                records.push(rec);
                client = Some(c);
            }
            Err(_) => {
                rec.outcome = Outcome::Unknown;
                records.push(rec);
                unresolved = Some(records.len() - 1);
            }
        }
    }
    // Resolve a last unknown outcome before handing the records over.
    if let Some(i) = unresolved {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(c) = writer_connect(&db).await {
                let tx = records[i].tx.to_string();
                let q = c.query_one("SELECT count(*) FROM pgsse.events WHERE tx = $1::text::xid8", &[&tx]).await;
                if let Ok(row) = q {
                    let n: i64 = row.get(0);
                    records[i].outcome = if n > 0 { Outcome::UnknownCommitted } else { Outcome::UnknownAborted };
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    records
}

/// One row event as a client received it.
#[derive(Debug, Clone)]
pub struct Recv {
    pub log_id: i64,
    pub kind: Kind,
    pub row: i64,
    pub hash: u64,
    /// Index into `ClientReport::conns`.
    pub conn: usize,
    /// Among the first `replayed` events of a resumed connection.
    pub replay: bool,
    pub at: Instant,
}

/// One successful stream (200 + `connected`).
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub at: Instant,
    pub gateway: usize,
    pub from: Option<String>,
    pub connected_id: Option<String>,
    pub resumed: bool,
    pub replayed: u64,
    pub final_round: bool,
    pub ended: Option<(Instant, &'static str)>,
}

#[derive(Debug, Default)]
pub struct ClientReport {
    pub idx: usize,
    pub user: String,
    pub home: usize,
    pub first_connected: Option<Instant>,
    pub recv: Vec<Recv>,
    pub conns: Vec<ConnInfo>,
    pub refused: u64,
    pub unavailable: u64,
    pub resets: Vec<String>,
    pub anomalies: Vec<String>,
    pub finished: bool,
}

pub struct ClientCtx {
    pub addrs: [String; 2],
    pub final_round: Arc<AtomicBool>,
}

/// A browser-like client: connects (retrying refused connections and 503s with a short backoff),
/// remembers the last event id, drops the connection at random and resumes, sometimes on the
/// other gateway. When `final_round` is set it reconnects one last time and drains until quiet.
pub async fn sse_client(idx: usize, user: String, ctx: Arc<ClientCtx>, seed: u64) -> ClientReport {
    let mut rng = StdRng::seed_from_u64(seed);
    let home = idx % 2;
    let mut r = ClientReport { idx, user: user.clone(), home, ..Default::default() };
    let mut last_id: Option<String> = None;
    let mut final_deadline: Option<Instant> = None;
    'connect: loop {
        let is_final = ctx.final_round.load(Ordering::Acquire);
        if is_final {
            let d = *final_deadline.get_or_insert_with(|| Instant::now() + FINAL_DRAIN_MAX);
            if Instant::now() > d {
                r.anomalies.push("final drain did not complete in time".into());
                break;
            }
        }
        let gw = if rng.random_bool(0.25) { 1 - home } else { home };
        let mut c = match try_stream(&ctx.addrs[gw], &user, last_id.as_deref()).await {
            Err(_) => {
                r.refused += 1;
                tokio::time::sleep(Duration::from_millis(rng.random_range(30..150))).await;
                continue;
            }
            Ok(c) if c.status == 503 => {
                r.unavailable += 1;
                tokio::time::sleep(Duration::from_millis(rng.random_range(30..150))).await;
                continue;
            }
            Ok(c) if c.status != 200 => {
                let status = c.status;
                let body = c.body_text().await;
                r.anomalies.push(format!("status {status} from gateway {gw}: {body}"));
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            Ok(c) => c,
        };
        let Some(first) = c.next_event(Duration::from_secs(15)).await else {
            r.refused += 1; // the gateway went away between the head and the first event
            continue;
        };
        if first.event != "connected" {
            r.anomalies.push(format!("first event is not `connected`: {first:?}"));
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(&first.data).unwrap_or_default();
        let resumed = v["resumed"].as_bool().unwrap_or(false);
        let replayed = v["replayed"].as_u64().unwrap_or(0);
        if v["userId"] != user.as_str() {
            r.anomalies.push(format!("connected for the wrong user: {}", first.data));
        }
        if r.first_connected.is_none() {
            r.first_connected = Some(Instant::now());
        }
        // A resume that is not `resumed` must say why, with a reset right after `connected`.
        let mut expect_reset = last_id.is_some() && !resumed;
        let conn = r.conns.len();
        r.conns.push(ConnInfo {
            at: Instant::now(),
            gateway: gw,
            from: last_id.clone(),
            connected_id: first.id.clone(),
            resumed,
            replayed,
            final_round: is_final,
            ended: None,
        });
        if first.id.is_some() {
            last_id = first.id.clone();
        }
        let mut replay_left = replayed;
        let disconnect_at = Instant::now() + Duration::from_millis(rng.random_range(300..3000));
        let mut last_row_event = Instant::now();
        loop {
            if !is_final && ctx.final_round.load(Ordering::Acquire) {
                r.conns[conn].ended = Some((Instant::now(), "final round"));
                continue 'connect;
            }
            let wait = if is_final {
                Duration::from_millis(250)
            } else {
                disconnect_at.saturating_duration_since(Instant::now()).min(Duration::from_millis(250))
            };
            match c.next_event(wait).await {
                Some(ev) => {
                    if expect_reset && ev.event != "reset" {
                        r.anomalies.push(format!("resume not `resumed` and no reset after it: {ev:?}"));
                    }
                    expect_reset = false;
                    if let Some(id) = &ev.id {
                        last_id = Some(id.clone());
                    }
                    match ev.event.as_str() {
                        "notification" => {
                            last_row_event = Instant::now();
                            let lid = ev.id.as_deref().and_then(|id| split_id(id).1);
                            match (lid, parse_change(&ev.data)) {
                                (Some(log_id), Some((kind, row, hash))) => r.recv.push(Recv {
                                    log_id,
                                    kind,
                                    row,
                                    hash,
                                    conn,
                                    replay: replay_left > 0,
                                    at: Instant::now(),
                                }),
                                _ => r.anomalies.push(format!("unexpected row event {:?} {:.200}", ev.id, ev.data)),
                            }
                            replay_left = replay_left.saturating_sub(1);
                        }
                        "heartbeat" => {}
                        "reset" => r.resets.push(format!("{} (from {:?})", ev.data, r.conns[conn].from)),
                        other => r.anomalies.push(format!("unexpected event {other}: {:.200}", ev.data)),
                    }
                }
                None if c.is_closed() => {
                    r.conns[conn].ended = Some((Instant::now(), "closed by the server"));
                    continue 'connect;
                }
                None => {
                    if !is_final && Instant::now() >= disconnect_at {
                        r.conns[conn].ended = Some((Instant::now(), "client disconnect"));
                        continue 'connect;
                    }
                }
            }
            if is_final {
                if replay_left == 0 && last_row_event.elapsed() >= QUIET {
                    r.conns[conn].ended = Some((Instant::now(), "quiet"));
                    r.finished = true;
                    break 'connect;
                }
                if final_deadline.is_some_and(|d| Instant::now() > d) {
                    r.anomalies.push("final drain did not become quiet in time".into());
                    break 'connect;
                }
            }
        }
    }
    r
}

pub fn rel(t0: Instant, i: Instant) -> f64 {
    i.saturating_duration_since(t0).as_secs_f64()
}

/// A client's connections, for failure messages.
pub fn timeline(t0: Instant, r: &ClientReport) -> String {
    r.conns
        .iter()
        .enumerate()
        .map(|(n, c)| {
            format!(
                "[#{n} {:.3}s gw{}{} from {:?} id {:?} resumed {} replayed {} ended {:?}]",
                rel(t0, c.at),
                c.gateway,
                if c.final_round { " final" } else { "" },
                c.from,
                c.connected_id,
                c.resumed,
                c.replayed,
                c.ended.map(|(i, why)| format!("{:.3}s {why}", rel(t0, i)))
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A `pgsse.events` row, parsed.
pub struct LogRow {
    pub id: i64,
    pub tx: u64,
    pub user: Option<String>,
    pub kind: Kind,
    pub row: i64,
    pub hash: u64,
}
