//! Smoke run of the benchmark tool (`pgsse-bench all --quick`): a throwaway PostgreSQL, one pgsse,
//! 2,000 streams from two load processes, a few hundred INSERTs and three broadcasts. Checks that
//! the tool works end to end and that nothing is lost or misrouted. Never asserts timings.
//!
//! The gateway is the `pgsse` binary next to `pgsse-bench`, which `cargo test --workspace` builds
//! (or the one `PGSSE_BIN` names).

use std::path::{Path, PathBuf};
use std::process::Command;

/// The gateway binary the benchmark runs.
fn pgsse_bin() -> PathBuf {
    let bin = std::env::var_os("PGSSE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_BIN_EXE_pgsse-bench")).with_file_name("pgsse"));
    assert!(
        bin.is_file(),
        "{} not found: run `cargo test --workspace`, or `cargo build --bin pgsse` first",
        bin.display()
    );
    bin
}

#[test]
fn bench_tool_runs_and_loses_nothing() {
    let dir = std::env::temp_dir().join(format!("pgsse-bench-smoke-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let json = dir.join("results.json");
    let out = Command::new(env!("CARGO_BIN_EXE_pgsse-bench"))
        .args(["all", "--quick", "2000", "--workers", "2", "--no-pin", "--systems", "pgsse"])
        .arg("--pgsse-bin")
        .arg(pgsse_bin())
        .arg("--root")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
        .arg("--json")
        .arg(&json)
        .output()
        .expect("run pgsse-bench");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "pgsse-bench failed ({}):\n{stderr}", out.status);
    let text = std::fs::read_to_string(&json).expect("results JSON");
    let _ = std::fs::remove_dir_all(&dir);
    let r: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    assert_eq!(r["errors"].as_array().map(Vec::len), Some(0), "{text}");
    let s = &r["systems"][0];
    assert_eq!(s["system"], "pgsse");
    let mem = s["memory"].as_array().expect("memory points");
    assert_eq!(mem.last().map(|m| m["conns"].as_u64()), Some(Some(2000)), "{text}");
    assert!(mem.iter().all(|m| m["rss_kib"].as_u64() > Some(0)), "RSS was read: {text}");
    for l in s["latency"].as_array().expect("latency runs") {
        assert!(l["sent"].as_u64() > Some(100), "events were published: {l}");
        assert_eq!(l["publish_errors"], 0, "{l}");
        assert_eq!(l["lost"], 0, "{l}");
        assert_eq!(l["duplicates"], 0, "{l}");
        assert_eq!(l["misrouted"], 0, "{l}");
        assert_eq!(l["received"], l["expected"], "{l}");
    }
    let b = &s["broadcasts"][0];
    assert_eq!(b["conns"], 2000, "{b}");
    assert_eq!(b["incomplete"], 0, "every broadcast reached every stream: {b}");
    assert_eq!(b["times_ms"].as_array().map(Vec::len), Some(3), "{b}");
    assert_eq!(s["dropped"], 0, "no stream was cut: {text}");
}
