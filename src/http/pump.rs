//! The lean stream writer: moves a stream's bytes from the hub to its socket, and nothing else.
//!
//! An idle stream is this struct, waiting on two things: the hub's waker (new bytes) and the
//! socket's read readiness (the client hanging up). It owns no buffer: each write is the hub's
//! shared bytes between a chunk-size line and a CRLF, sent with one vectored write.

use std::future::Future;
use std::io::{self, IoSlice, Write};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;

use super::body::StreamBody;
use crate::hub::CloseReason;

/// How a stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ended {
    /// The gateway closed it (drain, expiry, revocation) after writing everything queued.
    Closed,
    /// The client hung up, or writing to it failed.
    ClientGone,
    /// Cut: the client stopped taking its bytes, or sent bytes of its own (see `CloseReason`).
    Cut,
}

/// How long a stream the gateway closed (drain, expiry, revocation) may take to write its last
/// bytes to a client that is not reading before it is cut.
pub(super) const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// Bytes a client may send on its open stream (nothing is expected) before it is cut: a few
/// stray bytes are harmless, an upload is not served.
const UPLOAD_LIMIT: usize = 64 << 10;
/// Unexpected bytes are read and dropped this many at a time.
const DISCARD_READ: usize = 8 << 10;

/// What is left of one write: the response head (first write only), the chunk-size line, the
/// hub's bytes, then the chunk's CRLF (or the body's terminator).
#[derive(Default)]
struct Out {
    head: Bytes,
    line: [u8; 18],
    line_at: u8,
    line_end: u8,
    data: Bytes,
    suffix: &'static [u8],
}

impl Out {
    fn line(&self) -> &[u8] {
        &self.line[self.line_at as usize..self.line_end as usize]
    }

    /// Nothing but (possibly) the response head is pending.
    fn idle(&self) -> bool {
        self.line_at == self.line_end && self.data.is_empty() && self.suffix.is_empty()
    }

    fn is_empty(&self) -> bool {
        self.head.is_empty() && self.idle()
    }

    fn consume(&mut self, mut n: usize) {
        let k = n.min(self.head.len());
        self.head.advance(k);
        n -= k;
        let k = n.min(self.line().len());
        self.line_at += k as u8;
        n -= k;
        let k = n.min(self.data.len());
        self.data.advance(k);
        n -= k;
        self.suffix = &self.suffix[n.min(self.suffix.len())..];
    }

    /// Queues `data` as the next write (after the head, if that is still pending): with
    /// `chunked` as one HTTP/1.1 chunk, else as it is. Empty data queues nothing (an empty
    /// chunk would end the body).
    fn frame(&mut self, data: Bytes, chunked: bool) {
        if data.is_empty() {
            return;
        }
        if chunked {
            (self.line, self.line_end) = chunk_line(data.len());
            self.line_at = 0;
            self.suffix = b"\r\n";
        }
        self.data = data;
    }

    /// Queues the end of the body: the last chunk, or nothing when closing the connection ends it.
    fn end(&mut self, chunked: bool) {
        if chunked {
            self.suffix = b"0\r\n\r\n";
        }
    }
}

/// A chunk's size line (`len` in hex, then CRLF) and its length: 16 hex digits + CRLF always fit.
fn chunk_line(len: usize) -> ([u8; 18], u8) {
    let mut line = [0u8; 18];
    let mut rest = &mut line[..];
    let _ = write!(rest, "{len:x}\r\n");
    let used = 18 - rest.len();
    (line, used as u8)
}

/// Writes `body` to `socket` until the stream ends; resolves to how it ended.
pub(super) struct Pump {
    socket: TcpStream,
    body: Box<StreamBody>,
    out: Out,
    chunked: bool,
    /// The body has ended and its terminator is queued or written.
    ending: bool,
    /// Unexpected bytes the client sent so far.
    uploaded: usize,
    /// Armed when the gateway closed the stream while a write was pending.
    grace: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Pump {
    /// `head` is the response head, written first. With `chunked` each write is one HTTP/1.1
    /// chunk; without, the body runs until the connection closes (HTTP/1.0).
    pub(super) fn new(socket: TcpStream, head: Bytes, body: Box<StreamBody>, chunked: bool) -> Self {
        Self { socket, body, out: Out { head, ..Out::default() }, chunked, ending: false, uploaded: 0, grace: None }
    }

    /// Writes what is pending; `Pending` while the socket is full (watching for a cut).
    fn poll_flush_out(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Ended>> {
        while !self.out.is_empty() {
            let o = &self.out;
            let parts = [IoSlice::new(&o.head), IoSlice::new(o.line()), IoSlice::new(&o.data), IoSlice::new(o.suffix)];
            match Pin::new(&mut self.socket).poll_write_vectored(cx, &parts) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(Err(Ended::ClientGone)),
                Poll::Ready(Ok(n)) => self.out.consume(n),
                Poll::Pending => {
                    // The client is not reading: give up as soon as the hub cuts it, or soon
                    // after the gateway closed it (its last bytes may never be read).
                    if ready!(self.body.poll_cut(cx)).is_cut() {
                        return Poll::Ready(Err(Ended::Cut));
                    }
                    let grace = self.grace.get_or_insert_with(|| Box::pin(tokio::time::sleep(CLOSE_GRACE)));
                    ready!(grace.as_mut().poll(cx));
                    self.body.cut(CloseReason::NotReading);
                    return Poll::Ready(Err(Ended::Cut));
                }
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Ready when the client has hung up (or sent something unreadable), or sent more than
    /// `UPLOAD_LIMIT` bytes: nothing more is expected on this connection, so a few stray bytes
    /// are dropped (in large reads, cheaply) and an upload is cut.
    fn poll_client_gone(&mut self, cx: &mut Context<'_>) -> Poll<Ended> {
        let mut scratch = [0u8; DISCARD_READ];
        loop {
            if ready!(self.socket.poll_read_ready(cx)).is_err() {
                return Poll::Ready(Ended::ClientGone);
            }
            match self.socket.try_read(&mut scratch) {
                Ok(0) => return Poll::Ready(Ended::ClientGone),
                Ok(n) => {
                    self.uploaded += n;
                    if self.uploaded > UPLOAD_LIMIT {
                        self.body.cut(CloseReason::Upload);
                        return Poll::Ready(Ended::Cut);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(_) => return Poll::Ready(Ended::ClientGone),
            }
        }
    }
}

impl Future for Pump {
    type Output = Ended;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Ended> {
        let this = self.get_mut();
        loop {
            if this.out.idle() && !this.ending {
                match this.body.poll_data(cx) {
                    Poll::Ready(Some(data)) => this.out.frame(data, this.chunked),
                    Poll::Ready(None) => {
                        this.ending = true;
                        this.out.end(this.chunked);
                    }
                    Poll::Pending if this.out.is_empty() => return this.poll_client_gone(cx),
                    Poll::Pending => {}
                }
            }
            if let Err(ended) = ready!(this.poll_flush_out(cx)) {
                return Poll::Ready(ended);
            }
            if this.ending {
                return Poll::Ready(Ended::Closed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a write would send now: head, size line, data, suffix.
    fn pending(o: &Out) -> Vec<u8> {
        [&o.head[..], o.line(), &o.data[..], o.suffix].concat()
    }

    /// Everything `o` sends until it is empty, written `step` bytes at a time.
    fn drain(o: &mut Out, step: usize) -> Vec<u8> {
        let mut sent = Vec::new();
        while !o.is_empty() {
            let p = pending(o);
            let n = step.min(p.len());
            sent.extend_from_slice(&p[..n]);
            o.consume(n);
        }
        sent
    }

    #[test]
    fn a_chunk_is_its_size_in_hex_then_the_bytes_then_crlf() {
        let mut o = Out::default();
        o.frame(Bytes::from_static(b"event: x\ndata: y\n\n"), true);
        assert!(!o.idle());
        assert_eq!(pending(&o), b"12\r\nevent: x\ndata: y\n\n\r\n");
        o.consume(pending(&o).len());
        assert!(o.idle() && o.is_empty());
        o.frame(Bytes::from(vec![b'a'; 4096]), true);
        assert!(pending(&o).starts_with(b"1000\r\naaaa"));
        assert!(pending(&o).ends_with(b"aaaa\r\n"));
        assert_eq!(pending(&o).len(), 6 + 4096 + 2);
    }

    #[test]
    fn the_size_line_fits_every_length() {
        for (len, line) in [(0, &b"0\r\n"[..]), (1, b"1\r\n"), (255, b"ff\r\n"), (usize::MAX, b"ffffffffffffffff\r\n")]
        {
            let (buf, n) = chunk_line(len);
            assert_eq!(&buf[..n as usize], line, "{len}");
        }
    }

    #[test]
    fn the_head_goes_first_and_a_chunked_body_ends_with_the_last_chunk() {
        let mut o = Out { head: Bytes::from_static(b"HTTP/1.1 200 OK\r\n\r\n"), ..Out::default() };
        assert!(o.idle() && !o.is_empty());
        o.frame(Bytes::from_static(b"retry: 1000\n\n"), true);
        assert_eq!(drain(&mut o, usize::MAX), b"HTTP/1.1 200 OK\r\n\r\nd\r\nretry: 1000\n\n\r\n");
        o.end(true);
        assert_eq!(drain(&mut o, usize::MAX), b"0\r\n\r\n");
    }

    #[test]
    fn http10_bodies_are_the_bytes_alone_and_end_at_close() {
        let mut o = Out { head: Bytes::from_static(b"HTTP/1.0 200 OK\r\n\r\n"), ..Out::default() };
        o.frame(Bytes::from_static(b"data: a\n\n"), false);
        assert_eq!(drain(&mut o, usize::MAX), b"HTTP/1.0 200 OK\r\n\r\ndata: a\n\n");
        o.end(false);
        assert!(o.is_empty());
    }

    #[test]
    fn short_writes_resume_where_they_stopped() {
        for step in 1..=8 {
            let mut o = Out { head: Bytes::from_static(b"HEAD\r\n"), ..Out::default() };
            o.frame(Bytes::from_static(b"0123456789abcdefXYZ"), true);
            assert_eq!(drain(&mut o, step), b"HEAD\r\n13\r\n0123456789abcdefXYZ\r\n", "{step}");
            o.frame(Bytes::from_static(b"z"), true);
            assert_eq!(drain(&mut o, step), b"1\r\nz\r\n", "{step}");
            // The pump ends the body only once the last write is out (`idle`).
            o.end(true);
            assert_eq!(drain(&mut o, step), b"0\r\n\r\n", "{step}");
        }
    }

    #[test]
    fn empty_data_queues_nothing() {
        for chunked in [true, false] {
            let mut o = Out::default();
            o.frame(Bytes::new(), chunked);
            assert!(o.idle() && o.is_empty(), "{chunked}");
        }
    }
}
