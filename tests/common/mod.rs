//! Shared integration-test harness: private PostgreSQL clusters, SQL helpers, the gateway, a
//! minimal SSE client, and the bigger harnesses of single suites (chaos run, nginx and Chromium).
//! Each `tests/*.rs` file does `mod common;`.
#![allow(dead_code, unused_imports)]

// Written by the gateway tests' author (tests/stream.rs uses `common::gateway`).
pub mod chaos;
mod cluster_ops;
mod events;
pub mod gateway;
pub mod nginx;
mod pg;
pub mod proxy;
pub mod relay;
pub mod sql;
mod sse;

pub use cluster_ops::DURABLE_CONF;
pub use events::{insert, insert_rows, json, log_id, split_id, title};
pub use pg::{connect, describe_pg_error, exec, free_port, fresh_database, shared_cluster, PgCluster};
pub use sse::{SseClient, SseEvent};

use std::future::Future;
use std::time::Duration;

/// Runs the `pgsse` binary with `args`: (exit status success, stdout, stderr).
pub async fn pgsse(args: &[&str]) -> (bool, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgsse")).args(args).output().await.expect("run pgsse");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

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
