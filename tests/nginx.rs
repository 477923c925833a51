//! pgsse behind a real nginx, configured with the files in `deploy/nginx/`, and a real Chromium:
//! what browsers see through the proxy over HTTP/2 + TLS: events in order, many tabs (and why not
//! HTTP/1.1), the gateway killed or drained and restarted, and streams idle for longer than
//! nginx's `proxy_read_timeout`.
//!
//! The nginx configuration is generated from `deploy/nginx/pgsse-upstream.conf` and
//! `deploy/nginx/pgsse-location.conf` verbatim, except for addresses, log paths and the one
//! directive a test varies (each substitution must match exactly). Chromium is driven by
//! `tests/browser/nginx-driver.mjs` (playwright-core). Needs nginx, chromium and the npm packages
//! of tests/browser: `./scripts/test` installs them.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use common::gateway::{self, notifications_db, token, Gateway, GatewayProcess};
use common::{exec, free_port};

const T: Duration = Duration::from_secs(20);
const COOKIE: &str = "pgsse_token";
const NGINX: &str = "/usr/sbin/nginx";

// ---------------------------------------------------------------------------------------------
// The test page: what a real client does.
// ---------------------------------------------------------------------------------------------

/// Served by nginx at `/`. Shows every notification's title in `#events`, and keeps what the
/// tests check in `window.pgsse`.
///
/// Delivery is at least once: a resumed stream may repeat the last events before the reconnect
/// (the gateway replays from its position, see ARCHITECTURE.md), so the page drops an event whose
/// id (`<history>.<horizon>-<log id>`) carries a log id it has already shown, and counts it in `duplicates`.
///
/// An EventSource reconnects by itself (sending `Last-Event-ID`) when a stream ends, but gives up
/// for good (readyState CLOSED) on any answer that is not a 200 event stream, e.g. nginx's 502
/// while the gateway is down. Then the page opens a new EventSource after 1 s, passing the last id
/// as `?lastEventId=`. `connected[i].via` records how each stream was opened: `new` (first open),
/// `header` (the EventSource's own reconnect) or `query` (reopened by the page).
const PAGE: &str = r#"<!doctype html>
<html>
<head><meta charset="utf-8"><title>pgsse behind nginx</title></head>
<body>
<h1>Notifications</h1>
<p id="status">connecting</p>
<ul id="events"></ul>
<script>
const STREAM = "/api/notifications/stream";
const t = (window.pgsse = {
  connected: [], errors: 0, gaveUp: 0, reopens: 0, heartbeats: 0, resets: 0, duplicates: 0, lastId: "",
});
const shown = new Set();
function connect() {
  const reopened = t.lastId !== "";
  const es = new EventSource(reopened ? STREAM + "?lastEventId=" + encodeURIComponent(t.lastId) : STREAM);
  let streams = 0;
  const seen = (e) => { if (e.lastEventId) t.lastId = e.lastEventId; };
  es.addEventListener("connected", (e) => {
    seen(e);
    streams += 1;
    const via = streams > 1 ? "header" : reopened ? "query" : "new";
    t.connected.push({ ...JSON.parse(e.data), via });
    document.getElementById("status").textContent = "connected";
  });
  es.addEventListener("notification", (e) => {
    seen(e);
    const logId = e.lastEventId.split("-")[1];
    if (logId !== undefined && shown.has(logId)) { t.duplicates += 1; return; }
    if (logId !== undefined) shown.add(logId);
    const data = JSON.parse(e.data);
    const li = document.createElement("li");
    li.textContent = data.notification ? data.notification.title : data.type;
    document.getElementById("events").append(li);
  });
  es.addEventListener("heartbeat", (e) => { seen(e); t.heartbeats += 1; });
  es.addEventListener("reset", (e) => { seen(e); t.resets += 1; });
  es.addEventListener("error", () => {
    t.errors += 1;
    document.getElementById("status").textContent = "reconnecting";
    if (es.readyState === EventSource.CLOSED) {
      t.gaveUp += 1;
      setTimeout(() => { t.reopens += 1; connect(); }, 1000);
    }
  });
}
connect();
</script>
</body>
</html>
"#;

/// The titles shown in a page, in order.
const TITLES: &str = "[...document.querySelectorAll('#events li')].map((li) => li.textContent)";

// ---------------------------------------------------------------------------------------------
// Temp dirs, nginx
// ---------------------------------------------------------------------------------------------

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("pgsse-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn deploy_nginx(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/nginx").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// `text` with `from` replaced by `to`; `from` must occur exactly `n` times (so a change in the
/// deploy files cannot silently leave a test running on something else).
fn replace_n(text: &str, from: &str, to: &str, n: usize) -> String {
    assert_eq!(text.matches(from).count(), n, "expected {n} occurrence(s) of {from:?} in:\n{text}");
    text.replace(from, to)
}

fn replace_once(text: &str, from: &str, to: &str) -> String {
    replace_n(text, from, to, 1)
}

/// A self-signed certificate and key for CN=localhost in `dir` (cert.pem, key.pem).
fn self_signed_cert(dir: &Path) {
    let out = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost"])
        .arg("-keyout")
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .stdin(Stdio::null())
        .output()
        .expect("run openssl");
    assert!(out.status.success(), "openssl: {}", String::from_utf8_lossy(&out.stderr));
}

/// One `server {}` of the test nginx: the test page at `/` and the stream location of
/// deploy/nginx/pgsse-location.conf.
#[derive(Clone)]
struct Site {
    port: u16,
    /// HTTP/2 over TLS (`listen ... ssl http2`, as example.conf); false: plain HTTP/1.1.
    tls: bool,
    /// The upstream its stream location proxies to.
    upstream: &'static str,
    /// Replaces the location's `proxy_read_timeout 1h`.
    read_timeout: Option<&'static str>,
    /// Keep the location's mapping of 502/503/504 to a `retry:` stream (false: browsers see them).
    retry_answer: bool,
}

impl Site {
    fn h2(port: u16) -> Site {
        Site { port, tls: true, upstream: "pgsse", read_timeout: None, retry_answer: true }
    }

    fn origin(&self) -> String {
        format!("{}://127.0.0.1:{}", if self.tls { "https" } else { "http" }, self.port)
    }

    fn url(&self) -> String {
        format!("{}/", self.origin())
    }
}

/// nginx in the foreground (single process, so killing it leaves nothing behind), on temp paths.
struct Nginx {
    child: Child,
    dir: TempDir,
}

impl Nginx {
    /// Starts nginx with `upstreams` (name, gateway address; the first must be `pgsse`) and `sites`;
    /// returns once every site accepts connections.
    async fn start(upstreams: &[(&'static str, &str)], sites: &[Site]) -> Nginx {
        let dir = TempDir::new("nginx");
        let d = &dir.0;
        for sub in ["www", "tmp"] {
            std::fs::create_dir_all(d.join(sub)).expect("mkdir");
        }
        std::fs::write(d.join("www/index.html"), PAGE).expect("write page");
        self_signed_cert(d);
        std::fs::write(d.join("nginx.conf"), nginx_conf(d, upstreams, sites)).expect("write nginx.conf");

        let test = nginx_command(d).arg("-t").stdin(Stdio::null()).output().await.expect("run nginx -t");
        assert!(
            test.status.success(),
            "nginx -t failed:\n{}\n--- nginx.conf ---\n{}",
            String::from_utf8_lossy(&test.stderr),
            std::fs::read_to_string(d.join("nginx.conf")).unwrap_or_default()
        );
        let log = std::fs::File::create(d.join("error.log")).expect("create error.log");
        let mut child =
            nginx_command(d).stdin(Stdio::null()).stderr(log).kill_on_drop(true).spawn().expect("spawn nginx");
        let deadline = Instant::now() + Duration::from_secs(10);
        for site in sites {
            while tokio::net::TcpStream::connect(("127.0.0.1", site.port)).await.is_err() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "nginx exited ({status}):\n{}",
                        std::fs::read_to_string(d.join("error.log")).unwrap_or_default()
                    );
                }
                assert!(Instant::now() < deadline, "nginx is not listening on {}", site.port);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Nginx { child, dir }
    }

    /// The stream location's access log of the site on `port` (format `pgsse_stream`).
    fn stream_log(&self, port: u16) -> Vec<String> {
        self.read_lines(&format!("stream-{port}.log"))
    }

    /// The page requests' access log of the site on `port`: `<connection> <protocol> "<request>" <status>`.
    fn page_log(&self, port: u16) -> Vec<String> {
        self.read_lines(&format!("pages-{port}.log"))
    }

    fn read_lines(&self, name: &str) -> Vec<String> {
        std::fs::read_to_string(self.dir.0.join(name)).unwrap_or_default().lines().map(str::to_string).collect()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.dir.0.join("error.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect::<Vec<_>>().into_iter().rev().collect();
            eprintln!("--- nginx error log (last 40 lines) ---\n{}", tail.join("\n"));
        }
    }
}

fn nginx_command(dir: &Path) -> Command {
    assert!(Path::new(NGINX).is_file(), "{NGINX} not found: apt-get install nginx-light (./scripts/test does)");
    let mut cmd = Command::new(NGINX);
    cmd.arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .arg("-g")
        .arg(format!("daemon off; pid {}; error_log stderr;", dir.join("nginx.pid").display()));
    cmd
}

fn nginx_conf(d: &Path, upstreams: &[(&'static str, &str)], sites: &[Site]) -> String {
    let upstream_file = deploy_nginx("pgsse-upstream.conf");
    let default_server = "server 127.0.0.1:8080;";
    assert_eq!(upstreams.first().map(|u| u.0), Some("pgsse"), "the first upstream is the deploy file's");
    // Part 1 as deployed, pointing at the test gateway; further upstreams are copies of its block.
    let mut http = replace_once(&upstream_file, default_server, &format!("server {};", upstreams[0].1));
    let start = upstream_file.find("upstream pgsse {").expect("upstream block");
    let len = upstream_file[start..].find("\n}").expect("end of upstream block") + 2;
    let block = &upstream_file[start..start + len];
    for (name, addr) in &upstreams[1..] {
        let b = replace_once(block, "upstream pgsse {", &format!("upstream {name} {{"));
        http.push_str(&format!("\n{}\n", replace_once(&b, default_server, &format!("server {addr};"))));
    }
    for site in sites {
        http.push_str(&server_block(d, site));
    }
    let tmp = d.join("tmp");
    let t = |name: &str| tmp.join(name).display().to_string();
    format!(
        "master_process off;\nworker_processes 1;\nevents {{ worker_connections 1024; }}\n\
         http {{\n\
         types {{ text/html html; }}\n\
         default_type application/octet-stream;\n\
         client_body_temp_path {}; proxy_temp_path {}; fastcgi_temp_path {}; uwsgi_temp_path {}; scgi_temp_path {};\n\
         access_log {};\n\
         log_format pages '$connection $server_protocol \"$request\" $status';\n\
         {http}\n}}\n",
        t("body"),
        t("proxy"),
        t("fastcgi"),
        t("uwsgi"),
        t("scgi"),
        d.join("access.log").display(),
    )
}

fn server_block(d: &Path, site: &Site) -> String {
    let mut loc = deploy_nginx("pgsse-location.conf");
    let stream_log = d.join(format!("stream-{}.log", site.port));
    loc = replace_n(
        &loc,
        "access_log /var/log/nginx/access.log pgsse_stream;",
        &format!("access_log {} pgsse_stream;", stream_log.display()),
        2,
    );
    if site.upstream != "pgsse" {
        loc = replace_once(&loc, "proxy_pass http://pgsse;", &format!("proxy_pass http://{};", site.upstream));
    }
    if let Some(timeout) = site.read_timeout {
        loc = replace_once(&loc, "proxy_read_timeout 1h;", &format!("proxy_read_timeout {timeout};"));
    }
    if !site.retry_answer {
        loc = replace_once(&loc, "proxy_intercept_errors on;", "");
        loc = replace_once(&loc, "error_page 502 503 504 = @pgsse_retry;", "");
    }
    let listen = if site.tls {
        format!(
            "listen 127.0.0.1:{} ssl http2;\nssl_certificate {};\nssl_certificate_key {};",
            site.port,
            d.join("cert.pem").display(),
            d.join("key.pem").display()
        )
    } else {
        format!("listen 127.0.0.1:{};", site.port)
    };
    format!(
        "\nserver {{\n{listen}\naccess_log {} pages;\nroot {};\nlocation / {{ index index.html; }}\n{loc}\n}}\n",
        d.join(format!("pages-{}.log", site.port)).display(),
        d.join("www").display(),
    )
}

// ---------------------------------------------------------------------------------------------
// Chromium through tests/browser/nginx-driver.mjs
// ---------------------------------------------------------------------------------------------

struct Browser {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Browser {
    async fn launch() -> Browser {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
        assert!(
            dir.join("node_modules/playwright-core").is_dir(),
            "tests/browser/node_modules is missing: run ./scripts/test, or `npm ci` in tests/browser"
        );
        let mut child = Command::new("node")
            .arg(dir.join("nginx-driver.mjs"))
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn node (is Node.js installed?)");
        let stdin = child.stdin.take().expect("stdin");
        let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut b = Browser { child, stdin, lines };
        let ready = b.answer(Duration::from_secs(30)).await;
        assert_eq!(ready["ready"], true, "driver: {ready}");
        b
    }

    async fn answer(&mut self, timeout: Duration) -> Value {
        let line = tokio::time::timeout(timeout, self.lines.next_line())
            .await
            .expect("browser driver answers in time")
            .expect("read from the browser driver")
            .expect("the browser driver exited");
        let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("driver said {line:?}: {e}"));
        assert_eq!(v["ok"], true, "browser driver: {}", v["error"]);
        v["value"].clone()
    }

    async fn call(&mut self, cmd: Value) -> Value {
        let mut line = cmd.to_string();
        line.push('\n');
        self.stdin.write_all(line.as_bytes()).await.expect("write to the browser driver");
        self.answer(Duration::from_secs(40)).await
    }

    /// A browser context (own cookies, own connections) holding `user`'s token cookie for `origin`.
    async fn user(&mut self, id: &str, origin: &str, user: &str) {
        let secure = origin.starts_with("https:");
        let cookie = json!({
            "name": COOKIE, "value": token(user), "url": origin,
            "httpOnly": true, "secure": secure, "sameSite": "Strict",
        });
        self.call(json!({"op": "context", "id": id, "cookies": [cookie]})).await;
    }

    async fn open(&mut self, context: &str, page: &str, url: &str) {
        let status = self.call(json!({"op": "open", "context": context, "page": page, "url": url})).await;
        assert_eq!(status, 200, "loading {url}");
    }

    /// Opens without waiting for the page to load.
    async fn open_nowait(&mut self, context: &str, page: &str, url: &str) {
        self.call(json!({"op": "open", "context": context, "page": page, "url": url, "wait": false})).await;
    }

    async fn close(&mut self, page: &str) {
        self.call(json!({"op": "closePage", "page": page})).await;
    }

    async fn eval(&mut self, page: &str, expr: &str) -> Value {
        self.call(json!({"op": "eval", "page": page, "expr": expr})).await
    }

    async fn eval_all(&mut self, pages: &[String], expr: &str) -> Vec<Value> {
        let v = self.call(json!({"op": "evalAll", "pages": pages, "expr": expr})).await;
        v.as_array().cloned().unwrap_or_default()
    }

    /// Polls until `cond` is true in every page; panics with each page's state if not in time.
    async fn expect_all(&mut self, pages: &[String], cond: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.eval_all(pages, &format!("!!({cond})")).await.iter().all(|v| v == &Value::Bool(true)) {
                return;
            }
            if Instant::now() >= deadline {
                let states =
                    self.eval_all(pages, &format!("JSON.stringify({{state: window.pgsse, titles: {TITLES}}})")).await;
                let dump: Vec<String> = pages.iter().zip(states).map(|(p, s)| format!("  {p}: {s}")).collect();
                panic!("not true in every page after {timeout:?}: {cond}\n{}", dump.join("\n"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn titles(&mut self, page: &str) -> Vec<String> {
        let v = self.eval(page, TITLES).await;
        v.as_array().map(|a| a.iter().filter_map(|t| t.as_str().map(str::to_string)).collect()).unwrap_or_default()
    }

    async fn state(&mut self, page: &str) -> Value {
        self.eval(page, "window.pgsse").await
    }

    async fn quit(mut self) {
        drop(self.stdin);
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }
}

fn pages(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

async fn insert(db: &str, user: &str, titles: &[String]) {
    for t in titles {
        let sql = format!("INSERT INTO notifications (user_id, title) VALUES ('{user}', '{t}')");
        exec(db, &sql).await;
    }
}

fn titled(prefix: &str, n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("{prefix}-{i}")).collect()
}

/// The `pgsse_stream` log field `name="value"` (or `name=value`) of an access log line; `None`
/// when absent or empty (nginx logs an empty value as `-`).
fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let start = line.find(&format!(" {name}="))? + name.len() + 2;
    let rest = &line[start..];
    let value = match rest.strip_prefix('"') {
        Some(q) => q.split('"').next(),
        None => rest.split(' ').next(),
    }?;
    Some(value).filter(|v| !v.is_empty() && *v != "-")
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

/// A page opens an EventSource through nginx (HTTP/2 + TLS, cookie auth): rows inserted with SQL
/// appear in the page, promptly and in order, and only the page user's rows.
#[tokio::test]
async fn rows_appear_in_the_page_in_order() {
    let db = notifications_db().await;
    let gw = Gateway::start(&db, &["--token-cookie", COOKIE]).await;
    let site = Site::h2(free_port());
    let nginx = Nginx::start(&[("pgsse", &gw.addr)], std::slice::from_ref(&site)).await;
    let mut b = Browser::launch().await;
    b.user("alice", &site.origin(), "alice").await;
    let p = pages("p", 1);
    b.open("alice", &p[0], &site.url()).await;
    b.expect_all(&p, "window.pgsse.connected.length === 1", T).await;
    let connected = &b.state("p0").await["connected"][0];
    assert_eq!(connected["userId"], "alice", "the cookie authenticated the stream: {connected}");

    // One row first: it must show up at once (nothing between the gateway and the page buffers it).
    let started = Instant::now();
    insert(&db, "alice", &["first".to_string()]).await;
    b.expect_all(&p, "document.querySelectorAll('#events li').length === 1", T).await;
    let latency = started.elapsed();
    assert!(latency < Duration::from_secs(2), "one event took {latency:?} through nginx");

    // Then many, one transaction each, interleaved with another user's, plus one multi-row statement.
    let mut want = vec!["first".to_string()];
    for t in titled("row", 15) {
        insert(&db, "alice", std::slice::from_ref(&t)).await;
        insert(&db, "bob", &[format!("bob-{t}")]).await;
        want.push(t);
    }
    exec(&db, "INSERT INTO notifications (user_id, title) SELECT 'alice', 'bulk-' || g FROM generate_series(1, 5) g")
        .await;
    want.extend(titled("bulk", 5));
    b.expect_all(&p, &format!("document.querySelectorAll('#events li').length >= {}", want.len()), T).await;
    assert_eq!(b.titles("p0").await, want);

    let state = b.state("p0").await;
    assert_eq!(state["errors"], 0, "{state}");
    let nav = b.eval("p0", "performance.getEntriesByType('navigation')[0].nextHopProtocol").await;
    assert_eq!(nav, "h2", "the page came over HTTP/2");
    b.close("p0").await;
    b.quit().await;
    assert!(
        common::wait_until(Duration::from_secs(5), || async { !nginx.stream_log(site.port).is_empty() }).await,
        "the closed stream is logged"
    );
    let log = nginx.stream_log(site.port);
    assert!(log[0].contains(" HTTP/2.0\" 200 ") && log[0].contains("upstream=200"), "{log:?}");
    assert!(!log[0].contains("access_token") && !log[0].contains('?'), "no query string in the stream log: {log:?}");
    gw.stop().await;
}

/// One user with 10 tabs over HTTP/2 + TLS: all 10 streams stay open at once on one connection and
/// each tab receives every event; a second user's tab receives none of them.
#[tokio::test]
async fn ten_tabs_over_http2_each_receive_every_event() {
    let db = notifications_db().await;
    let gw = Gateway::start(&db, &["--token-cookie", COOKIE]).await;
    let site = Site::h2(free_port());
    let nginx = Nginx::start(&[("pgsse", &gw.addr)], std::slice::from_ref(&site)).await;
    let mut b = Browser::launch().await;
    b.user("alice", &site.origin(), "alice").await;
    b.user("bob", &site.origin(), "bob").await;
    let tabs = pages("tab", 10);
    for tab in &tabs {
        b.open("alice", tab, &site.url()).await;
    }
    let bob = pages("bob", 1);
    b.open("bob", &bob[0], &site.url()).await;
    b.expect_all(&tabs, "window.pgsse.connected.length === 1", T).await;
    b.expect_all(&bob, "window.pgsse.connected.length === 1", T).await;
    assert_eq!(gw.connections().await, 11, "all 11 streams are open at the same time");
    for p in b.eval_all(&tabs, "performance.getEntriesByType('navigation')[0].nextHopProtocol").await {
        assert_eq!(p, "h2");
    }

    let want = titled("alice", 6);
    insert(&db, "alice", &want).await;
    insert(&db, "bob", &["for-bob".to_string()]).await;
    let n = want.len();
    b.expect_all(&tabs, &format!("document.querySelectorAll('#events li').length >= {n}"), T).await;
    for tab in &tabs {
        assert_eq!(b.titles(tab).await, want, "{tab}");
    }
    // Bob's row was committed after Alice's: once it is there, Alice's would have been too.
    b.expect_all(&bob, "document.querySelectorAll('#events li').length >= 1", T).await;
    assert_eq!(b.titles("bob0").await, ["for-bob"], "the other user's tab gets none of Alice's events");
    for s in b.eval_all(&tabs, "window.pgsse.errors").await {
        assert_eq!(s, 0);
    }

    // Alice's 10 page loads (and so her 10 streams) shared one HTTP/2 connection.
    let loads: Vec<String> = nginx.page_log(site.port).into_iter().filter(|l| l.contains("\"GET / ")).collect();
    assert_eq!(loads.len(), 11, "{loads:?}");
    assert!(loads.iter().all(|l| l.contains(" HTTP/2.0 ")), "{loads:?}");
    let mut conns: Vec<&str> = loads[..10].iter().filter_map(|l| l.split(' ').next()).collect();
    conns.dedup();
    assert_eq!(conns.len(), 1, "one connection for one user's tabs: {loads:?}");
    b.quit().await;
    gw.stop().await;
}

/// Over HTTP/1.1 a browser opens at most 6 connections per origin: with 6 tabs streaming, a 7th
/// tab hangs until one closes. This is why example.conf serves the browser over HTTP/2.
#[tokio::test]
async fn over_http1_the_seventh_tab_waits() {
    let db = notifications_db().await;
    let gw = Gateway::start(&db, &["--token-cookie", COOKIE]).await;
    let site = Site { tls: false, ..Site::h2(free_port()) };
    let _nginx = Nginx::start(&[("pgsse", &gw.addr)], std::slice::from_ref(&site)).await;
    let mut b = Browser::launch().await;
    b.user("alice", &site.origin(), "alice").await;
    let six = pages("tab", 6);
    for tab in &six {
        b.open("alice", tab, &site.url()).await;
    }
    b.expect_all(&six, "window.pgsse.connected.length === 1", T).await;
    let seventh = pages("seventh", 1);
    b.open_nowait("alice", &seventh[0], &site.url()).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(gw.connections().await, 6, "the 7th tab cannot even load its page");
    b.close("tab0").await;
    b.expect_all(&seventh, "window.pgsse && window.pgsse.connected.length === 1", T).await;
    b.quit().await;
    gw.stop().await;
}

/// The gateway is killed and restarted behind nginx while rows are inserted: every page's stream
/// resumes and no row is missing. Pages on the deploy location (nginx turns the 502 of a missing
/// gateway into a `retry:` stream) are resumed by the EventSource itself with Last-Event-ID; pages
/// on a location without that mapping see the 502, their EventSource gives up, and the page
/// reopens it with ?lastEventId=.
#[tokio::test]
async fn gateway_killed_and_restarted_behind_nginx_loses_no_event() {
    restart_behind_nginx(Stop::Kill).await;
}

/// The same with a graceful stop (SIGTERM, as a deploy does): the gateway drains its streams with
/// a jittered `retry:` and answers 503 while draining, which nginx also turns into a retry.
#[tokio::test]
async fn gateway_drained_and_restarted_behind_nginx_loses_no_event() {
    restart_behind_nginx(Stop::Term).await;
}

enum Stop {
    Kill,
    Term,
}

async fn restart_behind_nginx(stop: Stop) {
    let db = notifications_db().await;
    let port = free_port();
    let args = ["--token-cookie", COOKIE, "--trust-proxy", "--drain-period", "2s", "--shutdown-timeout", "5s"];
    let gw = GatewayProcess::spawn_on(&db, port, &args).await;
    assert!(gateway::wait_ready(&gw.addr, T).await, "gateway ready");
    let native = Site::h2(free_port());
    let reopen = Site { retry_answer: false, ..Site::h2(free_port()) };
    let nginx = Nginx::start(&[("pgsse", &gw.addr)], &[native.clone(), reopen.clone()]).await;

    let mut b = Browser::launch().await;
    // Cookies are per host, not per port: one context serves both sites.
    b.user("alice", &native.origin(), "alice").await;
    let (a, r) = (pages("native", 3), pages("reopen", 3));
    for p in &a {
        b.open("alice", p, &native.url()).await;
    }
    for p in &r {
        b.open("alice", p, &reopen.url()).await;
    }
    let all: Vec<String> = a.iter().chain(&r).cloned().collect();
    b.expect_all(&all, "window.pgsse.connected.length === 1", T).await;

    let before = titled("before", 3);
    insert(&db, "alice", &before).await;
    b.expect_all(&all, "document.querySelectorAll('#events li').length === 3", T).await;

    match stop {
        Stop::Kill => gw.kill().await,
        Stop::Term => {
            let status =
                gw.signal_and_wait("TERM", Duration::from_secs(10)).await.expect("gateway exits after draining");
            assert!(status.success(), "graceful stop: {status}");
        }
    }
    let down = titled("down", 5);
    insert(&db, "alice", &down).await;
    // Every page notices: nginx's retry answer ended at least once (native), or the EventSource gave up.
    b.expect_all(&a, "window.pgsse.errors >= 2", T).await;
    b.expect_all(&r, "window.pgsse.gaveUp >= 1", T).await;

    let gw = GatewayProcess::spawn_on(&db, port, &args).await;
    assert!(gateway::wait_ready(&gw.addr, T).await, "restarted gateway ready");
    let after = titled("after", 2);
    insert(&db, "alice", &after).await;
    let want: Vec<String> = before.iter().chain(&down).chain(&after).cloned().collect();
    b.expect_all(&all, &format!("document.querySelectorAll('#events li').length >= {}", want.len()), T).await;
    tokio::time::sleep(Duration::from_millis(500)).await; // a late extra event would show up by now
    for p in &all {
        assert_eq!(b.titles(p).await, want, "{p}: every row once, in order");
    }

    for p in &all {
        let s = b.state(p).await;
        eprintln!(
            "{p}: connected {} (last via {}, replayed {}), errors {}, gave up {}, duplicates dropped {}",
            s["connected"].as_array().map_or(0, Vec::len),
            s["connected"].as_array().and_then(|c| c.last()).map_or(Value::Null, |c| c["via"].clone()),
            s["connected"].as_array().and_then(|c| c.last()).map_or(Value::Null, |c| c["replayed"].clone()),
            s["errors"],
            s["gaveUp"],
            s["duplicates"],
        );
        // At least once: only events from just before the restart may come again (and are dropped).
        assert!(s["duplicates"].as_u64().unwrap_or(0) <= before.len() as u64, "{p}: {s}");
    }
    for p in &a {
        let s = b.state(p).await;
        let last = &s["connected"][s["connected"].as_array().map_or(0, |c| c.len()) - 1];
        assert_eq!(s["gaveUp"], 0, "{p}: the EventSource never gave up: {s}");
        assert_eq!(last["via"], "header", "{p}: resumed by the EventSource itself: {s}");
        assert_eq!(last["resumed"], true, "{p}: {s}");
        assert!(last["replayed"].as_u64().unwrap_or(0) >= down.len() as u64, "{p}: replayed the missed rows: {s}");
    }
    for p in &r {
        let s = b.state(p).await;
        let last = &s["connected"][s["connected"].as_array().map_or(0, |c| c.len()) - 1];
        assert!(s["reopens"].as_u64().unwrap_or(0) >= 1, "{p}: {s}");
        assert_eq!(last["via"], "query", "{p}: reopened by the page: {s}");
        assert_eq!(last["resumed"], true, "{p}: {s}");
        assert!(last["replayed"].as_u64().unwrap_or(0) >= down.len() as u64, "{p}: replayed the missed rows: {s}");
    }

    // nginx's view: during the outage the native pages' reconnects carried Last-Event-ID and got
    // the retry answer (200, pgsse 502/503); the others got the 502 itself.
    for p in &all {
        b.close(p).await;
    }
    b.quit().await;
    let logged = |log: &[String], n: usize| log.iter().filter(|l| field(l, "upstream") == Some("200")).count() >= n;
    assert!(
        common::wait_until(Duration::from_secs(5), || async {
            logged(&nginx.stream_log(native.port), 6) && logged(&nginx.stream_log(reopen.port), 6)
        })
        .await,
        "all 12 streams logged"
    );
    let native_log = nginx.stream_log(native.port);
    let retried: Vec<&String> = native_log
        .iter()
        .filter(|l| l.contains("\" 200 ") && matches!(field(l, "upstream"), Some(u) if u.starts_with("50")))
        .collect();
    assert!(!retried.is_empty(), "retry answers while the gateway was down: {native_log:#?}");
    assert!(retried.iter().all(|l| field(l, "last_event_id").is_some()), "{retried:#?}");
    let resumed = native_log
        .iter()
        .filter(|l| field(l, "upstream") == Some("200") && field(l, "last_event_id").is_some())
        .count();
    assert_eq!(resumed, 3, "each native page resumed once with Last-Event-ID: {native_log:#?}");
    let reopen_log = nginx.stream_log(reopen.port);
    assert!(reopen_log.iter().any(|l| l.contains("\" 502 ") || l.contains("\" 503 ")), "{reopen_log:#?}");
    let resumed = reopen_log
        .iter()
        .filter(|l| field(l, "upstream") == Some("200") && field(l, "last_event_id_arg").is_some())
        .count();
    assert_eq!(resumed, 3, "each other page resumed once with ?lastEventId=: {reopen_log:#?}");
    gw.kill().await;
}

/// With nginx's proxy_read_timeout at 5 s and heartbeats every 2 s, a stream idle for 15 s stays
/// open: no error, no second `connected`. Without heartbeats (control), nginx cuts it.
#[tokio::test]
async fn heartbeats_keep_an_idle_stream_open_past_proxy_read_timeout() {
    let db = notifications_db().await;
    let gw = Gateway::start(&db, &["--token-cookie", COOKIE, "--heartbeat-interval", "2s"]).await;
    let quiet = Gateway::start(&db, &["--token-cookie", COOKIE, "--heartbeat-interval", "1h"]).await;
    let site = Site { read_timeout: Some("5s"), ..Site::h2(free_port()) };
    let control = Site { read_timeout: Some("5s"), upstream: "pgsse_quiet", ..Site::h2(free_port()) };
    let _nginx =
        Nginx::start(&[("pgsse", &gw.addr), ("pgsse_quiet", &quiet.addr)], &[site.clone(), control.clone()]).await;
    let mut b = Browser::launch().await;
    b.user("alice", &site.origin(), "alice").await;
    b.open("alice", "idle", &site.url()).await;
    b.open("alice", "quiet", &control.url()).await;
    let both = ["idle".to_string(), "quiet".to_string()];
    b.expect_all(&both, "window.pgsse.connected.length === 1", T).await;

    tokio::time::sleep(Duration::from_secs(15)).await;
    let idle = b.state("idle").await;
    assert_eq!(idle["errors"], 0, "{idle}");
    assert_eq!(idle["connected"].as_array().map(Vec::len), Some(1), "same stream all along: {idle}");
    assert!(idle["heartbeats"].as_u64().unwrap_or(0) >= 5, "{idle}");
    let q = b.state("quiet").await;
    assert!(q["errors"].as_u64().unwrap_or(0) >= 1, "without heartbeats nginx cuts the stream after 5 s: {q}");
    assert!(q["connected"].as_array().map_or(0, Vec::len) >= 2, "and the page reconnects: {q}");

    // The idle stream still delivers.
    insert(&db, "alice", &["after-idle".to_string()]).await;
    b.expect_all(&both[..1], "document.querySelectorAll('#events li').length === 1", T).await;
    assert_eq!(b.titles("idle").await, ["after-idle"]);
    assert_eq!(b.state("idle").await["connected"].as_array().map(Vec::len), Some(1));
    b.quit().await;
    gw.stop().await;
    quiet.stop().await;
}

/// deploy/nginx/example.conf, with its includes and paths pointed at temp copies, passes `nginx -t`.
#[tokio::test]
async fn example_conf_passes_nginx_t() {
    let dir = TempDir::new("nginx-example");
    let d = &dir.0;
    self_signed_cert(d);
    let logs = d.display().to_string();
    for name in ["pgsse-upstream.conf", "pgsse-location.conf"] {
        let text = deploy_nginx(name).replace("/var/log/nginx", &logs);
        std::fs::write(d.join(name), text).expect("write");
    }
    let conf = deploy_nginx("example.conf");
    assert_eq!(conf.matches("include /etc/nginx/pgsse/").count(), 2, "example.conf includes both parts");
    let conf = conf.replace("/etc/nginx/pgsse/", &format!("{logs}/"));
    let conf = replace_once(
        &conf,
        "ssl_certificate /etc/nginx/certs/fullchain.pem;",
        &format!("ssl_certificate {logs}/cert.pem;"),
    );
    let conf = replace_once(
        &conf,
        "ssl_certificate_key /etc/nginx/certs/privkey.pem;",
        &format!("ssl_certificate_key {logs}/key.pem;"),
    );
    let conf = conf.replace("/var/log/nginx", &logs);
    std::fs::write(d.join("nginx.conf"), conf).expect("write nginx.conf");
    let out = nginx_command(d).arg("-t").stdin(Stdio::null()).output().await.expect("run nginx -t");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "nginx -t:\n{stderr}");
    assert!(!stderr.contains("[warn]"), "nginx -t warns:\n{stderr}");
}
