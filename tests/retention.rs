//! Retention under the privileges the README documents: the gateway's role is no superuser, and
//! what it cannot prune shows in `/readyz` and the metrics, not only in the logs.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::gateway::{notifications_db, readyz, request, Gateway};
use common::sql::url_as;
use common::{connect, exec, free_port, insert_rows, shared_cluster};
use pgsse::pg::retention::{prune_batch, Batch, LOCK_KEY};

/// The grants README.md and the header of sql/install.sql give the gateway's role.
const DOCUMENTED_GRANTS: &str = "GRANT USAGE ON SCHEMA pgsse TO {role};
     GRANT SELECT, DELETE ON pgsse.events TO {role};
     GRANT SELECT, UPDATE ON pgsse.meta TO {role};
     GRANT SELECT ON pgsse.secret TO {role};";

#[test]
fn the_tested_grants_are_the_documented_ones() {
    let grants = DOCUMENTED_GRANTS.replace("{role}", "pgsse_gateway");
    for grant in grants.lines().map(str::trim) {
        assert!(include_str!("../README.md").contains(grant), "README.md lacks {grant:?}");
        assert!(include_str!("../sql/install.sql").contains(&format!("-- {grant}")), "install.sql lacks {grant:?}");
    }
}

const T: Duration = Duration::from_secs(30);

/// A fresh NOSUPERUSER login role (roles are cluster-wide, so the name is unique per test).
fn new_role(tag: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    let name = format!("gw_{tag}_{}_{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst));
    shared_cluster().create_role(&name, false);
    name
}

/// The ERROR lines of the cluster's log, to say why a test's SQL failed.
fn pg_errors() -> String {
    shared_cluster().log().lines().filter(|l| l.contains("ERROR")).collect::<Vec<_>>().join("\n")
}

async fn scalar(url: &str, sql: &str) -> i64 {
    connect(url).await.query_one(sql, &[]).await.unwrap_or_else(|e| panic!("{sql}: {e}")).get(0)
}

async fn metrics_text(addr: &str) -> String {
    let (status, _, text) = request(addr, "GET", "/metrics", &[]).await;
    assert_eq!(status, 200, "{text}");
    text
}

/// The value of an unlabelled metric line `name value`.
fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// Log lines written while the returned guard lives, on this thread (a `#[tokio::test]` runs the
/// gateway's tasks on the test's own thread).
fn capture_logs() -> (Arc<Mutex<Vec<u8>>>, tracing::subscriber::DefaultGuard) {
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("log buffer").extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Arc::new(Mutex::new(Vec::new()));
    let sink = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .with_writer(move || Sink(sink.clone()))
        .finish();
    (buf, tracing::subscriber::set_default(subscriber))
}

#[tokio::test]
async fn prunes_with_the_documented_grants() {
    let db = notifications_db().await;
    let role = new_role("docs");
    exec(&db, &DOCUMENTED_GRANTS.replace("{role}", &role)).await;
    let metrics = format!("127.0.0.1:{}", free_port());
    let gw = Gateway::start(&url_as(&db, &role), &["--retention", "1s", "--metrics-listen", &metrics]).await;

    insert_rows(&db, "r", &["n0", "n1", "n2"]).await;
    let pruned = common::wait_until(T, || async {
        scalar(&db, "SELECT count(*) FROM pgsse.events").await == 0
            && scalar(&db, "SELECT (pruned_tx::text)::bigint FROM pgsse.meta").await > 0
    })
    .await;
    assert!(pruned, "retention never pruned the log as a role with the documented grants:\n{}", pg_errors());
    let (status, v) = readyz(&gw.addr).await.expect("readyz");
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["retention"]["ok"], true, "{v}");
    assert!(v["retention"]["lastError"].is_null(), "{v}");
    assert!(v["retention"]["lastSuccessAt"].is_u64(), "{v}");
    let text = metrics_text(&metrics).await;
    assert_eq!(metric(&text, "pgsse_retention_pruned_rows_total"), Some(3), "{text}");
    assert_eq!(metric(&text, "pgsse_retention_failures_total"), Some(0), "{text}");
    gw.stop().await;
}

#[tokio::test]
async fn readyz_and_metrics_show_retention_failing_until_the_grant_is_made() {
    let db = notifications_db().await;
    let (logs, _guard) = capture_logs();
    let role = new_role("nodelete");
    let grants =
        DOCUMENTED_GRANTS.replace("{role}", &role).replace("SELECT, DELETE ON pgsse.events", "SELECT ON pgsse.events");
    exec(&db, &grants).await;
    let metrics = format!("127.0.0.1:{}", free_port());
    let gw = Gateway::start(&url_as(&db, &role), &["--retention", "1s", "--metrics-listen", &metrics]).await;
    insert_rows(&db, "r", &["n0", "n1"]).await;

    let failing =
        common::wait_until(T, || async { readyz(&gw.addr).await.is_some_and(|(_, v)| v["retention"]["ok"] == false) })
            .await;
    assert!(failing, "readyz never reported retention failing");
    let (status, v) = readyz(&gw.addr).await.expect("readyz");
    assert_eq!(status, 200, "retention failing does not make the gateway unready: {v}");
    assert_eq!(v["status"], "ready", "{v}");
    assert_eq!(v["retention"]["lastError"], "permission denied for table events", "{v}");
    assert!(v["retention"]["lastSuccessAt"].is_null(), "{v}");
    // Another round fails the same way: counted each time, still the same error.
    let counted = common::wait_until(T, || async {
        metric(&metrics_text(&metrics).await, "pgsse_retention_failures_total").is_some_and(|n| n >= 2)
    })
    .await;
    assert!(counted, "failures not counted:\n{}", metrics_text(&metrics).await);
    assert_eq!(scalar(&db, "SELECT count(*) FROM pgsse.events").await, 2, "nothing was pruned");
    let logged = String::from_utf8_lossy(&logs.lock().expect("logs")).into_owned();
    let warnings: Vec<&str> = logged.lines().filter(|l| l.contains("WARN") && l.contains("retention")).collect();
    assert_eq!(warnings.len(), 1, "one warning per distinct error, not one per round:\n{logged}");
    assert!(warnings[0].contains("GRANT SELECT, DELETE ON pgsse.events"), "{}", warnings[0]);

    exec(&db, &format!("GRANT DELETE ON pgsse.events TO {role}")).await;
    let recovered = common::wait_until(T, || async {
        readyz(&gw.addr).await.is_some_and(|(_, v)| v["retention"]["ok"] == true)
            && scalar(&db, "SELECT count(*) FROM pgsse.events").await == 0
    })
    .await;
    assert!(recovered, "retention did not recover after the grant: {:?}", readyz(&gw.addr).await);
    let (_, v) = readyz(&gw.addr).await.expect("readyz");
    assert!(v["retention"]["lastError"].is_null() && v["retention"]["lastSuccessAt"].is_u64(), "{v}");
    let logged = String::from_utf8_lossy(&logs.lock().expect("logs")).into_owned();
    assert!(logged.contains("retention: pruning pgsse.events works again"), "{logged}");
    gw.stop().await;
}

#[tokio::test]
async fn a_replica_skips_the_round_while_another_holds_the_retention_lock() {
    let db = notifications_db().await;
    let role = new_role("lock");
    exec(&db, &DOCUMENTED_GRANTS.replace("{role}", &role)).await;
    exec(&db, "INSERT INTO notifications (user_id, title) VALUES ('r', 'old')").await;
    exec(&db, "UPDATE pgsse.events SET created_at = now() - interval '1 hour'").await;
    let cfg = pgsse::pg::parse_url(&url_as(&db, &role)).expect("url");
    let pool = pgsse::pg::Pool::new(&cfg, 1, pgsse::pg::DEFAULT_DB_TIMEOUT, Default::default()).expect("pool");
    let retention = Duration::from_secs(60);

    // The other replica, mid-batch.
    let other = connect(&url_as(&db, &role)).await;
    other.execute("BEGIN", &[]).await.expect("begin");
    let got: bool = other.query_one("SELECT pg_try_advisory_xact_lock($1)", &[&LOCK_KEY]).await.expect("lock").get(0);
    assert!(got);
    assert_eq!(prune_batch(&pool, retention).await.expect("prune"), Batch::Busy);
    assert_eq!(scalar(&db, "SELECT count(*) FROM pgsse.events").await, 1);

    other.execute("COMMIT", &[]).await.expect("commit");
    assert_eq!(prune_batch(&pool, retention).await.expect("prune"), Batch::Pruned(1));
    assert_eq!(prune_batch(&pool, retention).await.expect("prune"), Batch::Pruned(0));
    assert_eq!(scalar(&db, "SELECT count(*) FROM pgsse.events").await, 0);
    let pruned_tx = scalar(&db, "SELECT (pruned_tx::text)::bigint FROM pgsse.meta").await;
    assert!(pruned_tx > 0, "pruned_tx moved");

    // pruned_tx never moves down, even when the rows pruned are older than it says.
    exec(&db, "UPDATE pgsse.meta SET pruned_tx = '999999999'").await;
    exec(&db, "INSERT INTO notifications (user_id, title) VALUES ('r', 'old too')").await;
    exec(&db, "UPDATE pgsse.events SET created_at = now() - interval '1 hour'").await;
    assert_eq!(prune_batch(&pool, retention).await.expect("prune"), Batch::Pruned(1));
    assert_eq!(scalar(&db, "SELECT (pruned_tx::text)::bigint FROM pgsse.meta").await, 999_999_999);
}

/// `sql/install.sql` of version 4, whose log had an index on tx beside a primary key on id.
const VERSION_4: &str = include_str!("fixtures/install-v4.sql");

/// A batch of retention reads about the rows it deletes, not the log: through the primary key
/// (tx, id) of this version, and through the index on tx of the earlier versions a gateway
/// still serves. Rows read come from the pruning session's statistics, complete once it has
/// exited (its deletions show then too).
#[tokio::test]
async fn a_prune_batch_reads_its_batch_not_the_whole_log() {
    for script in [pgsse::pg::install::INSTALL_SQL, VERSION_4] {
        let db = common::fresh_database();
        exec(&db, script).await;
        // 20,000 rows in 200 transactions, the first 1,500 old enough to go; all on this session,
        // whose statistics are flushed before counting (another session's could arrive later).
        let c = connect(&db).await;
        c.batch_execute(
            "DO $$ BEGIN FOR t IN 1..200 LOOP \
                 INSERT INTO pgsse.events (user_id, data) SELECT 'u' || i, '{}' FROM generate_series(1, 100) AS i; \
                 COMMIT; END LOOP; END $$",
        )
        .await
        .expect("log rows");
        c.batch_execute(
            "UPDATE pgsse.events SET created_at = now() - interval '1 hour' \
              WHERE id IN (SELECT id FROM pgsse.events ORDER BY id LIMIT 1500)",
        )
        .await
        .expect("old rows");
        c.batch_execute("VACUUM ANALYZE pgsse.events").await.expect("vacuum");
        c.batch_execute("SELECT pg_stat_force_next_flush()").await.expect("flush");
        let stat = "SELECT pg_stat_clear_snapshot(), seq_tup_read + coalesce(idx_tup_fetch, 0), n_tup_del \
                      FROM pg_stat_user_tables WHERE relid = 'pgsse.events'::regclass";
        let before = c.query_one(stat, &[]).await.expect("stat");
        let (read0, del0): (i64, i64) = (before.get(1), before.get(2));

        let cfg = pgsse::pg::parse_url(&db).expect("url");
        let pool = pgsse::pg::Pool::new(&cfg, 1, pgsse::pg::DEFAULT_DB_TIMEOUT, Default::default()).expect("pool");
        assert_eq!(prune_batch(&pool, Duration::from_secs(60)).await.expect("prune"), Batch::Pruned(1000));
        drop(pool);
        let deadline = tokio::time::Instant::now() + T;
        let read = loop {
            let row = c.query_one(stat, &[]).await.expect("stat");
            if row.get::<_, i64>(2) - del0 == 1000 {
                break row.get::<_, i64>(1) - read0;
            }
            assert!(tokio::time::Instant::now() < deadline, "the pruning session's statistics never arrived");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(read < 3000, "one batch of 1,000 rows read {read} rows of a 20,000-row log");
    }
}
