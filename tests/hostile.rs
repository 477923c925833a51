//! Hostile input at the front door and operator mistakes at start: user ids PostgreSQL cannot
//! store, credentials sent to the wrong method, flags that would be silently ignored.

mod common;

use std::time::Duration;

use common::gateway::{notifications_db, request, Gateway, JWT_SECRET, STREAM_PATH};

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("json body ({e}): {body}"))
}

#[tokio::test]
async fn a_user_id_with_nul_is_refused_at_authentication() {
    let db = notifications_db().await;
    let gw = Gateway::start(&db, &[]).await;
    let token = pgsse::auth::mint_hs256("alice\0bob", JWT_SECRET.as_bytes(), Duration::from_secs(600), None, None)
        .expect("mint");
    let auth = format!("Bearer {token}");
    // Fresh and resuming requests alike: PostgreSQL text cannot hold NUL, so a replay could never
    // run (it answered 503 replay_failed) and the id could match no row.
    for last_event_id in [None, Some("1")] {
        let mut headers = vec![("Authorization", auth.as_str())];
        headers.extend(last_event_id.map(|id| ("Last-Event-ID", id)));
        let (status, _, body) = request(&gw.addr, "GET", STREAM_PATH, &headers).await;
        assert_eq!(status, 401, "{body}");
        let v = json(&body);
        assert_eq!(v["error"], "invalid_user_claim", "{v}");
        assert!(v["message"].as_str().is_some_and(|m| m.contains("NUL")), "{v}");
    }
    // The gateway goes on serving everyone else.
    let mut s = gw.stream("carol", &[]).await;
    s.next_named("connected", Duration::from_secs(10)).await.expect("connected");
    gw.stop().await;
}

#[tokio::test]
async fn missing_credentials_name_the_session_cookie_when_cookies_are_on() {
    let db = notifications_db().await;
    let gw = Gateway::start(&db, &["--auth", "jwt,better-auth", "--better-auth-secret", "a-better-auth-secret"]).await;
    let (status, _, body) = request(&gw.addr, "GET", STREAM_PATH, &[]).await;
    assert_eq!(status, 401);
    let v = json(&body);
    assert_eq!(v["error"], "missing_token", "{v}");
    let msg = v["message"].as_str().unwrap_or_default();
    assert!(msg.contains("better-auth.session_token") && msg.contains("Authorization"), "{v}");
    gw.stop().await;

    let gw = Gateway::start(&db, &[]).await;
    let (_, _, body) = request(&gw.addr, "GET", STREAM_PATH, &[]).await;
    let msg = json(&body)["message"].as_str().unwrap_or_default().to_string();
    assert!(!msg.contains("session"), "JWT only: no cookie to mention: {msg}");
    gw.stop().await;
}

/// `pgsse serve` with these flags; returns the exit code and stderr.
async fn serve_exit(args: &[&str]) -> (Option<i32>, String) {
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgsse"))
        .arg("serve")
        .args(args)
        .env_remove("BETTER_AUTH_SECRET")
        .env_remove("DATABASE_URL")
        .output();
    let out = tokio::time::timeout(Duration::from_secs(20), run).await.expect("exits in time").expect("runs");
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[tokio::test]
async fn flags_without_effect_stop_the_start_with_every_fix_at_once() {
    let port = common::free_port().to_string();
    let listen = format!("127.0.0.1:{port}");
    let (code, stderr) = serve_exit(&[
        "--database-url",
        "postgres://nobody@127.0.0.1:1/none",
        "--listen",
        &listen,
        "--jwt-secret",
        JWT_SECRET,
        "--better-auth-secret",
        "app-secret",
        "--session-cache-ttl",
        "1m",
        "--retention",
        "never",
    ])
    .await;
    assert_eq!(code, Some(2), "{stderr}");
    for expected in [
        "--better-auth-secret (PGSSE_BETTER_AUTH_SECRET): has no effect",
        "--session-cache-ttl",
        "--auth jwt,better-auth",
        "--retention",
    ] {
        assert!(stderr.contains(expected), "{expected:?} missing from: {stderr}");
    }
    // Nothing was bound: a refused configuration never half-starts.
    assert!(tokio::net::TcpStream::connect(&listen).await.is_err());
}
