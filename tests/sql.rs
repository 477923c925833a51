//! Tests of `sql/install.sql` and `sql/uninstall.sql` against a real PostgreSQL.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Client, NoTls};

const INSTALL: &str = include_str!("../sql/install.sql");
const UNINSTALL: &str = include_str!("../sql/uninstall.sql");

/// Channel the tests use to know that every earlier NOTIFY has been delivered.
const FENCE: &str = "pgsse_test_fence";

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// `url` with its user replaced by `role` (the harness uses trust auth).
fn url_as(url: &str, role: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("url has a scheme");
    let (_, host) = rest.split_once('@').expect("url has a user");
    format!("{scheme}://{role}@{host}")
}

fn db_name(url: &str) -> &str {
    url.rsplit('/').next().unwrap()
}

/// Role names are cluster-wide: make them unique within this test process.
fn unique_role(prefix: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!("{prefix}_{}", N.fetch_add(1, Ordering::SeqCst))
}

/// Runs `sql`, expecting an error; returns its full description (message and hint).
async fn exec_err(url: &str, sql: &str) -> String {
    let client = connect(url).await;
    match client.batch_execute(sql).await {
        Ok(()) => panic!("expected an error from: {sql}"),
        Err(e) => describe_pg_error(&e),
    }
}

/// A raw `LISTEN` connection on pgsse's secret channel (`pgsse.secret.channel`) that collects
/// the payloads it receives.
struct Listener {
    url: String,
    /// The secret channel every payload must arrive on.
    channel: String,
    rx: mpsc::UnboundedReceiver<(String, String)>,
    fences: usize,
    _client: Client,
}

impl Listener {
    async fn new(url: &str) -> Listener {
        let (client, mut connection) = tokio_postgres::connect(url, NoTls).await.unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            // poll_message also drives the connection.
            while let Some(msg) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                match msg {
                    Ok(AsyncMessage::Notification(n)) => {
                        let _ = tx.send((n.channel().to_string(), n.payload().to_string()));
                    }
                    Ok(_) => {}
                    Err(e) => panic!("listener connection failed: {e}"),
                }
            }
        });
        let channel = gateway::channel(url).await;
        client.batch_execute(&format!("LISTEN \"{channel}\"; LISTEN {FENCE}")).await.unwrap();
        Listener { url: url.to_string(), channel, rx, fences: 0, _client: client }
    }

    /// Every `pgsse` payload committed before this call, in order. A NOTIFY on
    /// the fence channel is sent from another connection: notifications come
    /// out of the server's queue in commit order, so once the fence is back,
    /// everything committed before it has been received.
    async fn drain(&mut self) -> Vec<String> {
        self.fences += 1;
        let fence = self.fences.to_string();
        exec(&self.url, &format!("NOTIFY {FENCE}, '{fence}'")).await;
        let mut payloads = Vec::new();
        loop {
            let (channel, payload) = tokio::time::timeout(Duration::from_secs(30), self.rx.recv())
                .await
                .expect("timed out waiting for notifications")
                .expect("listener connection closed");
            if channel == FENCE {
                if payload == fence {
                    return payloads;
                }
                continue;
            }
            assert_eq!(channel, self.channel, "payloads go to the secret channel only");
            assert!(payload.len() < 8000, "NOTIFY payload is {} bytes (must be < 8000)", payload.len());
            payloads.push(payload);
        }
    }
}

/// A row of pgsse.events.
#[derive(Debug, Clone, PartialEq)]
struct Event {
    id: i64,
    tx: String,
    user_id: Option<String>,
    event: String,
    data: Value,
}

impl Event {
    /// The row as an inline payload entry: [id, user_id, event, data].
    fn entry(&self) -> Value {
        json!([self.id, self.user_id, self.event, self.data])
    }
}

async fn events_after(client: &Client, after: i64) -> Vec<Event> {
    client
        .query(
            "SELECT id, tx::text, user_id, event, data::text FROM pgsse.events \
             WHERE id > $1 ORDER BY id",
            &[&after],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| Event {
            id: r.get(0),
            tx: r.get(1),
            user_id: r.get(2),
            event: r.get(3),
            data: serde_json::from_str(r.get::<_, &str>(4)).unwrap(),
        })
        .collect()
}

async fn scalar_i64(client: &Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).await.unwrap().get(0)
}

/// Follows the log and the NOTIFYs of one database, a statement at a time.
struct Tracker {
    /// pgsse.secret.key: every payload must be signed with it.
    key: Vec<u8>,
    url: String,
    client: Client,
    listener: Listener,
    last_id: i64,
    /// The payloads of the last `collect`, as received.
    raw: Vec<String>,
}

impl Tracker {
    async fn new(url: &str) -> Tracker {
        let client = connect(url).await;
        let last_id = scalar_i64(&client, "SELECT COALESCE(max(id), 0) FROM pgsse.events").await;
        let key: Vec<u8> = client.query_one("SELECT key FROM pgsse.secret", &[]).await.unwrap().get(0);
        Tracker { key, url: url.to_string(), listener: Listener::new(url).await, client, last_id, raw: Vec::new() }
    }

    /// Runs `sql` (as the superuser); returns the new log rows and the
    /// payloads sent.
    async fn run(&mut self, sql: &str) -> (Vec<Event>, Vec<Value>) {
        exec(&self.url, sql).await;
        self.collect().await
    }

    /// The log rows and payloads that appeared since the last call.
    async fn collect(&mut self) -> (Vec<Event>, Vec<Value>) {
        let payloads = self.listener.drain().await;
        let events = events_after(&self.client, self.last_id).await;
        if let Some(e) = events.last() {
            self.last_id = e.id;
        }
        let parsed = payloads
            .iter()
            .map(|p| {
                let json = verify_signature(&self.key, p);
                serde_json::from_str(json).unwrap_or_else(|e| panic!("payload {p}: {e}"))
            })
            .collect();
        self.raw = payloads;
        (events, parsed)
    }

    /// Runs `sql` and checks that it logged exactly `expected` (user_id, data)
    /// rows, in that order, with event "notification", in one transaction,
    /// announced by a single inline payload (or nothing when `expected` is
    /// empty).
    async fn expect(&mut self, sql: &str, expected: Vec<(Option<&str>, Value)>) -> Vec<Event> {
        let (events, payloads) = self.run(sql).await;
        let got: Vec<(Option<&str>, &Value)> = events.iter().map(|e| (e.user_id.as_deref(), &e.data)).collect();
        let want: Vec<(Option<&str>, &Value)> = expected.iter().map(|(u, d)| (*u, d)).collect();
        assert_eq!(got, want, "log rows after: {sql}");
        assert!(events.iter().all(|e| e.event == "notification"));
        if events.is_empty() {
            assert!(payloads.is_empty(), "no NOTIFY expected after {sql}: {payloads:?}");
        } else {
            assert_eq!(payloads.len(), 1, "one NOTIFY expected after {sql}: {payloads:?}");
            assert_inline(&payloads[0], &events);
        }
        events
    }
}

/// Checks the `<64 hex HMAC-SHA256><json>` form against the key; returns the JSON.
fn verify_signature<'a>(key: &[u8], payload: &'a str) -> &'a str {
    assert!(payload.len() > 64 && payload.is_char_boundary(64), "payload too short to be signed: {payload}");
    let (mac, json) = payload.split_at(64);
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    let want: String = ring::hmac::sign(&key, json.as_bytes()).as_ref().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(mac, want, "signature of {json}");
    json
}

/// `payload` is the inline form of exactly `events`.
fn assert_inline(payload: &Value, events: &[Event]) {
    let tx = &events[0].tx;
    assert!(events.iter().all(|e| &e.tx == tx), "one transaction");
    let entries: Vec<Value> = events.iter().map(Event::entry).collect();
    assert_eq!(payload, &json!({ "t": tx, "e": entries }));
}

/// `payload` is a reference to exactly `events`.
fn assert_reference(payload: &Value, events: &[Event]) {
    let tx = &events[0].tx;
    assert!(events.iter().all(|e| &e.tx == tx), "one transaction");
    let min = events.iter().map(|e| e.id).min().unwrap();
    let max = events.iter().map(|e| e.id).max().unwrap();
    assert_eq!(payload, &json!({ "t": tx, "r": [min, max] }));
}

/// What the gateway reads for a reference payload.
async fn resolve_reference(client: &Client, payload: &Value) -> Vec<Event> {
    let tx = payload["t"].as_str().unwrap();
    let min = payload["r"][0].as_i64().unwrap();
    let max = payload["r"][1].as_i64().unwrap();
    client
        .query(
            "SELECT id, tx::text, user_id, event, data::text FROM pgsse.events \
             WHERE tx = $1::text::xid8 AND id BETWEEN $2 AND $3 ORDER BY id",
            &[&tx, &min, &max],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| Event {
            id: r.get(0),
            tx: r.get(1),
            user_id: r.get(2),
            event: r.get(3),
            data: serde_json::from_str(r.get::<_, &str>(4)).unwrap(),
        })
        .collect()
}

const NOTIFICATIONS: &str = "
    CREATE TABLE notifications (
        id      integer PRIMARY KEY,
        user_id integer,
        title   text,
        read    boolean DEFAULT false,
        read_at timestamptz,
        secret  text
    );
    SELECT pgsse.watch('notifications', 'user_id', exclude_columns => '{secret}');
";

/// The number of trigger functions pgsse.watch() generated (pgsse.capture_<table oid>()).
const GENERATED_CAPTURES: &str =
    "SELECT count(*) FROM pg_proc WHERE pronamespace = 'pgsse'::regnamespace AND proname ~ '^capture_[0-9]+(_[0-9]+)?$'";

/// The three triggers pgsse.watch() of an earlier version created: the generic
/// pgsse.capture() with the columns as arguments.
fn old_style_watch(tbl: &str, user: &str, id: &str, read: &str, exclude: &str) -> String {
    let args = format!("'{user}', '{id}', '{read}', '{exclude}'");
    format!(
        "CREATE TRIGGER pgsse_insert AFTER INSERT ON {tbl} REFERENCING NEW TABLE AS pgsse_new
             FOR EACH STATEMENT EXECUTE FUNCTION pgsse.capture({args});
         CREATE TRIGGER pgsse_update AFTER UPDATE ON {tbl} REFERENCING OLD TABLE AS pgsse_old NEW TABLE AS pgsse_new
             FOR EACH STATEMENT EXECUTE FUNCTION pgsse.capture({args});
         CREATE TRIGGER pgsse_delete AFTER DELETE ON {tbl} REFERENCING OLD TABLE AS pgsse_old
             FOR EACH STATEMENT EXECUTE FUNCTION pgsse.capture({args});"
    )
}

/// The function the triggers of `tbl` run, as regprocedure text (one for all three).
async fn trigger_function(client: &Client, tbl: &str) -> String {
    let rows = client
        .query(
            "SELECT DISTINCT tgfoid::regprocedure::text FROM pg_trigger \
             WHERE tgrelid = $1::text::regclass AND tgname IN ('pgsse_insert', 'pgsse_update', 'pgsse_delete')",
            &[&tbl],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 1, "{tbl}: one function for the three triggers");
    rows[0].get(0)
}

// ---------------------------------------------------------------------------
// Install / uninstall
// ---------------------------------------------------------------------------

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

    exec(&url, INSTALL).await;
    exec(&url, INSTALL).await;

    assert_eq!(events_after(&client, 0).await, before, "events survive re-install");
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
        3,
        "events, meta and secret"
    );
    assert_eq!(
        count("SELECT count(*) FROM pg_indexes WHERE schemaname = 'pgsse' AND tablename = 'events'").await,
        4,
        "primary key + (user_id, tx) + (tx) + (created_at)"
    );
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
        16,
        "plus _send, history, new_history, mark, capture_sessions, watch_sessions, unwatch_sessions, _capture_sql, \
         _generate_capture, _drop_unused_captures and the generated capture_<oid> of notifications"
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
        3
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
        3
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
    exec(&owner_url, INSTALL).await;
    exec(&owner_url, INSTALL).await;
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

#[tokio::test]
async fn camel_case_table() {
    let url = fresh_database();
    exec(&url, INSTALL).await;
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

// ---------------------------------------------------------------------------
// Row changes -> log rows and payloads
// ---------------------------------------------------------------------------

#[tokio::test]
async fn row_changes_map_to_events() {
    let url = fresh_database();
    exec(&url, INSTALL).await;
    exec(&url, NOTIFICATIONS).await;
    let mut t = Tracker::new(&url).await;

    let row = |id: i64, user: Option<i64>, title: &str, read: Option<bool>, read_at: Option<&str>| json!({"id": id, "user_id": user, "title": title, "read": read, "read_at": read_at});
    let created = |r: Value| json!({"type": "created", "notification": r});
    let updated = |r: Value| json!({"type": "updated", "notification": r});
    let read = |id: i64| json!({"type": "read", "notificationId": id});
    let deleted = |id: i64| json!({"type": "deleted", "notificationId": id});

    // INSERT: one created per row with a user (ordered by id; NULL user skipped,
    // excluded column left out).
    t.expect(
        "INSERT INTO notifications (id, user_id, title, secret) VALUES
             (2, 20, 'b', 's'), (1, 10, 'a', 's'), (3, NULL, 'c', 's'), (4, 10, 'd', 's')",
        vec![
            (Some("10"), created(row(1, Some(10), "a", Some(false), None))),
            (Some("20"), created(row(2, Some(20), "b", Some(false), None))),
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
    exec(&url, INSTALL).await;
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
    exec(&url, INSTALL).await;
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
    exec(&url, INSTALL).await;
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

// ---------------------------------------------------------------------------
// watch() errors
// ---------------------------------------------------------------------------

#[tokio::test]
async fn watch_reports_helpful_errors() {
    let url = fresh_database();
    exec(&url, INSTALL).await;
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
    exec(&url, INSTALL).await;
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
    assert_eq!(row.get::<_, &str>(1), "{\"search_path=pg_catalog, pg_temp\"}");
    let src: &str = row.get(2);
    // Static SQL with the column names written in: PL/pgSQL caches its plans.
    assert!(!src.contains("EXECUTE"), "{src}");
    assert!(src.contains("t.user_id::text AS u"), "{src}");
    assert!(src.contains("'{secret}'::text[]"), "{src}");
    let comment: &str = row.get(3);
    assert!(comment.contains("public.notifications"), "{comment}");
    assert!(!row.get::<_, bool>(4), "EXECUTE revoked from PUBLIC");
    assert_eq!(row.get::<_, &str>(5), "postgres", "owned by the installing role");
    // Every internal function is revoked from PUBLIC too.
    assert_eq!(
        scalar_i64(
            &client,
            "SELECT count(*) FROM pg_proc WHERE pronamespace = 'pgsse'::regnamespace \
             AND (proname LIKE '\\_%' OR proname ~ '^capture') \
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
    exec(&url, INSTALL).await;
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
    exec(&url, INSTALL).await;
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

/// A table owned by another role than the one that installed pgsse.
#[tokio::test]
async fn watch_by_another_table_owner() {
    let url = fresh_database();
    let pg = shared_cluster();
    let owner = unique_role("sql_tblowner");
    pg.create_role(&owner, false);
    exec(&url, INSTALL).await;
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

/// After a dump and restore, tables have new oids: a table's triggers may use
/// a function named after another table's (new) oid. Watching that other
/// table must leave them alone.
#[tokio::test]
async fn generated_function_names_survive_new_oids() {
    let url = fresh_database();
    exec(&url, INSTALL).await;
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
