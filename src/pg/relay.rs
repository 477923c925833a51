//! The relay: in relay mode, one replica at a time announces the rows writers only logged.
//!
//! Writers in relay mode commit without NOTIFY (PostgreSQL serializes the commits of notifying
//! transactions). Every replica runs this task on a connection of its own; each round is one call
//! of `pgsse.relay()`, which does everything in the database: the lease (which replica relays), the
//! rows committed since the relay's stored position, their signed payloads, the new position, all
//! in one transaction. So a replica that dies mid-round sends nothing and moves nothing, and
//! another continues exactly where the last committed round stopped. Every replica then
//! dispatches the payloads from its LISTEN connection as in commit mode.

use std::time::{Duration, Instant};

use tokio_postgres::error::SqlState;
use tokio_util::sync::CancellationToken;

use super::source::conn::{self, Backoff};
use super::{with_install_hint, within, PgError};
use crate::defaults::{DEFAULT_RELAY_LEASE, DEFAULT_RELAY_MAX_ROWS};
use crate::metrics::Metrics;

/// Whether anything committed since the relay's position `$1` may need announcing: a row at or
/// above its xmax, or a row of a transaction in its in-progress list that has finished since (the
/// same test `pgsse.relay()` starts with). No plan of it depends on the value, so it is planned
/// once per connection.
const PROBE: &str = "SELECT COALESCE((SELECT max(e.tx) FROM pgsse.events AS e)                             >= pg_snapshot_xmax($1::text::pg_snapshot), false)                      OR EXISTS (SELECT FROM pg_snapshot_xip($1::text::pg_snapshot) AS x(x)                                  WHERE pg_visible_in_snapshot(x.x, pg_current_snapshot())                                    AND EXISTS (SELECT FROM pgsse.events AS e WHERE e.tx = x.x))";

/// A leader runs a full round at least this often, however idle: the round renews the lease (at
/// a quarter of it) and moves the horizon on.
const RENEW_EVERY: Duration = Duration::from_millis(200);

/// What one round did (`state` of `pgsse.relay()`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Round {
    /// No relay needed: commit mode, nothing left to drain.
    Off,
    /// Another replica holds the lease.
    Standby,
    /// This replica relays; `full` when it stopped at the per-round limit (more is waiting).
    Leader { full: bool },
}

pub struct Relay {
    db: tokio_postgres::Config,
    metrics: Metrics,
    /// Between rounds while this replica relays.
    interval: Duration,
    /// Between rounds while it does not (commit mode, or another replica relays): how soon a switch
    /// to relay mode, or a dead relay's expired lease, is noticed.
    idle_interval: Duration,
    timeout: Duration,
    instance: String,
}

impl Relay {
    pub fn new(db: tokio_postgres::Config, metrics: Metrics, interval: Duration, idle_interval: Duration) -> Self {
        Self {
            db,
            metrics,
            interval,
            idle_interval: idle_interval.min(DEFAULT_RELAY_LEASE / 4),
            timeout: super::DEFAULT_DB_TIMEOUT,
            instance: format!("{:016x}", rand::random::<u64>()),
        }
    }

    /// The deadline of every round trip (`--db-timeout`).
    pub fn with_db_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Runs until `shutdown` is cancelled, reconnecting as often as needed.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut backoff = Backoff::new();
        loop {
            let started = Instant::now();
            let e = match self.session(&shutdown).await {
                Ok(()) => break,
                Err(e) => e,
            };
            self.metrics.relay_leader.set(0);
            if let PgError::Deadline { conn, .. } = e {
                self.metrics.db_timeout(conn);
            }
            tracing::warn!(error = %e, "relay connection lost; reconnecting");
            let sleep = backoff.next(started.elapsed());
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(sleep) => {}
            }
        }
        self.metrics.relay_leader.set(0);
    }

    /// One connection's life: `Ok` on shutdown.
    async fn session(&self, shutdown: &CancellationToken) -> Result<(), PgError> {
        let Some(opened) = conn::open(&self.db, self.timeout, "relay", shutdown).await else { return Ok(()) };
        let (client, connection) = opened?;
        let driver = tokio::spawn(connection);
        let result = self.rounds(&client, shutdown).await;
        driver.abort();
        result
    }

    async fn rounds(&self, client: &tokio_postgres::Client, shutdown: &CancellationToken) -> Result<(), PgError> {
        let t = self.timeout;
        // A round's NOTIFYs are acted on as positions: its commit must be durable first (as a
        // marker's). Each round reads what committed during it, so it needs READ COMMITTED whatever
        // the database's default.
        let setup = client.batch_execute(
            "SELECT set_config('synchronous_commit', 'on', false) WHERE current_setting('synchronous_commit') = 'off'; \
             SET default_transaction_isolation = 'read committed'",
        );
        within("relay", t, setup).await?;
        let round = within(
            "relay",
            t,
            client.prepare("SELECT state, txs, events, pos FROM pgsse.relay($1::text, $2::text::interval, $3::int4)"),
        )
        .await
        .map_err(with_install_hint)?;
        let probe = within("relay", t, client.prepare(PROBE)).await?;
        let lease = format!("{} milliseconds", DEFAULT_RELAY_LEASE.as_millis());
        let mut leader = false;
        // The relay's position after this replica's last round, and when that round ran.
        let mut last: Option<(String, Instant)> = None;
        loop {
            // Rounds start every interval (not an interval after the last one ended), so an event
            // waits at most one interval plus one round.
            let began = Instant::now();
            // While this replica relays, most intervals have nothing new: a probe with a kept plan
            // says so for a fraction of a round's cost. A round still runs every RENEW_EVERY, to
            // keep the lease and the horizon fresh (and to notice a mode switch or a drained relay).
            let due = match (&last, leader) {
                (Some((pos, at)), true) if at.elapsed() < RENEW_EVERY => {
                    within("relay", t, client.query_one(&probe, &[pos])).await?.try_get::<_, bool>(0)?
                }
                _ => true,
            };
            if !due {
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(self.interval.saturating_sub(began.elapsed())) => {}
                }
                continue;
            }
            let r =
                within("relay", t, client.query_one(&round, &[&self.instance, &lease, &DEFAULT_RELAY_MAX_ROWS])).await;
            let next = match r {
                Ok(row) => {
                    let (next, pos) = self.on_round(&row, &mut leader)?;
                    last = pos.map(|p| (p, Instant::now()));
                    next
                }
                // Another replica's round, or a mode switch, moved the position first: nothing was
                // sent; try again on the next round.
                Err(PgError::Db(e)) if e.code() == Some(&SqlState::T_R_SERIALIZATION_FAILURE) => {
                    tracing::debug!("relay round raced another; retrying");
                    last = None;
                    Round::Standby
                }
                Err(e) => return Err(with_install_hint(e)),
            };
            let pause = match next {
                Round::Leader { full: true } => Duration::ZERO,
                Round::Leader { full: false } => self.interval.saturating_sub(began.elapsed()),
                Round::Off | Round::Standby => self.idle_interval,
            };
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// What a round did, and the relay's position after it.
    fn on_round(&self, row: &tokio_postgres::Row, leader: &mut bool) -> Result<(Round, Option<String>), PgError> {
        let state: String = row.try_get(0)?;
        let txs: i32 = row.try_get(1)?;
        let events: i64 = row.try_get(2)?;
        let pos: Option<String> = row.try_get(3)?;
        let round = match state.as_str() {
            "off" => Round::Off,
            "standby" => Round::Standby,
            "idle" | "relayed" | "done" => Round::Leader { full: false },
            "more" => Round::Leader { full: true },
            other => return Err(PgError::Protocol(format!("pgsse.relay() returned the unknown state {other:?}"))),
        };
        let now_leader = matches!(round, Round::Leader { .. }) && state != "done";
        if now_leader != *leader {
            *leader = now_leader;
            self.metrics.relay_leader.set(i64::from(now_leader));
            tracing::info!(instance = %self.instance, "{}", if now_leader { "relaying (this replica holds the relay lease)" } else { "no longer relaying" });
        }
        if state == "done" {
            tracing::info!("relay drained after the switch back to commit mode");
        }
        if matches!(round, Round::Leader { .. }) {
            self.metrics.relay_rounds.inc();
            self.metrics.relay_transactions.inc_by(txs.max(0) as u64);
            self.metrics.relay_events.inc_by(events.max(0) as u64);
        }
        Ok((round, pos))
    }
}
