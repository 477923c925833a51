//! Child processes under a watchdog (they stop when the orchestrator dies, even by SIGKILL),
//! /proc readings (RSS, CPU ticks, children) and a throwaway PostgreSQL cluster.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// `sh` runs the program in the background with output to `$BENCH_LOG`, prints its pid, and
/// SIGINTs it (SIGKILL 5 s later) when our end of its stdin pipe closes.
const WATCHDOG: &str = r#"exec 3<&0
"$0" "$@" 3<&- </dev/null >>"$BENCH_LOG" 2>&1 &
pid=$!
echo $pid
( read _ <&3; kill -INT $pid 2>/dev/null; sleep 5; kill -KILL $pid 2>/dev/null ) >/dev/null 2>&1 &
wait $pid"#;

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
    pub as_user: Option<(u32, u32)>,
    pub cwd: Option<&'a Path>,
}

impl Spawn<'_> {
    pub async fn start(self) -> anyhow::Result<Proc> {
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c").arg(WATCHDOG);
        if let Some(c) = self.cpus {
            cmd.args(["taskset", "-c", c]);
        }
        cmd.arg(self.program).args(&self.args).env("BENCH_LOG", &self.log);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        if let Some((uid, gid)) = self.as_user {
            cmd.as_std_mut().uid(uid).gid(gid);
        }
        if let Some(d) = self.cwd {
            cmd.current_dir(d);
        }
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::null()).kill_on_drop(true);
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

/// The (uid, gid) PostgreSQL runs as when we are root.
pub fn server_user() -> Option<(u32, u32)> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let euid: u32 = status.lines().find(|l| l.starts_with("Uid:"))?.split_whitespace().nth(2)?.parse().ok()?;
    if euid != 0 {
        return None;
    }
    let passwd = fs::read_to_string("/etc/passwd").ok()?;
    ["postgres", "nobody"].iter().find_map(|name| {
        passwd.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() > 3 && f[0] == *name).then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
        })
    })
}

fn pg_bindir() -> anyhow::Result<PathBuf> {
    let mut dirs: Vec<PathBuf> =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default();
    if let Ok(o) = std::process::Command::new("pg_config").arg("--bindir").output() {
        dirs.push(PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    }
    let mut versions: Vec<PathBuf> =
        fs::read_dir("/usr/lib/postgresql").into_iter().flatten().flatten().map(|e| e.path().join("bin")).collect();
    versions.sort();
    dirs.extend(versions.into_iter().rev());
    dirs.into_iter()
        .find(|d| d.join("initdb").is_file() && d.join("postgres").is_file())
        .map(|d| fs::canonicalize(&d).unwrap_or(d))
        .context("PostgreSQL server binaries (initdb, postgres) not found: apt-get install postgresql")
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
        let bin = pg_bindir()?;
        let user = server_user();
        fs::create_dir_all(dir)?;
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(dir, Some(uid), Some(gid))?;
        }
        let data = dir.join("data");
        let mut initdb = std::process::Command::new(bin.join("initdb"));
        initdb.arg("-D").arg(&data).args(["-U", "postgres", "--auth=trust", "--no-sync", "--no-locale", "-E", "UTF8"]);
        if let Some((uid, gid)) = user {
            initdb.uid(uid).gid(gid);
        }
        let out = initdb.current_dir(dir).stdin(Stdio::null()).output().context("run initdb")?;
        if !out.status.success() {
            bail!("initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let conf = data.join("postgresql.conf");
        let mut text = fs::read_to_string(&conf)?;
        text.push_str(PG_CONF);
        fs::write(&conf, text)?;
        let port = free_port()?;
        let postgres = bin.join("postgres");
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
            as_user: user,
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
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
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
