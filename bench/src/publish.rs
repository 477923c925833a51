//! Publishers: SQL INSERTs into the watched table (autocommit, one statement = one transaction)
//! for pgsse and Node, HTTP POSTs for nchan. Open loop: event k is due at start + k/rate and is
//! stamped with the time it is actually sent, so a publisher falling behind shows in `behind_ms`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::future::join_all;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::client::{now_us, Marker};

const INSERT: &str = "INSERT INTO notifications (user_id, title, metadata) \
                      VALUES ($1, 'bench', pg_catalog.jsonb_build_object('bench', $2::text))";
const BROADCAST: &str = "SELECT pgsse.publish(NULL, pg_catalog.jsonb_build_object('bench', $1::text))";

pub enum Publisher {
    Sql(Vec<tokio_postgres::Client>),
    Http { addr: SocketAddr, lanes: usize },
}

#[derive(Debug, Clone, Default)]
pub struct Sent {
    pub sent: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub secs: f64,
    /// How late the most delayed event was sent (publisher saturation).
    pub behind_ms: f64,
    /// Each publish call's round trip (µs): for SQL, INSERT + trigger + commit as the app sees it.
    pub call_us: Vec<u32>,
}

impl Sent {
    pub fn rate(&self) -> f64 {
        if self.secs > 0.0 {
            self.sent as f64 / self.secs
        } else {
            0.0
        }
    }
}

/// A user index for event `k`, spread evenly and reproducibly (splitmix64).
fn pick(k: u64, users: u64) -> u32 {
    let mut z = k.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)) % users.max(1)) as u32
}

impl Publisher {
    pub async fn sql(url: &str, lanes: usize) -> anyhow::Result<Publisher> {
        let mut clients = Vec::new();
        for _ in 0..lanes.max(1) {
            let (c, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.context("publisher connect")?;
            tokio::spawn(conn);
            clients.push(c);
        }
        Ok(Publisher::Sql(clients))
    }

    /// Broadcasts one marked event; returns when it was sent (µs).
    pub async fn broadcast(&self, stage: u32, seq: u32) -> anyhow::Result<u64> {
        let ts = now_us();
        let marker = Marker::text(stage, seq, None, ts);
        match self {
            Publisher::Sql(c) => {
                c[0].execute(BROADCAST, &[&marker]).await?;
            }
            Publisher::Http { addr, .. } => {
                let mut s = TcpStream::connect(addr).await?;
                s.set_nodelay(true)?;
                let status =
                    post(&mut s, &mut Vec::new(), "/pub/broadcast", &format!("{{\"bench\":\"{marker}\"}}")).await?;
                anyhow::ensure!(status < 300, "nchan publish: status {status}");
            }
        }
        Ok(ts)
    }

    /// Sends `rate * secs` events to random users among `users`, paced at `rate` per second.
    pub async fn run(&self, stage: u32, rate: u64, secs: f64, users: u64) -> Sent {
        let total = (rate as f64 * secs).round() as u64;
        let lanes = match self {
            Publisher::Sql(c) => c.len(),
            Publisher::Http { lanes, .. } => *lanes,
        } as u64;
        let start = Instant::now() + Duration::from_millis(20);
        let interval = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
        let lane = |l: u64| async move {
            let mut out = Sent::default();
            let mut http = None;
            let mut buf = Vec::new();
            if let Publisher::Http { addr, .. } = self {
                match TcpStream::connect(addr).await {
                    Ok(s) => {
                        let _ = s.set_nodelay(true);
                        http = Some(s);
                    }
                    Err(e) => {
                        out.errors = 1;
                        out.first_error = Some(e.to_string());
                        return out;
                    }
                }
            }
            let mut stmt = None;
            if let Publisher::Sql(c) = self {
                match c[l as usize].prepare(INSERT).await {
                    Ok(s) => stmt = Some(s),
                    Err(e) => {
                        out.errors = 1;
                        out.first_error = Some(e.to_string());
                        return out;
                    }
                }
            }
            let mut k = l;
            while k < total {
                let due = start + interval * k as u32;
                tokio::time::sleep_until(due.into()).await;
                let behind = Instant::now().saturating_duration_since(due).as_secs_f64() * 1000.0;
                out.behind_ms = out.behind_ms.max(behind);
                let user = pick(k ^ (stage as u64) << 40, users);
                let marker = Marker::text(stage, k as u32, Some(user), now_us());
                let name = format!("u{user}");
                let called = Instant::now();
                let r: anyhow::Result<()> = match (self, stmt.as_ref(), http.as_mut()) {
                    (Publisher::Sql(c), Some(st), _) => {
                        c[l as usize].execute(st, &[&name, &marker]).await.map(|_| ()).map_err(Into::into)
                    }
                    (Publisher::Http { addr, .. }, _, Some(s)) => {
                        let body = format!(
                            "{{\"type\":\"created\",\"notification\":{{\"user_id\":\"{name}\",\"title\":\"bench\",\"metadata\":{{\"bench\":\"{marker}\"}}}}}}"
                        );
                        let path = format!("/pub/{name}");
                        let mut r = post(s, &mut buf, &path, &body).await;
                        if r.is_err() {
                            // The server closed the keep-alive connection: reconnect once.
                            if let Ok(fresh) = TcpStream::connect(addr).await {
                                let _ = fresh.set_nodelay(true);
                                *s = fresh;
                                r = post(s, &mut buf, &path, &body).await;
                            }
                        }
                        match r {
                            Ok(st) if st < 300 => Ok(()),
                            Ok(st) => Err(anyhow::anyhow!("status {st}")),
                            Err(e) => Err(e.into()),
                        }
                    }
                    _ => Err(anyhow::anyhow!("publisher lane not ready")),
                };
                out.call_us.push(called.elapsed().as_micros().min(u32::MAX as u128) as u32);
                match r {
                    Ok(()) => out.sent += 1,
                    Err(e) => {
                        out.errors += 1;
                        out.first_error.get_or_insert_with(|| e.to_string());
                    }
                }
                k += lanes;
            }
            out
        };
        let results = join_all((0..lanes).map(lane)).await;
        let mut total_sent = Sent { secs: start.elapsed().as_secs_f64(), ..Sent::default() };
        for r in results {
            total_sent.sent += r.sent;
            total_sent.errors += r.errors;
            total_sent.behind_ms = total_sent.behind_ms.max(r.behind_ms);
            total_sent.call_us.extend(r.call_us);
            if total_sent.first_error.is_none() {
                total_sent.first_error = r.first_error;
            }
        }
        total_sent
    }
}

/// One HTTP/1.1 POST on a keep-alive connection; returns the status.
async fn post(s: &mut TcpStream, buf: &mut Vec<u8>, path: &str, body: &str) -> std::io::Result<u16> {
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await?;
    buf.clear();
    let mut tmp = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return Ok(status);
            }
        }
        let n = s.read(&mut tmp).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&tmp[..n]);
    }
}
