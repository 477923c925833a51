//! Why a request failed authentication (with a stable machine code for each reason), why it got
//! no answer at all, and why an authentication setting cannot be used.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

/// A rejected request. `Display` is a sentence safe to log or return to the
/// client: it never contains the token, and values copied from the token
/// (`alg`, `kid`) are sanitised first.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no token in the Authorization header, cookie or query string")]
    MissingToken,
    /// No credentials at all, with session cookies on: names the cookie, which is what a
    /// browser app most likely failed to send (wrong prefix, other domain, not signed in).
    #[error("no session cookie {cookie}{}", if *.jwt { " and no token in the Authorization header, cookie or query string" } else { "" })]
    MissingSessionCookie { cookie: Arc<str>, jwt: bool },
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    #[error("algorithm {alg} is not allowed (allowed: {allowed})")]
    AlgorithmNotAllowed { alg: String, allowed: Arc<str> },
    #[error("{}", unknown_key_message(.kid.as_deref(), .alg))]
    UnknownKey { kid: Option<String>, alg: &'static str },
    #[error("key {kid:?} cannot verify {alg} tokens")]
    KeyAlgorithmMismatch { kid: String, alg: &'static str },
    #[error("token signature does not match")]
    InvalidSignature,
    #[error("token has no exp claim; an expiry is required")]
    MissingExpiry,
    #[error("token expired at {}", format_unix(*.exp))]
    Expired { exp: u64 },
    #[error("token is not valid before {}", format_unix(*.nbf))]
    NotYetValid { nbf: u64 },
    #[error("token issuer is not {expected:?}")]
    InvalidIssuer { expected: Arc<str> },
    #[error("token audience does not include {expected:?}")]
    InvalidAudience { expected: Arc<str> },
    #[error("token has no {claim:?} claim")]
    MissingUserClaim { claim: Arc<str> },
    #[error("claim {claim:?} must be a non-empty string or an integer")]
    InvalidUserClaim { claim: Arc<str> },
    #[error("claim {claim:?} contains a NUL character, which a PostgreSQL text user id cannot hold")]
    UserIdNotText { claim: Arc<str> },
    #[error("invalid session cookie: {0}")]
    InvalidSession(&'static str),
    #[error("no such session (signed out or deleted)")]
    SessionNotFound,
    #[error("the session expired at {}", format_unix(*.exp))]
    SessionExpired { exp: u64 },
}

impl AuthError {
    /// Short stable machine code for JSON bodies, metrics labels and `WWW-Authenticate`.
    pub fn code(&self) -> &'static str {
        match self {
            Self::MissingToken | Self::MissingSessionCookie { .. } => "missing_token",
            Self::Malformed(_) => "malformed_token",
            Self::AlgorithmNotAllowed { .. } => "algorithm_not_allowed",
            Self::UnknownKey { .. } => "unknown_key",
            Self::KeyAlgorithmMismatch { .. } => "key_algorithm_mismatch",
            Self::InvalidSignature => "invalid_signature",
            Self::MissingExpiry => "missing_exp",
            Self::Expired { .. } => "expired",
            Self::NotYetValid { .. } => "not_yet_valid",
            Self::InvalidIssuer { .. } => "invalid_issuer",
            Self::InvalidAudience { .. } => "invalid_audience",
            Self::MissingUserClaim { .. } => "missing_user_claim",
            Self::InvalidUserClaim { .. } | Self::UserIdNotText { .. } => "invalid_user_claim",
            Self::InvalidSession(_) => "invalid_session",
            Self::SessionNotFound => "session_not_found",
            Self::SessionExpired { .. } => "session_expired",
        }
    }
}

/// Why the front door gave a request no identity.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// The credentials were missing or refused (401).
    #[error(transparent)]
    Denied(#[from] AuthError),
    /// The session store could not answer; the client should retry (503).
    #[error("{0}")]
    Unavailable(Box<dyn std::error::Error + Send + Sync>),
}

/// An authentication setting, named for `config` to map to its flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setting {
    JwtSecret,
    PublicKeyFile,
    JwksFile,
    JwksUrl,
    Algorithms,
    Issuer,
    Audience,
    UserClaim,
    TokenCookie,
    TokenQueryParam,
    CookiePrefix,
    SessionSecret,
}

/// One unusable authentication setting. Setup collects these and reports them all together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SetupError {
    pub setting: Setting,
    pub message: String,
}

impl SetupError {
    pub fn new(setting: Setting, message: impl Into<String>) -> Self {
        Self { setting, message: message.into() }
    }
}

fn unknown_key_message(kid: Option<&str>, alg: &str) -> String {
    match kid {
        Some(kid) => format!("unknown key id {kid:?} for {alg} tokens"),
        None => format!("token has no kid and no key without one can verify {alg} tokens"),
    }
}

/// RFC 3339 for the years humantime can print, the raw number beyond that
/// (an attacker-chosen `nbf` must not make `to_string` panic).
pub(crate) fn format_unix(secs: u64) -> String {
    const LAST_SECOND_OF_9999: u64 = 253_402_300_799;
    if secs > LAST_SECOND_OF_9999 {
        return format!("unix time {secs}");
    }
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

/// Makes a token-supplied string safe to echo: printable ASCII only, bounded length.
pub(crate) fn sanitize(value: &str, max: usize) -> String {
    let mut out: String =
        value.chars().take(max).map(|c| if c.is_ascii_graphic() || c == ' ' { c } else { '?' }).collect();
    if value.chars().count() > max {
        out.push_str("...");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_times_without_panicking() {
        assert_eq!(format_unix(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_unix(u64::MAX), format!("unix time {}", u64::MAX));
        let err = AuthError::Expired { exp: 1_700_000_000 };
        assert_eq!(err.to_string(), "token expired at 2023-11-14T22:13:20Z");
    }

    #[test]
    fn sanitizes_token_supplied_text() {
        assert_eq!(sanitize("RS256", 16), "RS256");
        assert_eq!(sanitize("a\nb\u{1b}", 16), "a?b?");
        assert_eq!(sanitize("abcdef", 3), "abc...");
    }
}
