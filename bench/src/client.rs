//! The lean SSE client: one task per connection on a single-threaded runtime, one scratch read
//! buffer shared by every connection of the process, and just enough HTTP/1.1 (status line,
//! chunked or raw body) and SSE (event name, one data line) parsing to time each event.
//!
//! Every benchmark event carries a marker `"bench":"<stage>.<seq>.<user or *>.<unix µs>"` in its
//! data; the client checks the user against its own (misrouting) and records the latency.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};

/// Which server speaks on the other end; decides the request and when a stream counts as open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Pgsse,
    Node,
    Nchan,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Pgsse => "pgsse",
            Kind::Node => "node",
            Kind::Nchan => "nchan",
        }
    }
}

/// Wall clock in microseconds: publisher and clients run on the same machine.
pub fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

/// What the connections of one worker observed since the last `stage` command.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Stats {
    pub stage: u32,
    /// Latencies (µs) of this stage's per-user events.
    pub lat_us: Vec<u32>,
    /// Per-user events of this stage received (deliveries).
    pub events: u64,
    /// Events whose marker names another user than the connection's.
    pub misrouted: u64,
    /// Marked events of an earlier stage (arrived after their stage ended).
    pub stray: u64,
    /// Broadcast seq -> (deliveries, latest arrival in unix µs).
    pub bcast: HashMap<u32, (u32, u64)>,
    /// `heartbeat` / `ping` events and comment lines.
    pub heartbeats: u64,
    /// Connections that ended while they should have stayed open.
    pub dropped: u64,
}

pub type SharedStats = Rc<RefCell<Stats>>;

thread_local! {
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(vec![0; 64 * 1024]);
}

/// The request bytes of one stream.
pub fn request(kind: Kind, user: &str, token: &str) -> Vec<u8> {
    let path = match kind {
        Kind::Pgsse | Kind::Node => format!("/api/notifications/stream?access_token={token}"),
        Kind::Nchan => format!("/sub?user={user}"),
    };
    format!("GET {path} HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n\r\n").into_bytes()
}

/// Opens one stream; resolves `Ok(stream, parser)` once the server has registered it.
pub async fn open(
    kind: Kind,
    addr: SocketAddr,
    src: Ipv4Addr,
    req: &[u8],
    user: u32,
    stats: &SharedStats,
) -> Result<(TcpStream, Parser), String> {
    let sock = TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
    sock.bind(SocketAddr::from((src, 0))).map_err(|e| format!("bind {src}: {e}"))?;
    let mut stream = sock.connect(addr).await.map_err(|e| format!("connect: {e}"))?;
    stream.set_nodelay(true).ok();
    stream.write_all(req).await.map_err(|e| format!("write: {e}"))?;
    let mut p = Parser::new(user, kind == Kind::Nchan);
    while !p.open {
        if !read_some(&mut stream, &mut p, stats).await.map_err(|e| format!("read: {e}"))? {
            return Err(match p.status {
                0 => "closed before a response".into(),
                s => format!("closed after status {s}"),
            });
        }
        if p.status != 0 && p.status != 200 {
            return Err(format!("status {}", p.status));
        }
    }
    Ok((stream, p))
}

/// Reads until the connection ends; counts it as dropped unless it is aborted first.
pub async fn live(mut stream: TcpStream, mut p: Parser, stats: SharedStats) {
    while let Ok(true) = read_some(&mut stream, &mut p, &stats).await {}
    stats.borrow_mut().dropped += 1;
}

/// One read into the shared scratch buffer, parsed at once. `Ok(false)` on EOF.
async fn read_some(stream: &mut TcpStream, p: &mut Parser, stats: &SharedStats) -> std::io::Result<bool> {
    loop {
        stream.readable().await?;
        let r = SCRATCH.with(|s| {
            let mut s = s.borrow_mut();
            match stream.try_read(&mut s[..]) {
                Ok(0) => Ok(false),
                Ok(n) => {
                    p.feed(&s[..n], &mut stats.borrow_mut());
                    Ok(true)
                }
                Err(e) => Err(e),
            }
        });
        match r {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            other => return other,
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Chunk {
    Size(usize),
    SizeLine(usize),
    Data(usize),
    DataEnd,
}

/// HTTP response + SSE parser of one connection. Holds only the bytes of an unfinished line.
pub struct Parser {
    user: u32,
    /// nchan streams count as open at the response head; pgsse and Node send `connected`.
    open_on_head: bool,
    pub open: bool,
    pub status: u16,
    head: Option<Vec<u8>>,
    chunk: Option<Chunk>,
    line: Vec<u8>,
    event: EventName,
    data: Option<Vec<u8>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EventName {
    Message,
    Connected,
    Heartbeat,
    Other,
}

impl Parser {
    pub fn new(user: u32, open_on_head: bool) -> Self {
        Self {
            user,
            open_on_head,
            open: false,
            status: 0,
            head: Some(Vec::new()),
            chunk: None,
            line: Vec::new(),
            event: EventName::Message,
            data: None,
        }
    }

    pub fn feed(&mut self, mut bytes: &[u8], stats: &mut Stats) {
        if let Some(head) = self.head.as_mut() {
            head.extend_from_slice(bytes);
            let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") else { return };
            let head = self.head.take().unwrap_or_default();
            let text = String::from_utf8_lossy(&head[..end]).to_ascii_lowercase();
            self.status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(1);
            if text.contains("transfer-encoding: chunked") {
                self.chunk = Some(Chunk::Size(0));
            }
            if self.status == 200 && self.open_on_head {
                self.open = true;
            }
            let rest = head[end + 4..].to_vec();
            self.feed(&rest, stats);
            return;
        }
        while !bytes.is_empty() {
            let take = match self.chunk {
                None => bytes.len(),
                Some(Chunk::Data(n)) => n.min(bytes.len()),
                Some(state) => {
                    self.chunk = Some(chunk_step(state, bytes[0]));
                    bytes = &bytes[1..];
                    continue;
                }
            };
            self.body(&bytes[..take], stats);
            if let Some(Chunk::Data(n)) = self.chunk {
                self.chunk = Some(if n == take { Chunk::DataEnd } else { Chunk::Data(n - take) });
            }
            bytes = &bytes[take..];
        }
    }

    fn body(&mut self, mut bytes: &[u8], stats: &mut Stats) {
        while let Some(i) = bytes.iter().position(|&b| b == b'\n') {
            if self.line.is_empty() {
                self.end_line(&bytes[..i], stats);
            } else {
                let mut line = std::mem::take(&mut self.line);
                line.extend_from_slice(&bytes[..i]);
                self.end_line(&line, stats);
            }
            bytes = &bytes[i + 1..];
        }
        self.line.extend_from_slice(bytes);
        if self.line.is_empty() && self.line.capacity() > 0 {
            self.line = Vec::new();
        }
    }

    fn end_line(&mut self, line: &[u8], stats: &mut Stats) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            self.dispatch(stats);
        } else if line[0] == b':' {
            stats.heartbeats += 1;
        } else if let Some(v) = line.strip_prefix(b"event:") {
            self.event = match v.trim_ascii() {
                b"connected" => EventName::Connected,
                b"heartbeat" | b"ping" => EventName::Heartbeat,
                _ => EventName::Other,
            };
        } else if let Some(v) = line.strip_prefix(b"data:") {
            self.data = Some(v.to_vec());
        }
    }

    fn dispatch(&mut self, stats: &mut Stats) {
        let event = std::mem::replace(&mut self.event, EventName::Message);
        let data = self.data.take();
        match event {
            EventName::Connected => self.open = true,
            EventName::Heartbeat => stats.heartbeats += 1,
            EventName::Message | EventName::Other => {
                if let Some(m) = data.as_deref().and_then(Marker::find) {
                    self.marked(m, stats);
                }
            }
        }
    }

    fn marked(&self, m: Marker, stats: &mut Stats) {
        let now = now_us();
        if m.stage != stats.stage {
            stats.stray += 1;
            return;
        }
        match m.user {
            None => {
                let e = stats.bcast.entry(m.seq).or_insert((0, 0));
                e.0 += 1;
                e.1 = e.1.max(now);
            }
            Some(u) => {
                if u != self.user {
                    stats.misrouted += 1;
                }
                stats.events += 1;
                stats.lat_us.push(now.saturating_sub(m.ts).min(u32::MAX as u64) as u32);
            }
        }
    }
}

fn chunk_step(state: Chunk, b: u8) -> Chunk {
    match state {
        Chunk::Size(n) => match (b as char).to_digit(16) {
            Some(d) => Chunk::Size(n * 16 + d as usize),
            None if b == b'\n' => size_done(n),
            None => Chunk::SizeLine(n),
        },
        Chunk::SizeLine(n) if b == b'\n' => size_done(n),
        Chunk::DataEnd if b == b'\n' => Chunk::Size(0),
        s => s,
    }
}

fn size_done(n: usize) -> Chunk {
    // A zero-size chunk ends the body; the connection then closes (counted as dropped).
    if n == 0 {
        Chunk::DataEnd
    } else {
        Chunk::Data(n)
    }
}

/// `"bench":"<stage>.<seq>.<user or *>.<µs>"` found in an event's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Marker {
    pub stage: u32,
    pub seq: u32,
    pub user: Option<u32>,
    pub ts: u64,
}

impl Marker {
    pub fn text(stage: u32, seq: u32, user: Option<u32>, ts: u64) -> String {
        match user {
            Some(u) => format!("{stage}.{seq}.{u}.{ts}"),
            None => format!("{stage}.{seq}.*.{ts}"),
        }
    }

    pub fn find(data: &[u8]) -> Option<Marker> {
        // The key `"bench"` followed by a colon (a value "bench" elsewhere does not count).
        let mut from = 0;
        let rest = loop {
            let at = from + data[from..].windows(7).position(|w| w == b"\"bench\"")? + 7;
            let rest = data[at..].trim_ascii_start();
            if rest.first() == Some(&b':') {
                break rest;
            }
            from = at;
        };
        let start = rest.iter().position(|&b| b != b':' && b != b' ' && b != b'"')?;
        let rest = &rest[start..];
        let end = rest.iter().position(|&b| b == b'"')?;
        let mut parts = std::str::from_utf8(&rest[..end]).ok()?.split('.');
        let stage = parts.next()?.parse().ok()?;
        let seq = parts.next()?.parse().ok()?;
        let user = match parts.next()? {
            "*" => None,
            u => Some(u.parse().ok()?),
        };
        let ts = parts.next()?.parse().ok()?;
        Some(Marker { stage, seq, user, ts })
    }
}

/// How long one connection attempt may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

#[cfg(test)]
mod tests {
    use super::*;

    fn feed_all(p: &mut Parser, s: &mut Stats, bytes: &[u8], step: usize) {
        for c in bytes.chunks(step) {
            p.feed(c, s);
        }
    }

    #[test]
    fn parses_chunked_sse_byte_by_byte() {
        let body = "retry: 1000\n\nevent: connected\ndata: {}\n\nevent: notification\nid: 1\ndata: {\"title\": \"bench\", \"n\": {\"bench\": \"3.7.5.100\"}}\n\nevent: heartbeat\ndata: {}\n\n";
        let mut wire = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
        for part in body.as_bytes().chunks(13) {
            wire.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
            wire.extend_from_slice(part);
            wire.extend_from_slice(b"\r\n");
        }
        for step in [1, 7, 4096] {
            let mut p = Parser::new(5, false);
            let mut s = Stats { stage: 3, ..Stats::default() };
            feed_all(&mut p, &mut s, &wire, step);
            assert!(p.open);
            assert_eq!((s.events, s.misrouted, s.heartbeats), (1, 0, 1), "step {step}");
        }
    }

    #[test]
    fn raw_body_and_misrouting_and_broadcast() {
        let wire = b"HTTP/1.1 200 OK\r\n\r\n: hi\n\ndata: {\"bench\":\"1.2.9.5\"}\n\ndata: {\"bench\":\"1.4.*.5\"}\n\n";
        let mut p = Parser::new(5, true);
        let mut s = Stats { stage: 1, ..Stats::default() };
        feed_all(&mut p, &mut s, wire, 5);
        assert!(p.open);
        assert_eq!((s.events, s.misrouted), (1, 1));
        assert_eq!(s.bcast.get(&4).map(|b| b.0), Some(1));
    }
}
