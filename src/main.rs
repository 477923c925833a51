//! The `pgsse` command: parses flags, sets up logging, and hands off to the library.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use pgsse::cli::{CheckArgs, Cli, Command, SqlAction, SqlArgs, TokenArgs};
use pgsse::config::Config;

/// Exit code for configuration mistakes, as for usage errors.
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(msg) = init_logging(&cli.log_format) {
        eprintln!("pgsse: invalid configuration:\n  --log-format (PGSSE_LOG_FORMAT): {msg}");
        return ExitCode::from(EXIT_CONFIG);
    }
    let result = match cli.command {
        Command::Serve(args) => match Config::from_args(&args) {
            Ok(config) => serve(config),
            Err(errors) => {
                eprintln!("pgsse: invalid configuration:\n{errors}");
                return ExitCode::from(EXIT_CONFIG);
            }
        },
        Command::Sql { action } => sql(action),
        Command::Token(args) => token(args),
        Command::Check(args) => match check(args) {
            Ok(true) => return ExitCode::SUCCESS,
            Ok(false) => return ExitCode::FAILURE,
            Err(e) if e.is::<UsageError>() => {
                eprintln!("pgsse: {e:#}");
                return ExitCode::from(EXIT_CONFIG);
            }
            Err(e) => Err(e),
        },
        Command::Demo(args) => runtime().and_then(|rt| Ok(rt.block_on(pgsse::demo::run(args, shutdown_signal()))?)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pgsse: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: &str) -> Result<(), String> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(colour_logs());
    match format {
        "text" => builder.init(),
        "json" => builder.json().flatten_event(true).with_current_span(true).init(),
        other => return Err(format!("{other:?} is not text or json")),
    }
    Ok(())
}

/// Colour codes only for a person at a terminal: never in a file, a pipe or a log collector, and
/// never when `NO_COLOR` is set (https://no-color.org).
fn colour_logs() -> bool {
    use std::io::IsTerminal as _;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")
}

fn serve(config: Config) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let listener =
            bind(config.listen, config.reuse_port).with_context(|| format!("cannot listen on {}", config.listen))?;
        tracing::info!(addr = %listener.local_addr()?, path = %config.path, "pgsse serving");
        pgsse::run(config, listener, shutdown_signal()).await?;
        tracing::info!("stopped");
        Ok(())
    })
}

fn bind(addr: std::net::SocketAddr, reuse_port: bool) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    if reuse_port {
        socket.set_reuseport(true)?;
    }
    socket.bind(addr)?;
    // A deep backlog absorbs reconnect storms (e.g. after another replica drained).
    socket.listen(4096)
}

/// Resolves on the first SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (term, int) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()));
    match (term, int) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = int.recv() => tracing::info!("SIGINT received"),
            }
        }
        _ => {
            tracing::warn!("cannot install signal handlers; Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn sql(action: SqlAction) -> anyhow::Result<()> {
    let (script, args, what) = match action {
        SqlAction::Install(a) => (pgsse::pg::install::INSTALL_SQL, a, "installed"),
        SqlAction::Uninstall(a) => (pgsse::pg::install::UNINSTALL_SQL, a, "uninstalled"),
        SqlAction::Status(a) => {
            let cfg = pgsse::pg::parse_url(&database_url(a.database_url, "status")?)?;
            let status = runtime()?.block_on(async {
                let client = pgsse::pg::connect(&cfg).await?;
                pgsse::pg::status::read(&client).await
            })?;
            print!("{}", status.render());
            return Ok(());
        }
    };
    let SqlArgs { apply, database_url: url } = args;
    if !apply {
        print!("{script}");
        return Ok(());
    }
    let cfg = pgsse::pg::parse_url(&database_url(url, "--apply")?)?;
    runtime()?.block_on(pgsse::pg::install::apply(&cfg, script))?;
    eprintln!("pgsse: SQL {what}");
    Ok(())
}

fn database_url(flag: Option<String>, what: &str) -> anyhow::Result<String> {
    flag.or_else(|| std::env::var("DATABASE_URL").ok())
        .with_context(|| format!("{what} needs --database-url (or PGSSE_DATABASE_URL / DATABASE_URL)"))
}

/// A mistake on the command line (exit code 2), as opposed to a failure to check.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct UsageError(String);

/// Runs `pgsse check`; true when it found no error.
fn check(args: CheckArgs) -> anyhow::Result<bool> {
    let json = match args.format.as_str() {
        "text" => false,
        "json" => true,
        other => return Err(UsageError(format!("--format: {other:?} is not text or json")).into()),
    };
    let cfg = pgsse::pg::parse_url(&database_url(args.database_url, "check")?)?;
    let report = runtime()?.block_on(async {
        let client = pgsse::pg::connect(&cfg).await?;
        pgsse::pg::check::run(&client, args.gateway_role.as_deref()).await
    })?;
    if json {
        println!("{}", report.json());
    } else {
        print!("{}", report.text());
    }
    Ok(report.count(pgsse::pg::check::Level::Error) == 0)
}

fn token(args: TokenArgs) -> anyhow::Result<()> {
    let ttl = pgsse::config::parse_duration(&args.ttl)
        .with_context(|| format!("--ttl: {:?} is not a duration like 15m or 1h", args.ttl))?;
    let token = pgsse::auth::mint_hs256(
        &args.sub,
        args.secret.as_bytes(),
        ttl,
        args.issuer.as_deref(),
        args.audience.as_deref(),
    )?;
    println!("{token}");
    Ok(())
}
