//! A minimal Server-Sent Events client for tests: raw HTTP/1.1 over a tokio
//! `TcpStream`, decoding chunked / Content-Length / close-delimited bodies and
//! parsing the event stream per the WHATWG spec.

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
const BODY_TEXT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq)]
pub struct SseEvent {
    /// Event type; "message" if the event had no `event:` field.
    pub event: String,
    /// `data:` lines joined with '\n'.
    pub data: String,
    /// The `id:` field of this event, `None` if it had none.
    pub id: Option<String>,
    /// The `retry:` field of this event, `None` if it had none.
    pub retry: Option<u64>,
}

pub struct SseClient {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    stream: TcpStream,
    /// Bytes read from the socket but not yet decoded from the transfer coding.
    raw: BytesMut,
    body: Body,
    eof: bool,
    closed: bool,
    parser: Parser,
    events: VecDeque<SseEvent>,
}

impl fmt::Debug for SseClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SseClient")
            .field("status", &self.status)
            .field("headers", &self.headers)
            .field("closed", &self.closed)
            .field("queued_events", &self.events.len())
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Body {
    /// Content-Length: this many bytes remain.
    Length(u64),
    Chunked(Chunk),
    /// Delimited by the server closing the connection.
    UntilClose,
    /// The body is complete.
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailer,
}

impl SseClient {
    /// Connects to `addr` ("127.0.0.1:1234"), sends `GET path_and_query` with
    /// the extra `headers`, and reads the response head. `Host` and
    /// `Accept: text/event-stream` are added unless given.
    pub async fn connect(addr: &str, path_and_query: &str, headers: &[(&str, &str)]) -> io::Result<SseClient> {
        let stream = tokio::time::timeout(HEAD_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, format!("connect {addr}")))??;
        stream.set_nodelay(true)?;

        let has = |name: &str| headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(name));
        let mut req = format!("GET {path_and_query} HTTP/1.1\r\n");
        if !has("host") {
            req.push_str(&format!("Host: {addr}\r\n"));
        }
        if !has("accept") {
            req.push_str("Accept: text/event-stream\r\n");
        }
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        Self::send(stream, req.as_bytes()).await
    }

    /// Sends `request` (raw bytes, as they are) on an open connection and reads the response head.
    pub async fn send(mut stream: TcpStream, request: &[u8]) -> io::Result<SseClient> {
        let addr = stream.peer_addr().map(|a| a.to_string()).unwrap_or_default();
        stream.write_all(request).await?;
        stream.flush().await?;

        let mut raw = BytesMut::with_capacity(8192);
        let deadline = Instant::now() + HEAD_TIMEOUT;
        loop {
            let head = loop {
                if let Some((head_len, sep_len)) = find_head_end(&raw) {
                    let head = raw.split_to(head_len);
                    raw.advance(sep_len);
                    break head;
                }
                raw.reserve(8192);
                let n = tokio::time::timeout_at(deadline, stream.read_buf(&mut raw)).await.map_err(|_| {
                    io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("timed out waiting for the response head from {addr}"),
                    )
                })??;
                if n == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!(
                            "connection closed before a complete response head ({} bytes: {:?})",
                            raw.len(),
                            String::from_utf8_lossy(&raw)
                        ),
                    ));
                }
            };
            let head = String::from_utf8_lossy(&head).into_owned();
            let (status, headers) = parse_head(&head)?;
            if (100..200).contains(&status) && status != 101 {
                continue; // interim response (e.g. 100 Continue)
            }
            let header =
                |name: &str| headers.iter().rev().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str());
            let chunked = headers.iter().any(|(k, v)| {
                k.eq_ignore_ascii_case("transfer-encoding") && v.to_ascii_lowercase().contains("chunked")
            });
            let body = if status == 204 || status == 304 || (100..200).contains(&status) {
                Body::Done
            } else if chunked {
                Body::Chunked(Chunk::Size)
            } else if let Some(len) = header("content-length") {
                let len: u64 = len
                    .trim()
                    .parse()
                    .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, format!("bad Content-Length: {len:?}")))?;
                if len == 0 {
                    Body::Done
                } else {
                    Body::Length(len)
                }
            } else {
                Body::UntilClose
            };
            let closed = body == Body::Done;
            return Ok(SseClient {
                status,
                headers,
                stream,
                raw,
                body,
                eof: false,
                closed,
                parser: Parser::default(),
                events: VecDeque::new(),
            });
        }
    }

    /// Response header value (case-insensitive name; the last one if repeated).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().rev().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The whole (decoded) body, for non-streaming responses. Gives up after
    /// 10 s and returns what arrived.
    pub async fn body_text(self) -> String {
        self.finish().await.0
    }

    /// Reads the rest of a non-streaming response and returns its body and the connection, for
    /// another request on it.
    pub async fn finish(mut self) -> (String, TcpStream) {
        let deadline = Instant::now() + BODY_TEXT_TIMEOUT;
        let mut out = Vec::new();
        loop {
            self.decode(&mut out);
            if self.body == Body::Done || self.eof || !self.read_more(deadline).await {
                break;
            }
        }
        (String::from_utf8_lossy(&out).into_owned(), self.stream)
    }

    /// Writes bytes on the connection as they are (after the request).
    pub async fn write_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    /// The next complete event, or `None` on timeout or end of stream.
    pub async fn next_event(&mut self, timeout: Duration) -> Option<SseEvent> {
        let deadline = Instant::now() + timeout;
        loop {
            self.process();
            if let Some(ev) = self.events.pop_front() {
                return Some(ev);
            }
            if self.closed {
                return None;
            }
            if !self.read_more(deadline).await {
                return None;
            }
        }
    }

    /// The next event of type `name`, skipping others; `None` on timeout/EOF.
    pub async fn next_named(&mut self, name: &str, timeout: Duration) -> Option<SseEvent> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let ev = self.next_event(left).await?;
            if ev.event == name {
                return Some(ev);
            }
        }
    }

    /// Events of type `name` until `n` are collected or `timeout` elapses.
    pub async fn collect(&mut self, name: &str, n: usize, timeout: Duration) -> Vec<SseEvent> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        while out.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_named(name, left).await {
                Some(ev) => out.push(ev),
                None => break,
            }
        }
        out
    }

    /// Reads (queueing any events, which `next_event` still returns) until the
    /// server ends the stream; returns whether it did within `timeout`.
    pub async fn wait_closed(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            self.process();
            if self.closed {
                return true;
            }
            if !self.read_more(deadline).await {
                return false;
            }
        }
    }

    /// Whether the server ended the stream (EOF or end of the body seen).
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// The last `id:` value seen (like EventSource's `lastEventId`).
    pub fn last_event_id(&self) -> Option<String> {
        self.parser.last_event_id.clone()
    }

    /// The last valid `retry:` value seen (the reconnection time, ms).
    pub fn retry(&self) -> Option<u64> {
        self.parser.reconnection_time
    }

    /// How many comment lines (`:...`) were seen, e.g. keep-alives.
    pub fn comment_count(&self) -> usize {
        self.parser.comment_count
    }

    /// The text of the last comment line, without the leading ':'.
    pub fn last_comment(&self) -> Option<&str> {
        self.parser.last_comment.as_deref()
    }

    /// Reads from the socket once; false on timeout.
    async fn read_more(&mut self, deadline: Instant) -> bool {
        self.raw.reserve(8192);
        match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.raw)).await {
            Err(_) => false,
            Ok(Ok(0)) | Ok(Err(_)) => {
                self.eof = true;
                true
            }
            Ok(Ok(_)) => true,
        }
    }

    /// Decodes what has arrived and feeds it to the event parser.
    fn process(&mut self) {
        let mut data = Vec::new();
        self.decode(&mut data);
        if !data.is_empty() {
            self.parser.feed(&data, &mut self.events);
        }
        if self.body == Body::Done || self.eof {
            // An event without its terminating blank line is discarded (spec).
            self.closed = true;
        }
    }

    /// Moves decoded body bytes from `raw` into `out`.
    fn decode(&mut self, out: &mut Vec<u8>) {
        loop {
            match self.body {
                Body::Done => {
                    self.raw.clear();
                    return;
                }
                Body::UntilClose => {
                    out.extend_from_slice(&self.raw);
                    self.raw.clear();
                    return;
                }
                Body::Length(left) => {
                    let n = (left as usize).min(self.raw.len());
                    out.extend_from_slice(&self.raw[..n]);
                    self.raw.advance(n);
                    let left = left - n as u64;
                    self.body = if left == 0 { Body::Done } else { Body::Length(left) };
                    return;
                }
                Body::Chunked(Chunk::Size) => {
                    let Some(nl) = self.raw.iter().position(|&b| b == b'\n') else {
                        return;
                    };
                    let line = self.raw.split_to(nl + 1);
                    let line = String::from_utf8_lossy(&line);
                    let size = line.trim_end_matches(['\r', '\n']);
                    let size = size.split(';').next().unwrap_or("").trim();
                    let size = u64::from_str_radix(size, 16)
                        .unwrap_or_else(|_| panic!("SseClient: malformed chunk-size line {line:?}"));
                    self.body = Body::Chunked(if size == 0 { Chunk::Trailer } else { Chunk::Data(size) });
                }
                Body::Chunked(Chunk::Data(left)) => {
                    if self.raw.is_empty() {
                        return;
                    }
                    let n = (left as usize).min(self.raw.len());
                    out.extend_from_slice(&self.raw[..n]);
                    self.raw.advance(n);
                    let left = left - n as u64;
                    self.body = Body::Chunked(if left == 0 { Chunk::DataEnd } else { Chunk::Data(left) });
                }
                Body::Chunked(Chunk::DataEnd) => {
                    if self.raw.starts_with(b"\r\n") {
                        self.raw.advance(2);
                    } else if self.raw.starts_with(b"\n") {
                        self.raw.advance(1);
                    } else if self.raw.is_empty() || &self.raw[..] == b"\r" {
                        return;
                    } else {
                        panic!(
                            "SseClient: chunk data not followed by CRLF (got {:?})",
                            String::from_utf8_lossy(&self.raw[..self.raw.len().min(32)])
                        );
                    }
                    self.body = Body::Chunked(Chunk::Size);
                }
                Body::Chunked(Chunk::Trailer) => {
                    let Some(nl) = self.raw.iter().position(|&b| b == b'\n') else {
                        return;
                    };
                    let line = self.raw.split_to(nl + 1);
                    if line.iter().all(|&b| b == b'\r' || b == b'\n') {
                        self.body = Body::Done;
                    }
                }
            }
        }
    }
}

/// Finds the end of the response head: (head length, separator length).
fn find_head_end(buf: &[u8]) -> Option<(usize, usize)> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| (p, 4));
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|p| (p, 2));
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

fn parse_head(head: &str) -> io::Result<(u16, Vec<(String, String)>)> {
    let bad = |msg: String| io::Error::new(io::ErrorKind::InvalidData, msg);
    let mut lines = head.lines();
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.split_whitespace();
    let version = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/") {
        return Err(bad(format!("bad status line: {status_line:?}")));
    }
    let status: u16 =
        parts.next().and_then(|s| s.parse().ok()).ok_or_else(|| bad(format!("bad status line: {status_line:?}")))?;
    let mut headers = Vec::new();
    for line in lines {
        let line = line.trim_end_matches('\r');
        if line.is_empty() {
            continue;
        }
        let (k, v) = line.split_once(':').ok_or_else(|| bad(format!("bad header line: {line:?}")))?;
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    Ok((status, headers))
}

/// WHATWG event-stream parser.
#[derive(Default)]
struct Parser {
    line: Vec<u8>,
    after_cr: bool,
    seen_first_line: bool,
    event: String,
    data: String,
    event_id: Option<String>,
    event_retry: Option<u64>,
    last_event_id: Option<String>,
    reconnection_time: Option<u64>,
    comment_count: usize,
    last_comment: Option<String>,
}

impl Parser {
    fn feed(&mut self, bytes: &[u8], out: &mut VecDeque<SseEvent>) {
        for &b in bytes {
            if self.after_cr {
                self.after_cr = false;
                if b == b'\n' {
                    continue; // CRLF: the CR already ended the line
                }
            }
            match b {
                b'\r' => {
                    self.after_cr = true;
                    self.end_line(out);
                }
                b'\n' => self.end_line(out),
                _ => self.line.push(b),
            }
        }
    }

    fn end_line(&mut self, out: &mut VecDeque<SseEvent>) {
        let bytes = std::mem::take(&mut self.line);
        let mut line = String::from_utf8_lossy(&bytes).into_owned();
        if !self.seen_first_line {
            self.seen_first_line = true;
            if let Some(rest) = line.strip_prefix('\u{feff}') {
                line = rest.to_string();
            }
        }
        if line.is_empty() {
            self.dispatch(out);
            return;
        }
        if let Some(comment) = line.strip_prefix(':') {
            self.comment_count += 1;
            self.last_comment = Some(comment.to_string());
            return;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line.as_str(), ""),
        };
        match field {
            "event" => self.event = value.to_string(),
            "data" => {
                self.data.push_str(value);
                self.data.push('\n');
            }
            "id" if !value.contains('\0') => {
                self.event_id = Some(value.to_string());
                self.last_event_id = Some(value.to_string());
            }
            "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                if let Ok(ms) = value.parse() {
                    self.event_retry = Some(ms);
                    self.reconnection_time = Some(ms);
                }
            }
            _ => {}
        }
    }

    fn dispatch(&mut self, out: &mut VecDeque<SseEvent>) {
        let event = std::mem::take(&mut self.event);
        let mut data = std::mem::take(&mut self.data);
        let id = self.event_id.take();
        let retry = self.event_retry.take();
        if data.is_empty() {
            return; // nothing to dispatch (spec), e.g. an id- or retry-only block
        }
        data.pop(); // the trailing '\n'
        out.push_back(SseEvent {
            event: if event.is_empty() { "message".to_string() } else { event },
            data,
            id,
            retry,
        });
    }
}
