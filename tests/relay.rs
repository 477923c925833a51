//! Relay mode (issue 14): the app's transactions write log rows only and one gateway replica
//! announces them. Nothing committed may be lost or reach a live stream twice: not rows that
//! waited while no gateway ran, not a transaction that committed long after taking its xid, not
//! across mode switches under load, not when the relay replica is SIGKILLed.

mod common;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::gateway::{metric, notifications_db, Gateway, GatewayProcess};
use common::relay::*;
use common::sql::{events_after, exec_err, log_rows_read, unique_role, url_as, Listener, Tracker};
use common::{connect, exec, free_port, insert, insert_rows, log_id, title};
use tokio_postgres::error::SqlState;

fn users(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

/// Stops the writers, sends each user the marker row, and checks that every stream got every row
/// of its user after `since` exactly once; returns the transactions the writers committed.
async fn finish(
    db: &str,
    since: i64,
    what: &str,
    users: &[String],
    stop: &Arc<AtomicBool>,
    writers: Vec<tokio::task::JoinHandle<u64>>,
    follows: Vec<tokio::task::JoinHandle<Received>>,
) -> u64 {
    let committed = stop_writers(stop, writers).await;
    for u in users {
        insert(db, u, MARKER).await;
    }
    let mut got = Vec::new();
    for f in follows {
        got.push(f.await.expect("stream task"));
    }
    let (tally, problems) = check_exactly_once(db, since, &got).await;
    assert_clean(&format!("{what}, {committed} transactions"), &tally, &problems);
    committed
}

fn assert_clean(what: &str, tally: &Tally, problems: &[String]) {
    eprintln!("{what}: {tally:?}");
    assert!(problems.is_empty(), "{what}:\n{}", problems.join("\n"));
    assert_eq!((tally.lost, tally.duplicated, tally.misrouted), (0, 0, 0), "{what}");
}

/// Waits until the raw listener of `tracker` has heard every id of `want` (relayed payloads).
async fn heard_all(tracker: &mut Tracker, want: &[i64], timeout: Duration) -> Vec<i64> {
    let deadline = Instant::now() + timeout;
    let mut heard = Vec::new();
    while Instant::now() < deadline {
        let (_, payloads) = tracker.collect().await;
        heard.extend(payloads.iter().flat_map(payload_ids));
        if want.iter().all(|id| heard.contains(id)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    heard
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_mode_writes_no_notify_and_the_first_gateway_relays_what_waited() {
    let db = notifications_db().await;
    assert_eq!(set_mode(&db, "relay").await, "relay");
    assert_eq!(mode(&db).await, "relay");

    // A stream position from before the rows, on a gateway that then goes away.
    let gw = Gateway::start(&db, &[]).await;
    let mut s = open(&gw.addr, "alice").await;
    insert(&db, "alice", "before").await;
    let before = s.next_named("notification", Duration::from_secs(10)).await.expect("`before` relayed");
    assert_eq!(title(&before), "before");
    let position = before.id.clone().expect("event id");
    let before_id = Some(log_id(&before));
    drop(s);
    gw.stop().await;

    // No gateway: the app's transactions write log rows and NOTIFY nothing.
    let mut tracker = Tracker::new(&db).await;
    insert_rows(&db, "alice", &["one", "two", "three"]).await;
    exec(&db, "SELECT pgsse.publish('alice', '{\"title\": \"four\"}')").await;
    let (events, payloads) = tracker.collect().await;
    assert_eq!(events.len(), 4, "four log rows: {events:?}");
    assert!(payloads.is_empty(), "relay mode: no NOTIFY from the app's transactions, got {payloads:?}");
    let waiting: Vec<i64> = events.iter().map(|e| e.id).collect();

    // The first gateway to start relays them as signed payloads on the secret channel.
    let gw = Gateway::start(&db, &[]).await;
    let heard = heard_all(&mut tracker, &waiting, Duration::from_secs(10)).await;
    assert!(waiting.iter().all(|id| heard.contains(id)), "relayed {heard:?}, waiting were {waiting:?}");

    // A stream resuming from before gets them once (besides `before` again, which a resume may
    // replay: its id says it is a duplicate), then live rows.
    let mut s = common::gateway::try_stream(&gw.addr, "alice", Some(&position)).await.expect("resume");
    assert_eq!(s.status, 200);
    insert(&db, "alice", "live").await;
    let mut got = Vec::new();
    while let Some(ev) = s.next_named("notification", Duration::from_secs(10)).await {
        got.push(log_id(&ev));
        if common::json(&ev)["notification"]["title"] == "live" {
            break;
        }
    }
    got.retain(|&id| Some(id) != before_id);
    assert_eq!(got[..got.len().saturating_sub(1)], waiting[..], "the rows that waited, once, in order, then `live`");
    gw.stop().await;
}

/// A relay round that finds many transactions sends them in few NOTIFYs (each costs every
/// listening replica a delivery and a signature check), each under PostgreSQL's 8000-byte limit,
/// in commit order; and a stream gets each row once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_batches_many_transactions_into_few_notifies() {
    let db = notifications_db().await;
    set_mode(&db, "relay").await;
    // Rounds 300 ms apart, so each finds many transactions.
    let gw = Gateway::start(&db, &["--relay-interval", "300ms"]).await;
    let mut s = open(&gw.addr, "alice").await;
    let mut tracker = Tracker::new(&db).await;
    let c = connect(&db).await;
    let titles: Vec<String> =
        (0..120).map(|i| if i == 60 { "x".repeat(9000) } else { format!("batched {i}") }).collect();
    for t in &titles {
        c.execute("INSERT INTO notifications (user_id, title) VALUES ('alice', $1)", &[t]).await.expect("insert");
    }
    let want: Vec<i64> = events_after(&c, 0).await.iter().map(|e| e.id).collect();
    assert_eq!(want.len(), 120);

    let (mut heard, mut notifies, mut batches) = (Vec::new(), 0, 0);
    let deadline = Instant::now() + Duration::from_secs(20);
    while heard.len() < want.len() && Instant::now() < deadline {
        let (_, payloads) = tracker.collect().await;
        heard.extend(payloads.iter().flat_map(payload_ids));
        notifies += payloads.len();
        batches += tracker.raw.iter().filter(|p| p.contains(r#""b":["#)).count();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("120 transactions in {notifies} NOTIFYs, {batches} of them batches");
    assert_eq!(heard, want, "every transaction once, in commit order");
    assert!(notifies < 20 && batches > 0, "120 transactions in {notifies} NOTIFYs, {batches} of them batches");
    for t in &titles {
        let ev = s.next_named("notification", Duration::from_secs(10)).await.expect("every row on the stream");
        assert_eq!(&title(&ev), t);
    }
    assert!(s.next_named("notification", Duration::from_millis(500)).await.is_none(), "a row twice");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_in_relay_mode_reaches_the_stream() {
    let db = notifications_db().await;
    assert_eq!(set_mode(&db, "commit").await, "commit");
    let metrics = format!("127.0.0.1:{}", free_port());
    let gw = Gateway::start(&db, &["--metrics-listen", &metrics]).await;
    let mut s = open(&gw.addr, "alice").await;
    // Switched on a running gateway: it picks the mode up without a restart.
    assert_eq!(set_mode(&db, "relay").await, "relay");
    let c = connect(&db).await;
    let id: i64 =
        c.query_one("SELECT pgsse.publish('alice', '{\"title\": \"published\"}')", &[]).await.expect("publish").get(0);
    let ev = s.next_named("notification", Duration::from_secs(10)).await.expect("the published event");
    assert_eq!((log_id(&ev), common::json(&ev)), (id, serde_json::json!({"title": "published"})));
    let id: i64 = c
        .query_one("SELECT pgsse.publish(NULL, '{\"text\": \"to all\"}', 'announcement')", &[])
        .await
        .expect("publish a broadcast")
        .get(0);
    let ev = s.next_named("announcement", Duration::from_secs(10)).await.expect("the broadcast");
    assert_eq!(log_id(&ev), id);
    // It went through the relay (the mode gauge is sampled every second).
    let relayed = common::wait_until(Duration::from_secs(5), || async {
        metric(&metrics, "pgsse_relay_mode").await == 1
            && metric(&metrics, "pgsse_relay_leader").await == 1
            && metric(&metrics, "pgsse_relay_transactions_total").await >= 2
    })
    .await;
    assert!(relayed, "pgsse_relay_mode 1, pgsse_relay_leader 1, pgsse_relay_transactions_total >= 2");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_that_took_its_xid_early_and_commits_late_is_relayed_once() {
    let db = notifications_db().await;
    set_mode(&db, "relay").await;
    let gw = Gateway::start(&db, &["--relay-interval", "10ms"]).await;
    let since = last_log_id(&db).await;
    let mut s = open(&gw.addr, "alice").await;

    // Two transactions take their xid now; one writes its row now, the other just before COMMIT.
    let late_a = connect(&db).await;
    late_a.batch_execute("BEGIN; SELECT pg_current_xact_id()").await.expect("begin a");
    late_a.batch_execute("INSERT INTO notifications (user_id, title) VALUES ('alice', 'late-a')").await.expect("a");
    let late_b = connect(&db).await;
    late_b.batch_execute("BEGIN; SELECT pg_current_xact_id()").await.expect("begin b");

    // Others commit meanwhile, across many relay intervals: they arrive without waiting for them.
    let quick: Vec<String> = (0..40).map(|i| format!("quick-{i}")).collect();
    for t in &quick {
        insert(&db, "alice", t).await;
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let first = s.collect("notification", quick.len(), Duration::from_secs(10)).await;
    assert_eq!(first.iter().map(title).collect::<Vec<_>>(), quick, "committed rows do not wait for open ones");

    late_b.batch_execute("INSERT INTO notifications (user_id, title) VALUES ('alice', 'late-b')").await.expect("b");
    late_a.batch_execute("COMMIT").await.expect("commit a");
    insert_rows(&db, "alice", &["after-a-1", "after-a-2"]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    late_b.batch_execute("COMMIT").await.expect("commit b");
    insert(&db, "alice", MARKER).await;

    let mut rest = follow("stream".into(), "alice".into(), s, Duration::from_secs(15)).await.expect("follow");
    rest.ids.splice(0..0, first.iter().map(log_id));
    let (tally, problems) = check_exactly_once(&db, since, &[rest]).await;
    assert_clean("late commits", &tally, &problems);
    assert_eq!(tally.required, quick.len() + 5, "the quick rows, late-a, late-b, two after, the marker");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_modes_under_load_loses_nothing() {
    let db = notifications_db().await;
    assert_eq!(set_mode(&db, "commit").await, "commit");
    let gws = [Gateway::start(&db, &[]).await, Gateway::start(&db, &[]).await];
    let users = users("switch", 4);
    let since = last_log_id(&db).await;
    let mut follows = Vec::new();
    for (g, gw) in gws.iter().enumerate() {
        for u in &users {
            let s = open(&gw.addr, u).await;
            follows.push(follow(format!("gateway {g} stream of {u}"), u.clone(), s, Duration::from_secs(60)));
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let writers = spawn_writers(&db, 4, &users, &stop, 15);
    for m in ["relay", "commit", "relay", "commit", "relay", "commit"] {
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(set_mode(&db, m).await, m);
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    let committed = finish(&db, since, "mode switches", &users, &stop, writers, follows).await;
    assert!(committed > 100, "too little load to mean anything: {committed}");
    assert_eq!(mode(&db).await, "commit");
    for gw in gws {
        gw.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_surviving_replica_takes_over_the_relay_after_a_sigkill() {
    let db = notifications_db().await;
    set_mode(&db, "relay").await;
    let metrics = [format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port())];
    let mut gws = Vec::new();
    for m in &metrics {
        gws.push(Some(GatewayProcess::spawn(&db, &["--metrics-listen", m]).await));
    }
    for g in gws.iter().flatten() {
        assert!(common::gateway::wait_ready(&g.addr, Duration::from_secs(30)).await, "{} never ready", g.addr);
    }
    let leader =
        leader_of(&metrics, Duration::from_secs(10)).await.expect("exactly one replica reports pgsse_relay_leader 1");
    let survivor = 1 - leader;
    let addrs: Vec<String> = gws.iter().flatten().map(|g| g.addr.clone()).collect();

    let users = users("failover", 3);
    let since = last_log_id(&db).await;
    let mut follows = Vec::new();
    for u in &users {
        let _on_leader = open(&addrs[leader], u).await; // dies with it
        let s = open(&addrs[survivor], u).await;
        follows.push(follow(format!("survivor stream of {u}"), u.clone(), s, Duration::from_secs(60)));
    }
    let mut probe = open(&addrs[survivor], "failover-probe").await;
    let stop = Arc::new(AtomicBool::new(false));
    let writers = spawn_writers(&db, 3, &users, &stop, 10);
    tokio::time::sleep(Duration::from_millis(1500)).await;

    gws[leader].take().expect("leader").kill().await;
    let killed = Instant::now();
    insert(&db, "failover-probe", "probe").await;
    let ev = probe.next_named("notification", Duration::from_secs(5)).await;
    assert!(ev.is_some(), "no event relayed within 5 s of the relay replica's SIGKILL");
    let flowing = killed.elapsed();
    let took_over = common::wait_until(Duration::from_secs(5), || async {
        metric(&metrics[survivor], "pgsse_relay_leader").await == 1
    })
    .await;
    assert!(took_over, "the survivor never reported pgsse_relay_leader 1");
    eprintln!("events flowing again {:.0} ms after the SIGKILL", flowing.as_secs_f64() * 1000.0);

    tokio::time::sleep(Duration::from_millis(1500)).await;
    let committed = finish(&db, since, "relay failover", &users, &stop, writers, follows).await;
    assert!(committed > 50, "too little load to mean anything: {committed}");
}

/// An idle relay sleeps instead of polling (so an idle system costs PostgreSQL next to nothing),
/// and the first writer after a quiet spell wakes it with an empty NOTIFY on the secret wake
/// channel. Writers send nothing while it is awake, nor once a relay that died asleep has lost
/// its lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_relay_sleeps_and_the_first_writer_wakes_it() {
    let db = notifications_db().await;
    set_mode(&db, "relay").await;
    let metrics = format!("127.0.0.1:{}", free_port());
    let gw = GatewayProcess::spawn(&db, &["--metrics-listen", &metrics]).await;
    assert!(common::gateway::wait_ready(&gw.addr, Duration::from_secs(30)).await, "gateway never ready");
    let mut wake = Listener::on(&db, format!("{}_wake", common::gateway::channel(&db).await)).await;
    let mut s = open(&gw.addr, "alice").await;
    let asleep = || async { metric(&metrics, "pgsse_relay_asleep").await == 1 };

    assert!(common::wait_until(Duration::from_secs(10), asleep).await, "the idle relay never fell asleep");
    wake.drain().await;
    let probes = metric(&metrics, "pgsse_relay_probes_total").await;
    let rounds = metric(&metrics, "pgsse_relay_rounds_total").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(metric(&metrics, "pgsse_relay_probes_total").await, probes, "a sleeping relay does not probe");
    let renewals = metric(&metrics, "pgsse_relay_rounds_total").await - rounds;
    assert!((2..=6).contains(&renewals), "a sleeping relay only renews its lease: {renewals} rounds in 1.5 s");

    // The first row after the quiet spell wakes it, and is relayed.
    let woken = Instant::now();
    insert(&db, "alice", "wakes the relay").await;
    let ev = s.next_named("notification", Duration::from_secs(5)).await.expect("the first row after the quiet spell");
    assert_eq!(title(&ev), "wakes the relay");
    eprintln!("relayed {:.1} ms after the INSERT began", woken.elapsed().as_secs_f64() * 1000.0);
    assert_eq!(wake.drain().await.len(), 1, "the first writer's wake-up");
    assert_eq!(metric(&metrics, "pgsse_relay_wakeups_total").await, 1);
    assert_eq!(metric(&metrics, "pgsse_relay_asleep").await, 0);

    // Awake: writers send no wake-up (they do not take NOTIFY's commit lock).
    let mut position = None;
    for i in 0..5 {
        insert(&db, "alice", &format!("awake {i}")).await;
        let ev = s.next_named("notification", Duration::from_secs(5)).await.expect("a row while awake");
        assert_eq!(title(&ev), format!("awake {i}"));
        position = ev.id;
    }
    assert!(wake.drain().await.is_empty(), "no wake-up while the relay is awake");

    // A relay that dies asleep: once its lease has run out, writers stop sending wake-ups.
    assert!(common::wait_until(Duration::from_secs(10), asleep).await, "the relay never fell asleep again");
    wake.drain().await;
    gw.kill().await;
    let c = connect(&db).await;
    let lease_over = common::wait_until(Duration::from_secs(5), || async {
        let over: bool = c
            .query_one("SELECT relay_wake IS NOT NULL AND relay_wake < now() FROM pgsse.meta", &[])
            .await
            .expect("read pgsse.meta")
            .get(0);
        over
    })
    .await;
    assert!(lease_over, "the dead relay's relay_wake never ran out");
    insert(&db, "alice", "nobody relays").await;
    assert!(wake.drain().await.is_empty(), "a wake-up for a relay whose lease ran out");

    // The next gateway relays it (rows wait in the log) and sleeps again.
    let gw = GatewayProcess::spawn(&db, &["--metrics-listen", &metrics]).await;
    assert!(common::gateway::wait_ready(&gw.addr, Duration::from_secs(30)).await, "gateway never ready");
    let position = position.expect("an event id");
    let mut s = common::gateway::try_stream(&gw.addr, "alice", Some(&position)).await.expect("resume");
    // (A resume may replay rows before the position; their log ids say they are duplicates.)
    loop {
        let ev = s.next_named("notification", Duration::from_secs(10)).await.expect("the row that waited");
        if title(&ev) == "nobody relays" {
            break;
        }
        assert!(title(&ev).starts_with("awake"), "{ev:?}");
    }
    gw.kill().await;
}

#[tokio::test]
async fn set_notify_mode_refuses_anything_but_commit_and_relay() {
    let db = notifications_db().await;
    let c = connect(&db).await;
    assert_eq!(set_mode(&db, "commit").await, "commit");
    for bad in [None, Some(""), Some("batch"), Some("RELAY ")] {
        let err = c.query_one("SELECT pgsse.set_notify_mode($1)", &[&bad]).await.err();
        let db_err = err.as_ref().and_then(|e| e.as_db_error()).unwrap_or_else(|| panic!("{bad:?} accepted: {err:?}"));
        assert_eq!(db_err.code(), &SqlState::INVALID_PARAMETER_VALUE, "{bad:?}: {db_err:?}");
        let msg = db_err.message();
        assert!(msg.starts_with("pgsse.set_notify_mode: "), "{bad:?}: {msg}");
        assert!(msg.contains("commit") && msg.contains("relay"), "{bad:?}: names the accepted values: {msg}");
    }
    assert_eq!(mode(&db).await, "commit", "bad input switched nothing");
    // A switch rolled back is no switch.
    c.batch_execute("BEGIN; SELECT pgsse.set_notify_mode('relay'); ROLLBACK").await.expect("rolled back switch");
    assert_eq!(mode(&db).await, "commit");
}

#[tokio::test]
async fn a_dba_without_superuser_installs_watches_and_switches_modes() {
    let db = common::fresh_database();
    let pg = common::shared_cluster();
    let (dba, other) = (unique_role("relay_dba"), unique_role("relay_other"));
    pg.create_role(&dba, false);
    pg.create_role(&other, false);
    // CREATE on the database (for schema pgsse) and on the app's schema; owns the app's table.
    exec(
        &db,
        &format!(
            "GRANT CREATE ON DATABASE \"{}\" TO {dba}; GRANT CREATE ON SCHEMA public TO {dba}",
            common::sql::db_name(&db)
        ),
    )
    .await;
    let dba_url = url_as(&db, &dba);
    exec(&dba_url, pgsse::pg::demo::CREATE_TABLE_SQL).await;

    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgsse"))
        .args(["sql", "install", "--apply", "--database-url", &dba_url])
        .output()
        .await
        .expect("run pgsse sql install");
    assert!(out.status.success(), "pgsse sql install --apply as {dba}: {}", String::from_utf8_lossy(&out.stderr));
    exec(&dba_url, "SELECT pgsse.watch('notifications', 'user_id')").await;

    let mut tracker = Tracker::new(&db).await;
    assert_eq!(set_mode(&dba_url, "relay").await, "relay");
    insert(&dba_url, "alice", "relayed").await;
    let (events, payloads) = tracker.collect().await;
    assert_eq!((events.len(), payloads.len()), (1, 0), "relay mode: a log row, no NOTIFY");
    assert_eq!(set_mode(&dba_url, "commit").await, "commit");
    insert(&dba_url, "alice", "notified").await;
    let (events, payloads) = tracker.collect().await;
    assert_eq!((events.len(), payloads.len()), (1, 1), "commit mode: a log row and its NOTIFY");

    // Another role may not switch, even with USAGE on the schema, until granted.
    let other_url = url_as(&db, &other);
    let err = exec_err(&other_url, "SELECT pgsse.set_notify_mode('relay')").await;
    assert!(err.contains("permission denied"), "{err}");
    exec(&dba_url, &format!("GRANT USAGE ON SCHEMA pgsse TO {other}")).await;
    let err = exec_err(&other_url, "SELECT pgsse.set_notify_mode('relay')").await;
    assert!(err.contains("permission denied for function set_notify_mode"), "{err}");
    assert_eq!(mode(&other_url).await, "commit", "anyone may read the mode");
    exec(&dba_url, &format!("GRANT EXECUTE ON FUNCTION pgsse.set_notify_mode(text) TO {other}")).await;
    assert_eq!(set_mode(&other_url, "relay").await, "relay");
    assert_eq!(mode(&db).await, "relay");
}

/// A relay round reads each transaction's rows on the `tx` index, whatever the size of the log
/// when its plan was cached and whatever ANALYZE's last sample said: with a join, the plan
/// PL/pgSQL kept from the first rounds (a small log) hashed a scan of the whole log every round
/// (5–8 ms a round at 40k rows, half a core); after a sample taken just after one large
/// transaction, every probe of a finished transaction was a scan of the whole log.
#[tokio::test]
async fn a_relay_round_never_scans_the_whole_log() {
    // Plans cached while the log was small, then a log that grew (before autovacuum's ANALYZE
    // and after it); and statistics sampled right after one large transaction, when they say a
    // transaction has thousands of rows.
    // (An emptied log: plans made on an empty table, as after a fresh install.)
    for (small_first, emptied, analyze) in
        [(true, false, false), (true, true, false), (true, false, true), (false, false, true)]
    {
        let read = rounds_after_a_large_transaction(small_first, emptied, analyze).await;
        assert!(
            read < 500,
            "relay rounds read {read} rows of pgsse.events (plans cached on a small log first: {small_first}, \
             then on an emptied one: {emptied}, analyzed: {analyze}): a plan walks the whole log"
        );
    }
}

/// The rows of `pgsse.events` that twelve relay rounds read after a 20,000-row transaction
/// (analyzed right after it, or not), each round with one new row or finished transaction to read.
async fn rounds_after_a_large_transaction(small_first: bool, emptied: bool, analyze: bool) -> i64 {
    let db = notifications_db().await;
    set_mode(&db, "relay").await;
    let relay = connect(&db).await;
    // The gateway's round, less the NOTIFYs it would send (`pgsse.relay()` reads through it too).
    let round = "SELECT state FROM pgsse.relay_read('plan-test', '1 minute', 10000, false) WHERE tx IS NULL";
    // More than five rounds while the log is small: PL/pgSQL settles on a generic plan.
    for i in 0..if small_first { 8 } else { 0 } {
        insert(&db, "u1", &format!("small {i}")).await;
        relay.query_one(round, &[]).await.expect("round");
    }
    if emptied {
        exec(&db, "TRUNCATE pgsse.events").await;
        insert(&db, "u1", "after the truncate").await;
        relay.query_one(round, &[]).await.expect("round");
    }
    exec(&db, "INSERT INTO notifications (user_id, title) SELECT 'u2', 'bulk' FROM generate_series(1, 20000)").await;
    relay.query_one(round, &[]).await.expect("round");
    if analyze {
        exec(&db, "ANALYZE pgsse.events").await;
    }
    let before = log_rows_read(&relay).await;
    let other = connect(&db).await;
    for i in 0..6 {
        insert(&db, "u1", &format!("after {i}")).await;
        // A transaction with an xid, open across the round and ended before the next one: the
        // next round reads it alone (nothing new above the position), by one probe; half of them
        // logged a row, half nothing.
        other.batch_execute("BEGIN; SELECT pg_current_xact_id()").await.unwrap();
        let state: String = relay.query_one(round, &[]).await.expect("round").get(0);
        assert_eq!(state, "relayed");
        if i % 2 == 0 {
            other.batch_execute("ROLLBACK").await.unwrap();
        } else {
            other
                .batch_execute("INSERT INTO notifications (user_id, title) VALUES ('u3', 'late'); COMMIT")
                .await
                .unwrap();
        }
        let state: String = relay.query_one(round, &[]).await.expect("round").get(0);
        assert_eq!(state, if i % 2 == 0 { "idle" } else { "relayed" });
    }
    log_rows_read(&relay).await - before
}

/// While an awake relay relays, an INSERT runs pgsse's row trigger and nothing else:
/// `pgsse_announce`, which would do nothing, is skipped by its WHEN clause (no trigger call, no
/// read of `pgsse.meta`). It runs whenever it has work: in commit mode, while the relay sleeps
/// (a wake-up), after a switch to relay that rolled back, and after anything left
/// `pgsse._announcing()` false in commit mode (the next relay call of any gateway puts it right).
#[tokio::test]
async fn an_awake_relay_spares_writers_the_statement_trigger() {
    let db = notifications_db().await;
    let c = connect(&db).await;
    let function: u32 = c
        .query_one(
            "SELECT tgfoid FROM pg_trigger WHERE tgrelid = 'notifications'::regclass AND tgname = 'pgsse_insert'",
            &[],
        )
        .await
        .expect("the trigger function")
        .get(0);
    // Calls of the table's trigger function by `sql`, in one transaction.
    let calls = |sql: &'static str| {
        let db = db.clone();
        async move {
            let c = connect(&db).await;
            c.batch_execute(&format!("BEGIN; SET LOCAL track_functions = 'pl'; {sql}")).await.expect("writes");
            let n: i64 = c
                .query_one("SELECT pg_stat_get_xact_function_calls($1::oid)", &[&function])
                .await
                .expect("function calls")
                .get(0);
            c.batch_execute("COMMIT").await.expect("commit");
            n
        }
    };
    let announcing = || async {
        let v: bool =
            connect(&db).await.query_one("SELECT pgsse._announcing()", &[]).await.expect("pgsse._announcing()").get(0);
        v
    };
    const THREE_INSERTS: &str = "INSERT INTO notifications (user_id, title) VALUES ('u', '1');
         INSERT INTO notifications (user_id, title) VALUES ('u', '2');
         INSERT INTO notifications (user_id, title) VALUES ('u', '3');";
    let round = |asleep: bool| {
        let db = db.clone();
        async move {
            let state: String = connect(&db)
                .await
                .query_one("SELECT state FROM pgsse.relay('spare-test', '1 minute', 10000, $1)", &[&asleep])
                .await
                .expect("relay round")
                .get(0);
            state
        }
    };

    // Commit mode: each statement announces. Relay mode, the relay awake (or none running yet):
    // the row trigger only, from the transaction after the switch on.
    set_mode(&db, "commit").await;
    assert!(announcing().await);
    assert_eq!(calls(THREE_INSERTS).await, 6, "three rows, three statements");
    set_mode(&db, "relay").await;
    assert!(!announcing().await);
    assert_eq!(calls(THREE_INSERTS).await, 3, "three rows, no statement trigger");
    round(false).await;
    assert!(!announcing().await);
    assert_eq!(calls(THREE_INSERTS).await, 3);
    assert_eq!(
        calls("INSERT INTO notifications (user_id, title) SELECT 'u', 'bulk' FROM generate_series(1, 5)").await,
        5
    );
    // Asleep: the first writer wakes it.
    let mut wake = Listener::on(&db, format!("{}_wake", common::gateway::channel(&db).await)).await;
    round(true).await;
    assert!(announcing().await);
    assert_eq!(calls("INSERT INTO notifications (user_id, title) VALUES ('u', 'wakes')").await, 2);
    assert_eq!(wake.drain().await.len(), 1, "the writer's wake-up");
    round(false).await;
    assert!(!announcing().await);
    assert_eq!(calls("INSERT INTO notifications (user_id, title) VALUES ('u', 'awake')").await, 1);
    assert!(wake.drain().await.is_empty());

    // Back to commit: every statement announces (the relay drains, then stops).
    set_mode(&db, "commit").await;
    assert!(announcing().await, "set by the switch itself");
    while round(false).await != "done" {}
    let mut t = Tracker::new(&db).await;
    let (events, payloads) = t.run(THREE_INSERTS).await;
    assert_eq!((events.len(), payloads.len()), (3, 3));

    // A switch to relay that rolls back: writers never stopped announcing, during it or after.
    let dba = connect(&db).await;
    dba.batch_execute("BEGIN; SELECT pgsse.set_notify_mode('relay')").await.expect("switch");
    let (events, payloads) = t.run("INSERT INTO notifications (user_id, title) VALUES ('u', 'during')").await;
    assert_eq!((events.len(), payloads.len()), (1, 1), "announced while the switch was open");
    dba.batch_execute("ROLLBACK").await.expect("rollback");
    assert_eq!(round(false).await, "off");
    assert!(announcing().await);
    let (events, payloads) = t.run("INSERT INTO notifications (user_id, title) VALUES ('u', 'after')").await;
    assert_eq!((events.len(), payloads.len()), (1, 1), "announced after the switch rolled back");

    // Left false in commit mode (by hand, say): the next relay call of any gateway sets it right.
    exec(&db, "SELECT pgsse._write_announcing(false)").await;
    assert!(!announcing().await);
    assert_eq!(round(false).await, "off");
    assert!(announcing().await);
    let (events, payloads) = t.run("INSERT INTO notifications (user_id, title) VALUES ('u', 'healed')").await;
    assert_eq!((events.len(), payloads.len()), (1, 1));
}

/// A database in relay mode and a connection to it, which holds the relay lease as `gateway` with
/// the position past what the install logged (after one round, no gateway running).
async fn relaying(gateway: &str) -> (String, tokio_postgres::Client) {
    let db = notifications_db().await;
    set_mode(&db, "relay").await;
    let c = connect(&db).await;
    c.query("SELECT * FROM pgsse.relay_read($1, '1 minute')", &[&gateway]).await.expect("a first round");
    (db, c)
}

/// One announced transaction, as a replica decodes it: its events `(id, user, event, data)`, or
/// the id range of a reference.
#[derive(Debug, PartialEq)]
enum Announced {
    Events(u64, Vec<(i64, Option<String>, String, serde_json::Value)>),
    Reference(u64, i64, i64),
}

fn announced(key: &pgsse::pg::payload::Verifier, payloads: &[String]) -> Vec<Announced> {
    use pgsse::pg::payload::Message;
    let mut out = Vec::new();
    for p in payloads {
        assert!(p.len() < 8000, "a payload of {} bytes", p.len());
        let items = match key.decode(p).expect("a valid payload") {
            Message::Batch(items) => items,
            one => vec![one],
        };
        for m in items {
            out.push(match m {
                Message::Events { tx, events } => Announced::Events(
                    tx,
                    events
                        .into_iter()
                        .map(|(id, u, e, d)| (id, u, e, serde_json::from_str(d.get()).expect("data")))
                        .collect(),
                ),
                Message::Reference { tx, lo, hi } => Announced::Reference(tx, lo, hi),
                _ => panic!("not a relay payload"),
            });
        }
    }
    out
}

/// The gateway makes the relay's payloads from `pgsse.relay_read()`'s rows; `pgsse.relay()` makes
/// them in SQL (the round of gateways before version 5, during a rolling upgrade). From the same
/// position both announce the same transactions in the same order, each with the same events, or
/// by reference when they do not fit: a broadcast, a user id that needs escaping, a transaction
/// of 70 rows, one of 40 rows too large to inline, and many single-row transactions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateways_payloads_are_the_sqls() {
    let (db, c) = relaying("payload-test").await;
    for write in [
        "SELECT pgsse.publish(NULL, '{\"text\": \"to all\"}', 'announcement')",
        "SELECT pgsse.publish(E'odd \"user\"\\\\ \\u00e9\\n', '{\"x\": [1, 2.5, null]}')",
        "INSERT INTO notifications (user_id, title) SELECT 'many', 'm' || g FROM generate_series(1, 70) g",
        "INSERT INTO notifications (user_id, title, message) SELECT 'large', 'l' || g, repeat('x', 300) FROM generate_series(1, 40) g",
    ] {
        c.batch_execute(write).await.expect(write);
    }
    for i in 0..60 {
        insert(&db, &format!("u{}", i % 7), &format!("one-{i}")).await;
    }
    let key: Vec<u8> = c.query_one("SELECT key FROM pgsse.secret", &[]).await.expect("the key").get(0);
    let key = pgsse::pg::payload::Verifier::new(&key);

    // The gateway's round, rolled back: the position stays.
    c.batch_execute("BEGIN").await.expect("begin");
    let found = c.query("SELECT * FROM pgsse.relay_read('payload-test', '1 minute')", &[]).await.expect("relay_read");
    c.batch_execute("ROLLBACK").await.expect("rollback");
    let (round, channel, ours) = pgsse::pg::relay::made(&found).expect("the gateway's payloads");
    assert_eq!((round.state.as_str(), round.txs, round.events), ("relayed", 64, 172));
    assert_eq!(channel, common::gateway::channel(&db).await);

    let mut listener = Listener::new(&db).await;
    let sent: (i32, i64) = c
        .query_one("SELECT txs, events FROM pgsse.relay('payload-test', '1 minute')", &[])
        .await
        .map(|r| (r.get(0), r.get(1)))
        .expect("pgsse.relay()");
    assert_eq!(sent, (64, 172));
    let theirs = listener.drain().await;
    let ours = announced(&key, &ours);
    assert_eq!(ours, announced(&key, &theirs));
    assert!(matches!(ours[2], Announced::Reference(..)) && matches!(ours[3], Announced::Reference(..)), "{ours:?}");
    assert!(matches!(&ours[1], Announced::Events(_, e) if e[0].1.as_deref() == Some("odd \"user\"\\ \u{e9}\n")));
}

/// A backlog goes in rounds of about `max_rows` rows, whole transactions: rounds say `more` until
/// the last, and every logged transaction is read in exactly one of them, with its first rows (at
/// most 65: more than 64 go by reference). Many small transactions and a few large ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_goes_in_rounds_of_whole_transactions() {
    let (db, c) = relaying("backlog-test").await;
    for i in 0..150 {
        insert(&db, "u", &format!("small {i}")).await;
    }
    for _ in 0..3 {
        exec(&db, "INSERT INTO notifications (user_id, title) SELECT 'u', 'large' FROM generate_series(1, 100)").await;
    }
    let log = c.query("SELECT tx::text, id FROM pgsse.events ORDER BY tx, id", &[]).await.expect("the log");
    let mut want: std::collections::BTreeMap<String, Vec<i64>> = Default::default();
    for r in &log {
        let ids = want.entry(r.get(0)).or_default();
        if ids.len() < 65 {
            ids.push(r.get(1));
        }
    }
    assert_eq!(want.len(), 153);
    let mut got: std::collections::BTreeMap<String, Vec<i64>> = Default::default();
    let mut states = Vec::new();
    loop {
        let rows = c
            .query(
                "SELECT state, tx, id FROM pgsse.relay_read('backlog-test', '1 minute', 50) ORDER BY tx IS NULL, id",
                &[],
            )
            .await
            .expect("a round");
        let (said, rows) = rows.split_last().expect("what the round did");
        let state: String = said.get(0);
        assert!(rows.len() <= 50 + 65, "a round of {} rows", rows.len());
        let mut round: std::collections::BTreeMap<String, Vec<i64>> = Default::default();
        for r in rows {
            round.entry(r.get(1)).or_default().push(r.get(2));
        }
        for (tx, ids) in round {
            assert!(got.insert(tx.clone(), ids).is_none(), "transaction {tx} read twice");
        }
        states.push(state.clone());
        if state != "more" {
            break;
        }
    }
    assert!(states.len() > 3 && states[..states.len() - 1].iter().all(|s| s == "more"), "{states:?}");
    assert_eq!(states.last().map(String::as_str), Some("relayed"));
    assert_eq!(got, want, "every transaction once, its first rows");
}

/// Back in commit mode, the relay finishes once every transaction that may have captured in
/// relay mode has ended, but not the transactions of the server's other databases, which cannot
/// write this database's log. One left open there kept the relay running in commit mode, every
/// commit announced twice (by its writer and again by the relay), for as long as it stayed open.
#[tokio::test]
async fn back_in_commit_mode_the_relay_does_not_wait_for_other_databases() {
    let db = notifications_db().await;
    assert_eq!(set_mode(&db, "relay").await, "relay");
    let gw = Gateway::start(&db, &[]).await;
    // A transaction's virtual xid, as pg_locks and pgsse.meta.relay_drain spell it.
    const VXID: &str = "SELECT virtualxid FROM pg_locks WHERE locktype = 'virtualxid' AND pid = pg_backend_pid()";
    let idle = connect(&common::fresh_database()).await;
    idle.batch_execute("BEGIN").await.expect("a transaction left open in another database");
    let idle_vxid: String = idle.query_one(VXID, &[]).await.expect("vxid").get(0);
    // And one in this database, which the relay must wait for: it may have captured in relay mode.
    let here = connect(&db).await;
    here.batch_execute("BEGIN").await.expect("a transaction left open in this database");
    let here_vxid: String = here.query_one(VXID, &[]).await.expect("vxid").get(0);

    assert_eq!(set_mode(&db, "commit").await, "commit");
    let c = connect(&db).await;
    let noticed = common::wait_until(Duration::from_secs(10), || async { drain(&c).await.is_some() }).await;
    assert!(noticed, "the relay finished while a transaction of this database that began in relay mode ran");
    let waited = drain(&c).await.unwrap_or_default();
    assert!(waited.contains(&here_vxid), "this database's transaction is waited for: {waited:?}");
    assert!(!waited.contains(&idle_vxid), "another database's transaction is waited for: {waited:?}");
    here.batch_execute("COMMIT").await.expect("commit");
    let done = common::wait_until(Duration::from_secs(5), || finished(&c)).await;
    assert!(done, "the relay still waits, for a transaction of another database");
    idle.batch_execute("COMMIT").await.expect("commit");
    gw.stop().await;
}

/// Transactions prepared (two-phase commit) after capturing in relay mode, committed after a
/// switch back to commit mode: their rows were never NOTIFYed, so the relay must keep going until
/// they are resolved. One was prepared before the switch (it has no backend, so it was not among
/// the virtual xids the relay waited for), one after the relay noticed the switch (its virtual
/// xid, waited for, is then gone): the rows of either never reached a live stream.
#[tokio::test]
async fn transactions_prepared_in_relay_mode_are_relayed_after_a_switch_to_commit() {
    let pg = common::PgCluster::start_with("max_prepared_transactions = 5");
    let db = pg.create_database("app");
    common::gateway::install(&db).await;
    assert_eq!(set_mode(&db, "relay").await, "relay");
    let gw = Gateway::start(&db, &[]).await;
    let mut s = open(&gw.addr, "twopc").await;
    // Writers keep the relay awake: a sleeping one is woken by a NOTIFY from the first writer,
    // and PostgreSQL refuses to prepare a transaction that has NOTIFYed (the README says so).
    let stop = Arc::new(AtomicBool::new(false));
    let busy = spawn_writers(&db, 1, &users("busy", 1), &stop, 20);
    let early = connect(&db).await;
    early
        .batch_execute(
            "BEGIN; INSERT INTO notifications (user_id, title) VALUES ('twopc', 'early'); \
             PREPARE TRANSACTION 'pgsse_early'",
        )
        .await
        .expect("a transaction prepared in relay mode");
    let late = connect(&db).await;
    late.batch_execute("BEGIN; INSERT INTO notifications (user_id, title) VALUES ('twopc', 'late')")
        .await
        .expect("a transaction that captured in relay mode");
    let late_xid: String = late.query_one("SELECT pg_current_xact_id()::text", &[]).await.expect("xid").get(0);

    assert_eq!(set_mode(&db, "commit").await, "commit");
    let c = connect(&db).await;
    let noticed = common::wait_until(Duration::from_secs(10), || async { drain(&c).await.is_some() }).await;
    assert!(noticed, "the relay never noticed the switch");
    let waited = drain(&c).await.unwrap_or_default();
    assert!(waited.iter().any(|v| v.starts_with("prepared ")), "the prepared transaction is waited for: {waited:?}");
    late.batch_execute("PREPARE TRANSACTION 'pgsse_late'").await.expect("prepared after the switch");
    // Rounds run meanwhile: the late one's virtual xid goes from the list, its prepared xid comes.
    let late_prepared = format!("prepared {late_xid}");
    let kept = common::wait_until(Duration::from_secs(10), || async {
        drain(&c).await.is_none_or(|d| d.contains(&late_prepared))
    })
    .await;
    assert!(
        kept && drain(&c).await.is_some(),
        "the relay finished with a transaction prepared in relay mode unresolved"
    );

    for gid in ["pgsse_early", "pgsse_late"] {
        c.batch_execute(&format!("COMMIT PREPARED '{gid}'")).await.expect("COMMIT PREPARED");
    }
    let mut got = Vec::new();
    while got.len() < 2 {
        let Some(e) = s.next_named("notification", Duration::from_secs(10)).await else { break };
        got.push(title(&e));
    }
    got.sort();
    assert_eq!(got, ["early", "late"], "the prepared transactions' rows reached the stream");
    let done = common::wait_until(Duration::from_secs(10), || finished(&c)).await;
    assert!(done, "the relay never finished after them");
    stop_writers(&stop, busy).await;

    // In commit mode the writer NOTIFYs, and PostgreSQL refuses to prepare such a transaction.
    let refused = late
        .batch_execute(
            "BEGIN; INSERT INTO notifications (user_id, title) VALUES ('twopc', 'refused'); \
             PREPARE TRANSACTION 'pgsse_commit_mode'",
        )
        .await
        .expect_err("PREPARE TRANSACTION after a NOTIFY");
    assert!(common::describe_pg_error(&refused).contains("NOTIFY"), "{refused:?}");
    gw.stop().await;
}
