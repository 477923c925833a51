//! Private PostgreSQL clusters for integration tests.
//!
//! * `initdb` runs once per test process into a template directory; every
//!   cluster is a `cp -a` of that template, so a cluster starts in a fraction
//!   of a second.
//! * The server programs, the OS user when root (Postgres refuses to run as
//!   root) and the watchdog are `pgsse::pg::throwaway`'s, as for `pgsse demo`.
//! * Every `postgres` process runs under that watchdog, whose stdin is a pipe
//!   from the test process: when the test process exits for any reason (even
//!   SIGKILL) the pipe hits EOF and the watchdog fast-stops postgres. A
//!   process-wide janitor removes the temp directory the same way.
//! * Crashes (SIGKILL) and standbys (`pg_basebackup`) are in `cluster_ops.rs`.

use std::ffi::OsString;
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pgsse::pg::throwaway::{self, Bins, ServerUser, Watchdog};
use tokio_postgres::NoTls;

const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(60);

/// Settings appended to the template's postgresql.conf.
const CONF: &str = "
# --- pgsse test harness ---
listen_addresses = '127.0.0.1'
max_connections = 200
fsync = off
synchronous_commit = off
full_page_writes = off
shared_buffers = 16MB
max_wal_size = 1GB
log_min_messages = warning
log_connections = off
log_disconnections = off
logging_collector = off
";

// ---------------------------------------------------------------------------
// Environment discovery (pgsse::pg::throwaway, once per test process)
// ---------------------------------------------------------------------------

/// A PostgreSQL client or server program (e.g. "pg_basebackup") of the same installation as
/// the server the clusters run.
pub(super) fn pg_program(name: &str) -> PathBuf {
    let bins = pg_bins();
    bins.program(name).unwrap_or_else(|| panic!("{name} not found next to {}", bins.postgres.display()))
}

fn pg_bins() -> &'static Bins {
    static BINS: OnceLock<Bins> = OnceLock::new();
    BINS.get_or_init(|| {
        Bins::find().unwrap_or_else(|e| {
            panic!(
                "{e}. Install the PostgreSQL server (e.g. `apt-get install postgresql`) to run the \
                 integration tests."
            )
        })
    })
}

/// The user to run the server programs as; `None` = the current user.
fn run_as() -> Option<&'static ServerUser> {
    static RUN_AS: OnceLock<Option<ServerUser>> = OnceLock::new();
    RUN_AS.get_or_init(|| throwaway::server_user().unwrap_or_else(|e| panic!("{e}"))).as_ref()
}

fn chown_to_runner(path: &Path) {
    throwaway::chown(path, run_as()).unwrap_or_else(|e| panic!("{e}"));
}

/// A `Command` that runs as the server user.
pub(super) fn server_command(program: &Path) -> Command {
    throwaway::server_command(program, run_as())
}

// ---------------------------------------------------------------------------
// Per-process temp root (with janitor) and template
// ---------------------------------------------------------------------------

struct Root {
    dir: PathBuf,
    // Holding the child keeps its stdin pipe open until this process exits.
    _janitor: Mutex<Child>,
}

fn root_dir() -> &'static Path {
    static ROOT: OnceLock<Root> = OnceLock::new();
    &ROOT
        .get_or_init(|| {
            let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
            let name = format!("pgsse-{}-{:x}", std::process::id(), nanos);
            // Prefer tmpfs: copying a data directory there takes ~50 ms instead
            // of ~1 s on disk. PGSSE_TEST_TMPDIR overrides.
            let mut bases: Vec<PathBuf> = Vec::new();
            if let Some(d) = std::env::var_os("PGSSE_TEST_TMPDIR") {
                bases.push(PathBuf::from(d));
            }
            if free_kib(Path::new("/dev/shm")).unwrap_or(0) >= 2 * 1024 * 1024 {
                // Only when it has room (Docker's default /dev/shm is 64 MiB).
                bases.push(PathBuf::from("/dev/shm"));
            }
            let tmp = std::env::temp_dir();
            // Unix socket paths are limited to ~107 bytes.
            if tmp.as_os_str().len() <= 40 {
                bases.push(tmp);
            }
            bases.push(PathBuf::from("/tmp"));
            let dir = bases
                .iter()
                .map(|b| b.join(&name))
                .find(|d| d.parent().is_some_and(Path::is_dir) && fs::create_dir(d).is_ok())
                .unwrap_or_else(|| panic!("cannot create a temp dir {name} in any of {bases:?}"));
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).ok();
            // Janitor: when this process dies, wait (bounded) for the clusters'
            // watchdogs to stop postgres, then remove the whole directory.
            let janitor = Command::new("sh")
                .arg("-c")
                .arg(
                    r#"read _ ; i=0
while [ $i -lt 300 ] && ls "$1"/*/data/postmaster.pid >/dev/null 2>&1; do sleep 0.1; i=$((i+1)); done
rm -rf "$1""#,
                )
                .arg("pgsse-janitor")
                .arg(&dir)
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn cleanup janitor (sh)");
            Root { dir, _janitor: Mutex::new(janitor) }
        })
        .dir
}

/// Free space of the filesystem holding `dir`, in KiB (via `df`).
fn free_kib(dir: &Path) -> Option<u64> {
    let out = Command::new("df").arg("-Pk").arg(dir).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().nth(1)?.split_whitespace().nth(3)?.parse().ok()
}

fn template_data_dir() -> &'static Path {
    static TEMPLATE: OnceLock<PathBuf> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        let bins = pg_bins();
        let dir = root_dir().join("template");
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create template dir");
        chown_to_runner(&dir);
        let data = dir.join("data");
        let out = throwaway::initdb_command(bins, &data, run_as())
            .args(["--auth=trust", "--no-instructions", "--wal-segsize=1"])
            .output()
            .unwrap_or_else(|e| panic!("failed to run {}: {e}", bins.initdb.display()));
        throwaway::initdb_result(&out).unwrap_or_else(|e| panic!("{e}"));
        throwaway::append_conf(&data, CONF).unwrap_or_else(|e| panic!("{e}"));
        // initdb --auth=trust already trusts local and host connections; make
        // it explicit (and cover every address) regardless of the version.
        // `all` does not match replication connections (pg_basebackup, standbys): name them.
        fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\nhost all all 127.0.0.1/32 trust\nhost all all ::1/128 trust\n\
             local replication all trust\nhost replication all 127.0.0.1/32 trust\n",
        )
        .expect("write pg_hba.conf");
        data
    })
}

// ---------------------------------------------------------------------------
// PgCluster
// ---------------------------------------------------------------------------

/// A running postgres under its watchdog shell.
pub(super) struct Server {
    pub(super) watchdog: Child,
}

pub struct PgCluster {
    pub port: u16,
    pub host: String,
    pub superuser: String,
    dir: PathBuf,
    data_dir: PathBuf,
    log_file: PathBuf,
    pub(super) server: Mutex<Option<Server>>,
}

/// Outcome of one attempt to start postgres.
enum StartError {
    PortInUse(String),
    Other(String),
}

impl PgCluster {
    /// A private cluster: temp data dir, free TCP port on 127.0.0.1, unix
    /// socket in the temp dir, fsync=off, trust auth, max_connections=200.
    #[track_caller]
    pub fn start() -> PgCluster {
        Self::start_with("")
    }

    /// Like `start`, with `conf` appended to postgresql.conf (later settings win), e.g.
    /// "fsync = on\nsynchronous_commit = on" for a cluster whose crashes behave like production's.
    #[track_caller]
    pub fn start_with(conf: &str) -> PgCluster {
        let template = template_data_dir();
        let (dir, data_dir) = new_cluster_dir();
        let out = Command::new("cp").arg("-a").arg(template).arg(&data_dir).output().expect("run cp -a");
        assert!(
            out.status.success(),
            "cp -a {} {} failed: {}",
            template.display(),
            data_dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        append_conf(&data_dir, conf);
        Self::launch(dir, data_dir)
    }

    /// Starts postgres on `data_dir` (inside `dir`) on a free port, retrying on another port
    /// when the chosen one was taken meanwhile.
    #[track_caller]
    pub(super) fn launch(dir: PathBuf, data_dir: PathBuf) -> PgCluster {
        let log_file = dir.join("postgres.log");
        let mut last_err = String::new();
        for _attempt in 0..10 {
            let cluster = PgCluster {
                port: free_port(),
                host: "127.0.0.1".to_string(),
                superuser: "postgres".to_string(),
                dir: dir.clone(),
                data_dir: data_dir.clone(),
                log_file: log_file.clone(),
                server: Mutex::new(None),
            };
            match cluster.try_start() {
                Ok(()) => return cluster,
                Err(StartError::PortInUse(msg)) => {
                    last_err = msg;
                    // Don't let Drop remove the directory; retry on a new port.
                    std::mem::forget(cluster);
                }
                Err(StartError::Other(msg)) => {
                    std::mem::forget(cluster);
                    panic!("{msg}");
                }
            }
        }
        panic!("could not find a free port for PostgreSQL after 10 attempts:\n{last_err}");
    }

    /// "postgres://postgres@127.0.0.1:PORT/db"
    pub fn url(&self, db: &str) -> String {
        format!("postgres://{}@{}:{}/{}", self.superuser, self.host, self.port, db)
    }

    /// The directory holding the unix socket (`.s.PGSQL.<port>`).
    pub fn socket_dir(&self) -> &Path {
        &self.dir
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The server's log so far (for diagnostics).
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_file).unwrap_or_default()
    }

    /// Whether the postmaster is currently running (started by this handle).
    pub fn is_running(&self) -> bool {
        let mut guard = self.server.lock().unwrap_or_else(|e| e.into_inner());
        match guard.as_mut() {
            Some(s) => matches!(s.watchdog.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Fast shutdown (SIGINT to the postmaster); returns once it is down.
    /// A no-op if the server isn't running.
    pub fn stop(&self) {
        let server = self.server.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some(mut server) = server else { return };
        // Closing the watchdog's stdin makes it SIGINT postgres and wait for it.
        drop(server.watchdog.stdin.take());
        let deadline = Instant::now() + SHUTDOWN_TIMEOUT;
        loop {
            match server.watchdog.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
                _ => {
                    // Postgres didn't stop in time: immediate shutdown, then kill.
                    if let Some(pid) = self.postmaster_pid() {
                        let _ = Command::new("kill").args(["-QUIT", &pid]).status();
                        std::thread::sleep(Duration::from_secs(1));
                        let _ = Command::new("kill").args(["-KILL", &pid]).status();
                    }
                    let _ = server.watchdog.kill();
                    let _ = server.watchdog.wait();
                    break;
                }
            }
        }
    }

    /// Start the server again on the same port and data dir; returns once it
    /// accepts connections.
    #[track_caller]
    pub fn start_again(&self) {
        if self.is_running() {
            return;
        }
        match self.try_start() {
            Ok(()) => {}
            Err(StartError::PortInUse(msg)) | Err(StartError::Other(msg)) => panic!("{msg}"),
        }
    }

    /// stop + start_again.
    #[track_caller]
    pub fn restart(&self) {
        self.stop();
        self.start_again();
    }

    /// Terminates every other client backend connected to `db` (simulates
    /// dropped connections) and waits until they're gone.
    pub fn kill_connections(&self, db: &str) {
        let url = self.url("postgres");
        let sql = format!(
            "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity \
             WHERE datname = {} AND pid <> pg_backend_pid() AND backend_type = 'client backend'",
            quote_literal(db)
        );
        block_on_thread(async move { exec(&url, &sql).await });
    }

    /// CREATE DATABASE `name`; returns its url.
    pub fn create_database(&self, name: &str) -> String {
        let url = self.url("postgres");
        let sql = format!("CREATE DATABASE {}", quote_ident(name));
        block_on_thread(async move {
            // Concurrent CREATE DATABASE from template1 can transiently fail
            // with "source database is being accessed by other users".
            let mut attempt = 0;
            loop {
                let client = connect(&url).await;
                match client.batch_execute(&sql).await {
                    Ok(()) => break,
                    Err(e) if attempt < 50 && describe_pg_error(&e).contains("being accessed") => {
                        attempt += 1;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(e) => panic!("{sql}: {}", describe_pg_error(&e)),
                }
            }
        });
        self.url(name)
    }

    /// CREATE ROLE `name` LOGIN (no password; trust auth).
    pub fn create_role(&self, name: &str, superuser: bool) {
        let url = self.url("postgres");
        let sql =
            format!("CREATE ROLE {} LOGIN {}", quote_ident(name), if superuser { "SUPERUSER" } else { "NOSUPERUSER" });
        block_on_thread(async move { exec(&url, &sql).await });
    }

    pub(super) fn postmaster_pid(&self) -> Option<String> {
        let s = fs::read_to_string(self.data_dir.join("postmaster.pid")).ok()?;
        s.lines().next().map(|l| l.trim().to_string())
    }

    fn log_tail(&self) -> String {
        let mut f = match fs::File::open(&self.log_file) {
            Ok(f) => f,
            Err(e) => return format!("(no log file {}: {e})", self.log_file.display()),
        };
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let start = len.saturating_sub(16 * 1024);
        let _ = f.seek(SeekFrom::Start(start));
        let mut buf = Vec::new();
        let _ = f.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    }

    fn try_start(&self) -> Result<(), StartError> {
        let bins = pg_bins();
        let log_offset = fs::metadata(&self.log_file).map(|m| m.len()).unwrap_or(0);
        // The watchdog SIGINTs (fast shutdown) postgres when its stdin hits EOF (stop(), or the
        // test process died); the shell exits as soon as postgres exits, so startup failures
        // show. Once postgres is gone (e.g. SIGKILLed by `crash()`), it signals nothing any more.
        let args: Vec<OsString> = vec![
            "-D".into(),
            self.data_dir.clone().into(),
            "-p".into(),
            self.port.to_string().into(),
            "-k".into(),
            self.dir.clone().into(),
            "-h".into(),
            "127.0.0.1".into(),
        ];
        let dog = Watchdog {
            program: bins.postgres.as_os_str(),
            args,
            log: &self.log_file,
            grace: SHUTDOWN_TIMEOUT,
            remove: None,
            user: run_as(),
        };
        let mut cmd = dog.command();
        cmd.current_dir(&self.dir);
        let watchdog = cmd.spawn().unwrap_or_else(|e| panic!("spawn postgres watchdog: {e}"));
        let watchdog_pid = Some(watchdog.id());
        *self.server.lock().unwrap_or_else(|e| e.into_inner()) = Some(Server { watchdog });

        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let addr: SocketAddr = ([127, 0, 0, 1], self.port).into();
        let pid_file = self.data_dir.join("postmaster.pid");
        loop {
            let exited = {
                let mut guard = self.server.lock().unwrap_or_else(|e| e.into_inner());
                let server = guard.as_mut().expect("server handle");
                match server.watchdog.try_wait() {
                    Ok(Some(status)) => {
                        guard.take();
                        Some(status.to_string())
                    }
                    Ok(None) => None,
                    Err(e) => Some(format!("wait error: {e}")),
                }
            };
            if let Some(status) = exited {
                let new_log = fs::read(&self.log_file)
                    .map(|b| String::from_utf8_lossy(&b[(log_offset as usize).min(b.len())..]).into_owned())
                    .unwrap_or_default();
                let msg = format!(
                    "PostgreSQL failed to start (port {}, data dir {}), watchdog exited: {status}\n\
                     --- postgres log ({}) ---\n{}",
                    self.port,
                    self.data_dir.display(),
                    self.log_file.display(),
                    self.log_tail()
                );
                if new_log.contains("could not bind")
                    || new_log.contains("Address already in use")
                    || new_log.contains("could not create any TCP/IP sockets")
                {
                    return Err(StartError::PortInUse(msg));
                }
                return Err(StartError::Other(msg));
            }
            // "ready" (or "standby": a hot standby accepting read-only connections), written by
            // this postmaster, not one left behind by a crashed predecessor.
            let ready = fs::read_to_string(&pid_file).is_ok_and(|s| {
                let lines: Vec<&str> = s.lines().collect();
                let status = lines.get(7).map(|l| l.trim());
                let ours = lines.first().and_then(|pid| parent_pid(pid.trim())) == watchdog_pid;
                ours && matches!(status, Some("ready" | "standby"))
            });
            if ready && TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.stop();
                return Err(StartError::Other(format!(
                    "PostgreSQL did not become ready within {:?} (port {}, data dir {})\n\
                     --- postgres log ({}) ---\n{}",
                    STARTUP_TIMEOUT,
                    self.port,
                    self.data_dir.display(),
                    self.log_file.display(),
                    self.log_tail()
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// A new, empty cluster directory (owned by the server user); returns it and the data
/// directory inside it (not created).
pub(super) fn new_cluster_dir() -> (PathBuf, PathBuf) {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let dir = root_dir().join(format!("c{n}"));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    chown_to_runner(&dir);
    let data_dir = dir.join("data");
    (dir, data_dir)
}

/// Appends settings to `data_dir`/postgresql.conf.
pub(super) fn append_conf(data_dir: &Path, conf: &str) {
    if conf.trim().is_empty() {
        return;
    }
    throwaway::append_conf(data_dir, &format!("# --- added by the test ---\n{conf}")).unwrap_or_else(|e| panic!("{e}"));
}

/// The parent of process `pid` (from /proc), `None` if there is no such process.
pub(super) fn parent_pid(pid: &str) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
    stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        self.stop();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

// ---------------------------------------------------------------------------
// Shared cluster
// ---------------------------------------------------------------------------

/// One cluster per test process, shared by tests that don't restart Postgres.
/// Never dropped: the watchdog stops it when the test process exits.
pub fn shared_cluster() -> &'static PgCluster {
    static SHARED: OnceLock<PgCluster> = OnceLock::new();
    SHARED.get_or_init(PgCluster::start)
}

/// CREATE DATABASE t_<unique> on the shared cluster; returns its url.
pub fn fresh_database() -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    shared_cluster().create_database(&format!("t_{}_{n}", std::process::id()))
}

// ---------------------------------------------------------------------------
// SQL helpers
// ---------------------------------------------------------------------------

/// Runs SQL (simple query protocol, several statements allowed); panics with
/// the server's message on error.
pub async fn exec(url: &str, sql: &str) {
    let client = connect(url).await;
    if let Err(e) = client.batch_execute(sql).await {
        panic!("SQL failed on {url}: {}\n--- SQL ---\n{sql}", describe_pg_error(&e));
    }
}

/// Connects with tokio-postgres and spawns the connection task.
pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {}", describe_pg_error(&e)));
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

pub use pgsse::pg::describe as describe_pg_error;

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Runs a future to completion on a fresh runtime in a new thread, so sync
/// helpers work both inside and outside a tokio runtime.
pub(super) fn block_on_thread<F>(fut: F) -> F::Output
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handle = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("build tokio runtime").block_on(fut)
    });
    match handle.join() {
        Ok(v) => v,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    throwaway::free_port().expect("bind 127.0.0.1:0 to find a free port")
}
