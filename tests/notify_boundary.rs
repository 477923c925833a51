//! The NOTIFY boundary as a hostile database role sees it: a role that can merely connect reads
//! nothing of users' rows, and payloads captured by someone who could read them cannot be
//! replayed into a browser or used to stall delivery. Both in commit mode (the writers' own
//! NOTIFYs) and in relay mode (the relaying gateway makes and signs the payloads).

mod common;

use std::time::{Duration, Instant};

use common::gateway::{self, notifications_db, Gateway};
use common::sql::url_as;
use common::{connect, exec, free_port, json, shared_cluster};
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, NoTls};

const T: Duration = Duration::from_secs(10);

/// A LISTEN connection as `url`'s role on `channels`; yields (channel, payload).
async fn listen(url: &str, channels: &[&str]) -> (tokio_postgres::Client, mpsc::UnboundedReceiver<(String, String)>) {
    let (client, mut conn) = tokio_postgres::connect(url, NoTls).await.expect("connect");
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(Ok(m)) = std::future::poll_fn(|cx| conn.poll_message(cx)).await {
            if let AsyncMessage::Notification(n) = m {
                let _ = tx.send((n.channel().to_string(), n.payload().to_string()));
            }
        }
    });
    for c in channels {
        client.batch_execute(&format!("LISTEN \"{c}\"")).await.expect("LISTEN");
    }
    (client, rx)
}

/// Everything received before a NOTIFY on `fence` (sent now, from another connection) comes back.
async fn drain(url: &str, rx: &mut mpsc::UnboundedReceiver<(String, String)>, fence: &str) -> Vec<(String, String)> {
    exec(url, &format!("NOTIFY \"{fence}\"")).await;
    let mut got = Vec::new();
    loop {
        let (channel, payload) = tokio::time::timeout(T, rx.recv()).await.expect("fence in time").expect("listener");
        if channel == fence {
            return got;
        }
        got.push((channel, payload));
    }
}

#[tokio::test]
async fn a_role_that_can_only_connect_reads_no_row_content() {
    connect_only_role_reads_nothing("commit").await;
}

#[tokio::test]
async fn a_role_that_can_only_connect_reads_no_row_content_in_relay_mode() {
    connect_only_role_reads_nothing("relay").await;
}

/// A database with the notifications table, in notify mode `mode`.
async fn db_in(mode: &str) -> String {
    let db = notifications_db().await;
    assert_eq!(common::relay::set_mode(&db, mode).await, mode);
    db
}

/// Waits until a switch to commit mode is complete: a fresh install starts in relay mode, and
/// until the relay has finished (with a gateway running) it announces commits a second time.
async fn settled(db: &str) {
    let c = connect(db).await;
    let done = common::wait_until(T, || async {
        let q = "SELECT notify_mode = 'relay' OR relay_snapshot IS NULL FROM pgsse.meta";
        c.query_one(q, &[]).await.expect("pgsse.meta").get::<_, bool>(0)
    })
    .await;
    assert!(done, "the relay never finished after the switch to commit mode");
}

async fn connect_only_role_reads_nothing(mode: &str) {
    let db = db_in(mode).await;
    let role = format!("snoop_{}", free_port());
    shared_cluster().create_role(&role, false);
    let snoop = url_as(&db, &role);
    let gw = Gateway::start(&db, &[]).await;
    settled(&db).await;
    let mut s = gw.stream("alice", &[]).await;
    s.next_named("connected", T).await.expect("connected");

    // What such a role can try: the channel pgsse used to use, and learning the real one.
    let (c, mut rx) = listen(&snoop, &["pgsse", "fence"]).await;
    let secret = c.query_one("SELECT channel FROM pgsse.secret", &[]).await;
    assert!(secret.is_err(), "pgsse.secret is not readable by a CONNECT-only role");
    let channel = gateway::channel(&db).await;
    let activity = c.query("SELECT coalesce(query, '') FROM pg_stat_activity", &[]).await.expect("pg_stat_activity");
    for row in &activity {
        let q: String = row.get(0);
        assert!(!q.contains(&channel), "the gateway's LISTEN shows in pg_stat_activity: {q}");
    }
    // Nor can it take the relay's lease, whose rounds hand back the rows and the signing key.
    for call in ["SELECT * FROM pgsse.relay_read('snoop')", "SELECT * FROM pgsse.relay('snoop')"] {
        let r = c.query(call, &[]).await;
        assert!(r.is_err(), "a CONNECT-only role ran {call}: {r:?}");
    }
    let procs = c.query("SELECT coalesce(prosrc, '') FROM pg_proc", &[]).await.expect("pg_proc");
    assert!(procs.iter().all(|r| !r.get::<_, String>(0).contains(&channel)), "the channel is in a function's source");

    exec(
        &db,
        "INSERT INTO notifications (user_id, title, message) VALUES ('alice', 'Reset', 'password reset code 918273')",
    )
    .await;
    let e = s.next_named("notification", T).await.expect("the browser still gets it");
    assert_eq!(json(&e)["notification"]["message"], "password reset code 918273");
    let heard = drain(&snoop, &mut rx, "fence").await;
    assert!(heard.is_empty(), "a CONNECT-only role heard: {heard:?}");
    gw.stop().await;
}

#[tokio::test]
async fn re_sent_payloads_produce_no_event_and_no_stall() {
    re_sent_payloads("commit").await;
}

#[tokio::test]
async fn re_sent_relay_payloads_produce_no_event_and_no_stall() {
    re_sent_payloads("relay").await;
}

async fn re_sent_payloads(mode: &str) {
    let db = db_in(mode).await;
    let channel = gateway::channel(&db).await;
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let gw = Gateway::start(&db, &["--metrics-listen", &metrics_addr]).await;
    settled(&db).await;
    let mut s = gw.stream("victim", &[]).await;
    s.next_named("connected", T).await.expect("connected");
    // Someone who knows the channel captures what goes over it.
    let (_c, mut rx) = listen(&db, &[&channel, "fence"]).await;

    exec(&db, "INSERT INTO notifications (user_id, title) VALUES ('victim', 'deleted later')").await;
    let e = s.next_named("notification", T).await.expect("created");
    assert_eq!(json(&e)["notification"]["title"], "deleted later");
    // One statement too large to inline: a payload by reference.
    let big = "x".repeat(2000);
    exec(
        &db,
        &format!(
            "INSERT INTO notifications (user_id, title, message) SELECT 'victim', 'bulk ' || i, '{big}' FROM generate_series(1, 50) i"
        ),
    )
    .await;
    let bulk = s.collect("notification", 50, T).await;
    assert_eq!(bulk.len(), 50);
    let captured: Vec<String> = drain(&db, &mut rx, "fence")
        .await
        .into_iter()
        .filter(|(c, p)| *c == channel && !p.get(64..).is_some_and(|j| j.starts_with("{\"m\"")))
        .map(|(_, p)| p)
        .collect();
    assert_eq!(captured.len(), 2, "one inline and one by-reference payload: {captured:?}");
    assert!(captured[1].contains("\"r\":["), "the second is a reference: {}", captured[1]);
    exec(&db, "DELETE FROM notifications WHERE user_id = 'victim'").await;
    let deleted = s.collect("notification", 51, T).await;
    assert!(deleted.iter().all(|e| json(e)["type"] == "deleted"), "51 deletions");
    // Wait until the horizon has passed those transactions.
    let past = common::wait_until(T, || async {
        let c = connect(&db).await;
        let row = c
            .query_one("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint, (SELECT max(tx)::text::bigint FROM pgsse.events)", &[])
            .await
            .expect("xmin");
        let (xmin, max_tx): (i64, i64) = (row.get(0), row.get(1));
        let horizon = gateway::readyz(&gw.addr).await.and_then(|(_, v)| v["horizon"].as_str()?.parse::<i64>().ok());
        xmin > max_tx && horizon.is_some_and(|h| h > max_tx)
    })
    .await;
    assert!(past, "the horizon passes the captured transactions");

    // The replay: the deleted row again, and the reference 200 times.
    let attacker = connect(&db).await;
    attacker.execute("SELECT pg_notify($1, $2)", &[&channel, &captured[0]]).await.expect("re-send inline");
    for _ in 0..200 {
        attacker.execute("SELECT pg_notify($1, $2)", &[&channel, &captured[1]]).await.expect("re-send reference");
    }
    let sent = Instant::now();
    exec(&db, "INSERT INTO notifications (user_id, title) VALUES ('victim', 'fresh')").await;
    let next = s.next_named("notification", T).await.expect("the next real event");
    let took = sent.elapsed();
    assert_eq!(json(&next)["notification"]["title"], "fresh", "no re-sent event arrived before it: {next:?}");
    // Generous: before, the 200 range re-reads held every stream for about 15 s.
    assert!(took < Duration::from_secs(5), "delivery stalled {took:?} behind re-sent payloads");
    let stale = gateway::metric(&metrics_addr, "pgsse_payloads_stale_total").await;
    assert_eq!(stale, 201, "every re-sent payload was counted as stale");
    gw.stop().await;
}
