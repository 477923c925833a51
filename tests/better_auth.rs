//! Interop with the real Better Auth (npm `better-auth`, see tests/better-auth/): its own schema,
//! its own cookies and JWTs, its own sign-out, against a pgsse stream.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::gateway::{self, request, Gateway, STREAM_PATH};
use common::{exec, SseClient};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

const T: Duration = Duration::from_secs(15);
/// The real better-auth server's secret, which the gateway is given to check its cookies.
const BETTER_AUTH_SECRET: &str = "pgsse-better-auth-interop-secret-0123456789";

/// `tests/better-auth/server.mjs`: a real Better Auth on Postgres, on a free port.
struct BetterAuth {
    addr: String,
    _child: tokio::process::Child,
}

impl BetterAuth {
    async fn start(db: &str) -> BetterAuth {
        let dir = format!("{}/tests/better-auth", env!("CARGO_MANIFEST_DIR"));
        assert!(
            std::path::Path::new(&format!("{dir}/node_modules/better-auth")).exists(),
            "tests/better-auth/node_modules is missing: run ./scripts/test (it runs npm ci there)"
        );
        let mut child = tokio::process::Command::new("node")
            .arg("server.mjs")
            .current_dir(&dir)
            .env("DATABASE_URL", db)
            .env("BETTER_AUTH_SECRET", BETTER_AUTH_SECRET)
            .env("PORT", "0")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("node (Node.js 20) on PATH");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .expect("Better Auth started in time")
            .expect("read")
            .expect("a READY line");
        let port = line.strip_prefix("READY ").unwrap_or_else(|| panic!("unexpected: {line}")).trim().to_string();
        BetterAuth { addr: format!("127.0.0.1:{port}"), _child: child }
    }

    fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    async fn post(&self, path: &str, body: serde_json::Value, cookie: Option<&str>) -> serde_json::Value {
        let mut s = tokio::net::TcpStream::connect(&self.addr).await.expect("connect");
        let body = body.to_string();
        let cookie = cookie.map(|c| format!("Cookie: {c}\r\n")).unwrap_or_default();
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{cookie}Connection: close\r\n\r\n{body}",
            self.addr,
            body.len()
        );
        s.write_all(req.as_bytes()).await.expect("write");
        let mut out = String::new();
        tokio::time::timeout(T, s.read_to_string(&mut out)).await.expect("in time").expect("read");
        let body = out.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
        // The body is one JSON object (chunk size lines, if any, sit outside its braces).
        let json = match (body.find('{'), body.rfind('}')) {
            (Some(i), Some(j)) if i < j => &body[i..=j],
            _ => body,
        };
        serde_json::from_str(json).unwrap_or_else(|e| panic!("{path}: {e}: {out}"))
    }

    async fn sign_up(&self, email: &str) -> serde_json::Value {
        let v = self
            .post(
                "/test/signup",
                serde_json::json!({"email": email, "password": "correct horse battery", "name": "Test"}),
                None,
            )
            .await;
        assert!(v["cookie"].is_string(), "{v}");
        v
    }

    async fn sign_in(&self, email: &str) -> serde_json::Value {
        let v = self
            .post("/test/signin", serde_json::json!({"email": email, "password": "correct horse battery"}), None)
            .await;
        assert!(v["cookie"].is_string(), "{v}");
        v
    }
}

async fn status(gw: &Gateway, headers: &[(&str, &str)]) -> (u16, String) {
    let (status, _, body) = request(&gw.addr, "GET", STREAM_PATH, headers).await;
    let code =
        serde_json::from_str::<serde_json::Value>(&body).ok().and_then(|v| v["error"].as_str().map(String::from));
    (status, code.unwrap_or_default())
}

#[tokio::test]
async fn real_better_auth_cookies_jwts_and_sign_out() {
    let db = gateway::notifications_db().await;
    let ba = BetterAuth::start(&db).await;
    exec(&db, "SELECT pgsse.watch_sessions('session')").await;
    let alice = ba.sign_up("alice@example.com").await;
    let user_id = alice["userId"].as_str().expect("userId").to_string();
    let cookie = alice["cookie"].as_str().expect("cookie").to_string();
    // The JWT plugin creates its first key on the first token; fetch one before pgsse starts.
    let jwt =
        ba.post("/test/jwt", serde_json::json!({}), Some(&cookie)).await["jwt"].as_str().expect("jwt").to_string();

    let base = ba.base_url();
    let jwks = format!("{base}/api/auth/jwks");
    let gw = Gateway::start(
        &db,
        &[
            "--auth",
            "jwt,better-auth",
            "--better-auth-secret",
            BETTER_AUTH_SECRET,
            "--jwks-url",
            &jwks,
            "--jwt-issuer",
            &base,
            "--jwt-audience",
            &base,
        ],
    )
    .await;

    // The real session cookie: accepted, the right user, events flow.
    let mut s = SseClient::connect(&gw.addr, STREAM_PATH, &[("Cookie", &cookie)]).await.expect("connect");
    assert_eq!(s.status, 200);
    let connected = s.next_named("connected", T).await.expect("connected");
    let v: serde_json::Value = serde_json::from_str(&connected.data).expect("json");
    assert_eq!(v["userId"], user_id.as_str());
    let c = common::connect(&db).await;
    c.execute("INSERT INTO notifications (user_id, title) VALUES ($1, 'from the app')", &[&user_id])
        .await
        .expect("insert");
    let e = s.next_named("notification", T).await.expect("event");
    assert!(e.data.contains("from the app"));

    // The real JWT from the JWT plugin, verified with its JWKS (EdDSA).
    let mut j =
        SseClient::connect(&gw.addr, STREAM_PATH, &[("Authorization", &format!("Bearer {jwt}"))]).await.expect("c");
    assert_eq!(j.status, 200);
    let v: serde_json::Value =
        serde_json::from_str(&j.next_named("connected", T).await.expect("c").data).expect("json");
    assert_eq!(v["userId"], user_id.as_str());

    // Tampered signature, wrong secret, expired and deleted sessions: 401.
    let token = alice["sessionToken"].as_str().expect("token");
    let tampered = cookie.replacen(token, &format!("{}x", &token[..token.len() - 1]), 1);
    assert_eq!(status(&gw, &[("Cookie", &tampered)]).await, (401, "invalid_session".into()));
    let wrong_secret = {
        use base64::Engine;
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"not-the-app-secret");
        let sig = base64::engine::general_purpose::STANDARD.encode(ring::hmac::sign(&key, token.as_bytes()).as_ref());
        format!("better-auth.session_token={token}.{}", sig.replace('+', "%2B").replace('/', "%2F").replace('=', "%3D"))
    };
    assert_eq!(status(&gw, &[("Cookie", &wrong_secret)]).await, (401, "invalid_session".into()));

    let second = ba.sign_in("alice@example.com").await;
    let second_cookie = second["cookie"].as_str().expect("cookie").to_string();
    exec(
        &db,
        &format!(
            "UPDATE \"session\" SET \"expiresAt\" = now() - interval '1 minute' WHERE token = '{}'",
            second["sessionToken"].as_str().expect("token")
        ),
    )
    .await;
    assert_eq!(status(&gw, &[("Cookie", &second_cookie)]).await, (401, "session_expired".into()));

    let third = ba.sign_in("alice@example.com").await;
    let third_cookie = third["cookie"].as_str().expect("cookie").to_string();
    ba.post("/test/signout", serde_json::json!({}), Some(&third_cookie)).await;
    assert_eq!(status(&gw, &[("Cookie", &third_cookie)]).await, (401, "session_not_found".into()));

    // Signing out closes the open stream (Better Auth deletes the row; the trigger tells pgsse).
    let out = ba.post("/test/signout", serde_json::json!({}), Some(&cookie)).await;
    assert_eq!(out["ok"], true, "{out}");
    let bye = s.next_named("auth-expired", Duration::from_secs(3)).await.expect("closed on sign-out");
    assert!(bye.data.contains("session_revoked"));
    assert!(s.wait_closed(Duration::from_secs(2)).await);
    assert_eq!(status(&gw, &[("Cookie", &cookie)]).await, (401, "session_not_found".into()));
    drop(j);
    gw.stop().await;
}
