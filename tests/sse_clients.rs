//! The stream as third-party SSE clients read it: the `eventsource` npm package and Python's
//! `httpx-sse`. Every event they surface is a named one whose data is JSON: no empty `message`
//! event (a `retry:` block of its own is one for httpx-sse).
//!
//! Needs `tests/browser/node_modules` (npm ci) and `tests/python/.venv` (pip install -r
//! tests/python/requirements.txt): `./scripts/test` makes both. Nothing is skipped.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::exec;
use common::gateway::{self, Gateway};
use tokio::process::Command;

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// Runs a client against a gateway that heartbeats every second while rows keep arriving;
/// returns its summary line, asserting it saw what it waited for and found no problem.
async fn read_with(program: PathBuf, script: PathBuf) -> serde_json::Value {
    let advice = "run ./scripts/test (npm ci in tests/browser, a venv in tests/python)";
    assert!(program.exists(), "{} is missing: {advice}", program.display());
    let db = gateway::notifications_db().await;
    let gw = Gateway::start(&db, &["--heartbeat-interval", "1s"]).await;
    let writer = {
        let db = db.clone();
        tokio::spawn(async move {
            for i in 0..60 {
                tokio::time::sleep(Duration::from_millis(300)).await;
                exec(&db, &format!("INSERT INTO notifications (user_id, title) VALUES ('alice', 'row {i}')")).await;
            }
        })
    };
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        Command::new(&program)
            .arg(&script)
            .env("GATEWAY_URL", format!("http://{}", gw.addr))
            .env("TOKEN", gateway::token("alice"))
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the client finishes")
    .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
    writer.abort();
    gw.stop().await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let summary: serde_json::Value = stdout
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("{} printed no summary:\n{stdout}\n{stderr}", script.display()));
    assert_eq!(summary["problems"], serde_json::json!([]), "{}: {summary}\n{stderr}", script.display());
    assert!(out.status.success(), "{}: {summary}\n{stderr}", script.display());
    summary
}

#[tokio::test(flavor = "multi_thread")]
async fn the_eventsource_npm_package_sees_only_named_json_events() {
    let node = PathBuf::from("node");
    let script = repo("tests/browser/third-party-eventsource.mjs");
    assert!(repo("tests/browser/node_modules/eventsource/package.json").exists(), "run ./scripts/test (npm ci)");
    let summary = read_with(which(&node), script).await;
    assert!(summary["counts"].get("message").is_none(), "{summary}");
}

#[tokio::test(flavor = "multi_thread")]
async fn python_httpx_sse_sees_only_named_json_events() {
    let summary = read_with(repo("tests/python/.venv/bin/python"), repo("tests/python/httpx_sse_client.py")).await;
    assert!(summary["counts"].get("message").is_none(), "{summary}");
}

/// `node` as found on PATH (`Command` needs no path, but `read_with` checks that it exists).
fn which(program: &Path) -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|d| d.join(program)).find(|p| p.is_file()))
        .unwrap_or_else(|| panic!("{} is not on PATH: install Node.js 20", program.display()))
}
