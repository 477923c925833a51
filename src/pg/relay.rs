//! The relay: in relay mode, one replica at a time announces the rows writers only logged.
//!
//! Writers in relay mode commit without NOTIFY (PostgreSQL serializes the commits of notifying
//! transactions). Every replica runs this task on a connection of its own; each round is one
//! transaction: `pgsse.relay_read()` (the lease: which replica relays; the new position; the rows
//! committed since the stored one), then the payloads, made and signed here ([`Encoder`]: the
//! same work in SQL costs PostgreSQL more than handing the rows out), sent with `pg_notify`. The
//! NOTIFYs and the position commit together, so a replica that dies mid-round sends nothing and
//! moves nothing, and another continues exactly where the last committed round stopped. Every
//! replica then dispatches the payloads from its LISTEN connection as in commit mode. (SQL older
//! than version 5 has only `pgsse.relay()`, the same round in one call, payloads made in SQL: used
//! when `relay_read` is absent.)
//!
//! An idle relay sleeps rather than polls: after a quiet second its round records
//! `pgsse.meta.relay_wake`, and until it wakes, writers in relay mode send an empty NOTIFY on the
//! secret wake channel this connection LISTENs on (only those few transactions take NOTIFY's
//! commit lock). A sleeping relay still runs a round with every lease renewal, so a missed
//! wake-up delays events by at most `RENEW_EVERY`; it never loses one. With
//! `--relay-quiet-interval`, a quiet relay polls that often instead of sleeping, and no writer
//! ever NOTIFYs in relay mode (PostgreSQL refuses to PREPARE a transaction that has).

use std::time::{Duration, Instant};

use tokio_postgres::error::SqlState;
use tokio_util::sync::CancellationToken;

use tokio::sync::mpsc;

use super::payload::{Encoder, LogRow, Verifier};
use super::source::conn::{self, Backoff, Msg};
use super::{with_install_hint, within, PgError};
use crate::defaults::{DEFAULT_RELAY_LEASE, DEFAULT_RELAY_MAX_ROWS};
use crate::metrics::Metrics;

/// Between rounds, what the relaying replica asks: the newest logged transaction visible now,
/// and the snapshot it is visible in. No parameters, so it is planned once per connection (an
/// index-only scan backwards on `tx`); whether a round is needed is decided here, against the
/// position the last round returned (`news`).
const PROBE: &str = "SELECT (SELECT max(e.tx) FROM pgsse.events AS e)::text, pg_current_snapshot()::text";

/// A `pg_snapshot` (`xmin:xmax:xip,...`), as far as the relay's probe needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Snapshot {
    xmax: u64,
    xip: Vec<u64>,
}

impl Snapshot {
    fn parse(s: &str) -> Option<Self> {
        let mut parts = s.splitn(3, ':');
        let (_xmin, xmax, xip) = (parts.next()?, parts.next()?, parts.next()?);
        let xip = xip.split(',').filter(|x| !x.is_empty()).map(str::parse).collect::<Result<_, _>>().ok()?;
        Some(Self { xmax: xmax.parse().ok()?, xip })
    }

    /// Not visible in this snapshot: running, or not yet started.
    fn in_progress(&self, x: u64) -> bool {
        x >= self.xmax || self.xip.contains(&x)
    }
}

/// Whether a round may have something to announce since `position`: a row of a transaction at or
/// above its xmax is visible now, or one of its in-progress transactions has finished (whether
/// that transaction logged rows, a round finds out, and moves the position past it).
fn news(position: &Snapshot, newest: Option<u64>, now: &Snapshot) -> bool {
    newest.is_some_and(|t| t >= position.xmax) || position.xip.iter().any(|&x| !now.in_progress(x))
}

/// A leader runs a full round at least this often, however idle: the round renews the lease and
/// moves the horizon on.
const RENEW_EVERY: Duration = crate::defaults::RELAY_RENEW_EVERY;

/// After this long without anything to announce, the relaying replica goes to sleep until a
/// writer wakes it: waking a backend costs about as much as a probe (~0.17 ms of CPU here), so
/// probing every 10 ms would cost PostgreSQL ~2% of a core on an idle system.
const QUIET_AFTER: Duration = Duration::from_secs(1);

/// Until the next probe or round, after one that began at `began` with `every` between them, the
/// last full round having run at `last_round`: never past the lease's renewal, however long the
/// interval (a quiet relay's may be as long as `RENEW_EVERY`).
fn pause(every: Duration, began: Instant, last_round: Option<Instant>) -> Duration {
    let renew = last_round.map_or(Duration::MAX, |at| RENEW_EVERY.saturating_sub(at.elapsed()));
    every.saturating_sub(began.elapsed()).min(renew)
}

/// Events a round announces from which writers count as busy (5,000 events/s at a 10 ms interval,
/// 2,000 at 25 ms: in between the interval stays as it was).
const BUSY_ROUND: u64 = 50;

/// A round in one call (SQL before version 5).
const WHOLE: &str = "SELECT state, txs, events, pos FROM pgsse.relay($1::text, $2::text::interval, $3::int4, $4::bool)";
/// The round's rows, then what it did (version 5 on).
const READ: &str = "SELECT state, pos, channel, key, tx, id, user_id, event, data, n, last \
                    FROM pgsse.relay_read($1::text, $2::text::interval, $3::int4, $4::bool)";
/// In array order (a function scan, then the projection).
const NOTIFY: &str = "SELECT pg_catalog.pg_notify($1, p) FROM pg_catalog.unnest($2::text[]) AS u(p)";

/// How this connection runs a round, its statements prepared.
enum Sql {
    /// `relay_read`, then `pg_notify`, in one transaction.
    Read { read: tokio_postgres::Statement, notify: tokio_postgres::Statement },
    /// `pgsse.relay()`.
    Whole(tokio_postgres::Statement),
}

/// What a round did: `state` and `pos` as `pgsse.relay_read()` says them, and what it sent.
pub struct Outcome {
    pub state: String,
    pub txs: u64,
    pub events: u64,
    pub pos: Option<String>,
}

/// A round read by `pgsse.relay_read()` (its rows, in the order of its columns), made into its
/// NOTIFYs: what the round did, and the channel and the signed payloads to send (none when it
/// found no rows).
pub fn made(found: &[tokio_postgres::Row]) -> Result<(Outcome, String, Vec<String>), PgError> {
    let (said, rows) =
        found.split_last().ok_or_else(|| PgError::Protocol("pgsse.relay_read() returned no rows".into()))?;
    let mut out = Outcome { state: said.try_get(0)?, txs: 0, events: 0, pos: said.try_get(1)? };
    if rows.is_empty() {
        return Ok((out, String::new(), Vec::new()));
    }
    let mut log = Vec::with_capacity(rows.len());
    for r in rows {
        log.push(LogRow {
            tx: r.try_get(4)?,
            id: r.try_get(5)?,
            user_id: r.try_get(6)?,
            event: r.try_get(7)?,
            data: r.try_get(8)?,
            n: r.try_get(9)?,
            last: r.try_get(10)?,
        });
    }
    // By transaction (as numbers: decimal, no leading zeros) and id, as the encoder takes them;
    // they mostly come so (then sorting costs one pass).
    log.sort_by(|a, b| (a.tx.len(), a.tx, a.id).cmp(&(b.tx.len(), b.tx, b.id)));
    let mut enc = Encoder::default();
    for row in &log {
        enc.push(row);
    }
    let key: Vec<u8> = said.try_get(3)?;
    let payloads = enc.finish(&Verifier::new(&key));
    (out.txs, out.events) = (enc.transactions as u64, enc.events);
    Ok((out, said.try_get(2)?, payloads))
}

type Args<'a> = [&'a (dyn tokio_postgres::types::ToSql + Sync)];

impl Sql {
    async fn prepare(client: &tokio_postgres::Client, t: Duration) -> Result<Self, PgError> {
        let read: bool = within(
            "relay",
            t,
            client.query_one(
                "SELECT to_regprocedure('pgsse.relay_read(text,interval,integer,boolean)') IS NOT NULL",
                &[],
            ),
        )
        .await?
        .try_get(0)?;
        if !read {
            return Ok(Self::Whole(within("relay", t, client.prepare(WHOLE)).await.map_err(with_install_hint)?));
        }
        let (read, notify) =
            within("relay", t, async { tokio::try_join!(client.prepare(READ), client.prepare(NOTIFY)) })
                .await
                .map_err(with_install_hint)?;
        Ok(Self::Read { read, notify })
    }

    /// One round; nothing of it is left behind when it fails.
    async fn round(&self, client: &tokio_postgres::Client, t: Duration, args: &Args<'_>) -> Result<Outcome, PgError> {
        let (read, notify) = match self {
            Self::Whole(whole) => {
                let row = within("relay", t, client.query_one(whole, args)).await?;
                return Ok(Outcome {
                    state: row.try_get(0)?,
                    txs: row.try_get::<_, i32>(1)?.max(0) as u64,
                    events: row.try_get::<_, i64>(2)?.max(0) as u64,
                    pos: row.try_get(3)?,
                });
            }
            Self::Read { read, notify } => (read, notify),
        };
        let r = Self::read(client, t, args, read, notify).await;
        if r.is_err() {
            // No transaction left open for the next round to run in.
            let _ = within("relay", t, client.batch_execute("ROLLBACK")).await;
        }
        r
    }

    /// BEGIN and the read in one round trip (pipelined), then the NOTIFYs and COMMIT in one more
    /// (a failed NOTIFY makes the COMMIT roll back).
    async fn read(
        client: &tokio_postgres::Client,
        t: Duration,
        args: &Args<'_>,
        read: &tokio_postgres::Statement,
        notify: &tokio_postgres::Statement,
    ) -> Result<Outcome, PgError> {
        let began = async { tokio::try_join!(client.batch_execute("BEGIN"), client.query(read, args)) };
        let (_, found) = within("relay", t, began).await?;
        let (out, channel, payloads) = made(&found)?;
        if payloads.is_empty() {
            within("relay", t, client.batch_execute("COMMIT")).await?;
        } else {
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&channel, &payloads];
            let sent = async { tokio::try_join!(client.execute(notify, &params), client.batch_execute("COMMIT")) };
            within("relay", t, sent).await?;
        }
        Ok(out)
    }
}

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
    /// Between rounds while it relays and writers are busy (`--relay-busy-interval`).
    busy_interval: Duration,
    /// Between rounds while it does not (commit mode, or another replica relays): how soon a switch
    /// to relay mode, or a dead relay's expired lease, is noticed.
    idle_interval: Duration,
    /// Between rounds once writers have been quiet for `QUIET_AFTER` (`--relay-quiet-interval`);
    /// `None`: the quiet relay sleeps until a writer wakes it.
    quiet_interval: Option<Duration>,
    timeout: Duration,
    instance: String,
}

impl Relay {
    pub fn new(mut db: tokio_postgres::Config, metrics: Metrics, interval: Duration, idle_interval: Duration) -> Self {
        // A name of its own (unless the URL chose one), so that pg_stat_activity tells the relay's
        // backend from the gateway's others.
        if db.get_application_name() == Some("pgsse") {
            db.application_name("pgsse relay");
        }
        Self {
            db,
            metrics,
            interval,
            busy_interval: interval,
            idle_interval: idle_interval.min(DEFAULT_RELAY_LEASE / 4),
            quiet_interval: None,
            timeout: super::DEFAULT_DB_TIMEOUT,
            instance: format!("{:016x}", rand::random::<u64>()),
        }
    }

    /// The interval while writers are busy (at least the interval).
    pub fn with_busy_interval(mut self, busy: Duration) -> Self {
        self.busy_interval = busy.max(self.interval);
        self
    }

    /// Poll every `quiet` once writers have been quiet, instead of sleeping until one wakes the
    /// relay (`None`: sleep). At most `RENEW_EVERY`, which rounds run at anyway.
    pub fn with_quiet_interval(mut self, quiet: Option<Duration>) -> Self {
        self.quiet_interval = quiet.map(|q| q.max(self.interval).min(RENEW_EVERY));
        self
    }

    /// Between the start of a round that announced `events` and the next: under load most of
    /// what a round costs PostgreSQL is per round (starting its queries, the lease's write, the
    /// commit, the round trips), so a busy relay runs fewer, larger rounds; a quiet one that polls
    /// rather than sleeps, fewer, as it has nothing to announce.
    fn every(&self, events: u64, quiet: bool) -> Duration {
        match self.quiet_interval {
            Some(q) if quiet => q,
            _ if events >= BUSY_ROUND => self.busy_interval,
            _ => self.interval,
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
        let (driver, mut wakeups) = conn::drive(connection);
        let result = self.rounds(&client, &mut wakeups, shutdown).await;
        driver.abort();
        self.metrics.relay_asleep.set(0);
        result
    }

    async fn rounds(
        &self,
        client: &tokio_postgres::Client,
        wakeups: &mut mpsc::UnboundedReceiver<Msg>,
        shutdown: &CancellationToken,
    ) -> Result<(), PgError> {
        let t = self.timeout;
        // Each round reads what committed during it, so it needs READ COMMITTED whatever the
        // database's default. Its commit need not wait for the WAL flush: nothing is acted on as a
        // position until a marker has read the relay's position, and the marker's own synchronous
        // commit flushes the WAL past the round's. (Waiting would cost a flush per round.)
        let setup =
            client.batch_execute("SET synchronous_commit = off; SET default_transaction_isolation = 'read committed'");
        within("relay", t, setup).await?;
        let round = Sql::prepare(client, t).await?;
        let probe = within("relay", t, client.prepare(PROBE)).await?;
        // Before any round that could fall asleep: a writer's wake-up is never sent unheard.
        let channel: String =
            within("relay", t, client.query_one("SELECT channel FROM pgsse.secret", &[])).await?.try_get(0)?;
        if !channel.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(PgError::Protocol(format!("pgsse.secret holds an unusable channel name {channel:?}")));
        }
        within("relay", t, client.batch_execute(&format!("LISTEN \"{channel}_wake\""))).await?;
        let lease = format!("{} milliseconds", DEFAULT_RELAY_LEASE.as_millis());
        let mut leader = false;
        // The relay's position after this replica's last round, and when that round ran.
        let mut last: Option<(Snapshot, Instant)> = None;
        let mut busy = Instant::now();
        // Whether the last round went to sleep (`pgsse.meta.relay_wake` set by it).
        let mut asleep = false;
        // Whether the last round announced anything: then the next one runs without a probe.
        let mut relayed = false;
        // Unless it polls while quiet (`--relay-quiet-interval`): then no writer ever NOTIFYs.
        let sleeps = self.quiet_interval.is_none();
        loop {
            // Rounds start every interval (not an interval after the last one ended), so an event
            // waits at most one interval plus one round.
            let mut began = Instant::now();
            // Asleep: nothing runs until a writer's wake-up (which makes it busy) or the lease's
            // renewal.
            if asleep {
                let renew = last.as_ref().map_or(Duration::ZERO, |(_, at)| RENEW_EVERY.saturating_sub(at.elapsed()));
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    msg = wakeups.recv() => match msg {
                        Some(Msg::Notify(_)) => {
                            busy = Instant::now();
                            self.metrics.relay_wakeups.inc();
                        }
                        Some(Msg::Closed(Some(e))) => return Err(e.into()),
                        Some(Msg::Closed(None)) | None => {
                            return Err(PgError::Protocol("relay connection closed by the server".into()))
                        }
                    },
                    _ = tokio::time::sleep(renew) => {}
                }
                began = Instant::now();
            }
            // While this replica relays, most intervals have nothing new: a probe with a kept plan
            // says so for a fraction of a round's cost (skipped while events flow, as the next
            // round will likely have some). A round still runs every RENEW_EVERY, to keep the
            // lease and the horizon fresh (and to notice a mode switch or a drained relay).
            let quiet = busy.elapsed() > QUIET_AFTER;
            let due = match (&last, leader) {
                _ if asleep || relayed => true,
                // Quiet: the next round goes to sleep (its write is the lease renewal's).
                (Some(_), true) if quiet && sleeps => true,
                (Some((pos, at)), true) if at.elapsed() < RENEW_EVERY => {
                    self.metrics.relay_probes.inc();
                    let row = within("relay", t, client.query_one(&probe, &[])).await?;
                    let newest: Option<String> = row.try_get(0)?;
                    let newest = newest.as_deref().map(super::parse_xid).transpose()?;
                    let now: String = row.try_get(1)?;
                    let now =
                        Snapshot::parse(&now).ok_or_else(|| PgError::Protocol(format!("not a snapshot: {now:?}")))?;
                    news(pos, newest, &now)
                }
                _ => true,
            };
            if !due {
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(pause(self.every(0, quiet), began, last.as_ref().map(|(_, at)| *at))) => {}
                }
                continue;
            }
            let sleep = leader && quiet && sleeps;
            if !asleep {
                // Awake, wake-ups are stale (this round reads what they announced); a replica that
                // does not relay never sleeps, and must not keep them either.
                while wakeups.try_recv().is_ok() {}
            }
            let r = round.round(client, t, &[&self.instance, &lease, &DEFAULT_RELAY_MAX_ROWS, &sleep]).await;
            let mut every = self.interval;
            let next = match r {
                Ok(o) => {
                    relayed = o.txs > 0;
                    if relayed {
                        busy = Instant::now();
                    }
                    every = self.every(o.events, busy.elapsed() > QUIET_AFTER);
                    let (next, pos) = self.on_round(o, &mut leader)?;
                    last = pos.as_deref().and_then(Snapshot::parse).map(|p| (p, Instant::now()));
                    next
                }
                // Another replica's round, or a mode switch, moved the position first: nothing was
                // sent; try again on the next round.
                Err(PgError::Db(e)) if e.code() == Some(&SqlState::T_R_SERIALIZATION_FAILURE) => {
                    tracing::debug!("relay round raced another; retrying");
                    last = None;
                    relayed = false;
                    Round::Standby
                }
                Err(e) => return Err(with_install_hint(e)),
            };
            // Asleep only after a round that recorded it (as the lease holder, with nothing new).
            asleep = sleep && matches!(next, Round::Leader { full: false }) && !relayed;
            self.metrics.relay_asleep.set(i64::from(asleep));
            let pause = match next {
                _ if asleep => Duration::ZERO,
                Round::Leader { full: true } => Duration::ZERO,
                // Never past the lease's renewal, whatever the intervals.
                Round::Leader { full: false } => pause(every, began, last.as_ref().map(|(_, at)| *at)),
                Round::Off | Round::Standby => self.idle_interval,
            };
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// What a round did, and the relay's position after it.
    fn on_round(&self, o: Outcome, leader: &mut bool) -> Result<(Round, Option<String>), PgError> {
        let Outcome { state, txs, events, pos } = o;
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
            self.metrics.relay_transactions.inc_by(txs);
            self.metrics.relay_events.inc_by(events);
        }
        Ok((round, pos))
    }
}

#[cfg(test)]
mod tests;
