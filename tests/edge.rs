//! Behaviour at the edge: drain on SIGTERM, limits, slow clients, CORS, token expiry, metrics.

mod common;

use std::time::{Duration, Instant};

use common::gateway::{self, notifications_db, request, Gateway, GatewayProcess, STREAM_PATH};
use common::{exec, free_port, SseClient};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const T: Duration = Duration::from_secs(10);

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

#[tokio::test]
async fn sigterm_drains_streams_spread_out_and_exits_zero() {
    let db = notifications_db().await;
    let gw = GatewayProcess::spawn(&db, &["--drain-period", "2s", "--shutdown-timeout", "6s"]).await;
    assert!(gateway::wait_ready(&gw.addr, T).await);
    let mut streams = Vec::new();
    for i in 0..20 {
        let mut s = gateway::stream(&gw.addr, &format!("d{i}"), &[]).await;
        s.next_named("connected", T).await.expect("connected");
        streams.push(s);
    }
    let addr = gw.addr.clone();
    let term_at = Instant::now();
    let exit = tokio::spawn(gw.signal_and_wait("TERM", Duration::from_secs(10)));
    assert!(
        common::wait_until(Duration::from_millis(500), || async {
            matches!(gateway::readyz(&addr).await, Some((503, _)))
        })
        .await,
        "/readyz turns 503 at once"
    );
    let c = SseClient::connect(&addr, STREAM_PATH, &[("Authorization", &format!("Bearer {}", gateway::token("late")))])
        .await
        .expect("still accepting");
    assert_eq!(c.status, 503, "new streams are refused while draining");
    assert!(c.header("retry-after").is_some());

    // Watch every stream at once, so each close is timed when it happens.
    let watchers: Vec<_> = streams
        .into_iter()
        .map(|mut s| {
            tokio::spawn(async move {
                let closed = s.wait_closed(Duration::from_secs(5)).await;
                (closed, term_at.elapsed(), s.retry())
            })
        })
        .collect();
    let mut closed_at = Vec::new();
    for w in watchers {
        let (closed, at, retry) = w.await.expect("watcher");
        assert!(closed, "every stream is closed by the drain");
        closed_at.push(at);
        let retry = retry.expect("a retry: before closing");
        assert!((1000..5000).contains(&retry), "jittered retry {retry}");
    }
    let status = exit.await.expect("join").expect("exited within the shutdown timeout");
    assert!(status.success(), "exit status {status:?}");
    assert!(term_at.elapsed() < Duration::from_secs(6));
    let spread =
        closed_at.iter().max().copied().unwrap_or_default() - closed_at.iter().min().copied().unwrap_or_default();
    assert!(spread >= Duration::from_millis(500), "closes spread over the drain period, got {spread:?}");
}

#[tokio::test]
async fn connection_limits_answer_503_and_429() {
    let db = notifications_db().await;
    let gw = Gateway::start(&db, &["--max-connections", "3", "--max-connections-per-user", "2"]).await;
    let _a1 = gw.stream("a", &[]).await;
    let _a2 = gw.stream("a", &[]).await;
    let bearer = |u: &str| format!("Bearer {}", gateway::token(u));
    let (status, headers, body) = request(&gw.addr, "GET", STREAM_PATH, &[("Authorization", &bearer("a"))]).await;
    assert_eq!(status, 429, "{body}");
    assert!(header(&headers, "retry-after").is_some());
    let _b = gw.stream("b", &[]).await;
    let (status, headers, body) = request(&gw.addr, "GET", STREAM_PATH, &[("Authorization", &bearer("c"))]).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(serde_json::from_str::<serde_json::Value>(&body).expect("json")["error"], "too_many_connections");
    assert!(header(&headers, "retry-after").is_some());
    drop(_b);
    assert!(common::wait_until(T, || async { gw.connections().await == 2 }).await);
    let _c = gw.stream("c", &[]).await;
    gw.stop().await;
}

#[tokio::test]
async fn oversized_heads_get_431_and_slow_heads_are_cut() {
    let db = notifications_db().await;
    let gw = Gateway::start(&db, &["--header-read-timeout", "500ms", "--max-header-bytes", "8KiB"]).await;
    let big = "x".repeat(20_000);
    let (status, _, _) = request(&gw.addr, "GET", STREAM_PATH, &[("X-Big", &big)]).await;
    assert_eq!(status, 431);

    // Slowloris: half a request head, then nothing.
    let mut s = tokio::net::TcpStream::connect(&gw.addr).await.expect("connect");
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await.expect("write");
    let started = Instant::now();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await.expect("closed in time");
    assert!(started.elapsed() < Duration::from_secs(4), "cut after the header read timeout");
    gw.stop().await;
}

#[tokio::test]
async fn a_client_that_never_reads_is_cut_alone() {
    let db = notifications_db().await;
    let metrics_port = free_port();
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let flags = ["--max-queue-bytes", "256KiB", "--slow-client-timeout", "2s", "--heartbeat-interval", "1s"];
    let gw = Gateway::start(&db, &[&flags[..], &["--metrics-listen", &metrics_addr]].concat()).await;
    let mut reader = gw.stream("slow", &[]).await;
    reader.next_named("connected", T).await.expect("connected");

    // The stuck client: a tiny receive buffer, a request, and never a read.
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.set_recv_buffer_size(4096).expect("rcvbuf");
    let mut stuck = sock.connect(gw.addr.parse().expect("addr")).await.expect("connect");
    let req =
        format!("GET {STREAM_PATH} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n", gateway::token("slow"));
    stuck.write_all(req.as_bytes()).await.expect("write");
    assert!(common::wait_until(T, || async { gw.connections().await == 2 }).await);

    let c = common::connect(&db).await;
    let started = Instant::now();
    let publisher = tokio::spawn(async move {
        let payload = "y".repeat(10_000);
        for i in 0..1000 {
            c.execute(
                "SELECT pgsse.publish('slow', jsonb_build_object('i', $1::int, 'pad', $2::text))",
                &[&i, &payload],
            )
            .await
            .expect("publish");
        }
    });
    let got = reader.collect("notification", 1000, Duration::from_secs(60)).await;
    assert_eq!(got.len(), 1000, "the reading client gets everything");
    for (i, e) in got.iter().enumerate() {
        let v: serde_json::Value = serde_json::from_str(&e.data).expect("json");
        assert_eq!(v["i"], i, "in order");
    }
    publisher.await.expect("publisher");
    println!("1000 x 10 KB delivered to the reading client in {:?}", started.elapsed());
    assert!(common::wait_until(T, || async { gw.connections().await == 1 }).await, "the stuck client was dropped");
    let (status, _, text) = request(&metrics_addr, "GET", "/metrics", &[]).await;
    assert_eq!(status, 200);
    assert!(text.contains("pgsse_slow_client_disconnects_total 1"), "{text}");
    assert!(text.contains("pgsse_streams_cut_total{reason=\"slow_client\"} 1"), "{text}");
    assert!(text.contains("pgsse_connections_closed_total{reason=\"slow_client\"} 1"), "{text}");
    drop(stuck);
    gw.stop().await;
}

#[tokio::test]
async fn cors_allows_listed_origins_only() {
    let db = notifications_db().await;
    let gw = Gateway::start(&db, &["--cors-origin", "https://app.example.com,http://localhost:3000"]).await;
    let pre = [
        ("Origin", "https://app.example.com"),
        ("Access-Control-Request-Method", "GET"),
        ("Access-Control-Request-Headers", "last-event-id, authorization"),
    ];
    let (status, headers, _) = request(&gw.addr, "OPTIONS", STREAM_PATH, &pre).await;
    assert_eq!(status, 204);
    assert_eq!(header(&headers, "access-control-allow-origin"), Some("https://app.example.com"));
    assert_eq!(header(&headers, "access-control-allow-credentials"), Some("true"));
    assert!(header(&headers, "access-control-allow-headers").is_some_and(|h| h.contains("last-event-id")));
    assert!(header(&headers, "vary").is_some_and(|v| v.contains("Origin")));

    let (status, headers, _) = request(&gw.addr, "OPTIONS", STREAM_PATH, &[("Origin", "https://evil.example")]).await;
    assert_eq!(status, 403);
    assert_eq!(header(&headers, "access-control-allow-origin"), None);

    let auth = format!("Bearer {}", gateway::token("x"));
    let s = SseClient::connect(&gw.addr, STREAM_PATH, &[("Authorization", &auth), ("Origin", "http://localhost:3000")])
        .await
        .expect("connect");
    assert_eq!(s.status, 200);
    assert_eq!(s.header("access-control-allow-origin"), Some("http://localhost:3000"));
    assert_eq!(s.header("access-control-allow-credentials"), Some("true"));
    assert!(s.header("vary").is_some_and(|v| v.contains("Origin")));
    drop(s);
    gw.stop().await;
}

#[tokio::test]
async fn a_stream_is_closed_when_its_token_expires() {
    let db = notifications_db().await;
    let gw = Gateway::start(&db, &[]).await;
    let short = pgsse::auth::mint_hs256("exp", gateway::JWT_SECRET.as_bytes(), Duration::from_secs(2), None, None)
        .expect("mint");
    let mut s =
        SseClient::connect(&gw.addr, STREAM_PATH, &[("Authorization", &format!("Bearer {short}"))]).await.expect("c");
    assert_eq!(s.status, 200);
    s.next_named("connected", T).await.expect("connected");
    exec(&db, "INSERT INTO notifications (user_id, title) VALUES ('exp', 'before expiry')").await;
    s.next_named("notification", T).await.expect("live while valid");
    let e = s.next_named("auth-expired", Duration::from_secs(5)).await.expect("auth-expired before the close");
    assert!(e.data.contains("token_expired"));
    assert!(s.wait_closed(Duration::from_secs(2)).await, "closed right after");
    gw.stop().await;
}

#[tokio::test]
async fn metrics_count_what_happens() {
    let db = notifications_db().await;
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    // No heartbeat during the test: it counts as a delivered event too.
    let gw = Gateway::start(&db, &["--metrics-listen", &metrics_addr, "--heartbeat-interval", "1h"]).await;
    let mut s = gw.stream("m", &[]).await;
    s.next_named("connected", T).await.expect("connected");
    exec(&db, "INSERT INTO notifications (user_id, title) VALUES ('m', 'counted')").await;
    s.next_named("notification", T).await.expect("event");
    let _ = request(&gw.addr, "GET", STREAM_PATH, &[("Authorization", "Bearer nope")]).await;
    let (status, headers, text) = request(&metrics_addr, "GET", "/metrics", &[]).await;
    assert_eq!(status, 200);
    assert!(header(&headers, "content-type").is_some_and(|c| c.contains("openmetrics-text")));
    for line in [
        "pgsse_connections_open 1",
        "pgsse_events_received_total 1",
        "pgsse_events_delivered_total 1",
        "pgsse_auth_failures_total{reason=\"malformed_token\"} 1",
        "pgsse_pg_listening 1",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    for name in ["pgsse_listen_lag_seconds", "pgsse_notify_queue_usage", "pgsse_pg_reconnects_total"] {
        assert!(text.contains(name), "missing {name}");
    }
    let (status, _, _) = request(&gw.addr, "GET", "/metrics", &[]).await;
    assert_eq!(status, 404, "metrics are not on the public port");
    gw.stop().await;
}
