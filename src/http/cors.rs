//! CORS for the stream endpoint: exact allow-listed origins only, credentials allowed.

use hyper::header::{
    HeaderMap, HeaderValue, ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS,
    ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_MAX_AGE, ORIGIN, VARY,
};
use hyper::{Response, StatusCode};

use super::body::{error, Body};
use crate::config::Config;

/// Request headers a cross-origin stream may send: the token, and `Last-Event-ID` as sent by
/// fetch-based EventSource polyfills.
const ALLOWED_HEADERS: &str = "authorization, last-event-id, cache-control, accept";
/// How long browsers may cache a preflight answer.
const PREFLIGHT_MAX_AGE_SECS: u32 = 600;

/// The request's `Origin`, if it is on the allow-list.
pub(super) fn allowed_origin(config: &Config, headers: &HeaderMap) -> Option<HeaderValue> {
    let origin = headers.get(ORIGIN)?;
    let text = origin.to_str().ok()?;
    config.cors_origins.iter().any(|o| o == text).then(|| origin.clone())
}

/// Answers an `OPTIONS` preflight: 204 with the allowed method and headers, or 403.
pub(super) fn preflight(config: &Config, headers: &HeaderMap, allowed: bool) -> Response<Body> {
    if !allowed {
        let msg = if config.cors_origins.is_empty() {
            "cross-origin streams are not enabled (see --cors-origin)"
        } else {
            "this origin is not in --cors-origin"
        };
        return error(StatusCode::FORBIDDEN, "origin_not_allowed", msg);
    }
    let requested = headers.get("access-control-request-headers").and_then(|v| v.to_str().ok()).unwrap_or("");
    let unknown: Vec<&str> = requested
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty() && !ALLOWED_HEADERS.split(", ").any(|a| a.eq_ignore_ascii_case(h)))
        .collect();
    if !unknown.is_empty() {
        return error(
            StatusCode::FORBIDDEN,
            "header_not_allowed",
            &format!("headers not allowed: {}", unknown.join(", ")),
        );
    }
    let mut r = Response::new(Body::Full(None));
    *r.status_mut() = StatusCode::NO_CONTENT;
    let h = r.headers_mut();
    h.insert(ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET"));
    h.insert(ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static(ALLOWED_HEADERS));
    h.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from(PREFLIGHT_MAX_AGE_SECS));
    r
}

/// Adds the CORS response headers for an allowed origin, and `Vary: Origin` whenever CORS is on
/// (so a shared cache never serves one origin's answer to another).
pub(super) fn decorate(config: &Config, resp: &mut Response<Body>, origin: Option<HeaderValue>) {
    if config.cors_origins.is_empty() {
        return;
    }
    let h = resp.headers_mut();
    h.append(VARY, HeaderValue::from_static("Origin"));
    if let Some(origin) = origin {
        h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        h.insert(ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
    }
}
