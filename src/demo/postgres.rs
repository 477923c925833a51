//! A throwaway PostgreSQL for `pgsse demo`: temp data dir, free port, gone when the demo ends.
//!
//! * The server binaries are looked up on PATH, via `pg_config --bindir`, and where Debian,
//!   Homebrew and Postgres.app put them.
//! * PostgreSQL refuses to run as root, so when the demo runs as root the binaries run as the
//!   `postgres` user (or `nobody`), through std's `CommandExt::uid/gid`.
//! * `postgres` runs under a small `sh` watchdog whose stdin is a pipe from the demo. When the pipe
//!   hits EOF (the demo stopped it, or died in any way, even SIGKILL), the watchdog fast-stops the
//!   server and removes the temp dir. The watchdog has its own process group, so a Ctrl-C in the
//!   terminal reaches only the demo, which drains the gateway first and then stops the server.
//! * Only TCP on 127.0.0.1, with a random password (no unix socket, no trust authentication).

use std::fmt::Write as _;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, ChildStdin, Command};

use super::DemoError;

/// How long the server may take to accept connections.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a fast shutdown may take before the server is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// Attempts at finding a free port (another process may take the one we picked).
const PORT_ATTEMPTS: usize = 5;

/// Settings for a small, disposable server.
const SERVER_SETTINGS: [&str; 7] = [
    "fsync=off",
    "synchronous_commit=off",
    "full_page_writes=off",
    "shared_buffers=32MB",
    "max_connections=50",
    "logging_collector=off",
    "log_min_messages=warning",
];

/// Runs postgres ("$0" "$@") with stdin as a lifeline; see the module docs.
const WATCHDOG: &str = r#"exec 3<&0
"$0" "$@" 3<&- </dev/null &
pid=$!
(
  read _ <&3
  if kill -INT "$pid" 2>/dev/null; then
    i=0
    while kill -0 "$pid" 2>/dev/null && [ "$i" -lt 300 ]; do sleep 0.1; i=$((i+1)); done
    kill -KILL "$pid" 2>/dev/null
    rm -rf "$PGSSE_DEMO_DIR"
  fi
) </dev/null >/dev/null 2>&1 &
exec 3<&-
wait "$pid""#;

/// The server binaries.
#[derive(Debug, Clone)]
pub struct Bins {
    pub initdb: PathBuf,
    pub postgres: PathBuf,
}

/// Where server binaries may be, in order of preference.
fn candidate_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default();
    if let Ok(out) = std::process::Command::new("pg_config").arg("--bindir").stderr(Stdio::null()).output() {
        let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if out.status.success() && !dir.is_empty() {
            dirs.push(PathBuf::from(dir));
        }
    }
    for (parent, prefix) in [
        ("/usr/lib/postgresql", ""),
        ("/opt/homebrew/opt", "postgresql"),
        ("/usr/local/opt", "postgresql"),
        ("/Applications/Postgres.app/Contents/Versions", ""),
    ] {
        let Ok(entries) = std::fs::read_dir(parent) else { continue };
        let mut found: Vec<(Vec<u32>, PathBuf)> = entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.starts_with(prefix).then(|| (version_key(&name), e.path().join("bin")))
            })
            .collect();
        // Newest version first.
        found.sort_by(|a, b| b.0.cmp(&a.0));
        dirs.extend(found.into_iter().map(|(_, d)| d));
    }
    dirs
}

/// The numbers in a name, for sorting versions: "postgresql@16" -> [16], "9.6" -> [9, 6].
fn version_key(name: &str) -> Vec<u32> {
    name.split(|c: char| !c.is_ascii_digit()).filter_map(|s| s.parse().ok()).collect()
}

/// The first directory holding both `initdb` and `postgres` (`pg_ctl` is not needed).
pub fn find_bins(dirs: &[PathBuf]) -> Result<Bins, DemoError> {
    for dir in dirs {
        let (initdb, postgres) = (dir.join("initdb"), dir.join("postgres"));
        if initdb.is_file() && postgres.is_file() {
            // Resolve symlinks so initdb finds its share directory next to the real binary.
            let initdb = std::fs::canonicalize(&initdb).unwrap_or(initdb);
            let postgres = std::fs::canonicalize(&postgres).unwrap_or(postgres);
            return Ok(Bins { initdb, postgres });
        }
    }
    Err(DemoError::PostgresNotFound)
}

/// The user to run the server as when we are root: (uid, gid) of `postgres`, else `nobody`.
fn server_user() -> Result<(u32, u32, String), DemoError> {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let lookup = |name: &str| {
        passwd.lines().find_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            (f.len() >= 4 && f[0] == name).then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?, name.to_string())))?
        })
    };
    lookup("postgres").or_else(|| lookup("nobody")).filter(|(uid, _, _)| *uid != 0).ok_or_else(|| {
        DemoError::Postgres(
            "running as root, and PostgreSQL refuses to run as root, but there is neither a `postgres` nor a \
             `nobody` user to run it as. Run the demo as a normal user, or pass --database-url"
                .into(),
        )
    })
}

/// A running throwaway server. `stop` it; dropping it only closes the lifeline (the watchdog then
/// stops the server and removes the directory on its own).
pub struct LocalPostgres {
    pub port: u16,
    pub password: String,
    pub dir: PathBuf,
    watchdog: Child,
    lifeline: Option<ChildStdin>,
}

/// Removes the temp dir unless disarmed (the watchdog owns it once the server runs).
struct DirGuard(Option<PathBuf>);

impl Drop for DirGuard {
    fn drop(&mut self) {
        if let Some(d) = self.0.take() {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

impl LocalPostgres {
    /// `postgres://postgres:<password>@127.0.0.1:<port>/postgres`
    pub fn url(&self) -> String {
        format!("postgres://postgres:{}@127.0.0.1:{}/postgres", self.password, self.port)
    }

    /// initdb into a fresh temp dir, then start the server on a free port and wait until it
    /// accepts connections. Cancel-safe: dropping the future kills initdb and removes the dir.
    pub async fn start() -> Result<LocalPostgres, DemoError> {
        let bins = find_bins(&candidate_dirs())?;
        let name = format!("pgsse-demo-{}-{:08x}", std::process::id(), rand::random::<u32>());
        let mut dir = std::env::temp_dir().join(&name);
        std::fs::create_dir(&dir).map_err(|e| io_error("creating", &dir, e))?;
        // The owner of what we just created is our effective uid (no libc needed).
        let euid = std::fs::metadata(&dir).map(|m| m.uid());
        let runner = match euid {
            Ok(0) => match server_user() {
                Ok(r) => Some(r),
                Err(e) => {
                    let _ = std::fs::remove_dir(&dir);
                    return Err(e);
                }
            },
            _ => None,
        };
        if runner.is_some() && !dir.parent().is_some_and(world_traversable) {
            // The server user could not reach a dir under e.g. /root/tmp: use /tmp instead.
            let _ = std::fs::remove_dir(&dir);
            dir = Path::new("/tmp").join(&name);
            std::fs::create_dir(&dir).map_err(|e| io_error("creating", &dir, e))?;
        }
        let mut guard = DirGuard(Some(dir.clone()));
        let ids = runner.as_ref().map(|(u, g, _)| (*u, *g));
        if let Some((uid, gid)) = ids {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).map_err(|e| io_error("chown", &dir, e))?;
        }
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| io_error("chmod", &dir, e))?;

        let password = format!("{:032x}", rand::random::<u128>());
        initdb(&bins, &dir, &password, ids).await?;
        let log_path = dir.join("postgres.log");
        let mut last = String::new();
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port()?;
            let (watchdog, lifeline) = spawn(&bins, &dir, &log_path, port, ids)?;
            let mut pg = LocalPostgres { port, password: password.clone(), dir: dir.clone(), watchdog, lifeline };
            match pg.wait_ready(&log_path).await {
                Ok(()) => {
                    guard.0 = None;
                    return Ok(pg);
                }
                Err(Wait::PortTaken(log)) => last = log,
                Err(Wait::Failed(msg)) => {
                    pg.stop().await;
                    return Err(DemoError::Postgres(msg));
                }
            }
        }
        Err(DemoError::Postgres(format!("could not find a free port for PostgreSQL:\n{last}")))
    }

    async fn wait_ready(&mut self, log_path: &Path) -> Result<(), Wait> {
        let cfg = crate::pg::parse_url(&self.url()).map_err(|e| Wait::Failed(e.to_string()))?;
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.watchdog.try_wait() {
                let log = std::fs::read_to_string(log_path).unwrap_or_default();
                if log.contains("could not bind") || log.contains("Address already in use") {
                    return Err(Wait::PortTaken(log_tail(&log)));
                }
                return Err(Wait::Failed(format!(
                    "PostgreSQL exited during startup ({status}); its log:\n{}",
                    log_tail(&log)
                )));
            }
            if crate::pg::demo::ping(&cfg).await.is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let log = std::fs::read_to_string(log_path).unwrap_or_default();
                return Err(Wait::Failed(format!(
                    "PostgreSQL did not accept connections within {STARTUP_TIMEOUT:?}; its log:\n{}",
                    log_tail(&log)
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Fast shutdown, then removes the directory. Returns whether the directory is gone.
    pub async fn stop(&mut self) -> bool {
        // EOF on the lifeline: the watchdog SIGINTs postgres (fast shutdown).
        self.lifeline.take();
        if tokio::time::timeout(STOP_TIMEOUT, self.watchdog.wait()).await.is_err() {
            tracing::warn!("PostgreSQL did not stop within {STOP_TIMEOUT:?}; killing it");
            if let Some(pgid) = self.watchdog.id() {
                // The watchdog leads its own process group: postgres and its helper are in it.
                let _ = Command::new("kill").args(["-KILL", "--", &format!("-{pgid}")]).status().await;
            }
            let _ = self.watchdog.wait().await;
        }
        for _ in 0..50 {
            match std::fs::remove_dir_all(&self.dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    // The watchdog may be removing it at the same time.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                _ => break,
            }
        }
        !self.dir.exists()
    }
}

impl Drop for LocalPostgres {
    fn drop(&mut self) {
        // Not stopped explicitly (an error path): the watchdog stops the server and cleans up.
        self.lifeline.take();
    }
}

enum Wait {
    PortTaken(String),
    Failed(String),
}

fn world_traversable(dir: &Path) -> bool {
    std::fs::metadata(dir).map(|m| m.mode() & 0o001 != 0).unwrap_or(false)
}

fn io_error(what: &str, path: &Path, e: std::io::Error) -> DemoError {
    DemoError::Postgres(format!("{what} {}: {e}", path.display()))
}

fn log_tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// A command for a server binary: as the server user when we are root, with no PG* variables
/// that could point it elsewhere.
fn server_command(program: &Path, ids: Option<(u32, u32)>) -> Command {
    let mut cmd = Command::new(program);
    if let Some((uid, gid)) = ids {
        cmd.uid(uid).gid(gid);
    }
    for var in ["PGDATA", "PGPORT", "PGHOST", "PGUSER", "PGDATABASE", "PGOPTIONS", "PGPASSWORD"] {
        cmd.env_remove(var);
    }
    cmd
}

async fn initdb(bins: &Bins, dir: &Path, password: &str, ids: Option<(u32, u32)>) -> Result<(), DemoError> {
    let pwfile = dir.join("pwfile");
    std::fs::write(&pwfile, format!("{password}\n")).map_err(|e| io_error("writing", &pwfile, e))?;
    if let Some((uid, gid)) = ids {
        std::os::unix::fs::chown(&pwfile, Some(uid), Some(gid)).map_err(|e| io_error("chown", &pwfile, e))?;
    }
    let out = server_command(&bins.initdb, ids)
        .current_dir(dir)
        .arg("-D")
        .arg(dir.join("data"))
        .args(["-U", "postgres", "--auth=scram-sha-256", "--no-sync", "--no-locale", "-E", "UTF8"])
        .arg(format!("--pwfile={}", pwfile.display()))
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| DemoError::Postgres(format!("cannot run {}: {e}", bins.initdb.display())))?;
    let _ = std::fs::remove_file(&pwfile);
    if !out.status.success() {
        let mut msg = format!("initdb failed ({}):\n", out.status);
        let _ = write!(msg, "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        return Err(DemoError::Postgres(msg));
    }
    Ok(())
}

fn spawn(
    bins: &Bins,
    dir: &Path,
    log_path: &Path,
    port: u16,
    ids: Option<(u32, u32)>,
) -> Result<(Child, Option<ChildStdin>), DemoError> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .map_err(|e| io_error("opening", log_path, e))?;
    let log2 = log.try_clone().map_err(|e| io_error("opening", log_path, e))?;
    let mut cmd = server_command(Path::new("/bin/sh"), ids);
    cmd.current_dir(dir)
        .env("PGSSE_DEMO_DIR", dir)
        .arg("-c")
        .arg(WATCHDOG)
        .arg(&bins.postgres)
        .arg("-D")
        .arg(dir.join("data"))
        .args(["-p", &port.to_string(), "-h", "127.0.0.1", "-k", ""]);
    for s in SERVER_SETTINGS {
        cmd.args(["-c", s]);
    }
    cmd.stdin(Stdio::piped()).stdout(log).stderr(log2).process_group(0).kill_on_drop(false);
    let mut child = cmd.spawn().map_err(|e| DemoError::Postgres(format!("cannot start /bin/sh: {e}")))?;
    let lifeline = child.stdin.take();
    Ok((child, lifeline))
}

fn free_port() -> Result<u16, DemoError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| DemoError::Postgres(format!("cannot find a free port: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_binaries_name_the_install_commands() {
        let empty = std::env::temp_dir().join(format!("pgsse-demo-test-{}", std::process::id()));
        let err = find_bins(&[empty]).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("sudo apt-get install postgresql"), "{err}");
        assert!(err.contains("brew install postgresql@16"), "{err}");
        assert!(err.contains("--database-url"), "{err}");
    }

    #[test]
    fn versions_sort_numerically() {
        let mut v = ["9.6", "16", "postgresql@15", "13"].map(version_key).to_vec();
        v.sort();
        assert_eq!(v, [vec![9, 6], vec![13], vec![15], vec![16]]);
    }
}
