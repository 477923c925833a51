//! Relay mode under test (`tests/relay.rs`): switching the notify mode, writers that insert without
//! pause, and streams whose deliveries are checked exactly once against `pgsse.events`.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{RngExt, SeedableRng};
use serde_json::Value;
use tokio::task::JoinHandle;

use super::gateway::metric;
use super::{connect, describe_pg_error, json, log_id, SseClient};

/// The title of the last row each user gets once the writers have stopped: a stream that saw it has
/// been handed every earlier commit.
pub const MARKER: &str = "end-of-run";

/// After the marker, a stream keeps reading this long for stragglers and duplicates.
const AFTER_MARKER: Duration = Duration::from_millis(800);

/// `SELECT pgsse.set_notify_mode(mode)`; returns what it returned.
pub async fn set_mode(url: &str, mode: &str) -> String {
    let c = connect(url).await;
    match c.query_one("SELECT pgsse.set_notify_mode($1)", &[&mode]).await {
        Ok(r) => r.get(0),
        Err(e) => panic!("set_notify_mode({mode:?}): {}", describe_pg_error(&e)),
    }
}

/// `SELECT pgsse.notify_mode()`.
pub async fn mode(url: &str) -> String {
    let c = connect(url).await;
    match c.query_one("SELECT pgsse.notify_mode()", &[]).await {
        Ok(r) => r.get(0),
        Err(e) => panic!("notify_mode(): {}", describe_pg_error(&e)),
    }
}

/// After a switch back to commit mode, what the relay still waits for (`pgsse.meta.relay_drain`):
/// `None` before it has noticed the switch, and once it has finished.
pub async fn drain(c: &tokio_postgres::Client) -> Option<Vec<String>> {
    c.query_one("SELECT relay_drain FROM pgsse.meta", &[]).await.expect("pgsse.meta.relay_drain").get(0)
}

/// Whether relay mode left the relay nothing to finish (`pgsse.meta.relay_snapshot` is NULL).
pub async fn finished(c: &tokio_postgres::Client) -> bool {
    c.query_one("SELECT relay_snapshot IS NULL FROM pgsse.meta", &[]).await.expect("pgsse.meta.relay_snapshot").get(0)
}

/// The highest log id so far (0 when empty): what a check counts from.
pub async fn last_log_id(url: &str) -> i64 {
    let c = connect(url).await;
    c.query_one("SELECT COALESCE(max(id), 0) FROM pgsse.events", &[]).await.expect("max log id").get(0)
}

/// `n` tasks inserting a row for a random user per transaction, without pause, each holding its
/// transaction open 0..=`hold_ms` ms after the INSERT (so commits cross mode switches and relay
/// rounds out of id order). Each returns how many transactions it committed.
pub fn spawn_writers(
    db: &str,
    n: usize,
    users: &[String],
    stop: &Arc<AtomicBool>,
    hold_ms: u64,
) -> Vec<JoinHandle<u64>> {
    (0..n)
        .map(|w| {
            let (db, users, stop) = (db.to_string(), users.to_vec(), stop.clone());
            tokio::spawn(async move {
                let c = connect(&db).await;
                let mut rng = rand::rngs::StdRng::seed_from_u64(w as u64 + 1);
                let mut committed = 0u64;
                while !stop.load(Ordering::Acquire) {
                    let user = &users[rng.random_range(0..users.len())];
                    let title = format!("w{w}-{committed}");
                    let hold = rng.random_range(0..=hold_ms);
                    let run = async {
                        c.batch_execute("BEGIN").await?;
                        c.execute("INSERT INTO notifications (user_id, title) VALUES ($1, $2)", &[user, &title])
                            .await?;
                        if hold > 0 {
                            tokio::time::sleep(Duration::from_millis(hold)).await;
                        }
                        c.batch_execute("COMMIT").await
                    };
                    if let Err(e) = run.await {
                        panic!("writer {w}: {}", describe_pg_error(&e));
                    }
                    committed += 1;
                }
                committed
            })
        })
        .collect()
}

/// Stops the writers; returns the transactions they committed.
pub async fn stop_writers(stop: &Arc<AtomicBool>, writers: Vec<JoinHandle<u64>>) -> u64 {
    stop.store(true, Ordering::Release);
    let mut total = 0;
    for w in writers {
        total += w.await.expect("writer task");
    }
    total
}

/// What one stream received.
#[derive(Debug)]
pub struct Received {
    pub label: String,
    pub user: String,
    /// Log ids of the `notification` events, in arrival order, duplicates included.
    pub ids: Vec<i64>,
    pub saw_marker: bool,
    pub closed: bool,
}

/// Reads `stream` (its `connected` already consumed) in the background until it has seen the
/// marker row and then nothing new for a moment, or `deadline` passes, or the server closes it.
pub fn follow(label: String, user: String, mut stream: SseClient, deadline: Duration) -> JoinHandle<Received> {
    tokio::spawn(async move {
        let end = tokio::time::Instant::now() + deadline;
        let mut r = Received { label, user, ids: Vec::new(), saw_marker: false, closed: false };
        loop {
            let left = end.saturating_duration_since(tokio::time::Instant::now());
            let wait = if r.saw_marker { AFTER_MARKER.min(left) } else { left };
            match stream.next_event(wait).await {
                Some(ev) if ev.event == "notification" => {
                    r.ids.push(log_id(&ev));
                    if json(&ev)["notification"]["title"] == MARKER {
                        r.saw_marker = true;
                    }
                }
                Some(_) => {}
                None => {
                    r.closed = stream.is_closed();
                    return r;
                }
            }
        }
    })
}

/// Opens a stream for `user` on `addr` and waits for its `connected`.
pub async fn open(addr: &str, user: &str) -> SseClient {
    let mut s = super::gateway::stream(addr, user, &[]).await;
    let first = s.next_event(Duration::from_secs(10)).await.expect("a `connected` event");
    assert_eq!(first.event, "connected", "{first:?}");
    s
}

/// Counts of a delivery check.
#[derive(Debug, Default)]
pub struct Tally {
    pub required: usize,
    pub delivered: usize,
    pub lost: usize,
    pub duplicated: usize,
    pub misrouted: usize,
}

/// Checks each stream against the log rows after `since` (all committed after the streams
/// opened): every row of its user exactly once, nothing of another user, nothing not in the log.
/// Returns the counts and one line per problem (at most 40).
pub async fn check_exactly_once(db: &str, since: i64, streams: &[Received]) -> (Tally, Vec<String>) {
    let c = connect(db).await;
    let rows = c.query("SELECT id, user_id FROM pgsse.events WHERE id > $1", &[&since]).await.expect("read the log");
    let mut owner: HashMap<i64, Option<String>> = HashMap::new();
    let mut by_user: HashMap<String, Vec<i64>> = HashMap::new();
    for r in &rows {
        let (id, user): (i64, Option<String>) = (r.get(0), r.get(1));
        if let Some(u) = &user {
            by_user.entry(u.clone()).or_default().push(id);
        }
        owner.insert(id, user);
    }
    let mut t = Tally::default();
    let mut problems = Vec::new();
    let mut problem = |p: String| {
        if problems.len() < 40 {
            problems.push(p);
        }
    };
    for s in streams {
        if !s.saw_marker {
            problem(format!("{} ({}): never saw the marker row (closed {})", s.label, s.user, s.closed));
        }
        let mut seen = HashSet::new();
        for &id in &s.ids {
            if id <= since {
                continue;
            }
            t.delivered += 1;
            match owner.get(&id) {
                None => {
                    t.misrouted += 1;
                    problem(format!("{}: log id {id} is not in the log", s.label));
                }
                Some(u) if u.as_deref() != Some(s.user.as_str()) => {
                    t.misrouted += 1;
                    problem(format!("{} ({}): log id {id} belongs to {u:?}", s.label, s.user));
                }
                Some(_) => {}
            }
            if !seen.insert(id) {
                t.duplicated += 1;
                problem(format!("{}: log id {id} delivered twice", s.label));
            }
        }
        let want = by_user.get(&s.user).map(Vec::as_slice).unwrap_or(&[]);
        t.required += want.len();
        let lost: Vec<i64> = want.iter().copied().filter(|id| !seen.contains(id)).collect();
        t.lost += lost.len();
        if !lost.is_empty() {
            problem(format!(
                "{} ({}): LOST {} log ids: {:?}",
                s.label,
                s.user,
                lost.len(),
                &lost[..lost.len().min(20)]
            ));
        }
    }
    (t, problems)
}

/// The index of the one replica whose `pgsse_relay_leader` is 1, once exactly one says so.
pub async fn leader_of(metrics: &[String], timeout: Duration) -> Option<usize> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let mut leaders = Vec::new();
        for (i, m) in metrics.iter().enumerate() {
            if metric(m, "pgsse_relay_leader").await == 1 {
                leaders.push(i);
            }
        }
        if let [one] = leaders[..] {
            return Some(one);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// Log ids a signed payload carries (inline entries or a reference range); none for markers.
pub fn payload_ids(p: &Value) -> Vec<i64> {
    if let Some(b) = p["b"].as_array() {
        return b.iter().flat_map(payload_ids).collect();
    }
    if let Some(e) = p["e"].as_array() {
        return e.iter().filter_map(|x| x[0].as_i64()).collect();
    }
    match (p["r"][0].as_i64(), p["r"][1].as_i64()) {
        (Some(lo), Some(hi)) => (lo..=hi).collect(),
        _ => Vec::new(),
    }
}
