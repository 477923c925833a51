//! A throwaway PostgreSQL for `pgsse demo`: temp data dir, free port, gone when the demo ends.
//!
//! * Built on [`crate::pg::throwaway`]: the server programs, the OS user when root, the watchdog.
//! * When the demo stops the server, or dies in any way (even SIGKILL), the watchdog fast-stops
//!   the server and removes the temp dir. The watchdog has its own process group, so a Ctrl-C in
//!   the terminal reaches only the demo, which drains the gateway first and then stops the server.
//! * Only TCP on 127.0.0.1, with a random password (no unix socket, no trust authentication).
//! * With `--state-dir DIR` the cluster lives in `DIR/postgres` instead and is kept: stopping the
//!   demo (or its death) stops the server but removes nothing, and the next start reuses it.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::process::{Child, ChildStdin, Command};

use super::DemoError;
use crate::pg::throwaway::{self, Bins, ServerUser, ThrowawayError, Watchdog};

/// How long the server may take to accept connections.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a fast shutdown may take before the server is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the watchdog gives a server its owner left behind before killing it.
const WATCHDOG_GRACE: Duration = Duration::from_secs(30);
/// Attempts at finding a free port (another process may take the one we picked).
const PORT_ATTEMPTS: usize = 5;
/// How long a kept cluster's previous server (the watchdog of a killed demo stopping it) may take
/// to release the data directory.
const PREVIOUS_SERVER_TIMEOUT: Duration = Duration::from_secs(40);

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

/// The first directory holding the server programs, or what to install.
fn find_bins(dirs: &[PathBuf]) -> Result<Bins, DemoError> {
    Bins::find_in(dirs).map_err(|_| DemoError::PostgresNotFound)
}

fn pg_error(e: ThrowawayError) -> DemoError {
    match e {
        ThrowawayError::NotFound => DemoError::PostgresNotFound,
        ThrowawayError::NoServerUser => {
            DemoError::Postgres(format!("{e}. Run the demo as a normal user, or pass --database-url"))
        }
        other => DemoError::Postgres(other.to_string()),
    }
}

/// A running throwaway server. `stop` it; dropping it only closes the lifeline (the watchdog then
/// stops the server and removes the directory on its own).
pub struct LocalPostgres {
    pub port: u16,
    pub password: String,
    pub dir: PathBuf,
    /// Kept across runs (`--state-dir`): never removed.
    pub kept: bool,
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

    /// initdb into a fresh temp dir (or, given a state dir, into `state/postgres` unless a
    /// cluster is there already), then start the server on a free port and wait until it accepts
    /// connections. Cancel-safe: dropping the future kills initdb and removes a temp dir.
    pub async fn start(state: Option<&Path>) -> Result<LocalPostgres, DemoError> {
        let bins = find_bins(&throwaway::candidate_dirs())?;
        let user = throwaway::server_user().map_err(pg_error)?;
        let (dir, mut guard, password) = match state {
            Some(state) => {
                let (dir, password) = kept_cluster(&bins, state, user.as_ref()).await?;
                (dir, DirGuard(None), password)
            }
            None => {
                let dir = temp_dir(user.as_ref())?;
                let guard = DirGuard(Some(dir.clone()));
                let password = format!("{:032x}", rand::random::<u128>());
                initdb(&bins, &dir, &password, user.as_ref()).await?;
                (dir, guard, password)
            }
        };
        let kept = state.is_some();
        let log_path = dir.join("postgres.log");
        let mut last = String::new();
        for _ in 0..PORT_ATTEMPTS {
            let port =
                throwaway::free_port().map_err(|e| io_error("finding a free port on", Path::new("127.0.0.1"), e))?;
            let (watchdog, lifeline) = spawn(&bins, &dir, &log_path, port, user.as_ref(), kept)?;
            let mut pg = LocalPostgres { port, password: password.clone(), dir: dir.clone(), kept, watchdog, lifeline };
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

    /// Fast shutdown, then removes the directory unless it is kept. Returns whether the
    /// directory is gone (or, kept, whether the server stopped).
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
        if self.kept {
            return !self.dir.join("data/postmaster.pid").exists();
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

/// A fresh private temp dir the server user can reach.
fn temp_dir(user: Option<&ServerUser>) -> Result<PathBuf, DemoError> {
    let name = format!("pgsse-demo-{}-{:08x}", std::process::id(), rand::random::<u32>());
    let mut dir = std::env::temp_dir().join(&name);
    if user.is_some() && !dir.parent().is_some_and(world_traversable) {
        // The server user could not reach a dir under e.g. /root/tmp: use /tmp instead.
        dir = Path::new("/tmp").join(&name);
    }
    std::fs::create_dir(&dir).map_err(|e| io_error("creating", &dir, e))?;
    private_dir(&dir, user)?;
    Ok(dir)
}

fn private_dir(dir: &Path, user: Option<&ServerUser>) -> Result<(), DemoError> {
    throwaway::chown(dir, user).map_err(pg_error)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(|e| io_error("chmod", dir, e))
}

/// `state/postgres`, initialised on first use, with the password kept beside the cluster. When a
/// killed demo's server is still stopping, waits until it released the data directory.
async fn kept_cluster(bins: &Bins, state: &Path, user: Option<&ServerUser>) -> Result<(PathBuf, String), DemoError> {
    let dir = state.join("postgres");
    let pw_path = dir.join("password");
    if dir.join("data/PG_VERSION").exists() {
        let password = std::fs::read_to_string(&pw_path).map_err(|e| io_error("reading", &pw_path, e))?;
        let pid = dir.join("data/postmaster.pid");
        let deadline = Instant::now() + PREVIOUS_SERVER_TIMEOUT;
        while pid.exists() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        return Ok((dir, password.trim().to_string()));
    }
    if user.is_some() {
        // The server user must be able to pass through the state dir to reach its cluster.
        if let Some(closed) = state.ancestors().skip(1).find(|d| !world_traversable(d)) {
            return Err(DemoError::Postgres(format!(
                "PostgreSQL runs as another user here (we are root) and cannot reach {} through {}: \
                 pick a --state-dir under /tmp, or run the demo as a normal user",
                state.display(),
                closed.display()
            )));
        }
        std::fs::set_permissions(state, std::fs::Permissions::from_mode(0o711))
            .map_err(|e| io_error("chmod", state, e))?;
    }
    if dir.exists() {
        // A first run that died before initdb finished: start over.
        std::fs::remove_dir_all(&dir).map_err(|e| io_error("removing", &dir, e))?;
    }
    std::fs::create_dir(&dir).map_err(|e| io_error("creating", &dir, e))?;
    private_dir(&dir, user)?;
    let password = format!("{:032x}", rand::random::<u128>());
    initdb(bins, &dir, &password, user).await?;
    super::write_private(&pw_path, &password)?;
    Ok((dir, password))
}

fn world_traversable(dir: &Path) -> bool {
    std::fs::metadata(dir).map(|m| m.mode() & 0o001 != 0).unwrap_or(false)
}

fn io_error(what: &str, path: &Path, e: std::io::Error) -> DemoError {
    DemoError::Postgres(format!("{what} {}: {e}", path.display()))
}

fn log_tail(log: &str) -> String {
    throwaway::log_tail(log, 20)
}

async fn initdb(bins: &Bins, dir: &Path, password: &str, user: Option<&ServerUser>) -> Result<(), DemoError> {
    let pwfile = dir.join("pwfile");
    std::fs::write(&pwfile, format!("{password}\n")).map_err(|e| io_error("writing", &pwfile, e))?;
    throwaway::chown(&pwfile, user).map_err(pg_error)?;
    let mut cmd = throwaway::initdb_command(bins, &dir.join("data"), user);
    cmd.arg("--auth=scram-sha-256").arg(format!("--pwfile={}", pwfile.display()));
    let out = Command::from(cmd)
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| DemoError::Postgres(format!("cannot run {}: {e}", bins.initdb.display())))?;
    let _ = std::fs::remove_file(&pwfile);
    throwaway::initdb_result(&out).map_err(pg_error)
}

fn spawn(
    bins: &Bins,
    dir: &Path,
    log_path: &Path,
    port: u16,
    user: Option<&ServerUser>,
    kept: bool,
) -> Result<(Child, Option<ChildStdin>), DemoError> {
    let mut args: Vec<std::ffi::OsString> = vec!["-D".into(), dir.join("data").into()];
    for a in ["-p", &port.to_string(), "-h", "127.0.0.1", "-k", ""] {
        args.push(a.into());
    }
    for s in SERVER_SETTINGS {
        args.extend(["-c".into(), s.into()]);
    }
    let dog = Watchdog {
        program: bins.postgres.as_os_str(),
        args,
        log: log_path,
        grace: WATCHDOG_GRACE,
        remove: (!kept).then_some(dir),
        user,
    };
    let mut cmd = dog.command();
    // Its own process group: a Ctrl-C in the terminal reaches only the demo, which stops the server.
    cmd.current_dir(dir).process_group(0);
    let mut child = Command::from(cmd)
        .kill_on_drop(false)
        .spawn()
        .map_err(|e| DemoError::Postgres(format!("cannot start /bin/sh: {e}")))?;
    let lifeline = child.stdin.take();
    Ok((child, lifeline))
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
}
