//! The demo page and `clients/js` in Debian's headless chromium, against real PostgreSQL and pgsse.
//!
//! Chromium is driven by playwright-core from `tests/browser/*.mjs`. Needs `node`,
//! `/usr/bin/chromium` (or `CHROMIUM`) and `tests/browser/node_modules`: run `./scripts/test`, which
//! installs them. Missing pieces fail with that advice; nothing is skipped.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::gateway::{self, GatewayProcess};
use common::{exec, free_port};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// A whole script may take this long before it is killed.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// Fails (never skips) with the fix when the browser tooling is missing.
fn require_tooling() {
    let advice = "run ./scripts/test (it installs Debian's chromium and runs `npm ci` in tests/browser)";
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(Path::new(&chromium).exists(), "chromium not found at {chromium}: {advice}");
    assert!(
        browser_dir().join("node_modules/playwright-core/package.json").exists(),
        "tests/browser/node_modules/playwright-core is missing: {advice}"
    );
    let node = std::process::Command::new("node").arg("--version").output();
    assert!(node.is_ok_and(|o| o.status.success()), "`node` is not on PATH: install Node.js 18+ ({advice})");
}

/// A node script speaking the step protocol of `tests/browser/lib.mjs`.
struct Script {
    name: String,
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    output: Vec<String>,
    deadline: tokio::time::Instant,
}

impl Script {
    fn start(name: &str, env: &[(&str, String)]) -> Script {
        require_tooling();
        let mut cmd = Command::new("node");
        cmd.arg(browser_dir().join(name))
            .current_dir(browser_dir())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot run node {name}: {e}"));
        let stdin = child.stdin.take().expect("stdin");
        let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let deadline = tokio::time::Instant::now() + SCRIPT_TIMEOUT;
        Script { name: name.into(), child, stdin, lines, output: Vec::new(), deadline }
    }

    /// The next step the script asks for, or `None` once it ended.
    async fn next_step(&mut self) -> Option<String> {
        loop {
            let line = tokio::time::timeout_at(self.deadline, self.lines.next_line())
                .await
                .unwrap_or_else(|_| panic!("{} timed out; output so far:\n{}", self.name, self.output.join("\n")))
                .unwrap_or(None)?;
            eprintln!("[{}] {line}", self.name);
            match line.strip_prefix("STEP ") {
                Some(step) => return Some(step.to_string()),
                None => self.output.push(line),
            }
        }
    }

    async fn ack(&mut self) {
        self.stdin.write_all(b"ok\n").await.expect("answer the script");
    }

    /// Waits for the exit and asserts it passed.
    async fn finish(mut self) {
        if let Some(step) = self.next_step().await {
            panic!("{}: unexpected step {step} after the scenario", self.name);
        }
        let status =
            tokio::time::timeout_at(self.deadline, self.child.wait()).await.expect("exit in time").expect("wait");
        let out = self.output.join("\n");
        assert!(status.success() && out.lines().any(|l| l == "PASS"), "{} failed ({status}):\n{out}", self.name);
    }
}

/// Reads the demo's stdout until its banner is complete; returns (page URL, whole banner).
async fn demo_banner(child: &mut Child) -> (String, String) {
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let (complete, banner) = gateway::read_until_line(&mut lines, "Press Ctrl-C", Duration::from_secs(60)).await;
    assert!(complete, "the demo did not print its banner:\n{banner}");
    // Keep draining stdout so the demo never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let url = banner
        .lines()
        .find_map(|l| l.trim().strip_prefix("Open the demo page:"))
        .map(|u| u.trim().to_string())
        .unwrap_or_else(|| panic!("no URL in the banner:\n{banner}"));
    (url, banner)
}

#[tokio::test(flavor = "multi_thread")]
async fn client_unit_tests_pass_in_node() {
    require_tooling();
    let out = Command::new("node")
        .args(["--test", "client.test.mjs", "client-transports.test.mjs"])
        .current_dir(browser_dir())
        .output()
        .await
        .expect("run node --test");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "node --test client.test.mjs client-transports.test.mjs failed:\n{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn demo_page_shows_every_change_live() {
    let db = common::fresh_database();
    let mut demo = Command::new(env!("CARGO_BIN_EXE_pgsse"))
        .args(["demo", "--database-url", &db, "--listen", "127.0.0.1:0"])
        .env("RUST_LOG", std::env::var("PGSSE_TEST_LOG").unwrap_or_else(|_| "warn".into()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn pgsse demo");
    let (url, _) = demo_banner(&mut demo).await;

    let mut script = Script::start("demo-page.mjs", &[("DEMO_URL", url)]);
    while let Some(step) = script.next_step().await {
        match step.as_str() {
            "insert" => {
                exec(&db, "INSERT INTO notifications (user_id, title) VALUES ('alice', 'Inserted with SQL')").await
            }
            other => panic!("unknown step {other}"),
        }
        script.ack().await;
    }
    script.finish().await;
    let _ = demo.kill().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn client_backs_off_resumes_across_restarts_and_cleans_up() {
    let db = gateway::notifications_db().await;
    let port = free_port();
    let flags = ["--token-cookie", "pgsse_token"];
    let spawn = || GatewayProcess::spawn_on(&db, port, &flags);
    let addr = format!("127.0.0.1:{port}");
    let mut gw = Some(spawn().await);
    assert!(gateway::wait_ready(&addr, Duration::from_secs(20)).await, "gateway not ready");

    let client_js = Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/js/pgsse-client.js");
    let env = [
        ("GATEWAY_URL", format!("http://{addr}")),
        ("TOKEN", gateway::token("alice")),
        ("CLIENT_JS", client_js.display().to_string()),
    ];
    let mut script = Script::start("client-resume.mjs", &env);
    let insert = |title: &str| format!("INSERT INTO notifications (user_id, title) VALUES ('alice', '{title}')");
    while let Some(step) = script.next_step().await {
        let (name, arg) = step.split_once(' ').unwrap_or((&step, ""));
        match name {
            "insert" => exec(&db, &insert(arg)).await,
            "kill" | "kill-for-good" | "bounce" => {
                if let Some(g) = gw.take() {
                    g.kill().await;
                }
                if name == "kill" {
                    exec(&db, &format!("{}; {};", insert("offline-1"), insert("offline-2"))).await;
                    exec(&db, "UPDATE notifications SET read = true WHERE title = 'live-1'").await;
                }
                if name == "bounce" {
                    exec(&db, &insert("bounce-1")).await;
                    gw = Some(spawn().await);
                    assert!(gateway::wait_ready(&addr, Duration::from_secs(20)).await, "gateway not ready again");
                }
            }
            "restart" => {
                gw = Some(spawn().await);
                assert!(gateway::wait_ready(&addr, Duration::from_secs(20)).await, "gateway not ready again");
            }
            other => panic!("unknown step {other}"),
        }
        script.ack().await;
    }
    script.finish().await;
}
