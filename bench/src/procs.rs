//! Child processes under a watchdog (they stop when the orchestrator dies, even by SIGKILL),
//! /proc readings (RSS, CPU ticks, children) and a throwaway PostgreSQL cluster (on
//! `pgsse::pg::throwaway`).

use std::ffi::{OsStr, OsString};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use pgsse::pg::throwaway::{self, ServerUser, Watchdog};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub struct Proc {
    pub name: String,
    pub pid: u32,
    pub log: PathBuf,
    watchdog: Child,
}

pub struct Spawn<'a> {
    pub name: &'a str,
    pub program: &'a str,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub log: PathBuf,
    /// `taskset -c <cpus>` in front when set.
    pub cpus: Option<&'a str>,
    pub as_user: Option<&'a ServerUser>,
    pub cwd: Option<&'a Path>,
}

impl Spawn<'_> {
    /// Starts the program under the watchdog: SIGINT when our end of its stdin closes (we stop
    /// it, or die), SIGKILL 5 s later.
    pub async fn start(self) -> anyhow::Result<Proc> {
        let (program, mut args): (&str, Vec<OsString>) = match self.cpus {
            Some(c) => ("taskset", vec!["-c".into(), c.into(), self.program.into()]),
            None => (self.program, Vec::new()),
        };
        args.extend(self.args.iter().map(OsString::from));
        let dog = Watchdog {
            program: OsStr::new(program),
            args,
            log: &self.log,
            grace: Duration::from_secs(5),
            remove: None,
            user: self.as_user,
        };
        let mut cmd = dog.command();
        cmd.envs(self.env.iter().map(|(k, v)| (k, v))).stdout(Stdio::piped());
        if let Some(d) = self.cwd {
            cmd.current_dir(d);
        }
        let mut cmd = Command::from(cmd);
        cmd.kill_on_drop(true);
        let mut watchdog = cmd.spawn().with_context(|| format!("spawn {}", self.program))?;
        let out = watchdog.stdout.take().context("watchdog stdout")?;
        let mut line = String::new();
        BufReader::new(out).read_line(&mut line).await?;
        let pid = line.trim().parse().with_context(|| format!("pid of {} from {line:?}", self.name))?;
        Ok(Proc { name: self.name.to_string(), pid, log: self.log, watchdog })
    }
}

impl Proc {
    /// SIGINT, then waits up to `timeout` for the process to exit (SIGKILL after).
    pub async fn stop(mut self, timeout: Duration) {
        drop(self.watchdog.stdin.take());
        if tokio::time::timeout(timeout, self.watchdog.wait()).await.is_err() {
            signal(self.pid, "KILL");
            let _ = self.watchdog.wait().await;
        }
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.watchdog.try_wait(), Ok(None))
    }

    /// Waits until the log contains `needle`.
    pub async fn wait_log(&mut self, needle: &str, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log_text().contains(needle) {
                return Ok(());
            }
            if !self.alive() || Instant::now() > deadline {
                bail!("{} never logged {needle:?}; log:\n{}", self.name, tail(&self.log_text(), 3000));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

pub fn tail(s: &str, n: usize) -> &str {
    let mut i = s.len().saturating_sub(n);
    while !s.is_char_boundary(i) {
        i += 1;
    }
    &s[i..]
}

pub fn signal(pid: u32, sig: &str) {
    let _ = std::process::Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status();
}

/// VmRSS in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Fields after the `(comm)` of /proc/<pid>/stat: [0] is state, [1] ppid, [11] utime, [12] stime.
fn stat_fields(pid: u32) -> Option<(String, Vec<String>)> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = s.find('(')?;
    let close = s.rfind(')')?;
    let comm = s[open + 1..close].to_string();
    Some((comm, s[close + 2..].split_whitespace().map(str::to_string).collect()))
}

/// User + system CPU ticks.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let (_, f) = stat_fields(pid)?;
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// System (kernel) CPU ticks only.
pub fn sys_ticks(pid: u32) -> Option<u64> {
    stat_fields(pid)?.1.get(12)?.parse().ok()
}

pub fn clock_ticks_per_sec() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// Every descendant of `pid` (not `pid` itself), with its command name.
pub fn descendants(pid: u32) -> Vec<(u32, String)> {
    let mut all = Vec::new();
    if let Ok(rd) = fs::read_dir("/proc") {
        for e in rd.flatten() {
            if let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) {
                if let Some((comm, f)) = stat_fields(p) {
                    if let Some(pp) = f.get(1).and_then(|v| v.parse::<u32>().ok()) {
                        all.push((p, pp, comm));
                    }
                }
            }
        }
    }
    let mut out = Vec::new();
    let mut frontier = vec![pid];
    while let Some(parent) = frontier.pop() {
        for (p, pp, comm) in &all {
            if *pp == parent {
                out.push((*p, comm.clone()));
                frontier.push(*p);
            }
        }
    }
    out
}

/// Appended to postgresql.conf. Durability is off: the benchmark measures the CPU path of
/// INSERT -> trigger -> NOTIFY, not this machine's disk.
const PG_CONF: &str = "
listen_addresses = '127.0.0.1'
max_connections = 300
fsync = off
synchronous_commit = off
full_page_writes = off
shared_buffers = 256MB
max_wal_size = 4GB
checkpoint_timeout = 30min
log_min_messages = warning
";

pub struct Postgres {
    pub proc: Proc,
    pub port: u16,
}

impl Postgres {
    pub async fn start(dir: &Path, cpus: Option<&str>) -> anyhow::Result<Postgres> {
        let bins = throwaway::Bins::find().context("apt-get install postgresql")?;
        let user = throwaway::server_user()?;
        fs::create_dir_all(dir)?;
        throwaway::chown(dir, user.as_ref())?;
        let data = dir.join("data");
        let mut initdb = throwaway::initdb_command(&bins, &data, user.as_ref());
        initdb.arg("--auth=trust");
        throwaway::initdb_result(&initdb.output().context("run initdb")?)?;
        throwaway::append_conf(&data, PG_CONF)?;
        let port = free_port()?;
        let postgres = bins.postgres;
        let proc = Spawn {
            name: "postgres",
            program: &postgres.to_string_lossy(),
            args: vec![
                "-D".into(),
                data.to_string_lossy().into(),
                "-p".into(),
                port.to_string(),
                "-k".into(),
                dir.to_string_lossy().into(),
            ],
            env: vec![],
            log: dir.join("postgres.log"),
            cpus,
            as_user: user.as_ref(),
            cwd: Some(dir),
        }
        .start()
        .await?;
        let pg = Postgres { proc, port };
        let deadline = Instant::now() + Duration::from_secs(60);
        while tokio_postgres::connect(&pg.url("postgres"), tokio_postgres::NoTls).await.is_err() {
            if Instant::now() > deadline {
                bail!("postgres did not start: {}", tail(&pg.proc.log_text(), 3000));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(pg)
    }

    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// CPU ticks of the postmaster and every backend.
    pub fn cpu_ticks(&self) -> u64 {
        let mut pids = vec![self.proc.pid];
        pids.extend(descendants(self.proc.pid).into_iter().map(|(p, _)| p));
        pids.into_iter().filter_map(cpu_ticks).sum()
    }
}

pub fn free_port() -> anyhow::Result<u16> {
    Ok(throwaway::free_port()?)
}

/// When pinned, servers run on this CPU and the load generators (and the orchestrator) on
/// `LOAD_CPU`; PostgreSQL may use both.
pub const SERVER_CPU: usize = 0;
pub const LOAD_CPU: usize = 1;

/// Where throwaway files go: tmpfs when it has room.
pub fn scratch_dir() -> PathBuf {
    let base = if fs::metadata("/dev/shm").is_ok() && shm_free_gib() >= 2 { "/dev/shm" } else { "/tmp" };
    let dir = PathBuf::from(base).join(format!("pgsse-bench-{}", std::process::id()));
    let _ = fs::create_dir_all(&dir);
    use std::os::unix::fs::PermissionsExt;
    let _ = fs::set_permissions(&dir, fs::Permissions::from_mode(0o755));
    dir
}

fn shm_free_gib() -> u64 {
    let out = std::process::Command::new("df").args(["-Pk", "/dev/shm"]).output();
    out.ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).lines().nth(1)?.split_whitespace().nth(3)?.parse::<u64>().ok())
        .map_or(0, |k| k / (1024 * 1024))
}

/// Steers the loopback interface's receive processing (RPS) to other CPUs for as long as it
/// lives, and puts the old setting back when dropped.
///
/// Without it, a loopback packet is received in the sender's own system call: the clients' TCP
/// receive path and their ACKs are charged to the server's core, work that runs on the clients'
/// machines in production. With the servers pinned to CPU 0, steering to CPU 1 puts that work on
/// the load generators' core. Applies to every system alike.
pub struct LoopbackRps {
    path: PathBuf,
    old: String,
}

impl LoopbackRps {
    const PATH: &'static str = "/sys/class/net/lo/queues/rx-0/rps_cpus";

    /// Fails when the setting cannot be written (not root, or a read-only /sys).
    pub fn steer(cpu: usize) -> anyhow::Result<Self> {
        let path = PathBuf::from(Self::PATH);
        let old = fs::read_to_string(&path)?.trim().to_string();
        fs::write(&path, format!("{:x}", 1u64 << cpu))?;
        Ok(Self { path, old })
    }

    /// The setting now in force, e.g. "2" (CPU 1) or "0" (off: received by the sender's CPU).
    pub fn current() -> String {
        fs::read_to_string(Self::PATH).map(|s| s.trim().to_string()).unwrap_or_else(|_| "unknown".into())
    }
}

impl Drop for LoopbackRps {
    fn drop(&mut self) {
        let _ = fs::write(&self.path, &self.old);
    }
}

/// Busy time of one CPU so far, in clock ticks (everything but idle and iowait, from
/// /proc/stat), including interrupt work that no process is charged for.
pub fn cpu_busy_ticks(cpu: usize) -> u64 {
    let stat = fs::read_to_string("/proc/stat").unwrap_or_default();
    let name = format!("cpu{cpu}");
    let Some(line) = stat.lines().find(|l| l.split_whitespace().next() == Some(name.as_str())) else { return 0 };
    let f: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    // user nice system [idle iowait] irq softirq steal; guest time is already inside user.
    [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| f.get(i)).sum()
}
