//! The live path end to end: rows written in Postgres arrive on the right streams, in the wire
//! format browsers expect.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::gateway::{self, notifications_db, request, Gateway};
use common::{connect, exec, json};

const T: Duration = Duration::from_secs(10);

#[tokio::test]
async fn each_kind_of_change_arrives_in_the_wire_format() {
    let db = notifications_db().await;
    let gw = Gateway::start(&db, &[]).await;
    let mut s = gw.stream("u1", &[]).await;
    assert_eq!(s.header("content-type"), Some("text/event-stream"));
    assert_eq!(s.header("cache-control"), Some("no-cache"));
    assert_eq!(s.header("x-accel-buffering"), Some("no"));

    let first = s.next_event(T).await.expect("connected");
    assert_eq!(first.event, "connected");
    assert_eq!(first.retry, Some(1000), "retry: 1000 is inside the connected block, not a block of its own");
    assert_eq!(json(&first)["userId"], "u1");
    // `<history>.<horizon>`: 8 lowercase hex digits (pgsse.history()), a dot, a transaction id.
    let (history, horizon) = first.id.as_deref().and_then(|id| id.split_once('.')).expect("id <history>.<horizon>");
    assert!(history.len() == 8 && history.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    assert!(!horizon.is_empty() && horizon.bytes().all(|b| b.is_ascii_digit()), "{:?}", first.id);
    let (_, ready) = gateway::readyz(&gw.addr).await.expect("readyz");
    assert_eq!(ready["history"], history, "the id carries the history /readyz reports");

    exec(
        &db,
        "INSERT INTO notifications (user_id, title, message, metadata) VALUES ('u1', 'Hi', 'there', '{\"k\": [1, 2]}')",
    )
    .await;
    let created = s.next_named("notification", T).await.expect("created");
    let v = json(&created);
    assert_eq!(v["type"], "created");
    let row = &v["notification"];
    assert_eq!(row["title"], "Hi");
    assert_eq!(row["message"], "there");
    assert_eq!(row["user_id"], "u1");
    assert_eq!(row["read"], false);
    assert_eq!(row["metadata"]["k"][1], 2);
    let id = row["id"].as_i64().expect("numeric id");
    let event_id = created.id.clone().expect("id line");
    let (event_history, position) = event_id.split_once('.').expect("<history>.<horizon>-<log id>");
    assert_eq!(event_history, history, "{event_id}");
    let (h, l) =
        position.split_once('-').unwrap_or_else(|| panic!("event ids are <history>.<horizon>-<log id>: {event_id}"));
    assert!(h.parse::<u64>().is_ok() && l.parse::<i64>().is_ok(), "{event_id}");

    exec(&db, &format!("UPDATE notifications SET read = true WHERE id = {id}")).await;
    let read = s.next_named("notification", T).await.expect("read");
    assert_eq!(json(&read), serde_json::json!({"type": "read", "notificationId": id}));

    exec(&db, &format!("UPDATE notifications SET title = 'Changed' WHERE id = {id}")).await;
    let updated = json(&s.next_named("notification", T).await.expect("updated"));
    assert_eq!(updated["type"], "updated");
    assert_eq!(updated["notification"]["title"], "Changed");

    exec(&db, &format!("DELETE FROM notifications WHERE id = {id}")).await;
    let deleted = s.next_named("notification", T).await.expect("deleted");
    assert_eq!(json(&deleted), serde_json::json!({"type": "deleted", "notificationId": id}));
    gw.stop().await;
}

#[tokio::test]
async fn bulk_mark_all_as_read_is_one_notify_and_a_thousand_events() {
    let db = notifications_db().await;
    let gw = Gateway::start(&db, &[]).await;
    let mut s = gw.stream("bulk", &[]).await;
    s.next_named("connected", T).await.expect("connected");
    // The rows first, received as they are created: whatever announces them (a relay round in
    // relay mode) is then over before the NOTIFYs below are counted.
    exec(&db, "INSERT INTO notifications (user_id, title) SELECT 'bulk', 'n' || g FROM generate_series(1, 1000) g")
        .await;
    let created = s.collect("notification", 1000, Duration::from_secs(30)).await;
    assert_eq!(created.len(), 1000);
    assert!(created.iter().all(|e| json(e)["type"] == "created"), "the inserted rows first");

    // Count pgsse NOTIFYs that carry events (not the gateway's markers) on a raw LISTEN of the
    // secret channel.
    let channel = gateway::channel(&db).await;
    let (client, mut conn) = tokio_postgres::connect(&db, tokio_postgres::NoTls).await.expect("connect");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let channel_name = channel.clone();
    tokio::spawn(async move {
        while let Some(Ok(m)) = std::future::poll_fn(|cx| conn.poll_message(cx)).await.map(Some).unwrap_or(None) {
            if let tokio_postgres::AsyncMessage::Notification(n) = m {
                let _ = tx.send((n.channel().to_string(), n.payload().to_string()));
            }
        }
    });
    client.batch_execute(&format!("LISTEN \"{channel}\"; LISTEN fence")).await.expect("listen");
    exec(&db, "UPDATE notifications SET read = true WHERE user_id = 'bulk' AND NOT read").await;

    let events = s.collect("notification", 1000, Duration::from_secs(30)).await;
    assert_eq!(events.len(), 1000);
    let ids: HashSet<i64> = events
        .iter()
        .map(|e| {
            let v = json(e);
            assert_eq!(v["type"], "read");
            v["notificationId"].as_i64().expect("id")
        })
        .collect();
    assert_eq!(ids.len(), 1000, "every row exactly once");
    // A fence: notifications arrive in commit order, so once it is here every earlier one is.
    exec(&db, "NOTIFY fence").await;
    let mut event_notifies = 0;
    loop {
        let (channel, p) = tokio::time::timeout(T, rx.recv()).await.expect("fence in time").expect("listener");
        if channel == "fence" {
            break;
        }
        assert_eq!(channel, channel_name, "pgsse only sends on its secret channel");
        // Payloads are <64 hex chars of HMAC><json>; markers are {"m":...}.
        if !p.get(64..).is_some_and(|j| j.starts_with("{\"m\"")) {
            event_notifies += 1;
        }
    }
    assert_eq!(event_notifies, 1, "one NOTIFY for the whole statement");
    gw.stop().await;
}

#[tokio::test]
async fn users_are_isolated_under_random_load_and_every_tab_gets_everything() {
    let db = notifications_db().await;
    let gw = Gateway::start(&db, &[]).await;
    let users: Vec<String> = (0..12).map(|i| format!("user-{i}")).collect();
    let mut tabs = Vec::new();
    for (i, u) in users.iter().enumerate() {
        for _ in 0..(1 + i % 3) {
            let mut s = gw.stream(u, &[]).await;
            s.next_named("connected", T).await.expect("connected");
            tabs.push((u.clone(), s));
        }
    }
    // Writers run concurrently; each row names its user in the title.
    let mut expected: HashMap<String, usize> = HashMap::new();
    let mut writers = Vec::new();
    for w in 0..4u64 {
        let db = db.clone();
        let users = users.clone();
        let mut plan = Vec::new();
        let mut x = w * 7919 + 17;
        for _ in 0..40 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            plan.push(users[(x >> 33) as usize % users.len()].clone());
        }
        for u in &plan {
            *expected.entry(u.clone()).or_default() += 1;
        }
        writers.push(tokio::spawn(async move {
            let c = connect(&db).await;
            for u in plan {
                c.execute("INSERT INTO notifications (user_id, title) VALUES ($1, $1)", &[&u]).await.expect("insert");
            }
        }));
    }
    for w in writers {
        w.await.expect("writer");
    }
    for (user, s) in tabs.iter_mut() {
        let want = expected.get(user).copied().unwrap_or(0);
        let got = s.collect("notification", want, T).await;
        assert_eq!(got.len(), want, "{user} got {} of {want}", got.len());
        for e in &got {
            let v = json(e);
            assert_eq!(v["notification"]["user_id"], *user, "misrouted event");
        }
        assert!(s.next_named("notification", Duration::from_millis(200)).await.is_none(), "{user} got extra events");
    }
    gw.stop().await;
}

#[tokio::test]
async fn large_rows_and_broadcasts_arrive_intact() {
    let db = notifications_db().await;
    let gw = Gateway::start(&db, &[]).await;
    let mut a = gw.stream("a", &[]).await;
    let mut b = gw.stream("b", &[]).await;
    a.next_named("connected", T).await.expect("connected");
    b.next_named("connected", T).await.expect("connected");

    let big: String = (0..100_000).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
    let c = connect(&db).await;
    c.execute("INSERT INTO notifications (user_id, message) VALUES ('a', $1)", &[&big]).await.expect("insert");
    let e = a.next_named("notification", T).await.expect("large event");
    assert_eq!(json(&e)["notification"]["message"].as_str().map(str::len), Some(100_000));
    assert_eq!(json(&e)["notification"]["message"], big.as_str());

    exec(&db, "SELECT pgsse.publish(NULL, '{\"type\":\"announcement\",\"text\":\"hello all\"}')").await;
    for s in [&mut a, &mut b] {
        let e = s.next_named("notification", T).await.expect("broadcast");
        assert_eq!(json(&e)["text"], "hello all");
    }
    assert!(b.next_named("notification", Duration::from_millis(200)).await.is_none());
    gw.stop().await;
}

#[tokio::test]
async fn heartbeats_come_at_the_interval_and_closed_clients_leave_the_hub() {
    let db = notifications_db().await;
    let gw = Gateway::start(&db, &["--heartbeat-interval", "300ms"]).await;
    let mut s = gw.stream("hb", &[]).await;
    s.next_named("connected", T).await.expect("connected");
    let start = std::time::Instant::now();
    for _ in 0..3 {
        let hb = s.next_named("heartbeat", Duration::from_secs(3)).await.expect("heartbeat");
        assert!(json(&hb)["timestamp"].as_u64().is_some_and(|t| t > 1_600_000_000_000));
        assert!(hb.id.is_some(), "heartbeats carry a resume position");
    }
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(600), "three 300ms heartbeats came in {took:?}");
    assert_eq!(gw.connections().await, 1);
    drop(s);
    assert!(common::wait_until(T, || async { gw.connections().await == 0 }).await, "closed stream left the hub");
    gw.stop().await;
}

/// Heartbeats are spread over the interval: each stream gets one per interval, but not all at
/// the same moment (that burst would delay live events on a busy gateway).
#[tokio::test]
async fn heartbeats_are_spread_over_the_interval() {
    let db = notifications_db().await;
    let gw = Gateway::start(&db, &["--heartbeat-interval", "800ms"]).await;
    let mut watchers = Vec::new();
    for i in 0..16 {
        let mut s = gw.stream(&format!("spread{i}"), &[]).await;
        s.next_named("connected", T).await.expect("connected");
        watchers.push(tokio::spawn(async move {
            let mut at = Vec::new();
            for _ in 0..3 {
                s.next_named("heartbeat", Duration::from_secs(3)).await.expect("heartbeat");
                at.push(std::time::Instant::now());
            }
            at
        }));
    }
    let mut firsts = Vec::new();
    for w in watchers {
        let at = w.await.expect("watcher");
        for pair in at.windows(2) {
            let gap = pair[1] - pair[0];
            assert!(gap >= Duration::from_millis(600) && gap <= Duration::from_millis(1200), "gap {gap:?}");
        }
        firsts.push(at[0]);
    }
    let spread = *firsts.iter().max().expect("some") - *firsts.iter().min().expect("some");
    assert!(spread >= Duration::from_millis(200), "heartbeats of 16 streams all came within {spread:?}");
    gw.stop().await;
}

#[tokio::test]
async fn bad_credentials_get_401_and_the_gateway_keeps_serving() {
    let db = notifications_db().await;
    let gw = Gateway::start(&db, &[]).await;
    let path = gateway::STREAM_PATH;
    let (status, headers, body) = request(&gw.addr, "GET", path, &[]).await;
    assert_eq!(status, 401);
    let v: serde_json::Value = serde_json::from_str(&body).expect("json body");
    assert_eq!(v["error"], "missing_token");
    assert!(headers.iter().any(|(k, v)| k == "www-authenticate" && v.starts_with("Bearer")));

    let forged = pgsse::auth::mint_hs256("u", b"wrong-secret", Duration::from_secs(60), None, None).expect("mint");
    let (status, headers, body) =
        request(&gw.addr, "GET", path, &[("Authorization", &format!("Bearer {forged}"))]).await;
    assert_eq!(status, 401);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&body).expect("json")["error"], "invalid_signature");
    assert!(headers.iter().any(|(k, v)| k == "www-authenticate" && v.contains("invalid_token")));
    assert!(!body.contains(&forged), "the token never appears in responses");

    // Query parameter works (EventSource cannot set headers).
    let t = gateway::token("q");
    let mut s = common::SseClient::connect(&gw.addr, &format!("{path}?access_token={t}"), &[]).await.expect("connect");
    assert_eq!(s.status, 200);
    assert_eq!(json(&s.next_named("connected", T).await.expect("connected"))["userId"], "q");

    let (status, headers, _) = request(&gw.addr, "POST", path, &[]).await;
    assert_eq!(status, 405);
    assert!(headers.iter().any(|(k, v)| k == "allow" && v.contains("GET")));
    let (status, _, body) = request(&gw.addr, "GET", "/nope", &[]).await;
    assert_eq!(status, 404);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&body).expect("json")["error"], "not_found");
    let (status, _, _) = request(&gw.addr, "GET", "/healthz", &[]).await;
    assert_eq!(status, 200);
    gw.stop().await;
}

#[tokio::test]
async fn postgres_restart_makes_readyz_flap_and_delivery_resume() {
    let pg = common::PgCluster::start();
    let db = pg.create_database("app");
    gateway::install(&db).await;
    let gw = Gateway::start(&db, &[]).await;
    let mut s = gw.stream("r", &[]).await;
    s.next_named("connected", T).await.expect("connected");

    pg.stop();
    assert!(
        common::wait_until(T, || async { matches!(gateway::readyz(&gw.addr).await, Some((503, _))) }).await,
        "/readyz turns 503 while Postgres is down"
    );
    let (status, _, _) = request(&gw.addr, "GET", "/healthz", &[]).await;
    assert_eq!(status, 200, "/healthz stays 200");
    pg.start_again();
    assert!(gw.wait_ready(Duration::from_secs(20)).await, "/readyz back to 200");
    exec(&db, "INSERT INTO notifications (user_id, title) VALUES ('r', 'after restart')").await;
    let e = s.next_named("notification", T).await.expect("delivery resumed on the old stream");
    assert_eq!(json(&e)["notification"]["title"], "after restart");
    gw.stop().await;
}

#[tokio::test]
async fn forged_notifications_are_ignored() {
    let db = notifications_db().await;
    let gw = Gateway::start(&db, &[]).await;
    let mut s = gw.stream("victim", &[]).await;
    s.next_named("connected", T).await.expect("connected");
    // Any role that can connect may NOTIFY; even one that learned the secret channel cannot
    // sign, and without the signature nothing reaches a browser.
    let channel = gateway::channel(&db).await;
    let (_, ready) = gateway::readyz(&gw.addr).await.expect("readyz");
    let history = ready["history"].as_str().expect("history").to_string();
    let fake = r#"{"t":"1","e":[[1,"victim","notification",{"type":"created","notification":{"title":"phish"}}]]}"#;
    let forged_sig = format!("{}{fake}", "0".repeat(64));
    let forged_marker = format!(r#"{}{{"m":"99999999","h":"{history}"}}"#, "ab".repeat(32));
    for p in [fake.to_string(), forged_sig, forged_marker] {
        let c = connect(&db).await;
        c.execute("SELECT pg_notify($1, $2)", &[&channel, &p]).await.expect("notify");
    }
    exec(&db, "INSERT INTO notifications (user_id, title) VALUES ('victim', 'real')").await;
    let e = s.next_named("notification", T).await.expect("the real event");
    assert_eq!(json(&e)["notification"]["title"], "real", "forged events never arrive");
    let (_, ready) = gateway::readyz(&gw.addr).await.expect("readyz");
    let horizon: u64 = ready["horizon"].as_str().and_then(|h| h.parse().ok()).expect("horizon");
    assert!(horizon < 99_999_999, "a forged marker did not move the horizon ({horizon})");
    gw.stop().await;
}

#[tokio::test]
async fn events_do_not_wait_behind_a_slow_marker() {
    let db = notifications_db().await;
    let gw = Gateway::start(&db, &[]).await;
    let mut s = gw.stream("m1", &[]).await;
    s.next_event(T).await.expect("connected");
    // Every marker now takes 4 s to answer; with markers every 250 ms one is always in flight.
    exec(
        &db,
        "CREATE OR REPLACE FUNCTION pgsse.mark(gateway text, seq bigint) RETURNS void
         LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
         BEGIN
             PERFORM pg_catalog.pg_sleep(4);
             PERFORM pgsse._send(pg_catalog.json_build_object(
                 'm', pg_catalog.pg_snapshot_xmin(pg_catalog.pg_current_snapshot())::text,
                 'h', pgsse.history(), 'g', pg_catalog.left(gateway, 64), 'n', seq)::text);
         END $fn$",
    )
    .await;
    let admin = connect(&db).await;
    let marker_sleeping = || async {
        let q = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                 AND wait_event = 'PgSleep' AND query LIKE '%pgsse.mark%'";
        admin.query_one(q, &[]).await.map(|r| r.get::<_, i64>(0) > 0).unwrap_or(false)
    };
    assert!(common::wait_until(T, marker_sleeping).await, "a slow marker is in flight");
    let sent = std::time::Instant::now();
    exec(&db, "INSERT INTO notifications (user_id, title) VALUES ('m1', 'not held')").await;
    let e = s.next_named("notification", T).await.expect("the event");
    assert_eq!(json(&e)["notification"]["title"], "not held");
    let took = sent.elapsed();
    assert!(took < Duration::from_secs(2), "the event waited {took:?}, behind a marker's round trip");
    gw.stop().await;
}
