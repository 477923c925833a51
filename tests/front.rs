//! The connection front: stream GETs are written by the lean path, everything else by hyper, and
//! a client cannot tell which. Raw sockets, so framing, keep-alive and odd heads are exercised.

mod common;

use std::time::Duration;

use common::gateway::{self, notifications_db, Gateway, STREAM_PATH};
use common::{insert, title, SseClient};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const T: Duration = Duration::from_secs(10);

fn stream_request(user: &str, version: &str, extra: &str) -> String {
    format!("GET {STREAM_PATH} {version}\r\nHost: x\r\nAuthorization: Bearer {}\r\n{extra}\r\n", gateway::token(user))
}

async fn title_of_next(s: &mut SseClient) -> String {
    title(&s.next_named("notification", T).await.expect("a notification"))
}

#[tokio::test]
async fn streams_are_chunked_on_http11_and_close_delimited_on_http10() {
    let db = notifications_db().await;
    let gw = Gateway::start(&db, &[]).await;
    let sock = TcpStream::connect(&gw.addr).await.expect("connect");
    let mut s11 = SseClient::send(sock, stream_request("f1", "HTTP/1.1", "").as_bytes()).await.expect("head");
    assert_eq!(s11.status, 200);
    assert_eq!(s11.header("transfer-encoding"), Some("chunked"));
    assert!(s11.header("date").is_some(), "a Date header, as hyper sends");
    s11.next_named("connected", T).await.expect("connected");

    let sock = TcpStream::connect(&gw.addr).await.expect("connect");
    let mut s10 = SseClient::send(sock, stream_request("f1", "HTTP/1.0", "").as_bytes()).await.expect("head");
    assert_eq!(s10.status, 200);
    assert_eq!(s10.header("transfer-encoding"), None, "no chunked coding for an HTTP/1.0 client");
    assert_eq!(s10.header("connection"), Some("close"));
    s10.next_named("connected", T).await.expect("connected");

    insert(&db, "f1", "both").await;
    assert_eq!(title_of_next(&mut s11).await, "both");
    assert_eq!(title_of_next(&mut s10).await, "both");
    gw.stop().await;
}

#[tokio::test]
async fn a_stream_after_another_request_on_the_same_connection_works() {
    let db = notifications_db().await;
    let gw = Gateway::start(&db, &[]).await;

    // First /healthz (served by hyper), then a stream on the same keep-alive connection.
    let sock = TcpStream::connect(&gw.addr).await.expect("connect");
    let health = SseClient::send(sock, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("head");
    assert_eq!(health.status, 200);
    let (body, sock) = health.finish().await;
    assert!(body.contains("ok"), "{body}");
    let mut s = SseClient::send(sock, stream_request("f2", "HTTP/1.1", "").as_bytes()).await.expect("stream head");
    assert_eq!(s.status, 200);
    s.next_named("connected", T).await.expect("connected");

    // A refused stream (bad token) keeps the connection; the retry on it succeeds.
    let sock = TcpStream::connect(&gw.addr).await.expect("connect");
    let bad = format!("GET {STREAM_PATH} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer nope\r\n\r\n");
    let refused = SseClient::send(sock, bad.as_bytes()).await.expect("head");
    assert_eq!(refused.status, 401);
    assert!(refused.header("www-authenticate").is_some());
    let (body, sock) = refused.finish().await;
    let v: serde_json::Value = serde_json::from_str(&body).expect("json error body");
    assert_eq!(v["error"], "malformed_token", "{v}");
    let mut again = SseClient::send(sock, stream_request("f2", "HTTP/1.1", "").as_bytes()).await.expect("head");
    assert_eq!(again.status, 200);
    again.next_named("connected", T).await.expect("connected");

    insert(&db, "f2", "kept").await;
    assert_eq!(title_of_next(&mut s).await, "kept");
    assert_eq!(title_of_next(&mut again).await, "kept");
    gw.stop().await;
}

#[tokio::test]
async fn a_head_sent_byte_by_byte_and_a_get_with_a_body_both_open_streams() {
    let db = notifications_db().await;
    let gw = Gateway::start(&db, &[]).await;

    let mut sock = TcpStream::connect(&gw.addr).await.expect("connect");
    sock.set_nodelay(true).expect("nodelay");
    let req = stream_request("f3", "HTTP/1.1", "");
    let (most, last) = req.as_bytes().split_at(req.len() - 1);
    for b in most {
        sock.write_all(&[*b]).await.expect("write");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let mut slow = SseClient::send(sock, last).await.expect("head");
    assert_eq!(slow.status, 200);
    slow.next_named("connected", T).await.expect("connected");

    // Unusual but valid: a body on the GET. hyper takes it and the stream still opens.
    let sock = TcpStream::connect(&gw.addr).await.expect("connect");
    let with_body = format!("{}hello", stream_request("f3", "HTTP/1.1", "Content-Length: 5\r\n"));
    let mut bodied = SseClient::send(sock, with_body.as_bytes()).await.expect("head");
    assert_eq!(bodied.status, 200);
    bodied.next_named("connected", T).await.expect("connected");

    insert(&db, "f3", "x").await;
    assert_eq!(title_of_next(&mut slow).await, "x");
    assert_eq!(title_of_next(&mut bodied).await, "x");
    gw.stop().await;
}

#[tokio::test]
async fn malformed_and_oversized_heads_get_json_errors() {
    let db = notifications_db().await;
    let gw = Gateway::start(&db, &["--max-header-bytes", "8KiB"]).await;
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (format!("GET {STREAM_PATH} HTTP/1.1\r\nBad Header\r\n\r\n").into_bytes(), 400, "bad_request"),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n".to_vec(), 400, "bad_request"),
        (
            format!("GET {STREAM_PATH} HTTP/1.1\r\nHost: x\r\nCookie: {}\r\n\r\n", "c".repeat(9000)).into_bytes(),
            431,
            "request_header_fields_too_large",
        ),
        (format!("GET {STREAM_PATH} HTTP/1.1\r\n{}\r\n", "X-A: 1\r\n".repeat(120)).into_bytes(), 400, "bad_request"),
    ];
    for (req, status, code) in cases {
        let sock = TcpStream::connect(&gw.addr).await.expect("connect");
        let resp = SseClient::send(sock, &req).await.expect("a response");
        assert_eq!(resp.status, status, "{:?}", String::from_utf8_lossy(&req[..40.min(req.len())]));
        assert_eq!(resp.header("content-type"), Some("application/json"));
        assert_eq!(resp.header("connection"), Some("close"));
        let (body, mut sock) = resp.finish().await;
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(v["error"], code, "{v}");
        let mut rest = Vec::new();
        let n = tokio::time::timeout(T, sock.read_to_end(&mut rest)).await.expect("closed");
        assert!(n.is_ok() && rest.is_empty(), "the connection is closed after the error");
    }
    // The gateway is unharmed.
    let mut s = gw.stream("f4", &[]).await;
    s.next_named("connected", T).await.expect("connected");
    gw.stop().await;
}

#[tokio::test]
async fn bytes_a_client_sends_after_its_request_are_ignored_and_its_close_is_noticed() {
    let db = notifications_db().await;
    let gw = Gateway::start(&db, &[]).await;
    let sock = TcpStream::connect(&gw.addr).await.expect("connect");
    let mut s = SseClient::send(sock, stream_request("f5", "HTTP/1.1", "").as_bytes()).await.expect("head");
    s.next_named("connected", T).await.expect("connected");
    let mut other = gw.stream("f5", &[]).await;
    other.next_named("connected", T).await.expect("connected");
    assert_eq!(gw.connections().await, 2);

    // A pipelined request and some garbage: nothing is answered, the stream goes on.
    s.write_raw(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nzzzz").await;
    insert(&db, "f5", "still").await;
    assert_eq!(title_of_next(&mut s).await, "still");

    drop(s);
    assert!(common::wait_until(T, || async { gw.connections().await == 1 }).await, "a hung-up stream leaves the hub");
    drop(other);
    assert!(common::wait_until(T, || async { gw.connections().await == 0 }).await);
    gw.stop().await;
}
