//! `pgsse.watch()` and `pgsse.unwatch()`: helpful errors, the generated per-table trigger
//! functions, and their agreement with the generic `pgsse.capture()` of earlier versions.

mod common;

use common::sql::*;
use common::*;
use serde_json::json;

#[tokio::test]
async fn watch_reports_helpful_errors() {
    let url = fresh_database();
    install_commit_mode(&url).await;
    exec(
        &url,
        "CREATE TABLE notifications (id int, user_id text, title text, read boolean);
         ALTER TABLE notifications ADD COLUMN gone int;
         ALTER TABLE notifications DROP COLUMN gone;
         CREATE TABLE notes (id int, user_id text, read text);
         CREATE TABLE plain (id int, user_id text);
         CREATE VIEW a_view AS SELECT 1 AS id, 'u' AS user_id, true AS read;",
    )
    .await;

    // A missing column: named, with the table's real columns listed.
    let err = exec_err(&url, "SELECT pgsse.watch('notifications', 'userId')").await;
    assert!(err.contains("public.notifications"), "{err}");
    assert!(err.contains("\"userId\""), "{err}");
    assert!(err.contains("id, user_id, title, read"), "{err}");
    assert!(err.contains("SQLSTATE 42703"), "{err}");
    for (sql, col) in [
        ("SELECT pgsse.watch('notifications', 'user_id', 'ident')", "ident"),
        ("SELECT pgsse.watch('notifications', 'user_id', read_column => 'is_read')", "is_read"),
        ("SELECT pgsse.watch('notifications', 'user_id', exclude_columns => '{title,secret}')", "secret"),
        // Dropped columns don't count.
        ("SELECT pgsse.watch('notifications', 'gone')", "gone"),
        ("SELECT pgsse.watch('notifications', '........pg.dropped.5........')", "........pg.dropped.5........"),
    ] {
        let err = exec_err(&url, sql).await;
        assert!(err.contains(&format!("\"{col}\"")), "{sql}: {err}");
        assert!(err.contains("its columns are: id, user_id, title, read (SQLSTATE"), "{sql}: {err}");
    }

    // A read column that is not boolean.
    let err = exec_err(&url, "SELECT pgsse.watch('notes', 'user_id')").await;
    assert!(err.contains("\"read\""), "{err}");
    assert!(err.contains("text"), "{err}");
    assert!(err.contains("boolean"), "{err}");

    // The default read column is missing: suggest read_column => NULL.
    let err = exec_err(&url, "SELECT pgsse.watch('plain', 'user_id')").await;
    assert!(err.contains("\"read\""), "{err}");
    assert!(err.contains("read_column => NULL"), "{err}");
    assert!(err.contains("id, user_id"), "{err}");
    exec(&url, "SELECT pgsse.watch('plain', 'user_id', read_column => NULL)").await;

    // Not a table.
    let err = exec_err(&url, "SELECT pgsse.watch('a_view', 'user_id')").await;
    assert!(err.contains("not a table"), "{err}");
    // pgsse's own tables: that would loop.
    let err = exec_err(&url, "SELECT pgsse.watch('pgsse.events', 'user_id', read_column => NULL)").await;
    assert!(err.contains("cannot be watched"), "{err}");
    // No such table: PostgreSQL's own regclass error.
    let err = exec_err(&url, "SELECT pgsse.watch('nope', 'user_id')").await;
    assert!(err.contains("\"nope\" does not exist"), "{err}");

    // Failed calls left no triggers behind.
    let client = connect(&url).await;
    assert_eq!(
        scalar_i64(
            &client,
            "SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'pgsse%' \
             AND tgrelid <> 'plain'::regclass"
        )
        .await,
        0
    );
}

// ---------------------------------------------------------------------------
// Generated per-table trigger functions
// ---------------------------------------------------------------------------

#[tokio::test]
async fn watch_generates_a_static_trigger_function() {
    let url = fresh_database();
    install_commit_mode(&url).await;
    exec(&url, NOTIFICATIONS).await;
    let client = connect(&url).await;
    let oid = scalar_i64(&client, "SELECT 'notifications'::regclass::oid::bigint").await;
    let name = format!("pgsse.capture_{oid}()");
    assert_eq!(trigger_function(&client, "notifications").await, name);

    let row = client
        .query_one(
            "SELECT p.prosecdef, p.proconfig::text, p.prosrc, obj_description(p.oid, 'pg_proc'), \
                    has_function_privilege('public', p.oid, 'EXECUTE'), pg_get_userbyid(p.proowner) \
               FROM pg_proc p WHERE p.oid = $1::text::regprocedure",
            &[&name],
        )
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0), "SECURITY DEFINER");
    // No SET clause (it costs as much as the log row on every INSERT): every name on the paths
    // that run under the writer's search_path is schema-qualified, see
    // a_writers_search_path_runs_nothing_with_the_owners_rights.
    assert_eq!(row.get::<_, Option<&str>>(1), None);
    let src: &str = row.get(2);
    // Static SQL with the column names written in: PL/pgSQL caches its plans.
    assert!(!src.contains("EXECUTE"), "{src}");
    assert!(src.contains("t.user_id::text AS u"), "{src}");
    assert!(src.contains("'{secret}'::text[]"), "{src}");
    let comment: &str = row.get(3);
    assert!(comment.contains("public.notifications"), "{comment}");
    assert!(!row.get::<_, bool>(4), "EXECUTE revoked from PUBLIC");
    assert_eq!(row.get::<_, &str>(5), "postgres", "owned by the installing role");
    // Every internal function that runs with its owner's rights is revoked from PUBLIC too (those
    // that run with the caller's, e.g. _send and _attach, can do nothing the caller could not).
    assert_eq!(
        scalar_i64(
            &client,
            "SELECT count(*) FROM pg_proc WHERE pronamespace = 'pgsse'::regnamespace \
             AND (proname LIKE '\\_%' OR proname ~ '^capture') AND prosecdef \
             AND has_function_privilege('public', oid, 'EXECUTE')"
        )
        .await,
        0
    );

    // Renaming the table keeps the function (named by oid) and the capture.
    let mut t = Tracker::new(&url).await;
    exec(&url, "ALTER TABLE notifications RENAME TO inbox").await;
    assert_eq!(trigger_function(&client, "inbox").await, name);
    t.expect(
        "INSERT INTO inbox (id, user_id, title, secret) VALUES (1, 7, 'a', 's')",
        vec![(
            Some("7"),
            json!({"type": "created", "notification":
                   {"id": 1, "user_id": 7, "title": "a", "read": false, "read_at": null}}),
        )],
    )
    .await;

    // A new column is in the events at once (the cached plans follow the
    // table), and after watch() again too; watch() can now exclude it.
    let client2 = connect(&url).await; // a session that has already run the trigger
    client2.batch_execute("INSERT INTO inbox (id, user_id) VALUES (2, 7)").await.unwrap();
    exec(&url, "ALTER TABLE inbox ADD COLUMN priority int DEFAULT 3").await;
    client2.batch_execute("INSERT INTO inbox (id, user_id) VALUES (3, 7)").await.unwrap();
    let (events, _) = t.collect().await;
    assert_eq!(events.len(), 2);
    assert_eq!(events[0].data["notification"].get("priority"), None);
    assert_eq!(events[1].data["notification"]["priority"], 3);
    exec(&url, "SELECT pgsse.watch('inbox', 'user_id', exclude_columns => '{secret}')").await;
    assert_eq!(trigger_function(&client, "inbox").await, name);
    client2.batch_execute("UPDATE inbox SET priority = 4 WHERE id = 3").await.unwrap();
    let (events, _) = t.collect().await;
    assert_eq!(events.len(), 1);
    assert_eq!(
        events[0].data,
        json!({"type": "updated", "notification":
               {"id": 3, "user_id": 7, "title": null, "read": false, "read_at": null, "priority": 4}})
    );
    exec(&url, "SELECT pgsse.watch('inbox', 'user_id', exclude_columns => '{secret,priority}')").await;
    let src: String = client
        .query_one("SELECT prosrc FROM pg_proc WHERE oid = $1::text::regprocedure", &[&name])
        .await
        .unwrap()
        .get(0);
    assert!(src.contains("'{secret,priority}'::text[]"), "watch() replaced the function: {src}");
    client2.batch_execute("UPDATE inbox SET title = 'c', priority = 5 WHERE id = 3").await.unwrap();
    let (events, _) = t.collect().await;
    assert_eq!(
        events[0].data,
        json!({"type": "updated", "notification":
               {"id": 3, "user_id": 7, "title": "c", "read": false, "read_at": null}})
    );
    assert_eq!(scalar_i64(&client, GENERATED_CAPTURES).await, 1);

    // unwatch() drops the function; again is a no-op.
    exec(&url, "SELECT pgsse.unwatch('inbox'); SELECT pgsse.unwatch('inbox');").await;
    assert_eq!(scalar_i64(&client, GENERATED_CAPTURES).await, 0);
    assert_eq!(scalar_i64(&client, "SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'pgsse%'").await, 0);
    t.expect("INSERT INTO inbox (id, user_id) VALUES (4, 7)", vec![]).await;

    // A dropped table takes its triggers along; its function goes with the
    // next watch() or unwatch() call, whatever the table.
    exec(
        &url,
        "CREATE TABLE a (id int PRIMARY KEY, u text); SELECT pgsse.watch('a', 'u', read_column => NULL);
         CREATE TABLE b (id int PRIMARY KEY, u text); SELECT pgsse.watch('b', 'u', read_column => NULL);
         DROP TABLE a;",
    )
    .await;
    assert_eq!(scalar_i64(&client, GENERATED_CAPTURES).await, 2);
    exec(&url, "SELECT pgsse.unwatch('inbox')").await;
    assert_eq!(scalar_i64(&client, GENERATED_CAPTURES).await, 1);
    let b_oid = scalar_i64(&client, "SELECT 'b'::regclass::oid::bigint").await;
    assert_eq!(trigger_function(&client, "b").await, format!("pgsse.capture_{b_oid}()"));

    // Re-installing keeps the generated functions and their triggers.
    install_commit_mode(&url).await;
    assert_eq!(scalar_i64(&client, GENERATED_CAPTURES).await, 1);
    t.expect(
        "INSERT INTO b VALUES (1, 'x')",
        vec![(Some("x"), json!({"type": "created", "notification": {"id": 1, "u": "x"}}))],
    )
    .await;
}

/// Applies the same statements to a table watched by today's watch() and to
/// one with an earlier version's triggers (generic pgsse.capture()): the
/// events and payloads must be the same.
#[tokio::test]
async fn generated_and_generic_capture_log_the_same_events() {
    let url = fresh_database();
    install_commit_mode(&url).await;
    let table = |name: &str| {
        format!(
            "CREATE TABLE {name} (id integer PRIMARY KEY, user_id integer, title text,
                                  read boolean DEFAULT false, read_at timestamptz, secret text);
             CREATE TABLE {name}_noread (code text PRIMARY KEY, owner text, read boolean);"
        )
    };
    exec(&url, &format!("{}{}", table("gen"), table("old"))).await;
    exec(
        &url,
        &format!(
            "SELECT pgsse.watch('gen', 'user_id', exclude_columns => '{{secret}}');
             SELECT pgsse.watch('gen_noread', 'owner', id_column => 'code', read_column => NULL);
             {}{}",
            old_style_watch("old", "user_id", "id", "read", "{secret}"),
            old_style_watch("old_noread", "owner", "code", "", "{}"),
        ),
    )
    .await;
    let client = connect(&url).await;
    assert_eq!(trigger_function(&client, "old").await, "pgsse.capture()");
    assert_eq!(trigger_function(&client, "old_noread").await, "pgsse.capture()");
    assert!(trigger_function(&client, "gen").await.starts_with("pgsse.capture_"));
    assert!(trigger_function(&client, "gen_noread").await.starts_with("pgsse.capture_"));

    let statements = [
        // multi-row INSERT: ordered by id, NULL user skipped, secret excluded
        "INSERT INTO {T} (id, user_id, title, secret) VALUES
             (2, 20, 'b', 's'), (1, 10, 'a', 's'), (3, NULL, 'c', 's'), (4, 10, 'd', 's')",
        "UPDATE {T} SET read = true, read_at = '2024-01-02T03:04:05Z' WHERE id = 1", // read
        "UPDATE {T} SET read = true WHERE id = 1",                                   // nothing
        "UPDATE {T} SET secret = 'x' WHERE id = 2",                                  // nothing
        "UPDATE {T} SET title = 'bb' WHERE id = 2",                                  // updated
        "UPDATE {T} SET read = false, read_at = NULL WHERE id = 1",                  // updated
        "UPDATE {T} SET user_id = 30 WHERE id = 2",                                  // user change
        "UPDATE {T} SET user_id = 40 WHERE id = 3",                                  // gets a user
        "UPDATE {T} SET user_id = NULL WHERE id = 3",                                // loses it
        "UPDATE {T} SET read = CASE WHEN id = 2 THEN true ELSE read END,
                      title = CASE WHEN id = 4 THEN 'dd' ELSE title END,
                      user_id = CASE WHEN id = 1 THEN 11 ELSE user_id END",
        "UPDATE {T} SET id = 5 WHERE id = 4",
        "DELETE FROM {T}",
        "DELETE FROM {T}",
        "INSERT INTO {T}_noread VALUES ('A-1', 'bob', false), ('A-0', NULL, true), ('A-2', 'amy', NULL)",
        "UPDATE {T}_noread SET read = true",
        "UPDATE {T}_noread SET owner = 'eve' WHERE code = 'A-2'",
        "DELETE FROM {T}_noread",
    ];
    let mut t = Tracker::new(&url).await;
    let mut total = 0;
    for sql in statements {
        let mut got = Vec::new();
        for tbl in ["gen", "old"] {
            let (events, payloads) = t.run(&sql.replace("{T}", tbl)).await;
            if events.is_empty() {
                assert!(payloads.is_empty());
            } else {
                assert_eq!(payloads.len(), 1, "{sql}");
                assert_inline(&payloads[0], &events);
            }
            total += events.len();
            got.push(events.into_iter().map(|e| (e.user_id, e.event, e.data)).collect::<Vec<_>>());
        }
        assert_eq!(got[0], got[1], "generated (left) vs generic (right) after: {sql}");
    }
    assert_eq!(total, 2 * 27, "the statements log 27 events each way");

    // watch() moves a table from the generic function to a generated one.
    exec(&url, "SELECT pgsse.watch('old', 'user_id', exclude_columns => '{secret}')").await;
    assert!(trigger_function(&client, "old").await.starts_with("pgsse.capture_"));
    assert_eq!(scalar_i64(&client, GENERATED_CAPTURES).await, 3);
}

/// After a dump and restore, tables have new oids: a table's triggers may use
/// a function named after another table's (new) oid. Watching that other
/// table must leave them alone.
#[tokio::test]
async fn generated_function_names_survive_new_oids() {
    let url = fresh_database();
    install_commit_mode(&url).await;
    exec(
        &url,
        "CREATE TABLE a (id int PRIMARY KEY, owner text, note text);
         CREATE TABLE b (id int PRIMARY KEY, user_id text, read boolean);
         SELECT pgsse.watch('a', 'owner', read_column => NULL);",
    )
    .await;
    let client = connect(&url).await;
    let a_oid = scalar_i64(&client, "SELECT 'a'::regclass::oid::bigint").await;
    let b_oid = scalar_i64(&client, "SELECT 'b'::regclass::oid::bigint").await;
    // What a restore can produce: a's triggers use a function named after b.
    exec(&url, &format!("ALTER FUNCTION pgsse.capture_{a_oid}() RENAME TO capture_{b_oid}")).await;

    exec(&url, "SELECT pgsse.watch('b', 'user_id')").await;
    assert_eq!(trigger_function(&client, "b").await, format!("pgsse.capture_{b_oid}()"));
    let a_fn = trigger_function(&client, "a").await;
    assert!(a_fn.starts_with(&format!("pgsse.capture_{b_oid}_")), "{a_fn}");
    let mut t = Tracker::new(&url).await;
    t.expect(
        "INSERT INTO a VALUES (1, 'x', 'n')",
        vec![(Some("x"), json!({"type": "created", "notification": {"id": 1, "owner": "x", "note": "n"}}))],
    )
    .await;
    t.expect(
        "INSERT INTO b VALUES (1, 'y', false)",
        vec![(Some("y"), json!({"type": "created", "notification": {"id": 1, "user_id": "y", "read": false}}))],
    )
    .await;

    // Watching a again gives it its own name; the renamed function is dropped.
    exec(&url, "SELECT pgsse.watch('a', 'owner', read_column => NULL)").await;
    assert_eq!(trigger_function(&client, "a").await, format!("pgsse.capture_{a_oid}()"));
    assert_eq!(scalar_i64(&client, GENERATED_CAPTURES).await, 2);
    t.expect("DELETE FROM a", vec![(Some("x"), json!({"type": "deleted", "notificationId": 1}))]).await;
}

/// The generated trigger function runs with its owner's rights but, for speed, without a pinned
/// search_path (see `pgsse._generate_capture`). A writer that puts a schema of its own first, with
/// an operator for every type the function compares, a `now()` and a temporary type named
/// `text`, gets none of them called with the owner's rights: not by INSERT (row and announce, in
/// both modes, with a relay to wake), nor by UPDATE or DELETE (which pin the path themselves).
#[tokio::test]
async fn a_writers_search_path_runs_nothing_with_the_owners_rights() {
    let url = fresh_database();
    install_commit_mode(&url).await;
    exec(&url, NOTIFICATIONS).await;
    let hostile = unique_role("hostile_writer");
    shared_cluster().create_role(&hostile, false);
    exec(
        &url,
        &format!(
            "GRANT CREATE ON DATABASE \"{}\" TO {hostile};
             GRANT SELECT, INSERT, UPDATE, DELETE ON notifications TO {hostile};",
            db_name(&url)
        ),
    )
    .await;
    // Every call of an operator or function of schema evil is recorded with the role it ran as.
    let ops = [
        ("=", "text", "text", "boolean"),
        ("<>", "text", "text", "boolean"),
        ("~", "text", "text", "boolean"),
        ("||", "text", "text", "text"),
        (">", "timestamptz", "timestamptz", "boolean"),
        ("=", "bigint", "bigint", "boolean"),
        ("<=", "bigint", "bigint", "boolean"),
        (">", "bigint", "bigint", "boolean"),
        ("=", "integer", "integer", "boolean"),
        ("+", "integer", "integer", "integer"),
        ("-", "integer", "integer", "integer"),
        ("<=", "integer", "integer", "boolean"),
        ("=", "xid8", "xid8", "boolean"),
        ("-", "jsonb", "text[]", "jsonb"),
    ];
    let mut sql = String::from(
        "CREATE SCHEMA evil;
         CREATE TABLE evil.hits (who text, what text);
         GRANT USAGE ON SCHEMA evil TO PUBLIC;
         GRANT INSERT ON evil.hits TO PUBLIC;
         CREATE FUNCTION evil.now() RETURNS timestamptz LANGUAGE sql
             AS $$ INSERT INTO evil.hits VALUES (current_user, 'now()'); SELECT pg_catalog.now() $$;",
    );
    for (i, (op, l, r, ret)) in ops.iter().enumerate() {
        sql.push_str(&format!(
            "CREATE FUNCTION evil.f{i}(a {l}, b {r}) RETURNS {ret} LANGUAGE sql
                 AS $$ INSERT INTO evil.hits VALUES (current_user, '{l} {op} {r}');
                       SELECT a OPERATOR(pg_catalog.{op}) b $$;
             CREATE OPERATOR evil.{op} (LEFTARG = {l}, RIGHTARG = {r}, FUNCTION = evil.f{i});"
        ));
    }
    // Last: from here on an unqualified `text` in this session is the temporary type.
    sql.push_str("CREATE TYPE pg_temp.text AS (x int);");
    // One session, as the hostile writer would hold it (the temporary type lives in it).
    let client = connect(&url_as(&url, &hostile)).await;
    client.batch_execute(&sql).await.expect("the hostile schema");
    client.batch_execute("SET search_path = evil, pg_catalog, public").await.unwrap();
    let writes = "INSERT INTO notifications (id, user_id, title) VALUES (1, 10, 'a'), (2, 20, 'b');
                  UPDATE notifications SET read = true WHERE id = 1;
                  UPDATE notifications SET title = 'bb' WHERE id = 2;
                  DELETE FROM notifications WHERE id = 2;
                  INSERT INTO notifications (id, user_id, title) VALUES (3, 30, 'c');";
    client.batch_execute(writes).await.expect("commit mode");
    // Relay mode, with a relay asleep to wake.
    exec(&url, "SELECT pgsse.set_notify_mode('relay'); UPDATE pgsse.meta SET relay_wake = now() + interval '1 hour'")
        .await;
    client.batch_execute("DELETE FROM notifications").await.unwrap();
    client.batch_execute(writes).await.expect("relay mode");
    // UPDATE and DELETE pinned the path for their own duration only.
    let path: String = client.query_one("SHOW search_path", &[]).await.unwrap().get(0);
    assert_eq!(path, "evil, pg_catalog, public");

    let owner = connect(&url).await;
    let hits: Vec<(String, String)> = owner
        .query("SELECT who, what FROM evil.hits WHERE who <> $1 ORDER BY 1, 2", &[&hostile])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert!(hits.is_empty(), "ran with the trigger owner's rights: {hits:?}");
    // The writer's own statements did use its operators: the trap was live.
    assert!(scalar_i64(&owner, "SELECT count(*) FROM evil.hits").await > 0, "the hostile operators never ran at all");
    // And everything was captured: 2 x (2 created, read, updated, deleted, created) + 2 deleted.
    assert_eq!(scalar_i64(&owner, "SELECT count(*) FROM pgsse.events").await, 14);
}

/// A capture function attached by hand as a BEFORE row trigger: the app's row still goes in (the
/// function returns NEW, and does not test its trigger's shape on every row; `pgsse check` reports
/// the stray trigger, see tests/check.rs).
#[tokio::test]
async fn a_capture_function_made_a_before_trigger_keeps_the_apps_row() {
    let url = fresh_database();
    install_commit_mode(&url).await;
    exec(&url, NOTIFICATIONS).await;
    let client = connect(&url).await;
    let function = trigger_function(&client, "notifications").await;
    exec(
        &url,
        &format!("CREATE TRIGGER mistaken BEFORE INSERT ON notifications FOR EACH ROW EXECUTE FUNCTION {function}"),
    )
    .await;
    client.batch_execute("INSERT INTO notifications (id, user_id, title) VALUES (1, 7, 'kept')").await.unwrap();
    assert_eq!(scalar_i64(&client, "SELECT count(*) FROM notifications WHERE title = 'kept'").await, 1);
}
