//! A load-generator process (`pgsse-bench worker`): holds up to ~19k streams (one process may
//! open at most 20,000 files) and answers the orchestrator's commands, one JSON line each way on
//! stdin/stdout. It exits when stdin closes.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use std::io::{BufRead, Write};
use std::sync::Arc;
use tokio::sync::Semaphore;
use tokio::task::AbortHandle;

use crate::client::{self, Kind, SharedStats, Stats};

/// Orchestrator -> worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Cmd {
    /// Opens streams for global indexes `start + offset + k*stride < end`; index i is user
    /// `i / per_user`, from source address 127.0.0.(2 + i % src_ips).
    Connect {
        kind: Kind,
        addr: SocketAddr,
        secret: String,
        start: u64,
        end: u64,
        offset: u64,
        stride: u64,
        per_user: u64,
        src_ips: u64,
        concurrency: usize,
    },
    /// Closes every stream whose index is at least `from`.
    Close { from: u64 },
    /// Starts a new measurement stage (clears latencies and counters).
    Stage { stage: u32 },
    /// Everything observed this stage.
    Stats,
    /// Only the broadcast tallies (cheap to poll).
    Bcast,
}

/// Worker -> orchestrator.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    pub opened: u64,
    pub failed: u64,
    pub errors: Vec<String>,
    pub secs: f64,
    pub open: u64,
    pub stats: Option<Stats>,
    /// CPU ticks (user + system) this process used so far.
    pub cpu_ticks: u64,
}

struct State {
    stats: SharedStats,
    conns: BTreeMap<u64, AbortHandle>,
}

pub fn main() -> anyhow::Result<()> {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, run())
}

async fn run() -> anyhow::Result<()> {
    let state = Rc::new(RefCell::new(State { stats: SharedStats::default(), conns: BTreeMap::new() }));
    // Commands arrive rarely: a plain thread reads stdin so the runtime needs no io-std.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut out = std::io::stdout();
    while let Some(line) = rx.recv().await {
        let cmd: Cmd = serde_json::from_str(&line)?;
        let reply = handle(cmd, &state).await;
        let mut text = serde_json::to_string(&reply)?;
        text.push('\n');
        out.write_all(text.as_bytes())?;
        out.flush()?;
    }
    Ok(())
}

async fn handle(cmd: Cmd, state: &Rc<RefCell<State>>) -> Reply {
    let mut reply = Reply { ok: true, ..Reply::default() };
    match cmd {
        Cmd::Connect { kind, addr, secret, start, end, offset, stride, per_user, src_ips, concurrency } => {
            let (opened, failed, errors, secs) = connect(
                state,
                kind,
                addr,
                &secret,
                (start + offset..end).step_by(stride.max(1) as usize),
                per_user,
                src_ips,
                concurrency,
            )
            .await;
            reply.opened = opened;
            reply.failed = failed;
            reply.errors = errors;
            reply.secs = secs;
        }
        Cmd::Close { from } => {
            let mut st = state.borrow_mut();
            let closing = st.conns.split_off(&from);
            for h in closing.values() {
                h.abort();
            }
        }
        Cmd::Stage { stage } => {
            let st = state.borrow();
            let mut s = st.stats.borrow_mut();
            let dropped = s.dropped;
            *s = Stats { stage, dropped, ..Stats::default() };
        }
        Cmd::Stats => reply.stats = Some(state.borrow().stats.borrow().clone()),
        Cmd::Bcast => {
            let st = state.borrow();
            let s = st.stats.borrow();
            reply.stats = Some(Stats { stage: s.stage, bcast: s.bcast.clone(), ..Stats::default() });
        }
    }
    reply.open = state.borrow().conns.len() as u64;
    reply.cpu_ticks = crate::procs::cpu_ticks(std::process::id()).unwrap_or(0);
    reply
}

#[allow(clippy::too_many_arguments)]
async fn connect(
    state: &Rc<RefCell<State>>,
    kind: Kind,
    addr: SocketAddr,
    secret: &str,
    indexes: impl Iterator<Item = u64>,
    per_user: u64,
    src_ips: u64,
    concurrency: usize,
) -> (u64, u64, Vec<String>, f64) {
    // Tokens and requests are prepared before the clock starts.
    let ttl = Duration::from_secs(6 * 3600);
    let mut todo = Vec::new();
    for i in indexes {
        let user = (i / per_user.max(1)) as u32;
        let name = format!("u{user}");
        let token = match kind {
            Kind::Nchan => String::new(),
            _ => pgsse::auth::mint_hs256(&name, secret.as_bytes(), ttl, None, None).unwrap_or_default(),
        };
        let src = Ipv4Addr::new(127, 0, 0, 2 + (i % src_ips.clamp(1, 250)) as u8);
        todo.push((i, user, src, client::request(kind, &name, &token)));
    }
    let started = Instant::now();
    let permits = Arc::new(Semaphore::new(concurrency.max(1)));
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<Result<(), String>>();
    let n = todo.len();
    for (i, user, src, req) in todo {
        let permit = permits.clone().acquire_owned().await;
        let stats = state.borrow().stats.clone();
        let done = done_tx.clone();
        let task = tokio::task::spawn_local(async move {
            let opened =
                tokio::time::timeout(client::CONNECT_TIMEOUT, client::open(kind, addr, src, &req, user, &stats)).await;
            drop(req);
            drop(permit);
            match opened {
                Ok(Ok((stream, parser))) => {
                    let _ = done.send(Ok(()));
                    client::live(stream, parser, stats).await;
                }
                Ok(Err(e)) => {
                    let _ = done.send(Err(e));
                }
                Err(_) => {
                    let _ = done.send(Err("timed out".into()));
                }
            }
        });
        state.borrow_mut().conns.insert(i, task.abort_handle());
    }
    let (mut opened, mut failed, mut errors) = (0, 0, Vec::new());
    for _ in 0..n {
        match done_rx.recv().await {
            Some(Ok(())) => opened += 1,
            Some(Err(e)) => {
                failed += 1;
                if errors.len() < 5 {
                    errors.push(e);
                }
            }
            None => break,
        }
    }
    (opened, failed, errors, started.elapsed().as_secs_f64())
}
