//! Every default value, typed, in one place. The flags show them as text derived from these
//! (`cli`), and a test checks that the parsed flags come back to these values.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

// `pgsse serve`.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::new(LOCALHOST, 8080);
pub const DEFAULT_PATH: &str = "/api/notifications/stream";
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(30);
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(24 * 3600);
pub const DEFAULT_MARKER_INTERVAL: Duration = Duration::from_millis(250);
/// Relay mode's round interval: what it adds to an event's latency at most (BENCHMARKS.md,
/// "What pgsse costs your writers", for how it was chosen).
pub const DEFAULT_RELAY_INTERVAL: Duration = Duration::from_millis(10);
/// Relay mode's round interval while writers are busy (or `--relay-interval`, if longer): under
/// load most of a round's cost to PostgreSQL is per round, not per event, so fewer, larger rounds
/// cost it about half as much per event at 25 ms as at 10 (BENCHMARKS.md).
pub const DEFAULT_RELAY_BUSY_INTERVAL: Duration = Duration::from_millis(25);
/// How often a relay replica renews its lease, however idle (writing once a quarter of the lease
/// has passed, so well before it expires): also the longest a quiet relay goes without a round,
/// and so the longest `--relay-quiet-interval` can be.
pub const RELAY_RENEW_EVERY: Duration = Duration::from_millis(400);
/// How long the relay replica's lease lasts without a renewal: another replica takes over within
/// about this long after the relay dies or goes silent.
pub const DEFAULT_RELAY_LEASE: Duration = Duration::from_secs(1);
/// Rows announced per relay round, about (whole transactions); a longer backlog goes in rounds.
pub const DEFAULT_RELAY_MAX_ROWS: i32 = 10_000;
/// A stream's queue bound: beyond it the stream reads what it missed back from the log instead
/// of holding it (so a burst costs at most this per stream, however large).
pub const DEFAULT_QUEUE_BYTES: usize = 1 << 20;
/// A stream whose client takes none of its waiting bytes for this long is cut. Far above any
/// healthy reader's pause (a burst is drained in milliseconds to seconds), short enough that a
/// stuck client's socket and slot are freed within a minute.
pub const DEFAULT_SLOW_CLIENT_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_REPLAY_TIMEOUT: Duration = Duration::from_secs(10);
/// Every database round trip's deadline (`--db-timeout`). Well above any healthy round trip of the
/// gateway's small statements (a marker, a LISTEN, a session lookup, a batch of 1,000 deletes) on a
/// busy server, so load alone does not cause reconnects; short enough that a silent database is
/// noticed within seconds.
pub const DEFAULT_DB_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_POOL_SIZE: usize = 4;
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(15);
pub const DEFAULT_DRAIN_PERIOD: Duration = Duration::from_secs(10);
pub const DEFAULT_MAX_CONNECTIONS: usize = 100_000;
pub const DEFAULT_MAX_CONNECTIONS_PER_USER: usize = 64;
pub const DEFAULT_MAX_HEADER_BYTES: usize = 16 << 10;
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Loopback, a port apart from the public one, so metrics are never exposed through the proxy
/// by accident.
pub const DEFAULT_METRICS_LISTEN: SocketAddr = SocketAddr::new(LOCALHOST, 9464);
pub const DEFAULT_LOG_FORMAT: &str = "text";

// Authentication flags.
pub const DEFAULT_AUTH: &str = "jwt";
pub const DEFAULT_USER_CLAIM: &str = "sub";
pub const DEFAULT_TOKEN_QUERY_PARAM: &str = "access_token";
pub const DEFAULT_JWKS_REFRESH: Duration = Duration::from_secs(600);
pub const DEFAULT_COOKIE_PREFIX: &str = "better-auth";
pub const DEFAULT_SESSION_TABLE: &str = "session";
pub const DEFAULT_TOKEN_COLUMN: &str = "token";
pub const DEFAULT_USER_COLUMN: &str = "userId";
pub const DEFAULT_EXPIRES_COLUMN: &str = "expiresAt";
pub const DEFAULT_SESSION_CACHE_TTL: Duration = Duration::from_secs(10);
pub const DEFAULT_SESSION_CACHE_SIZE: usize = 10_000;

// `pgsse token`.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(3600);

// Not flags: fixed by design, named so they are found here.
/// Clock skew tolerated on `exp` and `nbf`, in seconds.
pub const DEFAULT_LEEWAY_SECS: u64 = 5;
/// Shortest time between two JWKS fetches caused by unknown `kid`s.
pub const DEFAULT_JWKS_MIN_REFETCH: Duration = Duration::from_secs(30);
/// How long a connection attempt may take before it counts as failed.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Reconnect backoff of the LISTEN connection (capped, jittered).
pub const DEFAULT_BACKOFF_MIN: Duration = Duration::from_millis(100);
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A resume asking for more than this many events is answered with `reset` instead: the app's
/// own refetch is cheaper than streaming that much history through one connection.
pub const DEFAULT_MAX_REPLAY_EVENTS: usize = 10_000;

// Listeners, connection caps and log floods.
/// TCP connections open at once on `--listen`, streams included: room above
/// `DEFAULT_MAX_CONNECTIONS` for requests that are not streams and heads still arriving.
pub const DEFAULT_MAX_TCP_CONNECTIONS: usize = DEFAULT_MAX_CONNECTIONS + DEFAULT_MAX_CONNECTIONS / 10;
/// Connections open at once on `--metrics-listen`: a few scrapers need a few.
pub const DEFAULT_METRICS_MAX_CONNECTIONS: usize = 16;
/// Repeated warnings of one kind are logged at most once per this interval (`throttle`).
pub const DEFAULT_LOG_REPEAT_INTERVAL: Duration = Duration::from_secs(10);
/// Likewise for the size of what a resume missed (event names and data): beyond it, `reset`.
pub const DEFAULT_MAX_REPLAY_BYTES: usize = 16 << 20;
/// Rows per read of a stream catching up from the log (each read also fits in `--max-queue-bytes`).
pub const DEFAULT_CATCH_UP_ROWS: usize = 1_000;
