//! Retention under the privileges the README documents: the gateway's role is no superuser, and
//! what it cannot prune shows in `/readyz` and the metrics, not only in the logs.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::gateway::{notifications_db, Gateway};
use common::{connect, exec, shared_cluster};

/// The grants README.md and the header of sql/install.sql give the gateway's role.
const DOCUMENTED_GRANTS: &str = "GRANT USAGE ON SCHEMA pgsse TO {role};
     GRANT SELECT, DELETE ON pgsse.events TO {role};
     GRANT SELECT, UPDATE ON pgsse.meta TO {role};
     GRANT SELECT ON pgsse.secret TO {role};";

const T: Duration = Duration::from_secs(30);

/// A fresh NOSUPERUSER login role (roles are cluster-wide, so the name is unique per test).
fn new_role(tag: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    let name = format!("gw_{tag}_{}_{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst));
    shared_cluster().create_role(&name, false);
    name
}

/// `url` with `role` as the user (the test cluster trusts every local login).
fn url_as(url: &str, role: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("url has a scheme");
    let (_, host) = rest.split_once('@').expect("url has a user");
    format!("{scheme}://{role}@{host}")
}

/// The ERROR lines of the cluster's log, to say why a test's SQL failed.
fn pg_errors() -> String {
    shared_cluster().log().lines().filter(|l| l.contains("ERROR")).collect::<Vec<_>>().join("\n")
}

async fn scalar(url: &str, sql: &str) -> i64 {
    connect(url).await.query_one(sql, &[]).await.unwrap_or_else(|e| panic!("{sql}: {e}")).get(0)
}

async fn insert_rows(db: &str, n: usize) {
    for i in 0..n {
        exec(db, &format!("INSERT INTO notifications (user_id, title) VALUES ('r', 'n{i}')")).await;
    }
}

#[tokio::test]
async fn prunes_with_the_documented_grants() {
    let db = notifications_db().await;
    let role = new_role("docs");
    exec(&db, &DOCUMENTED_GRANTS.replace("{role}", &role)).await;
    let gw = Gateway::start(&url_as(&db, &role), &["--retention", "1s"]).await;

    insert_rows(&db, 3).await;
    let pruned = common::wait_until(T, || async {
        scalar(&db, "SELECT count(*) FROM pgsse.events").await == 0
            && scalar(&db, "SELECT (pruned_tx::text)::bigint FROM pgsse.meta").await > 0
    })
    .await;
    assert!(pruned, "retention never pruned the log as a role with the documented grants:\n{}", pg_errors());
    gw.stop().await;
}
