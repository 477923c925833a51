//! The nginx and Chromium harness of `tests/nginx.rs`: the test page, nginx configured from
//! `deploy/nginx/`, and Chromium driven through `tests/browser/nginx-driver.mjs`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use super::gateway::token;

/// The cookie the test gateways read the token from.
pub const COOKIE: &str = "pgsse_token";
pub const NGINX: &str = "/usr/sbin/nginx";

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

pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
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

pub fn deploy_nginx(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/nginx").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// `text` with `from` replaced by `to`; `from` must occur exactly `n` times (so a change in the
/// deploy files cannot silently leave a test running on something else).
pub fn replace_n(text: &str, from: &str, to: &str, n: usize) -> String {
    assert_eq!(text.matches(from).count(), n, "expected {n} occurrence(s) of {from:?} in:\n{text}");
    text.replace(from, to)
}

pub fn replace_once(text: &str, from: &str, to: &str) -> String {
    replace_n(text, from, to, 1)
}

/// A self-signed certificate and key for CN=localhost in `dir` (cert.pem, key.pem).
pub fn self_signed_cert(dir: &Path) {
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
pub struct Site {
    pub port: u16,
    /// HTTP/2 over TLS (`listen ... ssl http2`, as example.conf); false: plain HTTP/1.1.
    pub tls: bool,
    /// The upstream its stream location proxies to.
    pub upstream: &'static str,
    /// Replaces the location's `proxy_read_timeout 1h`.
    pub read_timeout: Option<&'static str>,
    /// Keep the location's mapping of 502/503/504 to a `retry:` stream (false: browsers see them).
    pub retry_answer: bool,
}

impl Site {
    pub fn h2(port: u16) -> Site {
        Site { port, tls: true, upstream: "pgsse", read_timeout: None, retry_answer: true }
    }

    pub fn origin(&self) -> String {
        format!("{}://127.0.0.1:{}", if self.tls { "https" } else { "http" }, self.port)
    }

    pub fn url(&self) -> String {
        format!("{}/", self.origin())
    }
}

/// nginx in the foreground (single process, so killing it leaves nothing behind), on temp paths.
pub struct Nginx {
    child: Child,
    dir: TempDir,
}

impl Nginx {
    /// Starts nginx with `upstreams` (name, gateway address; the first must be `pgsse`) and `sites`;
    /// returns once every site accepts connections.
    pub async fn start(upstreams: &[(&'static str, &str)], sites: &[Site]) -> Nginx {
        Self::start_main(SINGLE_PROCESS, upstreams, sites).await
    }

    /// `start`, with `main` as the main context (e.g. a master process, which reloads need).
    pub async fn start_main(main: &str, upstreams: &[(&'static str, &str)], sites: &[Site]) -> Nginx {
        let dir = TempDir::new("nginx");
        let d = &dir.0;
        for sub in ["www", "tmp"] {
            std::fs::create_dir_all(d.join(sub)).expect("mkdir");
        }
        std::fs::write(d.join("www/index.html"), PAGE).expect("write page");
        self_signed_cert(d);
        std::fs::write(d.join("nginx.conf"), nginx_conf(d, main, upstreams, sites)).expect("write nginx.conf");

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

    /// `nginx -s reload` against this nginx (needs a master process: `start_main`).
    pub async fn reload(&self) {
        let out =
            nginx_command(&self.dir.0).args(["-s", "reload"]).stdin(Stdio::null()).output().await.expect("run nginx");
        assert!(out.status.success(), "nginx -s reload: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// The pids of the master's worker processes, read from /proc.
    pub fn workers(&self) -> Vec<u32> {
        let master = self.child.id().unwrap_or(0);
        let mut pids = Vec::new();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
            let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
            // pid (comm) state ppid ...: comm may hold spaces, so read after its closing paren.
            let ppid = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
            if ppid == Some(master) {
                pids.push(pid);
            }
        }
        pids.sort_unstable();
        pids
    }

    /// The stream location's access log of the site on `port` (format `pgsse_stream`).
    pub fn stream_log(&self, port: u16) -> Vec<String> {
        self.read_lines(&format!("stream-{port}.log"))
    }

    /// The page requests' access log of the site on `port`: `<connection> <protocol> "<request>" <status>`.
    pub fn page_log(&self, port: u16) -> Vec<String> {
        self.read_lines(&format!("pages-{port}.log"))
    }

    fn read_lines(&self, name: &str) -> Vec<String> {
        std::fs::read_to_string(self.dir.0.join(name)).unwrap_or_default().lines().map(str::to_string).collect()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // With a master process, its workers would outlive a killed master: kill the master first
        // (a master that sees a worker die starts another), then the workers it had.
        let workers = self.workers();
        let _ = self.child.start_kill();
        for pid in workers {
            let _ = std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status();
        }
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.dir.0.join("error.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect::<Vec<_>>().into_iter().rev().collect();
            eprintln!("--- nginx error log (last 40 lines) ---\n{}", tail.join("\n"));
        }
    }
}

pub fn nginx_command(dir: &Path) -> Command {
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

/// The main context of the test nginx: one process, so killing it leaves nothing behind.
pub const SINGLE_PROCESS: &str = "master_process off;\nworker_processes 1;\n";

fn nginx_conf(d: &Path, main: &str, upstreams: &[(&'static str, &str)], sites: &[Site]) -> String {
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
        "{main}events {{ worker_connections 1024; }}\n\
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

pub struct Browser {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Browser {
    pub async fn launch() -> Browser {
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
    pub async fn user(&mut self, id: &str, origin: &str, user: &str) {
        let secure = origin.starts_with("https:");
        let cookie = json!({
            "name": COOKIE, "value": token(user), "url": origin,
            "httpOnly": true, "secure": secure, "sameSite": "Strict",
        });
        self.call(json!({"op": "context", "id": id, "cookies": [cookie]})).await;
    }

    pub async fn open(&mut self, context: &str, page: &str, url: &str) {
        let status = self.call(json!({"op": "open", "context": context, "page": page, "url": url})).await;
        assert_eq!(status, 200, "loading {url}");
    }

    /// Opens without waiting for the page to load.
    pub async fn open_nowait(&mut self, context: &str, page: &str, url: &str) {
        self.call(json!({"op": "open", "context": context, "page": page, "url": url, "wait": false})).await;
    }

    pub async fn close(&mut self, page: &str) {
        self.call(json!({"op": "closePage", "page": page})).await;
    }

    pub async fn eval(&mut self, page: &str, expr: &str) -> Value {
        self.call(json!({"op": "eval", "page": page, "expr": expr})).await
    }

    pub async fn eval_all(&mut self, pages: &[String], expr: &str) -> Vec<Value> {
        let v = self.call(json!({"op": "evalAll", "pages": pages, "expr": expr})).await;
        v.as_array().cloned().unwrap_or_default()
    }

    /// Polls until `cond` is true in every page; panics with each page's state if not in time.
    pub async fn expect_all(&mut self, pages: &[String], cond: &str, timeout: Duration) {
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

    pub async fn titles(&mut self, page: &str) -> Vec<String> {
        let v = self.eval(page, TITLES).await;
        v.as_array().map(|a| a.iter().filter_map(|t| t.as_str().map(str::to_string)).collect()).unwrap_or_default()
    }

    pub async fn state(&mut self, page: &str) -> Value {
        self.eval(page, "window.pgsse").await
    }

    pub async fn quit(mut self) {
        drop(self.stdin);
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }
}

pub fn pages(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

pub fn titled(prefix: &str, n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("{prefix}-{i}")).collect()
}

/// The `pgsse_stream` log field `name="value"` (or `name=value`) of an access log line; `None`
/// when absent or empty (nginx logs an empty value as `-`).
pub fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let start = line.find(&format!(" {name}="))? + name.len() + 2;
    let rest = &line[start..];
    let value = match rest.strip_prefix('"') {
        Some(q) => q.split('"').next(),
        None => rest.split(' ').next(),
    }?;
    Some(value).filter(|v| !v.is_empty() && *v != "-")
}
