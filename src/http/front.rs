//! One connection's front: reads the request head itself, writes event streams with the lean
//! writer ([`super::pump`]) and hands every other request, bytes already read included, to hyper.
//!
//! Why not hyper for streams too: hyper keeps an 8 KiB read and an 8 KiB write buffer for a
//! connection's whole life, which is most of what an idle stream costs. A stream needs neither:
//! its request is read once, and every event is already encoded in shared bytes.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::{Buf, Bytes, BytesMut};
use hyper::header::{HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use hyper::{Method, Request, Response, StatusCode, Version};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use super::body::{error, Body};
use super::cap::Slot;
use super::shared::Shared;
use super::{pump, routes};
use crate::config::Config;

/// Header fields parsed per request head, as in hyper.
const MAX_HEADERS: usize = 100;
/// The first read's size: a browser's stream request (cookies included) usually fits.
const FIRST_READ_BYTES: usize = 2048;

/// What the head of the next request turned out to be.
enum Head {
    /// A request for the lean path, and whether the connection may serve another after it.
    Stream(Request<()>, bool),
    /// Anything else: hyper serves the connection from here, starting with these bytes.
    Other,
    /// No request: the peer closed, or sent nothing before the timeout.
    None,
    /// Answered here (400, 431) and closed.
    Refused(Response<Body>),
}

type Watcher = hyper_util::server::graceful::Watcher;
type Opening = Pin<Box<dyn Future<Output = Option<(pump::Pump, Watcher)>> + Send>>;

/// Serves one accepted connection until it ends; `slot` (its place under the listener's
/// connection cap) is given back then.
pub(super) fn serve(
    socket: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    hyper_conn: Arc<HyperConn>,
    watcher: Watcher,
    slot: Slot,
) -> Serve {
    Serve { state: State::Accepted(socket, peer, shared, hyper_conn, watcher), _slot: slot }
}

/// One connection's task. Its size is what every idle stream pays for its whole life (tests pin
/// it), so it holds only the pump, the watcher that makes shutdown wait for it, and the slot:
/// everything before the stream is boxed and freed once it opens. Written out rather than
/// `async`, which would keep the arguments beside the pump. The box is made on the task's first
/// poll, by the thread that serves it: made in the accept loop, it left 1.5-2 MiB more
/// resident at 2,000 streams.
pub(super) struct Serve {
    state: State,
    _slot: Slot,
}

enum State {
    Accepted(TcpStream, SocketAddr, Arc<Shared>, Arc<HyperConn>, Watcher),
    Opening(Opening),
    /// The watcher is held until the stream ends.
    Streaming {
        pump: pump::Pump,
        _watcher: Watcher,
    },
    Done,
}

impl Future for Serve {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let state = &mut self.get_mut().state;
        loop {
            match state {
                State::Accepted(..) => {
                    if let State::Accepted(socket, peer, shared, hyper_conn, watcher) =
                        std::mem::replace(state, State::Done)
                    {
                        *state = State::Opening(Box::pin(open(socket, peer, shared, hyper_conn, watcher)));
                    }
                }
                State::Opening(opening) => match ready!(opening.as_mut().poll(cx)) {
                    Some((pump, watcher)) => *state = State::Streaming { pump, _watcher: watcher },
                    None => *state = State::Done,
                },
                State::Streaming { pump, .. } => {
                    let ended = ready!(Pin::new(pump).poll(cx));
                    tracing::debug!(?ended, "stream ended");
                    *state = State::Done;
                }
                State::Done => return Poll::Ready(()),
            }
        }
    }
}

/// Reads requests until one opens a stream (returned, ready to write), hyper takes the
/// connection, or it ends.
async fn open(
    mut socket: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    hyper_conn: Arc<HyperConn>,
    watcher: Watcher,
) -> Option<(pump::Pump, Watcher)> {
    let mut buf = BytesMut::new();
    let mut served = false;
    loop {
        let idle = served && buf.is_empty();
        let read = tokio::time::timeout(shared.config.header_read_timeout, read_head(&mut socket, &mut buf, &shared));
        let head = tokio::select! {
            r = read => match r {
                Ok(Ok(head)) => head,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "connection ended before a request");
                    return None;
                }
                Err(_) => {
                    tracing::debug!("request head not received within --header-read-timeout");
                    return None;
                }
            },
            // An idle keep-alive connection is closed when the drain starts; a new one still
            // gets its answer (503 for a stream).
            _ = shared.draining.cancelled(), if idle => return None,
        };
        served = true;
        match head {
            Head::None => return None,
            Head::Refused(resp) => {
                let _ = respond(&mut socket, resp, Version::HTTP_11, false).await;
                linger_close(socket).await;
                return None;
            }
            Head::Other => {
                let io = hyper_io(buf.freeze(), socket);
                hyper_conn.serve(io, peer, shared, watcher).await;
                return None;
            }
            Head::Stream(req, keep_alive) => {
                let version = req.version();
                let (parts, body) = routes::stream_endpoint(req, &shared, peer, None).await.into_parts();
                match body {
                    Body::Stream(body) => {
                        let chunked = version == Version::HTTP_11;
                        let framing = if chunked { Framing::Chunked } else { Framing::Close };
                        let head = encode_head(&Response::from_parts(parts, Body::Full(None)), version, framing);
                        return Some((pump::Pump::new(socket, Bytes::from(head), body, chunked), watcher));
                    }
                    full => {
                        let keep_alive = keep_alive && !shared.draining.is_cancelled();
                        let resp = Response::from_parts(parts, full);
                        if respond(&mut socket, resp, version, keep_alive).await.is_err() {
                            return None;
                        }
                        if !keep_alive {
                            linger_close(socket).await;
                            return None;
                        }
                    }
                }
            }
        }
    }
}

/// Serves connections with hyper from wherever the front left them: every request that is not
/// a plain stream GET (health, readiness, preflight, the demo's routes), and all later requests
/// on that connection, streams included.
pub(super) struct HyperConn {
    builder: hyper::server::conn::http1::Builder,
}

impl HyperConn {
    pub(super) fn new(config: &Config) -> Self {
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(config.header_read_timeout)
            .max_buf_size(config.max_header_bytes.max(8192))
            .writev(false);
        Self { builder }
    }

    async fn serve(&self, io: TokioIo<Rewound>, peer: SocketAddr, shared: Arc<Shared>, watcher: Watcher) {
        let abort = Arc::new(crate::hub::Abort::default());
        let service = {
            let abort = abort.clone();
            hyper::service::service_fn(move |req| {
                let (shared, abort) = (shared.clone(), abort.clone());
                // Boxed: hyper keeps the service future's slot for the connection's whole life.
                let fut: Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>> =
                    Box::pin(async move { Ok::<_, Infallible>(routes::route(req, &shared, peer, abort).await) });
                fut
            })
        };
        let conn = watcher.watch(self.builder.serve_connection(io, service));
        tokio::pin!(conn);
        let ended = tokio::select! {
            r = &mut conn => Some(r),
            // The hub closed or cut the stream: hyper gets a moment to write its last bytes, which
            // a client that is not reading never takes.
            _ = abort.notified() => {
                let ended = tokio::time::timeout(pump::CLOSE_GRACE, &mut conn).await.ok();
                if ended.is_none() {
                    abort.cut(crate::hub::CloseReason::NotReading);
                }
                ended
            }
        };
        match ended {
            // Peers hanging up mid-stream is normal life for SSE.
            Some(Err(e)) => tracing::debug!(error = %e, "connection ended"),
            Some(Ok(())) => {}
            None => tracing::debug!("connection closed: its stream ended"),
        }
    }
}

/// How long a closing connection keeps reading what the client still sends.
const LINGER: Duration = Duration::from_secs(1);

/// Closes after a final response without losing it: closing with unread request bytes would
/// make the kernel send a reset, which can destroy the response before the client reads it. So
/// the write side is shut first and the rest is read and discarded, briefly.
async fn linger_close(mut socket: TcpStream) {
    if socket.shutdown().await.is_err() {
        return;
    }
    let mut scratch = [0u8; 512];
    let _ = tokio::time::timeout(LINGER, async {
        while let Ok(n) = socket.read(&mut scratch).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

/// Reads until `buf` holds a complete request head, and decides who serves it.
async fn read_head(socket: &mut TcpStream, buf: &mut BytesMut, shared: &Shared) -> io::Result<Head> {
    let lean = |method: &Method, path: &str| {
        *method == Method::GET
            && path == shared.config.path
            && !shared.extra.as_ref().is_some_and(|e| e.matches(method, path))
    };
    let mut searched = 0;
    loop {
        if let Some(head) = next_head(buf, &mut searched, shared.config.max_header_bytes, &lean) {
            return Ok(head);
        }
        buf.reserve(FIRST_READ_BYTES);
        if socket.read_buf(buf).await? == 0 {
            return Ok(Head::None);
        }
    }
}

/// What the bytes read so far are, or `None` until a head is complete (read more and call again).
/// `searched` is how much of `buf` earlier calls already searched for the blank line that ends a
/// head (0 for a new head): parsing only once it is there keeps a head sent byte by byte from
/// costing a full parse per byte. `limit` is `--max-header-bytes`; `lean` says whether a request
/// (method, path without query) goes down the lean path.
fn next_head(
    buf: &mut BytesMut,
    searched: &mut usize,
    limit: usize,
    lean: &impl Fn(&Method, &str) -> bool,
) -> Option<Head> {
    let ended = buf[searched.saturating_sub(3)..].windows(2).any(|w| w == b"\n\n" || w == b"\n\r");
    *searched = buf.len();
    if !ended && buf.len() < limit {
        return None;
    }
    let too_large = || {
        let msg = format!("the request head is larger than --max-header-bytes ({limit} bytes)");
        let code = "request_header_fields_too_large";
        Head::Refused(error(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, code, &msg))
    };
    match parse(buf, limit, lean) {
        Ok(Some((_, len))) if len > limit => Some(too_large()),
        Ok(Some((head, _))) => Some(head),
        Ok(None) if buf.len() >= limit => Some(too_large()),
        Ok(None) => None,
        Err(msg) => Some(Head::Refused(error(StatusCode::BAD_REQUEST, "bad_request", &msg))),
    }
}

/// The head and its length, or `Ok(None)` while it is not complete. A stream's head is taken out
/// of `buf` (unless longer than `limit`); any other leaves `buf` whole, for hyper.
fn parse(
    buf: &mut BytesMut,
    limit: usize,
    lean: &impl Fn(&Method, &str) -> bool,
) -> Result<Option<(Head, usize)>, String> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(format!("more than {MAX_HEADERS} header fields")),
        Err(e) => return Err(format!("malformed request head: {e}")),
    };
    let (Some(method), Some(path)) = (req.method, req.path) else {
        return Err("malformed request line".into());
    };
    let method = Method::from_bytes(method.as_bytes()).map_err(|_| "malformed method".to_string())?;
    let uri_path = path.split('?').next().unwrap_or(path);
    if !lean(&method, uri_path) {
        return Ok(Some((Head::Other, len)));
    }
    let version = if req.version == Some(0) { Version::HTTP_10 } else { Version::HTTP_11 };
    let mut builder = Request::builder().method(method).uri(path).version(version);
    let mut keep_alive = version == Version::HTTP_11;
    for h in req.headers.iter() {
        let name =
            HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| format!("malformed header name {:?}", h.name))?;
        let value = HeaderValue::from_bytes(h.value).map_err(|_| format!("malformed value of header {name}"))?;
        // A GET with a body is unusual enough to leave to hyper, which knows how to skip it.
        if name == TRANSFER_ENCODING || (name == CONTENT_LENGTH && value.as_bytes() != b"0") {
            return Ok(Some((Head::Other, len)));
        }
        if name == CONNECTION {
            let tokens = value.to_str().unwrap_or("");
            if tokens.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")) {
                keep_alive = false;
            }
        }
        builder = builder.header(name, value);
    }
    let req = builder.body(()).map_err(|e| format!("malformed request target: {e}"))?;
    if len <= limit {
        buf.advance(len);
    }
    Ok(Some((Head::Stream(req, keep_alive), len)))
}

/// How a response body is delimited.
enum Framing {
    Length(usize),
    Chunked,
    Close,
}

/// Status line and header fields, as hyper would write them.
fn encode_head(resp: &Response<Body>, version: Version, framing: Framing) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    let status = resp.status();
    let proto = if version == Version::HTTP_10 { "HTTP/1.0" } else { "HTTP/1.1" };
    out.extend_from_slice(
        format!("{proto} {} {}\r\n", status.as_str(), status.canonical_reason().unwrap_or("")).as_bytes(),
    );
    for (name, value) in resp.headers() {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match framing {
        Framing::Length(n) => out.extend_from_slice(format!("content-length: {n}\r\n").as_bytes()),
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Framing::Close => out.extend_from_slice(b"connection: close\r\n"),
    }
    out.extend_from_slice(format!("date: {}\r\n\r\n", httpdate::fmt_http_date(SystemTime::now())).as_bytes());
    out
}

/// Writes a complete (non-stream) response.
async fn respond(socket: &mut TcpStream, resp: Response<Body>, version: Version, keep_alive: bool) -> io::Result<()> {
    let (mut parts, body) = resp.into_parts();
    let body = body.into_document();
    if !keep_alive && version == Version::HTTP_11 {
        parts.headers.insert(CONNECTION, HeaderValue::from_static("close"));
    }
    let mut out = encode_head(&Response::from_parts(parts, Body::Full(None)), version, Framing::Length(body.len()));
    out.extend_from_slice(&body);
    socket.write_all(&out).await?;
    socket.flush().await
}

/// The socket, with the bytes the front already read put back in front of it.
pub(super) struct Rewound {
    pub(super) read: Bytes,
    pub(super) socket: TcpStream,
}

impl AsyncRead for Rewound {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if !self.read.is_empty() {
            let n = self.read.len().min(out.remaining());
            out.put_slice(&self.read.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.socket).poll_read(cx, out)
    }
}

impl AsyncWrite for Rewound {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.socket).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.socket).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.socket).poll_shutdown(cx)
    }
}

/// Lets hyper drive a `Rewound` socket.
pub(super) fn hyper_io(read: Bytes, socket: TcpStream) -> TokioIo<Rewound> {
    TokioIo::new(Rewound { read, socket })
}

#[cfg(test)]
mod tests;
