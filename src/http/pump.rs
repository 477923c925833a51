//! The lean stream writer: moves a stream's bytes from the hub to its socket, and nothing else.
//!
//! An idle stream is this struct, waiting on two things: the hub's waker (new bytes) and the
//! socket's read readiness (the client hanging up). It owns no buffer: each write is the hub's
//! shared bytes between a chunk-size line and a CRLF, sent with one vectored write.

use std::future::Future;
use std::io::{self, IoSlice, Write};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;

use super::body::StreamBody;

/// How a stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ended {
    /// The gateway closed it (drain, expiry, revocation) after writing everything queued.
    Closed,
    /// The client hung up, or writing to it failed.
    ClientGone,
    /// The hub cut it: the client stopped reading and its queue overflowed.
    Cut,
}

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
}

/// Writes `body` to `socket` until the stream ends; resolves to how it ended.
pub(super) struct Pump {
    socket: TcpStream,
    body: Box<StreamBody>,
    out: Out,
    chunked: bool,
    /// The body has ended and its terminator is queued or written.
    ending: bool,
}

impl Pump {
    /// `head` is the response head, written first. With `chunked` each write is one HTTP/1.1
    /// chunk; without, the body runs until the connection closes (HTTP/1.0).
    pub(super) fn new(socket: TcpStream, head: Bytes, body: Box<StreamBody>, chunked: bool) -> Self {
        Self { socket, body, out: Out { head, ..Out::default() }, chunked, ending: false }
    }

    /// Queues `data` as the next write (after the head, if that is still pending).
    fn frame(&mut self, data: Bytes) {
        if self.chunked {
            let mut line = &mut self.out.line[..];
            // 16 hex digits + CRLF always fit in the 18 bytes.
            let _ = write!(line, "{:x}\r\n", data.len());
            let left = line.len();
            (self.out.line_at, self.out.line_end) = (0, (self.out.line.len() - left) as u8);
            self.out.suffix = b"\r\n";
        }
        self.out.data = data;
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
                    // The client is not reading: give up as soon as the hub cuts it.
                    ready!(self.body.poll_cut(cx));
                    return Poll::Ready(Err(Ended::Cut));
                }
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Ready when the client has hung up (or sent something unreadable); ignores any bytes it
    /// sends, as nothing more is expected on this connection.
    fn poll_client_gone(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let mut scratch = [0u8; 64];
        loop {
            if ready!(self.socket.poll_read_ready(cx)).is_err() {
                return Poll::Ready(());
            }
            match self.socket.try_read(&mut scratch) {
                Ok(0) => return Poll::Ready(()),
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(_) => return Poll::Ready(()),
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
                    Poll::Ready(Some(data)) => this.frame(data),
                    Poll::Ready(None) => {
                        this.ending = true;
                        if this.chunked {
                            this.out.suffix = b"0\r\n\r\n";
                        }
                    }
                    Poll::Pending if this.out.is_empty() => {
                        ready!(this.poll_client_gone(cx));
                        return Poll::Ready(Ended::ClientGone);
                    }
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
