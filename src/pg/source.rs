//! The event source: one dedicated LISTEN connection, markers that advance the horizon, catch-up.
//!
//! Lifecycle of one connection: connect (capped, jittered, cancellable backoff) -> read the key,
//! the secret channel and the database's history -> `LISTEN` -> if an earlier connection was
//! lost, catch up from `pgsse.events` from the last horizon (or, if the database's history
//! changed, reset every stream) -> send a marker (over a second connection, see `connection`) ->
//! ready once that marker comes back. Then, in queue order: row events go to the hub, stamped with
//! the current position; markers advance the horizon.
//!
//! Why markers: NOTIFY entries reach listeners in commit order, and a marker carrying
//! `pg_snapshot_xmin` X enters the queue after every transaction with xid < X has finished. So
//! when a marker arrives, every event of those transactions has already been dispatched: X is a
//! safe resume position for any stream (see `sse::EventId`). Markers are durable before they
//! arrive (they write WAL and commit synchronously), so a crash cannot hand out an xid below X
//! again; a failover or restore can, which is why positions carry the history.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::FusedFuture;
use futures_util::{pin_mut, FutureExt, TryStreamExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub(in crate::pg) mod conn;
mod history;
mod state;

use self::conn::{Backoff, Msg};
pub use self::state::{Position, SourceState};
use super::payload::{self, Message, Verifier};
use super::seen::Seen;
use super::sessions::SessionStore;
use super::{within, PgError, StoredEvent, EVENT_COLUMNS};
use crate::defaults::DEFAULT_DB_TIMEOUT;
use crate::hub::{Hub, Item};
use crate::metrics::Metrics;
use crate::sse::{self, EventId};

/// While dispatching a large reference, the source lets the stream writers run after about this
/// many bytes of events.
const YIELD_EVERY_BYTES: usize = 64 << 10;

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
    /// What was dispatched at or above the horizon, so neither a catch-up after a reconnect nor
    /// a re-sent payload sends it twice.
    seen: Seen,
    /// Verifies that a payload was produced by pgsse's SQL (anyone who can connect may NOTIFY).
    verifier: Option<Verifier>,
    /// The history changed: events are not dispatched until the first marker of the new one,
    /// which resets every stream.
    resync: bool,
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
            seen: Seen::default(),
            verifier: None,
            resync: false,
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
        let mut backoff = Backoff::new();
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
                    if let PgError::Schema(why) = &e {
                        tracing::error!("{why} (checking again on every reconnect)");
                    } else {
                        tracing::warn!(error = %e, "LISTEN connection lost; reconnecting");
                    }
                }
            }
            connected_before |= self.state.horizon().is_some();
            self.metrics.pg_reconnects.inc();
            let sleep = backoff.next(started.elapsed());
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
        // The channel is secret (LISTEN needs no privilege), so it is read before LISTEN; the
        // key is read on every connect, so a rotated one is picked up after a reconnect.
        let t = self.timeout;
        // A schema this gateway cannot serve is said as such, naming the command to run, rather
        // than found by a statement failing later.
        if let Err(e) = within("listen", t, super::schema::ensure_servable(client)).await {
            return End::Lost(e);
        }
        let setup = client.query_opt(
            "SELECT s.key, s.channel, pgsse.history(), pg_snapshot_xmax(pg_current_snapshot())::text \
             FROM pgsse.secret AS s",
            &[],
        );
        let setup = within("listen", t, setup).await;
        let channel = match setup {
            Ok(Some(row)) => match self.on_setup(client, &row).await {
                Ok(channel) => channel,
                Err(e) => return End::Lost(e),
            },
            Ok(None) => {
                return End::Lost(PgError::Protocol("pgsse.secret is empty: run `pgsse sql install` again".into()))
            }
            Err(e) => return End::Lost(super::with_install_hint(e)),
        };
        // LISTEN before catch-up: anything committed from now on is notified, so the catch-up
        // query below cannot miss a commit that lands between the two.
        if let Err(e) = within("listen", t, client.batch_execute(&format!("LISTEN \"{channel}\""))).await {
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
        // A marker must be durable before the gateway acts on it (see pgsse.mark): its commit
        // waits for the WAL flush unless the session turned synchronous commit off.
        let durable = marker_client.batch_execute(
            "SELECT set_config('synchronous_commit', 'on', false) WHERE current_setting('synchronous_commit') = 'off'",
        );
        if let Err(e) = within("marker", t, durable).await {
            return End::Lost(e);
        }
        let marker = match within("marker", t, marker_client.prepare("SELECT pgsse.mark($1::text, $2::bigint)")).await {
            Ok(s) => s,
            Err(e) => return End::Lost(e),
        };
        if catch_up && !self.resync {
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
                        // Only a reference is read back; that read has the deadline (no timer per event).
                        if let Err(e) = self.on_notification(client, &fetch, n.payload(), &mut pending).await {
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
            if !self.seen.contains(ev.id) {
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
        let Some(verifier) = &self.verifier else { return Ok(()) };
        let msg = match verifier.decode(payload) {
            Ok(m) => m,
            Err(e) => {
                self.metrics.payloads_dropped.inc();
                if matches!(e, payload::PayloadError::Unsigned) {
                    self.metrics.payloads_forged.inc();
                }
                crate::warn_throttled!(payload_bytes = payload.len(), "ignoring a NOTIFY on pgsse's channel: {e}");
                return Ok(());
            }
        };
        match msg {
            Message::Batch(items) => {
                for item in items {
                    self.on_message(client, fetch, item, payload, pending).await?;
                }
                Ok(())
            }
            msg => self.on_message(client, fetch, msg, payload, pending).await,
        }
    }

    /// One message of a verified payload (`payload`, whole, for deduplicating session changes).
    async fn on_message(
        &mut self,
        client: &tokio_postgres::Client,
        fetch: &tokio_postgres::Statement,
        msg: Message<'_>,
        payload: &str,
        pending: &mut Option<(u64, Instant)>,
    ) -> Result<(), PgError> {
        let tx = match &msg {
            Message::Marker { horizon, history, gateway, seq } => {
                if self.state.history() != Some(*history) {
                    // A marker of another history (re-sent from before a failover or restore)
                    // would move the horizon past transactions this history has not run yet.
                    return self.stale("a marker of another history");
                }
                self.on_marker(*horizon);
                if let (Some((want, at)), Some(g), Some(n)) = (*pending, gateway.as_deref(), seq) {
                    if g == self.instance && *n >= want {
                        self.metrics.listen_lag_seconds.set(at.elapsed().as_secs_f64());
                        *pending = None;
                    }
                }
                return Ok(());
            }
            Message::Events { tx, .. } | Message::Reference { tx, .. } | Message::Sessions { tx, .. } => *tx,
            // Decoding never nests batches.
            Message::Batch(_) => return Ok(()),
        };
        // Every payload of a transaction below the horizon arrived before the marker that set it:
        // one arriving now was re-sent.
        if self.state.horizon().is_some_and(|h| tx < h) {
            return self.stale("a payload below the horizon");
        }
        match msg {
            Message::Events { events, .. } => {
                for (id, user, event, data) in events {
                    self.dispatch(id, tx, user.as_deref(), &event, data.get());
                }
            }
            Message::Reference { lo, hi, .. } => {
                // Reading a range back is the one costly step: a re-sent reference is not read twice.
                if !self.seen.insert_ref(tx, lo, hi) {
                    return self.stale("a reference already read");
                }
                let rows = within("listen", self.timeout, client.query(fetch, &[&tx.to_string(), &lo, &hi])).await?;
                // A large transaction arrives as one reference: handed out in one go, it would
                // fill every stream's queue before any writer ran. Letting the writers run between
                // slices (the hub still never waits for one) keeps a reading client inside its bound.
                let mut since_yield = 0;
                for row in &rows {
                    let ev = StoredEvent::from_row(row)?;
                    self.dispatch(ev.id, ev.tx, ev.user_id.as_deref(), &ev.event, &ev.data);
                    since_yield += ev.data.len();
                    if since_yield >= YIELD_EVERY_BYTES {
                        since_yield = 0;
                        tokio::task::yield_now().await;
                    }
                }
            }
            Message::Sessions { changes, .. } => {
                if !self.seen.insert_sessions(tx, payload) {
                    return self.stale("session changes already applied");
                }
                self.on_sessions(changes);
            }
            Message::Marker { .. } | Message::Batch(_) => {}
        }
        Ok(())
    }

    /// A signed payload that is not new: counted, and logged at debug (a flood of them must not
    /// flood the log).
    fn stale(&self, what: &'static str) -> Result<(), PgError> {
        self.metrics.payloads_dropped.inc();
        self.metrics.payloads_stale.inc();
        tracing::debug!("ignoring {what} (re-sent)");
        Ok(())
    }

    /// A session was deleted or changed: forget its cached lookup, and close its streams if it
    /// is gone or expired. Streams whose session was merely extended keep going (they close at
    /// the expiry they opened with, then reconnect).
    fn on_sessions(&self, changes: Vec<(String, Option<i64>)>) {
        let now_ms = crate::clock::unix_now_ms();
        let notice = Item::notice(sse::auth_expired("session_revoked"));
        for (hex, expires_ms) in changes {
            let Some(key) = payload::decode_key(&hex) else {
                self.metrics.payloads_dropped.inc();
                crate::warn_throttled!("ignoring a session change whose key is not 64 hex characters");
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
        if self.resync {
            // The first position of a new history: every stream refetches from here on.
            self.resync = false;
            if let Some(history) = self.state.history() {
                self.state.horizon.store(x, Ordering::Release);
                let reset = sse::reset(
                    EventId::horizon(history, x),
                    "history_changed",
                    "the database's history changed (failover or restore): refetch",
                );
                let n = self.hub.publish(None, &Item::resync(reset));
                tracing::warn!(streams = n, horizon = x, "reset every stream after a history change");
            }
        }
        if self.state.horizon().is_none_or(|h| x > h) {
            self.state.horizon.store(x, Ordering::Release);
            // Events below the new horizon can never come back in a catch-up.
            self.seen.forget_below(x);
        }
        if !self.state.ready.swap(true, Ordering::AcqRel) {
            self.metrics.pg_listening.set(1);
            tracing::info!(horizon = x, "listening; ready");
        }
    }

    fn dispatch(&mut self, id: i64, tx: u64, user: Option<&str>, event: &str, data: &str) {
        // After a reconnect, a commit landing between LISTEN and the catch-up query is in both;
        // no marker can intervene, so it is still remembered here. After a history change,
        // nothing is sent until the reset: the app's refetch after it includes these rows.
        if self.resync || self.seen.contains(id) {
            return;
        }
        self.metrics.events_received.inc();
        // Before the first marker no stream exists yet (streams wait for readiness), so nobody
        // can receive an id without a position.
        let Position { history, horizon } = self.state.position().unwrap_or(Position { history: 0, horizon: 0 });
        let bytes = sse::encode(event, Some(EventId::event(history, horizon, id)), data);
        self.hub.publish(user, &Item { log_id: id, tx, bytes });
        if tx >= horizon {
            self.seen.insert(tx, id);
        }
    }
}
