//! Throwaway PostgreSQL servers for `pgsse demo`, the benchmark tool and the tests: the server programs, the OS user, a free port, initdb, and a watchdog.
//!
//! * The server programs are looked up on PATH, via `pg_config --bindir`, and where Debian,
//!   Homebrew and Postgres.app put them (newest version first).
//! * PostgreSQL refuses to run as root, so when we are root the programs run as the `postgres`
//!   user (or `nobody`), through std's `CommandExt::uid/gid`.
//! * The server runs under a small `sh` watchdog whose stdin is a pipe from its owner. When the
//!   pipe hits EOF (the owner closed it, or died in any way, even SIGKILL), the watchdog SIGINTs
//!   the server (fast shutdown), SIGKILLs it after a grace period, and may remove a directory.
//!
//! Each user picks its own directory, settings and readiness check. The commands are std's;
//! async users turn them into tokio's (`tokio::process::Command::from`).

use std::ffi::{OsStr, OsString};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// What can go wrong before a throwaway server runs.
#[derive(Debug, thiserror::Error)]
pub enum ThrowawayError {
    #[error(
        "PostgreSQL's server programs (initdb, postgres) were not found on PATH, via `pg_config --bindir`, \
         or in /usr/lib/postgresql/*/bin"
    )]
    NotFound,
    #[error(
        "running as root, and PostgreSQL refuses to run as root, but there is neither a `postgres` nor a \
         `nobody` user to run it as"
    )]
    NoServerUser,
    #[error("{what} {}: {source}", .path.display())]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("initdb failed ({status}):\n{output}")]
    Initdb { status: std::process::ExitStatus, output: String },
}

impl ThrowawayError {
    fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ThrowawayError {
        let path = path.to_path_buf();
        move |source| ThrowawayError::Io { what, path, source }
    }
}

/// The server programs of one installation.
#[derive(Debug, Clone)]
pub struct Bins {
    pub initdb: PathBuf,
    pub postgres: PathBuf,
}

impl Bins {
    /// The first installation in [`candidate_dirs`].
    pub fn find() -> Result<Bins, ThrowawayError> {
        Self::find_in(&candidate_dirs())
    }

    /// The first directory holding both `initdb` and `postgres` (`pg_ctl` is not needed).
    pub fn find_in(dirs: &[PathBuf]) -> Result<Bins, ThrowawayError> {
        for dir in dirs {
            let (initdb, postgres) = (dir.join("initdb"), dir.join("postgres"));
            if initdb.is_file() && postgres.is_file() {
                // Resolve symlinks so initdb finds its share directory next to the real binary.
                let initdb = std::fs::canonicalize(&initdb).unwrap_or(initdb);
                let postgres = std::fs::canonicalize(&postgres).unwrap_or(postgres);
                return Ok(Bins { initdb, postgres });
            }
        }
        Err(ThrowawayError::NotFound)
    }

    /// Another program of the same installation (e.g. `pg_basebackup`), when it is there.
    pub fn program(&self, name: &str) -> Option<PathBuf> {
        let path = self.postgres.with_file_name(name);
        path.is_file().then_some(path)
    }
}

/// Where server programs may be, in order of preference.
pub fn candidate_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default();
    if let Ok(out) = Command::new("pg_config").arg("--bindir").stderr(Stdio::null()).output() {
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

/// The OS user the server programs run as when we are root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

/// Our effective uid: from /proc, else the owner of a file we create (no libc needed).
pub fn effective_uid() -> Option<u32> {
    let from_proc = std::fs::read_to_string("/proc/self/status").ok().and_then(|status| {
        // "Uid: real effective saved fs"
        status.lines().find(|l| l.starts_with("Uid:"))?.split_whitespace().nth(2)?.parse().ok()
    });
    from_proc.or_else(|| {
        let probe = std::env::temp_dir().join(format!(".pgsse-uid-probe-{}", std::process::id()));
        std::fs::write(&probe, b"").ok()?;
        let uid = std::fs::metadata(&probe).map(|m| m.uid()).ok();
        let _ = std::fs::remove_file(&probe);
        uid
    })
}

/// `None` when we are not root; when we are, `postgres`, else `nobody`.
pub fn server_user() -> Result<Option<ServerUser>, ThrowawayError> {
    if effective_uid() != Some(0) {
        return Ok(None);
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let lookup = |name: &str| {
        passwd.lines().find_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() < 4 || f[0] != name {
                return None;
            }
            Some(ServerUser { name: name.to_string(), uid: f[2].parse().ok()?, gid: f[3].parse().ok()? })
        })
    };
    let user = lookup("postgres").or_else(|| lookup("nobody")).filter(|u| u.uid != 0);
    user.map(Some).ok_or(ThrowawayError::NoServerUser)
}

/// Gives `path` to the server user (no-op without one).
pub fn chown(path: &Path, user: Option<&ServerUser>) -> Result<(), ThrowawayError> {
    match user {
        Some(u) => std::os::unix::fs::chown(path, Some(u.uid), Some(u.gid)).map_err(ThrowawayError::io("chown", path)),
        None => Ok(()),
    }
}

/// A command for a server program: as the server user when there is one, with no PG* variables
/// that could point it elsewhere.
pub fn server_command(program: impl AsRef<OsStr>, user: Option<&ServerUser>) -> Command {
    let mut cmd = Command::new(program);
    if let Some(u) = user {
        cmd.uid(u.uid).gid(u.gid);
    }
    for var in ["PGDATA", "PGPORT", "PGHOST", "PGUSER", "PGDATABASE", "PGOPTIONS", "PGPASSWORD"] {
        cmd.env_remove(var);
    }
    cmd
}

/// `initdb -D <data_dir> -U postgres --no-sync --no-locale -E UTF8`, run in the data directory's
/// parent; the caller adds `--auth=...` and whatever else it needs.
pub fn initdb_command(bins: &Bins, data_dir: &Path, user: Option<&ServerUser>) -> Command {
    let mut cmd = server_command(&bins.initdb, user);
    if let Some(parent) = data_dir.parent() {
        cmd.current_dir(parent);
    }
    cmd.arg("-D").arg(data_dir).args(["-U", "postgres", "--no-sync", "--no-locale", "-E", "UTF8"]);
    cmd.stdin(Stdio::null());
    cmd
}

/// The outcome of a finished initdb.
pub fn initdb_result(out: &Output) -> Result<(), ThrowawayError> {
    if out.status.success() {
        return Ok(());
    }
    let output = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    Err(ThrowawayError::Initdb { status: out.status, output })
}

/// Appends settings to `<data_dir>/postgresql.conf` (later settings win).
pub fn append_conf(data_dir: &Path, text: &str) -> Result<(), ThrowawayError> {
    let path = data_dir.join("postgresql.conf");
    let mut conf = std::fs::read_to_string(&path).map_err(ThrowawayError::io("reading", &path))?;
    conf.push('\n');
    conf.push_str(text);
    conf.push('\n');
    std::fs::write(&path, conf).map_err(ThrowawayError::io("writing", &path))
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> std::io::Result<u16> {
    std::net::TcpListener::bind("127.0.0.1:0")?.local_addr().map(|a| a.port())
}

/// The last `lines` lines of a log.
pub fn log_tail(log: &str, lines: usize) -> String {
    let all: Vec<&str> = log.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Runs "$0" "$@" in the background with its output appended to the log, prints its pid, and
/// ties it to stdin. The reader is ended when the program exits on its own (e.g. SIGKILLed), so
/// it never signals a pid that was reused meanwhile; once it has begun stopping the program it
/// ignores that and finishes (the grace period, the removal).
const WATCHDOG: &str = r#"exec 3<&0
"$0" "$@" 3<&- </dev/null >>"$PGSSE_WATCHDOG_LOG" 2>&1 &
pid=$!
echo "$pid"
(
  read _ <&3
  trap '' TERM
  kill -INT "$pid" 2>/dev/null || exit 0
  i=0
  while kill -0 "$pid" 2>/dev/null && [ "$i" -lt "$PGSSE_WATCHDOG_GRACE" ]; do sleep 0.1; i=$((i+1)); done
  kill -KILL "$pid" 2>/dev/null
  [ -z "$PGSSE_WATCHDOG_REMOVE" ] || rm -rf "$PGSSE_WATCHDOG_REMOVE"
) </dev/null >/dev/null 2>&1 &
reader=$!
exec 3<&-
wait "$pid"
status=$?
kill "$reader" 2>/dev/null
exit $status"#;

/// A program (usually `postgres`) that stops when its owner closes the watchdog's stdin or dies.
pub struct Watchdog<'a> {
    pub program: &'a OsStr,
    pub args: Vec<OsString>,
    /// The program's stdout and stderr are appended here.
    pub log: &'a Path,
    /// Between SIGINT and SIGKILL.
    pub grace: Duration,
    /// Removed once the program is gone after a stop (not after it exits on its own).
    pub remove: Option<&'a Path>,
    pub user: Option<&'a ServerUser>,
}

impl Watchdog<'_> {
    /// `sh` running the program; its stdin is the lifeline (piped) and its stdout carries the
    /// program's pid, one line (discarded unless the caller pipes it). The shell exits with the
    /// program's status.
    pub fn command(&self) -> Command {
        let mut cmd = server_command("/bin/sh", self.user);
        let tenths = (self.grace.as_millis() / 100).max(1);
        cmd.arg("-c")
            .arg(WATCHDOG)
            .arg(self.program)
            .args(&self.args)
            .env("PGSSE_WATCHDOG_LOG", self.log)
            .env("PGSSE_WATCHDOG_GRACE", tenths.to_string())
            .env("PGSSE_WATCHDOG_REMOVE", self.remove.map(Path::as_os_str).unwrap_or_default())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        cmd
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_sort_numerically() {
        let mut v = ["9.6", "16", "postgresql@15", "13"].map(version_key).to_vec();
        v.sort();
        assert_eq!(v, [vec![9, 6], vec![13], vec![15], vec![16]]);
    }

    #[test]
    fn no_binaries_in_an_empty_dir() {
        let empty = std::env::temp_dir().join(format!("pgsse-throwaway-test-{}", std::process::id()));
        assert!(matches!(Bins::find_in(&[empty]), Err(ThrowawayError::NotFound)));
    }

    #[test]
    fn the_watchdog_stops_its_program_when_the_lifeline_closes() {
        let log = std::env::temp_dir().join(format!("pgsse-watchdog-test-{}.log", std::process::id()));
        let dog = Watchdog {
            program: OsStr::new("sleep"),
            args: vec!["30".into()],
            log: &log,
            // `sleep` ignores SIGINT (an asynchronous command of a non-interactive shell): the
            // grace period ends it.
            grace: Duration::from_millis(500),
            remove: None,
            user: None,
        };
        let started = std::time::Instant::now();
        let mut child = dog.command().spawn().expect("spawn sh");
        drop(child.stdin.take());
        let status = child.wait().expect("wait for the watchdog");
        let _ = std::fs::remove_file(&log);
        assert!(!status.success(), "sleep was interrupted: {status}");
        assert!(started.elapsed() < Duration::from_secs(10), "stopped well before sleep 30 ended");
    }
}
