//! Writers waiting on PostgreSQL's NOTIFY commit lock are seen, and relay mode frees them.
//!
//! PostgreSQL takes one instance-wide lock at the COMMIT of every transaction that called NOTIFY
//! and holds it through the commit's WAL flush and its wait for a synchronous standby. A commit
//! that waits for a standby that never answers (`synchronous_standby_names` naming nobody) holds
//! the lock as long as it likes: every other notifying commit queues behind it, which is what
//! slow flushes do to the app's writers under load, made deterministic. The gateway must show the
//! queue (`pgsse_notify_lock_waiters`) and say in its log how to get out of it; in relay mode a
//! writer must commit while the lock is still held.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::gateway::{metric, JWT_SECRET};
use common::{exec, free_port, wait_until, PgCluster};
use tokio::io::{AsyncBufReadExt, BufReader};

const LIMIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writers_waiting_on_the_notify_lock_are_reported_and_relay_mode_frees_them() {
    let cluster = PgCluster::start();
    let url = cluster.create_database("app");
    common::gateway::install(&url).await;
    exec(&url, "SELECT pgsse.set_notify_mode('commit')").await;

    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgsse"))
        .args(["serve", "--database-url", &url, "--listen", "127.0.0.1:0", "--jwt-secret", JWT_SECRET])
        .args(["--metrics-listen", &metrics_addr, "--log-format", "json"])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn pgsse");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let (warned_tx, warned_rx) = tokio::sync::oneshot::channel::<String>();
    tokio::spawn(async move {
        let mut warned = Some(warned_tx);
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("NOTIFY commit lock") {
                if let Some(tx) = warned.take() {
                    let _ = tx.send(line);
                }
            }
        }
    });
    assert!(
        wait_until(LIMIT, || async { tokio::net::TcpStream::connect(&metrics_addr).await.is_ok() }).await,
        "the gateway's metrics never came up"
    );

    // The relay has finished the switch to commit mode (it writes no more).
    let drained = common::connect(&url).await;
    assert!(
        wait_until(LIMIT, || async {
            drained.query_one("SELECT relay_snapshot IS NULL FROM pgsse.meta", &[]).await.is_ok_and(|r| r.get(0))
        })
        .await,
        "the relay never finished draining after the switch to commit mode"
    );
    // Every commit that writes now waits for a standby that does not exist.
    exec(&url, "ALTER SYSTEM SET synchronous_standby_names = 'pgsse_test_nobody'").await;
    exec(&url, "SELECT pg_reload_conf()").await;
    assert!(
        wait_until(LIMIT, || async {
            let c = common::connect(&url).await;
            c.query_one("SHOW synchronous_standby_names", &[]).await.is_ok_and(|r| !r.get::<_, String>(0).is_empty())
        })
        .await,
        "the server never picked up synchronous_standby_names"
    );
    let insert = |who: &'static str| {
        let url = url.clone();
        tokio::spawn(async move {
            let c = common::connect(&url).await;
            // (The test clusters commit asynchronously by default.)
            c.batch_execute("SET synchronous_commit = on").await?;
            c.execute("INSERT INTO notifications (user_id, title) VALUES ($1, 'stuck')", &[&who]).await
        })
    };
    // The first notifying commit (this writer's, or the gateway's marker's, which NOTIFYs every
    // 250 ms) holds the lock while it waits; the next ones queue on it.
    let holder = insert("alice");
    let probe = common::connect(&url).await;
    assert!(
        wait_until(LIMIT, || async {
            probe
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep' \
                     AND (query LIKE 'INSERT%' OR query LIKE '%pgsse.mark(%')",
                    &[],
                )
                .await
                .is_ok_and(|r| r.get::<_, i64>(0) >= 1)
        })
        .await,
        "no notifying commit ever waited for the missing standby"
    );
    let queued = [insert("bob"), insert("carol")];

    assert!(
        wait_until(LIMIT, || async { metric(&metrics_addr, "pgsse_notify_lock_waiters").await >= 1 }).await,
        "pgsse_notify_lock_waiters never showed the writers queued on the NOTIFY lock"
    );
    let warning = tokio::time::timeout(LIMIT, warned_rx).await.expect("no warning about the NOTIFY lock").unwrap();
    assert!(warning.contains("WARN"), "{warning}");
    assert!(warning.contains("pgsse.set_notify_mode('relay')"), "the warning names the cure: {warning}");

    // Relay mode: a writer no longer NOTIFYs, so it commits past the lock that is still held
    // (it does not wait for the missing standby either: that is its own session's choice).
    let dba = common::connect(&url).await;
    let switched = tokio::time::timeout(
        LIMIT,
        dba.batch_execute("SET synchronous_commit = local; SELECT pgsse.set_notify_mode('relay')"),
    )
    .await;
    assert!(matches!(switched, Ok(Ok(()))), "switching to relay mode: {switched:?}");
    let writer = common::connect(&url).await;
    writer.batch_execute("SET synchronous_commit = local").await.unwrap();
    let committed = tokio::time::timeout(
        LIMIT,
        writer.execute("INSERT INTO notifications (user_id, title) VALUES ('dave', 'free')", &[]),
    )
    .await;
    assert!(matches!(committed, Ok(Ok(1))), "a writer in relay mode waited on the NOTIFY lock: {committed:?}");
    if holder.is_finished() {
        panic!("the lock holder finished early: {:?}", holder.await);
    }

    // Let the stuck commits finish.
    dba.batch_execute("ALTER SYSTEM RESET synchronous_standby_names").await.unwrap();
    dba.batch_execute("SELECT pg_reload_conf()").await.unwrap();
    for w in std::iter::once(holder).chain(queued) {
        let done = tokio::time::timeout(LIMIT, w).await.expect("a writer stayed stuck").unwrap();
        assert_eq!(done.unwrap(), 1);
    }
    let _ = child.kill().await;
}
