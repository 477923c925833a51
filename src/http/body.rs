//! Response bodies (a fixed document, or an open event stream) and the small responses every route uses.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use hyper::body::{Frame, SizeHint};
use hyper::header::{HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Response, StatusCode};

use super::catchup::{CatchUp, Step};
use super::shared::Shared;
use crate::hub::{CloseReason, Next, Subscription};

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

impl Body {
    /// A whole document's bytes (a stream has none: it is served by the pump, not as a document).
    pub fn into_document(self) -> Bytes {
        match self {
            Body::Full(b) => b.unwrap_or_default(),
            Body::Stream(_) => Bytes::new(),
        }
    }
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

/// The body of one open stream: what the hub queued for it (first what `stream::open` prepared:
/// retry, `connected`, replay or `reset`; then live events), or, when it fell behind, pages read
/// back from the log ([`CatchUp`]).
pub struct StreamBody {
    sub: Subscription,
    shared: Arc<Shared>,
    /// The history the stream's positions belong to.
    history: u32,
    catch_up: Option<Box<CatchUp>>,
}

impl StreamBody {
    pub(super) fn new(sub: Subscription, shared: Arc<Shared>, history: u32) -> Self {
        Self { sub, shared, history, catch_up: None }
    }

    /// Ready when the hub closed this stream (see `Subscription::poll_cut`).
    pub(super) fn poll_cut(&self, cx: &mut Context<'_>) -> Poll<CloseReason> {
        self.sub.poll_cut(cx)
    }

    /// Cuts the stream (the writer gives up on it).
    pub(super) fn cut(&self, reason: CloseReason) {
        self.sub.cut(reason);
    }

    pub(super) fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        loop {
            if let Some(catch_up) = &mut self.catch_up {
                match ready!(catch_up.poll_step(cx, &self.sub, &self.shared)) {
                    Step::Data(b) => return Poll::Ready(Some(b)),
                    Step::Done(b) => {
                        self.catch_up = None;
                        if let Some(b) = b {
                            return Poll::Ready(Some(b));
                        }
                    }
                    Step::Failed(why) => {
                        tracing::info!(error = %why, "catch-up from the log failed");
                        self.sub.cut(CloseReason::CatchUpFailed);
                        return Poll::Ready(None);
                    }
                    Step::Closed => return Poll::Ready(None),
                }
                continue;
            }
            // Read before taking: every event below it is in the queue by now (see `poll_next`).
            let horizon = self.shared.source.position().filter(|p| p.history == self.history).map_or(0, |p| p.horizon);
            match ready!(self.sub.poll_next(cx, horizon)) {
                Next::Data(b) => return Poll::Ready(Some(b)),
                Next::Closed(reason) => {
                    tracing::debug!(conn = self.sub.id(), ?reason, "stream closed by the gateway");
                    return Poll::Ready(None);
                }
                Next::Behind { from, taken } => {
                    self.shared.metrics.catch_ups.inc();
                    tracing::debug!(from, "over --max-queue-bytes; catching up from the log");
                    self.catch_up = Some(Box::new(CatchUp::new(self.history, from, taken)));
                }
            }
        }
    }
}
