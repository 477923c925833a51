//! The orchestrator's side of the load-generator processes: spawn, command, aggregate.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::client::{Kind, Stats};
use crate::worker::{Cmd, Reply};

/// Source addresses 127.0.0.2..=127.0.0.(1+SRC_IPS): ~28k ephemeral ports each.
pub const SRC_IPS: u64 = 16;

struct Worker {
    _child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
}

pub struct Fleet {
    workers: Vec<Worker>,
    /// Streams open, as global indexes 0..open.
    pub open: u64,
    pub concurrency: usize,
}

/// Result of growing the fleet's streams.
#[derive(Debug, Clone, Default)]
pub struct Connected {
    pub opened: u64,
    pub failed: u64,
    pub errors: Vec<String>,
    pub secs: f64,
}

impl Fleet {
    pub async fn spawn(n: usize, cpus: Option<&str>) -> anyhow::Result<Fleet> {
        let exe = std::env::current_exe()?;
        let mut workers = Vec::new();
        for _ in 0..n.max(1) {
            let mut cmd = match cpus {
                Some(c) => {
                    let mut c2 = Command::new("taskset");
                    c2.args(["-c", c]).arg(&exe);
                    c2
                }
                None => Command::new(&exe),
            };
            cmd.arg("worker").stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit()).kill_on_drop(true);
            let mut child = cmd.spawn().context("spawn worker")?;
            let stdin = child.stdin.take().context("worker stdin")?;
            let stdout = BufReader::new(child.stdout.take().context("worker stdout")?).lines();
            workers.push(Worker { _child: child, stdin, stdout });
        }
        Ok(Fleet { workers, open: 0, concurrency: 64 })
    }

    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    async fn all(&mut self, cmds: Vec<Cmd>, timeout: Duration) -> anyhow::Result<Vec<Reply>> {
        for (w, c) in self.workers.iter_mut().zip(&cmds) {
            let mut line = serde_json::to_string(c)?;
            line.push('\n');
            w.stdin.write_all(line.as_bytes()).await?;
            w.stdin.flush().await?;
        }
        let mut replies = Vec::new();
        let deadline = tokio::time::Instant::now() + timeout;
        for w in self.workers.iter_mut().take(cmds.len()) {
            let line =
                tokio::time::timeout_at(deadline, w.stdout.next_line()).await.context("worker reply timed out")??;
            let line = line.context("a worker exited")?;
            replies.push(serde_json::from_str(&line)?);
        }
        Ok(replies)
    }

    async fn each(&mut self, cmd: Cmd) -> anyhow::Result<Vec<Reply>> {
        let cmds = vec![cmd; self.workers.len()];
        self.all(cmds, Duration::from_secs(60)).await
    }

    /// Grows the open streams to `target` (global indexes `open..target`), spread over the
    /// workers. Returns how many opened and the wall time of the whole step.
    pub async fn grow(
        &mut self,
        kind: Kind,
        addr: SocketAddr,
        target: u64,
        per_user: u64,
    ) -> anyhow::Result<Connected> {
        if target <= self.open {
            return Ok(Connected::default());
        }
        let n = self.workers.len() as u64;
        let cmds: Vec<Cmd> = (0..n)
            .map(|w| Cmd::Connect {
                kind,
                addr,
                secret: crate::systems::SECRET.to_string(),
                start: self.open,
                end: target,
                offset: w,
                stride: n,
                per_user,
                src_ips: SRC_IPS,
                concurrency: self.concurrency,
            })
            .collect();
        let started = Instant::now();
        let replies = self.all(cmds, Duration::from_secs(300)).await?;
        let mut c = Connected { secs: started.elapsed().as_secs_f64(), ..Connected::default() };
        // Worker-side time excludes token minting; use the slowest worker's.
        let worker_secs = replies.iter().map(|r| r.secs).fold(0.0, f64::max);
        if worker_secs > 0.0 {
            c.secs = worker_secs;
        }
        for r in replies {
            c.opened += r.opened;
            c.failed += r.failed;
            c.errors.extend(r.errors);
        }
        self.open = target;
        Ok(c)
    }

    /// Closes streams with index >= `keep`, leaving `keep` open.
    pub async fn shrink(&mut self, keep: u64) -> anyhow::Result<()> {
        self.each(Cmd::Close { from: keep }).await?;
        self.open = self.open.min(keep);
        Ok(())
    }

    pub async fn stage(&mut self, stage: u32) -> anyhow::Result<()> {
        self.each(Cmd::Stage { stage }).await.map(|_| ())
    }

    /// Every worker's stats merged, and the workers' total CPU ticks.
    pub async fn stats(&mut self) -> anyhow::Result<(Stats, u64)> {
        let replies = self.each(Cmd::Stats).await?;
        Ok(merge(replies))
    }

    pub async fn bcast(&mut self) -> anyhow::Result<Stats> {
        let replies = self.each(Cmd::Bcast).await?;
        Ok(merge(replies).0)
    }

    pub async fn cpu_ticks(&mut self) -> anyhow::Result<u64> {
        Ok(self.each(Cmd::Bcast).await?.iter().map(|r| r.cpu_ticks).sum())
    }

    /// Waits until `expected` deliveries of the current stage arrived or nothing new came for
    /// `quiet`; returns the merged stats.
    pub async fn settle(&mut self, expected: u64, quiet: Duration, max: Duration) -> anyhow::Result<Stats> {
        let deadline = Instant::now() + max;
        let (mut last, mut since) = (u64::MAX, Instant::now());
        loop {
            let (s, _) = self.stats().await?;
            if s.events >= expected || Instant::now() > deadline || (s.events == last && since.elapsed() > quiet) {
                return Ok(s);
            }
            if s.events != last {
                last = s.events;
                since = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn merge(replies: Vec<Reply>) -> (Stats, u64) {
    let mut total = Stats::default();
    let mut ticks = 0;
    for r in replies {
        ticks += r.cpu_ticks;
        let Some(s) = r.stats else { continue };
        total.stage = s.stage;
        total.lat_us.extend(s.lat_us);
        total.events += s.events;
        total.misrouted += s.misrouted;
        total.stray += s.stray;
        total.heartbeats += s.heartbeats;
        total.dropped += s.dropped;
        for (k, (n, t)) in s.bcast {
            let e = total.bcast.entry(k).or_insert((0, 0));
            e.0 += n;
            e.1 = e.1.max(t);
        }
    }
    (total, ticks)
}

/// Fails loudly when streams could not be opened: every later number would be wrong.
pub fn check_connected(c: &Connected, what: &str) -> anyhow::Result<()> {
    if c.failed > 0 {
        bail!("{what}: {} streams failed to open, e.g. {:?}", c.failed, c.errors);
    }
    Ok(())
}
