//! Mints HS256 tokens for `pgsse token`, for development, tests and simple deployments.

use std::time::Duration;

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum MintError {
    #[error("subject must not be empty")]
    EmptySubject,
    #[error("secret must not be empty")]
    EmptySecret,
    #[error("ttl must be at least one second")]
    TtlTooShort,
    #[error("ttl is too large")]
    TtlTooLarge,
    #[error("cannot sign token: {0}")]
    Sign(#[from] jsonwebtoken::errors::Error),
}

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    iat: u64,
    exp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a str>,
}

/// An HS256 JWT with `sub`, `iat`, `exp = now + ttl` and, when given, `iss` and `aud`.
pub fn mint_hs256(
    sub: &str,
    secret: &[u8],
    ttl: Duration,
    issuer: Option<&str>,
    audience: Option<&str>,
) -> Result<String, MintError> {
    super::crypto::install();
    mint_at(sub, secret, ttl, issuer, audience, crate::clock::unix_now())
}

pub(crate) fn mint_at(
    sub: &str,
    secret: &[u8],
    ttl: Duration,
    issuer: Option<&str>,
    audience: Option<&str>,
    now: u64,
) -> Result<String, MintError> {
    if sub.is_empty() {
        return Err(MintError::EmptySubject);
    }
    if secret.is_empty() {
        return Err(MintError::EmptySecret);
    }
    if ttl.as_secs() == 0 {
        return Err(MintError::TtlTooShort);
    }
    let exp = now.checked_add(ttl.as_secs()).ok_or(MintError::TtlTooLarge)?;
    let claims = Claims { sub, iat: now, exp, iss: issuer, aud: audience };
    let token = encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret))?;
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_unusable_input() {
        let ttl = Duration::from_secs(60);
        assert!(matches!(mint_hs256("", b"s", ttl, None, None), Err(MintError::EmptySubject)));
        assert!(matches!(mint_hs256("u", b"", ttl, None, None), Err(MintError::EmptySecret)));
        let short = Duration::from_millis(999);
        assert!(matches!(mint_hs256("u", b"s", short, None, None), Err(MintError::TtlTooShort)));
        let huge = Duration::from_secs(u64::MAX);
        assert!(matches!(mint_hs256("u", b"s", huge, None, None), Err(MintError::TtlTooLarge)));
    }
}
