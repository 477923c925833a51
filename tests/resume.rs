//! "No event lost": a browser that reconnects, to the same gateway or another replica, gets every
//! event it missed, in order, with duplicates only at the reconnect boundary, or an explicit
//! `event: reset` when its position cannot be served. Never a silent gap.
//!
//! The same property under load and failures is the chaos run, `tests/chaos.rs`.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::gateway::{self, notifications_db, readyz, try_stream, wait_ready, Gateway, GatewayProcess};
use common::{connect, exec, json, log_id, split_id, PgCluster, SseClient, SseEvent};

const T: Duration = Duration::from_secs(10);

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
// 1. The gateway reconnecting to Postgres
// =================================================================================================

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
