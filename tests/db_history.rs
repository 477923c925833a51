//! The database's history going back: a position (an SSE id) must never point into a history
//! that the database has forgotten or replaced.
//!
//! * A crash: the marker transactions write no WAL of their own, so their commits need not be
//!   flushed; after a crash PostgreSQL may hand their transaction ids out again, to rows
//!   committed right after the restart, below positions the gateway has already given out.
//! * A failover to a standby that was behind (or a point-in-time restore): the new primary has
//!   not seen the last transactions of the old one and hands their ids out again, to other rows.
//!
//! Either way a client must get every row, or an explicit `event: reset` (the app refetches):
//! never a silent gap. Ids are opaque here: they are only passed back as `Last-Event-ID`.
//!
//! Each test runs in both notify modes. In relay mode the gateway's own rounds move positions
//! too: a round's position (`pgsse.meta`) commits without waiting for the WAL flush, so a crash
//! can take it back after its NOTIFY went out, and a standby or a backup has an older one.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use common::gateway::{install, readyz, try_stream, wait_ready, GatewayProcess};
use common::{connect, insert_rows, title, PgCluster, SseClient, SseEvent, DURABLE_CONF};

/// Generous: these tests restart databases; nothing here measures time.
const T: Duration = Duration::from_secs(30);
/// Heartbeats carry the current position, so a tab's last id follows the horizon.
const GATEWAY_FLAGS: [&str; 2] = ["--heartbeat-interval", "200ms"];

/// How the database announces commits (`pgsse.set_notify_mode`).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    /// NOTIFY in each writer's transaction.
    Commit,
    /// Writers only log rows; the gateway relays them in rounds.
    Relay,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Commit => "commit",
            Mode::Relay => "relay",
        }
    }

    async fn set(self, db: &str) {
        assert_eq!(common::relay::set_mode(db, self.name()).await, self.name(), "set_notify_mode");
    }
}

// =================================================================================================
// A browser tab
// =================================================================================================

/// One user's stream as a browser tab sees it: it remembers the last id across reconnects and
/// reconnects with it (like EventSource) when the gateway ends the stream.
struct Tab {
    addr: String,
    user: String,
    stream: SseClient,
    last_id: Option<String>,
    /// Titles of the rows received, in arrival order (duplicates kept).
    received: Vec<String>,
    /// Each title received, with the number of resets before it first arrived.
    first_seen: HashMap<String, usize>,
    /// Titles received again with no reset since they first arrived (the app would show them twice).
    duplicates: Vec<String>,
    /// Rows this tab should get (inserted for its user), and those a reset made it refetch.
    expected: Vec<String>,
    excused: HashSet<String>,
    /// The data of every `reset`.
    resets: Vec<String>,
    reconnects: usize,
    /// Heartbeats since the current connection opened (the replay, if any, comes before them).
    heartbeats: usize,
}

impl Tab {
    /// Opens a stream, from `last_id` when given, and reads its `connected` event.
    async fn open(addr: &str, user: &str, last_id: Option<String>) -> Tab {
        let stream = connect_stream(addr, user, last_id.as_deref(), Instant::now() + T).await;
        let mut tab = Tab {
            addr: addr.to_string(),
            user: user.to_string(),
            stream,
            last_id,
            received: Vec::new(),
            first_seen: HashMap::new(),
            duplicates: Vec::new(),
            expected: Vec::new(),
            excused: HashSet::new(),
            resets: Vec::new(),
            reconnects: 0,
            heartbeats: 0,
        };
        let first = tab.stream.next_event(T).await.expect("the stream's first event");
        assert_eq!(first.event, "connected", "the first event is `connected`: {first:?}");
        tab.note(&first);
        tab
    }

    /// A row inserted for this tab's user.
    fn expect(&mut self, title: &str) {
        self.expected.push(title.to_string());
    }

    fn has(&self, title: &str) -> bool {
        self.received.iter().any(|t| t == title)
    }

    /// Got it, or a reset came after it was inserted and before it arrived.
    fn accounted(&self, title: &str) -> bool {
        self.has(title) || self.excused.contains(title)
    }

    fn note(&mut self, e: &SseEvent) {
        if let Some(id) = &e.id {
            self.last_id = Some(id.clone());
        }
        match e.event.as_str() {
            "notification" => {
                let t = title(e);
                match self.first_seen.insert(t.clone(), self.resets.len()) {
                    Some(resets) if resets == self.resets.len() => self.duplicates.push(t.clone()),
                    _ => {}
                }
                self.received.push(t);
            }
            "heartbeat" => self.heartbeats += 1,
            "reset" => {
                // The app refetches: every row inserted so far is in what it reads.
                let missing: Vec<String> = self.expected.iter().filter(|t| !self.has(t)).cloned().collect();
                self.excused.extend(missing);
                self.resets.push(e.data.clone());
            }
            _ => {}
        }
    }

    /// Reads events until `done` holds (true) or `timeout` passes (false), reconnecting with
    /// the last id whenever the gateway ends the stream.
    async fn pump_until(&mut self, timeout: Duration, mut done: impl FnMut(&Tab) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if done(self) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            match self.stream.next_event(left).await {
                Some(e) => self.note(&e),
                None if self.stream.is_closed() => {
                    self.stream = connect_stream(&self.addr, &self.user, self.last_id.as_deref(), deadline).await;
                    self.reconnects += 1;
                    self.heartbeats = 0;
                }
                None => {}
            }
        }
    }

    /// Reads until the tab's last id is a position past transaction `xid` (heartbeats carry the
    /// horizon), so the id it holds is one the database must never hand out again.
    async fn pump_past(&mut self, xid: i64) -> bool {
        self.pump_until(T, |t| t.last_id.as_deref().is_some_and(|id| common::split_id(id).0 as i64 > xid)).await
    }

    /// The reasons of the resets received, e.g. `["history_changed"]`.
    fn reset_reasons(&self) -> Vec<String> {
        self.resets
            .iter()
            .map(|d| {
                serde_json::from_str::<serde_json::Value>(d)
                    .ok()
                    .and_then(|v| v["reason"].as_str().map(str::to_string))
                    .unwrap_or_else(|| format!("(no reason in {d:?})"))
            })
            .collect()
    }
}

/// Connects a stream, retrying until `deadline` while the gateway refuses (it may be restarting
/// its database connection and answer 503).
async fn connect_stream(addr: &str, user: &str, last_id: Option<&str>, deadline: Instant) -> SseClient {
    loop {
        let answer = try_stream(addr, user, last_id).await;
        match answer {
            Ok(c) if c.status == 200 => return c,
            other if Instant::now() >= deadline => {
                panic!("stream for {user} from {last_id:?}: no 200 before the deadline; last answer: {other:?}")
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

async fn gateway_ready(addr: &str) -> bool {
    matches!(readyz(addr).await, Some((200, _)))
}

/// Waits until the gateway says it is not ready (it noticed its database went away).
async fn wait_unready(addr: &str) -> bool {
    common::wait_until(T, || async { !gateway_ready(addr).await }).await
}

/// A new transaction id (as a number) from `db`; each call uses up one.
async fn current_xid(db: &str) -> i64 {
    let c = connect(db).await;
    c.query_one("SELECT pg_current_xact_id()::text::bigint", &[]).await.expect("pg_current_xact_id()").get(0)
}

/// How many rows of `user` `db` has.
async fn row_count(db: &str, user: &str) -> i64 {
    let c = connect(db).await;
    c.query_one("SELECT count(*) FROM notifications WHERE user_id = $1", &[&user]).await.expect("count rows").get(0)
}

/// How far the relay's stored position (`pgsse.meta.relay_snapshot`) reaches: its xmax. NULL in
/// commit mode.
async fn relay_position(db: &str) -> Option<i64> {
    let c = connect(db).await;
    let q = "SELECT pg_snapshot_xmax(relay_snapshot)::text::bigint FROM pgsse.meta";
    c.query_one(q, &[]).await.expect("pgsse.meta").get(0)
}

/// A row shown twice with no reset between is a failure: the app would list it twice.
fn no_duplicates(what: &str, tab: &Tab, failures: &mut Vec<String>) {
    if !tab.duplicates.is_empty() {
        failures.push(format!(
            "{what}: received again with no reset between (reconnects: {}): {}",
            tab.reconnects,
            list(&tab.duplicates.iter().collect::<Vec<_>>())
        ));
    }
}

fn titles(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

fn list(titles: &[&String]) -> String {
    if titles.is_empty() {
        return "none".into();
    }
    titles.iter().map(|t| t.as_str()).collect::<Vec<_>>().join(", ")
}

// =================================================================================================
// Crash
// =================================================================================================

const ROUNDS: usize = 3;
const ROWS_PER_ROUND: usize = 8;
/// Rows committed, and received by the tab, right before each crash.
const PRE_CRASH_ROWS: usize = 4;

/// Postgres is SIGKILLed three times, each time just after the tab got 4 new rows; right after
/// each restart, 8 rows are committed before the gateway listens again. The open tab gets all 39
/// once (or a reset), and a resume from the id the tab had before the first crash replays all of
/// them (or starts with a reset). In commit mode, then in relay mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_rounds_lose_nothing() {
    crash_rounds(Mode::Commit).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_rounds_lose_nothing_in_relay_mode() {
    crash_rounds(Mode::Relay).await;
}

async fn crash_rounds(mode: Mode) {
    let started = Instant::now();
    let pg = PgCluster::start_with(DURABLE_CONF);
    let db = pg.create_database("app");
    install(&db).await;
    mode.set(&db).await;
    let gw = GatewayProcess::spawn(&db, &GATEWAY_FLAGS).await;
    assert!(wait_ready(&gw.addr, T).await, "the gateway never became ready");
    let user = "u";
    let mut tab = Tab::open(&gw.addr, user, None).await;

    let mut failures = Vec::new();
    let mut resume_from: Option<String> = None;
    let mut rows: Vec<String> = Vec::new();
    // Crashes after which the relay's stored position was older than just before (relay mode):
    // the relay then sent rows the tab already had again.
    let mut taken_back = 0;
    for round in 1..=ROUNDS {
        // The tab's last id is a recent position: past a transaction id taken just now.
        let xid = current_xid(&db).await;
        assert!(tab.pump_past(xid).await, "round {round}: the tab's position never passed transaction {xid}");
        let before = tab.last_id.clone().expect("the tab has an id before the crash");
        resume_from.get_or_insert(before);
        // Rows the tab gets just before the crash. In relay mode the round that relayed them
        // committed without waiting for the WAL flush: the crash can take its position back, and
        // the relay then sends them again after the restart.
        let pre = titles(&format!("r{round}-pre"), PRE_CRASH_ROWS);
        insert_rows(&db, user, &pre).await;
        pre.iter().for_each(|t| tab.expect(t));
        assert!(
            tab.pump_until(T, |t| pre.iter().all(|r| t.has(r))).await,
            "round {round}: the tab got the rows before the crash"
        );
        rows.extend(pre.iter().cloned());
        let position_before = relay_position(&db).await;

        pg.crash();
        // While Postgres is down the gateway cannot be ready: once it says so, it has noticed.
        assert!(wait_unready(&gw.addr).await, "round {round}: the gateway never noticed the crash");
        pg.start_again();
        if relay_position(&db).await < position_before {
            taken_back += 1;
        }
        let round_rows = titles(&format!("r{round}"), ROWS_PER_ROUND);
        insert_rows(&db, user, &round_rows).await;
        round_rows.iter().for_each(|t| tab.expect(t));
        rows.extend(round_rows.iter().cloned());

        // A row committed once the gateway listens again arrives after anything it caught up.
        assert!(wait_ready(&gw.addr, T).await, "round {round}: the gateway never became ready again");
        let sentinel = format!("r{round}-sentinel");
        insert_rows(&db, user, std::slice::from_ref(&sentinel)).await;
        tab.expect(&sentinel);
        if !tab.pump_until(T, |t| t.accounted(&sentinel)).await {
            failures.push(format!(
                "round {round}: the open tab never got {sentinel}, committed after the gateway was ready again"
            ));
        }
        // Stragglers, if any, get a moment more.
        tab.pump_until(Duration::from_secs(2), |t| round_rows.iter().all(|r| t.accounted(r))).await;
        let missing: Vec<&String> = round_rows.iter().filter(|r| !tab.accounted(r)).collect();
        if !missing.is_empty() {
            failures.push(format!(
                "round {round}: the open tab got {} of the {ROWS_PER_ROUND} rows committed right after the restart, \
                 with no reset; missing: {}",
                ROWS_PER_ROUND - missing.len(),
                list(&missing)
            ));
        }
    }
    let missing: Vec<&String> = rows.iter().filter(|r| !tab.accounted(r)).collect();
    if !missing.is_empty() {
        failures.push(format!(
            "open tab, all rounds: got {} of {} rows with no reset covering the rest (resets: {:?}, reconnects: {})",
            rows.len() - missing.len(),
            rows.len(),
            tab.reset_reasons(),
            tab.reconnects
        ));
    }

    // The test's own premise: every row was committed (and survived the crashes).
    assert_eq!(
        row_count(&db, user).await,
        (ROUNDS * (PRE_CRASH_ROWS + ROWS_PER_ROUND + 1)) as i64,
        "rows in the database"
    );

    // A tab that was closed before the first crash comes back with the id it had then.
    let from = resume_from.expect("an id from before the first crash");
    let mut resumed = Tab::open(&gw.addr, user, Some(from.clone())).await;
    rows.iter().for_each(|t| resumed.expect(t));
    // The replay comes before the first heartbeat.
    resumed.pump_until(T, |t| !t.resets.is_empty() || t.heartbeats > 0 || rows.iter().all(|r| t.has(r))).await;
    let missing: Vec<&String> = rows.iter().filter(|r| !resumed.accounted(r)).collect();
    if !missing.is_empty() {
        failures.push(format!(
            "resume from {from:?} (the id before the first crash): replayed {} of {} rows, no reset; missing: {}",
            rows.len() - missing.len(),
            rows.len(),
            list(&missing)
        ));
    }

    no_duplicates("open tab", &tab, &mut failures);
    no_duplicates("resumed tab", &resumed, &mut failures);
    eprintln!(
        "crash_rounds_lose_nothing ({mode:?}): open tab resets {:?}, reconnects {}; resume resets {:?}; relay \
         position taken back by {taken_back} of {ROUNDS} crashes; took {:?}",
        tab.reset_reasons(),
        tab.reconnects,
        resumed.reset_reasons(),
        started.elapsed()
    );
    gw.kill().await;
    assert!(failures.is_empty(), "rows lost across Postgres crashes:\n  {}", failures.join("\n  "));
}

// =================================================================================================
// Failover to a standby that is behind
// =================================================================================================

/// The primary dies; the standby that takes over had stopped receiving WAL before the primary's
/// last rows, which the tab had already received. The database went back in time: the open tab
/// gets `reset` (history_changed), so does a resume from an id of the old history, and rows of
/// the new history reach a fresh tab.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promoted_standby_behind_primary_resets_everyone() {
    failover_to_a_standby_behind(Mode::Commit).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promoted_standby_behind_primary_resets_everyone_in_relay_mode() {
    failover_to_a_standby_behind(Mode::Relay).await;
}

async fn failover_to_a_standby_behind(mode: Mode) {
    let started = Instant::now();
    let primary = PgCluster::start_with("wal_level = replica\nmax_wal_senders = 5\nfull_page_writes = on");
    let old_db = primary.create_database("app");
    install(&old_db).await;
    mode.set(&old_db).await;
    let standby = primary.standby("");
    let new_db = standby.url("app");
    // The gateway follows whichever host takes writes, as it would behind a failover setup.
    let url = format!(
        "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/app?target_session_attrs=read-write",
        primary.port, standby.port
    );
    let gw = GatewayProcess::spawn(&url, &GATEWAY_FLAGS).await;
    assert!(wait_ready(&gw.addr, T).await, "the gateway never became ready");
    let user = "u";
    let mut tab = Tab::open(&gw.addr, user, None).await;

    // Rows both databases have.
    let shared = titles("shared", 3);
    insert_rows(&old_db, user, &shared).await;
    shared.iter().for_each(|t| tab.expect(t));
    assert!(tab.pump_until(T, |t| shared.iter().all(|r| t.has(r))).await, "the tab got the shared rows");
    let replicated = common::wait_until(T, || async { row_count(&new_db, user).await == shared.len() as i64 }).await;
    assert!(replicated, "the standby never replayed the shared rows");

    // Rows only the old primary will ever have: the tab gets them, and positions move past them.
    standby.detach_from_primary();
    let lost = titles("lost", 4);
    insert_rows(&old_db, user, &lost).await;
    lost.iter().for_each(|t| tab.expect(t));
    assert!(tab.pump_until(T, |t| lost.iter().all(|r| t.has(r))).await, "the tab got the rows before failover");
    let xid = current_xid(&old_db).await;
    assert!(tab.pump_past(xid).await, "the tab's position never passed transaction {xid}");
    let before_failover = tab.last_id.clone().expect("the tab has an id before the failover");
    let old_xid = current_xid(&old_db).await;

    primary.crash();
    assert!(wait_unready(&gw.addr).await, "the gateway never noticed the primary's crash");
    standby.promote();
    assert!(wait_ready(&gw.addr, T).await, "the gateway never became ready on the promoted standby");

    let mut failures = Vec::new();
    // Rows of the new history: the open tab must have been told to refetch before any of them.
    let after = titles("after", 4);
    insert_rows(&new_db, user, &after).await;
    after.iter().for_each(|t| tab.expect(t));
    let resets_before = tab.resets.len();
    let received_before = tab.received.len();
    tab.pump_until(T, |t| t.resets.len() > resets_before || after.iter().all(|r| t.has(r))).await;
    let reasons = tab.reset_reasons();
    if tab.resets.len() == resets_before {
        let got: Vec<&String> = tab.received[received_before..].iter().collect();
        failures.push(format!(
            "open tab: no reset after the failover (reconnects: {}); it still shows {} that the database no longer \
             has, and then got rows of the new history: {}",
            tab.reconnects,
            list(&lost.iter().collect::<Vec<_>>()),
            list(&got)
        ));
    } else if reasons.last().map(String::as_str) != Some("history_changed") {
        failures.push(format!("open tab: reset with reasons {reasons:?}, expected history_changed"));
    }

    // A tab closed before the failover comes back with an id of the old history, once the new
    // history has handed out every transaction id the old one had (a position is then no longer
    // "in the future": only the history tells that it means nothing here).
    while current_xid(&new_db).await <= old_xid + 20 {}
    let mut resumed = Tab::open(&gw.addr, user, Some(before_failover.clone())).await;
    after.iter().for_each(|t| resumed.expect(t));
    resumed.pump_until(T, |t| !t.resets.is_empty() || t.heartbeats > 0).await;
    match resumed.reset_reasons().first().map(String::as_str) {
        Some("history_changed") => {}
        Some(other) => failures.push(format!(
            "resume from {before_failover:?} (before the failover): reset reason {other:?}, expected history_changed"
        )),
        None => {
            let missing: Vec<&String> = after.iter().filter(|r| !resumed.has(r)).collect();
            failures.push(format!(
                "resume from {before_failover:?} (before the failover): no reset; replayed: {}; missing rows of the \
                 new history: {}",
                list(&resumed.received.iter().collect::<Vec<_>>()),
                list(&missing)
            ))
        }
    }

    // The new history streams to a fresh tab.
    let mut fresh = Tab::open(&gw.addr, user, None).await;
    let more = titles("fresh", 3);
    insert_rows(&new_db, user, &more).await;
    if !fresh.pump_until(T, |t| more.iter().all(|r| t.has(r))).await {
        let missing: Vec<&String> = more.iter().filter(|r| !fresh.has(r)).collect();
        failures.push(format!("fresh tab after the failover: missing {}", list(&missing)));
    }

    for (what, t) in [("open tab", &tab), ("resumed tab", &resumed), ("fresh tab", &fresh)] {
        no_duplicates(what, t, &mut failures);
    }
    eprintln!(
        "promoted_standby_behind_primary_resets_everyone ({mode:?}): open tab resets {:?}, reconnects {}; took {:?}",
        tab.reset_reasons(),
        tab.reconnects,
        started.elapsed()
    );
    gw.kill().await;
    assert!(failures.is_empty(), "history changed without a reset:\n  {}", failures.join("\n  "));
}

// =================================================================================================
// A base backup restored without recovery
// =================================================================================================

/// The database's `pgsse.history()`.
async fn history_of(db: &str) -> String {
    let c = connect(db).await;
    c.query_one("SELECT pgsse.history()", &[]).await.expect("pgsse.history()").get(0)
}

/// The gateway's horizon, as `/readyz` reports it.
async fn horizon_of(addr: &str) -> Option<i64> {
    readyz(addr).await.and_then(|(_, v)| v["horizon"].as_str()?.parse().ok())
}

/// Runs `cmd` (cp, rm) and panics with its output if it fails.
fn run(cmd: &mut std::process::Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A cold copy of the data directory is put back in place: same system identifier, same
/// timeline, so `pgsse.history()` alone cannot tell that the database went back. The gateway,
/// whose horizon is past everything the copy has handed out, must start a new history itself:
/// the open tab gets `reset` (history_changed), so does a resume from an id taken before the
/// restore, `pgsse.history()` changes, and rows committed afterwards stream as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_base_backup_restored_without_recovery_resets_everyone() {
    backup_restored_without_recovery(Mode::Commit).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_base_backup_restored_without_recovery_resets_everyone_in_relay_mode() {
    backup_restored_without_recovery(Mode::Relay).await;
}

async fn backup_restored_without_recovery(mode: Mode) {
    let started = Instant::now();
    let pg = PgCluster::start();
    let db = pg.create_database("app");
    install(&db).await;
    mode.set(&db).await;
    let gw = GatewayProcess::spawn(&db, &GATEWAY_FLAGS).await;
    assert!(wait_ready(&gw.addr, T).await, "the gateway never became ready");
    let user = "u";
    let mut tab = Tab::open(&gw.addr, user, None).await;

    // Rows both the backup and the database that goes on will have.
    let kept = titles("kept", 3);
    insert_rows(&db, user, &kept).await;
    kept.iter().for_each(|t| tab.expect(t));
    assert!(tab.pump_until(T, |t| kept.iter().all(|r| t.has(r))).await, "the tab got the rows before the backup");

    // The backup: a cold copy (cp -a keeps the owner and modes PostgreSQL insists on).
    let data = pg.data_dir().to_path_buf();
    let backup = data.with_file_name("data-backup");
    pg.stop();
    assert!(wait_unready(&gw.addr).await, "the gateway never noticed the database stopping");
    run(std::process::Command::new("cp").arg("-a").arg(&data).arg(&backup));
    pg.start_again();
    assert!(wait_ready(&gw.addr, T).await, "the gateway never became ready after a clean restart");

    let mut failures = Vec::new();
    // The database moves on: hundreds of transaction ids the backup never handed out, and rows
    // the tab receives (so ids it holds point past the backup).
    let ahead_xid = {
        let c = connect(&db).await;
        let mut last = 0i64;
        for _ in 0..300 {
            last = c.query_one("SELECT pg_current_xact_id()::text::bigint", &[]).await.expect("xid").get(0);
        }
        last
    };
    let lost = titles("lost", 3);
    insert_rows(&db, user, &lost).await;
    lost.iter().for_each(|t| tab.expect(t));
    assert!(tab.pump_until(T, |t| lost.iter().all(|r| t.has(r))).await, "the tab got the rows after the backup");
    let past = common::wait_until(T, || async { horizon_of(&gw.addr).await.is_some_and(|h| h > ahead_xid) }).await;
    assert!(past, "the gateway's horizon never passed transaction {ahead_xid}");
    // Heartbeats carry the horizon: the tab's last id is now past everything the backup has.
    assert!(tab.pump_past(ahead_xid).await, "the tab's position never passed transaction {ahead_xid}");
    if !tab.resets.is_empty() {
        failures.push(format!("a clean restart reset the open tab: {:?}", tab.reset_reasons()));
    }
    let before_restore = tab.last_id.clone().expect("the tab has an id before the restore");
    let old_history = history_of(&db).await;
    let old_horizon = horizon_of(&gw.addr).await.expect("a horizon before the restore");

    // The restore: the copy replaces the data directory, and the database starts from it.
    pg.stop();
    assert!(wait_unready(&gw.addr).await, "the gateway never noticed the database stopping again");
    run(std::process::Command::new("rm").arg("-rf").arg(&data));
    run(std::process::Command::new("cp").arg("-a").arg(&backup).arg(&data));
    pg.start_again();
    assert_eq!(
        row_count(&db, user).await,
        kept.len() as i64,
        "the restored database has only the rows before the backup"
    );
    assert!(wait_ready(&gw.addr, T).await, "the gateway never became ready on the restored database");

    // Rows committed once the gateway is ready again: after the reset, each one arrives.
    let after = titles("after", 4);
    insert_rows(&db, user, &after).await;
    after.iter().for_each(|t| tab.expect(t));
    let resets_before = tab.resets.len();
    tab.pump_until(T, |t| t.resets.len() > resets_before && after.iter().all(|r| t.has(r))).await;
    let reasons = tab.reset_reasons();
    if tab.resets.len() == resets_before {
        failures.push(format!(
            "open tab: no reset after the restore (reconnects: {}); it still shows {} that the database no longer has",
            tab.reconnects,
            list(&lost.iter().collect::<Vec<_>>())
        ));
    } else if reasons.last().map(String::as_str) != Some("history_changed") {
        failures.push(format!("open tab: reset with reasons {reasons:?}, expected history_changed"));
    }
    let missing: Vec<&String> = after.iter().filter(|r| !tab.has(r)).collect();
    if !missing.is_empty() {
        failures.push(format!(
            "open tab: rows committed after the gateway was ready again never arrived: {}",
            list(&missing)
        ));
    }

    let new_history = history_of(&db).await;
    if new_history == old_history {
        failures.push(format!("pgsse.history() is still {old_history} after the restore"));
    }

    // A tab closed before the restore comes back with its id, once the restored database has
    // handed out every transaction id the gateway's horizon had passed: only the history tells
    // that the position means nothing here.
    while current_xid(&db).await <= old_horizon + 20 {}
    let mut resumed = Tab::open(&gw.addr, user, Some(before_restore.clone())).await;
    resumed.pump_until(T, |t| !t.resets.is_empty() || t.heartbeats > 0).await;
    match resumed.reset_reasons().first().map(String::as_str) {
        Some("history_changed") => {}
        Some(other) => failures.push(format!(
            "resume from {before_restore:?} (before the restore): reset reason {other:?}, expected history_changed"
        )),
        None => failures.push(format!(
            "resume from {before_restore:?} (before the restore): no reset; replayed: {}",
            list(&resumed.received.iter().collect::<Vec<_>>())
        )),
    }

    // The new history streams to a fresh tab.
    let mut fresh = Tab::open(&gw.addr, user, None).await;
    let more = titles("fresh", 3);
    insert_rows(&db, user, &more).await;
    if !fresh.pump_until(T, |t| more.iter().all(|r| t.has(r))).await {
        let missing: Vec<&String> = more.iter().filter(|r| !fresh.has(r)).collect();
        failures.push(format!("fresh tab after the restore: missing {}", list(&missing)));
    }
    // And the open tab, too.
    more.iter().for_each(|t| tab.expect(t));
    if !tab.pump_until(T, |t| more.iter().all(|r| t.has(r))).await {
        let missing: Vec<&String> = more.iter().filter(|r| !tab.has(r)).collect();
        failures.push(format!("open tab after its reset: missing {}", list(&missing)));
    }

    for (what, t) in [("open tab", &tab), ("resumed tab", &resumed), ("fresh tab", &fresh)] {
        no_duplicates(what, t, &mut failures);
    }
    eprintln!(
        "a_base_backup_restored_without_recovery_resets_everyone ({mode:?}): history {old_history} -> {new_history}; open tab \
         resets {:?}, reconnects {}; took {:?}",
        tab.reset_reasons(),
        tab.reconnects,
        started.elapsed()
    );
    gw.kill().await;
    assert!(failures.is_empty(), "a restored backup without a reset:\n  {}", failures.join("\n  "));
}
