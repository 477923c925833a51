//! The request-head reader on its own: what a head is, when it is complete, and who serves it.

use super::*;

const PATH: &str = "/events";
const LIMIT: usize = 8192;

/// The lean path's choice as `read_head` makes it, for a gateway with no extra routes.
fn lean(method: &Method, path: &str) -> bool {
    *method == Method::GET && path == PATH
}

/// Hands all of `bytes` to the reader at once.
fn read(bytes: &[u8], limit: usize) -> (Option<Head>, BytesMut) {
    let mut buf = BytesMut::from(bytes);
    let head = next_head(&mut buf, &mut 0, limit, &lean);
    (head, buf)
}

fn describe(head: &Option<Head>) -> String {
    match head {
        None => "incomplete".into(),
        Some(Head::Stream(..)) => "a stream".into(),
        Some(Head::Other) => "for hyper".into(),
        Some(Head::None) => "no request".into(),
        Some(Head::Refused(r)) => format!("refused with {}", r.status()),
    }
}

fn stream(head: Option<Head>) -> (Request<()>, bool) {
    match head {
        Some(Head::Stream(req, keep_alive)) => (req, keep_alive),
        other => panic!("expected a stream, got {}", describe(&other)),
    }
}

/// The status and JSON error code of a refusal.
fn refused(head: Option<Head>) -> (StatusCode, String) {
    match head {
        Some(Head::Refused(resp)) => {
            let status = resp.status();
            let Body::Full(Some(body)) = resp.into_body() else { panic!("refusal without a body") };
            let json: serde_json::Value = serde_json::from_slice(&body).expect("json body");
            (status, json["error"].as_str().unwrap_or_default().to_string())
        }
        other => panic!("expected a refusal, got {}", describe(&other)),
    }
}

fn is_other(head: &Option<Head>) -> bool {
    matches!(head, Some(Head::Other))
}

#[test]
fn a_complete_head_opens_a_stream_and_leaves_what_follows() {
    let head = b"GET /events?lastEventId=1.2 HTTP/1.1\r\nHost: gw\r\nLast-Event-ID: 0000004d.7\r\n\r\n";
    let (got, buf) = read(&[&head[..], b"GET /next"].concat(), LIMIT);
    let (req, keep_alive) = stream(got);
    assert!(keep_alive);
    assert_eq!((req.method(), req.version()), (&Method::GET, Version::HTTP_11));
    assert_eq!(req.uri().path(), "/events");
    assert_eq!(req.uri().query(), Some("lastEventId=1.2"));
    assert_eq!(req.headers()["host"], "gw");
    assert_eq!(req.headers()["last-event-id"], "0000004d.7");
    assert_eq!(&buf[..], b"GET /next", "only the head is taken; a pipelined request stays");
}

#[test]
fn a_partial_head_asks_for_more_and_keeps_its_bytes() {
    for partial in [&b""[..], b"GET", b"GET /events HTTP/1.1\r\n", b"GET /events HTTP/1.1\r\nHost: gw\r\n"] {
        let (got, buf) = read(partial, LIMIT);
        assert!(got.is_none(), "{:?}: {}", String::from_utf8_lossy(partial), describe(&got));
        assert_eq!(&buf[..], partial);
    }
}

#[test]
fn a_head_sent_byte_by_byte_completes_on_its_last_byte() {
    let head = b"GET /events HTTP/1.1\r\nHost: gw\r\nCookie: a=b\r\n\r\n";
    let (mut buf, mut searched) = (BytesMut::new(), 0);
    for (i, b) in head.iter().enumerate() {
        buf.extend_from_slice(&[*b]);
        let got = next_head(&mut buf, &mut searched, LIMIT, &lean);
        if i + 1 < head.len() {
            assert!(got.is_none(), "byte {i}: {}", describe(&got));
        } else {
            let (req, keep_alive) = stream(got);
            assert!(keep_alive);
            assert_eq!(req.headers()["cookie"], "a=b");
            assert!(buf.is_empty());
        }
    }
    // A bare-LF head (accepted by httparse) is found the same way.
    let (got, _) = read(b"GET /events HTTP/1.1\nHost: gw\n\n", LIMIT);
    stream(got);
}

#[test]
fn heads_over_the_limit_get_431() {
    let head = b"GET /events HTTP/1.1\r\nHost: gw\r\n\r\n";
    let (got, _) = read(head, head.len());
    stream(got);
    let (got, _) = read(head, head.len() - 1);
    assert_eq!(refused(got), (StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "request_header_fields_too_large".into()));
    // Incomplete but already at the limit: no need to wait for the rest.
    let (got, _) = read(&[&b"GET /events HTTP/1.1\r\nX: "[..], &[b'a'; 64]].concat(), 64);
    assert_eq!(refused(got).0, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    // A long head for hyper is refused here too.
    let (got, _) = read(b"POST /other HTTP/1.1\r\nHost: gw\r\n\r\n", 16);
    assert_eq!(refused(got).0, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
}

#[test]
fn malformed_heads_get_400() {
    for bad in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET /events HTTP/2.0\r\n\r\n",
        b"GET /events\r\n\r\n",
        b"GET  /events HTTP/1.1\r\n\r\n",
        b"GET /events HTTP/1.1\r\nBad Name: x\r\n\r\n",
        b"GET /events HTTP/1.1\r\nX: a\x01b\r\n\r\n",
    ] {
        let (got, _) = read(bad, LIMIT);
        assert_eq!(refused(got), (StatusCode::BAD_REQUEST, "bad_request".into()), "{:?}", String::from_utf8_lossy(bad));
    }
    let many: String = (0..=MAX_HEADERS).map(|i| format!("X-{i}: v\r\n")).collect();
    let (got, _) = read(format!("GET /events HTTP/1.1\r\n{many}\r\n").as_bytes(), LIMIT);
    assert_eq!(refused(got).0, StatusCode::BAD_REQUEST);
}

#[test]
fn http10_streams_close_and_http11_streams_keep_alive_unless_told() {
    let (req, keep_alive) = stream(read(b"GET /events HTTP/1.0\r\n\r\n", LIMIT).0);
    assert_eq!((req.version(), keep_alive), (Version::HTTP_10, false));
    let (req, keep_alive) = stream(read(b"GET /events HTTP/1.1\r\n\r\n", LIMIT).0);
    assert_eq!((req.version(), keep_alive), (Version::HTTP_11, true));
    let (_, keep_alive) = stream(read(b"GET /events HTTP/1.1\r\nConnection: keep-alive, close\r\n\r\n", LIMIT).0);
    assert!(!keep_alive);
}

#[test]
fn a_get_with_a_body_goes_to_hyper_with_every_byte() {
    for head in [
        &b"GET /events HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"[..],
        b"GET /events HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ] {
        let (got, buf) = read(head, LIMIT);
        assert!(is_other(&got), "{}", describe(&got));
        assert_eq!(&buf[..], head, "hyper needs the whole request");
    }
    let (got, buf) = read(b"GET /events HTTP/1.1\r\nContent-Length: 0\r\n\r\n", LIMIT);
    stream(got);
    assert!(buf.is_empty());
}

#[test]
fn only_gets_on_the_stream_path_take_the_lean_path() {
    for head in [
        &b"POST /events HTTP/1.1\r\n\r\n"[..],
        b"OPTIONS /events HTTP/1.1\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\n\r\n",
        b"GET /events/x HTTP/1.1\r\n\r\n",
        b"GET /EVENTS HTTP/1.1\r\n\r\n",
    ] {
        let (got, buf) = read(head, LIMIT);
        assert!(is_other(&got), "{:?}: {}", String::from_utf8_lossy(head), describe(&got));
        assert_eq!(&buf[..], head);
    }
    // A route mounted on the stream path (the demo's) takes precedence.
    let mut buf = BytesMut::from(&b"GET /events HTTP/1.1\r\n\r\n"[..]);
    assert!(is_other(&next_head(&mut buf, &mut 0, LIMIT, &|_: &Method, _: &str| false)));
}

#[test]
fn header_names_match_in_any_case() {
    let head = b"GET /events HTTP/1.1\r\nlast-EVENT-iD: 1.2\r\ncOnNeCtIoN: CLOSE\r\n\r\n";
    let (req, keep_alive) = stream(read(head, LIMIT).0);
    assert_eq!(req.headers()["last-event-id"], "1.2");
    assert!(!keep_alive);
    let (got, _) = read(b"GET /events HTTP/1.1\r\ncontent-LENGTH: 2\r\n\r\nab", LIMIT);
    assert!(is_other(&got));
}

#[test]
#[cfg(target_pointer_width = "64")]
fn an_open_stream_costs_little() {
    // Every open stream pays these for its whole life. Its task is tokio's cell (about 100
    // bytes, rounded up to whole 128-byte lines) around `Serve` and the connection's span (40
    // bytes): 192 bytes today (200 unoptimized), and up to 240 the cell stays at 384. An
    // `async` block keeping its arguments, or awaiting a future it captured, stores parts of
    // it twice: that cost a 768-byte cell before.
    let task = std::mem::size_of::<Serve>();
    assert!(task <= 200, "the connection task grew to {task} bytes");
    // The stream's body, boxed: catch-up state is boxed again, only while catching up.
    let body = std::mem::size_of::<crate::http::body::StreamBody>();
    assert!(body <= 96, "the stream body grew to {body} bytes");
}
