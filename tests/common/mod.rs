//! Shared integration-test harness: private PostgreSQL clusters, SQL helpers
//! and a minimal SSE client. Each `tests/*.rs` file does `mod common;`.
#![allow(dead_code, unused_imports)]

// Written by the gateway tests' author (tests/stream.rs uses `common::gateway`).
mod cluster_ops;
pub mod gateway;
mod pg;
pub mod proxy;
mod sse;

pub use cluster_ops::DURABLE_CONF;
pub use pg::{connect, describe_pg_error, exec, free_port, fresh_database, shared_cluster, PgCluster};
pub use sse::{SseClient, SseEvent};

use std::future::Future;
use std::time::Duration;

/// Polls `f` every 20 ms until it returns true or `timeout` elapses; returns
/// the last result.
pub async fn wait_until<F, Fut>(timeout: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if f().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
