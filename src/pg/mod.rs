//! Postgres: the only module that talks to the database (LISTEN source, replay, retention, SQL install).

mod deadline;
pub mod demo;
pub mod install;
pub mod payload;
pub mod relay;
pub mod replay;
pub mod retention;
mod seen;
pub mod sessions;
pub mod source;
pub mod throwaway;

use std::str::FromStr;
use std::time::Duration;

use tokio_postgres::NoTls;

use crate::defaults::DEFAULT_CONNECT_TIMEOUT;
pub use crate::defaults::DEFAULT_DB_TIMEOUT;
pub(crate) use deadline::within;
pub use deadline::Pool;

/// Everything that can go wrong at the Postgres boundary.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("invalid database URL: {0}")]
    Url(String),
    #[error("postgres: {}", describe(.0))]
    Db(#[from] tokio_postgres::Error),
    #[error("connection pool: {0}")]
    Pool(String),
    #[error("unexpected value from the database: {0}")]
    Protocol(String),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("no answer from the database on the {conn} connection within {limit:?}")]
    Deadline { conn: &'static str, limit: Duration },
}

/// `db error` alone says nothing: the server's message with its SQLSTATE, detail and hint, or
/// the chain of causes behind a client-side error.
pub fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut s = format!("{}: {} (SQLSTATE {})", db.severity(), db.message(), db.code().code());
        if let Some(d) = db.detail() {
            s.push_str(&format!("\nDETAIL: {d}"));
        }
        if let Some(h) = db.hint() {
            s.push_str(&format!("\nHINT: {h}"));
        }
        return s;
    }
    let mut s = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(inner) = cause {
        s.push_str(&format!(": {inner}"));
        cause = inner.source();
    }
    s
}

/// Parses and completes a connection URL: sets `application_name` and a connect timeout unless
/// the URL already chose them. Never echoes the URL back (it may hold a password).
pub fn parse_url(url: &str) -> Result<tokio_postgres::Config, PgError> {
    let mut cfg = tokio_postgres::Config::from_str(url).map_err(|e| PgError::Url(e.to_string()))?;
    if matches!(cfg.get_ssl_mode(), tokio_postgres::config::SslMode::Require) {
        return Err(PgError::Url(
            "sslmode=require is not supported yet: pgsse connects without TLS (use sslmode=disable or prefer, \
             and keep the gateway on the database's private network)"
                .into(),
        ));
    }
    if cfg.get_application_name().is_none() {
        cfg.application_name("pgsse");
    }
    if cfg.get_connect_timeout().is_none() {
        cfg.connect_timeout(DEFAULT_CONNECT_TIMEOUT);
    }
    // Detect a silently dead peer (e.g. a failed-over host) within about a minute.
    cfg.keepalives(true).keepalives_idle(Duration::from_secs(30));
    Ok(cfg)
}

/// An error from SQL that names pgsse's objects: if one is missing, the installed SQL is older
/// than this gateway, which the message says.
pub(crate) fn with_install_hint(e: PgError) -> PgError {
    use tokio_postgres::error::SqlState;
    let PgError::Db(e) = e else { return e };
    match e.code() {
        Some(c) if *c == SqlState::UNDEFINED_COLUMN || *c == SqlState::UNDEFINED_FUNCTION || *c == SqlState::UNDEFINED_TABLE => {
            PgError::Protocol(format!(
                "the pgsse SQL in this database is missing or older than this gateway ({}): run `pgsse sql install --apply`",
                describe(&e)
            ))
        }
        _ => PgError::Db(e),
    }
}

/// One plain connection with its driver task spawned; used for one-off work (SQL install).
pub async fn connect(cfg: &tokio_postgres::Config) -> Result<tokio_postgres::Client, PgError> {
    let (client, conn) = cfg.connect(NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "postgres connection ended");
        }
    });
    Ok(client)
}

/// A small pool for per-stream work (replay) and housekeeping, never the LISTEN connection.
/// The gateway uses it through `Pool`, which puts a deadline on every use.
pub fn pool(cfg: &tokio_postgres::Config, size: usize) -> Result<deadpool_postgres::Pool, PgError> {
    let mgr = deadpool_postgres::Manager::from_config(
        cfg.clone(),
        NoTls,
        deadpool_postgres::ManagerConfig { recycling_method: deadpool_postgres::RecyclingMethod::Fast },
    );
    deadpool_postgres::Pool::builder(mgr)
        .max_size(size.max(1))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .create_timeout(Some(DEFAULT_CONNECT_TIMEOUT))
        .wait_timeout(Some(DEFAULT_CONNECT_TIMEOUT))
        .build()
        .map_err(|e| PgError::Pool(e.to_string()))
}

/// A row of `pgsse.events`, as the gateway needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    pub id: i64,
    pub tx: u64,
    /// `None`: every connection receives it.
    pub user_id: Option<String>,
    pub event: String,
    /// The JSON text of `data`.
    pub data: String,
}

/// The columns every log query selects, in the order `StoredEvent::from_row` reads them.
pub(crate) const EVENT_COLUMNS: &str = "id, tx::text, user_id, event, data::text";

impl StoredEvent {
    pub(crate) fn from_row(row: &tokio_postgres::Row) -> Result<Self, PgError> {
        let tx: String = row.try_get(1)?;
        Ok(Self {
            id: row.try_get(0)?,
            tx: parse_xid(&tx)?,
            user_id: row.try_get(2)?,
            event: row.try_get(3)?,
            data: row.try_get(4)?,
        })
    }
}

pub(crate) fn parse_xid(s: &str) -> Result<u64, PgError> {
    s.parse().map_err(|_| PgError::Protocol(format!("not a transaction id: {s:?}")))
}

impl From<deadpool_postgres::PoolError> for PgError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        match e {
            deadpool_postgres::PoolError::Backend(e) => PgError::Db(e),
            other => PgError::Pool(other.to_string()),
        }
    }
}

/// How often the database's NOTIFY health is sampled.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// At most one warning about writers waiting on the NOTIFY lock per this period.
const LOCK_WARN_EVERY: Duration = Duration::from_secs(60);

/// Samples the database's NOTIFY health for the metrics: the queue fill level (if it nears 1, a
/// listener somewhere is not reading and Postgres will start refusing NOTIFY: writes fail), the
/// notify mode, and the sessions waiting on the NOTIFY commit lock (in commit mode, the app's
/// writers queue there: relay mode is the cure, which the warning says).
pub async fn watch_notify_health(
    pool: Pool,
    metrics: crate::metrics::Metrics,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut warned = false;
    let mut lock_warned: Option<std::time::Instant> = None;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(SAMPLE_EVERY) => {}
        }
        // PostgreSQL takes this lock (an object lock on database 0 of pg_database) in every
        // notifying transaction's commit and holds it through the WAL flush.
        let sampled = pool
            .run(async |c| {
                Ok(c.query_one(
                    "SELECT pg_notification_queue_usage(),                             (SELECT count(*) FROM pg_locks                               WHERE locktype = 'object' AND classid = 'pg_database'::regclass                                 AND objid = 0 AND NOT granted),                             pgsse.notify_mode()",
                    &[],
                )
                .await?)
            })
            .await;
        let Ok(row) = sampled else { continue };
        let usage: f64 = row.try_get(0).unwrap_or(0.0);
        let waiters: i64 = row.try_get(1).unwrap_or(0);
        let mode: Option<String> = row.try_get(2).unwrap_or(None);
        metrics.notify_queue_usage.set(usage);
        metrics.notify_lock_waiters.set(waiters);
        metrics.relay_mode.set(i64::from(mode.as_deref() == Some("relay")));
        if usage > 0.5 && !warned {
            tracing::warn!(usage, "the NOTIFY queue is over half full: some listener is not keeping up");
        }
        warned = usage > 0.5;
        if waiters > 0
            && mode.as_deref() == Some("commit")
            && lock_warned.is_none_or(|t| t.elapsed() >= LOCK_WARN_EVERY)
        {
            lock_warned = Some(std::time::Instant::now());
            tracing::warn!(
                waiters,
                "writers are waiting on PostgreSQL's NOTIFY commit lock (commit mode: every writing transaction \
                 notifies as it commits, one at a time); switch to relay mode: SELECT pgsse.set_notify_mode('relay')"
            );
        }
    }
}
