//! JWS compact-serialisation parsing and registered-claim checks; key handling lives in `keys`.

use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::Algorithm;
use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::error::{sanitize, AuthError};
use super::identity::Identity;
use super::keys::algorithm_from_token;

/// Upper bound on token length; real tokens are far smaller, and this caps
/// the work an anonymous client can make us do.
pub(crate) const MAX_TOKEN_LEN: usize = 16 * 1024;

/// A token whose structure is sound. Nothing in it is trusted yet.
#[derive(Debug)]
pub(crate) struct Parsed<'a> {
    /// `Err` holds the sanitised name of an algorithm we never accept, e.g. `none`.
    pub alg: Result<Algorithm, String>,
    pub kid: Option<String>,
    pub signing_input: &'a str,
    /// Still base64url: `jsonwebtoken::crypto::verify` takes it in that form.
    pub signature: &'a str,
    pub payload: Vec<u8>,
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    crit: Option<IgnoredAny>,
}

pub(crate) fn parse(token: &str) -> Result<Parsed<'_>, AuthError> {
    use AuthError::Malformed;
    if token.len() > MAX_TOKEN_LEN {
        return Err(Malformed("token is too long"));
    }
    // Also rejects whitespace anywhere, so a token is never "almost" accepted.
    if !token.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')) {
        return Err(Malformed("token contains characters outside base64url"));
    }
    const SEGMENTS: &str = "expected three dot-separated segments";
    let (signing_input, signature) = token.rsplit_once('.').ok_or(Malformed(SEGMENTS))?;
    let (header, payload) = signing_input.split_once('.').ok_or(Malformed(SEGMENTS))?;
    if payload.contains('.') {
        return Err(Malformed(SEGMENTS));
    }
    if header.is_empty() || payload.is_empty() {
        return Err(Malformed("empty header or payload segment"));
    }
    let header = decode_segment(header, "header is not valid base64url")?;
    let payload = decode_segment(payload, "payload is not valid base64url")?;
    decode_segment(signature, "signature is not valid base64url")?;

    let header: Header =
        serde_json::from_slice(&header).map_err(|_| Malformed("header is not a JSON object with a string alg"))?;
    // RFC 7515 §4.1.11: extensions we do not understand must not be ignored.
    if header.crit.is_some() {
        return Err(Malformed("critical header extensions are not supported"));
    }
    let alg = algorithm_from_token(&header.alg).ok_or_else(|| sanitize(&header.alg, 16));
    Ok(Parsed { alg, kid: header.kid, signing_input, signature, payload })
}

fn decode_segment(segment: &str, error: &'static str) -> Result<Vec<u8>, AuthError> {
    // The engine rejects padding and non-zero trailing bits, so each token has one spelling.
    URL_SAFE_NO_PAD.decode(segment).map_err(|_| AuthError::Malformed(error))
}

/// Claim requirements fixed at startup.
#[derive(Debug)]
pub(crate) struct ClaimRules {
    pub issuer: Option<Arc<str>>,
    pub audience: Option<Arc<str>>,
    pub user_claim: Arc<str>,
    pub leeway: u64,
}

impl ClaimRules {
    /// Checks the claims of a token whose signature has been verified.
    pub(crate) fn check(&self, payload: &[u8], now: u64) -> Result<Identity, AuthError> {
        let claims: Map<String, Value> =
            serde_json::from_slice(payload).map_err(|_| AuthError::Malformed("payload is not a JSON object"))?;

        let exp = numeric_date(&claims, "exp", "exp claim is not a NumericDate")?.ok_or(AuthError::MissingExpiry)?;
        if now >= exp.saturating_add(self.leeway) {
            return Err(AuthError::Expired { exp });
        }
        if let Some(nbf) = numeric_date(&claims, "nbf", "nbf claim is not a NumericDate")? {
            if nbf > now.saturating_add(self.leeway) {
                return Err(AuthError::NotYetValid { nbf });
            }
        }

        if let Some(expected) = &self.issuer {
            if claims.get("iss").and_then(Value::as_str) != Some(&**expected) {
                return Err(AuthError::InvalidIssuer { expected: expected.clone() });
            }
        }
        if let Some(expected) = &self.audience {
            let matches = match claims.get("aud") {
                Some(Value::String(aud)) => aud == &**expected,
                Some(Value::Array(auds)) => auds.iter().any(|a| a.as_str() == Some(&**expected)),
                _ => false,
            };
            if !matches {
                return Err(AuthError::InvalidAudience { expected: expected.clone() });
            }
        }

        let user_id: Arc<str> = match claims.get(&*self.user_claim) {
            None | Some(Value::Null) => return Err(AuthError::MissingUserClaim { claim: self.user_claim.clone() }),
            // PostgreSQL text cannot hold NUL: such an id could never be replayed or matched.
            Some(Value::String(s)) if s.contains('\0') => {
                return Err(AuthError::UserIdNotText { claim: self.user_claim.clone() })
            }
            Some(Value::String(s)) if !s.is_empty() => s.as_str().into(),
            // Integers only: a float id would print as e.g. "1e21" and match nothing.
            Some(Value::Number(n)) if n.is_u64() || n.is_i64() => n.to_string().into(),
            Some(_) => return Err(AuthError::InvalidUserClaim { claim: self.user_claim.clone() }),
        };
        Ok(Identity { user_id, expires_at: Some(exp), session: None })
    }
}

/// RFC 7519 NumericDate: seconds since the epoch, possibly fractional (truncated here).
fn numeric_date(claims: &Map<String, Value>, name: &str, error: &'static str) -> Result<Option<u64>, AuthError> {
    let Some(value) = claims.get(name) else {
        return Ok(None);
    };
    let number = value.as_number().ok_or(AuthError::Malformed(error))?;
    match (number.as_u64(), number.as_f64()) {
        (Some(secs), _) => Ok(Some(secs)),
        // `as` saturates, which is what a huge date should do.
        (None, Some(secs)) if secs.is_finite() && secs >= 0.0 => Ok(Some(secs as u64)),
        _ => Err(AuthError::Malformed(error)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, RngExt, SeedableRng};
    use serde_json::json;

    fn b64(v: &Value) -> String {
        URL_SAFE_NO_PAD.encode(v.to_string())
    }

    fn token(header: &Value, claims: &Value) -> String {
        format!("{}.{}.c2ln", b64(header), b64(claims))
    }

    fn rules() -> ClaimRules {
        ClaimRules { issuer: Some("iss-a".into()), audience: Some("aud-a".into()), user_claim: "sub".into(), leeway: 5 }
    }

    fn check(claims: Value) -> Result<Identity, AuthError> {
        rules().check(claims.to_string().as_bytes(), 1_000)
    }

    #[test]
    fn parses_structure() {
        let t = token(&json!({"alg": "HS256", "kid": "k1", "typ": "JWT"}), &json!({}));
        let parsed = parse(&t).unwrap();
        assert_eq!(parsed.alg, Ok(Algorithm::HS256));
        assert_eq!(parsed.kid.as_deref(), Some("k1"));
        assert_eq!(parsed.signature, "c2ln");
        let t = token(&json!({"alg": "none"}), &json!({}));
        let none = parse(&t).unwrap();
        assert_eq!(none.alg, Err("none".to_string()));
        // Algorithm names in tokens are case-sensitive.
        let t = token(&json!({"alg": "hs256"}), &json!({}));
        let lower = parse(&t).unwrap();
        assert!(lower.alg.is_err());
    }

    #[test]
    fn rejects_malformed_structure() {
        let good = token(&json!({"alg": "HS256"}), &json!({"sub": "a"}));
        let crit = token(&json!({"alg": "HS256", "crit": ["b64"]}), &json!({}));
        let dup = format!("{}.e30.c2ln", URL_SAFE_NO_PAD.encode(r#"{"alg":"none","alg":"HS256"}"#));
        let cases = [
            String::new(),
            ".".into(),
            "..".into(),
            "a.b".into(),
            "a.b.c.d".into(),
            format!(" {good}"),
            format!("{good} "),
            format!("{good}\n"),
            good.replacen('.', " .", 1),
            format!("{good}="),
            good.replacen('.', "+.", 1),
            format!("e30.{}", good.split_once('.').unwrap().1),
            format!("bm90IGpzb24.{}", good.split_once('.').unwrap().1),
            "A.e30.c2ln".into(),
            "a".repeat(MAX_TOKEN_LEN + 1),
            crit,
            dup,
        ];
        for case in cases {
            let err = parse(&case).unwrap_err();
            assert_eq!(err.code(), "malformed_token", "{case:?}");
        }
    }

    #[test]
    fn garbage_never_panics() {
        let mut rng = StdRng::seed_from_u64(7);
        let good = token(&json!({"alg": "RS256", "kid": "x"}), &json!({"exp": 1}));
        let alphabet = b"AZaz09-_.=+/ \t\n%\"{}\xc3";
        for round in 0..500 {
            let case: String = if round % 2 == 0 {
                let len = rng.random_range(0..80);
                (0..len).map(|_| char::from(alphabet[rng.random_range(0..alphabet.len())])).collect()
            } else {
                let mut chars: Vec<char> = good.chars().collect();
                for _ in 0..rng.random_range(1..4) {
                    let at = rng.random_range(0..chars.len());
                    chars[at] = char::from(alphabet[rng.random_range(0..alphabet.len())]);
                }
                let keep = rng.random_range(0..=chars.len());
                chars.into_iter().take(keep).collect()
            };
            // Ok is possible for lucky mutations; what matters is no panic.
            let _ = parse(&case);
        }
    }

    #[test]
    fn checks_time_claims_with_leeway() {
        let ok = json!({"sub": "u", "iss": "iss-a", "aud": "aud-a", "exp": 1_004, "nbf": 1_005});
        assert_eq!(check(ok).unwrap().expires_at, Some(1_004));
        let code = |claims: Value| check(claims).unwrap_err().code();
        assert_eq!(code(json!({"sub": "u", "exp": 995})), "expired");
        assert_eq!(code(json!({"sub": "u"})), "missing_exp");
        assert_eq!(code(json!({"sub": "u", "exp": "2000"})), "malformed_token");
        assert_eq!(code(json!({"sub": "u", "exp": -1})), "malformed_token");
        assert_eq!(code(json!({"sub": "u", "exp": 2_000, "nbf": 1_006})), "not_yet_valid");
        assert_eq!(code(json!({"sub": "u", "exp": 2_000, "nbf": true})), "malformed_token");
        let fractional = json!({"sub": "u", "iss": "iss-a", "aud": "aud-a", "exp": 2_000.9});
        assert_eq!(check(fractional).unwrap().expires_at, Some(2_000));
        assert_eq!(rules().check(b"[1]", 0).unwrap_err().code(), "malformed_token");
    }

    #[test]
    fn checks_issuer_audience_and_user() {
        let code = |claims: Value| check(claims).unwrap_err().code();
        let base = json!({"sub": "u", "exp": 2_000, "iss": "iss-a", "aud": ["x", "aud-a"]});
        assert_eq!(check(base.clone()).unwrap().user_id.as_ref(), "u");
        let with = |key: &str, value: Value| {
            let mut claims = base.clone();
            claims[key] = value;
            claims
        };
        assert_eq!(code(with("iss", json!("iss-b"))), "invalid_issuer");
        assert_eq!(code(with("iss", json!(null))), "invalid_issuer");
        assert_eq!(code(with("aud", json!("aud-b"))), "invalid_audience");
        assert_eq!(code(with("aud", json!(["aud-b"]))), "invalid_audience");
        assert_eq!(code(with("aud", json!(1))), "invalid_audience");
        assert_eq!(check(with("sub", json!(42))).unwrap().user_id.as_ref(), "42");
        assert_eq!(check(with("sub", json!(-7))).unwrap().user_id.as_ref(), "-7");
        assert_eq!(code(with("sub", json!(null))), "missing_user_claim");
        assert_eq!(code(with("sub", json!(""))), "invalid_user_claim");
        assert_eq!(code(with("sub", json!(1.5))), "invalid_user_claim");
        assert_eq!(code(with("sub", json!({"id": 1}))), "invalid_user_claim");
    }
}
