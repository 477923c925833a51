//! The command line: every subcommand and flag as clap parses them, as text. `config` validates
//! `serve`'s; defaults are shown from the typed values in `defaults`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::defaults::*;

#[derive(Debug, Parser)]
#[command(name = "pgsse", version, about = "Server-Sent Events gateway fed by PostgreSQL LISTEN/NOTIFY")]
pub struct Cli {
    /// Log format: text or json. Verbosity follows RUST_LOG (default: info).
    #[arg(long, global = true, env = "PGSSE_LOG_FORMAT", default_value = DEFAULT_LOG_FORMAT)]
    pub log_format: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway.
    Serve(Box<ServeArgs>),
    /// Print or apply the SQL a DBA installs.
    Sql {
        #[command(subcommand)]
        action: SqlAction,
    },
    /// Mint an HS256 JWT for curl and local testing.
    Token(TokenArgs),
    /// Try pgsse in a minute: throwaway PostgreSQL, demo table and page, live gateway.
    Demo(DemoArgs),
    /// Check a deployment, read-only (safe in production; run it as the gateway's role): the SQL's
    /// version, watched tables, grants, notify mode, NOTIFY lock and queue. Exits 1 on errors.
    Check(CheckArgs),
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// PostgreSQL URL (also DATABASE_URL), best with the gateway's own role.
    #[arg(long, env = "PGSSE_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Output: text (one line per check) or json (for monitoring).
    #[arg(long, default_value = "text")]
    pub format: String,
    /// The gateway's role, whose grants are checked (default: the role connecting).
    #[arg(long, env = "PGSSE_GATEWAY_ROLE")]
    pub gateway_role: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum SqlAction {
    /// Print (or with --apply, run) the install script: schema pgsse, event log, triggers API.
    Install(SqlArgs),
    /// Print (or with --apply, run) the uninstall script: removes everything pgsse created.
    Uninstall(SqlArgs),
    /// Show what is installed: the version, the watched tables and their options, the notify
    /// mode, and what `sql install --apply` would change.
    Status(StatusArgs),
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// PostgreSQL URL (also DATABASE_URL).
    #[arg(long, env = "PGSSE_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
}

#[derive(Debug, Args)]
pub struct SqlArgs {
    /// Run the script against --database-url instead of printing it.
    #[arg(long)]
    pub apply: bool,
    /// PostgreSQL URL (also DATABASE_URL).
    #[arg(long, env = "PGSSE_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    /// The user id (the `sub` claim).
    #[arg(long, env = "PGSSE_SUB")]
    pub sub: String,
    /// HS256 secret (the same as `serve --jwt-secret`).
    #[arg(long, env = "PGSSE_JWT_SECRET")]
    pub secret: String,
    /// Lifetime, e.g. 15m, 1h, 7d.
    #[arg(long, default_value_t = duration_text(DEFAULT_TOKEN_TTL), env = "PGSSE_TTL")]
    pub ttl: String,
    /// `iss` claim to include.
    #[arg(long, env = "PGSSE_JWT_ISSUER")]
    pub issuer: Option<String>,
    /// `aud` claim to include.
    #[arg(long, env = "PGSSE_JWT_AUDIENCE")]
    pub audience: Option<String>,
}

/// `pgsse serve` flags. Values are taken as text and validated together in `Config::from_args`,
/// so one run reports every mistake.
#[derive(Debug, Args, Clone)]
pub struct ServeArgs {
    /// PostgreSQL URL, e.g. postgres://pgsse@db/app (also DATABASE_URL).
    #[arg(long, env = "PGSSE_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Address to accept browser connections on.
    #[arg(long, env = "PGSSE_LISTEN", default_value_t = DEFAULT_LISTEN.to_string())]
    pub listen: String,
    /// URL path of the event stream.
    #[arg(long, env = "PGSSE_PATH", default_value = DEFAULT_PATH)]
    pub path: String,
    /// How often every stream gets `event: heartbeat` (keeps proxies from closing idle streams).
    #[arg(long, env = "PGSSE_HEARTBEAT_INTERVAL", default_value_t = duration_text(DEFAULT_HEARTBEAT_INTERVAL))]
    pub heartbeat_interval: String,

    #[command(flatten)]
    pub auth: AuthArgs,

    /// How long events stay in pgsse.events for resuming clients.
    #[arg(long, env = "PGSSE_RETENTION", default_value_t = duration_text(DEFAULT_RETENTION))]
    pub retention: String,
    /// How often the horizon marker is sent (bounds how stale resume positions are).
    #[arg(long, env = "PGSSE_MARKER_INTERVAL", default_value_t = duration_text(DEFAULT_MARKER_INTERVAL))]
    pub marker_interval: String,
    /// In relay mode (`SELECT pgsse.set_notify_mode('relay')`), how often the relay replica
    /// announces what writers committed: at most this much latency is added to an event.
    #[arg(long, env = "PGSSE_RELAY_INTERVAL", default_value_t = duration_text(DEFAULT_RELAY_INTERVAL))]
    pub relay_interval: String,
    /// The relay's interval while writers are busy (its last round found 50 events or more):
    /// fewer, larger rounds, cheaper for PostgreSQL per event. At least --relay-interval; set it
    /// to --relay-interval for one interval at any load. [default: 25ms, or --relay-interval if
    /// longer]
    #[arg(long, env = "PGSSE_RELAY_BUSY_INTERVAL")]
    pub relay_busy_interval: Option<String>,
    /// Once writers have been quiet for a second, the relay polls this often instead of sleeping
    /// (at least --relay-interval, at most 400ms). By default a quiet relay sleeps, and the first
    /// writing transaction after the pause wakes it with one NOTIFY, which takes NOTIFY's commit
    /// lock and after which PostgreSQL refuses PREPARE TRANSACTION. Set, no writer ever NOTIFYs in
    /// relay mode, and the first event after a pause waits up to this long. [default: unset]
    #[arg(long, env = "PGSSE_RELAY_QUIET_INTERVAL")]
    pub relay_quiet_interval: Option<String>,
    /// Bytes queued for one stream (e.g. 1MiB, 256KiB); beyond it the stream reads what it
    /// missed back from the log, as fast as its client takes it, instead of holding it.
    #[arg(long, env = "PGSSE_MAX_QUEUE_BYTES", default_value_t = size_text(DEFAULT_QUEUE_BYTES))]
    pub max_queue_bytes: String,
    /// A stream whose client takes none of its waiting bytes for this long is cut (it resumes).
    #[arg(long, env = "PGSSE_SLOW_CLIENT_TIMEOUT", default_value_t = duration_text(DEFAULT_SLOW_CLIENT_TIMEOUT))]
    pub slow_client_timeout: String,
    /// How long a resuming stream may wait for its replay before it gets 503.
    #[arg(long, env = "PGSSE_REPLAY_TIMEOUT", default_value_t = duration_text(DEFAULT_REPLAY_TIMEOUT))]
    pub replay_timeout: String,
    /// Every database round trip (markers, the LISTEN connection's queries, each step of a replay,
    /// session lookups, housekeeping) must answer within this, or its connection is treated as
    /// lost: a database that goes silent is noticed, the gateway reconnects and catches up.
    #[arg(long, env = "PGSSE_DB_TIMEOUT", default_value_t = duration_text(DEFAULT_DB_TIMEOUT))]
    pub db_timeout: String,
    /// Connections in the pool used for replay and retention (the LISTEN and marker connections are extra).
    #[arg(long, env = "PGSSE_DB_POOL_SIZE", default_value_t = DEFAULT_POOL_SIZE)]
    pub db_pool_size: usize,
    /// On SIGTERM/SIGINT, open streams are closed spread over this period (each first gets a
    /// jittered `retry:`), so clients do not all reconnect at once.
    #[arg(long, env = "PGSSE_DRAIN_PERIOD", default_value_t = duration_text(DEFAULT_DRAIN_PERIOD))]
    pub drain_period: String,
    /// How long shutdown may take in all (at least the drain period) before the process exits.
    #[arg(long, env = "PGSSE_SHUTDOWN_TIMEOUT", default_value_t = duration_text(DEFAULT_SHUTDOWN_TIMEOUT))]
    pub shutdown_timeout: String,
    /// Open streams allowed in this process (0: no limit); beyond it 503 + Retry-After.
    #[arg(long, env = "PGSSE_MAX_CONNECTIONS", default_value_t = DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// Open streams allowed per user (0: no limit); beyond it 429.
    #[arg(long, env = "PGSSE_MAX_CONNECTIONS_PER_USER", default_value_t = DEFAULT_MAX_CONNECTIONS_PER_USER)]
    pub max_connections_per_user: usize,
    /// Largest request head accepted (431 beyond it).
    #[arg(long, env = "PGSSE_MAX_HEADER_BYTES", default_value_t = size_text(DEFAULT_MAX_HEADER_BYTES))]
    pub max_header_bytes: String,
    /// A client must send its whole request head within this time; a connection idle between
    /// requests is closed after it too. Both listeners.
    #[arg(long, env = "PGSSE_HEADER_READ_TIMEOUT", default_value_t = duration_text(DEFAULT_HEADER_READ_TIMEOUT))]
    pub header_read_timeout: String,
    /// Origins allowed to open streams cross-origin with credentials, exact (https://app.example.com);
    /// repeat or comma-separate. Never `*`.
    #[arg(long, env = "PGSSE_CORS_ORIGIN", value_delimiter = ',')]
    pub cors_origin: Vec<String>,
    /// Address for Prometheus metrics at /metrics (`off` disables). Keep it off the public port.
    #[arg(long, env = "PGSSE_METRICS_LISTEN", default_value_t = DEFAULT_METRICS_LISTEN.to_string())]
    pub metrics_listen: String,
    /// TCP connections open at once on --listen, streams and idle keep-alive included (0: no
    /// limit). Beyond it a new connection gets 503 and is closed at once, so the open ones keep
    /// their file descriptors. At least --max-connections.
    #[arg(long, env = "PGSSE_MAX_TCP_CONNECTIONS", default_value_t = DEFAULT_MAX_TCP_CONNECTIONS)]
    pub max_tcp_connections: usize,
    /// Connections open at once on --metrics-listen (at least 1); beyond it new ones are closed
    /// at once. Like --listen, a connection that sends no complete request head within
    /// --header-read-timeout (idle keep-alive included) is closed.
    #[arg(long, env = "PGSSE_METRICS_MAX_CONNECTIONS", default_value_t = DEFAULT_METRICS_MAX_CONNECTIONS)]
    pub metrics_max_connections: usize,
    /// Behind a proxy: log the client address from X-Forwarded-For (used for logs only).
    #[arg(long, env = "PGSSE_TRUST_PROXY")]
    pub trust_proxy: bool,
    /// Let several pgsse processes listen on the same address (SO_REUSEPORT); the kernel spreads
    /// connections over them. How one machine holds more streams than one process may open files.
    #[arg(long, env = "PGSSE_REUSE_PORT")]
    pub reuse_port: bool,
}

#[derive(Debug, Args, Clone)]
pub struct AuthArgs {
    /// Authentication methods, comma-separated: `jwt` (Bearer header, cookie or query token) and/or
    /// `better-auth` (the app's Better Auth session cookie, checked against its session table).
    #[arg(long, env = "PGSSE_AUTH", value_delimiter = ',', default_value = DEFAULT_AUTH)]
    pub auth: Vec<String>,
    /// HMAC secret for HS256/HS384/HS512 tokens.
    #[arg(long, env = "PGSSE_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// PEM public key file (RSA, EC P-256/P-384 or Ed25519); repeat or comma-separate for several.
    #[arg(long, env = "PGSSE_JWT_PUBLIC_KEY_FILE", value_delimiter = ',')]
    pub jwt_public_key_file: Vec<PathBuf>,
    /// JWK set file; the key is chosen by the token's `kid`.
    #[arg(long, env = "PGSSE_JWKS_FILE")]
    pub jwks_file: Option<PathBuf>,
    /// Allowed JWT algorithms, comma-separated (default: all that fit the configured keys).
    #[arg(long, env = "PGSSE_JWT_ALGORITHMS", value_delimiter = ',')]
    pub jwt_algorithms: Vec<String>,
    /// Required `iss` claim.
    #[arg(long, env = "PGSSE_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Required `aud` claim.
    #[arg(long, env = "PGSSE_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// Claim that holds the user id.
    #[arg(long, env = "PGSSE_USER_CLAIM", default_value = DEFAULT_USER_CLAIM)]
    pub user_claim: String,
    /// Also read the token from this cookie.
    #[arg(long, env = "PGSSE_TOKEN_COOKIE")]
    pub token_cookie: Option<String>,
    /// Query parameter that may carry the token (EventSource cannot set headers); empty disables.
    #[arg(long, env = "PGSSE_TOKEN_QUERY_PARAM", default_value = DEFAULT_TOKEN_QUERY_PARAM)]
    pub token_query_param: String,

    /// JWK set URL, e.g. https://app.example.com/api/auth/jwks (Better Auth's JWT plugin);
    /// fetched at start, refreshed, and refetched early for an unknown `kid`.
    #[arg(long, env = "PGSSE_JWKS_URL")]
    pub jwks_url: Option<String>,
    /// How often --jwks-url is refetched.
    #[arg(long, env = "PGSSE_JWKS_REFRESH", default_value_t = duration_text(DEFAULT_JWKS_REFRESH))]
    pub jwks_refresh: String,

    /// The app's Better Auth secret (also BETTER_AUTH_SECRET); comma-separate to accept old ones
    /// during a rotation, newest first.
    #[arg(long, env = "PGSSE_BETTER_AUTH_SECRET", value_delimiter = ',', hide_env_values = true)]
    pub better_auth_secret: Vec<String>,
    /// Cookie name prefix: the cookie is `<prefix>.session_token` (or `__Secure-<prefix>.session_token`).
    #[arg(long, env = "PGSSE_BETTER_AUTH_COOKIE_PREFIX", default_value = DEFAULT_COOKIE_PREFIX)]
    pub better_auth_cookie_prefix: String,
    /// The app's session table (schema-qualified if needed).
    #[arg(long, env = "PGSSE_SESSION_TABLE", default_value = DEFAULT_SESSION_TABLE)]
    pub session_table: String,
    /// Its column holding the session token.
    #[arg(long, env = "PGSSE_SESSION_TOKEN_COLUMN", default_value = DEFAULT_TOKEN_COLUMN)]
    pub session_token_column: String,
    /// Its column holding the user id.
    #[arg(long, env = "PGSSE_SESSION_USER_COLUMN", default_value = DEFAULT_USER_COLUMN)]
    pub session_user_column: String,
    /// Its column holding the expiry.
    #[arg(long, env = "PGSSE_SESSION_EXPIRES_COLUMN", default_value = DEFAULT_EXPIRES_COLUMN)]
    pub session_expires_column: String,
    /// Instead of the table columns: a query taking the token as $1 and returning the user id
    /// (text) and optionally the expiry (timestamptz) of a live session.
    #[arg(long, env = "PGSSE_SESSION_QUERY")]
    pub session_query: Option<String>,
    /// How long a found session is trusted without asking the database again.
    #[arg(long, env = "PGSSE_SESSION_CACHE_TTL", default_value_t = duration_text(DEFAULT_SESSION_CACHE_TTL))]
    pub session_cache_ttl: String,
    /// Most sessions kept in that cache.
    #[arg(long, env = "PGSSE_SESSION_CACHE_SIZE", default_value_t = DEFAULT_SESSION_CACHE_SIZE)]
    pub session_cache_size: usize,
}

/// Flags of `pgsse demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Use this database instead of starting a throwaway PostgreSQL.
    #[arg(long, env = "PGSSE_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Address to serve the demo page and the stream on.
    #[arg(long, env = "PGSSE_LISTEN", default_value_t = DEFAULT_LISTEN.to_string())]
    pub listen: String,
    /// Keep the database and the token secret here across restarts, so open tabs resume.
    #[arg(long)]
    pub state_dir: Option<std::path::PathBuf>,
}

/// A duration as the flags write it, in its largest whole unit (`24h`, `30s`, `250ms`).
pub(crate) fn duration_text(d: Duration) -> String {
    let ms = d.as_millis();
    match ms {
        0 => "0s".to_owned(),
        _ if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        _ if ms % 60_000 == 0 => format!("{}m", ms / 60_000),
        _ if ms % 1000 == 0 => format!("{}s", ms / 1000),
        _ => format!("{ms}ms"),
    }
}

/// A size as the flags write it, in its largest whole binary unit (`1MiB`, `16KiB`).
fn size_text(n: usize) -> String {
    match n {
        0 => "0".to_owned(),
        _ if n % (1 << 20) == 0 => format!("{}MiB", n >> 20),
        _ if n % (1 << 10) == 0 => format!("{}KiB", n >> 10),
        _ => n.to_string(),
    }
}
