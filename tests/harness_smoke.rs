//! Self-test of the shared integration-test harness in tests/common.

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_postgres::AsyncMessage;

const T: Duration = Duration::from_secs(5);

#[tokio::test]
async fn cluster_starts_fast_and_answers() {
    let started = Instant::now();
    let pg = PgCluster::start();
    let elapsed = started.elapsed();
    assert_eq!(pg.host, "127.0.0.1");
    assert_eq!(pg.superuser, "postgres");
    assert_eq!(pg.url("postgres"), format!("postgres://postgres@127.0.0.1:{}/postgres", pg.port));
    let client = connect(&pg.url("postgres")).await;
    let row = client
        .query_one("SELECT current_setting('max_connections'), current_setting('fsync'), current_user::text", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "200");
    assert_eq!(row.get::<_, String>(1), "off");
    assert_eq!(row.get::<_, String>(2), "postgres");
    // The unix socket lives in the cluster's temp dir.
    assert!(pg.socket_dir().join(format!(".s.PGSQL.{}", pg.port)).exists());
    eprintln!("cluster start took {elapsed:?}");
}

#[tokio::test]
async fn fresh_databases_are_isolated() {
    let a = fresh_database();
    let b = fresh_database();
    assert_ne!(a, b);
    exec(&a, "CREATE TABLE t (x int); INSERT INTO t VALUES (1), (2);").await;
    exec(&b, "CREATE TABLE t (x int); INSERT INTO t VALUES (3);").await;
    let ca = connect(&a).await;
    let cb = connect(&b).await;
    let na: i64 = ca.query_one("SELECT count(*) FROM t", &[]).await.unwrap().get(0);
    let nb: i64 = cb.query_one("SELECT count(*) FROM t", &[]).await.unwrap().get(0);
    assert_eq!((na, nb), (2, 1));
}

#[tokio::test]
#[should_panic(expected = "does_not_exist")]
async fn exec_panics_with_server_message() {
    let db = fresh_database();
    exec(&db, "SELECT * FROM does_not_exist").await;
}

#[tokio::test]
async fn roles_and_databases() {
    let pg = PgCluster::start();
    let url = pg.create_database("app");
    assert_eq!(url, pg.url("app"));
    pg.create_role("alice", false);
    pg.create_role("admin", true);
    let alice = format!("postgres://alice@127.0.0.1:{}/app", pg.port);
    let c = connect(&alice).await;
    let row = c
        .query_one("SELECT current_user::text, (SELECT rolsuper FROM pg_roles WHERE rolname = 'admin')", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "alice");
    assert!(row.get::<_, bool>(1));
}

#[tokio::test]
async fn restart_keeps_data_and_drops_connections() {
    let pg = PgCluster::start();
    let url = pg.create_database("d");
    exec(&url, "CREATE TABLE t (x int); INSERT INTO t VALUES (42);").await;
    let old = connect(&url).await;
    let port = pg.port;

    pg.stop();
    assert!(!pg.is_running());
    assert!(tokio_postgres::connect(&url, tokio_postgres::NoTls).await.is_err());
    pg.stop(); // idempotent

    pg.start_again();
    assert_eq!(pg.port, port);
    assert!(old.query_one("SELECT 1", &[]).await.is_err());
    let c = connect(&url).await;
    let x: i32 = c.query_one("SELECT x FROM t", &[]).await.unwrap().get(0);
    assert_eq!(x, 42);

    pg.restart();
    assert!(c.query_one("SELECT 1", &[]).await.is_err());
    let c = connect(&url).await;
    let x: i32 = c.query_one("SELECT x FROM t", &[]).await.unwrap().get(0);
    assert_eq!(x, 42);
}

#[tokio::test]
async fn kill_connections_terminates_backends() {
    let db = fresh_database();
    let db_name = db.rsplit('/').next().unwrap().to_string();
    let victim = connect(&db).await;
    victim.query_one("SELECT 1", &[]).await.unwrap();
    shared_cluster().kill_connections(&db_name);
    assert!(victim.query_one("SELECT 1", &[]).await.is_err());
    // New connections still work.
    let c = connect(&db).await;
    c.query_one("SELECT 1", &[]).await.unwrap();
}

#[tokio::test]
async fn listen_notify_roundtrip() {
    let db = fresh_database();
    let (client, mut conn) = tokio_postgres::connect(&db, tokio_postgres::NoTls).await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(msg) = messages.next().await {
            match msg {
                Ok(AsyncMessage::Notification(n)) => {
                    let _ = tx.send((n.channel().to_string(), n.payload().to_string()));
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
    client.batch_execute("LISTEN chan").await.unwrap();
    exec(&db, "NOTIFY chan, 'hello'; SELECT pg_notify('chan', 'wörld');").await;
    let first = tokio::time::timeout(T, rx.recv()).await.unwrap().unwrap();
    let second = tokio::time::timeout(T, rx.recv()).await.unwrap().unwrap();
    assert_eq!(first, ("chan".to_string(), "hello".to_string()));
    assert_eq!(second, ("chan".to_string(), "wörld".to_string()));
}

#[tokio::test]
async fn wait_until_polls() {
    let start = Instant::now();
    assert!(wait_until(T, || async { start.elapsed() > Duration::from_millis(50) }).await);
    assert!(!wait_until(Duration::from_millis(60), || async { false }).await);
    assert_ne!(free_port(), 0);
}

// ---------------------------------------------------------------------------
// SseClient against a scripted HTTP server
// ---------------------------------------------------------------------------

/// Serves one connection: reads the request head, sends it back over `req_tx`,
/// then writes `pieces` with a short pause between them and closes (unless
/// `hold_open`).
async fn scripted_server(pieces: Vec<Vec<u8>>, hold_open: bool) -> (String, tokio::sync::oneshot::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (req_tx, req_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.unwrap();
        let mut req = Vec::new();
        let mut buf = [0u8; 1024];
        while !req.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = sock.read(&mut buf).await.unwrap();
            if n == 0 {
                return;
            }
            req.extend_from_slice(&buf[..n]);
        }
        let _ = req_tx.send(String::from_utf8_lossy(&req).into_owned());
        for p in pieces {
            sock.write_all(&p).await.unwrap();
            sock.flush().await.unwrap();
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
        if hold_open {
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
    });
    (addr, req_rx)
}

fn chunk(data: &[u8]) -> Vec<u8> {
    let mut v = format!("{:x}\r\n", data.len()).into_bytes();
    v.extend_from_slice(data);
    v.extend_from_slice(b"\r\n");
    v
}

/// Splits `bytes` into pieces at the given offsets (each piece is a TCP write).
fn split_at(bytes: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut prev = 0;
    for &c in cuts {
        out.push(bytes[prev..c].to_vec());
        prev = c;
    }
    out.push(bytes[prev..].to_vec());
    out
}

#[tokio::test]
async fn sse_client_parses_chunked_stream() {
    let head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    // Event stream text; chunks are cut in awkward places (inside a field,
    // between CR and LF, inside a multi-byte character).
    let chunks: Vec<&[u8]> = vec![
        b"\xEF\xBB\xBF: welcome comment\r\nretry: 1500\r\n\r\nev",
        b"ent: greet\r\ndata: hello\r",
        b"\ndata: wor",
        "ld ✓\r\nid: 7\r\n\r\n: keep-alive\r\n\r\n".as_bytes(),
        b"data:no space\n\n",
        b"event: heartbeat\ndata\n\nevent: greet\rdata: cr only\rid: 8\r\r",
        b"id: 9\n\n", // id-only block: not dispatched, but updates last id
        b"data: tail\nid: 10\n\ndata: incomplete-without-blank-line\n",
    ];
    let mut body = Vec::new();
    for c in &chunks {
        body.extend_from_slice(&chunk(c));
    }
    body.extend_from_slice(b"0\r\n\r\n");
    let mut all = head.clone();
    let head_len = head.len();
    all.extend_from_slice(&body);
    // Split the wire bytes so TCP reads straddle chunk headers and data.
    let cuts: Vec<usize> = (head_len - 5..all.len()).step_by(7).collect();
    let (addr, req_rx) = scripted_server(split_at(&all, &cuts), true).await;

    let mut c = SseClient::connect(&addr, "/events?channel=a", &[("Last-Event-ID", "3")]).await.unwrap();
    let req = req_rx.await.unwrap();
    assert!(req.starts_with("GET /events?channel=a HTTP/1.1\r\n"), "{req}");
    assert!(req.contains("Last-Event-ID: 3\r\n"), "{req}");
    assert!(req.to_ascii_lowercase().contains("accept: text/event-stream"), "{req}");
    assert_eq!(c.status, 200);
    assert_eq!(c.header("Content-Type"), Some("text/event-stream"));
    assert_eq!(c.header("transfer-encoding"), Some("chunked"));

    let e1 = c.next_event(T).await.unwrap();
    assert_eq!(
        e1,
        SseEvent { event: "greet".into(), data: "hello\nworld ✓".into(), id: Some("7".into()), retry: None }
    );
    assert_eq!(c.retry(), Some(1500));
    assert_eq!(c.last_event_id().as_deref(), Some("7"));
    let e2 = c.next_event(T).await.unwrap();
    assert_eq!(e2.event, "message");
    assert_eq!(e2.data, "no space");
    assert_eq!(e2.id, None);
    // next_named skips the heartbeat (an event with empty data).
    let e3 = c.next_named("greet", T).await.unwrap();
    assert_eq!(e3.data, "cr only");
    assert_eq!(e3.id.as_deref(), Some("8"));
    let e4 = c.next_event(T).await.unwrap();
    assert_eq!(e4.data, "tail");
    assert_eq!(e4.id.as_deref(), Some("10"));
    assert_eq!(c.last_event_id().as_deref(), Some("10"));
    // The final chunk ends the body; the incomplete event is discarded.
    assert_eq!(c.next_event(T).await, None);
    assert!(c.is_closed());
    assert_eq!(c.comment_count(), 2);
    assert_eq!(c.last_comment(), Some(" keep-alive"));
}

#[tokio::test]
async fn sse_client_collect_and_timeout() {
    let head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    let mut pieces = vec![head];
    for i in 0..5 {
        pieces.push(chunk(format!(": ping\n\nevent: tick\ndata: {i}\nid: {i}\n\n").as_bytes()));
    }
    let (addr, _req) = scripted_server(pieces, true).await;
    let mut c = SseClient::connect(&addr, "/", &[]).await.unwrap();
    let got = c.collect("tick", 3, T).await;
    assert_eq!(got.iter().map(|e| e.data.as_str()).collect::<Vec<_>>(), ["0", "1", "2"]);
    let rest = c.collect("tick", 10, Duration::from_millis(300)).await;
    assert_eq!(rest.len(), 2);
    // Stream held open: timeout, not EOF.
    let started = Instant::now();
    assert_eq!(c.next_event(Duration::from_millis(100)).await, None);
    assert!(started.elapsed() >= Duration::from_millis(90));
    assert!(!c.is_closed());
    assert_eq!(c.last_event_id().as_deref(), Some("4"));
}

#[tokio::test]
async fn sse_client_close_delimited_stream() {
    let resp = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\ndata: a\n\ndata: b\n\n"
        .to_vec();
    let (addr, _req) = scripted_server(split_at(&resp, &[70, 80]), false).await;
    let mut c = SseClient::connect(&addr, "/", &[]).await.unwrap();
    assert_eq!(c.next_event(T).await.unwrap().data, "a");
    assert_eq!(c.next_event(T).await.unwrap().data, "b");
    assert_eq!(c.next_event(T).await, None);
    assert!(c.is_closed());
}

#[tokio::test]
async fn sse_client_body_text() {
    // Content-Length body.
    let resp = b"HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nContent-Length: 22\r\n\r\n{\"error\":\"bad token\"}\n".to_vec();
    let (addr, _req) = scripted_server(split_at(&resp, &[40, 100]), true).await;
    let c = SseClient::connect(&addr, "/", &[]).await.unwrap();
    assert_eq!(c.status, 401);
    assert_eq!(c.header("content-length"), Some("22"));
    assert_eq!(c.body_text().await, "{\"error\":\"bad token\"}\n");

    // Chunked body.
    let mut resp = b"HTTP/1.1 400 Bad Request\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    resp.extend(chunk(b"missing "));
    resp.extend(chunk(b"channel"));
    resp.extend(b"0\r\n\r\n");
    let (addr, _req) = scripted_server(split_at(&resp, &[60, 70]), true).await;
    let c = SseClient::connect(&addr, "/", &[]).await.unwrap();
    assert_eq!(c.status, 400);
    assert_eq!(c.body_text().await, "missing channel");

    // No body.
    let resp = b"HTTP/1.1 204 No Content\r\n\r\n".to_vec();
    let (addr, _req) = scripted_server(vec![resp], true).await;
    let c = SseClient::connect(&addr, "/", &[]).await.unwrap();
    assert_eq!(c.status, 204);
    assert_eq!(c.body_text().await, "");
}

#[tokio::test]
async fn sse_client_connect_refused() {
    let port = free_port();
    let err = SseClient::connect(&format!("127.0.0.1:{port}"), "/", &[]).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
}
