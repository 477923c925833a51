//! Row changes becoming log rows and signed NOTIFY payloads: each kind of change, quoted names,
//! bulk statements and large rows sent by reference, payload sizes, and `pgsse.publish()`.

mod common;

use common::sql::*;
use common::*;
use serde_json::{json, Value};

#[tokio::test]
async fn camel_case_table() {
    let url = fresh_database();
    install_commit_mode(&url).await;
    exec(
        &url,
        "CREATE TABLE \"Notification\" (
             id serial,
             \"userId\" text,
             \"isRead\" boolean DEFAULT false,
             title text,
             \"createdAt\" timestamptz DEFAULT now()
         );
         SELECT pgsse.watch('\"Notification\"', 'userId', read_column => 'isRead');",
    )
    .await;
    let mut t = Tracker::new(&url).await;

    let (events, payloads) =
        t.run("INSERT INTO \"Notification\" (\"userId\", title) VALUES ('u1', 'one'), ('u2', 'two')").await;
    assert_eq!(events.len(), 2);
    assert_inline(&payloads[0], &events);
    assert_eq!(events[0].user_id.as_deref(), Some("u1"));
    assert_eq!(events[1].user_id.as_deref(), Some("u2"));
    let row = &events[0].data["notification"];
    assert_eq!(events[0].data["type"], "created");
    assert_eq!(row["id"], 1);
    assert_eq!(row["userId"], "u1");
    assert_eq!(row["isRead"], false);
    assert_eq!(row["title"], "one");
    assert!(row["createdAt"].is_string());

    t.expect(
        "UPDATE \"Notification\" SET \"isRead\" = true WHERE \"userId\" = 'u1'",
        vec![(Some("u1"), json!({"type": "read", "notificationId": 1}))],
    )
    .await;
    t.expect(
        "DELETE FROM \"Notification\" WHERE \"userId\" = 'u2'",
        vec![(Some("u2"), json!({"type": "deleted", "notificationId": 2}))],
    )
    .await;

    // The same table in a camelCase schema, with a uuid id.
    exec(
        &url,
        "CREATE SCHEMA \"App\";
         CREATE TABLE \"App\".\"Notification\" (
             \"notificationId\" uuid PRIMARY KEY,
             \"userId\" integer,
             \"isRead\" boolean
         );
         SELECT pgsse.watch('\"App\".\"Notification\"', 'userId', 'notificationId', 'isRead');",
    )
    .await;
    let uuid = "0b7d6e2c-3f55-4b6f-9d52-6a3e8f1c2d4e";
    t.expect(
        &format!("INSERT INTO \"App\".\"Notification\" VALUES ('{uuid}', 5, NULL)"),
        vec![(
            Some("5"),
            json!({"type": "created", "notification": {"notificationId": uuid, "userId": 5, "isRead": null}}),
        )],
    )
    .await;
    t.expect(
        "UPDATE \"App\".\"Notification\" SET \"isRead\" = true",
        vec![(Some("5"), json!({"type": "read", "notificationId": uuid}))],
    )
    .await;
}

#[tokio::test]
async fn row_changes_map_to_events() {
    let url = fresh_database();
    install_commit_mode(&url).await;
    exec(&url, NOTIFICATIONS).await;
    let mut t = Tracker::new(&url).await;

    let row = |id: i64, user: Option<i64>, title: &str, read: Option<bool>, read_at: Option<&str>| json!({"id": id, "user_id": user, "title": title, "read": read, "read_at": read_at});
    let created = |r: Value| json!({"type": "created", "notification": r});
    let updated = |r: Value| json!({"type": "updated", "notification": r});
    let read = |id: i64| json!({"type": "read", "notificationId": id});
    let deleted = |id: i64| json!({"type": "deleted", "notificationId": id});

    // INSERT: one created per row with a user (in the order inserted; NULL user skipped,
    // excluded column left out).
    t.expect(
        "INSERT INTO notifications (id, user_id, title, secret) VALUES
             (2, 20, 'b', 's'), (1, 10, 'a', 's'), (3, NULL, 'c', 's'), (4, 10, 'd', 's')",
        vec![
            (Some("20"), created(row(2, Some(20), "b", Some(false), None))),
            (Some("10"), created(row(1, Some(10), "a", Some(false), None))),
            (Some("10"), created(row(4, Some(10), "d", Some(false), None))),
        ],
    )
    .await;

    // Read flip, with another column changed alongside.
    t.expect(
        "UPDATE notifications SET read = true, read_at = '2024-01-02T03:04:05Z' WHERE id = 1",
        vec![(Some("10"), read(1))],
    )
    .await;
    // No-op: already read.
    t.expect("UPDATE notifications SET read = true WHERE id = 1", vec![]).await;
    // Only an excluded column changed.
    t.expect("UPDATE notifications SET secret = 'x' WHERE id = 2", vec![]).await;
    // Other update.
    t.expect(
        "UPDATE notifications SET title = 'bb' WHERE id = 2",
        vec![(Some("20"), updated(row(2, Some(20), "bb", Some(false), None)))],
    )
    .await;
    // Un-read is an update.
    t.expect(
        "UPDATE notifications SET read = false, read_at = NULL WHERE id = 1",
        vec![(Some("10"), updated(row(1, Some(10), "a", Some(false), None)))],
    )
    .await;
    // NULL -> true is a read too.
    t.expect(
        "UPDATE notifications SET read = NULL WHERE id = 4",
        vec![(Some("10"), updated(row(4, Some(10), "d", None, None)))],
    )
    .await;
    t.expect("UPDATE notifications SET read = true WHERE id = 4", vec![(Some("10"), read(4))]).await;
    // User change: deleted for the old user, then created for the new one.
    t.expect(
        "UPDATE notifications SET user_id = 30 WHERE id = 2",
        vec![(Some("20"), deleted(2)), (Some("30"), created(row(2, Some(30), "bb", Some(false), None)))],
    )
    .await;
    // Rows without a user are never logged...
    t.expect("UPDATE notifications SET title = 'cc' WHERE id = 3", vec![]).await;
    // ...until they get one...
    t.expect(
        "UPDATE notifications SET user_id = 40 WHERE id = 3",
        vec![(Some("40"), created(row(3, Some(40), "cc", Some(false), None)))],
    )
    .await;
    // ...and when they lose it, only the old user hears about it.
    t.expect("UPDATE notifications SET user_id = NULL WHERE id = 3", vec![(Some("40"), deleted(3))]).await;
    t.expect("DELETE FROM notifications WHERE id = 3", vec![]).await;
    // A multi-row statement mixing kinds: one payload, ordered by id,
    // unchanged rows skipped.
    t.expect(
        "UPDATE notifications SET
             read = CASE WHEN id = 2 THEN true ELSE read END,
             title = CASE WHEN id = 4 THEN 'dd' ELSE title END,
             user_id = CASE WHEN id = 1 THEN 11 ELSE user_id END",
        vec![
            (Some("10"), deleted(1)),
            (Some("11"), created(row(1, Some(11), "a", Some(false), None))),
            (Some("30"), read(2)),
            (Some("10"), updated(row(4, Some(10), "dd", Some(true), None))),
        ],
    )
    .await;
    // A changed id is a delete of the old id and a create of the new one.
    t.expect(
        "UPDATE notifications SET id = 5 WHERE id = 4",
        vec![(Some("10"), deleted(4)), (Some("10"), created(row(5, Some(10), "dd", Some(true), None)))],
    )
    .await;
    // DELETE: one deleted per row with a user, ordered by id.
    t.expect(
        "DELETE FROM notifications",
        vec![(Some("11"), deleted(1)), (Some("30"), deleted(2)), (Some("10"), deleted(5))],
    )
    .await;
    // Statements that touch nothing send nothing.
    t.expect("DELETE FROM notifications", vec![]).await;
    t.expect("UPDATE notifications SET title = 'x'", vec![]).await;

    // A rolled back transaction leaves no rows and sends nothing.
    t.expect("BEGIN; INSERT INTO notifications (id, user_id) VALUES (9, 9); ROLLBACK;", vec![]).await;
    // Several statements in one transaction: one payload each, same tx.
    let (events, payloads) = t
        .run(
            "BEGIN;
             INSERT INTO notifications (id, user_id, title) VALUES (10, 1, 'x');
             UPDATE notifications SET read = true WHERE id = 10;
             COMMIT;",
        )
        .await;
    assert_eq!(events.len(), 2);
    assert_eq!(payloads.len(), 2);
    assert_inline(&payloads[0], &events[..1]);
    assert_inline(&payloads[1], &events[1..]);

    // Text ids stay strings; a table without a read column always says "updated".
    exec(
        &url,
        "CREATE TABLE alerts (code text PRIMARY KEY, owner text, read boolean);
         SELECT pgsse.watch('alerts', 'owner', id_column => 'code', read_column => NULL);",
    )
    .await;
    t.expect(
        "INSERT INTO alerts VALUES ('A-1', 'bob', false)",
        vec![(Some("bob"), json!({"type": "created", "notification": {"code": "A-1", "owner": "bob", "read": false}}))],
    )
    .await;
    t.expect(
        "UPDATE alerts SET read = true",
        vec![(Some("bob"), json!({"type": "updated", "notification": {"code": "A-1", "owner": "bob", "read": true}}))],
    )
    .await;
    t.expect("DELETE FROM alerts", vec![(Some("bob"), json!({"type": "deleted", "notificationId": "A-1"}))]).await;

    // unwatch stops the capture; it is idempotent.
    exec(&url, "SELECT pgsse.unwatch('alerts'); SELECT pgsse.unwatch('alerts');").await;
    t.expect("INSERT INTO alerts VALUES ('A-2', 'bob', false)", vec![]).await;
}

#[tokio::test]
async fn bulk_update_sends_one_reference() {
    let url = fresh_database();
    install_commit_mode(&url).await;
    exec(
        &url,
        "CREATE TABLE notifications (
             id bigserial PRIMARY KEY,
             user_id text NOT NULL,
             title text,
             read boolean NOT NULL DEFAULT false,
             read_at timestamptz
         );
         SELECT pgsse.watch('notifications', 'user_id');",
    )
    .await;
    let mut t = Tracker::new(&url).await;

    // A single-row insert is inline and parses as JSON.
    let (events, payloads) = t.run("INSERT INTO notifications (user_id, title) VALUES ('u1', 'first')").await;
    assert_eq!(events.len(), 1);
    assert_eq!(payloads.len(), 1);
    assert_inline(&payloads[0], &events);

    // 999 more in one statement: one NOTIFY, too large to inline.
    let (events, payloads) = t
        .run(
            "INSERT INTO notifications (user_id, title)
             SELECT 'u1', 'notification #' || i FROM generate_series(2, 1000) i",
        )
        .await;
    assert_eq!(events.len(), 999);
    assert_eq!(payloads.len(), 1);
    assert_reference(&payloads[0], &events);

    // markAllAsRead.
    let (events, payloads) =
        t.run("UPDATE notifications SET read = true, read_at = now() WHERE user_id = 'u1' AND NOT read").await;
    assert_eq!(payloads.len(), 1, "exactly one NOTIFY for the bulk update");
    assert_eq!(events.len(), 1000);
    assert!(events.iter().all(|e| e.data["type"] == "read" && e.user_id.as_deref() == Some("u1")));
    let ids: Vec<i64> = events.iter().map(|e| e.data["notificationId"].as_i64().unwrap()).collect();
    assert_eq!(ids, (1..=1000).collect::<Vec<i64>>(), "ordered by the table's id");
    assert_reference(&payloads[0], &events);
    assert_eq!(resolve_reference(&t.client, &payloads[0]).await, events);

    // Doing it again changes nothing and sends nothing.
    let (events, payloads) = t.run("UPDATE notifications SET read = true WHERE user_id = 'u1'").await;
    assert!(events.is_empty());
    assert!(payloads.is_empty());
}

#[tokio::test]
async fn large_rows_are_sent_by_reference() {
    let url = fresh_database();
    install_commit_mode(&url).await;
    exec(&url, NOTIFICATIONS).await;
    let mut t = Tracker::new(&url).await;

    // A 100 KB row.
    let (events, payloads) =
        t.run("INSERT INTO notifications (id, user_id, title) VALUES (1, 1, repeat('x', 100000))").await;
    assert_eq!(events.len(), 1);
    assert_eq!(payloads.len(), 1);
    assert_reference(&payloads[0], &events);
    assert_eq!(
        events[0].data["notification"]["title"].as_str().unwrap().len(),
        100_000,
        "the log row holds the whole row"
    );
    assert_eq!(resolve_reference(&t.client, &payloads[0]).await, events);

    // Around the 7900-byte limit (signature included): inline up to it, by reference past it.
    // Sizes are counted in bytes, not characters.
    let mut inline = 0;
    let mut referenced = 0;
    for (i, len) in (7636..8036).step_by(25).enumerate() {
        for (ch, bytes) in [("x", 1), ("é", 2)] {
            let id = 10 + 2 * i as i64 + bytes;
            let (events, payloads) = t
                .run(&format!(
                    "INSERT INTO notifications (id, user_id, title) \
                     VALUES ({id}, 1, repeat('{ch}', {}))",
                    len / bytes
                ))
                .await;
            assert_eq!(payloads.len(), 1);
            let inline_form = json!({"t": events[0].tx, "e": [events[0].entry()]});
            let raw = t.raw[0].len();
            if payloads[0].get("e").is_some() {
                inline += 1;
                assert_eq!(payloads[0], inline_form);
                assert!(raw <= 7900, "inline payload of {raw} bytes");
            } else {
                referenced += 1;
                assert_reference(&payloads[0], &events);
                // PostgreSQL's JSON text of the inline form would have been too big.
                let pg_len = scalar_i64(
                    &t.client,
                    &format!(
                        "SELECT octet_length(format('{{\"t\":\"%s\",\"e\":%s}}', tx, \
                         json_build_array(json_build_array(id, user_id, event, data))))::bigint \
                         FROM pgsse.events WHERE id = {}",
                        events[0].id
                    ),
                )
                .await;
                assert!(pg_len + 64 > 7900, "referenced although inline is {pg_len} bytes");
            }
        }
    }
    assert!(inline > 0 && referenced > 0, "{inline} inline, {referenced} referenced");
}

// ---------------------------------------------------------------------------
// publish()
// ---------------------------------------------------------------------------

#[tokio::test]
async fn publish_logs_and_announces() {
    let url = fresh_database();
    install_commit_mode(&url).await;
    let mut t = Tracker::new(&url).await;

    let id = scalar_i64(&t.client, "SELECT pgsse.publish(NULL, '{\"motd\": \"hi\"}')").await;
    let (events, payloads) = t.collect().await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].id, id);
    assert_eq!(events[0].user_id, None, "broadcast");
    assert_eq!(events[0].event, "notification");
    assert_eq!(events[0].data, json!({"motd": "hi"}));
    assert_inline(&payloads[0], &events);
    assert_eq!(payloads[0]["e"][0][1], Value::Null);

    let id = scalar_i64(&t.client, "SELECT pgsse.publish('u1', '[1, 2, 3]', event => 'badge-count')").await;
    let (events, payloads) = t.collect().await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].id, id);
    assert_eq!(events[0].user_id.as_deref(), Some("u1"));
    assert_eq!(events[0].event, "badge-count");
    assert_eq!(events[0].data, json!([1, 2, 3]));
    assert_inline(&payloads[0], &events);

    // A large publish is sent by reference.
    scalar_i64(&t.client, "SELECT pgsse.publish('u1', jsonb_build_object('blob', repeat('z', 20000)))").await;
    let (events, payloads) = t.collect().await;
    assert_eq!(events.len(), 1);
    assert_reference(&payloads[0], &events);

    // Bad event names.
    for bad in ["", "a\nb", "a\rb", "line\r\n"] {
        let err = t.client.query_one("SELECT pgsse.publish('u1', '{}', $1)", &[&bad]).await.unwrap_err();
        let msg = describe_pg_error(&err);
        assert!(msg.contains("invalid event name"), "{bad:?}: {msg}");
    }
    let err = exec_err(&url, "SELECT pgsse.publish('u1', '{}', NULL)").await;
    assert!(err.contains("invalid event name"), "{err}");
    // NUL cannot even reach the function.
    let err = t.client.query_one("SELECT pgsse.publish('u1', '{}', $1)", &[&"a\0b"]).await.unwrap_err();
    assert!(err.as_db_error().is_some(), "{err}");
    let err = exec_err(&url, "SELECT pgsse.publish('u1', NULL)").await;
    assert!(err.contains("data must not be NULL"), "{err}");
    let (events, payloads) = t.collect().await;
    assert!(events.is_empty() && payloads.is_empty());

    // Rolled back: nothing.
    exec(&url, "BEGIN; SELECT pgsse.publish('u1', '{}'); ROLLBACK;").await;
    let (events, payloads) = t.collect().await;
    assert!(events.is_empty() && payloads.is_empty());
}

/// Commit mode with the row-level INSERT trigger: pgsse_announce sends one NOTIFY per statement
/// with exactly the rows no earlier statement of the transaction announced: across UPDATEs,
/// other tables (the generic function), publish(), a savepoint rolled back, an INSERT of no rows,
/// and whatever the session had set pgsse.announced to.
#[tokio::test]
async fn commit_mode_announces_every_row_once_per_statement() {
    let url = fresh_database();
    install_commit_mode(&url).await;
    exec(
        &url,
        &format!(
            "CREATE TABLE notifications (id serial PRIMARY KEY, user_id text, title text, read boolean DEFAULT false);
             SELECT pgsse.watch('notifications', 'user_id');
             CREATE TABLE legacy (id int PRIMARY KEY, owner text, read boolean);
             {}",
            old_style_watch("legacy", "owner", "id", "read", "{}")
        ),
    )
    .await;
    let mut t = Tracker::new(&url).await;
    let (events, payloads) = t
        .run(
            "SET pgsse.announced = 'garbage';
             BEGIN;
             INSERT INTO notifications (user_id, title) VALUES ('a', '1'), ('b', '2');
             UPDATE notifications SET read = true WHERE user_id = 'a';
             INSERT INTO legacy VALUES (1, 'c', false);
             SELECT pgsse.publish('d', '{}');
             SAVEPOINT s;
             INSERT INTO notifications (user_id, title) VALUES ('e', 'rolled back');
             ROLLBACK TO SAVEPOINT s;
             INSERT INTO notifications (user_id, title) SELECT 'f', 'none' WHERE false;
             INSERT INTO notifications (user_id, title) VALUES ('g', '3'), (NULL, 'nobody');
             COMMIT;",
        )
        .await;
    let summary: Vec<(&str, &str)> = events
        .iter()
        .map(|e| (e.user_id.as_deref().unwrap_or_default(), e.data["type"].as_str().unwrap_or("publish")))
        .collect();
    assert_eq!(
        summary,
        [("a", "created"), ("b", "created"), ("a", "read"), ("c", "created"), ("d", "publish"), ("g", "created")]
    );
    assert_eq!(payloads.len(), 5, "{payloads:?}");
    for (p, range) in payloads.iter().zip([0..2, 2..3, 3..4, 4..5, 5..6]) {
        assert_inline(p, &events[range]);
    }
    // A later transaction of the same session starts from nothing announced.
    let (events, payloads) =
        t.run("SET pgsse.announced = '1/999999999'; INSERT INTO notifications (user_id) VALUES ('h')").await;
    assert_eq!(events.len(), 1);
    assert_eq!(payloads.len(), 1);
    assert_inline(&payloads[0], &events);
}

/// Commit mode's announcement reads the statement's rows back on the `tx` index, whatever the size
/// of the log, or its statistics, when the writer's session cached its plan: a plan that reads the
/// whole log would do so on every INSERT.
#[tokio::test]
async fn a_commit_mode_insert_never_scans_the_whole_log() {
    let url = fresh_database();
    install_commit_mode(&url).await;
    exec(
        &url,
        "CREATE TABLE notifications (id serial PRIMARY KEY, user_id text, title text); \
                SELECT pgsse.watch('notifications', 'user_id', read_column => NULL)",
    )
    .await;
    let writer = connect(&url).await;
    let insert = "INSERT INTO notifications (user_id, title) VALUES ('u1', 'x')";
    let bulk = "INSERT INTO notifications (user_id, title) SELECT 'u2', 'bulk' FROM generate_series(1, 5000)";
    // Plans cached while the log is small, and while its statistics say it is one large transaction.
    for analyzed in [false, true] {
        if analyzed {
            exec(&url, &format!("{bulk}; ANALYZE pgsse.events")).await;
        }
        // More than five statements: PL/pgSQL settles on a generic plan.
        for _ in 0..8 {
            writer.batch_execute(insert).await.unwrap();
        }
    }
    // On the writer's own session: another session's statistics (its read-back of these 5,000
    // rows) could reach the counters after `before`, whenever that session exits.
    writer.batch_execute(bulk).await.unwrap();
    let before = log_rows_read(&writer).await;
    for _ in 0..6 {
        writer.batch_execute(insert).await.unwrap();
    }
    // Six INSERTs into a log of 5,000+ rows, each announcing its one row.
    let read = log_rows_read(&writer).await - before;
    assert!(read < 500, "commit-mode INSERTs read {read} rows of pgsse.events: a plan walks the whole log");
}
