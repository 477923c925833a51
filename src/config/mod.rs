//! Command line and environment: parse, validate every flag, report all problems at once.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;

use crate::cli::ServeArgs;

mod auth;
pub use auth::{AuthSetup, SessionSetup};

/// One problem with one flag. `Config` validation collects these and reports them all together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The long flag, e.g. `--jwt-secret`.
    pub flag: &'static str,
    pub message: String,
}

impl ConfigError {
    pub fn new(flag: &'static str, message: impl Into<String>) -> Self {
        Self { flag, message: message.into() }
    }

    /// The environment variable that sets the same value: `--jwt-secret` -> `PGSSE_JWT_SECRET`.
    pub fn env_name(&self) -> String {
        format!("PGSSE_{}", self.flag.trim_start_matches('-').replace('-', "_").to_uppercase())
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}): {}", self.flag, self.env_name(), self.message)
    }
}

/// Every problem found in one configuration, reported together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.iter().map(|e| format!("  {e}")).collect::<Vec<_>>().join("\n"))]
pub struct ConfigErrors(pub Vec<ConfigError>);

/// Validated configuration of `pgsse serve`.
#[derive(Clone)]
pub struct Config {
    pub database: tokio_postgres::Config,
    pub listen: SocketAddr,
    pub path: String,
    pub heartbeat_interval: Duration,
    /// The authentication methods `--auth` turned on.
    pub auth: AuthSetup,
    pub retention: Duration,
    pub marker_interval: Duration,
    /// Relay mode's round interval (`--relay-interval`).
    pub relay_interval: Duration,
    /// The relay's interval while writers are busy (at least `relay_interval`).
    pub relay_busy_interval: Duration,
    /// Between relay rounds once writers are quiet, instead of sleeping until one wakes the relay
    /// (`--relay-quiet-interval`; `None`: sleep).
    pub relay_quiet_interval: Option<Duration>,
    pub queue_bytes: usize,
    pub replay_timeout: Duration,
    /// `--slow-client-timeout`: a client that takes none of its waiting bytes this long is cut.
    pub slow_client_timeout: Duration,
    pub db_timeout: Duration,
    pub pool_size: usize,
    pub shutdown_timeout: Duration,
    pub drain_period: Duration,
    pub max_connections: usize,
    pub max_connections_per_user: usize,
    pub max_header_bytes: usize,
    pub header_read_timeout: Duration,
    /// Exact origins allowed for CORS (no trailing slash).
    pub cors_origins: Vec<String>,
    pub metrics_listen: Option<SocketAddr>,
    /// Connection caps of the two listeners (`usize::MAX`: no limit).
    pub max_tcp_connections: usize,
    pub metrics_max_connections: usize,
    pub trust_proxy: bool,
    pub reuse_port: bool,
}

impl Config {
    /// Parses `pgsse serve` arguments (without the program and subcommand names), as tests and
    /// embedders need.
    pub fn from_argv<I, T>(args: I) -> Result<Config, ConfigErrors>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        #[derive(Parser)]
        struct Serve {
            #[command(flatten)]
            args: ServeArgs,
        }
        let argv = std::iter::once(std::ffi::OsString::from("pgsse-serve")).chain(args.into_iter().map(Into::into));
        let parsed =
            Serve::try_parse_from(argv).map_err(|e| ConfigErrors(vec![ConfigError::new("serve", e.to_string())]))?;
        Config::from_args(&parsed.args)
    }

    pub fn from_args(a: &ServeArgs) -> Result<Config, ConfigErrors> {
        let mut errs = Vec::new();
        let url = a.database_url.clone().or_else(|| std::env::var("DATABASE_URL").ok());
        let database = match url.as_deref().map(crate::pg::parse_url) {
            None => {
                errs.push(ConfigError::new("--database-url", "required (or set DATABASE_URL)"));
                None
            }
            Some(Err(e)) => {
                errs.push(ConfigError::new("--database-url", e.to_string()));
                None
            }
            Some(Ok(c)) => Some(c),
        };
        let listen = a
            .listen
            .parse::<SocketAddr>()
            .map_err(|_| {
                errs.push(ConfigError::new("--listen", format!("{:?} is not an address like 127.0.0.1:8080", a.listen)))
            })
            .ok();
        if !a.path.starts_with('/') || a.path.contains(['?', '#', ' ']) {
            errs.push(ConfigError::new("--path", format!("{:?} must be a plain URL path starting with /", a.path)));
        }
        let heartbeat_interval =
            duration(&mut errs, "--heartbeat-interval", &a.heartbeat_interval, Duration::from_millis(100));
        let retention = duration(&mut errs, "--retention", &a.retention, Duration::from_secs(1));
        let marker_interval = duration(&mut errs, "--marker-interval", &a.marker_interval, Duration::from_millis(10));
        let relay_interval = duration(&mut errs, "--relay-interval", &a.relay_interval, Duration::from_millis(1));
        let relay_busy_interval = match (&a.relay_busy_interval, relay_interval) {
            (None, Some(every)) => Some(every.max(crate::defaults::DEFAULT_RELAY_BUSY_INTERVAL)),
            (None, None) => None,
            (Some(s), every) => {
                match (duration(&mut errs, "--relay-busy-interval", s, Duration::from_millis(1)), every) {
                    (Some(busy), Some(every)) if busy < every => {
                        errs.push(ConfigError::new(
                            "--relay-busy-interval",
                            format!("{s:?} is shorter than --relay-interval ({})", humantime::format_duration(every)),
                        ));
                        None
                    }
                    (busy, _) => busy,
                }
            }
        };
        let relay_quiet_interval = a.relay_quiet_interval.as_deref().and_then(|s| {
            let quiet = duration(&mut errs, "--relay-quiet-interval", s, Duration::from_millis(1))?;
            let longest = crate::defaults::RELAY_RENEW_EVERY;
            let wrong = match relay_interval {
                Some(every) if every > longest => Some(format!(
                    "cannot be used with a --relay-interval longer than {}",
                    humantime::format_duration(longest)
                )),
                Some(every) if quiet < every => {
                    Some(format!("{s:?} is shorter than --relay-interval ({})", humantime::format_duration(every)))
                }
                _ if quiet > longest => Some(format!(
                    "{s:?} is longer than {} (the relay renews its lease with a round that often anyway)",
                    humantime::format_duration(longest)
                )),
                _ => None,
            };
            match wrong {
                Some(why) => {
                    errs.push(ConfigError::new("--relay-quiet-interval", why));
                    None
                }
                None => Some(quiet),
            }
        });
        let replay_timeout = duration(&mut errs, "--replay-timeout", &a.replay_timeout, Duration::from_millis(10));
        let slow_client_timeout =
            duration(&mut errs, "--slow-client-timeout", &a.slow_client_timeout, Duration::from_millis(100));
        let db_timeout = duration(&mut errs, "--db-timeout", &a.db_timeout, Duration::from_millis(100));
        let shutdown_timeout = duration(&mut errs, "--shutdown-timeout", &a.shutdown_timeout, Duration::ZERO);
        let drain_period = duration(&mut errs, "--drain-period", &a.drain_period, Duration::ZERO);
        if let (Some(d), Some(t)) = (drain_period, shutdown_timeout) {
            if t < d {
                errs.push(ConfigError::new(
                    "--shutdown-timeout",
                    format!(
                        "{} is shorter than --drain-period {}: streams could not all be drained",
                        humantime::format_duration(t),
                        humantime::format_duration(d)
                    ),
                ));
            }
        }
        let header_read_timeout =
            duration(&mut errs, "--header-read-timeout", &a.header_read_timeout, Duration::from_millis(100));
        let max_header_bytes = match parse_size(&a.max_header_bytes) {
            Some(n) if (8192..=1 << 20).contains(&n) => Some(n),
            _ => {
                errs.push(ConfigError::new(
                    "--max-header-bytes",
                    format!("{:?} is not a size between 8KiB and 1MiB", a.max_header_bytes),
                ));
                None
            }
        };
        let mut cors_origins = Vec::new();
        for o in a.cors_origin.iter().map(|o| o.trim()).filter(|o| !o.is_empty()) {
            match check_origin(o) {
                Ok(o) => cors_origins.push(o),
                Err(msg) => errs.push(ConfigError::new("--cors-origin", msg)),
            }
        }
        let metrics_listen = match a.metrics_listen.trim() {
            "" | "off" | "none" => None,
            addr => match addr.parse::<SocketAddr>() {
                Ok(a) => Some(a),
                Err(_) => {
                    errs.push(ConfigError::new(
                        "--metrics-listen",
                        format!("{addr:?} is not an address like 127.0.0.1:9464 (or off)"),
                    ));
                    None
                }
            },
        };
        let queue_bytes = match parse_size(&a.max_queue_bytes) {
            Some(n) if n >= 1024 => Some(n),
            _ => {
                errs.push(ConfigError::new(
                    "--max-queue-bytes",
                    format!("{:?} is not a size of at least 1KiB (e.g. 1MiB, 262144)", a.max_queue_bytes),
                ));
                None
            }
        };
        listener_caps(a, metrics_listen.is_some(), &mut errs);
        if a.db_pool_size == 0 {
            errs.push(ConfigError::new("--db-pool-size", "must be at least 1"));
        }
        let auth = a.auth.build(&mut errs);

        let (Some(drain_period), Some(header_read_timeout), Some(max_header_bytes), Some(db_timeout)) =
            (drain_period, header_read_timeout, max_header_bytes, db_timeout)
        else {
            return Err(ConfigErrors(errs));
        };
        // Data the peer has not acknowledged for the whole deadline means it is gone: the kernel
        // then closes the socket too, so nothing lingers on a dead host.
        let database = database.map(|mut d| {
            if d.get_tcp_user_timeout().is_none() {
                d.tcp_user_timeout(db_timeout);
            }
            d
        });
        match (
            (database, slow_client_timeout),
            listen,
            heartbeat_interval,
            auth,
            retention,
            marker_interval,
            queue_bytes,
            replay_timeout,
            shutdown_timeout,
            (relay_interval, relay_busy_interval),
        ) {
            (
                (Some(database), Some(slow_client_timeout)),
                Some(listen),
                Some(heartbeat_interval),
                Some(auth),
                Some(retention),
                Some(marker_interval),
                Some(queue_bytes),
                Some(replay_timeout),
                Some(shutdown_timeout),
                (Some(relay_interval), Some(relay_busy_interval)),
            ) if errs.is_empty() => Ok(Config {
                database,
                listen,
                path: a.path.clone(),
                heartbeat_interval,
                auth,
                retention,
                marker_interval,
                relay_interval,
                relay_busy_interval,
                relay_quiet_interval,
                queue_bytes,
                replay_timeout,
                slow_client_timeout,
                db_timeout,
                pool_size: a.db_pool_size,
                shutdown_timeout,
                drain_period,
                max_connections: a.max_connections,
                max_connections_per_user: a.max_connections_per_user,
                max_header_bytes,
                header_read_timeout,
                cors_origins,
                metrics_listen,
                max_tcp_connections: if a.max_tcp_connections == 0 { usize::MAX } else { a.max_tcp_connections },
                metrics_max_connections: a.metrics_max_connections,
                trust_proxy: a.trust_proxy,
                reuse_port: a.reuse_port,
            }),
            _ => Err(ConfigErrors(errs)),
        }
    }
}

/// The listeners' connection caps: a cap that refuses streams before `--max-connections` could
/// answer them, or one for a listener that is off, is a mistake.
fn listener_caps(a: &ServeArgs, metrics_on: bool, errs: &mut Vec<ConfigError>) {
    let (tcp, streams) = (a.max_tcp_connections, a.max_connections);
    if tcp != 0 && streams != 0 && tcp < streams {
        errs.push(ConfigError::new(
            "--max-tcp-connections",
            format!("{tcp} is below --max-connections ({streams}): streams would be cut off at accept instead of getting their 503; raise it (0: no limit) or lower --max-connections"),
        ));
    }
    if a.metrics_max_connections == 0 {
        errs.push(ConfigError::new("--metrics-max-connections", "must be at least 1"));
    } else if !metrics_on && a.metrics_max_connections != crate::defaults::DEFAULT_METRICS_MAX_CONNECTIONS {
        errs.push(ConfigError::new(
            "--metrics-max-connections",
            "has no effect: --metrics-listen is off (set an address or remove this flag)",
        ));
    }
}

/// An allowed CORS origin: `scheme://host[:port]`, compared exactly with the browser's `Origin`.
fn check_origin(o: &str) -> Result<String, String> {
    if o == "*" || o.contains('*') {
        return Err("`*` is not allowed: streams are sent with credentials, so list exact origins".into());
    }
    let o = o.trim_end_matches('/');
    let ok = match o.split_once("://") {
        Some((scheme, rest)) => {
            matches!(scheme, "http" | "https")
                && !rest.is_empty()
                && !rest.contains(['/', '?', '#', '@', ' '])
                && rest.bytes().all(|b| b.is_ascii_graphic())
        }
        None => false,
    };
    if ok {
        Ok(o.to_string())
    } else {
        Err(format!("{o:?} is not an origin like https://app.example.com or http://localhost:3000"))
    }
}

/// Parses `30s`, `250ms`, `1h 30m`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    humantime::parse_duration(s).ok()
}

fn duration(errs: &mut Vec<ConfigError>, flag: &'static str, s: &str, min: Duration) -> Option<Duration> {
    match parse_duration(s) {
        Some(d) if d >= min => Some(d),
        Some(_) => {
            errs.push(ConfigError::new(
                flag,
                format!("{s:?} is shorter than the minimum {}", humantime::format_duration(min)),
            ));
            None
        }
        None => {
            errs.push(ConfigError::new(flag, format!("{s:?} is not a duration like 30s, 250ms or 1h")));
            None
        }
    }
}

/// Parses `1048576`, `512KiB`, `1MiB`, `2MB` (decimal and binary units, case-insensitive).
pub fn parse_size(s: &str) -> Option<usize> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: usize = num.parse().ok()?;
    let mult: usize = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mult)
}

#[cfg(test)]
mod tests;
