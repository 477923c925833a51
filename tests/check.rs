//! `pgsse check`, run as the gateway's role: right on a fresh install, and on each thing that goes
//! wrong in production (grants, a renamed watched column, CONNECT open to PUBLIC, writers queued
//! on the NOTIFY lock).

mod common;

use std::time::Duration;

use common::sql::{db_name, unique_role, url_as};
use common::{connect, exec, fresh_database, wait_until, PgCluster};
use serde_json::Value;

const T: Duration = Duration::from_secs(20);

/// A fresh install with `notifications` watched, a gateway role with exactly the documented
/// grants, CONNECT closed to PUBLIC, and durable commits (the test clusters' default is
/// `synchronous_commit = off`, which `check` reports). Returns (superuser URL, gateway URL, gateway role).
async fn deployment(url: &str) -> (String, String) {
    common::gateway::install(url).await;
    let role = unique_role("gw");
    let db = db_name(url);
    exec(
        url,
        &format!(
            "CREATE ROLE {role} LOGIN;
             GRANT USAGE ON SCHEMA pgsse TO {role};
             GRANT SELECT, DELETE ON pgsse.events TO {role};
             GRANT SELECT, UPDATE ON pgsse.meta TO {role};
             GRANT SELECT ON pgsse.secret TO {role};
             REVOKE CONNECT ON DATABASE \"{db}\" FROM PUBLIC;
             GRANT CONNECT ON DATABASE \"{db}\" TO {role};
             ALTER DATABASE \"{db}\" SET synchronous_commit = on;"
        ),
    )
    .await;
    (url_as(url, &role), role)
}

/// `pgsse check --format json`: (exit code, report).
async fn check(url: &str) -> (i32, Value) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgsse"))
        .args(["check", "--format", "json", "--database-url", url])
        .output()
        .await
        .expect("run pgsse check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}\n{}", String::from_utf8_lossy(&out.stderr)));
    (out.status.code().unwrap_or(-1), report)
}

/// The findings of one check, as (status, message, fix).
fn findings<'a>(report: &'a Value, check: &str) -> Vec<(&'a str, &'a str, &'a str)> {
    report["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .filter(|f| f["check"] == check)
        .map(|f| (f["status"].as_str().unwrap(), f["message"].as_str().unwrap(), f["fix"].as_str().unwrap_or("")))
        .collect()
}

fn statuses(report: &Value, check: &str) -> Vec<String> {
    findings(report, check).iter().map(|f| f.0.to_string()).collect()
}

#[tokio::test]
async fn a_fresh_install_checks_clean_as_the_gateway_role() {
    let url = fresh_database();
    let (gw, _) = deployment(&url).await;
    exec(&url, &format!("ALTER DATABASE \"{}\" RESET synchronous_commit", db_name(&url))).await;
    let (_, report) = check(&gw).await;
    assert_eq!(statuses(&report, "synchronous_commit"), ["warning"], "the test cluster's default is off: {report:#}");
    exec(&url, &format!("ALTER DATABASE \"{}\" SET synchronous_commit = on", db_name(&url))).await;
    let (code, report) = check(&gw).await;
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["errors"], 0, "{report:#}");
    for name in [
        "schema",
        "table notifications",
        "grants",
        "retention",
        "notify lock",
        "connect",
        "synchronous_commit",
        "notify queue",
    ] {
        assert_eq!(statuses(&report, name), ["ok"], "{name}: {report:#}");
    }
    // Relay mode, and no gateway runs: said, not hidden.
    assert_eq!(statuses(&report, "notify mode"), ["warning"], "{report:#}");
    // The text form says the same, one line per finding.
    let (ok, text, _) = common::pgsse(&["check", "--database-url", &gw]).await;
    assert!(ok && text.contains("ok      schema: pgsse SQL version 5"), "{text}");
    assert!(text.ends_with("0 errors, 1 warnings\n"), "{text}");
}

#[tokio::test]
async fn wrong_grants_are_errors_and_extra_ones_warnings_with_the_statement_to_run() {
    let url = fresh_database();
    let (gw, role) = deployment(&url).await;
    exec(&url, &format!("REVOKE SELECT ON pgsse.secret FROM {role}; REVOKE DELETE ON pgsse.events FROM {role}")).await;
    exec(&url, &format!("GRANT INSERT ON pgsse.events TO {role}; GRANT EXECUTE ON FUNCTION pgsse.publish(text, jsonb, text) TO {role}")).await;
    let (code, report) = check(&gw).await;
    assert_eq!(code, 1, "{report:#}");
    let grants = findings(&report, "grants");
    let error = grants.iter().find(|f| f.0 == "error").unwrap_or_else(|| panic!("{report:#}"));
    assert!(error.1.contains("SELECT on pgsse.secret") && error.1.contains("DELETE on pgsse.events"), "{error:?}");
    assert!(error.2.contains(&format!("GRANT SELECT ON pgsse.secret TO \"{role}\";")), "{error:?}");
    assert!(error.2.contains(&format!("GRANT DELETE ON pgsse.events TO \"{role}\";")), "{error:?}");
    let warning = grants.iter().find(|f| f.0 == "warning").unwrap_or_else(|| panic!("{report:#}"));
    assert!(
        warning.1.contains("INSERT on pgsse.events") && warning.1.contains("EXECUTE on pgsse.publish"),
        "{warning:?}"
    );
    assert_eq!(statuses(&report, "retention"), ["error"], "{report:#}");
}

#[tokio::test]
async fn a_role_with_no_grant_at_all_is_told_every_grant_not_an_sql_error() {
    let url = fresh_database();
    let (_, _) = deployment(&url).await;
    let bare = unique_role("bare");
    exec(&url, &format!("CREATE ROLE {bare} LOGIN; GRANT CONNECT ON DATABASE \"{}\" TO {bare}", db_name(&url))).await;
    let (code, report) = check(&url_as(&url, &bare)).await;
    assert_eq!(code, 1, "{report:#}");
    let grants = findings(&report, "grants");
    let error = grants.iter().find(|f| f.0 == "error").unwrap_or_else(|| panic!("{report:#}"));
    assert!(error.2.starts_with(&format!("GRANT USAGE ON SCHEMA pgsse TO \"{bare}\";")), "{error:?}");
    assert!(error.2.contains(&format!("GRANT SELECT ON pgsse.secret TO \"{bare}\";")), "{error:?}");
}

#[tokio::test]
async fn a_renamed_watched_column_is_an_error_naming_the_watch_call() {
    let url = fresh_database();
    let (gw, _) = deployment(&url).await;
    exec(&url, "ALTER TABLE notifications RENAME COLUMN user_id TO owner_id").await;
    // What it breaks: every write to the table.
    let c = connect(&url).await;
    assert!(c.batch_execute("INSERT INTO notifications (owner_id, title) VALUES ('a', 'b')").await.is_err());
    let (code, report) = check(&gw).await;
    assert_eq!(code, 1, "{report:#}");
    let table = findings(&report, "table notifications");
    assert_eq!(table.len(), 1, "{report:#}");
    let (status, message, fix) = table[0];
    assert_eq!(status, "error");
    assert!(message.contains("\"user_id\" (user_column) no longer exists"), "{message}");
    assert_eq!(fix, "as its owner, watch it with the new name: SELECT pgsse.watch('notifications', '<new name>')");
}

#[tokio::test]
async fn connect_open_to_public_is_a_warning() {
    let url = fresh_database();
    let (gw, _) = deployment(&url).await;
    exec(&url, &format!("GRANT CONNECT ON DATABASE \"{}\" TO PUBLIC", db_name(&url))).await;
    let (code, report) = check(&gw).await;
    assert_eq!(code, 0, "a warning is not an error: {report:#}");
    let connect = findings(&report, "connect");
    assert_eq!(connect.len(), 1);
    assert_eq!(connect[0].0, "warning");
    assert!(
        connect[0].2.starts_with(&format!("REVOKE CONNECT ON DATABASE \"{}\" FROM PUBLIC;", db_name(&url))),
        "{connect:?}"
    );
}

/// Writers queued on PostgreSQL's NOTIFY commit lock (held by a commit waiting for a synchronous
/// standby that does not exist, as in tests/notify_lock.rs): an error naming relay mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_waiting_on_the_notify_lock_are_an_error_naming_relay_mode() {
    let cluster = PgCluster::start();
    let url = cluster.create_database("app");
    let (gw, _) = deployment(&url).await;
    exec(&url, "SELECT pgsse.set_notify_mode('commit')").await;
    exec(&url, "ALTER SYSTEM SET synchronous_standby_names = 'pgsse_test_nobody'").await;
    exec(&url, "SELECT pg_reload_conf()").await;
    assert!(
        wait_until(T, || async {
            let c = connect(&url).await;
            c.query_one("SHOW synchronous_standby_names", &[]).await.is_ok_and(|r| !r.get::<_, String>(0).is_empty())
        })
        .await
    );
    let insert = |who: &'static str| {
        let url = url.clone();
        tokio::spawn(async move {
            let c = connect(&url).await;
            c.batch_execute("SET synchronous_commit = on").await?;
            c.execute("INSERT INTO notifications (user_id, title) VALUES ($1, 'stuck')", &[&who]).await
        })
    };
    let writers = [insert("alice"), insert("bob"), insert("carol")];
    let probe = connect(&url).await;
    assert!(
        wait_until(T, || async {
            probe
                .query_one(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'object' AND classid = 'pg_database'::regclass \
                     AND objid = 0 AND NOT granted",
                    &[],
                )
                .await
                .is_ok_and(|r| r.get::<_, i64>(0) >= 1)
        })
        .await,
        "no writer queued on the NOTIFY lock"
    );
    let (code, report) = check(&gw).await;
    assert_eq!(code, 1, "{report:#}");
    let lock = findings(&report, "notify lock");
    assert_eq!(lock[0].0, "error", "{report:#}");
    assert!(lock[0].1.contains("waiting on PostgreSQL's NOTIFY commit lock"), "{lock:?}");
    assert!(lock[0].2.contains("SELECT pgsse.set_notify_mode('relay')"), "{lock:?}");

    exec(&url, "ALTER SYSTEM RESET synchronous_standby_names").await;
    exec(&url, "SELECT pg_reload_conf()").await;
    for w in writers {
        let done = tokio::time::timeout(T, w).await.expect("a writer stayed stuck").unwrap();
        assert_eq!(done.unwrap(), 1);
    }
}

/// A capture function attached by hand in a shape `pgsse.watch()` never creates. The function
/// trusts its trigger's shape (testing it on every row would cost each writer's INSERT), so
/// `check` is where the mistake shows: an error naming the trigger and the statement that drops it.
#[tokio::test]
async fn a_capture_function_in_a_trigger_watch_never_creates_is_an_error() {
    let url = fresh_database();
    let (gw, _) = deployment(&url).await;
    let (code, report) = check(&gw).await;
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(statuses(&report, "table notifications"), ["ok"], "{report:#}");

    let c = connect(&url).await;
    let function: String = c
        .query_one("SELECT tgfoid::regproc::text FROM pg_trigger WHERE tgname = 'pgsse_insert'", &[])
        .await
        .unwrap()
        .get(0);
    exec(
        &url,
        &format!(
            "CREATE TRIGGER \"Extra\" BEFORE INSERT OR UPDATE ON notifications FOR EACH ROW EXECUTE FUNCTION {function}()"
        ),
    )
    .await;
    let (code, report) = check(&gw).await;
    assert_eq!(code, 1, "{report:#}");
    let table = findings(&report, "table notifications");
    assert_eq!(table.len(), 2, "pgsse's own triggers still check ok: {report:#}");
    let (status, message, fix) = table[1];
    assert_eq!(status, "error");
    assert_eq!(
        message,
        "trigger \"Extra\" calls pgsse's capture function as BEFORE INSERT OR UPDATE FOR EACH ROW, a shape \
         pgsse.watch() never creates: every row it fires for is logged as created"
    );
    assert!(fix.starts_with("as the table's owner: DROP TRIGGER \"Extra\" ON notifications"), "{fix}");

    // `sql status` says it too, and following the fix clears it.
    let (_, text, _) = common::pgsse(&["sql", "status", "--database-url", &url]).await;
    assert!(text.contains("! notifications: trigger \"Extra\" calls pgsse's capture function"), "{text}");
    exec(&url, "DROP TRIGGER \"Extra\" ON notifications").await;
    let (code, report) = check(&gw).await;
    assert_eq!(code, 0, "{report:#}");
}

/// After a switch back to commit mode, a transaction left open from before keeps the relay going
/// (every commit announced a second time): `check` names it, and is satisfied once it has ended.
#[tokio::test]
async fn a_transaction_holding_the_relay_after_a_switch_to_commit_is_named() {
    let url = fresh_database();
    let (gw_url, _) = deployment(&url).await;
    assert_eq!(common::relay::set_mode(&url, "relay").await, "relay");
    let gw = common::gateway::Gateway::start(&url, &[]).await;
    let open = connect(&url).await;
    let pid: i32 = open.query_one("SELECT pg_backend_pid()", &[]).await.expect("pid").get(0);
    open.batch_execute("BEGIN; SELECT 1").await.expect("a transaction left open");
    assert_eq!(common::relay::set_mode(&url, "commit").await, "commit");
    let meta = connect(&url).await;
    let noticed = wait_until(T, || async { common::relay::drain(&meta).await.is_some() }).await;
    assert!(noticed, "the relay never noticed the switch");

    let (_, report) = check(&gw_url).await;
    let found = findings(&report, "notify mode");
    assert_eq!(found.len(), 1, "{report:#}");
    let (status, message, fix) = found[0];
    assert_eq!(status, "warning", "{report:#}");
    assert!(message.contains(&format!("pid {pid} ")), "{message}");
    assert!(fix.contains("pg_terminate_backend"), "{fix}");
    // A role that may see the session's details gets them.
    let (_, report) = check(&url).await;
    let (_, message, _) = findings(&report, "notify mode")[0];
    assert!(
        message.contains(&format!("pid {pid} (open since ")) && message.contains("idle in transaction"),
        "{message}"
    );

    // With no gateway left to finish it, the check says so instead.
    gw.stop().await;
    let lapsed = wait_until(T, || async {
        let q = "SELECT relay_until < now() - interval '1 second' FROM pgsse.meta";
        meta.query_one(q, &[]).await.expect("pgsse.meta").get::<_, bool>(0)
    })
    .await;
    assert!(lapsed, "the relay's lease never ran out");
    let (_, report) = check(&gw_url).await;
    let (status, message, fix) = findings(&report, "notify mode")[0];
    assert_eq!(status, "warning", "{report:#}");
    assert!(message.contains("no gateway is relaying"), "{message}");
    assert!(fix.contains("pgsse serve"), "{fix}");

    open.batch_execute("COMMIT").await.expect("commit");
    let gw = common::gateway::Gateway::start(&url, &[]).await;
    let done = wait_until(T, || common::relay::finished(&meta)).await;
    assert!(done, "the relay never finished");
    let (_, report) = check(&gw_url).await;
    assert_eq!(statuses(&report, "notify mode"), ["ok"], "{report:#}");
    gw.stop().await;
}
