//! pgsse: a Server-Sent Events gateway fed by PostgreSQL LISTEN/NOTIFY.
//!
//! The data path, stage by stage:
//!
//! 1. **Triggers** (`sql/install.sql`, installed by a DBA): each INSERT/UPDATE/DELETE on a watched
//!    table appends rows to `pgsse.events` (the durable log) and sends one NOTIFY per statement.
//! 2. **Source** ([`pg::source`]): one dedicated LISTEN connection receives those notifications in
//!    commit order, fetches large events by reference, and tracks the *horizon* through markers.
//! 3. **Encoding** ([`sse`]): each event becomes `text/event-stream` bytes once, with an `id:`
//!    that is a resume position.
//! 4. **Hub** ([`hub`]): routes the bytes to every open stream of the event's user (or all, for a
//!    broadcast) through small bounded queues, never waiting on a client.
//! 5. **HTTP** ([`http`]): authenticates each stream ([`auth`]), replays what a resuming client
//!    missed ([`pg::replay`]), then writes live bytes until the client or the gateway ends it.
//!
//! [`config`] turns flags into a [`Config`]; [`run`] wires the stages together.
#![forbid(unsafe_code)]

pub mod auth;
pub mod cli;
mod clock;
pub mod config;
pub mod defaults;
pub mod demo;
pub mod http;
pub mod hub;
pub mod metrics;
pub mod pg;
pub mod sse;
pub mod throttle;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::Config;

/// Errors that stop the gateway from starting.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Pg(#[from] pg::PgError),
    #[error("cannot listen on {0}: {1}")]
    Bind(std::net::SocketAddr, std::io::Error),
}

/// Runs the gateway on `listener` until `shutdown` resolves, then drains and returns.
pub async fn run(config: Config, listener: TcpListener, shutdown: impl Future<Output = ()>) -> Result<(), RunError> {
    run_with(config, listener, shutdown, None).await
}

/// `run`, with extra routes mounted beside the gateway's (used by `pgsse demo`).
pub async fn run_with(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
    extra: Option<Arc<dyn http::ExtraRoutes>>,
) -> Result<(), RunError> {
    pg::schema::preflight(&config.database, config.db_timeout).await?;
    let metrics = metrics::Metrics::default();
    check_open_files(&config);
    let limits = hub::Limits {
        queue_bytes: config.queue_bytes,
        stall: config.slow_client_timeout,
        max_connections: config.max_connections,
        max_per_user: config.max_connections_per_user,
        heartbeat_slices: heartbeat_slices(config.heartbeat_interval),
    };
    let hub = Arc::new(hub::Hub::new(limits, metrics.clone()));
    let source_state = Arc::new(pg::source::SourceState::default());
    let pool = pg::Pool::new(&config.database, config.pool_size, config.db_timeout, metrics.clone())?;
    let stop = CancellationToken::new();
    let retention = Arc::new(pg::retention::RetentionStatus::default());
    let metrics_listener = match config.metrics_listen {
        Some(addr) => Some(TcpListener::bind(addr).await.map_err(|e| RunError::Bind(addr, e))?),
        None => None,
    };

    let sessions = config
        .auth
        .sessions
        .as_ref()
        .map(|s| Arc::new(pg::sessions::SessionStore::new(pool.clone(), &s.lookup, s.cache_ttl, s.cache_size)));
    let source =
        pg::source::Source::new(config.database.clone(), hub.clone(), source_state.clone(), config.marker_interval)
            .with_sessions(sessions.clone())
            .with_db_timeout(config.db_timeout);
    if let Some(remote) = config.auth.jwt.as_ref().and_then(|j| j.remote()) {
        tokio::spawn(auth::remote::keep_fresh(remote.clone(), metrics.clone(), stop.clone()));
    }
    let relay =
        pg::relay::Relay::new(config.database.clone(), metrics.clone(), config.relay_interval, config.marker_interval)
            .with_busy_interval(config.relay_busy_interval)
            .with_quiet_interval(config.relay_quiet_interval)
            .with_db_timeout(config.db_timeout);
    let tasks = [
        tokio::spawn(source.run(stop.clone())),
        tokio::spawn(relay.run(stop.clone())),
        tokio::spawn(pg::retention::run(
            pool.clone(),
            config.retention,
            prune_interval(config.retention),
            retention.clone(),
            metrics.clone(),
            stop.clone(),
        )),
        tokio::spawn(heartbeats(hub.clone(), source_state.clone(), config.heartbeat_interval, stop.clone())),
        tokio::spawn(expiries(hub.clone(), stop.clone())),
        tokio::spawn(pg::watch_notify_health(pool.clone(), metrics.clone(), stop.clone())),
    ];
    if let Some(l) = metrics_listener {
        if let Ok(addr) = l.local_addr() {
            tracing::info!(%addr, "metrics at /metrics");
        }
        let (header_timeout, max) = (config.header_read_timeout, config.metrics_max_connections);
        tokio::spawn(http::serve_metrics(l, metrics.clone(), stop.clone(), header_timeout, max));
    }
    let authenticator = auth::Authenticator::new(
        config.auth.jwt.clone(),
        config
            .auth
            .sessions
            .as_ref()
            .zip(sessions)
            .map(|(s, store)| auth::SessionAuth { cookie: s.cookie.clone(), store }),
    );
    let draining = CancellationToken::new();
    let shared = Arc::new(http::Shared {
        config,
        hub,
        source: source_state,
        pool,
        metrics,
        auth: authenticator,
        draining,
        extra,
        retention,
    });
    http::serve(listener, shared, shutdown).await;
    stop.cancel();
    for t in tasks {
        let _ = t.await;
    }
    Ok(())
}

/// Closes streams whose credential expired, with `event: auth-expired` first, within about a
/// second of `exp`: one timer for all streams, not one per stream.
async fn expiries(hub: Arc<hub::Hub>, stop: CancellationToken) {
    let notice = hub::Item::notice(sse::auth_expired("token_expired"));
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = clock::unix_now();
        if hub.next_expiry().is_some_and(|t| t <= now) {
            let n = hub.expire(now, &notice);
            tracing::debug!(streams = n, "closed streams whose credential expired");
        }
    }
}

/// Heartbeat ticks per interval at most. Each stream still gets one heartbeat per interval, but a
/// tick writes to one slice of the streams, so live events never wait behind a write to every
/// stream (at 10k streams on one core that burst took ~200 ms; with the default 30 s interval a
/// tick writes to 1/300 of them).
const HEARTBEAT_MAX_SLICES: usize = 1024;
/// Shortest time between two heartbeat ticks (short intervals use fewer slices).
const HEARTBEAT_MIN_TICK: Duration = Duration::from_millis(100);

fn heartbeat_slices(every: Duration) -> usize {
    (every.as_millis() / HEARTBEAT_MIN_TICK.as_millis()).clamp(1, HEARTBEAT_MAX_SLICES as u128) as usize
}

/// One timer for all streams: each tick encodes one heartbeat and queues it on one slice of them.
async fn heartbeats(
    hub: Arc<hub::Hub>,
    source: Arc<pg::source::SourceState>,
    every: Duration,
    stop: CancellationToken,
) {
    let slices = hub.slices();
    let period = every / slices as u32;
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut slice = 0;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        // The horizon is read after every event below it was queued (the source stores it only
        // after dispatching them), so it is a valid resume position for every stream.
        if let Some(at) = source.position() {
            let beat = sse::heartbeat(sse::EventId::horizon(at.history, at.horizon));
            hub.publish_slice(slice, &hub::Item::notice(beat));
        }
        slice = (slice + 1) % slices;
    }
}

/// Warns at start when the open-file limit (`ulimit -n`, systemd's `LimitNOFILE`) is below what
/// the connection caps allow: past it accepts fail (EMFILE) and the caps cannot protect anything.
fn check_open_files(config: &Config) {
    let Some(limit) = open_file_limit() else { return };
    if config.max_tcp_connections == usize::MAX {
        return;
    }
    let metrics = if config.metrics_listen.is_some() { config.metrics_max_connections } else { 0 };
    // The pool, the LISTEN and marker connections, the listeners, logs and a margin.
    let needed = config.max_tcp_connections.saturating_add(metrics).saturating_add(config.pool_size + 32);
    if limit < needed {
        tracing::warn!(
            limit,
            needed,
            "the open-file limit is below --max-tcp-connections plus the metrics and database connections; \
             raise it (ulimit -n, LimitNOFILE) or lower --max-tcp-connections"
        );
    }
}

/// The soft limit on open files, from `/proc/self/limits` (Linux); `None` elsewhere or unlimited.
fn open_file_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Prune often enough that the log never holds much more than `retention` of history.
fn prune_interval(retention: Duration) -> Duration {
    (retention / 10).clamp(Duration::from_secs(1), Duration::from_secs(60))
}
