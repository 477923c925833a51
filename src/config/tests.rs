//! Unit tests of the config.
use super::*;

#[test]
fn every_error_is_reported_at_once() {
    let errs = match Config::from_argv([
        "--listen",
        "nope",
        "--heartbeat-interval",
        "soon",
        "--path",
        "no-slash",
        "--max-queue-bytes",
        "lots",
        "--jwt-secret",
        "s",
        "--database-url",
        "postgres://u@h/db",
        "--retention",
        "0s",
    ]) {
        Err(e) => e,
        Ok(_) => panic!("expected errors"),
    };
    let flags: Vec<_> = errs.0.iter().map(|e| e.flag).collect();
    assert_eq!(flags, ["--listen", "--path", "--heartbeat-interval", "--retention", "--max-queue-bytes"]);
    let text = errs.to_string();
    assert!(text.contains("PGSSE_HEARTBEAT_INTERVAL"), "{text}");
}

#[test]
fn missing_database_url_is_named() {
    if std::env::var_os("DATABASE_URL").is_some() {
        return;
    }
    let errs = Config::from_argv(["--jwt-secret", "s"]).err().expect("error");
    assert!(errs.0.iter().any(|e| e.flag == "--database-url"), "{errs}");
}

#[test]
fn cors_origins_must_be_exact() {
    assert_eq!(check_origin("https://app.example.com/"), Ok("https://app.example.com".into()));
    assert_eq!(check_origin("http://localhost:3000"), Ok("http://localhost:3000".into()));
    for bad in ["*", "https://*.example.com", "app.example.com", "ftp://x", "https://a.com/path", "https://"] {
        assert!(check_origin(bad).is_err(), "{bad}");
    }
}

#[test]
fn shutdown_must_outlast_the_drain() {
    let errs = Config::from_argv([
        "--database-url",
        "postgres://u@h/db",
        "--jwt-secret",
        "s",
        "--drain-period",
        "20s",
        "--shutdown-timeout",
        "5s",
        "--cors-origin",
        "*",
    ])
    .err()
    .expect("errors");
    let flags: Vec<_> = errs.0.iter().map(|e| e.flag).collect();
    assert_eq!(flags, ["--shutdown-timeout", "--cors-origin"]);
}

#[test]
fn sizes_and_durations() {
    assert_eq!(parse_size("1MiB"), Some(1 << 20));
    assert_eq!(parse_size("512 kib"), Some(512 << 10));
    assert_eq!(parse_size("42"), Some(42));
    assert_eq!(parse_size("1.5MiB"), None);
    assert_eq!(parse_size("99999999999999999999GiB"), None);
    assert_eq!(parse_duration("30s"), Some(Duration::from_secs(30)));
    assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
    assert_eq!(parse_duration("15"), Some(Duration::from_secs(15)));
    assert_eq!(parse_duration("-1s"), None);
}

#[test]
fn db_timeout_default_and_minimum() {
    let c = Config::from_argv(["--database-url", "postgres://u@h/db", "--jwt-secret", "s"]).expect("valid");
    assert_eq!(c.db_timeout, crate::pg::DEFAULT_DB_TIMEOUT);
    assert_eq!(c.database.get_tcp_user_timeout(), Some(&crate::pg::DEFAULT_DB_TIMEOUT));
    let errs = Config::from_argv(["--database-url", "postgres://u@h/db", "--jwt-secret", "s", "--db-timeout", "1ms"])
        .err()
        .expect("too short");
    assert_eq!(errs.0.iter().map(|e| e.flag).collect::<Vec<_>>(), ["--db-timeout"]);
}

/// What `--help` shows as defaults comes back, through parsing and validation, as the typed values
/// in `defaults`.
#[test]
fn flag_defaults_are_the_typed_defaults() {
    use crate::cli::{Cli, Command};
    use crate::defaults::*;
    use clap::Parser;

    let c = Config::from_argv(["--database-url", "postgres://u@h/db", "--jwt-secret", "s"]).expect("valid");
    assert_eq!(c.listen, DEFAULT_LISTEN);
    assert_eq!(c.path, DEFAULT_PATH);
    assert_eq!(c.heartbeat_interval, DEFAULT_HEARTBEAT_INTERVAL);
    assert_eq!(c.retention, DEFAULT_RETENTION);
    assert_eq!(c.marker_interval, DEFAULT_MARKER_INTERVAL);
    assert_eq!(c.relay_interval, DEFAULT_RELAY_INTERVAL);
    assert_eq!(c.relay_busy_interval, DEFAULT_RELAY_BUSY_INTERVAL);
    assert_eq!(c.relay_quiet_interval, None, "a quiet relay sleeps unless told to poll");
    assert_eq!(c.queue_bytes, DEFAULT_QUEUE_BYTES);
    assert_eq!(c.replay_timeout, DEFAULT_REPLAY_TIMEOUT);
    assert_eq!(c.db_timeout, DEFAULT_DB_TIMEOUT);
    assert_eq!(c.pool_size, DEFAULT_POOL_SIZE);
    assert_eq!(c.shutdown_timeout, DEFAULT_SHUTDOWN_TIMEOUT);
    assert_eq!(c.drain_period, DEFAULT_DRAIN_PERIOD);
    assert_eq!(c.max_connections, DEFAULT_MAX_CONNECTIONS);
    assert_eq!(c.max_connections_per_user, DEFAULT_MAX_CONNECTIONS_PER_USER);
    assert_eq!(c.max_header_bytes, DEFAULT_MAX_HEADER_BYTES);
    assert_eq!(c.header_read_timeout, DEFAULT_HEADER_READ_TIMEOUT);
    assert_eq!(c.metrics_listen, Some(DEFAULT_METRICS_LISTEN));
    assert_eq!(c.max_tcp_connections, DEFAULT_MAX_TCP_CONNECTIONS);
    assert_eq!(c.metrics_max_connections, DEFAULT_METRICS_MAX_CONNECTIONS);
    assert!(c.auth.jwt.is_some() && c.auth.sessions.is_none(), "--auth defaults to {DEFAULT_AUTH}");

    let c = Config::from_argv([
        "--database-url",
        "postgres://u@h/db",
        "--auth",
        "better-auth",
        "--better-auth-secret",
        "s",
    ])
    .expect("valid");
    let sessions = c.auth.sessions.expect("sessions");
    assert_eq!((sessions.cache_ttl, sessions.cache_size), (DEFAULT_SESSION_CACHE_TTL, DEFAULT_SESSION_CACHE_SIZE));
    match sessions.lookup {
        crate::pg::sessions::Lookup::Table { table, token, user, expires } => assert_eq!(
            [table.as_str(), &token, &user, &expires],
            [DEFAULT_SESSION_TABLE, DEFAULT_TOKEN_COLUMN, DEFAULT_USER_COLUMN, DEFAULT_EXPIRES_COLUMN]
        ),
        other => panic!("{other:?}"),
    }

    let cli = |argv: &[&str]| Cli::try_parse_from(argv).unwrap_or_else(|e| panic!("{e}"));
    let serve = cli(&["pgsse", "serve"]);
    assert_eq!(serve.log_format, DEFAULT_LOG_FORMAT);
    let Command::Serve(serve) = serve.command else { panic!("not serve") };
    let a = &serve.auth;
    assert_eq!(a.auth, [DEFAULT_AUTH]);
    assert_eq!((a.user_claim.as_str(), a.token_query_param.as_str()), (DEFAULT_USER_CLAIM, DEFAULT_TOKEN_QUERY_PARAM));
    assert_eq!(parse_duration(&a.jwks_refresh), Some(DEFAULT_JWKS_REFRESH));
    assert_eq!(a.better_auth_cookie_prefix, DEFAULT_COOKIE_PREFIX);
    let Command::Token(token) = cli(&["pgsse", "token", "--sub", "u", "--secret", "s"]).command else { panic!() };
    assert_eq!(parse_duration(&token.ttl), Some(DEFAULT_TOKEN_TTL));
    let Command::Demo(demo) = cli(&["pgsse", "demo"]).command else { panic!("not demo") };
    assert_eq!(demo.listen.parse(), Ok(DEFAULT_LISTEN));
}

#[test]
fn listener_caps_that_cannot_work_are_refused() {
    let base = ["--database-url", "postgres://u@h/db", "--jwt-secret", "s"];
    let with = |extra: &[&str]| Config::from_argv(base.iter().chain(extra).copied());
    let errs = with(&["--max-connections", "100", "--max-tcp-connections", "50"]).err().expect("errors");
    assert_eq!(errs.0.iter().map(|e| e.flag).collect::<Vec<_>>(), ["--max-tcp-connections"]);
    let errs = with(&["--metrics-listen", "off", "--metrics-max-connections", "4"]).err().expect("errors");
    assert!(errs.0[0].message.contains("--metrics-listen is off"), "{errs}");
    let no_limit = with(&["--max-tcp-connections", "0"]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(no_limit.max_tcp_connections, usize::MAX);
}

#[test]
fn the_relays_busy_interval_is_never_shorter_than_its_interval() {
    let base = ["--database-url", "postgres://u@h/db", "--jwt-secret", "s"];
    let with = |extra: &[&str]| Config::from_argv(base.iter().chain(extra).copied());
    let ms = Duration::from_millis;
    let c = with(&["--relay-interval", "40ms"]).expect("valid");
    assert_eq!((c.relay_interval, c.relay_busy_interval), (ms(40), ms(40)), "the default follows a longer interval");
    let c = with(&["--relay-interval", "5ms", "--relay-busy-interval", "5ms"]).expect("valid");
    assert_eq!(c.relay_busy_interval, ms(5), "one interval at any load");
    let Err(e) = with(&["--relay-interval", "20ms", "--relay-busy-interval", "10ms"]) else { panic!("shorter") };
    assert!(
        e.to_string().contains("--relay-busy-interval") && e.to_string().contains("shorter than --relay-interval"),
        "{e}"
    );
    let Err(e) = with(&["--relay-busy-interval", "soon"]) else { panic!("not a duration") };
    assert!(e.to_string().contains("--relay-busy-interval"), "{e}");
}

#[test]
fn the_relays_quiet_interval_lies_between_its_interval_and_its_lease_renewal() {
    let base = ["--database-url", "postgres://u@h/db", "--jwt-secret", "s"];
    let with = |extra: &[&str]| Config::from_argv(base.iter().chain(extra).copied());
    let c = with(&["--relay-quiet-interval", "100ms"]).expect("valid");
    assert_eq!(c.relay_quiet_interval, Some(Duration::from_millis(100)));
    let c = with(&["--relay-quiet-interval", "400ms"]).expect("the longest");
    assert_eq!(c.relay_quiet_interval, Some(Duration::from_millis(400)));
    for (extra, why) in [
        (&["--relay-quiet-interval", "1s"][..], "is longer than 400ms"),
        (
            &["--relay-interval", "50ms", "--relay-quiet-interval", "20ms"][..],
            "is shorter than --relay-interval (50ms)",
        ),
        (
            &["--relay-interval", "1s", "--relay-quiet-interval", "1s"][..],
            "cannot be used with a --relay-interval longer",
        ),
    ] {
        let Err(e) = with(extra) else { panic!("{extra:?}: accepted") };
        let e = e.to_string();
        assert!(e.contains("--relay-quiet-interval") && e.contains(why), "{extra:?}: {e}");
    }
    let Err(e) = with(&["--relay-quiet-interval", "sometimes", "--relay-interval", "never"]) else {
        panic!("not durations")
    };
    let e = e.to_string();
    assert!(e.contains("--relay-quiet-interval") && e.contains("--relay-interval"), "both reported at once: {e}");
}
