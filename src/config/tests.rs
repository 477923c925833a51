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
    assert_eq!(parse_duration(DEFAULT_DB_TIMEOUT), Some(crate::pg::DEFAULT_DB_TIMEOUT));
    let c = Config::from_argv(["--database-url", "postgres://u@h/db", "--jwt-secret", "s"]).expect("valid");
    assert_eq!(c.db_timeout, crate::pg::DEFAULT_DB_TIMEOUT);
    assert_eq!(c.database.get_tcp_user_timeout(), Some(&crate::pg::DEFAULT_DB_TIMEOUT));
    let errs = Config::from_argv(["--database-url", "postgres://u@h/db", "--jwt-secret", "s", "--db-timeout", "1ms"])
        .err()
        .expect("too short");
    assert_eq!(errs.0.iter().map(|e| e.flag).collect::<Vec<_>>(), ["--db-timeout"]);
}
