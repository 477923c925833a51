//! "No event lost": a browser that reconnects, to the same gateway or another replica, gets every
//! event it missed, in order, with duplicates only at the reconnect boundary, or an explicit
//! `event: reset` when its position cannot be served. Never a silent gap.
//!
//! The chaos run is the key test: real gateway processes, a Postgres restart, a SIGKILLed gateway,
//! writers whose commit order differs from id order, and 200 clients reconnecting at random. Its
//! ground truth is `pgsse.events` after the run, cross-checked against what the writers saw.

mod common;

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use common::gateway::{self, notifications_db, readyz, try_stream, wait_ready, Gateway, GatewayProcess};
use common::{connect, exec, PgCluster, SseClient, SseEvent};

const T: Duration = Duration::from_secs(10);

fn json(e: &SseEvent) -> serde_json::Value {
    serde_json::from_str(&e.data).unwrap_or_else(|err| panic!("event data is not JSON ({err}): {:?}", e.data))
}

/// `<history>.<horizon>` or `<history>.<horizon>-<log id>` (history: 8 lowercase hex digits);
/// returns the horizon and the log id.
fn split_id(id: &str) -> (u64, Option<i64>) {
    let (history, position) = id.split_once('.').unwrap_or_else(|| panic!("event id {id:?} without a history"));
    assert!(
        history.len() == 8 && history.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "event id {id:?}: the history is not 8 lowercase hex digits"
    );
    let (h, l) = match position.split_once('-') {
        Some((h, l)) => (h, Some(l)),
        None => (position, None),
    };
    let h = h.parse().unwrap_or_else(|_| panic!("event id {id:?} does not start with a horizon"));
    (h, l.map(|l| l.parse().unwrap_or_else(|_| panic!("event id {id:?}: bad log id"))))
}

/// The log id of a row event (`id: <history>.<H>-<log id>`).
fn log_id(e: &SseEvent) -> i64 {
    let id = e.id.as_deref().unwrap_or_else(|| panic!("event without id: {e:?}"));
    split_id(id).1.unwrap_or_else(|| panic!("row event id without a log id: {id}"))
}

/// Opens a stream and checks the status; `last` is sent as `Last-Event-ID`.
async fn open(addr: &str, user: &str, last: Option<&str>) -> SseClient {
    let c = try_stream(addr, user, last).await.expect("connect");
    assert_eq!(c.status, 200, "stream for {user} from {last:?}: {c:?}");
    c
}

/// Reads the `connected` event that starts every stream; returns it and its parsed data.
async fn connected(s: &mut SseClient) -> (SseEvent, serde_json::Value) {
    let e = s.next_event(T).await.expect("connected event");
    assert_eq!(e.event, "connected", "the first event is `connected`: {e:?}");
    let v = json(&e);
    (e, v)
}

/// The log ids of `user`'s rows in `pgsse.events`, in id order.
async fn log_of(db: &str, user: &str) -> Vec<i64> {
    let c = connect(db).await;
    c.query("SELECT id FROM pgsse.events WHERE user_id = $1 ORDER BY id", &[&user])
        .await
        .expect("read the log")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

async fn log_count(db: &str) -> i64 {
    let c = connect(db).await;
    c.query_one("SELECT count(*) FROM pgsse.events", &[]).await.expect("count").get(0)
}

// =================================================================================================
// 1. Chaos run
// =================================================================================================

const USERS: usize = 50;
const CLIENTS: usize = 200;
const WRITERS: usize = 16;
const LOAD: Duration = Duration::from_secs(22);
const PG_RESTART_AT: Duration = Duration::from_secs(7);
const PG_DOWN_FOR: Duration = Duration::from_secs(1);
const GATEWAY_KILL_AT: Duration = Duration::from_secs(14);
/// Final drain: a client is done when no row event came for this long (after its replay).
const QUIET: Duration = Duration::from_secs(2);
const FINAL_DRAIN_MAX: Duration = Duration::from_secs(60);
const GATEWAY_FLAGS: &[&str] = &["--heartbeat-interval", "1s"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Kind {
    Created,
    Read,
    Updated,
    Deleted,
}

/// What a row event says: kind, notification row id, and a hash of the whole data (as JSON value).
fn parse_change(data: &str) -> Option<(Kind, i64, u64)> {
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
enum Outcome {
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
struct TxRecord {
    writer: usize,
    tx: u64,
    commit_sent: Instant,
    outcome: Outcome,
    kind: Kind,
    row: i64,
    user: String,
    large: bool,
    /// The row's read flag after this change, when it changes it.
    sets_read: Option<bool>,
}

struct WriterRow {
    id: i64,
    user: String,
    read: bool,
}

enum Op {
    Insert { user: String, large: bool },
    Read(usize),
    Unread(usize),
    Title(usize),
    Delete(usize),
}

async fn writer_connect(db: &str) -> Option<tokio_postgres::Client> {
    let (client, conn) = tokio_postgres::connect(db, tokio_postgres::NoTls).await.ok()?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Some(client)
}

/// Inserts, updates (read flips and other changes) and deletes rows it created, one statement per
/// transaction, holding each transaction open 0-200 ms before COMMIT. Tolerates Postgres going away.
async fn writer(db: String, w: usize, users: Arc<Vec<String>>, stop: Arc<AtomicBool>, seed: u64) -> Vec<TxRecord> {
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
                    tokio::time::sleep(Duration::from_millis(rng.gen_range(50..250))).await;
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
        let op = if rows.is_empty() || rng.gen_bool(0.4) {
            Op::Insert { user: users[rng.gen_range(0..users.len())].clone(), large: rng.gen_bool(0.1) }
        } else {
            let i = rng.gen_range(0..rows.len());
            match rng.gen_range(0..10) {
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
                    let len = rng.gen_range(10_000..20_000);
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
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..=200))).await;
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
struct Recv {
    log_id: i64,
    kind: Kind,
    row: i64,
    hash: u64,
    /// Index into `ClientReport::conns`.
    conn: usize,
    /// Among the first `replayed` events of a resumed connection.
    replay: bool,
    at: Instant,
}

/// One successful stream (200 + `connected`).
#[derive(Debug, Clone)]
struct ConnInfo {
    at: Instant,
    gateway: usize,
    from: Option<String>,
    connected_id: Option<String>,
    resumed: bool,
    replayed: u64,
    final_round: bool,
    ended: Option<(Instant, &'static str)>,
}

#[derive(Debug, Default)]
struct ClientReport {
    idx: usize,
    user: String,
    home: usize,
    first_connected: Option<Instant>,
    recv: Vec<Recv>,
    conns: Vec<ConnInfo>,
    refused: u64,
    unavailable: u64,
    resets: Vec<String>,
    anomalies: Vec<String>,
    finished: bool,
}

struct ClientCtx {
    addrs: [String; 2],
    final_round: Arc<AtomicBool>,
}

/// A browser-like client: connects (retrying refused connections and 503s with a short backoff),
/// remembers the last event id, drops the connection at random and resumes, sometimes on the
/// other gateway. When `final_round` is set it reconnects one last time and drains until quiet.
async fn sse_client(idx: usize, user: String, ctx: Arc<ClientCtx>, seed: u64) -> ClientReport {
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
        let gw = if rng.gen_bool(0.25) { 1 - home } else { home };
        let mut c = match try_stream(&ctx.addrs[gw], &user, last_id.as_deref()).await {
            Err(_) => {
                r.refused += 1;
                tokio::time::sleep(Duration::from_millis(rng.gen_range(30..150))).await;
                continue;
            }
            Ok(c) if c.status == 503 => {
                r.unavailable += 1;
                tokio::time::sleep(Duration::from_millis(rng.gen_range(30..150))).await;
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
        let disconnect_at = Instant::now() + Duration::from_millis(rng.gen_range(300..3000));
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

fn rel(t0: Instant, i: Instant) -> f64 {
    i.saturating_duration_since(t0).as_secs_f64()
}

/// A client's connections, for failure messages.
fn timeline(t0: Instant, r: &ClientReport) -> String {
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
struct LogRow {
    id: i64,
    tx: u64,
    user: Option<String>,
    kind: Kind,
    row: i64,
    hash: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_no_event_is_lost_across_reconnects_restarts_and_replicas() {
    let t0 = Instant::now();
    let stamp = move || format!("{:>6.2}s", t0.elapsed().as_secs_f64());
    let pg = Arc::new(PgCluster::start());
    let db = pg.create_database("app");
    gateway::install(&db).await;

    let port_a = common::free_port();
    let mut gw_a = Some(GatewayProcess::spawn_on(&db, port_a, GATEWAY_FLAGS).await);
    let gw_b = GatewayProcess::spawn(&db, GATEWAY_FLAGS).await;
    let addrs = [gw_a.as_ref().expect("A").addr.clone(), gw_b.addr.clone()];
    for a in &addrs {
        assert!(wait_ready(a, Duration::from_secs(30)).await, "gateway {a} never became ready");
    }
    eprintln!("[{}] gateways A={} B={} ready", stamp(), addrs[0], addrs[1]);

    let users: Arc<Vec<String>> = Arc::new((0..USERS).map(|i| format!("chaos-user-{i}")).collect());
    let final_round = Arc::new(AtomicBool::new(false));
    let ctx = Arc::new(ClientCtx { addrs: addrs.clone(), final_round: final_round.clone() });
    let seed: u64 = rand::random();
    let wall = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    eprintln!(
        "[{}] seed {seed}; t0 + {:.3}s is {:.3}s after the Unix epoch",
        stamp(),
        rel(t0, Instant::now()),
        wall.as_secs_f64()
    );
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let user = users[i % USERS].clone();
            tokio::spawn(sse_client(i, user, ctx.clone(), seed ^ (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)))
        })
        .collect();
    // Let most clients get their first `connected` before the load starts (not required: the
    // required set of each client starts at its own first `connected`).
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let stop_writers = Arc::new(AtomicBool::new(false));
    let load_start = Instant::now();
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            tokio::spawn(writer(db.clone(), w, users.clone(), stop_writers.clone(), seed.wrapping_add(w as u64 * 7919)))
        })
        .collect();
    eprintln!("[{}] {WRITERS} writers and {CLIENTS} clients running", stamp());

    // Postgres restart.
    tokio::time::sleep_until((load_start + PG_RESTART_AT).into()).await;
    eprintln!("[{}] restarting Postgres", stamp());
    let p = pg.clone();
    tokio::task::spawn_blocking(move || p.stop()).await.expect("stop postgres");
    tokio::time::sleep(PG_DOWN_FOR).await;
    let p = pg.clone();
    tokio::task::spawn_blocking(move || p.start_again()).await.expect("start postgres");
    eprintln!("[{}] Postgres is back", stamp());

    // SIGKILL gateway A and start it again on the same port.
    tokio::time::sleep_until((load_start + GATEWAY_KILL_AT).into()).await;
    eprintln!("[{}] SIGKILL gateway A", stamp());
    gw_a.take().expect("A").kill().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    gw_a = Some(GatewayProcess::spawn_on(&db, port_a, GATEWAY_FLAGS).await);
    assert!(wait_ready(&addrs[0], Duration::from_secs(30)).await, "gateway A never became ready after the restart");
    eprintln!("[{}] gateway A is back", stamp());

    tokio::time::sleep_until((load_start + LOAD).into()).await;
    stop_writers.store(true, Ordering::Release);
    let mut txs: Vec<TxRecord> = Vec::new();
    for w in writers {
        txs.extend(w.await.expect("writer task"));
    }
    eprintln!("[{}] writers stopped; final reconnect of every client", stamp());
    final_round.store(true, Ordering::Release);
    let mut reports = Vec::new();
    for c in clients {
        reports.push(c.await.expect("client task"));
    }
    eprintln!("[{}] clients drained", stamp());

    // ---- Ground truth: the committed log ----------------------------------------------------
    let c = connect(&db).await;
    let mut log: Vec<LogRow> = Vec::new();
    for r in c
        .query("SELECT id, tx::text, user_id, data::text FROM pgsse.events ORDER BY id", &[])
        .await
        .expect("read the log")
    {
        let data: String = r.get(3);
        let (kind, row, hash) = parse_change(&data).unwrap_or_else(|| panic!("unexpected log row data {data}"));
        let tx: String = r.get(1);
        log.push(LogRow { id: r.get(0), tx: tx.parse().expect("tx"), user: r.get(2), kind, row, hash });
    }
    drop(gw_a);
    drop(gw_b);

    // Cross-check against the writers: every committed transaction's event is in the log, exactly
    // once and as expected; nothing else is.
    let mut problems: Vec<String> = Vec::new();
    let by_tx: HashMap<u64, &TxRecord> = txs.iter().map(|t| (t.tx, t)).collect();
    assert_eq!(by_tx.len(), txs.len(), "transaction ids are unique");
    let mut log_by_tx: HashMap<u64, Vec<&LogRow>> = HashMap::new();
    for l in &log {
        log_by_tx.entry(l.tx).or_default().push(l);
    }
    let mut outcomes: HashMap<String, usize> = HashMap::new();
    for t in &txs {
        *outcomes.entry(format!("{:?}", t.outcome)).or_default() += 1;
        let rows = log_by_tx.get(&t.tx).map(Vec::as_slice).unwrap_or(&[]);
        match t.outcome {
            Outcome::Acked | Outcome::UnknownCommitted => {
                let ok = rows.len() == 1
                    && rows[0].kind == t.kind
                    && rows[0].row == t.row
                    && rows[0].user.as_deref() == Some(t.user.as_str());
                if !ok {
                    problems.push(format!(
                        "committed tx {} of writer {} ({:?} row {}) not logged as expected",
                        t.tx, t.writer, t.kind, t.row
                    ));
                }
            }
            Outcome::NotSent | Outcome::UnknownAborted => {
                if !rows.is_empty() {
                    problems.push(format!("tx {} ({:?}) is in the log", t.tx, t.outcome));
                }
            }
            Outcome::Unknown => problems.push(format!("tx {} outcome never resolved", t.tx)),
        }
    }
    for l in &log {
        if !by_tx.contains_key(&l.tx) {
            problems.push(format!("log row {} (tx {}) was written by no writer", l.id, l.tx));
        }
    }
    assert!(problems.is_empty(), "the log disagrees with the writers:\n{}", problems.join("\n"));

    // ---- Per client --------------------------------------------------------------------------
    let log_by_id: HashMap<i64, &LogRow> = log.iter().map(|l| (l.id, l)).collect();
    let mut log_by_user: HashMap<&str, Vec<&LogRow>> = HashMap::new();
    for l in &log {
        log_by_user.entry(l.user.as_deref().unwrap_or("")).or_default().push(l);
    }
    let (mut delivered, mut required, mut lost, mut dup_total, mut dup_in_replay, mut dup_bad) = (0, 0, 0, 0, 0, 0);
    let (mut misrouted, mut corrupted, mut order_bad, mut reconnects, mut cross, mut resets) = (0, 0, 0, 0, 0, 0);
    let (mut refused, mut unavailable, mut resumed_conns, mut replayed_total) = (0, 0, 0, 0u64);
    let mut failures: Vec<String> = Vec::new();
    for r in &reports {
        let fail = |failures: &mut Vec<String>, msg: String| {
            if failures.len() < 40 {
                failures.push(format!("client {} ({}): {msg}", r.idx, r.user));
            }
        };
        for a in &r.anomalies {
            fail(&mut failures, format!("anomaly: {a}"));
        }
        if !r.finished {
            fail(&mut failures, "did not finish its final drain".into());
        }
        let Some(first) = r.first_connected else {
            fail(&mut failures, "never connected".into());
            continue;
        };
        reconnects += r.conns.len().saturating_sub(1);
        cross += r.conns.iter().filter(|c| c.gateway != r.home).count();
        resumed_conns += r.conns.iter().filter(|c| c.resumed).count();
        replayed_total += r.conns.iter().map(|c| c.replayed).sum::<u64>();
        refused += r.refused;
        unavailable += r.unavailable;
        resets += r.resets.len();
        for x in &r.resets {
            fail(&mut failures, format!("reset: {x}"));
        }
        delivered += r.recv.len();
        let mut seen: HashSet<i64> = HashSet::new();
        let mut new_live_seen: HashSet<usize> = HashSet::new(); // connections that had a new live event
                                                                // Per notification row: the last (log id, kind) received, duplicates left out. The writer's
                                                                // order is the log id order (it commits each change before making the next).
        let mut last_of_row: HashMap<i64, (i64, Kind)> = HashMap::new();
        for e in &r.recv {
            match log_by_id.get(&e.log_id) {
                None => {
                    misrouted += 1;
                    fail(&mut failures, format!("received log id {} which is not in the log", e.log_id));
                    continue;
                }
                Some(l) => {
                    if l.user.as_deref() != Some(r.user.as_str()) {
                        misrouted += 1;
                        fail(&mut failures, format!("received log id {} of user {:?}", e.log_id, l.user));
                    }
                    if l.kind != e.kind || l.row != e.row || l.hash != e.hash {
                        corrupted += 1;
                        fail(&mut failures, format!("log id {}: data differs from the log", e.log_id));
                    }
                }
            }
            if !seen.insert(e.log_id) {
                dup_total += 1;
                let conn = &r.conns[e.conn];
                if e.replay && conn.resumed {
                    dup_in_replay += 1;
                } else if !conn.resumed || new_live_seen.contains(&e.conn) {
                    dup_bad += 1;
                    let earlier = r.recv.iter().find(|x| x.log_id == e.log_id).expect("first copy");
                    let tx = log_by_id[&e.log_id].tx;
                    fail(
                        &mut failures,
                        format!(
                            "duplicate log id {} (tx {tx}, commit sent at {:.3}s) not at a reconnect boundary: first on \
                             connection #{} at {:.3}s (replay {}), again on connection #{} at {:.3}s (replay {}); \
                             connections: {}",
                            e.log_id,
                            rel(t0, by_tx[&tx].commit_sent),
                            earlier.conn,
                            rel(t0, earlier.at),
                            earlier.replay,
                            e.conn,
                            rel(t0, e.at),
                            e.replay,
                            timeline(t0, r)
                        ),
                    );
                }
                continue;
            }
            if !e.replay {
                new_live_seen.insert(e.conn);
            }
            if let Some((prev, prev_kind)) = last_of_row.insert(e.row, (e.log_id, e.kind)) {
                if prev > e.log_id || prev_kind == Kind::Deleted || e.kind == Kind::Created {
                    order_bad += 1;
                    fail(
                        &mut failures,
                        format!(
                            "row {}: {:?} (log id {}) after {prev_kind:?} (log id {prev})",
                            e.row, e.kind, e.log_id
                        ),
                    );
                }
            }
        }
        for l in log_by_user.get(r.user.as_str()).map(Vec::as_slice).unwrap_or(&[]) {
            let t = by_tx[&l.tx];
            if t.commit_sent > first {
                required += 1;
                if !seen.contains(&l.id) {
                    lost += 1;
                    fail(
                        &mut failures,
                        format!(
                            "LOST log id {} (tx {}, {:?} row {}, commit sent at {:.3}s); connections: {}",
                            l.id,
                            l.tx,
                            l.kind,
                            l.row,
                            rel(t0, t.commit_sent),
                            timeline(t0, r)
                        ),
                    );
                }
            }
        }
    }
    let large =
        txs.iter().filter(|t| t.large && matches!(t.outcome, Outcome::Acked | Outcome::UnknownCommitted)).count();
    eprintln!(
        "chaos figures: committed events {} (large {large}), writer tx outcomes {outcomes:?}\n\
         \x20 delivered {delivered}, required {required}, lost {lost}, duplicates {dup_total} \
         (in replay {dup_in_replay}, after replay before new live {}, outside the boundary {dup_bad}), \
         misrouted {misrouted}, corrupted {corrupted}, order violations {order_bad}\n\
         \x20 reconnects {reconnects} (resumed {resumed_conns}, to the other gateway {cross}, events replayed {replayed_total}), \
         refused {refused}, 503 {unavailable}, resets {resets}; took {:.1}s",
        log.len(),
        dup_total - dup_in_replay - dup_bad,
        t0.elapsed().as_secs_f64()
    );
    assert!(failures.is_empty(), "chaos run failed:\n{}", failures.join("\n"));
    assert_eq!((lost, misrouted, corrupted, order_bad, dup_bad, resets), (0, 0, 0, 0, 0, 0));
    // The run really exercised what it claims to.
    assert!(log.len() > 200, "too little load to mean anything: {} events", log.len());
    assert!(large > 0, "no event went by reference");
    assert!(required > 500, "too few required deliveries: {required}");
    assert!(cross > 0 && resumed_conns > 0, "no resume happened");
    drop(pg);
}

/// The gateway's own reconnect to Postgres must not deliver an event twice: an event committed
/// between its `LISTEN` and its catch-up query is both in the catch-up and notified live.
/// Deterministic: a queued ACCESS EXCLUSIVE lock on `pgsse.events` holds the reconnecting gateway
/// right after its `LISTEN` (preparing its log queries), while the writer commits.
#[tokio::test]
async fn an_event_committed_while_the_gateway_catches_up_arrives_once() {
    let db = notifications_db().await;
    let gw = Gateway::start(&db, &[]).await;
    let mut s = gw.stream("once", &[]).await;
    connected(&mut s).await;
    let admin = connect(&db).await;
    let waiting_on_lock = |pattern: &'static str| {
        let admin = &admin;
        move || async move {
            let q = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                     AND wait_event_type = 'Lock' AND query LIKE $1";
            admin.query_one(q, &[&pattern]).await.map(|r| r.get::<_, i64>(0) > 0).unwrap_or(false)
        }
    };

    let writer = connect(&db).await;
    writer
        .batch_execute("BEGIN; INSERT INTO notifications (user_id, title) VALUES ('once', 'committed during catch-up')")
        .await
        .expect("write");
    let locker = connect(&db).await;
    let lock = tokio::spawn(async move {
        locker.batch_execute("BEGIN; LOCK TABLE pgsse.events IN ACCESS EXCLUSIVE MODE").await.expect("lock");
        locker
    });
    assert!(common::wait_until(T, waiting_on_lock("%LOCK TABLE pgsse.events%")).await, "lock queued behind the writer");

    // Drop the gateway's LISTEN connection (the one sending markers); it reconnects, LISTENs, and
    // waits behind the lock to prepare its queries on the log.
    admin
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() \
             AND pid <> pg_backend_pid() AND query LIKE '%pgsse.mark%'",
            &[],
        )
        .await
        .expect("terminate the LISTEN connection");
    let held = common::wait_until(T, waiting_on_lock("%FROM pgsse.events%")).await;
    assert!(held, "the reconnecting gateway waits on the lock after LISTEN");

    writer.batch_execute("COMMIT").await.expect("commit");
    let locker = lock.await.expect("lock task");
    locker.batch_execute("COMMIT").await.expect("release the lock");

    let e = s.next_named("notification", T).await.expect("the event");
    assert_eq!(json(&e)["notification"]["title"], "committed during catch-up");
    let again = s.next_named("notification", Duration::from_secs(2)).await;
    assert!(
        again.is_none(),
        "the event was delivered twice on one stream without any reconnect of the client: {:?} then {:?}",
        e.id,
        again.map(|a| a.id)
    );
    gw.stop().await;
}

// =================================================================================================
// 2. Two replicas
// =================================================================================================

#[tokio::test]
async fn resuming_on_another_replica_gets_exactly_the_missed_events_in_order() {
    let db = notifications_db().await;
    let a = GatewayProcess::spawn(&db, &[]).await;
    let b = GatewayProcess::spawn(&db, &[]).await;
    assert!(wait_ready(&a.addr, T * 3).await && wait_ready(&b.addr, T * 3).await, "replicas ready");
    let c = connect(&db).await;
    let insert = |user: &'static str, title: String| {
        let c = &c;
        async move {
            let r = c
                .query_one("INSERT INTO notifications (user_id, title) VALUES ($1, $2) RETURNING id", &[&user, &title])
                .await
                .expect("insert");
            r.get::<_, i32>(0)
        }
    };

    let mut s = open(&a.addr, "alice", None).await;
    connected(&mut s).await;
    let mut seen = Vec::new();
    for i in 0..3 {
        insert("alice", format!("seen {i}")).await;
        insert("bob", format!("bob {i}")).await;
        seen.push(s.next_named("notification", T).await.expect("live event on A"));
    }
    let last = seen.last().and_then(|e| e.id.clone()).expect("last id");
    drop(s);

    // While alice is away: a mix of changes, some of rows she saw, plus other users' events.
    let r1 = insert("alice", "missed 1".into()).await;
    let r0 = json(&seen[0])["notification"]["id"].as_i64().expect("row id") as i32;
    exec(&db, &format!("UPDATE notifications SET read = true WHERE id = {r0}")).await;
    insert("bob", "bob away".into()).await;
    exec(&db, &format!("UPDATE notifications SET title = 'changed' WHERE id = {r1}")).await;
    let r2 = insert("alice", "missed 2".into()).await;
    exec(&db, &format!("DELETE FROM notifications WHERE id = {r1}")).await;
    let missed: Vec<i64> = log_of(&db, "alice").await.into_iter().filter(|id| *id > log_id(&seen[2])).collect();
    assert_eq!(missed.len(), 5);

    let mut s = open(&b.addr, "alice", Some(&last)).await;
    let (_, v) = connected(&mut s).await;
    assert_eq!(v["resumed"], true, "{v}");
    let replayed = v["replayed"].as_u64().expect("replayed") as usize;
    assert!(replayed >= missed.len(), "replayed {replayed} < missed {}", missed.len());
    let got = s.collect("notification", replayed, T).await;
    assert_eq!(got.len(), replayed);
    let seen_ids: HashSet<i64> = seen.iter().map(log_id).collect();
    let ids: Vec<i64> = got.iter().map(log_id).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "replay in log id order: {ids:?}");
    let new: Vec<i64> = ids.iter().copied().filter(|id| !seen_ids.contains(id)).collect();
    assert_eq!(new, missed, "exactly the missed events, in order");
    assert!(
        ids.iter().take_while(|id| seen_ids.contains(id)).count() == ids.len() - new.len(),
        "duplicates only first"
    );
    let kinds: Vec<String> = got
        .iter()
        .filter(|e| !seen_ids.contains(&log_id(e)))
        .map(|e| json(e)["type"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(kinds, ["created", "read", "updated", "created", "deleted"]);
    for e in &got {
        let v = json(e);
        let user = v["notification"]["user_id"].as_str();
        assert!(user.is_none() || user == Some("alice"), "misrouted: {v}");
    }
    // Live after the replay, on the same connection, with nothing in between.
    let r3 = insert("alice", "live on B".into()).await;
    let e = s.next_named("notification", T).await.expect("live event on B");
    assert_eq!(json(&e)["notification"]["id"], r3);
    let _ = r2;
}

// =================================================================================================
// 3. Reset
// =================================================================================================

#[tokio::test]
async fn pruned_history_and_unusable_positions_get_reset_then_live_events() {
    let db = notifications_db().await;
    let gw = Gateway::start(&db, &["--retention", "1s"]).await;

    let mut s = gw.stream("pruned", &[]).await;
    connected(&mut s).await;
    for i in 0..3 {
        exec(&db, &format!("INSERT INTO notifications (user_id, title) VALUES ('pruned', 'n{i}')")).await;
    }
    let got = s.collect("notification", 3, T).await;
    assert_eq!(got.len(), 3);
    let last = got[2].id.clone().expect("id");
    drop(s);
    let pruned = common::wait_until(Duration::from_secs(30), || async { log_count(&db).await == 0 }).await;
    assert!(pruned, "retention never pruned the log");

    let mut s = open(&gw.addr, "pruned", Some(&last)).await;
    let (_, v) = connected(&mut s).await;
    assert_eq!(v["resumed"], false, "{v}");
    let reset = s.next_event(T).await.expect("reset");
    assert_eq!(reset.event, "reset", "{reset:?}");
    assert_eq!(json(&reset)["reason"], "history_pruned", "{reset:?}");
    assert!(json(&reset)["message"].is_string());
    exec(&db, "INSERT INTO notifications (user_id, title) VALUES ('pruned', 'after reset')").await;
    let e = s.next_named("notification", T).await.expect("live event after the reset");
    assert_eq!(json(&e)["notification"]["title"], "after reset");
    drop(s);

    // Positions that are not positions at all, of another history (or of a gateway before
    // histories), or beyond any transaction id.
    let (_, ready) = readyz(&gw.addr).await.expect("readyz");
    let history = ready["history"].as_str().expect("/readyz history").to_string();
    let other = format!("{:08x}", u32::from_str_radix(&history, 16).expect("hex history") ^ 1);
    let huge = "7".repeat(10 * 1024);
    let (current_far, other_near) = (format!("{history}.99999999999"), format!("{other}.5"));
    let cases: [(&str, &str); 10] = [
        ("abc", "invalid_last_event_id"),
        ("1-2-3", "invalid_last_event_id"),
        (&huge, "invalid_last_event_id"),
        ("0", "invalid_last_event_id"),
        ("-5", "invalid_last_event_id"),
        ("12-abc", "invalid_last_event_id"),
        ("ABCDEF01.5", "invalid_last_event_id"),
        ("99999999999", "history_changed"),
        (&other_near, "history_changed"),
        (&current_far, "unknown_position"),
    ];
    let mut streams = Vec::new();
    for (id, reason) in cases {
        let shown: String = id.chars().take(20).collect();
        let mut s = try_stream(&gw.addr, "bad", Some(id)).await.expect("connect");
        assert_eq!(s.status, 200, "Last-Event-ID {shown:?}: {s:?}");
        let (_, v) = connected(&mut s).await;
        assert_eq!(v["resumed"], false);
        let reset = s.next_event(T).await.expect("reset");
        assert_eq!(reset.event, "reset", "Last-Event-ID {shown:?}: {reset:?}");
        assert_eq!(json(&reset)["reason"], reason, "Last-Event-ID {shown:?}");
        streams.push((shown, s));
    }
    exec(&db, "INSERT INTO notifications (user_id, title) VALUES ('bad', 'still live')").await;
    for (shown, s) in streams.iter_mut() {
        let e = s.next_named("notification", T).await.unwrap_or_else(|| panic!("no live event after {shown:?}"));
        assert_eq!(json(&e)["notification"]["title"], "still live");
    }
    let (status, _) = readyz(&gw.addr).await.expect("readyz");
    assert_eq!(status, 200, "the gateway is still fine");
    gw.stop().await;
}

// =================================================================================================
// 4. Long transaction
// =================================================================================================

#[tokio::test]
async fn a_long_transaction_delays_nobody_and_its_event_still_arrives() {
    let db = notifications_db().await;
    let gw = Gateway::start(&db, &["--heartbeat-interval", "200ms"]).await;
    let mut x1 = gw.stream("x", &[]).await;
    let mut x2 = gw.stream("x", &[]).await;
    let mut y = gw.stream("y", &[]).await;
    for s in [&mut x1, &mut x2, &mut y] {
        connected(s).await;
    }

    let long = connect(&db).await;
    long.batch_execute("BEGIN; INSERT INTO notifications (user_id, title) VALUES ('x', 'long one')")
        .await
        .expect("open");
    let xid: u64 = long
        .query_one("SELECT pg_current_xact_id()::text", &[])
        .await
        .map(|r| r.get::<_, String>(0).parse().expect("xid"))
        .expect("xid");
    let opened = Instant::now();

    exec(&db, "INSERT INTO notifications (user_id, title) VALUES ('y', 'quick')").await;
    let e =
        y.next_named("notification", Duration::from_secs(7)).await.expect("y's event while x's transaction is open");
    assert_eq!(json(&e)["notification"]["title"], "quick");
    assert!(opened.elapsed() < Duration::from_secs(9), "y's event waited for x's transaction");

    // Positions handed out while the transaction is open never pass it.
    let hb = x2.next_named("heartbeat", T).await.expect("heartbeat");
    let during = hb.id.clone().expect("heartbeat id");
    assert!(split_id(&during).0 <= xid, "position {during} passed the open transaction {xid}");
    drop(x2);
    let mut x2 = open(&gw.addr, "x", Some(&during)).await;
    let (_, v) = connected(&mut x2).await;
    assert_eq!((v["resumed"].as_bool(), v["replayed"].as_u64()), (Some(true), Some(0)), "{v}");
    let hb = x1.next_named("heartbeat", T).await.expect("heartbeat");
    let during2 = hb.id.expect("heartbeat id");
    assert!(split_id(&during2).0 <= xid);
    assert!(x1.next_named("notification", Duration::from_millis(100)).await.is_none(), "nothing for x yet");

    tokio::time::sleep_until((opened + Duration::from_secs(10)).into()).await;
    long.batch_execute("COMMIT").await.expect("commit");
    for (name, s) in [("live", &mut x1), ("resumed", &mut x2)] {
        let e = s.next_named("notification", T).await.unwrap_or_else(|| panic!("x's event on the {name} stream"));
        assert_eq!(json(&e)["notification"]["title"], "long one");
    }
    // A client that was away with a position from during the transaction gets it by replay.
    let mut x3 = open(&gw.addr, "x", Some(&during2)).await;
    let (_, v) = connected(&mut x3).await;
    assert_eq!(v["resumed"], true);
    let got = x3.collect("notification", v["replayed"].as_u64().unwrap_or(0) as usize, T).await;
    assert!(got.iter().any(|e| json(e)["notification"]["title"] == "long one"), "replay from {during2}: {got:?}");
    gw.stop().await;
}

// =================================================================================================
// 5. Gateway started while Postgres is down
// =================================================================================================

#[tokio::test]
async fn a_gateway_started_while_postgres_is_down_becomes_ready_and_delivers() {
    let pg = Arc::new(PgCluster::start());
    let db = pg.create_database("app");
    gateway::install(&db).await;
    let p = pg.clone();
    tokio::task::spawn_blocking(move || p.stop()).await.expect("stop");

    let gw = GatewayProcess::spawn(&db, &[]).await;
    let up = common::wait_until(T * 3, || async { readyz(&gw.addr).await.is_some() }).await;
    assert!(up, "the gateway process serves HTTP without Postgres");
    let (status, v) = readyz(&gw.addr).await.expect("readyz");
    assert_eq!(status, 503, "{v}");
    assert_eq!(v["status"], "not_ready");
    let s = try_stream(&gw.addr, "late", None).await.expect("connect");
    assert_eq!(s.status, 503, "{s:?}");
    assert!(s.header("retry-after").is_some(), "503 says when to retry: {s:?}");
    let s = try_stream(&gw.addr, "late", Some("12345")).await.expect("connect");
    assert_eq!(s.status, 503, "a resume is refused too: {s:?}");

    let p = pg.clone();
    tokio::task::spawn_blocking(move || p.start_again()).await.expect("start");
    assert!(wait_ready(&gw.addr, T * 3).await, "ready once Postgres is up");
    let mut s = open(&gw.addr, "late", None).await;
    connected(&mut s).await;
    exec(&db, "INSERT INTO notifications (user_id, title) VALUES ('late', 'finally')").await;
    let e = s.next_named("notification", T).await.expect("delivered");
    assert_eq!(json(&e)["notification"]["title"], "finally");
    gw.kill().await;
}

// =================================================================================================
// 6. Replay with many events
// =================================================================================================

#[tokio::test]
async fn a_resume_after_300_missed_events_replays_all_of_them_in_order() {
    let db = notifications_db().await;
    let gw = Gateway::start(&db, &[]).await;
    let mut s = gw.stream("many", &[]).await;
    let (first, _) = connected(&mut s).await;
    let from = first.id.expect("connected id");
    drop(s);

    // 100 rows in one statement (one NOTIFY by reference), 100 one-row transactions, then one
    // statement marking 100 rows read; other users' rows in between.
    exec(&db, "INSERT INTO notifications (user_id, title) SELECT 'many', 'bulk ' || g FROM generate_series(1, 100) g")
        .await;
    let c = connect(&db).await;
    for i in 0..100 {
        c.execute("INSERT INTO notifications (user_id, title) VALUES ('many', $1)", &[&format!("single {i}")])
            .await
            .expect("insert");
        if i % 10 == 0 {
            c.execute("INSERT INTO notifications (user_id, title) VALUES ('someone-else', 'x')", &[])
                .await
                .expect("insert");
        }
    }
    exec(&db, "UPDATE notifications SET read = true WHERE user_id = 'many' AND title LIKE 'bulk %'").await;
    let expected = log_of(&db, "many").await;
    assert_eq!(expected.len(), 300);

    let mut s = open(&gw.addr, "many", Some(&from)).await;
    let (_, v) = connected(&mut s).await;
    assert_eq!(v["resumed"], true, "{v}");
    assert_eq!(v["replayed"], 300, "{v}");
    let got = s.collect("notification", 300, T).await;
    let ids: Vec<i64> = got.iter().map(log_id).collect();
    assert_eq!(ids, expected, "all 300, in log id order");
    assert!(got.iter().all(|e| e.id.as_deref().is_some_and(|id| id.starts_with(&format!("{from}-")))));
    assert!(s.next_named("notification", Duration::from_millis(300)).await.is_none(), "nothing more");
    gw.stop().await;
}
