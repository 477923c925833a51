//! Better Auth session cookies: find the cookie, check its HMAC signature, name the session.
//!
//! Better Auth sets `<prefix>.session_token` (or `__Secure-<prefix>.session_token` over HTTPS) to
//! the URL-encoded `token.signature`, where signature is base64 (standard, padded) of
//! HMAC-SHA256(secret, token). Only the signature is checked here; whether the session exists
//! and is unexpired is the session store's job (`pg::sessions`).

use std::sync::Arc;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hyper::HeaderMap;

use super::error::{AuthError, Setting, SetupError};
use super::extract::{self, is_cookie_name};

/// Session tokens longer than this are not Better Auth's (it uses 32 characters).
const MAX_TOKEN_LEN: usize = 512;

/// A session token's identity in NOTIFY payloads, caches and the hub: SHA-256 of the token, so
/// the token itself never leaves the request that carried it.
pub type SessionKey = [u8; 32];

pub fn session_key(token: &str) -> SessionKey {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut key = [0u8; 32];
    key.copy_from_slice(digest.as_ref());
    key
}

/// A live session: whose it is and until when (unix seconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub user_id: Arc<str>,
    pub expires_at: Option<u64>,
}

/// What a session lookup found.
#[derive(Debug, PartialEq, Eq)]
pub enum Found {
    Live(Session),
    Expired(u64),
    Missing,
}

pub struct SessionCookie {
    /// `__Secure-` form first: browsers only send it over HTTPS, where it is the one set.
    names: [String; 2],
    keys: Vec<ring::hmac::Key>,
}

impl SessionCookie {
    /// `secrets`: the app's current secret first, then older ones still accepted (rotation).
    pub fn new(prefix: &str, secrets: &[String]) -> Result<Self, Vec<SetupError>> {
        let mut errors = Vec::new();
        if !is_cookie_name(prefix) {
            errors.push(SetupError::new(Setting::CookiePrefix, format!("{prefix:?} is not a cookie name prefix")));
        }
        let secrets: Vec<&String> = secrets.iter().filter(|s| !s.is_empty()).collect();
        if secrets.is_empty() {
            errors.push(SetupError::new(
                Setting::SessionSecret,
                "required with --auth better-auth (the app's BETTER_AUTH_SECRET; comma-separate old ones to rotate)",
            ));
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Self {
            names: [format!("__Secure-{prefix}.session_token"), format!("{prefix}.session_token")],
            keys: secrets.iter().map(|s| ring::hmac::Key::new(ring::hmac::HMAC_SHA256, s.as_bytes())).collect(),
        })
    }

    /// The cookie's name as the app sets it over plain HTTP (`<prefix>.session_token`).
    pub fn name(&self) -> &str {
        &self.names[1]
    }

    /// The verified session token, `None` when the request has no session cookie.
    pub fn token(&self, headers: &HeaderMap) -> Option<Result<String, AuthError>> {
        let raw = headers
            .get_all(hyper::header::COOKIE)
            .iter()
            .find_map(|h| self.names.iter().find_map(|n| extract::find_cookie(h.as_bytes(), n)))?;
        Some(self.verify(raw))
    }

    fn verify(&self, raw: &[u8]) -> Result<String, AuthError> {
        let malformed = || AuthError::InvalidSession("the session cookie is not token.signature");
        let text = std::str::from_utf8(raw).map_err(|_| malformed())?;
        let decoded = extract::form_decode_path(text).ok_or_else(malformed)?;
        let (token, signature) = decoded.rsplit_once('.').ok_or_else(malformed)?;
        if token.is_empty() || token.len() > MAX_TOKEN_LEN {
            return Err(malformed());
        }
        let tag = STANDARD.decode(signature).map_err(|_| malformed())?;
        // ring compares in constant time.
        if self.keys.iter().any(|k| ring::hmac::verify(k, token.as_bytes(), &tag).is_ok()) {
            Ok(token.to_owned())
        } else {
            Err(AuthError::InvalidSession("the session cookie's signature does not match the secret"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::{HeaderValue, COOKIE};

    fn sign(secret: &str, token: &str) -> String {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
        let sig = STANDARD.encode(ring::hmac::sign(&key, token.as_bytes()).as_ref());
        // As better-call does: encodeURIComponent(`${token}.${sig}`).
        format!("{token}.{sig}").replace('+', "%2B").replace('/', "%2F").replace('=', "%3D")
    }

    fn headers(cookie: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(COOKIE, HeaderValue::from_str(cookie).expect("header"));
        h
    }

    #[test]
    fn accepts_signed_cookies_in_both_forms_and_rotated_secrets() {
        let c = SessionCookie::new("better-auth", &["new-secret".into(), "old-secret".into()]).expect("config");
        let v = sign("new-secret", "abcDEF123");
        let got = c.token(&headers(&format!("theme=dark; better-auth.session_token={v}"))).expect("found");
        assert_eq!(got, Ok("abcDEF123".to_string()));
        let v = sign("old-secret", "tok");
        assert_eq!(c.token(&headers(&format!("__Secure-better-auth.session_token={v}"))), Some(Ok("tok".into())));
    }

    #[test]
    fn refuses_tampering_and_unknown_secrets() {
        let c = SessionCookie::new("better-auth", &["s1".into()]).expect("config");
        let v = sign("other", "tok");
        assert_eq!(c.token(&headers(&format!("better-auth.session_token={v}"))).map(|r| r.is_err()), Some(true));
        let v = sign("s1", "tok").replacen("tok", "tok2", 1);
        assert_eq!(c.token(&headers(&format!("better-auth.session_token={v}"))).map(|r| r.is_err()), Some(true));
        for garbage in ["", "nodot", ".%%%", "a.b.c", "tok.!!!!"] {
            let r = c.token(&headers(&format!("better-auth.session_token={garbage}")));
            assert!(r.is_none() || r.is_some_and(|r| r.is_err()), "{garbage}");
        }
        assert!(c.token(&headers("other=1")).is_none());
    }

    /// A cookie the real Better Auth 1.7.25 set (tests/better-auth/README.md).
    #[test]
    fn verifies_a_cookie_from_better_auth_itself() {
        let c = SessionCookie::new("better-auth", &["pgsse-better-auth-interop-test-secret-0123456789".into()])
            .expect("config");
        let value = "MVPpRffhS44YwS9qorAann2LboPdZpcE.d4r%2FJucWhFPSPgj0vEOjP0H%2Bs8rwu0ZObE4er3i%2B7%2Bg%3D";
        let got = c.token(&headers(&format!("better-auth.session_token={value}")));
        assert_eq!(got, Some(Ok("MVPpRffhS44YwS9qorAann2LboPdZpcE".into())));
    }

    #[test]
    fn needs_a_secret() {
        let errs = SessionCookie::new("better-auth", &[]).err().expect("error");
        assert_eq!(errs[0].setting, Setting::SessionSecret);
    }
}
