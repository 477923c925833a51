//! The database side under test: `sql/install.sql` and `sql/uninstall.sql`, the log rows and the
//! signed NOTIFY payloads they produce, and roles to run them as.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Client, NoTls};

use super::{connect, describe_pg_error, exec, gateway};

pub const INSTALL: &str = include_str!("../../sql/install.sql");
pub const UNINSTALL: &str = include_str!("../../sql/uninstall.sql");

/// Channel the tests use to know that every earlier NOTIFY has been delivered.
pub const FENCE: &str = "pgsse_test_fence";

/// `url` with its user replaced by `role` (the harness uses trust auth).
pub fn url_as(url: &str, role: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("url has a scheme");
    let (_, host) = rest.split_once('@').expect("url has a user");
    format!("{scheme}://{role}@{host}")
}

pub fn db_name(url: &str) -> &str {
    url.rsplit('/').next().unwrap()
}

/// Role names are cluster-wide: make them unique within this test process.
pub fn unique_role(prefix: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!("{prefix}_{}", N.fetch_add(1, Ordering::SeqCst))
}

/// Runs `sql`, expecting an error; returns its full description (message and hint).
pub async fn exec_err(url: &str, sql: &str) -> String {
    let client = connect(url).await;
    match client.batch_execute(sql).await {
        Ok(()) => panic!("expected an error from: {sql}"),
        Err(e) => describe_pg_error(&e),
    }
}

/// Installs pgsse in commit mode: the tests that read what triggers NOTIFY (a fresh install
/// starts in relay mode, where writers send nothing).
pub async fn install_commit_mode(url: &str) {
    super::exec(url, INSTALL).await;
    super::exec(url, "SELECT pgsse.set_notify_mode('commit')").await;
}

/// A raw `LISTEN` connection on pgsse's secret channel (`pgsse.secret.channel`) that collects
/// the payloads it receives.
pub struct Listener {
    url: String,
    /// The secret channel every payload must arrive on.
    pub channel: String,
    rx: mpsc::UnboundedReceiver<(String, String)>,
    fences: usize,
    _client: Client,
}

impl Listener {
    pub async fn new(url: &str) -> Listener {
        let channel = gateway::channel(url).await;
        Self::on(url, channel).await
    }

    /// A listener on another channel than pgsse's payloads (e.g. the relay's wake channel).
    pub async fn on(url: &str, channel: String) -> Listener {
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
        client.batch_execute(&format!("LISTEN \"{channel}\"; LISTEN {FENCE}")).await.unwrap();
        Listener { url: url.to_string(), channel, rx, fences: 0, _client: client }
    }

    /// Every `pgsse` payload committed before this call, in order. A NOTIFY on
    /// the fence channel is sent from another connection: notifications come
    /// out of the server's queue in commit order, so once the fence is back,
    /// everything committed before it has been received.
    pub async fn drain(&mut self) -> Vec<String> {
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
            assert_eq!(channel, self.channel, "payloads go to the listened channel only");
            assert!(payload.len() < 8000, "NOTIFY payload is {} bytes (must be < 8000)", payload.len());
            payloads.push(payload);
        }
    }
}

/// A row of pgsse.events.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub id: i64,
    pub tx: String,
    pub user_id: Option<String>,
    pub event: String,
    pub data: Value,
}

impl Event {
    /// A row of `SELECT id, tx::text, user_id, event, data::text FROM pgsse.events`.
    fn from_row(r: &tokio_postgres::Row) -> Event {
        Event {
            id: r.get(0),
            tx: r.get(1),
            user_id: r.get(2),
            event: r.get(3),
            data: serde_json::from_str(r.get::<_, &str>(4)).unwrap(),
        }
    }

    /// The row as an inline payload entry: [id, user_id, event, data].
    pub fn entry(&self) -> Value {
        json!([self.id, self.user_id, self.event, self.data])
    }
}

pub async fn events_after(client: &Client, after: i64) -> Vec<Event> {
    client
        .query(
            "SELECT id, tx::text, user_id, event, data::text FROM pgsse.events \
             WHERE id > $1 ORDER BY id",
            &[&after],
        )
        .await
        .unwrap()
        .iter()
        .map(Event::from_row)
        .collect()
}

/// The indexes of `pgsse.events` as this version creates them. Each costs every writer an index
/// insert: the key (tx, id) serves the relay, catch-ups, reference payloads and retention;
/// (user_id, tx) serves replays.
pub const LOG_INDEXES: &str = "CREATE UNIQUE INDEX events_pkey ON pgsse.events USING btree (tx, id); \
                               CREATE INDEX events_user_id_tx_idx ON pgsse.events USING btree (user_id, tx)";

/// The indexes of `pgsse.events`, as `LOG_INDEXES` writes them.
pub async fn log_indexes(url: &str) -> String {
    let c = super::connect(url).await;
    let row = c
        .query_one(
            "SELECT string_agg(indexdef, '; ' ORDER BY indexname) FROM pg_indexes \
              WHERE schemaname = 'pgsse' AND tablename = 'events'",
            &[],
        )
        .await
        .expect("the log's indexes");
    row.get(0)
}

/// Rows of `pgsse.events` read so far, by sequential and index scans, including this session's
/// latest statements: a query whose cached plan walks the whole log shows here.
pub async fn log_rows_read(c: &Client) -> i64 {
    c.batch_execute("SELECT pg_stat_force_next_flush()").await.expect("flush");
    let row = c
        .query_one(
            "SELECT pg_stat_clear_snapshot(), seq_tup_read + coalesce(idx_tup_fetch, 0) \
               FROM pg_stat_user_tables WHERE relid = 'pgsse.events'::regclass",
            &[],
        )
        .await
        .expect("pg_stat_user_tables");
    row.get::<_, i64>(1)
}

pub async fn scalar_i64(client: &Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).await.unwrap().get(0)
}

/// Follows the log and the NOTIFYs of one database, a statement at a time.
pub struct Tracker {
    /// pgsse.secret.key: every payload must be signed with it.
    key: Vec<u8>,
    url: String,
    pub client: Client,
    pub listener: Listener,
    last_id: i64,
    /// The payloads of the last `collect`, as received.
    pub raw: Vec<String>,
}

impl Tracker {
    pub async fn new(url: &str) -> Tracker {
        let client = connect(url).await;
        let last_id = scalar_i64(&client, "SELECT COALESCE(max(id), 0) FROM pgsse.events").await;
        let key: Vec<u8> = client.query_one("SELECT key FROM pgsse.secret", &[]).await.unwrap().get(0);
        Tracker { key, url: url.to_string(), listener: Listener::new(url).await, client, last_id, raw: Vec::new() }
    }

    /// Runs `sql` (as the superuser); returns the new log rows and the
    /// payloads sent.
    pub async fn run(&mut self, sql: &str) -> (Vec<Event>, Vec<Value>) {
        exec(&self.url, sql).await;
        self.collect().await
    }

    /// The log rows and payloads that appeared since the last call.
    pub async fn collect(&mut self) -> (Vec<Event>, Vec<Value>) {
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
    pub async fn expect(&mut self, sql: &str, expected: Vec<(Option<&str>, Value)>) -> Vec<Event> {
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
pub fn verify_signature<'a>(key: &[u8], payload: &'a str) -> &'a str {
    assert!(payload.len() > 64 && payload.is_char_boundary(64), "payload too short to be signed: {payload}");
    let (mac, json) = payload.split_at(64);
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    let want: String = ring::hmac::sign(&key, json.as_bytes()).as_ref().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(mac, want, "signature of {json}");
    json
}

/// `payload` is the inline form of exactly `events`.
pub fn assert_inline(payload: &Value, events: &[Event]) {
    let tx = &events[0].tx;
    assert!(events.iter().all(|e| &e.tx == tx), "one transaction");
    let entries: Vec<Value> = events.iter().map(Event::entry).collect();
    assert_eq!(payload, &json!({ "t": tx, "e": entries }));
}

/// `payload` is a reference to exactly `events`.
pub fn assert_reference(payload: &Value, events: &[Event]) {
    let tx = &events[0].tx;
    assert!(events.iter().all(|e| &e.tx == tx), "one transaction");
    let min = events.iter().map(|e| e.id).min().unwrap();
    let max = events.iter().map(|e| e.id).max().unwrap();
    assert_eq!(payload, &json!({ "t": tx, "r": [min, max] }));
}

/// What the gateway reads for a reference payload.
pub async fn resolve_reference(client: &Client, payload: &Value) -> Vec<Event> {
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
        .map(Event::from_row)
        .collect()
}

pub const NOTIFICATIONS: &str = "
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
pub const GENERATED_CAPTURES: &str =
    "SELECT count(*) FROM pg_proc WHERE pronamespace = 'pgsse'::regnamespace AND proname ~ '^capture_[0-9]+(_[0-9]+)?$'";

/// The three triggers pgsse.watch() of an earlier version created: the generic
/// pgsse.capture() with the columns as arguments.
pub fn old_style_watch(tbl: &str, user: &str, id: &str, read: &str, exclude: &str) -> String {
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
pub async fn trigger_function(client: &Client, tbl: &str) -> String {
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
