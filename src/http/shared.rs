//! What every request handler shares: the configuration, the hub, the pool, the drain signal.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Method, Request, Response};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::pg::retention::RetentionStatus;
use crate::pg::source::SourceState;

/// Everything a request handler needs. One per gateway.
pub struct Shared {
    pub config: Config,
    pub hub: Arc<Hub>,
    pub source: Arc<SourceState>,
    pub pool: crate::pg::Pool,
    pub metrics: Metrics,
    /// The front door: every authentication method `--auth` turned on.
    pub auth: crate::auth::Authenticator,
    /// Cancelled when the drain starts: streams are refused and idle connections closed.
    pub draining: CancellationToken,
    /// How pruning `pgsse.events` is going (reported by `/readyz`, never a reason for 503).
    pub retention: Arc<RetentionStatus>,
    /// Routes served besides the gateway's own (the demo's page and endpoints); never set by `serve`.
    pub extra: Option<Arc<dyn ExtraRoutes>>,
}

/// Extra routes mounted next to the stream endpoint, checked first. They answer with whole
/// documents, never a stream.
pub trait ExtraRoutes: Send + Sync + 'static {
    fn matches(&self, method: &Method, path: &str) -> bool;
    fn call(&self, req: Request<Incoming>) -> Pin<Box<dyn Future<Output = Response<Bytes>> + Send + '_>>;
}
