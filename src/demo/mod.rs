//! `pgsse demo`: a throwaway PostgreSQL, a demo table and page, and the gateway, in one command.
//!
//! Without `--database-url` it starts a private PostgreSQL ([`postgres`]), installs the pgsse SQL,
//! creates and watches a `notifications` table, and runs the real gateway with a random HS256
//! secret and the `pgsse_token` cookie. Beside the stream it serves a page at `/` and the
//! demo-only endpoints under `/demo/` ([`routes`]); `pgsse serve` never has those.
//!
//! `--state-dir DIR` keeps the cluster (`DIR/postgres`) and the token secret (`DIR/jwt-secret`)
//! across restarts, so the tabs left open reconnect with their cookie and resume where they were.

pub mod postgres;
mod routes;

use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::cli::DemoArgs;
use crate::config::ConfigErrors;
use crate::pg::{self, PgError};

/// The cookie the demo page's login sets and the gateway reads the token from.
pub const COOKIE: &str = "pgsse_token";
/// The users the page offers.
pub const USERS: [&str; 3] = ["alice", "bob", "carol"];
/// Lifetime of the tokens the demo mints.
const TOKEN_TTL: Duration = Duration::from_secs(12 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(
        "PostgreSQL's server programs (initdb, postgres) were not found on PATH, via `pg_config --bindir`, \
         or in /usr/lib/postgresql/*/bin.\n\
         Install PostgreSQL, then run the demo again:\n  \
         Debian/Ubuntu: sudo apt-get install postgresql\n  \
         macOS:         brew install postgresql@16\n\
         Or use a database you already have: pgsse demo --database-url postgres://user:password@host/db"
    )]
    PostgresNotFound,
    #[error("cannot start the throwaway PostgreSQL: {0}")]
    Postgres(String),
    #[error(
        "{addr} is already in use (is another pgsse demo running?). Pick another address, e.g.: \
         pgsse demo --listen 127.0.0.1:{next}"
    )]
    PortInUse { addr: String, next: u16 },
    #[error("cannot listen on {addr}: {message}")]
    Listen { addr: String, message: String },
    // The causes below are part of the message, not `source()`s: `main` prints the whole chain.
    #[error("setting up the demo database: {0}")]
    Database(PgError),
    #[error("invalid gateway configuration:\n{0}")]
    Config(ConfigErrors),
    #[error("state directory: {0}")]
    State(String),
    #[error("minting a token: {0}")]
    Token(crate::auth::MintError),
    #[error(transparent)]
    Run(#[from] crate::RunError),
}

impl From<PgError> for DemoError {
    fn from(e: PgError) -> Self {
        DemoError::Database(e)
    }
}

impl From<ConfigErrors> for DemoError {
    fn from(e: ConfigErrors) -> Self {
        DemoError::Config(e)
    }
}

impl From<crate::auth::MintError> for DemoError {
    fn from(e: crate::auth::MintError) -> Self {
        DemoError::Token(e)
    }
}

/// Runs the demo until `shutdown` resolves; the throwaway PostgreSQL (if any) is stopped and its
/// directory removed before this returns, also when startup fails or is interrupted.
pub async fn run(args: DemoArgs, shutdown: impl Future<Output = ()>) -> Result<(), DemoError> {
    let listener = bind(&args.listen).await?;
    let addr =
        listener.local_addr().map_err(|e| DemoError::Listen { addr: args.listen.clone(), message: e.to_string() })?;
    tokio::pin!(shutdown);
    let mut local: Option<postgres::LocalPostgres> = None;
    let started = tokio::select! {
        r = start(&args, &mut local) => Some(r),
        () = &mut shutdown => None,
    };
    let result = match started {
        None => Ok(()),
        Some(Err(e)) => Err(e),
        Some(Ok(setup)) => {
            let local_info = local.as_ref().map(|l| (l.url(), l.dir.display().to_string(), l.kept));
            serve(setup, listener, addr, local_info, shutdown).await
        }
    };
    if let Some(mut pg) = local {
        let dir = pg.dir.display().to_string();
        if pg.kept {
            pg.stop().await;
            println!("Stopped PostgreSQL; its data stays in {dir} for the next start");
        } else if pg.stop().await {
            println!("Stopped the throwaway PostgreSQL and removed {dir}");
        } else {
            println!("Stopped the throwaway PostgreSQL; could not remove {dir} entirely");
        }
    }
    result
}

async fn bind(listen: &str) -> Result<tokio::net::TcpListener, DemoError> {
    let addr: SocketAddr = listen.parse().map_err(|_| DemoError::Listen {
        addr: listen.to_string(),
        message: "not an address like 127.0.0.1:8080".into(),
    })?;
    tokio::net::TcpListener::bind(addr).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::AddrInUse => {
            DemoError::PortInUse { addr: addr.to_string(), next: addr.port().checked_add(1).unwrap_or(8081) }
        }
        _ => DemoError::Listen { addr: addr.to_string(), message: e.to_string() },
    })
}

/// What startup produced.
struct Started {
    db: tokio_postgres::Config,
    url: String,
    setup: pg::demo::Setup,
    /// Signs the tokens the page's login sets, and checks them.
    secret: String,
}

async fn start(args: &DemoArgs, local: &mut Option<postgres::LocalPostgres>) -> Result<Started, DemoError> {
    // Absolute: the server runs in its own directory, as another user when we are root.
    let state = match args.state_dir.as_deref() {
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(|e| state_error("creating", dir, &e))?;
            Some(std::fs::canonicalize(dir).map_err(|e| state_error("resolving", dir, &e))?)
        }
        None => None,
    };
    let state = state.as_deref();
    let url = match &args.database_url {
        Some(url) => url.clone(),
        None => {
            println!("Starting {} PostgreSQL...", if state.is_some() { "the demo's" } else { "a throwaway" });
            let pg = local.insert(postgres::LocalPostgres::start(state).await?);
            pg.url()
        }
    };
    let db = pg::parse_url(&url)?;
    let setup = pg::demo::setup(&db).await?;
    let secret = match state {
        Some(dir) => kept_secret(&dir.join("jwt-secret"))?,
        None => random_secret(),
    };
    Ok(Started { db, url, setup, secret })
}

fn random_secret() -> String {
    format!("{:032x}{:032x}", rand::random::<u128>(), rand::random::<u128>())
}

/// The secret of an earlier run, or a new one written for the next.
fn kept_secret(path: &Path) -> Result<String, DemoError> {
    match std::fs::read_to_string(path) {
        Ok(s) if !s.trim().is_empty() => Ok(s.trim().to_string()),
        Ok(_) => Err(DemoError::State(format!("{} is empty: remove it to start afresh", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let secret = random_secret();
            write_private(path, &secret)?;
            Ok(secret)
        }
        Err(e) => Err(state_error("reading", path, &e)),
    }
}

/// Writes a file only its owner can read.
fn write_private(path: &Path, text: &str) -> Result<(), DemoError> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| state_error("creating", path, &e))?;
    f.write_all(text.as_bytes()).map_err(|e| state_error("writing", path, &e))
}

fn state_error(what: &str, path: &Path, e: &std::io::Error) -> DemoError {
    DemoError::State(format!("{what} {}: {e}", path.display()))
}

async fn serve(
    started: Started,
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
    local: Option<(String, String, bool)>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DemoError> {
    let secret = started.secret.clone();
    let config = crate::Config::from_argv([
        "--auth",
        "jwt",
        "--database-url",
        &started.url,
        "--listen",
        &addr.to_string(),
        "--jwt-secret",
        &secret,
        "--token-cookie",
        COOKIE,
        "--heartbeat-interval",
        "15s",
        // No second listener to collide with another gateway on this machine.
        "--metrics-listen",
        "off",
        // Ctrl-C should stop the demo at once: no drain period for a single local browser.
        "--drain-period",
        "0s",
        "--shutdown-timeout",
        "2s",
    ])?;
    let pool = pg::pool(&started.db, 2)?;
    let routes = Arc::new(routes::DemoRoutes::new(pool, secret.clone(), config.path.clone()));
    let token = crate::auth::mint_hs256(USERS[0], secret.as_bytes(), TOKEN_TTL, None, None)?;
    print_banner(&started, addr, &config.path, local.as_ref(), &token, &secret);
    crate::run_with(config, listener, shutdown, Some(routes)).await?;
    Ok(())
}

/// What the newcomer needs: the URL, how the page signs in, a curl line, a psql line.
fn print_banner(
    started: &Started,
    addr: SocketAddr,
    path: &str,
    local: Option<&(String, String, bool)>,
    token: &str,
    secret: &str,
) {
    let base = format!("http://{addr}");
    let (psql_url, db_line) = match local {
        Some((url, dir, true)) => (url.clone(), format!("kept in {dir} (reused by the next start)")),
        Some((url, dir, false)) => (url.clone(), format!("throwaway cluster in {dir} (removed on exit)")),
        None => (url_without_password(&started.db), "from --database-url (password not shown)".to_string()),
    };
    // "15.8 (Debian 15.8-1)" -> "15.8"
    let version = started.setup.server_version.split_whitespace().next().unwrap_or_default();
    let pg_label = format!("PostgreSQL {version}:");
    let table = if started.setup.table_created { "created" } else { "exists already; using it" };
    println!(
        "
pgsse demo is running.

  Open the demo page:      {base}/
  {pg_label:<24} {db_line}
    pgsse SQL:             installed (schema pgsse)
    table notifications:   {table}; watched with pgsse.watch('notifications', 'user_id')

  Insert a row by hand and watch it arrive:
    psql \"{psql_url}\" -c \"INSERT INTO notifications (user_id, title) VALUES ('alice', 'Hello')\"

  The page signs in by setting the cookie {COOKIE} (HttpOnly). The stream with curl, as alice:
    curl -N -H \"Authorization: Bearer {token}\" {base}{path}
  Tokens for other users:  pgsse token --sub bob --secret {secret}

Press Ctrl-C to stop."
    );
}

/// `postgres://user@host:port/db`, for a hint line: the password the user gave is not echoed.
fn url_without_password(cfg: &tokio_postgres::Config) -> String {
    let port = cfg.get_ports().first().copied().unwrap_or(5432);
    let user = cfg.get_user().unwrap_or("postgres");
    let db = cfg.get_dbname().unwrap_or(user);
    match cfg.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => format!("postgres://{user}@{h}:{port}/{db}"),
        Some(tokio_postgres::config::Host::Unix(p)) => {
            format!("postgres://{user}@/{db}?host={}&port={port}", p.display())
        }
        None => format!("postgres://{user}@localhost:{port}/{db}"),
    }
}
