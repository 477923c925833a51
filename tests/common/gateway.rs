//! Starting the real gateway for tests: in-process on port 0, or as a separate `pgsse` process.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The path of the event stream.
pub const STREAM_PATH: &str = "/api/notifications/stream";

/// The HS256 secret every test gateway accepts for JWTs.
pub const JWT_SECRET: &str = "test-secret-0123456789-abcdefghijkl";

/// A token for `user`, valid for an hour.
pub fn token(user: &str) -> String {
    pgsse::auth::mint_hs256(user, JWT_SECRET.as_bytes(), Duration::from_secs(3600), None, None).expect("mint token")
}

/// A fresh database on the shared cluster with pgsse installed and `notifications` watched.
pub async fn notifications_db() -> String {
    let url = super::fresh_database();
    install(&url).await;
    url
}

pub async fn install(url: &str) {
    super::exec(url, pgsse::pg::install::INSTALL_SQL).await;
    // The same table `pgsse demo` creates.
    super::exec(url, pgsse::pg::demo::CREATE_TABLE_SQL).await;
    super::exec(url, "SELECT pgsse.watch('notifications', 'user_id')").await;
}

/// The secret NOTIFY channel of a database with pgsse installed (tests may read it; a role
/// without SELECT on `pgsse.secret` cannot).
pub async fn channel(url: &str) -> String {
    let c = super::connect(url).await;
    c.query_one("SELECT channel FROM pgsse.secret", &[]).await.expect("read pgsse.secret.channel").get(0)
}

/// Standard flags for a test gateway (fast markers, short heartbeat unless overridden).
fn argv(db_url: &str, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = ["--database-url", db_url, "--listen", "127.0.0.1:0", "--jwt-secret", JWT_SECRET]
        .iter()
        .map(|s| s.to_string())
        .collect();
    if !extra.contains(&"--drain-period") {
        v.extend(["--drain-period".into(), "100ms".into()]);
    }
    if !extra.contains(&"--metrics-listen") {
        v.extend(["--metrics-listen".into(), "off".into()]);
    }
    if !extra.contains(&"--marker-interval") {
        v.extend(["--marker-interval".into(), "50ms".into()]);
    }
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

/// The gateway running inside the test process (`pgsse::run` on port 0).
pub struct Gateway {
    pub addr: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Gateway {
    /// Starts it and waits until `/readyz` says ready.
    pub async fn start(db_url: &str, extra: &[&str]) -> Gateway {
        let gw = Self::start_unready(db_url, extra).await;
        assert!(gw.wait_ready(Duration::from_secs(20)).await, "gateway never became ready");
        gw
    }

    /// Starts it without waiting for readiness.
    pub async fn start_unready(db_url: &str, extra: &[&str]) -> Gateway {
        let config = pgsse::Config::from_argv(argv(db_url, extra)).unwrap_or_else(|e| panic!("config: {e}"));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            pgsse::run(config, listener, async move {
                let _ = rx.await;
            })
            .await
            .expect("gateway run");
        });
        Gateway { addr, stop: Some(tx), task: Some(task) }
    }

    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        wait_ready(&self.addr, timeout).await
    }

    /// Graceful stop; returns once `run` has returned.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(30), t).await.expect("gateway stops").expect("join");
        }
    }

    pub async fn stream(&self, user: &str, extra_headers: &[(&str, &str)]) -> super::SseClient {
        stream(&self.addr, user, extra_headers).await
    }

    /// Streams open right now, as `/readyz` reports them.
    pub async fn connections(&self) -> u64 {
        connections(&self.addr).await
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// Opens an authenticated stream (token in the Authorization header) and checks it is a 200.
pub async fn stream(addr: &str, user: &str, extra_headers: &[(&str, &str)]) -> super::SseClient {
    let auth = format!("Bearer {}", token(user));
    let mut headers = vec![("Authorization", auth.as_str())];
    headers.extend_from_slice(extra_headers);
    let c = super::SseClient::connect(addr, STREAM_PATH, &headers).await.expect("connect");
    assert_eq!(c.status, 200, "stream for {user}: {c:?}");
    c
}

/// Opens a stream for `user` (token in the Authorization header), resuming from `last_event_id`
/// when given, WITHOUT checking the status (a 503 is a normal answer while a gateway starts).
/// `Err` when the connection is refused or closed before a response head (the gateway is down).
pub async fn try_stream(addr: &str, user: &str, last_event_id: Option<&str>) -> std::io::Result<super::SseClient> {
    let auth = format!("Bearer {}", token(user));
    let mut headers = vec![("Authorization", auth.as_str())];
    if let Some(id) = last_event_id {
        headers.push(("Last-Event-ID", id));
    }
    super::SseClient::connect(addr, STREAM_PATH, &headers).await
}

/// A plain HTTP/1.1 request; returns status, lower-cased headers and body.
pub async fn request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, Vec<(String, String)>, String) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .expect("response in time")
        .expect("read");
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|s| s.parse().ok()).unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers, body.to_string())
}

/// The value of a counter or gauge (without labels) on the metrics listener at `addr`; 0 if absent.
pub async fn metric(addr: &str, name: &str) -> u64 {
    let (_, _, text) = request(addr, "GET", "/metrics", &[]).await;
    let prefix = format!("{name} ");
    text.lines().find_map(|l| l.strip_prefix(&prefix)).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

pub async fn readyz(addr: &str) -> Option<(u16, serde_json::Value)> {
    let s = TcpStream::connect(addr).await.ok()?;
    drop(s);
    let (status, _, body) = request(addr, "GET", "/readyz", &[]).await;
    Some((status, serde_json::from_str(&body).ok()?))
}

pub async fn wait_ready(addr: &str, timeout: Duration) -> bool {
    super::wait_until(timeout, || async { matches!(readyz(addr).await, Some((200, _))) }).await
}

pub async fn connections(addr: &str) -> u64 {
    readyz(addr).await.and_then(|(_, v)| v["connections"].as_u64()).unwrap_or(u64::MAX)
}

/// The gateway as a separate OS process (for SIGKILL / restart tests).
pub struct GatewayProcess {
    pub addr: String,
    child: tokio::process::Child,
}

impl GatewayProcess {
    /// Spawns `pgsse serve` on a free port; does not wait for readiness.
    pub async fn spawn(db_url: &str, extra: &[&str]) -> GatewayProcess {
        Self::spawn_on(db_url, super::free_port(), extra).await
    }

    pub async fn spawn_on(db_url: &str, port: u16, extra: &[&str]) -> GatewayProcess {
        let addr = format!("127.0.0.1:{port}");
        let mut args = argv(db_url, extra);
        let i = args.iter().position(|a| a == "127.0.0.1:0").expect("listen arg");
        args[i] = addr.clone();
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgsse"))
            .arg("serve")
            .args(&args)
            .env("RUST_LOG", std::env::var("PGSSE_TEST_LOG").unwrap_or_else(|_| "warn".into()))
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn pgsse");
        GatewayProcess { addr, child }
    }

    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
    }

    /// Sends a signal by name (e.g. "TERM") and waits for the exit status.
    pub async fn signal_and_wait(mut self, sig: &str, timeout: Duration) -> Option<std::process::ExitStatus> {
        let _ = std::process::Command::new("kill").arg(format!("-{sig}")).arg(self.pid().to_string()).status();
        tokio::time::timeout(timeout, self.child.wait()).await.ok()?.ok()
    }
}

/// Reads lines until one starts with `prefix` (e.g. the end of `pgsse demo`'s banner); returns
/// whether it came within `timeout`, and everything read.
pub async fn read_until_line<R: tokio::io::AsyncBufRead + Unpin>(
    lines: &mut tokio::io::Lines<R>,
    prefix: &str,
    timeout: Duration,
) -> (bool, String) {
    let mut text = String::new();
    let read = async {
        while let Ok(Some(line)) = lines.next_line().await {
            text.push_str(&line);
            text.push('\n');
            if line.starts_with(prefix) {
                return true;
            }
        }
        false
    };
    let found = tokio::time::timeout(timeout, read).await.unwrap_or(false);
    (found, text)
}
