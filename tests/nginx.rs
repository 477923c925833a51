//! pgsse behind a real nginx, configured with the files in `deploy/nginx/`, and a real Chromium:
//! what browsers see through the proxy over HTTP/2 + TLS: events in order, many tabs (and why not
//! HTTP/1.1), the gateway killed or drained and restarted, and streams idle for longer than
//! nginx's `proxy_read_timeout`.
//!
//! The nginx configuration is generated from `deploy/nginx/pgsse-upstream.conf` and
//! `deploy/nginx/pgsse-location.conf` verbatim, except for addresses, log paths and the one
//! directive a test varies (each substitution must match exactly). Chromium is driven by
//! `tests/browser/nginx-driver.mjs` (playwright-core). Needs nginx, chromium and the npm packages
//! of tests/browser: `./scripts/test` installs them.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;

use common::gateway::{self, notifications_db, Gateway, GatewayProcess};
use common::nginx::*;
use common::{exec, free_port, insert_rows};

const T: Duration = Duration::from_secs(20);

/// A page opens an EventSource through nginx (HTTP/2 + TLS, cookie auth): rows inserted with SQL
/// appear in the page, promptly and in order, and only the page user's rows.
#[tokio::test]
async fn rows_appear_in_the_page_in_order() {
    let db = notifications_db().await;
    let gw = Gateway::start(&db, &["--token-cookie", COOKIE]).await;
    let site = Site::h2(free_port());
    let nginx = Nginx::start(&[("pgsse", &gw.addr)], std::slice::from_ref(&site)).await;
    let mut b = Browser::launch().await;
    b.user("alice", &site.origin(), "alice").await;
    let p = pages("p", 1);
    b.open("alice", &p[0], &site.url()).await;
    b.expect_all(&p, "window.pgsse.connected.length === 1", T).await;
    let connected = &b.state("p0").await["connected"][0];
    assert_eq!(connected["userId"], "alice", "the cookie authenticated the stream: {connected}");

    // One row first: it must show up at once (nothing between the gateway and the page buffers it).
    let started = Instant::now();
    insert_rows(&db, "alice", &["first".to_string()]).await;
    b.expect_all(&p, "document.querySelectorAll('#events li').length === 1", T).await;
    let latency = started.elapsed();
    assert!(latency < Duration::from_secs(2), "one event took {latency:?} through nginx");

    // Then many, one transaction each, interleaved with another user's, plus one multi-row statement.
    let mut want = vec!["first".to_string()];
    for t in titled("row", 15) {
        insert_rows(&db, "alice", std::slice::from_ref(&t)).await;
        insert_rows(&db, "bob", &[format!("bob-{t}")]).await;
        want.push(t);
    }
    exec(&db, "INSERT INTO notifications (user_id, title) SELECT 'alice', 'bulk-' || g FROM generate_series(1, 5) g")
        .await;
    want.extend(titled("bulk", 5));
    b.expect_all(&p, &format!("document.querySelectorAll('#events li').length >= {}", want.len()), T).await;
    assert_eq!(b.titles("p0").await, want);

    let state = b.state("p0").await;
    assert_eq!(state["errors"], 0, "{state}");
    let nav = b.eval("p0", "performance.getEntriesByType('navigation')[0].nextHopProtocol").await;
    assert_eq!(nav, "h2", "the page came over HTTP/2");
    b.close("p0").await;
    b.quit().await;
    assert!(
        common::wait_until(Duration::from_secs(5), || async { !nginx.stream_log(site.port).is_empty() }).await,
        "the closed stream is logged"
    );
    let log = nginx.stream_log(site.port);
    assert!(log[0].contains(" HTTP/2.0\" 200 ") && log[0].contains("upstream=200"), "{log:?}");
    assert!(!log[0].contains("access_token") && !log[0].contains('?'), "no query string in the stream log: {log:?}");
    gw.stop().await;
}

/// One user with 10 tabs over HTTP/2 + TLS: all 10 streams stay open at once on one connection and
/// each tab receives every event; a second user's tab receives none of them.
#[tokio::test]
async fn ten_tabs_over_http2_each_receive_every_event() {
    let db = notifications_db().await;
    let gw = Gateway::start(&db, &["--token-cookie", COOKIE]).await;
    let site = Site::h2(free_port());
    let nginx = Nginx::start(&[("pgsse", &gw.addr)], std::slice::from_ref(&site)).await;
    let mut b = Browser::launch().await;
    b.user("alice", &site.origin(), "alice").await;
    b.user("bob", &site.origin(), "bob").await;
    let tabs = pages("tab", 10);
    for tab in &tabs {
        b.open("alice", tab, &site.url()).await;
    }
    let bob = pages("bob", 1);
    b.open("bob", &bob[0], &site.url()).await;
    b.expect_all(&tabs, "window.pgsse.connected.length === 1", T).await;
    b.expect_all(&bob, "window.pgsse.connected.length === 1", T).await;
    assert_eq!(gw.connections().await, 11, "all 11 streams are open at the same time");
    for p in b.eval_all(&tabs, "performance.getEntriesByType('navigation')[0].nextHopProtocol").await {
        assert_eq!(p, "h2");
    }

    let want = titled("alice", 6);
    insert_rows(&db, "alice", &want).await;
    insert_rows(&db, "bob", &["for-bob".to_string()]).await;
    let n = want.len();
    b.expect_all(&tabs, &format!("document.querySelectorAll('#events li').length >= {n}"), T).await;
    for tab in &tabs {
        assert_eq!(b.titles(tab).await, want, "{tab}");
    }
    // Bob's row was committed after Alice's: once it is there, Alice's would have been too.
    b.expect_all(&bob, "document.querySelectorAll('#events li').length >= 1", T).await;
    assert_eq!(b.titles("bob0").await, ["for-bob"], "the other user's tab gets none of Alice's events");
    for s in b.eval_all(&tabs, "window.pgsse.errors").await {
        assert_eq!(s, 0);
    }

    // Alice's 10 page loads (and so her 10 streams) shared one HTTP/2 connection.
    let loads: Vec<String> = nginx.page_log(site.port).into_iter().filter(|l| l.contains("\"GET / ")).collect();
    assert_eq!(loads.len(), 11, "{loads:?}");
    assert!(loads.iter().all(|l| l.contains(" HTTP/2.0 ")), "{loads:?}");
    let mut conns: Vec<&str> = loads[..10].iter().filter_map(|l| l.split(' ').next()).collect();
    conns.dedup();
    assert_eq!(conns.len(), 1, "one connection for one user's tabs: {loads:?}");
    b.quit().await;
    gw.stop().await;
}

/// Over HTTP/1.1 a browser opens at most 6 connections per origin: with 6 tabs streaming, a 7th
/// tab hangs until one closes. This is why example.conf serves the browser over HTTP/2.
#[tokio::test]
async fn over_http1_the_seventh_tab_waits() {
    let db = notifications_db().await;
    let gw = Gateway::start(&db, &["--token-cookie", COOKIE]).await;
    let site = Site { tls: false, ..Site::h2(free_port()) };
    let _nginx = Nginx::start(&[("pgsse", &gw.addr)], std::slice::from_ref(&site)).await;
    let mut b = Browser::launch().await;
    b.user("alice", &site.origin(), "alice").await;
    let six = pages("tab", 6);
    for tab in &six {
        b.open("alice", tab, &site.url()).await;
    }
    b.expect_all(&six, "window.pgsse.connected.length === 1", T).await;
    let seventh = pages("seventh", 1);
    b.open_nowait("alice", &seventh[0], &site.url()).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(gw.connections().await, 6, "the 7th tab cannot even load its page");
    b.close("tab0").await;
    b.expect_all(&seventh, "window.pgsse && window.pgsse.connected.length === 1", T).await;
    b.quit().await;
    gw.stop().await;
}

/// The gateway is killed and restarted behind nginx while rows are inserted: every page's stream
/// resumes and no row is missing. Pages on the deploy location (nginx turns the 502 of a missing
/// gateway into a `retry:` stream) are resumed by the EventSource itself with Last-Event-ID; pages
/// on a location without that mapping see the 502, their EventSource gives up, and the page
/// reopens it with ?lastEventId=.
#[tokio::test]
async fn gateway_killed_and_restarted_behind_nginx_loses_no_event() {
    restart_behind_nginx(Stop::Kill).await;
}

/// The same with a graceful stop (SIGTERM, as a deploy does): the gateway drains its streams with
/// a jittered `retry:` and answers 503 while draining, which nginx also turns into a retry.
#[tokio::test]
async fn gateway_drained_and_restarted_behind_nginx_loses_no_event() {
    restart_behind_nginx(Stop::Term).await;
}

enum Stop {
    Kill,
    Term,
}

async fn restart_behind_nginx(stop: Stop) {
    let db = notifications_db().await;
    let port = free_port();
    let args = ["--token-cookie", COOKIE, "--trust-proxy", "--drain-period", "2s", "--shutdown-timeout", "5s"];
    let gw = GatewayProcess::spawn_on(&db, port, &args).await;
    assert!(gateway::wait_ready(&gw.addr, T).await, "gateway ready");
    let native = Site::h2(free_port());
    let reopen = Site { retry_answer: false, ..Site::h2(free_port()) };
    let nginx = Nginx::start(&[("pgsse", &gw.addr)], &[native.clone(), reopen.clone()]).await;

    let mut b = Browser::launch().await;
    // Cookies are per host, not per port: one context serves both sites.
    b.user("alice", &native.origin(), "alice").await;
    let (a, r) = (pages("native", 3), pages("reopen", 3));
    for p in &a {
        b.open("alice", p, &native.url()).await;
    }
    for p in &r {
        b.open("alice", p, &reopen.url()).await;
    }
    let all: Vec<String> = a.iter().chain(&r).cloned().collect();
    b.expect_all(&all, "window.pgsse.connected.length === 1", T).await;

    let before = titled("before", 3);
    insert_rows(&db, "alice", &before).await;
    b.expect_all(&all, "document.querySelectorAll('#events li').length === 3", T).await;

    match stop {
        Stop::Kill => gw.kill().await,
        Stop::Term => {
            let status =
                gw.signal_and_wait("TERM", Duration::from_secs(10)).await.expect("gateway exits after draining");
            assert!(status.success(), "graceful stop: {status}");
        }
    }
    let down = titled("down", 5);
    insert_rows(&db, "alice", &down).await;
    // Every page notices: nginx's retry answer ended at least once (native), or the EventSource gave up.
    b.expect_all(&a, "window.pgsse.errors >= 2", T).await;
    b.expect_all(&r, "window.pgsse.gaveUp >= 1", T).await;

    let gw = GatewayProcess::spawn_on(&db, port, &args).await;
    assert!(gateway::wait_ready(&gw.addr, T).await, "restarted gateway ready");
    let after = titled("after", 2);
    insert_rows(&db, "alice", &after).await;
    let want: Vec<String> = before.iter().chain(&down).chain(&after).cloned().collect();
    b.expect_all(&all, &format!("document.querySelectorAll('#events li').length >= {}", want.len()), T).await;
    tokio::time::sleep(Duration::from_millis(500)).await; // a late extra event would show up by now
    for p in &all {
        assert_eq!(b.titles(p).await, want, "{p}: every row once, in order");
    }

    for p in &all {
        let s = b.state(p).await;
        eprintln!(
            "{p}: connected {} (last via {}, replayed {}), errors {}, gave up {}, duplicates dropped {}",
            s["connected"].as_array().map_or(0, Vec::len),
            s["connected"].as_array().and_then(|c| c.last()).map_or(Value::Null, |c| c["via"].clone()),
            s["connected"].as_array().and_then(|c| c.last()).map_or(Value::Null, |c| c["replayed"].clone()),
            s["errors"],
            s["gaveUp"],
            s["duplicates"],
        );
        // At least once: only events from just before the restart may come again (and are dropped).
        assert!(s["duplicates"].as_u64().unwrap_or(0) <= before.len() as u64, "{p}: {s}");
    }
    for p in &a {
        let s = b.state(p).await;
        let last = &s["connected"][s["connected"].as_array().map_or(0, |c| c.len()) - 1];
        assert_eq!(s["gaveUp"], 0, "{p}: the EventSource never gave up: {s}");
        assert_eq!(last["via"], "header", "{p}: resumed by the EventSource itself: {s}");
        assert_eq!(last["resumed"], true, "{p}: {s}");
        assert!(last["replayed"].as_u64().unwrap_or(0) >= down.len() as u64, "{p}: replayed the missed rows: {s}");
    }
    for p in &r {
        let s = b.state(p).await;
        let last = &s["connected"][s["connected"].as_array().map_or(0, |c| c.len()) - 1];
        assert!(s["reopens"].as_u64().unwrap_or(0) >= 1, "{p}: {s}");
        assert_eq!(last["via"], "query", "{p}: reopened by the page: {s}");
        assert_eq!(last["resumed"], true, "{p}: {s}");
        assert!(last["replayed"].as_u64().unwrap_or(0) >= down.len() as u64, "{p}: replayed the missed rows: {s}");
    }

    // nginx's view: during the outage the native pages' reconnects carried Last-Event-ID and got
    // the retry answer (200, pgsse 502/503); the others got the 502 itself.
    for p in &all {
        b.close(p).await;
    }
    b.quit().await;
    let logged = |log: &[String], n: usize| log.iter().filter(|l| field(l, "upstream") == Some("200")).count() >= n;
    assert!(
        common::wait_until(Duration::from_secs(5), || async {
            logged(&nginx.stream_log(native.port), 6) && logged(&nginx.stream_log(reopen.port), 6)
        })
        .await,
        "all 12 streams logged"
    );
    let native_log = nginx.stream_log(native.port);
    let retried: Vec<&String> = native_log
        .iter()
        .filter(|l| l.contains("\" 200 ") && matches!(field(l, "upstream"), Some(u) if u.starts_with("50")))
        .collect();
    assert!(!retried.is_empty(), "retry answers while the gateway was down: {native_log:#?}");
    assert!(retried.iter().all(|l| field(l, "last_event_id").is_some()), "{retried:#?}");
    let resumed = native_log
        .iter()
        .filter(|l| field(l, "upstream") == Some("200") && field(l, "last_event_id").is_some())
        .count();
    assert_eq!(resumed, 3, "each native page resumed once with Last-Event-ID: {native_log:#?}");
    let reopen_log = nginx.stream_log(reopen.port);
    assert!(reopen_log.iter().any(|l| l.contains("\" 502 ") || l.contains("\" 503 ")), "{reopen_log:#?}");
    let resumed = reopen_log
        .iter()
        .filter(|l| field(l, "upstream") == Some("200") && field(l, "last_event_id_arg").is_some())
        .count();
    assert_eq!(resumed, 3, "each other page resumed once with ?lastEventId=: {reopen_log:#?}");
    gw.kill().await;
}

/// With nginx's proxy_read_timeout at 5 s and heartbeats every 2 s, a stream idle for 15 s stays
/// open: no error, no second `connected`. Without heartbeats (control), nginx cuts it.
#[tokio::test]
async fn heartbeats_keep_an_idle_stream_open_past_proxy_read_timeout() {
    let db = notifications_db().await;
    let gw = Gateway::start(&db, &["--token-cookie", COOKIE, "--heartbeat-interval", "2s"]).await;
    let quiet = Gateway::start(&db, &["--token-cookie", COOKIE, "--heartbeat-interval", "1h"]).await;
    let site = Site { read_timeout: Some("5s"), ..Site::h2(free_port()) };
    let control = Site { read_timeout: Some("5s"), upstream: "pgsse_quiet", ..Site::h2(free_port()) };
    let _nginx =
        Nginx::start(&[("pgsse", &gw.addr), ("pgsse_quiet", &quiet.addr)], &[site.clone(), control.clone()]).await;
    let mut b = Browser::launch().await;
    b.user("alice", &site.origin(), "alice").await;
    b.open("alice", "idle", &site.url()).await;
    b.open("alice", "quiet", &control.url()).await;
    let both = ["idle".to_string(), "quiet".to_string()];
    b.expect_all(&both, "window.pgsse.connected.length === 1", T).await;

    tokio::time::sleep(Duration::from_secs(15)).await;
    let idle = b.state("idle").await;
    assert_eq!(idle["errors"], 0, "{idle}");
    assert_eq!(idle["connected"].as_array().map(Vec::len), Some(1), "same stream all along: {idle}");
    assert!(idle["heartbeats"].as_u64().unwrap_or(0) >= 5, "{idle}");
    let q = b.state("quiet").await;
    assert!(q["errors"].as_u64().unwrap_or(0) >= 1, "without heartbeats nginx cuts the stream after 5 s: {q}");
    assert!(q["connected"].as_array().map_or(0, Vec::len) >= 2, "and the page reconnects: {q}");

    // The idle stream still delivers.
    insert_rows(&db, "alice", &["after-idle".to_string()]).await;
    b.expect_all(&both[..1], "document.querySelectorAll('#events li').length === 1", T).await;
    assert_eq!(b.titles("idle").await, ["after-idle"]);
    assert_eq!(b.state("idle").await["connected"].as_array().map(Vec::len), Some(1));
    b.quit().await;
    gw.stop().await;
    quiet.stop().await;
}

/// deploy/nginx/example.conf, with its includes and paths pointed at temp copies, passes `nginx -t`.
#[tokio::test]
async fn example_conf_passes_nginx_t() {
    let dir = TempDir::new("nginx-example");
    let d = &dir.0;
    self_signed_cert(d);
    let logs = d.display().to_string();
    for name in ["pgsse-upstream.conf", "pgsse-location.conf"] {
        let text = deploy_nginx(name).replace("/var/log/nginx", &logs);
        std::fs::write(d.join(name), text).expect("write");
    }
    let conf = deploy_nginx("example.conf");
    assert_eq!(conf.matches("include /etc/nginx/pgsse/").count(), 2, "example.conf includes both parts");
    let conf = conf.replace("/etc/nginx/pgsse/", &format!("{logs}/"));
    let conf = replace_once(
        &conf,
        "ssl_certificate /etc/nginx/certs/fullchain.pem;",
        &format!("ssl_certificate {logs}/cert.pem;"),
    );
    let conf = replace_once(
        &conf,
        "ssl_certificate_key /etc/nginx/certs/privkey.pem;",
        &format!("ssl_certificate_key {logs}/key.pem;"),
    );
    let conf = conf.replace("/var/log/nginx", &logs);
    std::fs::write(d.join("nginx.conf"), conf).expect("write nginx.conf");
    let out = nginx_command(d).arg("-t").stdin(Stdio::null()).output().await.expect("run nginx -t");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "nginx -t:\n{stderr}");
    assert!(!stderr.contains("[warn]"), "nginx -t warns:\n{stderr}");
}

/// `nginx -s reload` with streams open: the old worker would keep them (heartbeats keep a stream
/// from ever ending) and live on; deploy/nginx/example.conf's `worker_shutdown_timeout` bounds
/// that. The old worker is gone within the bound (shortened here to keep the test quick), and
/// every stream, closed with it, resumes through the new worker with nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_ends_the_old_worker_within_its_bound_and_streams_resume() {
    let example = deploy_nginx("example.conf");
    let line =
        example.lines().find(|l| l.starts_with("worker_shutdown_timeout ")).expect("example.conf bounds reloads");
    assert_eq!(line, "worker_shutdown_timeout 30s;");
    const BOUND: Duration = Duration::from_secs(2);
    let main = "worker_processes 1;\nworker_shutdown_timeout 2s;\n";

    let db = notifications_db().await;
    let gw = Gateway::start(&db, &[]).await;
    let port = free_port();
    let site = Site { port, tls: false, upstream: "pgsse", read_timeout: None, retry_answer: true };
    let nginx = Nginx::start_main(main, &[("pgsse", &gw.addr)], std::slice::from_ref(&site)).await;
    let front = format!("127.0.0.1:{port}");
    assert!(common::wait_until(T, || async { nginx.workers().len() == 1 }).await, "one worker");
    let old = nginx.workers();

    let users = ["ann", "ben", "cat"];
    let mut streams = Vec::new();
    for u in users {
        let mut s = gateway::stream(&front, u, &[]).await;
        s.next_named("connected", T).await.expect("connected");
        streams.push(s);
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (db, stop) = (db.clone(), stop.clone());
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for u in users {
                    insert_rows(&db, u, &[format!("{u}-{n}")]).await;
                }
                n += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            n
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;

    nginx.reload().await;
    let reloaded = Instant::now();
    assert!(
        common::wait_until(T, || async { nginx.workers().iter().any(|w| !old.contains(w)) }).await,
        "no new worker after the reload"
    );
    assert!(
        common::wait_until(BOUND + Duration::from_secs(3), || async {
            !nginx.workers().iter().any(|w| old.contains(w))
        })
        .await,
        "the old worker still runs {:?} after the reload",
        reloaded.elapsed()
    );
    let gone = reloaded.elapsed();
    assert!(
        gone >= BOUND - Duration::from_millis(200),
        "the old worker left at {gone:?}: streams kept it until the bound"
    );

    // Each stream was closed with the old worker; it resumes through the new one.
    let mut got: Vec<Vec<String>> = vec![Vec::new(); users.len()];
    let mut resumed = Vec::new();
    for (i, s) in streams.iter_mut().enumerate() {
        while let Some(e) = s.next_named("notification", T).await {
            got[i].push(common::title(&e));
        }
        assert!(s.is_closed(), "the old worker closed the stream");
        let id = s.last_event_id().expect("a position");
        resumed.push(gateway::stream(&front, users[i], &[("Last-Event-ID", id.as_str())]).await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let n = writer.await.expect("writer");
    for (i, s) in resumed.iter_mut().enumerate() {
        let last = format!("{}-{}", users[i], n - 1);
        while got[i].last() != Some(&last) {
            let e =
                s.next_named("notification", T).await.unwrap_or_else(|| panic!("{} ended at {:?}", users[i], got[i]));
            got[i].push(common::title(&e));
        }
        let mut seen: Vec<String> = Vec::new();
        for t in &got[i] {
            if !seen.contains(t) {
                seen.push(t.clone());
            }
        }
        let want: Vec<String> = (0..n).map(|k| format!("{}-{k}", users[i])).collect();
        assert_eq!(seen, want, "{}: every event, across the reload", users[i]);
    }
    eprintln!("old nginx worker gone {gone:?} after the reload (bound {BOUND:?})");
    gw.stop().await;
}
