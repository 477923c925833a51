//! The event-stream endpoint: authenticate, subscribe, replay what a resuming client missed, stream.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;

use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use hyper::{Request, Response, StatusCode};

use super::body::{error, unavailable, Body, StreamBody};
use super::shared::Shared;
use crate::auth::{AuthError, Refusal};
use crate::defaults::{DEFAULT_MAX_REPLAY_BYTES as MAX_REPLAY_BYTES, DEFAULT_MAX_REPLAY_EVENTS};
use crate::hub::{Full, Item, Subscription};
use crate::pg::replay::{self, Replay, ResetReason, Window};
use crate::pg::PgError;
use crate::sse::{self, EventId};

/// Query parameter accepted in place of the `Last-Event-ID` header.
pub const LAST_EVENT_ID_PARAM: &str = "lastEventId";

/// The (form-decoded) value of `name` in a query string, if present and valid UTF-8.
fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    crate::auth::find_query_param(query?, name)?.ok().map(|v| v.into_owned())
}

/// Opens a stream for `req` (a GET on the stream path; its body, if any, is not read). `abort` is
/// fired when the hub cuts a client that stopped reading (hyper-written streams only).
pub(super) async fn open(
    req: Request<()>,
    shared: &Arc<Shared>,
    peer: SocketAddr,
    abort: Option<Arc<crate::hub::Abort>>,
) -> Response<Body> {
    let span = tracing::Span::current();
    if shared.config.trust_proxy {
        if let Some(client) = forwarded_for(req.headers()) {
            span.record("client", tracing::field::display(client));
        }
    }
    let identity = match shared.auth.authenticate(req.headers(), req.uri().query()).await {
        Ok(i) => i,
        Err(Refusal::Denied(e)) => {
            shared.metrics.auth_failure(e.code());
            return unauthorized(&e, peer);
        }
        Err(Refusal::Unavailable(e)) => {
            shared.metrics.refused("session_lookup_failed");
            crate::warn_throttled!(error = %e, "session lookup failed");
            return unavailable("session_lookup_failed", "could not check the session; retry", 1);
        }
    };
    span.record("user", &*identity.user_id);
    if shared.draining.is_cancelled() {
        shared.metrics.refused("draining");
        return unavailable("draining", "the gateway is shutting down; retry", 1);
    }
    if shared.source.position().is_none() {
        shared.metrics.refused("not_ready");
        return unavailable("not_ready", "the gateway is not yet listening to the database; retry", 1);
    }
    // The header is what EventSource sends on its own reconnects; the query parameter serves
    // clients that open a new EventSource themselves (it cannot set headers).
    let last_event_id = match req.headers().get("last-event-id") {
        Some(v) => Some(v.to_str().map_err(|_| sse::BadEventId::Malformed).and_then(EventId::parse)),
        None => query_param(req.uri().query(), LAST_EVENT_ID_PARAM).map(|v| EventId::parse(&v)),
    };

    // Subscribe before reading the horizon or replaying: anything committed after this point
    // arrives live, so together with the replay nothing falls between the two.
    let sub = match shared.hub.subscribe(identity.user_id.clone(), identity.expires_at, identity.session, abort) {
        Ok(sub) => sub,
        Err(Full::Gateway) => {
            shared.metrics.refused("max_connections");
            crate::warn_throttled!(max = shared.config.max_connections, "stream refused: --max-connections reached");
            return unavailable("too_many_connections", "this gateway is at its connection limit; retry", 5);
        }
        Err(Full::User) => {
            shared.metrics.refused("max_connections_per_user");
            tracing::info!(
                max = shared.config.max_connections_per_user,
                "stream refused: too many streams for this user"
            );
            let mut r = error(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_connections_for_user",
                "this user has too many open streams; close some tabs",
            );
            r.headers_mut().insert(RETRY_AFTER, HeaderValue::from(30u32));
            return r;
        }
    };
    span.record("stream", sub.id());
    // Subscribed above, so `now` is read after every event below it was queued on this stream.
    let Some(now) = shared.source.position() else {
        shared.metrics.refused("not_ready");
        return unavailable("not_ready", "the gateway is not yet listening to the database; retry", 1);
    };
    let user = identity.user_id.clone();
    let mut preamble = Vec::with_capacity(3);
    let heartbeat_ms = shared.config.heartbeat_interval.as_millis() as u64;
    let connected = |id: EventId, resumed: bool, replayed: usize| {
        Item::notice(sse::connected(id, &user, sub.id(), resumed, replayed, heartbeat_ms))
    };
    let here = EventId::horizon(now.history, now.horizon);
    let reset = |reason: &str, message: &str| Item::notice(sse::reset(here, reason, message));
    match last_event_id {
        None => preamble.push(connected(here, false, 0)),
        Some(Err(bad)) => {
            tracing::debug!(error = %bad, "unusable Last-Event-ID; sending reset");
            shared.metrics.reset("invalid_last_event_id");
            preamble.push(connected(here, false, 0));
            preamble.push(reset("invalid_last_event_id", &bad.to_string()));
        }
        Some(Ok(from)) => {
            let limit = shared.config.replay_timeout;
            // At most --max-queue-bytes is read here; a larger replay is paged by the catch-up.
            let window = Window {
                from: from.horizon,
                until: None,
                after: 0,
                rows: DEFAULT_MAX_REPLAY_EVENTS,
                bytes: shared.config.queue_bytes,
            };
            let outcome = match replay::replay(&shared.pool, &identity.user_id, from, now.history, window, limit).await
            {
                Ok(Replay::Events(p))
                    if p.total > DEFAULT_MAX_REPLAY_EVENTS || p.total_bytes > MAX_REPLAY_BYTES as u64 =>
                {
                    Ok(Replay::Reset(ResetReason::TooMany))
                }
                other => other,
            };
            match outcome {
                Ok(Replay::Events(page)) => {
                    shared.metrics.events_replayed.inc_by(page.total as u64);
                    preamble.push(connected(EventId::horizon(now.history, from.horizon), true, page.total));
                    let complete = page.complete();
                    let mut replayed = HashSet::new();
                    if complete {
                        for ev in page.events {
                            let id = EventId::event(now.history, from.horizon, ev.id);
                            let bytes = sse::encode(&ev.event, Some(id), &ev.data);
                            preamble.push(Item { log_id: ev.id, tx: ev.tx, bytes });
                            replayed.insert(ev.id);
                        }
                    }
                    if !complete {
                        // Larger than the queue: the catch-up pages it from the log.
                        sub.fall_behind();
                    }
                    sub.start(preamble, from.horizon, from.horizon, replayed);
                    return stream_response(sub, shared, now.history);
                }
                Ok(Replay::Reset(reason)) => {
                    tracing::debug!(reason = reason.as_str(), "resume not possible; sending reset");
                    shared.metrics.reset(reason.as_str());
                    preamble.push(connected(here, false, 0));
                    preamble.push(reset(reason.as_str(), reason.message()));
                }
                Err(PgError::Deadline { .. }) => {
                    shared.metrics.refused("replay_timeout");
                    return unavailable("replay_timeout", "reading missed events took too long; retry", 1);
                }
                Err(e) => {
                    shared.metrics.refused("replay_failed");
                    crate::warn_throttled!(error = %e, "replay failed");
                    return unavailable("replay_failed", "could not read missed events; retry", 1);
                }
            }
        }
    }
    sub.start(preamble, now.horizon, 0, HashSet::new());
    stream_response(sub, shared, now.history)
}

/// The 200 that carries the stream.
fn stream_response(sub: Subscription, shared: &Arc<Shared>, history: u32) -> Response<Body> {
    tracing::debug!("stream opened");
    let mut resp = Response::new(Body::Stream(Box::new(StreamBody::new(sub, shared.clone(), history))));
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}

fn unauthorized(e: &AuthError, peer: SocketAddr) -> Response<Body> {
    tracing::info!(%peer, reason = e.code(), "stream refused: {e}");
    let mut r = error(StatusCode::UNAUTHORIZED, e.code(), &e.to_string());
    // RFC 6750: no error code when no credentials were sent at all.
    let challenge = if e.code() == "missing_token" {
        "Bearer realm=\"pgsse\"".to_string()
    } else {
        let desc: String = e
            .to_string()
            .chars()
            .filter(|c| c.is_ascii() && !c.is_ascii_control() && *c != '"' && *c != '\\')
            .collect();
        format!("Bearer realm=\"pgsse\", error=\"invalid_token\", error_description=\"{desc}\"")
    };
    if let Ok(v) = HeaderValue::from_str(&challenge) {
        r.headers_mut().insert(WWW_AUTHENTICATE, v);
    }
    r
}

/// The first address of `X-Forwarded-For` (the client as the nearest proxy saw it), if valid.
fn forwarded_for(headers: &hyper::HeaderMap) -> Option<std::net::IpAddr> {
    headers.get("x-forwarded-for")?.to_str().ok()?.split(',').next()?.trim().parse().ok()
}
