//! Response bodies (a fixed document, or an open event stream) and the small responses every route uses.

use std::collections::{HashSet, VecDeque};
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Frame, SizeHint};
use hyper::header::{HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Response, StatusCode};

use crate::hub::{Item, Next, Subscription};

pub(super) fn method_not_allowed(allow: &'static str) -> Response<Body> {
    let mut r = error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "method not allowed");
    r.headers_mut().insert(ALLOW, HeaderValue::from_static(allow));
    r
}

/// `{"error": code, "message": text}` with the given status.
pub fn error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    json(status, serde_json::json!({"error": code, "message": message}))
}

pub(super) fn unavailable(code: &str, message: &str, retry_after_secs: u32) -> Response<Body> {
    let mut r = error(StatusCode::SERVICE_UNAVAILABLE, code, message);
    r.headers_mut().insert(RETRY_AFTER, HeaderValue::from(retry_after_secs));
    r
}

/// A JSON response.
pub fn json(status: StatusCode, body: serde_json::Value) -> Response<Body> {
    let mut r = Response::new(Body::Full(Some(Bytes::from(body.to_string()))));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// A complete response with the given content type.
pub fn full(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Body::Full(Some(body.into())));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// Response bodies: a fixed document, or an event stream.
pub enum Body {
    Full(Option<Bytes>),
    Stream(Box<StreamBody>),
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            Body::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Body::Stream(s) => s.poll_data(cx).map(|o| o.map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, Body::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Body::Full(None) => SizeHint::with_exact(0),
            Body::Stream(_) => SizeHint::default(),
        }
    }
}

/// The body of one open stream: first what was prepared at open (retry, `connected`, replay or
/// `reset`), then live events from the hub minus those the replay already sent.
pub struct StreamBody {
    preamble: VecDeque<Bytes>,
    replayed: HashSet<i64>,
    /// The position a resumed stream came back with: every event below it was delivered on an
    /// earlier connection, so a live copy (from a replica whose horizon lags) is dropped.
    resumed_from: u64,
    sub: Subscription,
}

impl StreamBody {
    pub(super) fn new(preamble: VecDeque<Bytes>, replayed: HashSet<i64>, resumed_from: u64, sub: Subscription) -> Self {
        Self { preamble, replayed, resumed_from, sub }
    }

    /// Ready when the hub cut this stream because its client stopped reading.
    pub(super) fn poll_cut(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.sub.poll_cut(cx)
    }

    pub(super) fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        if !self.preamble.is_empty() {
            // One write for the whole preamble, and its queue's buffer freed for the stream's life.
            let mut all = std::mem::take(&mut self.preamble);
            if all.len() == 1 {
                return Poll::Ready(all.pop_front());
            }
            let mut joined = bytes::BytesMut::with_capacity(all.iter().map(Bytes::len).sum());
            all.iter().for_each(|b| joined.extend_from_slice(b));
            return Poll::Ready(Some(joined.freeze()));
        }
        let (replayed, below) = (&mut self.replayed, &mut self.resumed_from);
        let skip = |item: &Item| {
            if item.log_id == Item::RESYNC {
                // A new history: what this stream resumed from says nothing about its events.
                (*below, *replayed) = (0, HashSet::new());
                return false;
            }
            item.tx < *below || (!replayed.is_empty() && replayed.remove(&item.log_id))
        };
        match self.sub.poll_next(cx, skip) {
            Poll::Ready(Next::Data(b)) => Poll::Ready(Some(b)),
            Poll::Ready(Next::Closed(reason)) => {
                tracing::debug!(conn = self.sub.id(), ?reason, "stream closed by the gateway");
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}
