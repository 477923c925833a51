//! Routing of every request hyper serves (and stream GETs from the front): the stream endpoint,
//! `/healthz`, `/readyz`, and the extra routes of `pgsse demo`.

use std::net::SocketAddr;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};

use super::body::{error, json, method_not_allowed, Body};
use super::shared::Shared;
use super::{cors, stream};

pub(super) async fn route(
    req: Request<Incoming>,
    shared: &Arc<Shared>,
    peer: SocketAddr,
    abort: Arc<crate::hub::Abort>,
) -> Response<Body> {
    let path = req.uri().path();
    if let Some(extra) = shared.extra.as_ref().filter(|e| e.matches(req.method(), path)) {
        return extra.call(req).await.map(|b| Body::Full(Some(b)));
    }
    if path == shared.config.path {
        let (parts, _body) = req.into_parts();
        return stream_endpoint(Request::from_parts(parts, ()), shared, peer, Some(abort)).await;
    }
    match path {
        "/healthz" => match *req.method() {
            Method::GET | Method::HEAD => json(StatusCode::OK, serde_json::json!({"status": "ok"})),
            _ => method_not_allowed("GET, HEAD"),
        },
        "/readyz" => match *req.method() {
            Method::GET | Method::HEAD => readiness(shared),
            _ => method_not_allowed("GET, HEAD"),
        },
        _ => error(StatusCode::NOT_FOUND, "not_found", "no such endpoint"),
    }
}

/// The stream path: GET opens a stream, OPTIONS answers a CORS preflight.
pub(super) async fn stream_endpoint(
    req: Request<()>,
    shared: &Arc<Shared>,
    peer: SocketAddr,
    abort: Option<Arc<crate::hub::Abort>>,
) -> Response<Body> {
    let origin = cors::allowed_origin(&shared.config, req.headers());
    let mut resp = match *req.method() {
        Method::GET => stream::open(req, shared, peer, abort).await,
        Method::OPTIONS => cors::preflight(&shared.config, req.headers(), origin.is_some()),
        _ => method_not_allowed("GET, OPTIONS"),
    };
    cors::decorate(&shared.config, &mut resp, origin);
    resp
}

fn readiness(shared: &Shared) -> Response<Body> {
    let listening = shared.source.is_ready();
    let draining = shared.draining.is_cancelled();
    let ready = listening && !draining;
    let position = shared.source.position();
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    json(
        status,
        serde_json::json!({
            "status": if ready { "ready" } else { "not_ready" },
            "listening": listening,
            "draining": draining,
            "horizon": position.map(|p| p.horizon.to_string()),
            "history": position.map(|p| format!("{:08x}", p.history)),
            "connections": shared.hub.connection_count(),
            "jwks": shared.auth.jwt().and_then(|j| j.remote()).map(|r| r.describe()),
            // Streams work while retention fails, so it is reported, not a reason to be unready.
            "retention": shared.retention.to_json(),
        }),
    )
}
