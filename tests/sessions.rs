//! Session-cookie authentication against a session table shaped like Better Auth's, and JWKS URLs.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use common::gateway::{self, request, Gateway, STREAM_PATH};
use common::{exec, free_port, SseClient};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_postgres::{AsyncMessage, NoTls};

const T: Duration = Duration::from_secs(10);
/// The Better Auth secret session cookies are signed with, and the one it replaced.
const COOKIE_SECRET: &str = "better-auth-secret-for-tests-0123456789";
const OLD_COOKIE_SECRET: &str = "the-previous-better-auth-secret-0000";

/// Better Auth's schema for sessions (camelCase, as its migrations create it) plus the watched
/// notifications table.
const CAMEL: &str = r#"
CREATE TABLE "session" (id text PRIMARY KEY, token text NOT NULL UNIQUE, "userId" text NOT NULL,
    "expiresAt" timestamp NOT NULL, "createdAt" timestamp NOT NULL DEFAULT now(),
    "updatedAt" timestamp NOT NULL DEFAULT now(), "ipAddress" text, "userAgent" text);
SELECT pgsse.watch_sessions('session');
"#;

const SNAKE: &str = r#"
CREATE TABLE sessions (id bigserial PRIMARY KEY, token text NOT NULL UNIQUE, user_id bigint NOT NULL,
    expires_at timestamptz NOT NULL);
SELECT pgsse.watch_sessions('sessions', 'token', 'expires_at');
"#;

/// The cookie value exactly as better-call signs it: encodeURIComponent(`${token}.${base64(hmac)}`).
fn cookie(secret: &str, token: &str) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let sig = base64::engine::general_purpose::STANDARD.encode(ring::hmac::sign(&key, token.as_bytes()).as_ref());
    let value: String = format!("{token}.{sig}")
        .chars()
        .map(|c| match c {
            '+' => "%2B".to_string(),
            '/' => "%2F".to_string(),
            '=' => "%3D".to_string(),
            c => c.to_string(),
        })
        .collect();
    format!("better-auth.session_token={value}")
}

async fn session(db: &str, id: &str, token: &str, user: &str, expires: &str) {
    exec(
        db,
        &format!(
            "INSERT INTO \"session\" (id, token, \"userId\", \"expiresAt\") VALUES ('{id}', '{token}', '{user}', {expires})"
        ),
    )
    .await;
}

async fn open(gw: &Gateway, cookie: &str) -> SseClient {
    SseClient::connect(&gw.addr, STREAM_PATH, &[("Cookie", cookie)]).await.expect("connect")
}

async fn refused(gw: &Gateway, cookie: &str) -> String {
    let (status, _, body) = request(&gw.addr, "GET", STREAM_PATH, &[("Cookie", cookie)]).await;
    assert_eq!(status, 401, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    v["error"].as_str().unwrap_or_default().to_string()
}

async fn camel_gateway() -> (String, Gateway) {
    let db = gateway::notifications_db().await;
    exec(&db, CAMEL).await;
    let secrets = format!("{COOKIE_SECRET},{OLD_COOKIE_SECRET}");
    let gw = Gateway::start(&db, &["--auth", "jwt,better-auth", "--better-auth-secret", &secrets]).await;
    (db, gw)
}

#[tokio::test]
async fn a_signed_session_cookie_opens_a_stream_for_its_user() {
    let (db, gw) = camel_gateway().await;
    session(&db, "s1", "tokenAAA", "user-1", "now() + interval '1 hour'").await;
    let mut s = open(&gw, &cookie(COOKIE_SECRET, "tokenAAA")).await;
    assert_eq!(s.status, 200);
    let c = s.next_named("connected", T).await.expect("connected");
    assert!(c.data.contains("\"userId\":\"user-1\""), "{}", c.data);
    exec(&db, "INSERT INTO notifications (user_id, title) VALUES ('user-1', 'hi')").await;
    assert!(s.next_named("notification", T).await.is_some());

    // Rotation: a cookie signed with the previous secret still works.
    session(&db, "s2", "tokenBBB", "user-2", "now() + interval '1 hour'").await;
    assert_eq!(open(&gw, &cookie(OLD_COOKIE_SECRET, "tokenBBB")).await.status, 200);
    // JWT keeps working alongside.
    let _ = gateway::stream(&gw.addr, "jwt-user", &[]).await;
    gw.stop().await;
}

#[tokio::test]
async fn bad_cookies_and_dead_sessions_get_401() {
    let (db, gw) = camel_gateway().await;
    session(&db, "s1", "tokenAAA", "user-1", "now() + interval '1 hour'").await;
    session(&db, "s2", "tokenOLD", "user-1", "now() - interval '1 minute'").await;
    assert_eq!(refused(&gw, &cookie("some-other-secret", "tokenAAA")).await, "invalid_session");
    let tampered = cookie(COOKIE_SECRET, "tokenAAA").replacen("tokenAAA", "tokenAAB", 1);
    assert_eq!(refused(&gw, &tampered).await, "invalid_session");
    assert_eq!(refused(&gw, "better-auth.session_token=garbage").await, "invalid_session");
    assert_eq!(refused(&gw, &cookie(COOKIE_SECRET, "no-such-token")).await, "session_not_found");
    assert_eq!(refused(&gw, &cookie(COOKIE_SECRET, "tokenOLD")).await, "session_expired");
    gw.stop().await;
}

#[tokio::test]
async fn signing_out_closes_open_streams_and_the_cache_does_not_outlive_it() {
    let (db, gw) = camel_gateway().await;
    session(&db, "s1", "tokenAAA", "user-1", "now() + interval '1 hour'").await;
    let c = cookie(COOKIE_SECRET, "tokenAAA");
    let mut a = open(&gw, &c).await;
    let mut b = open(&gw, &c).await;
    for s in [&mut a, &mut b] {
        s.next_named("connected", T).await.expect("connected");
    }
    exec(&db, "DELETE FROM \"session\" WHERE token = 'tokenAAA'").await;
    for s in [&mut a, &mut b] {
        let e = s.next_named("auth-expired", Duration::from_secs(2)).await.expect("closed within a second or so");
        assert!(e.data.contains("session_revoked"), "{}", e.data);
        assert!(s.wait_closed(Duration::from_secs(2)).await);
    }
    // The positive cache entry (TTL 10s) was evicted by the same notification.
    assert_eq!(refused(&gw, &c).await, "session_not_found");
    gw.stop().await;
}

/// Payloads on `channel` until a NOTIFY on `fence` (sent now, from another connection), heard by a
/// connection that LISTENs on both (as someone who learned the channel would).
async fn capture(db: &str, channel: &str, fence: &str, during: impl std::future::Future<Output = ()>) -> Vec<String> {
    let (client, mut conn) = tokio_postgres::connect(db, NoTls).await.expect("connect");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, String)>();
    tokio::spawn(async move {
        while let Some(Ok(m)) = std::future::poll_fn(|cx| conn.poll_message(cx)).await {
            if let AsyncMessage::Notification(n) = m {
                let _ = tx.send((n.channel().to_string(), n.payload().to_string()));
            }
        }
    });
    client.batch_execute(&format!("LISTEN \"{channel}\"; LISTEN \"{fence}\"")).await.expect("LISTEN");
    during.await;
    exec(db, &format!("NOTIFY \"{fence}\"")).await;
    let mut got = Vec::new();
    loop {
        let (c, payload) = tokio::time::timeout(T, rx.recv()).await.expect("the fence in time").expect("listener");
        if c == fence {
            return got;
        }
        got.push(payload);
    }
}

/// A signed session payload (`<64 hex signature>{"t":"<tx>","s":[...]}`): its transaction id.
fn session_payload_tx(payload: &str) -> Option<i64> {
    let v: serde_json::Value = serde_json::from_str(payload.get(64..)?).ok()?;
    v.get("s")?;
    v["t"].as_str()?.parse().ok()
}

/// Someone who can listen on the secret channel captures the payload that revoked a session;
/// the user signs in again with a session of the same token (so the same key). Re-sending the
/// captured payload once the gateway's horizon has passed its transaction is stale: it is
/// counted, and the new session's stream stays open and keeps receiving.
#[tokio::test]
async fn a_re_sent_session_payload_closes_nothing() {
    let db = gateway::notifications_db().await;
    exec(&db, CAMEL).await;
    let channel = gateway::channel(&db).await;
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let gw = Gateway::start(
        &db,
        &["--auth", "better-auth", "--better-auth-secret", COOKIE_SECRET, "--metrics-listen", &metrics_addr],
    )
    .await;
    let c = cookie(COOKIE_SECRET, "tokenAAA");

    // Session A, signed out: its stream closes, and the payload that closed it is captured.
    session(&db, "sA", "tokenAAA", "user-1", "now() + interval '1 hour'").await;
    let mut a = open(&gw, &c).await;
    assert_eq!(a.status, 200);
    a.next_named("connected", T).await.expect("connected");
    let payloads = capture(&db, &channel, "fence", exec(&db, "DELETE FROM \"session\" WHERE id = 'sA'")).await;
    let captured: Vec<(String, i64)> =
        payloads.into_iter().filter_map(|p| session_payload_tx(&p).map(|tx| (p, tx))).collect();
    assert_eq!(captured.len(), 1, "one session payload for the DELETE: {captured:?}");
    let (payload, tx) = captured.into_iter().next().expect("the session payload");
    let e = a.next_named("auth-expired", T).await.expect("the signed-out stream is told");
    assert!(e.data.contains("session_revoked"), "{}", e.data);

    // Session B: a new row with the same token, so the same key.
    session(&db, "sB", "tokenAAA", "user-1", "now() + interval '1 hour'").await;
    let mut b = open(&gw, &c).await;
    assert_eq!(b.status, 200, "a stream for the new session");
    b.next_named("connected", T).await.expect("connected");
    let past = common::wait_until(T, || async {
        gateway::readyz(&gw.addr)
            .await
            .and_then(|(_, v)| v["horizon"].as_str()?.parse::<i64>().ok())
            .is_some_and(|h| h > tx)
    })
    .await;
    assert!(past, "the gateway's horizon never passed transaction {tx}");

    // The re-send, then a row for the user: the gateway handles them in that order.
    let attacker = common::connect(&db).await;
    attacker.execute("SELECT pg_notify($1, $2)", &[&channel, &payload]).await.expect("re-send the session payload");
    exec(&db, "INSERT INTO notifications (user_id, title) VALUES ('user-1', 'still here')").await;
    let deadline = std::time::Instant::now() + T;
    let next = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match b.next_event(left).await {
            Some(e) if e.event == "heartbeat" => continue,
            other => break other,
        }
    };
    let next = next.unwrap_or_else(|| panic!("the new session's stream got nothing (closed: {})", b.is_closed()));
    assert_eq!(next.event, "notification", "the re-sent payload reached the new session's stream: {next:?}");
    assert!(next.data.contains("still here"), "{}", next.data);
    assert!(!b.is_closed(), "the new session's stream was closed");

    let stale = gateway::metric(&metrics_addr, "pgsse_payloads_stale_total").await;
    assert_eq!(stale, 1, "the re-sent payload was counted as stale");
    gw.stop().await;
}

#[tokio::test]
async fn streams_close_when_the_session_expires() {
    let (db, gw) = camel_gateway().await;
    session(&db, "s1", "tokenEXP", "user-1", "now() + interval '2 seconds'").await;
    let mut s = open(&gw, &cookie(COOKIE_SECRET, "tokenEXP")).await;
    assert_eq!(s.status, 200);
    s.next_named("connected", T).await.expect("connected");
    let e = s.next_named("auth-expired", Duration::from_secs(5)).await.expect("closed at expiresAt");
    assert!(e.data.contains("token_expired") || e.data.contains("session"), "{}", e.data);
    assert!(s.wait_closed(Duration::from_secs(2)).await);
    gw.stop().await;
}

#[tokio::test]
async fn snake_case_tables_and_custom_queries_work() {
    let db = gateway::notifications_db().await;
    exec(&db, SNAKE).await;
    exec(&db, "INSERT INTO sessions (token, user_id, expires_at) VALUES ('tok1', 42, now() + interval '1 hour')").await;
    let gw = Gateway::start(
        &db,
        &[
            "--auth",
            "better-auth",
            "--better-auth-secret",
            COOKIE_SECRET,
            "--session-table",
            "public.sessions",
            "--session-user-column",
            "user_id",
            "--session-expires-column",
            "expires_at",
        ],
    )
    .await;
    let mut s = open(&gw, &cookie(COOKIE_SECRET, "tok1")).await;
    assert_eq!(s.status, 200);
    assert!(s.next_named("connected", T).await.expect("connected").data.contains("\"userId\":\"42\""));
    exec(&db, "UPDATE sessions SET expires_at = now() - interval '1 second' WHERE token = 'tok1'").await;
    assert!(s.next_named("auth-expired", Duration::from_secs(3)).await.is_some(), "expired by UPDATE");
    gw.stop().await;

    let query = "SELECT user_id::text, expires_at FROM sessions WHERE token = $1 AND expires_at > now()";
    exec(&db, "INSERT INTO sessions (token, user_id, expires_at) VALUES ('tok2', 7, now() + interval '1 hour')").await;
    let gw = Gateway::start(
        &db,
        &["--auth", "better-auth", "--better-auth-secret", COOKIE_SECRET, "--session-query", query],
    )
    .await;
    let mut s = open(&gw, &cookie(COOKIE_SECRET, "tok2")).await;
    assert_eq!(s.status, 200);
    assert!(s.next_named("connected", T).await.expect("connected").data.contains("\"userId\":\"7\""));
    assert_eq!(refused(&gw, &cookie(COOKIE_SECRET, "tok1")).await, "session_not_found");
    gw.stop().await;
}

/// A JWKS endpoint whose content can change, counting requests.
struct JwksServer {
    addr: String,
    body: Arc<Mutex<(u16, String)>>,
    hits: Arc<AtomicUsize>,
}

impl JwksServer {
    async fn start(body: String) -> JwksServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let body = Arc::new(Mutex::new((200u16, body)));
        let hits = Arc::new(AtomicUsize::new(0));
        let (b, h) = (body.clone(), hits.clone());
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                h.fetch_add(1, Ordering::SeqCst);
                let (status, text) = b.lock().expect("lock").clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = sock.read(&mut buf).await;
                    let resp = format!(
                        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
                        text.len()
                    );
                    let _ = sock.write_all(resp.as_bytes()).await;
                });
            }
        });
        JwksServer { addr, body, hits }
    }
}

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!("{}/tests/fixtures/keys/{name}", env!("CARGO_MANIFEST_DIR"))).expect("fixture")
}

fn eddsa_token(kid: &str, sub: &str) -> String {
    pgsse::auth::install_crypto();
    let key = jsonwebtoken::EncodingKey::from_ed_pem(fixture("ed25519_private.pem").as_bytes()).expect("key");
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    header.kid = Some(kid.to_string());
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("time").as_secs() + 900;
    let claims = serde_json::json!({"sub": sub, "exp": exp, "iss": "http://app.test", "aud": "http://app.test"});
    jsonwebtoken::encode(&header, &claims, &key).expect("sign")
}

#[tokio::test]
async fn jwks_urls_are_fetched_refetched_for_new_kids_and_survive_outages() {
    let db = gateway::notifications_db().await;
    let full: serde_json::Value = serde_json::from_str(&fixture("jwks.json")).expect("jwks");
    let only_rsa = serde_json::json!({"keys": [full["keys"][0].clone()]});
    let server = JwksServer::start(only_rsa.to_string()).await;
    let url = format!("http://{}/api/auth/jwks", server.addr);
    let gw = Gateway::start(
        &db,
        &["--jwks-url", &url, "--jwt-issuer", "http://app.test", "--jwt-audience", "http://app.test"],
    )
    .await;
    assert!(common::wait_until(T, || async { server.hits.load(Ordering::SeqCst) >= 1 }).await, "fetched at start");

    // The issuer rotates to an Ed25519 key: the unknown kid triggers one refetch, then works.
    *server.body.lock().expect("lock") = (200, full.to_string());
    let token = eddsa_token("ed-1", "alice");
    let s =
        SseClient::connect(&gw.addr, STREAM_PATH, &[("Authorization", &format!("Bearer {token}"))]).await.expect("c");
    assert_eq!(s.status, 200, "refetched for the new kid");
    let hits = server.hits.load(Ordering::SeqCst);
    // Unknown kids do not hammer the issuer: within the rate limit, no more fetches.
    for _ in 0..5 {
        let t = eddsa_token("nope", "mallory");
        let (status, _, _) = request(&gw.addr, "GET", STREAM_PATH, &[("Authorization", &format!("Bearer {t}"))]).await;
        assert_eq!(status, 401);
    }
    assert_eq!(server.hits.load(Ordering::SeqCst), hits, "rate-limited refetch");

    // An outage keeps the cached keys and shows in /readyz.
    *server.body.lock().expect("lock") = (500, "down".into());
    let s2 =
        SseClient::connect(&gw.addr, STREAM_PATH, &[("Authorization", &format!("Bearer {token}"))]).await.expect("c");
    assert_eq!(s2.status, 200);
    drop((s, s2));
    gw.stop().await;
}

#[tokio::test]
async fn a_jwks_outage_keeps_cached_keys_and_shows_in_readyz() {
    let db = gateway::notifications_db().await;
    let server = JwksServer::start(fixture("jwks.json")).await;
    let url = format!("http://{}/api/auth/jwks", server.addr);
    let gw = Gateway::start(&db, &["--jwks-url", &url, "--jwks-refresh", "1s"]).await;
    let token = eddsa_token("ed-1", "bob");
    let auth = format!("Bearer {token}");
    assert!(
        common::wait_until(T, || async {
            SseClient::connect(&gw.addr, STREAM_PATH, &[("Authorization", &auth)]).await.is_ok_and(|s| s.status == 200)
        })
        .await
    );
    *server.body.lock().expect("lock") = (503, "maintenance".into());
    assert!(
        common::wait_until(T, || async {
            gateway::readyz(&gw.addr).await.is_some_and(|(_, v)| v["jwks"]["failures"].as_u64().unwrap_or(0) >= 1)
        })
        .await,
        "the failed refresh is visible in /readyz"
    );
    let (_, v) = gateway::readyz(&gw.addr).await.expect("readyz");
    assert!(v["jwks"]["lastError"].as_str().is_some_and(|e| e.contains("503")), "{v}");
    assert_eq!(v["jwks"]["keys"], 4, "cached keys kept: {v}");
    let s = SseClient::connect(&gw.addr, STREAM_PATH, &[("Authorization", &auth)]).await.expect("connect");
    assert_eq!(s.status, 200, "tokens keep verifying with the cached keys");
    gw.stop().await;
}
