//! Installing and removing the database side (`sql/install.sql`, `sql/uninstall.sql`), and the
//! privileges it needs and grants: without a superuser, for the app, the gateway and table owners.

mod common;

use common::sql::*;
use common::*;
use serde_json::json;

#[tokio::test]
async fn install_is_idempotent_and_keeps_events() {
    let url = fresh_database();
    exec(&url, INSTALL).await;
    exec(&url, NOTIFICATIONS).await;
    exec(
        &url,
        "INSERT INTO notifications (id, user_id, title) VALUES (1, 7, 'a');
         SELECT pgsse.publish('7', '{\"hello\": 1}');",
    )
    .await;
    let client = connect(&url).await;
    let before = events_after(&client, 0).await;
    assert_eq!(before.len(), 2);

    let key_file = "SELECT relfilenode::bigint FROM pg_class WHERE oid = 'pgsse.events_pkey'::regclass";
    let key = scalar_i64(&client, key_file).await;
    exec(&url, INSTALL).await;
    exec(&url, INSTALL).await;

    assert_eq!(events_after(&client, 0).await, before, "events survive re-install");
    assert_eq!(scalar_i64(&client, key_file).await, key, "a re-install does not rebuild the log's key");
    let count = |sql: &'static str| {
        let client = &client;
        async move { scalar_i64(client, sql).await }
    };
    assert_eq!(count("SELECT count(*) FROM pg_namespace WHERE nspname = 'pgsse'").await, 1);
    assert_eq!(
        count(
            "SELECT count(*) FROM pg_class WHERE relnamespace = 'pgsse'::regnamespace \
             AND relkind = 'r'"
        )
        .await,
        4,
        "events, meta, secret and watched"
    );
    assert_eq!(log_indexes(&url).await, LOG_INDEXES);
    assert_eq!(
        count(
            "SELECT count(*) FROM pg_proc WHERE pronamespace = 'pgsse'::regnamespace \
             AND proname IN ('_announce', 'capture', 'publish', 'watch', 'unwatch')"
        )
        .await,
        5
    );
    assert_eq!(
        count("SELECT count(*) FROM pg_proc WHERE pronamespace = 'pgsse'::regnamespace").await,
        32,
        "plus _send, history, new_history, mark, capture_sessions, watch_sessions, unwatch_sessions, _capture_sql, \
         _generate_capture, _drop_unused_captures, _payload, _relaying, _wake, _announced, _set_announced, _announcing, \
         _write_announcing, _announcing_in_step, set_notify_mode, \
         notify_mode, relay, relay_read, relay_rows, _snapshot_cut and the generated capture_<oid> of notifications"
    );
    assert_eq!(count("SELECT count(*) FROM pgsse.meta").await, 1);
    assert_eq!(count("SELECT count(*) FROM pgsse.secret").await, 1, "the signing key is generated once");
    assert_eq!(count("SELECT count(*) FROM pgsse.meta WHERE id AND pruned_tx = '0'").await, 1);
    assert_eq!(
        count(
            "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'notifications'::regclass \
             AND tgname LIKE 'pgsse%'"
        )
        .await,
        4,
        "pgsse_insert (for each row), pgsse_announce, pgsse_update, pgsse_delete"
    );

    // pruned_tx survives too, and the meta row can't be duplicated.
    exec(&url, "UPDATE pgsse.meta SET pruned_tx = '42'").await;
    exec(&url, INSTALL).await;
    assert_eq!(count("SELECT count(*) FROM pgsse.meta WHERE pruned_tx = '42'").await, 1);
    let err = exec_err(&url, "INSERT INTO pgsse.meta (id) VALUES (false)").await;
    assert!(err.contains("check constraint"), "{err}");

    // Watching again does not duplicate the triggers; the log keeps growing.
    exec(&url, "SELECT pgsse.watch('notifications', 'user_id')").await;
    exec(&url, "SELECT pgsse.watch('notifications', 'user_id')").await;
    assert_eq!(
        count(
            "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'notifications'::regclass \
             AND tgname LIKE 'pgsse%'"
        )
        .await,
        4,
        "pgsse_insert (for each row), pgsse_announce, pgsse_update, pgsse_delete"
    );
    assert_eq!(count(GENERATED_CAPTURES).await, 1, "watching again replaces the generated function");
    exec(&url, "INSERT INTO notifications (id, user_id, title) VALUES (2, 7, 'b')").await;
    let after = events_after(&client, 0).await;
    assert_eq!(after.len(), 3);
    assert!(after[2].id > before[1].id);
}

#[tokio::test]
async fn uninstall_removes_everything() {
    let url = fresh_database();
    // Not installed: fine, twice.
    exec(&url, UNINSTALL).await;
    exec(&url, UNINSTALL).await;

    exec(&url, INSTALL).await;
    exec(
        &url,
        &format!(
            "{NOTIFICATIONS}
             CREATE SCHEMA other;
             CREATE TABLE other.\"Alerts\" (id int, owner text);
             SELECT pgsse.watch('other.\"Alerts\"', 'owner', read_column => NULL);
             INSERT INTO notifications (id, user_id) VALUES (1, 1);"
        ),
    )
    .await;
    exec(&url, UNINSTALL).await;

    let client = connect(&url).await;
    let count = |sql: &'static str| {
        let client = &client;
        async move { scalar_i64(client, sql).await }
    };
    assert_eq!(count("SELECT count(*) FROM pg_namespace WHERE nspname = 'pgsse'").await, 0);
    assert_eq!(count("SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'pgsse%'").await, 0);
    assert_eq!(
        count(
            "SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
             WHERE n.nspname = 'pgsse' OR p.proname IN ('capture', 'publish', 'watch', 'unwatch', '_announce')"
        )
        .await,
        0
    );
    assert_eq!(count("SELECT count(*) FROM pg_proc WHERE proname LIKE 'capture\\_%'").await, 0, "generated functions");
    assert_eq!(count("SELECT count(*) FROM pg_class WHERE relname IN ('events', 'meta')").await, 0);
    // The application's tables and rows are untouched and still writable.
    exec(
        &url,
        "INSERT INTO notifications (id, user_id) VALUES (2, 1);
         UPDATE notifications SET read = true;
         DELETE FROM notifications WHERE id = 1;
         INSERT INTO other.\"Alerts\" VALUES (1, 'x');",
    )
    .await;
    assert_eq!(count("SELECT count(*) FROM notifications").await, 1);

    // Again, and a re-install afterwards works.
    exec(&url, UNINSTALL).await;
    exec(&url, INSTALL).await;
    exec(&url, "SELECT pgsse.watch('notifications', 'user_id')").await;
    exec(&url, "INSERT INTO notifications (id, user_id) VALUES (3, 1)").await;
    assert_eq!(count("SELECT count(*) FROM pgsse.events").await, 1);
}

#[tokio::test]
async fn installs_and_runs_without_superuser() {
    let url = fresh_database();
    let pg = shared_cluster();
    let owner = unique_role("sql_owner");
    let app = unique_role("sql_app");
    let gateway = unique_role("sql_gateway");
    pg.create_role(&owner, false);
    pg.create_role(&app, false);
    pg.create_role(&gateway, false);
    exec(&url, &format!("GRANT CREATE ON DATABASE \"{}\" TO {owner}", db_name(&url))).await;

    // The owner: CREATE on the database, owns the app's table, nothing else.
    let owner_url = url_as(&url, &owner);
    exec(
        &owner_url,
        &format!(
            "CREATE SCHEMA app;
             CREATE TABLE app.notifications (
                 id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                 user_id text NOT NULL,
                 title   text,
                 read    boolean NOT NULL DEFAULT false
             );
             GRANT USAGE ON SCHEMA app TO {app};
             GRANT SELECT, INSERT, UPDATE, DELETE ON app.notifications TO {app};"
        ),
    )
    .await;
    install_commit_mode(&owner_url).await;
    install_commit_mode(&owner_url).await;
    exec(&owner_url, "SELECT pgsse.watch('app.notifications', 'user_id')").await;

    // The app: rights on its table only, none on pgsse.
    let app_url = url_as(&url, &app);
    let mut tracker = Tracker::new(&url).await;
    exec(
        &app_url,
        "INSERT INTO app.notifications (user_id, title) VALUES ('alice', 'hi'), ('bob', 'yo');
         UPDATE app.notifications SET read = true WHERE user_id = 'alice';
         DELETE FROM app.notifications WHERE user_id = 'bob';",
    )
    .await;
    let (events, payloads) = tracker.collect().await;
    let summary: Vec<(Option<&str>, &str)> =
        events.iter().map(|e| (e.user_id.as_deref(), e.data["type"].as_str().unwrap())).collect();
    assert_eq!(
        summary,
        vec![(Some("alice"), "created"), (Some("bob"), "created"), (Some("alice"), "read"), (Some("bob"), "deleted"),]
    );
    // One NOTIFY per statement, all in the same transaction.
    assert_eq!(payloads.len(), 3, "{payloads:?}");
    assert_inline(&payloads[0], &events[..2]);
    assert_inline(&payloads[1], &events[2..3]);
    assert_inline(&payloads[2], &events[3..]);
    assert_eq!(events[2].data, json!({"type": "read", "notificationId": 1}));

    // The app cannot touch pgsse directly.
    let err = exec_err(&app_url, "SELECT pgsse.publish('alice', '{}')").await;
    assert!(err.contains("permission denied"), "{err}");
    let err = exec_err(&app_url, "SELECT * FROM pgsse.events").await;
    assert!(err.contains("permission denied"), "{err}");
    // Nor anybody else by default (EXECUTE revoked from PUBLIC).
    exec(&owner_url, &format!("GRANT USAGE ON SCHEMA pgsse TO {app}")).await;
    let err = exec_err(&app_url, "SELECT pgsse.publish('alice', '{}')").await;
    assert!(err.contains("permission denied for function publish"), "{err}");
    let err = exec_err(&app_url, "SELECT pgsse._announce('1', 1, 1, 1, '[]')").await;
    assert!(err.contains("permission denied"), "{err}");
    exec(&owner_url, &format!("GRANT EXECUTE ON FUNCTION pgsse.publish(text, jsonb, text) TO {app}")).await;
    exec(&app_url, "SELECT pgsse.publish('alice', '{\"n\": 1}')").await;
    let (events, payloads) = tracker.collect().await;
    assert_eq!(events.len(), 1);
    assert_inline(&payloads[0], &events);

    // The gateway's documented grants are enough for what it does.
    exec(
        &owner_url,
        &format!(
            "GRANT USAGE ON SCHEMA pgsse TO {gateway};
             GRANT SELECT, DELETE ON pgsse.events TO {gateway};
             GRANT SELECT, UPDATE ON pgsse.meta TO {gateway};
             GRANT SELECT ON pgsse.secret TO {gateway};"
        ),
    )
    .await;
    let gateway_url = url_as(&url, &gateway);
    // It reads the signing key, the secret channel and the history, then LISTENs on that channel.
    let channel: String = connect(&gateway_url)
        .await
        .query_one("SELECT s.channel FROM pgsse.secret AS s WHERE s.key IS NOT NULL AND pgsse.history() <> ''", &[])
        .await
        .expect("the gateway reads pgsse.secret and pgsse.history()")
        .get(0);
    assert_eq!(channel, tracker.listener.channel);
    exec(
        &gateway_url,
        &format!(
            "LISTEN \"{channel}\";
         SELECT id, tx, user_id, event, data FROM pgsse.events WHERE tx >= '0' ORDER BY id;
         SELECT pruned_tx FROM pgsse.meta;
         WITH gone AS (DELETE FROM pgsse.events WHERE id <= 2 RETURNING tx)
         UPDATE pgsse.meta SET pruned_tx = (SELECT max(tx) FROM gone);"
        ),
    )
    .await;
    let client = connect(&url).await;
    assert_eq!(scalar_i64(&client, "SELECT count(*) FROM pgsse.events").await, 3);
}

/// A table owned by another role than the one that installed pgsse.
#[tokio::test]
async fn watch_by_another_table_owner() {
    let url = fresh_database();
    let pg = shared_cluster();
    let owner = unique_role("sql_tblowner");
    pg.create_role(&owner, false);
    install_commit_mode(&url).await;
    let owner_url = url_as(&url, &owner);
    exec(
        &url,
        &format!(
            "CREATE TABLE mine (id int PRIMARY KEY, user_id text, read boolean);
             ALTER TABLE mine OWNER TO {owner};
             GRANT USAGE ON SCHEMA pgsse TO {owner};"
        ),
    )
    .await;
    let client = connect(&url).await;
    let mut t = Tracker::new(&url).await;

    // Only EXECUTE on capture(), as earlier versions documented: the generic
    // function, with a notice.
    exec(&url, &format!("GRANT EXECUTE ON FUNCTION pgsse.capture() TO {owner}")).await;
    exec(&owner_url, "SELECT pgsse.watch('mine', 'user_id')").await;
    assert_eq!(trigger_function(&client, "mine").await, "pgsse.capture()");
    t.expect(
        "INSERT INTO mine VALUES (1, 'u', false)",
        vec![(Some("u"), json!({"type": "created", "notification": {"id": 1, "user_id": "u", "read": false}}))],
    )
    .await;

    // With EXECUTE on the generator: a generated function, owned by the
    // installing role, which the table owner may attach.
    exec(
        &url,
        &format!(
            "GRANT EXECUTE ON FUNCTION pgsse._generate_capture(regclass, name, name, name, text[]),
                                       pgsse._drop_unused_captures() TO {owner}"
        ),
    )
    .await;
    exec(&owner_url, "SELECT pgsse.watch('mine', 'user_id')").await;
    let f = trigger_function(&client, "mine").await;
    assert!(f.starts_with("pgsse.capture_"), "{f}");
    let row = client
        .query_one(
            "SELECT pg_get_userbyid(proowner), has_function_privilege($2, oid, 'EXECUTE') \
               FROM pg_proc WHERE oid = $1::text::regprocedure",
            &[&f, &owner],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, &str>(0), "postgres");
    assert!(row.get::<_, bool>(1));
    t.expect("UPDATE mine SET read = true", vec![(Some("u"), json!({"type": "read", "notificationId": 1}))]).await;
    // The owner cannot do more with it than with capture(): no CREATE on pgsse.
    let err = exec_err(&owner_url, &format!("DROP FUNCTION {f}")).await;
    assert!(err.contains("must be owner"), "{err}");
    exec(&owner_url, "SELECT pgsse.unwatch('mine')").await;
    assert_eq!(scalar_i64(&client, GENERATED_CAPTURES).await, 0);
}
