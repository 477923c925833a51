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

/// `pgsse serve` as a process on a fixed port, so the Rust side of a script can kill it and
/// start it again where the page expects it.
struct Restartable {
    db: String,
    port: u16,
    flags: Vec<&'static str>,
    gw: Option<GatewayProcess>,
}

impl Restartable {
    async fn start(flags: &[&'static str]) -> Restartable {
        let db = gateway::notifications_db().await;
        let mut r = Restartable { db, port: free_port(), flags: flags.to_vec(), gw: None };
        r.restart().await;
        r
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn pid(&self) -> u32 {
        self.gw.as_ref().map_or(0, GatewayProcess::pid)
    }

    async fn kill(&mut self) {
        if let Some(g) = self.gw.take() {
            g.kill().await;
        }
    }

    async fn restart(&mut self) {
        self.gw = Some(GatewayProcess::spawn_on(&self.db, self.port, &self.flags).await);
        assert!(gateway::wait_ready(&self.addr(), Duration::from_secs(20)).await, "gateway not ready");
    }
}

fn insert_for_alice(title: &str) -> String {
    format!("INSERT INTO notifications (user_id, title) VALUES ('alice', '{title}')")
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

/// `pgsse demo --database-url db` (with `--state-dir` when given), once its banner is out; returns
/// it and the page's URL.
async fn start_demo(db: &str, listen: &str, state: Option<&Path>) -> (Child, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgsse"));
    cmd.args(["demo", "--database-url", db, "--listen", listen]);
    if let Some(state) = state {
        cmd.arg("--state-dir").arg(state);
    }
    let mut demo = cmd
        .env("RUST_LOG", std::env::var("PGSSE_TEST_LOG").unwrap_or_else(|_| "warn".into()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn pgsse demo");
    let (url, _) = demo_banner(&mut demo).await;
    (demo, url)
}

#[tokio::test(flavor = "multi_thread")]
async fn demo_page_shows_every_change_live() {
    let db = common::fresh_database();
    let (mut demo, url) = start_demo(&db, "127.0.0.1:0", None).await;

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
    let mut gw = Restartable::start(&["--token-cookie", "pgsse_token"]).await;
    let (db, addr) = (gw.db.clone(), gw.addr());

    let client_js = Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/js/pgsse-client.js");
    let env = [
        ("GATEWAY_URL", format!("http://{addr}")),
        ("TOKEN", gateway::token("alice")),
        ("CLIENT_JS", client_js.display().to_string()),
    ];
    let mut script = Script::start("client-resume.mjs", &env);
    let insert = insert_for_alice;
    while let Some(step) = script.next_step().await {
        let (name, arg) = step.split_once(' ').unwrap_or((&step, ""));
        match name {
            "insert" => exec(&db, &insert(arg)).await,
            "kill" | "kill-for-good" | "bounce" => {
                gw.kill().await;
                if name == "kill" {
                    exec(&db, &format!("{}; {};", insert("offline-1"), insert("offline-2"))).await;
                    exec(&db, "UPDATE notifications SET read = true WHERE title = 'live-1'").await;
                }
                if name == "bounce" {
                    exec(&db, &insert("bounce-1")).await;
                    gw.restart().await;
                }
            }
            "restart" => gw.restart().await,
            other => panic!("unknown step {other}"),
        }
        script.ack().await;
    }
    script.finish().await;
}

fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// Runs a program to completion in `dir`; panics with its output when it fails.
async fn run(dir: &Path, program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{program} {args:?} in {} failed:\n{text}", dir.display());
    text
}

/// `npm pack` of clients/js (its prepack generates the types), checked as it would be published.
async fn pack_client(into: &Path) -> PathBuf {
    let client = repo_path("clients/js");
    let advice = "run ./scripts/test (it runs `npm ci` in clients/js and examples/react-app)";
    assert!(client.join("node_modules/typescript/package.json").exists(), "clients/js/node_modules missing: {advice}");
    let dest = into.to_str().expect("utf8 temp path");
    let out = run(&client, "npm", &["pack", "--silent", "--pack-destination", dest]).await;
    let name = out.lines().rev().find(|l| l.ends_with(".tgz")).unwrap_or_else(|| panic!("no tarball named:\n{out}"));
    let tgz = into.join(name.trim());
    let listing = run(into, "tar", &["tzf", tgz.to_str().expect("utf8")]).await;
    for file in ["pgsse-client.js", "pgsse-client.d.ts", "transports.js", "react.js", "react.d.ts"] {
        assert!(listing.lines().any(|l| l == format!("package/dist/{file}")), "{file} in the tarball:\n{listing}");
    }
    for file in ["package/README.md", "package/CHANGELOG.md", "package/package.json"] {
        assert!(listing.lines().any(|l| l == file), "{file} in the tarball:\n{listing}");
    }
    assert!(!listing.contains("node_modules"), "{listing}");
    let manifest = run(into, "tar", &["xzOf", tgz.to_str().expect("utf8"), "package/package.json"]).await;
    let manifest: serde_json::Value = serde_json::from_str(&manifest).expect("package.json");
    assert!(manifest.get("private").is_none(), "publishable: {manifest}");
    assert!(manifest["exports"]["./react"]["types"].is_string() && manifest["exports"]["."]["types"].is_string());
    tgz
}

/// A `pgsse demo` on a database the test owns, keeping its secret in `state` across restarts.
async fn spawn_demo(db: &str, state: &Path, port: u16) -> Child {
    let (demo, _) = start_demo(db, &format!("127.0.0.1:{port}"), Some(state)).await;
    assert!(gateway::wait_ready(&format!("127.0.0.1:{port}"), Duration::from_secs(20)).await, "demo not ready");
    demo
}

/// examples/react-app, installed from the packed client, type-checked, built, and driven in
/// Chromium: one stream and one set of queries for two components, every kind of change in both,
/// batches, a gateway SIGKILL, no stream left after the page.
#[tokio::test(flavor = "multi_thread")]
async fn fixture_app_from_the_packed_client_shares_one_stream() {
    require_tooling();
    let app = repo_path("examples/react-app");
    assert!(
        app.join("node_modules/vite/package.json").exists(),
        "examples/react-app/node_modules missing: run ./scripts/test (it runs `npm ci` there)"
    );
    let tmp = std::env::temp_dir().join(format!("pgsse-fixture-{}-{}", std::process::id(), free_port()));
    std::fs::create_dir_all(&tmp).expect("temp dir");
    let tgz = pack_client(&tmp).await;
    let tgz = tgz.to_str().expect("utf8");
    run(&app, "npm", &["install", "--no-save", "--no-audit", "--no-fund", "--prefer-offline", tgz]).await;
    run(&app, "node_modules/.bin/tsc", &["--noEmit"]).await;
    let dist = tmp.join("dist");
    let dist_arg = dist.to_str().expect("utf8");
    run(&app, "node_modules/.bin/vite", &["build", "--logLevel", "warn", "--outDir", dist_arg, "--emptyOutDir"]).await;

    let db = common::fresh_database();
    let state = tmp.join("state");
    let port = free_port();
    let mut demo = Some(spawn_demo(&db, &state, port).await);
    let env = [("GATEWAY_URL", format!("http://127.0.0.1:{port}")), ("APP_DIST", dist.display().to_string())];
    let mut script = Script::start("fixture-app.mjs", &env);
    let insert = insert_for_alice;
    while let Some(step) = script.next_step().await {
        let (name, arg) = step.split_once(' ').unwrap_or((&step, ""));
        match name {
            "insert" => exec(&db, &insert(arg)).await,
            "insert-many" => {
                let n: u32 = arg.parse().expect("a count");
                let sql = format!(
                    "INSERT INTO notifications (user_id, title) SELECT 'alice', 'bulk-' || i FROM generate_series(1, {n}) i"
                );
                exec(&db, &sql).await;
            }
            "update" => {
                let (from, to) = arg.split_once(' ').expect("update <title> <new title>");
                exec(&db, &format!("UPDATE notifications SET title = '{to}' WHERE title = '{from}'")).await;
            }
            "kill" => {
                if let Some(mut d) = demo.take() {
                    d.kill().await.expect("SIGKILL the demo");
                }
                exec(&db, &insert("offline-1")).await;
            }
            "restart" => demo = Some(spawn_demo(&db, &state, port).await),
            other => panic!("unknown step {other}"),
        }
        script.ack().await;
    }
    script.finish().await;
    if let Some(mut d) = demo {
        let _ = d.kill().await;
    }
    let _ = std::fs::remove_dir_all(&tmp);
}

/// The fetch transport (Authorization header) against a real gateway: a hung gateway (SIGSTOP)
/// is found dead by the watchdog and replaced; a SIGKILL and restart resume; nothing missed or
/// repeated.
#[tokio::test(flavor = "multi_thread")]
async fn fetch_transport_resumes_and_replaces_a_hung_gateway() {
    let mut gw = Restartable::start(&["--heartbeat-interval", "1s"]).await;
    let db = gw.db.clone();
    let env = [("GATEWAY_URL", format!("http://{}", gw.addr())), ("TOKEN", gateway::token("alice"))];
    let mut script = Script::start("fetch-transport.mjs", &env);
    let insert = insert_for_alice;
    let signal = |sig: &str, pid: u32| {
        let status = std::process::Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status();
        assert!(status.is_ok_and(|s| s.success()), "kill -{sig}");
    };
    while let Some(step) = script.next_step().await {
        let (name, arg) = step.split_once(' ').unwrap_or((&step, ""));
        let pid = gw.pid();
        match name {
            "insert" => exec(&db, &insert(arg)).await,
            "stop" => {
                signal("STOP", pid);
                exec(&db, &insert("while-stopped")).await;
            }
            "cont" => signal("CONT", pid),
            "kill" => {
                gw.kill().await;
                exec(&db, &insert("offline-1")).await;
            }
            "restart" => gw.restart().await,
            other => panic!("unknown step {other}"),
        }
        script.ack().await;
    }
    script.finish().await;
}
