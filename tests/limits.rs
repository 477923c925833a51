//! Bounded under floods: idle connections to either listener (connection caps, header and idle
//! timeouts) and repeated warnings (rate-limited log lines with a count of what was suppressed).

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::gateway::{self, notifications_db, request, Gateway, JWT_SECRET, STREAM_PATH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const T: Duration = Duration::from_secs(10);

/// `pgsse serve` as a process with at most `open_files` file descriptors, its stderr captured.
fn spawn(db: &str, open_files: u32, extra: &[&str]) -> (tokio::process::Child, String) {
    let listen = format!("127.0.0.1:{}", common::free_port());
    let child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -n {open_files} && exec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_pgsse"))
        .args(["serve", "--database-url", db, "--listen", &listen, "--jwt-secret", JWT_SECRET])
        .args(["--marker-interval", "50ms", "--drain-period", "0s"])
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn pgsse");
    (child, listen)
}

/// Reads what the peer sends until it closes; `None` if it is still open after `within`.
async fn closed_within(s: &mut TcpStream, within: Duration) -> Option<String> {
    let mut got = Vec::new();
    match tokio::time::timeout(within, s.read_to_end(&mut got)).await {
        Ok(_) => Some(String::from_utf8_lossy(&got).into_owned()),
        Err(_) => None,
    }
}

#[tokio::test]
async fn idle_connections_to_the_metrics_port_cannot_starve_the_main_port() {
    let db = notifications_db().await;
    let metrics = format!("127.0.0.1:{}", common::free_port());
    let flags = ["--metrics-listen", &metrics, "--metrics-max-connections", "8", "--header-read-timeout", "1s"];
    let (mut child, addr) = spawn(&db, 200, &flags);
    assert!(gateway::wait_ready(&addr, Duration::from_secs(20)).await, "gateway never became ready: {child:?}");

    // More idle connections than the process has file descriptors. Beyond the cap: answered 503
    // and closed at once.
    let mut idle = Vec::new();
    for _ in 0..300 {
        idle.push(TcpStream::connect(&metrics).await.expect("the kernel completes the handshake"));
    }
    let opened = Instant::now();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut refused = 0;
    let mut admitted = Vec::new();
    for mut c in idle {
        match closed_within(&mut c, Duration::from_millis(10)).await {
            Some(text) => {
                assert!(text.is_empty() || text.starts_with("HTTP/1.1 503"), "{text}");
                refused += 1;
            }
            None => admitted.push(c),
        }
    }
    assert_eq!((refused, admitted.len()), (292, 8), "a cap of 8");

    let (status, body) = match gateway::readyz(&addr).await {
        Some((status, body)) => (status, body),
        None => panic!("the main port stopped answering /readyz"),
    };
    assert_eq!(status, 200, "{body}");
    let mut s = gateway::stream(&addr, "m1", &[]).await;
    s.next_named("connected", T).await.expect("a stream opens while the metrics port is flooded");

    // Within the cap: closed after the header timeout, having sent nothing.
    for mut c in admitted {
        assert!(closed_within(&mut c, Duration::from_secs(5)).await.is_some(), "an idle connection was kept");
    }
    assert!(opened.elapsed() >= Duration::from_millis(900), "closed before the timeout");
    // The port works again, within its cap.
    let (status, _, text) = request(&metrics, "GET", "/metrics", &[]).await;
    assert_eq!(status, 200);
    assert!(text.contains("pgsse_tcp_connections_refused_total{listener=\"metrics\"}"), "{text}");
    common::insert(&db, "m1", "after the flood").await;
    assert_eq!(common::title(&s.next_named("notification", T).await.expect("event")), "after the flood");
    let _ = child.kill().await;
}

#[tokio::test]
async fn the_main_port_refuses_connections_over_its_cap_and_keeps_its_streams() {
    let db = notifications_db().await;
    let flags = ["--max-connections", "2", "--max-tcp-connections", "4", "--header-read-timeout", "2s"];
    let gw = Gateway::start(&db, &flags).await;
    let mut s = gw.stream("cap1", &[]).await;
    s.next_named("connected", T).await.expect("connected");
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(TcpStream::connect(&gw.addr).await.expect("connect"));
    }
    // Give the gateway time to accept those three before the fifth arrives.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut over = TcpStream::connect(&gw.addr).await.expect("connect");
    let _ = over.write_all(format!("GET {STREAM_PATH} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).await;
    let answer = closed_within(&mut over, Duration::from_secs(2)).await.expect("closed at once");
    assert!(answer.starts_with("HTTP/1.1 503") && answer.contains("too_many_connections"), "{answer:?}");

    // The stream goes on; once the idle ones time out, new connections are served again.
    common::insert(&db, "cap1", "still here").await;
    assert_eq!(common::title(&s.next_named("notification", T).await.expect("event")), "still here");
    for mut c in idle {
        assert!(closed_within(&mut c, Duration::from_secs(5)).await.is_some(), "idle connection kept");
    }
    assert!(gw.wait_ready(T).await);
    gw.stop().await;
}

#[tokio::test]
async fn a_flood_of_unsigned_notifies_logs_a_few_lines_with_the_count() {
    let db = notifications_db().await;
    let metrics = format!("127.0.0.1:{}", common::free_port());
    let (mut child, addr) = spawn(&db, 1024, &["--metrics-listen", &metrics]);
    assert!(gateway::wait_ready(&addr, Duration::from_secs(20)).await);
    let channel = gateway::channel(&db).await;
    let c = common::connect(&db).await;
    let flood = "SELECT pg_notify($1, 'forged ' || g) FROM generate_series(1, 5000) g";
    c.execute(flood, &[&channel]).await.expect("notify");
    let all_seen = || async { gateway::metric(&metrics, "pgsse_payloads_dropped_total").await >= 5000 };
    assert!(common::wait_until(T, all_seen).await, "the gateway did not receive the flood");
    // After the repeat interval, the next one is logged with how many were suppressed.
    tokio::time::sleep(pgsse::defaults::DEFAULT_LOG_REPEAT_INTERVAL).await;
    c.execute("SELECT pg_notify($1, 'one more')", &[&channel]).await.expect("notify");
    let one_more = || async { gateway::metric(&metrics, "pgsse_payloads_dropped_total").await >= 5001 };
    assert!(common::wait_until(T, one_more).await);

    let _ = child.start_kill();
    let mut stderr = String::new();
    let mut pipe = child.stderr.take().expect("stderr");
    let _ = tokio::time::timeout(T, pipe.read_to_string(&mut stderr)).await;
    let lines: Vec<&str> = stderr.lines().filter(|l| l.contains("ignoring a NOTIFY")).collect();
    assert_eq!(lines.len(), 2, "{stderr}");
    assert!(lines[1].contains("suppressed=4999"), "{stderr}");
}
