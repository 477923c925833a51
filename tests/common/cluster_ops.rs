//! What production databases go through, for tests of the gateway's positions: a crash (the
//! postmaster and every backend SIGKILLed, no shutdown checkpoint, crash recovery on the next
//! start) and a failover to a streaming standby that is behind (the database goes back in time).
//!
//! A standby is a `PgCluster` like any other (same watchdog, same cleanup); `standby()` makes
//! one with `pg_basebackup -R -X stream`.

use std::fs;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::pg::{append_conf, block_on_thread, new_cluster_dir, parent_pid, pg_program, server_command};
use super::PgCluster;

const CRASH_TIMEOUT: Duration = Duration::from_secs(30);
const REPLICATION_TIMEOUT: Duration = Duration::from_secs(60);

/// Settings for a cluster whose crash behaves like production's: every commit that asks for it
/// is flushed (fsync, synchronous commit), and the WAL writer flushes the rest only every 10 s,
/// so what was not flushed is reliably lost by `crash()`.
pub const DURABLE_CONF: &str = "fsync = on
synchronous_commit = on
full_page_writes = on
wal_writer_delay = 10s
wal_level = replica
max_wal_senders = 5
hot_standby = on";

impl PgCluster {
    /// SIGKILLs the postmaster and all its processes at once (like a power cut, except that
    /// what was written to the OS survives: unflushed WAL in shared memory is lost), and returns
    /// once they are all gone. `postmaster.pid` stays behind, as after a real crash;
    /// `start_again()` then runs crash recovery.
    #[track_caller]
    pub fn crash(&self) {
        let server = self.server.lock().unwrap_or_else(|e| e.into_inner()).take();
        let mut server = server.expect("crash(): the cluster is not running");
        let pid = self.postmaster_pid().expect("crash(): no postmaster.pid");
        // List the children while they are still the postmaster's, then kill them all at once.
        let mut victims = children_of(&pid);
        victims.insert(0, pid.clone());
        let shm = shared_memory_of(&victims, &self.data_dir().join("postmaster.pid"));
        let status = Command::new("kill").arg("-KILL").args(&victims).stderr(Stdio::null()).status();
        assert!(status.is_ok(), "crash(): could not run kill: {status:?}");
        let deadline = Instant::now() + CRASH_TIMEOUT;
        // The watchdog exits with the postmaster (and ends its stdin reader first).
        loop {
            match server.watchdog.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
                other => panic!("crash(): the watchdog of postmaster {pid} did not exit: {other:?}"),
            }
        }
        drop(server.watchdog.stdin.take());
        // Gone, or a zombie nobody reaps: either way it holds no shared memory any more.
        while let Some(alive) = victims.iter().find(|p| is_alive(p)) {
            assert!(Instant::now() < deadline, "crash(): process {alive} of postmaster {pid} survived SIGKILL");
            std::thread::sleep(Duration::from_millis(10));
        }
        // What a reboot would clear. A later start of this cluster would remove it too, but one
        // that is never started again (a failed-over primary) would leave it behind.
        shm.remove();
    }

    /// A hot standby of this cluster: `pg_basebackup -R -X stream` into a new data directory
    /// (with `conf` appended to the copied postgresql.conf), started on another free port;
    /// returns once it accepts (read-only) connections and streams from this cluster.
    #[track_caller]
    pub fn standby(&self, conf: &str) -> PgCluster {
        let (dir, data_dir) = new_cluster_dir();
        let out = server_command(&pg_program("pg_basebackup"))
            .current_dir(&dir)
            .arg("-D")
            .arg(&data_dir)
            .args(["-R", "-X", "stream", "--checkpoint=fast", "--no-sync", "-h", &self.host])
            .args(["-p", &self.port.to_string(), "-U", &self.superuser])
            .stdin(Stdio::null())
            .output()
            .expect("run pg_basebackup");
        assert!(
            out.status.success(),
            "pg_basebackup from port {} failed ({}):\n{}{}",
            self.port,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        append_conf(&data_dir, &format!("hot_standby = on\n{conf}"));
        let standby = PgCluster::launch(dir, data_dir);
        let url = standby.url("postgres");
        let streaming = block_on_thread(async move {
            super::wait_until(REPLICATION_TIMEOUT, || {
                let url = url.clone();
                async move {
                    query_text(&url, "SELECT status FROM pg_stat_wal_receiver").await.as_deref() == Some("streaming")
                }
            })
            .await
        });
        assert!(
            streaming,
            "the standby on port {} never streamed from port {}:\n{}",
            standby.port,
            self.port,
            standby.log()
        );
        standby
    }

    /// On a standby: stops receiving WAL (clears `primary_conninfo`), so whatever the primary
    /// commits from now on is not here when this standby is promoted. Returns once the WAL
    /// receiver is gone.
    ///
    /// (`pg_wal_replay_pause()` is not enough: promotion ends the pause and replays all the WAL
    /// that was received before it finishes.)
    #[track_caller]
    pub fn detach_from_primary(&self) {
        let url = self.url("postgres");
        let gone = block_on_thread(async move {
            // Separately: ALTER SYSTEM cannot run in the implicit transaction of a batch.
            super::exec(&url, "ALTER SYSTEM SET primary_conninfo = ''").await;
            super::exec(&url, "SELECT pg_reload_conf()").await;
            super::wait_until(REPLICATION_TIMEOUT, || {
                let url = url.clone();
                async move {
                    query_text(&url, "SELECT count(*)::text FROM pg_stat_wal_receiver").await.as_deref() == Some("0")
                }
            })
            .await
        });
        assert!(gone, "the standby on port {} kept its WAL receiver:\n{}", self.port, self.log());
    }

    /// On a standby: promotes it (`pg_promote`, a new timeline) and returns once it accepts
    /// writes.
    #[track_caller]
    pub fn promote(&self) {
        let url = self.url("postgres");
        let promoted = block_on_thread(async move {
            let done = query_text(&url, "SELECT pg_promote(true, 60)::text").await;
            done.as_deref() == Some("true")
                && query_text(&url, "SELECT pg_is_in_recovery()::text").await.as_deref() == Some("false")
        });
        assert!(promoted, "the standby on port {} was not promoted:\n{}", self.port, self.log());
    }
}

/// Shared memory a crashed postmaster leaves behind: its dynamic segments in /dev/shm and its
/// System V segment.
struct LeftoverShm {
    files: Vec<String>,
    sysv_id: Option<String>,
}

impl LeftoverShm {
    fn remove(self) {
        for f in &self.files {
            let _ = fs::remove_file(f);
        }
        if let Some(id) = self.sysv_id {
            let _ = Command::new("ipcrm").args(["-m", &id]).stderr(Stdio::null()).status();
        }
    }
}

/// The /dev/shm segments mapped by `pids`, and the System V segment named in `pid_file`
/// (its 7th line: "key id").
fn shared_memory_of(pids: &[String], pid_file: &std::path::Path) -> LeftoverShm {
    let mut files: Vec<String> = pids
        .iter()
        .filter_map(|p| fs::read_to_string(format!("/proc/{p}/maps")).ok())
        .flat_map(|maps| {
            maps.lines()
                .filter_map(|l| l.split_whitespace().nth(5))
                .filter(|path| path.starts_with("/dev/shm/PostgreSQL."))
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect();
    files.sort();
    files.dedup();
    let sysv_id = fs::read_to_string(pid_file)
        .ok()
        .and_then(|s| s.lines().nth(6).and_then(|l| l.split_whitespace().nth(1)).map(str::to_string))
        .filter(|id| id.bytes().all(|b| b.is_ascii_digit()));
    LeftoverShm { files, sysv_id }
}

/// The first column of the first row, as text; `None` on any error or no row.
async fn query_text(url: &str, sql: &str) -> Option<String> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.ok()?;
    let driver = tokio::spawn(conn);
    let row = client.query_opt(sql, &[]).await.ok().flatten();
    driver.abort();
    row?.try_get::<_, Option<String>>(0).ok().flatten()
}

/// The pids of the processes whose parent is `pid`.
fn children_of(pid: &str) -> Vec<String> {
    let parent: Option<u32> = pid.parse().ok();
    let Ok(entries) = fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| name.bytes().all(|b| b.is_ascii_digit()))
        .filter(|name| parent.is_some() && parent_pid(name) == parent)
        .collect()
}

/// Whether `pid` exists and is not a zombie.
fn is_alive(pid: &str) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()) != Some("Z"),
        Err(_) => false,
    }
}
