//! `pgsse demo` as a newcomer runs it: own or given PostgreSQL, banner, page, stream, cleanup.
//!
//! The real binary: it prints what to do next, serves the page and the client, streams live, and
//! leaves nothing behind on Ctrl-C or even SIGKILL. `pgsse serve` never has the demo's routes.

mod common;

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use common::gateway::{self, request, Gateway};
use common::{exec, wait_until, SseClient};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const T: Duration = Duration::from_secs(10);

/// A running `pgsse demo` and what its banner said.
struct Demo {
    child: Child,
    banner: String,
    /// host:port of the page and the stream.
    addr: String,
    /// The database URL of the psql line.
    psql_url: String,
    /// The throwaway cluster's directory, when the demo started one.
    data_dir: Option<PathBuf>,
    /// Drains stdout after the banner; yields the rest (the goodbye line).
    rest: tokio::task::JoinHandle<String>,
}

impl Demo {
    async fn start(args: &[&str]) -> Demo {
        let mut child = Command::new(env!("CARGO_BIN_EXE_pgsse"))
            .arg("demo")
            .args(args)
            .env("RUST_LOG", std::env::var("PGSSE_TEST_LOG").unwrap_or_else(|_| "warn".into()))
            .env_remove("PGSSE_DATABASE_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn pgsse demo");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let (complete, banner) = gateway::read_until_line(&mut lines, "Press Ctrl-C", Duration::from_secs(90)).await;
        assert!(complete, "no complete banner:\n{banner}");
        // The rest of stdout (the goodbye line) is collected by `stop`.
        let rest = tokio::spawn(async move {
            let mut text = String::new();
            while let Ok(Some(line)) = lines.next_line().await {
                text.push_str(&line);
                text.push('\n');
            }
            text
        });
        let find = |prefix: &str| banner.lines().find_map(|l| l.trim().strip_prefix(prefix).map(str::trim));
        let url = find("Open the demo page:").unwrap_or_else(|| panic!("no URL:\n{banner}"));
        let addr = url.trim_start_matches("http://").trim_end_matches('/').to_string();
        let psql_url = find("psql \"")
            .and_then(|l| l.split('"').next())
            .unwrap_or_else(|| panic!("no psql line:\n{banner}"))
            .to_string();
        let data_dir = banner
            .split("throwaway cluster in ")
            .nth(1)
            .and_then(|s| s.split(" (removed on exit)").next())
            .map(PathBuf::from);
        Demo { child, banner, addr, psql_url, data_dir, rest }
    }

    fn pid(&self) -> String {
        self.child.id().expect("running").to_string()
    }

    /// Sends `sig` and returns the exit status and the rest of stdout.
    async fn signal(mut self, sig: &str) -> (std::process::ExitStatus, String) {
        let _ = std::process::Command::new("kill").arg(format!("-{sig}")).arg(self.pid()).status();
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("the demo exits in time")
            .expect("wait");
        let rest = tokio::time::timeout(T, self.rest).await.ok().and_then(Result::ok).unwrap_or_default();
        (status, rest)
    }
}

/// The port of a postgres URL.
fn pg_port(url: &str) -> u16 {
    let host_port = url.rsplit('@').next().and_then(|s| s.split('/').next()).unwrap_or_default();
    host_port.rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or_else(|| panic!("no port in {url}"))
}

fn port_open(port: u16) -> bool {
    TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200)).is_ok()
}

/// Signs in as `user` through the demo's login endpoint; returns the Cookie header value.
async fn login(addr: &str, user: &str) -> String {
    let (status, headers, body) = request(addr, "GET", &format!("/demo/api/login?user={user}"), &[]).await;
    assert_eq!(status, 200, "{body}");
    let set = headers.iter().find(|(k, _)| k == "set-cookie").map(|(_, v)| v.clone()).expect("set-cookie");
    for attr in ["HttpOnly", "SameSite=Lax", "Path=/"] {
        assert!(set.contains(attr), "{attr} in {set}");
    }
    set.split(';').next().expect("cookie").to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn embedded_postgres_serves_the_page_streams_and_cleans_up_on_ctrl_c() {
    let demo = Demo::start(&["--listen", "127.0.0.1:0"]).await;
    let b = &demo.banner;
    assert!(b.contains("curl -N -H \"Authorization: Bearer "), "{b}");
    assert!(b.contains("INSERT INTO notifications (user_id, title) VALUES ('alice', 'Hello')"), "{b}");
    assert!(demo.psql_url.starts_with("postgres://postgres:") && demo.psql_url.contains("@127.0.0.1:"), "{b}");
    let dir = demo.data_dir.clone().unwrap_or_else(|| panic!("no data dir in the banner:\n{b}"));
    assert!(dir.join("data").is_dir(), "{} exists while running", dir.display());
    let port = pg_port(&demo.psql_url);

    let (status, headers, page) = request(&demo.addr, "GET", "/", &[]).await;
    assert_eq!(status, 200);
    assert!(headers.iter().any(|(k, v)| k == "content-type" && v.starts_with("text/html")), "{headers:?}");
    assert!(page.contains("<title>pgsse demo</title>") && page.contains("/demo/page.js"), "{page}");
    let (status, _, js) = request(&demo.addr, "GET", "/client.js", &[]).await;
    assert_eq!(status, 200);
    assert!(js.contains("export function connectNotifications") && js.contains("from './transports.js'"));
    let (status, _, js) = request(&demo.addr, "GET", "/transports.js", &[]).await;
    assert!(status == 200 && js.contains("export function fetchTransport"), "{js}");
    let (status, _, js) = request(&demo.addr, "GET", "/demo/page.js", &[]).await;
    assert!(status == 200 && js.contains("from '/client.js'"), "{js}");
    let (status, _, _) = request(&demo.addr, "GET", "/demo/api/notifications", &[]).await;
    assert_eq!(status, 401, "the API needs the cookie");

    // The stream, with the cookie the page's login sets; a row inserted with the printed psql URL.
    let cookie = login(&demo.addr, "alice").await;
    assert!(gateway::wait_ready(&demo.addr, T).await);
    let mut s =
        SseClient::connect(&demo.addr, gateway::STREAM_PATH, &[("Cookie", cookie.as_str())]).await.expect("connect");
    assert_eq!(s.status, 200);
    assert_eq!(s.next_event(T).await.expect("connected").event, "connected");
    exec(&demo.psql_url, "INSERT INTO notifications (user_id, title) VALUES ('alice', 'Hello')").await;
    let ev = s.next_named("notification", T).await.expect("the inserted row arrives");
    assert!(ev.data.contains("\"created\"") && ev.data.contains("Hello"), "{}", ev.data);
    let (status, _, list) = request(&demo.addr, "GET", "/demo/api/notifications", &[("Cookie", &cookie)]).await;
    assert!(status == 200 && list.contains("\"Hello\""), "{list}");
    let headers = [("Cookie", cookie.as_str()), ("x-demo-user", "bob")];
    let (status, _, _) = request(&demo.addr, "GET", "/demo/api/notifications", &headers).await;
    assert_eq!(status, 409, "a tab showing bob cannot act while the browser is signed in as alice");
    drop(s);

    let (status, rest) = demo.signal("INT").await;
    assert!(status.success(), "exit status after Ctrl-C: {status}");
    assert!(rest.contains("removed"), "says it cleaned up: {rest}");
    assert!(!dir.exists(), "{} is removed", dir.display());
    assert!(!port_open(port), "postgres stopped");
}

#[tokio::test(flavor = "multi_thread")]
async fn embedded_postgres_dies_with_a_sigkilled_demo() {
    let demo = Demo::start(&["--listen", "127.0.0.1:0"]).await;
    let dir = demo.data_dir.clone().expect("data dir");
    let port = pg_port(&demo.psql_url);
    assert!(port_open(port));
    let (status, _) = demo.signal("KILL").await;
    assert!(!status.success());
    let gone = wait_until(Duration::from_secs(30), || async { !port_open(port) && !dir.exists() }).await;
    assert!(gone, "postgres still up ({}) or {} still there", port_open(port), dir.display());
}

#[tokio::test(flavor = "multi_thread")]
async fn database_url_mode_says_what_it_created() {
    let db = common::fresh_database();
    let demo = Demo::start(&["--database-url", &db, "--listen", "127.0.0.1:0"]).await;
    assert!(demo.banner.contains("table notifications:   created"), "{}", demo.banner);
    assert!(demo.data_dir.is_none(), "no throwaway cluster with --database-url");
    assert_eq!(demo.psql_url, db, "the psql line names the database (without a password, had it one)");
    let (status, _) = demo.signal("TERM").await;
    assert!(status.success());

    // Again: install is idempotent, the table is reused, its rows kept.
    exec(&db, "INSERT INTO notifications (user_id, title) VALUES ('bob', 'kept')").await;
    let demo = Demo::start(&["--database-url", &db, "--listen", "127.0.0.1:0"]).await;
    assert!(demo.banner.contains("table notifications:   exists already"), "{}", demo.banner);
    let cookie = login(&demo.addr, "bob").await;
    let (_, _, list) = request(&demo.addr, "GET", "/demo/api/notifications", &[("Cookie", &cookie)]).await;
    assert!(list.contains("\"kept\""), "{list}");
    let (status, _) = demo.signal("INT").await;
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_taken_port_is_a_clear_message() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_pgsse"))
        .args(["demo", "--database-url", "postgres://nobody@127.0.0.1:1/none", "--listen", &addr])
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("already in use") && stderr.contains("--listen 127.0.0.1:"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_never_exposes_the_demo_routes() {
    let db = gateway::notifications_db().await;
    let gw = Gateway::start(&db, &[]).await;
    for path in ["/", "/client.js", "/transports.js", "/demo/page.js", "/demo/api/me", "/demo/api/login?user=alice"] {
        let (status, _, _) = request(&gw.addr, "GET", path, &[]).await;
        assert_eq!(status, 404, "{path} on pgsse serve");
    }
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn state_dir_keeps_database_and_secret_so_a_tab_resumes_after_a_sigkill() {
    let state = std::env::temp_dir().join(format!("pgsse-demo-state-{}-{}", std::process::id(), common::free_port()));
    let listen = format!("127.0.0.1:{}", common::free_port());
    let args = ["--state-dir", state.to_str().expect("utf8 path"), "--listen", &listen];
    let demo = Demo::start(&args).await;
    assert!(demo.banner.contains("kept in "), "{}", demo.banner);
    let cookie = login(&demo.addr, "alice").await;
    assert!(gateway::wait_ready(&demo.addr, T).await);
    let mut s =
        SseClient::connect(&demo.addr, gateway::STREAM_PATH, &[("Cookie", cookie.as_str())]).await.expect("connect");
    assert_eq!(s.next_event(T).await.expect("connected").event, "connected");
    exec(&demo.psql_url, "INSERT INTO notifications (user_id, title) VALUES ('alice', 'seen')").await;
    let seen = s.next_named("notification", T).await.expect("the first row arrives");
    let last_id = seen.id.clone().expect("an id");
    // Committed while the tab holds `last_id`, never delivered to it: the resume must bring it.
    exec(&demo.psql_url, "INSERT INTO notifications (user_id, title) VALUES ('alice', 'unseen-before-kill')").await;
    drop(s);
    let (status, _) = demo.signal("KILL").await;
    assert!(!status.success());

    let demo = Demo::start(&args).await;
    assert!(demo.banner.contains("table notifications:   exists already"), "the same database: {}", demo.banner);
    exec(&demo.psql_url, "INSERT INTO notifications (user_id, title) VALUES ('alice', 'after-restart')").await;
    assert!(gateway::wait_ready(&demo.addr, T).await);
    // The tab comes back with the cookie of the first run and its last event id.
    let headers = [("Cookie", cookie.as_str()), ("Last-Event-ID", last_id.as_str())];
    let mut s = SseClient::connect(&demo.addr, gateway::STREAM_PATH, &headers).await.expect("reconnect");
    assert_eq!(s.status, 200, "the cookie of the first run is still valid");
    let connected = s.next_event(T).await.expect("connected");
    assert_eq!(connected.event, "connected");
    assert!(connected.data.contains("\"resumed\":true"), "resumed, not reset: {}", connected.data);
    // At least once: `seen` may come again across the resume, with the same id.
    let mut missed = Vec::new();
    while !missed.iter().any(|e: &common::SseEvent| e.data.contains("after-restart")) {
        missed.push(s.next_named("notification", T).await.unwrap_or_else(|| panic!("missing events: {missed:?}")));
    }
    assert!(missed.iter().any(|e| e.data.contains("unseen-before-kill")), "nothing missed: {missed:?}");
    for dup in missed.iter().filter(|e| e.data.contains("\"seen\"")) {
        assert_eq!(dup.id.as_deref(), Some(last_id.as_str()), "a duplicate keeps its id");
    }
    drop(s);

    let (status, rest) = demo.signal("INT").await;
    assert!(status.success());
    assert!(rest.contains("stays in"), "{rest}");
    assert!(state.join("postgres/data/PG_VERSION").exists() && state.join("jwt-secret").exists());
    let _ = std::fs::remove_dir_all(&state);
}
