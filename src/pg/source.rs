//! The event source: one dedicated LISTEN connection, markers that advance the horizon, catch-up.
//!
//! Lifecycle of one connection: connect (capped, jittered, cancellable backoff) -> `LISTEN` before
//! anything else -> if an earlier connection was lost, catch up from `pgsse.events` from the last
//! horizon -> send a marker (over a second connection, see `connection`) -> ready once that
//! marker comes back. Then, in queue order: row events go to the hub, stamped with the current
//! horizon; markers advance the horizon.
//!
//! Why markers: NOTIFY entries reach listeners in commit order, and a marker carrying
//! `pg_snapshot_xmin` X enters the queue after every transaction with xid < X has finished. So
//! when a marker arrives, every event of those transactions has already been dispatched: X is a
//! safe resume position for any stream (see `sse::EventId`).

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::FusedFuture;
use futures_util::{pin_mut, FutureExt, TryStreamExt};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

mod conn;

use self::conn::{jitter, Msg};
use super::sessions::SessionStore;
use super::{within, PgError, StoredEvent, CHANNEL, DEFAULT_DB_TIMEOUT, EVENT_COLUMNS};
use crate::auth::session::SessionKey;
use crate::hub::{Hub, Item};
use crate::metrics::Metrics;
use crate::sse::{self, EventId};

pub const DEFAULT_MARKER_INTERVAL: Duration = Duration::from_millis(250);
pub const DEFAULT_BACKOFF_MIN: Duration = Duration::from_millis(100);
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Bound on the set used to avoid re-sending events during catch-up. Only a transaction held
/// open for a very long time at a very high event rate fills it; past it, catch-up may resend
/// (clients dedupe by event id).
const MAX_REMEMBERED: usize = 1_000_000;

/// What the rest of the gateway can see of the source. Shared with HTTP handlers and metrics.
#[derive(Debug, Default)]
pub struct SourceState {
    horizon: AtomicU64,
    ready: AtomicBool,
}

impl SourceState {
    /// The current horizon, or `None` before the first marker ever arrived.
    pub fn horizon(&self) -> Option<u64> {
        match self.horizon.load(Ordering::Acquire) {
            0 => None,
            h => Some(h),
        }
    }

    /// True while the LISTEN connection is up, caught up and has seen its marker come back.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

/// NOTIFY payloads on the `pgsse` channel (see `sql/install.sql`).
#[derive(Deserialize)]
struct Payload<'a> {
    /// Marker: a snapshot xmin, as text.
    m: Option<String>,
    /// Marker: the gateway that sent it, and its sequence number (for the lag measurement).
    g: Option<String>,
    n: Option<u64>,
    /// Events: the writing transaction's id, as text.
    t: Option<String>,
    /// Events inline.
    #[serde(borrow)]
    e: Option<Vec<InlineEvent<'a>>>,
    /// Events by reference (too large to inline): the id range to fetch.
    r: Option<(i64, i64)>,
    /// Session changes (see `pgsse.watch_sessions`): `[sha256 of token as hex, expiry in unix
    /// ms or null when deleted]`.
    s: Option<Vec<(String, Option<i64>)>>,
}

/// `[id, user_id, event, data]`, data kept as the JSON text Postgres wrote.
type InlineEvent<'a> = (i64, Option<String>, String, &'a RawValue);

pub struct Source {
    db: tokio_postgres::Config,
    hub: Arc<Hub>,
    metrics: Metrics,
    state: Arc<SourceState>,
    marker_interval: Duration,
    /// Every round trip's deadline; also how long our marker may be overdue while nothing at all
    /// arrives on the LISTEN connection before that connection counts as dead.
    timeout: Duration,
    /// Identifies this gateway's own markers among other replicas'.
    instance: String,
    /// Events already dispatched whose tx is at or above the horizon, so a catch-up after a
    /// reconnect does not send them twice: tx -> ids, and the ids themselves.
    sent_by_tx: BTreeMap<u64, Vec<i64>>,
    sent: HashSet<i64>,
    /// Verifies that a payload was produced by pgsse's SQL (anyone who can connect may NOTIFY).
    key: Option<ring::hmac::Key>,
    /// The session cache, evicted on session changes (cookie authentication only).
    sessions: Option<Arc<SessionStore>>,
}

/// Ends one connection's life: either shutdown was requested, or the connection is gone.
enum End {
    Shutdown,
    Lost(PgError),
}

impl Source {
    pub fn new(db: tokio_postgres::Config, hub: Arc<Hub>, state: Arc<SourceState>, marker_interval: Duration) -> Self {
        Self {
            db,
            metrics: hub.metrics.clone(),
            hub,
            state,
            marker_interval,
            timeout: DEFAULT_DB_TIMEOUT,
            instance: format!("{:016x}", rand::random::<u64>()),
            sent_by_tx: BTreeMap::new(),
            sent: HashSet::new(),
            key: None,
            sessions: None,
        }
    }

    /// Session changes also evict this cache.
    pub fn with_sessions(mut self, store: Option<Arc<SessionStore>>) -> Self {
        self.sessions = store;
        self
    }

    /// The deadline of every round trip (`--db-timeout`).
    pub fn with_db_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Runs until `shutdown` is cancelled, reconnecting as often as needed.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut backoff = DEFAULT_BACKOFF_MIN;
        let mut connected_before = false;
        loop {
            let started = Instant::now();
            match self.connection(connected_before, &shutdown).await {
                End::Shutdown => break,
                End::Lost(e) => {
                    self.state.ready.store(false, Ordering::Release);
                    if let PgError::Deadline { conn, .. } = e {
                        self.metrics.db_timeout(conn);
                    }
                    self.metrics.pg_listening.set(0);
                    tracing::warn!(error = %e, "LISTEN connection lost; reconnecting");
                }
            }
            connected_before |= self.state.horizon().is_some();
            self.metrics.pg_reconnects.inc();
            // A connection that lived a while resets the backoff: this is a new outage.
            if started.elapsed() > DEFAULT_BACKOFF_MAX * 2 {
                backoff = DEFAULT_BACKOFF_MIN;
            }
            let sleep = jitter(backoff);
            backoff = (backoff * 2).min(DEFAULT_BACKOFF_MAX);
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(sleep) => {}
            }
        }
        self.state.ready.store(false, Ordering::Release);
    }

    async fn connection(&mut self, catch_up: bool, shutdown: &CancellationToken) -> End {
        let (client, conn) = match self.connect("listen", shutdown).await {
            Ok(c) => c,
            Err(end) => return end,
        };
        let (driver, mut rx) = conn::drive(conn);
        // Markers go over a second connection: PostgreSQL holds a session's notifications while
        // that session runs a statement, so a marker sent on the LISTEN connection would delay
        // every event that arrives during its round trip.
        let end = match self.connect("marker", shutdown).await {
            Ok((marker_client, marker_conn)) => {
                let marker_driver = tokio::spawn(marker_conn);
                let end = self.serve(&client, &marker_client, &mut rx, catch_up, shutdown).await;
                marker_driver.abort();
                end
            }
            Err(end) => end,
        };
        driver.abort();
        end
    }

    async fn serve(
        &mut self,
        client: &tokio_postgres::Client,
        marker_client: &tokio_postgres::Client,
        rx: &mut mpsc::UnboundedReceiver<Msg>,
        catch_up: bool,
        shutdown: &CancellationToken,
    ) -> End {
        // LISTEN first: anything committed from now on is notified, so the catch-up query
        // below cannot miss a commit that lands between the two.
        let t = self.timeout;
        if let Err(e) = within("listen", t, client.batch_execute(&format!("LISTEN {CHANNEL}"))).await {
            return End::Lost(e);
        }
        let fetch = match within(
            "listen",
            t,
            client.prepare(&format!(
                "SELECT {EVENT_COLUMNS} FROM pgsse.events WHERE tx = $1::text::xid8 AND id BETWEEN $2 AND $3 ORDER BY id"
            )),
        )
        .await
        {
            Ok(s) => s,
            Err(e) => return End::Lost(e),
        };
        let marker = match within("marker", t, marker_client.prepare("SELECT pgsse.mark($1::text, $2::bigint)")).await {
            Ok(s) => s,
            Err(e) => return End::Lost(e),
        };
        // Read on every connect, so a rotated key is picked up after a reconnect.
        match within("listen", t, client.query_opt("SELECT key FROM pgsse.secret", &[])).await {
            Ok(Some(row)) => match row.try_get::<_, Vec<u8>>(0) {
                Ok(k) => self.key = Some(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &k)),
                Err(e) => return End::Lost(e.into()),
            },
            Ok(None) => {
                return End::Lost(PgError::Protocol("pgsse.secret is empty: run `pgsse sql install` again".into()))
            }
            Err(e) => return End::Lost(e),
        }
        if catch_up {
            if let Err(e) = self.catch_up(client).await {
                return End::Lost(e);
            }
        }
        let mut seq: u64 = 0;
        let mut pending: Option<(u64, Instant)> = None;
        let mut ticker = tokio::time::interval(self.marker_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // A marker's round trip runs beside the notifications, never in front of them.
        let instance = self.instance.clone();
        let mut in_flight = std::pin::pin!(futures_util::future::Fuse::terminated());
        // The LISTEN path is dead when our marker is overdue and nothing at all arrived meanwhile.
        // Silence, not lag: a connection still delivering a backlog is alive, however far behind.
        let mut heard = Instant::now();
        let mut silence = std::pin::pin!(tokio::time::sleep(t));
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return End::Shutdown,
                sent = &mut in_flight => {
                    let sent: Result<u64, PgError> = sent;
                    if let Err(e) = sent {
                        return End::Lost(e);
                    }
                }
                msg = rx.recv() => match msg {
                    Some(Msg::Notify(n)) => {
                        heard = Instant::now();
                        let dispatch = self.on_notification(client, &fetch, n.payload(), &mut pending);
                        if let Err(e) = within("listen", t, dispatch).await {
                            return End::Lost(e);
                        }
                    }
                    Some(Msg::Closed(Some(e))) => return End::Lost(e.into()),
                    Some(Msg::Closed(None)) | None => {
                        return End::Lost(PgError::Protocol("connection closed by the server".into()))
                    }
                },
                // At most one marker in flight: a slow database gets fewer, not a queue of them.
                _ = ticker.tick(), if in_flight.is_terminated() => {
                    seq += 1;
                    if pending.is_none() {
                        pending = Some((seq, Instant::now()));
                    }
                    let (marker, instance, n) = (&marker, &instance, seq as i64);
                    let execute = async move { marker_client.execute(marker, &[instance, &n]).await };
                    in_flight.set(within("marker", t, execute).fuse());
                }
                _ = &mut silence => {
                    let since = pending.map(|(_, sent)| sent.max(heard));
                    if since.is_some_and(|s| s.elapsed() >= t) {
                        return End::Lost(PgError::Deadline { conn: "listen", limit: t });
                    }
                    let next = since.unwrap_or_else(Instant::now) + t;
                    silence.as_mut().reset(tokio::time::Instant::from_std(next));
                }
            }
        }
    }

    /// Sends everything committed at or above the last horizon that this gateway may have
    /// missed while it was not listening. Already-dispatched events are skipped.
    async fn catch_up(&mut self, client: &tokio_postgres::Client) -> Result<(), PgError> {
        let Some(h) = self.state.horizon() else { return Ok(()) };
        let started = Instant::now();
        let q = format!("SELECT {EVENT_COLUMNS} FROM pgsse.events WHERE tx >= $1::text::xid8 ORDER BY id");
        // Each wait for the next rows gets the deadline, not the whole catch-up: a long outage
        // means many rows, and reading them is progress.
        let t = self.timeout;
        let rows = within("listen", t, client.query_raw(&q, [h.to_string()])).await?;
        pin_mut!(rows);
        let (mut seen, mut sent) = (0u64, 0u64);
        while let Some(row) = within("listen", t, rows.try_next()).await? {
            let ev = StoredEvent::from_row(&row)?;
            seen += 1;
            if !self.sent.contains(&ev.id) {
                sent += 1;
                self.dispatch(ev.id, ev.tx, ev.user_id.as_deref(), &ev.event, &ev.data);
            }
        }
        tracing::info!(
            from_horizon = h,
            seen,
            sent,
            took_ms = started.elapsed().as_millis() as u64,
            "caught up after reconnect"
        );
        Ok(())
    }

    async fn on_notification(
        &mut self,
        client: &tokio_postgres::Client,
        fetch: &tokio_postgres::Statement,
        payload: &str,
        pending: &mut Option<(u64, Instant)>,
    ) -> Result<(), PgError> {
        let Some(payload) = self.verified(payload) else {
            self.metrics.payloads_dropped.inc();
            self.metrics.payloads_forged.inc();
            tracing::warn!(
                payload_bytes = payload.len(),
                "ignoring a NOTIFY on channel pgsse without a valid signature (sent by something other than pgsse's SQL)"
            );
            return Ok(());
        };
        let p: Payload = match serde_json::from_str(payload) {
            Ok(p) => p,
            Err(e) => {
                self.metrics.payloads_dropped.inc();
                tracing::warn!(error = %e, payload_bytes = payload.len(), "ignoring a NOTIFY on channel pgsse that is not a pgsse payload");
                return Ok(());
            }
        };
        if let Some(changes) = p.s {
            self.on_sessions(changes);
            return Ok(());
        }
        if let Some(m) = p.m {
            let Ok(x) = m.parse::<u64>() else {
                self.metrics.payloads_dropped.inc();
                tracing::warn!(marker = %m, "ignoring a marker whose horizon is not a transaction id");
                return Ok(());
            };
            self.on_marker(x);
            if let (Some((seq, at)), Some(g), Some(n)) = (*pending, p.g.as_deref(), p.n) {
                if g == self.instance && n >= seq {
                    self.metrics.listen_lag_seconds.set(at.elapsed().as_secs_f64());
                    *pending = None;
                }
            }
            return Ok(());
        }
        let Some(tx) = p.t.as_deref().and_then(|t| t.parse::<u64>().ok()) else {
            self.metrics.payloads_dropped.inc();
            tracing::warn!(
                payload_bytes = payload.len(),
                "ignoring a pgsse NOTIFY without a valid \"t\" (transaction id)"
            );
            return Ok(());
        };
        if let Some(events) = p.e {
            for (id, user, event, data) in events {
                self.dispatch(id, tx, user.as_deref(), &event, data.get());
            }
        } else if let Some((lo, hi)) = p.r {
            let rows = client.query(fetch, &[&tx.to_string(), &lo, &hi]).await?;
            for row in &rows {
                let ev = StoredEvent::from_row(row)?;
                self.dispatch(ev.id, ev.tx, ev.user_id.as_deref(), &ev.event, &ev.data);
            }
        } else {
            self.metrics.payloads_dropped.inc();
            tracing::warn!(tx, "ignoring a pgsse NOTIFY with neither events (\"e\") nor a reference (\"r\")");
        }
        Ok(())
    }

    /// Splits `<64 hex HMAC><json>` and checks the HMAC; `None` if absent or wrong.
    fn verified<'p>(&self, payload: &'p str) -> Option<&'p str> {
        let key = self.key.as_ref()?;
        let (mac, json) = (payload.get(..64)?, payload.get(64..)?);
        let mut tag = [0u8; 32];
        for (i, t) in tag.iter_mut().enumerate() {
            *t = u8::from_str_radix(mac.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        ring::hmac::verify(key, json.as_bytes(), &tag).ok().map(|()| json)
    }

    /// A session was deleted or changed: forget its cached lookup, and close its streams if it
    /// is gone or expired. Streams whose session was merely extended keep going (they close at
    /// the expiry they opened with, then reconnect).
    fn on_sessions(&self, changes: Vec<(String, Option<i64>)>) {
        let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
        let notice = Item::notice(sse::auth_expired("session_revoked"));
        for (hex, expires_ms) in changes {
            let Some(key) = decode_key(&hex) else {
                self.metrics.payloads_dropped.inc();
                tracing::warn!("ignoring a session change whose key is not 64 hex characters");
                continue;
            };
            if let Some(store) = &self.sessions {
                store.forget(&key);
            }
            if expires_ms.is_none_or(|e| i128::from(e) <= now_ms as i128) {
                let n = self.hub.revoke_session(&key, &notice);
                tracing::debug!(streams = n, "session revoked");
            }
        }
    }

    fn on_marker(&mut self, x: u64) {
        if self.state.horizon().is_none_or(|h| x > h) {
            self.state.horizon.store(x, Ordering::Release);
            // Events below the new horizon can never come back in a catch-up.
            let keep = self.sent_by_tx.split_off(&x);
            for ids in std::mem::replace(&mut self.sent_by_tx, keep).into_values() {
                for id in ids {
                    self.sent.remove(&id);
                }
            }
        }
        if !self.state.ready.swap(true, Ordering::AcqRel) {
            self.metrics.pg_listening.set(1);
            tracing::info!(horizon = x, "listening; ready");
        }
    }

    fn dispatch(&mut self, id: i64, tx: u64, user: Option<&str>, event: &str, data: &str) {
        // After a reconnect, a commit landing between LISTEN and the catch-up query is in both;
        // no marker can intervene, so it is still remembered here.
        if self.sent.contains(&id) {
            return;
        }
        self.metrics.events_received.inc();
        let horizon = self.state.horizon().unwrap_or(0);
        // Before the first marker no stream exists yet (streams wait for readiness), so nobody
        // can receive an id of 0.
        let bytes = sse::encode(event, Some(EventId::event(horizon, id)), data);
        self.hub.publish(user, &Item { log_id: id, tx, bytes });
        if tx >= horizon && self.sent.insert(id) {
            self.sent_by_tx.entry(tx).or_default().push(id);
            if self.sent.len() > MAX_REMEMBERED {
                if let Some((_, ids)) = self.sent_by_tx.pop_first() {
                    ids.iter().for_each(|i| {
                        self.sent.remove(i);
                    });
                }
            }
        }
    }
}

fn decode_key(hex: &str) -> Option<SessionKey> {
    let mut key = [0u8; 32];
    for (i, b) in key.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    (hex.len() == 64).then_some(key)
}
