//! JWT authentication for SSE stream requests: key loading, token extraction and verification.

mod error;
mod extract;

pub(crate) use extract::find_query_param;
mod jwks;
mod jwt;
mod keys;
mod mint;
mod pem;
pub mod remote;
pub mod session;
#[cfg(test)]
mod tests;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use hyper::HeaderMap;
use jsonwebtoken::Algorithm;

use crate::config::ConfigError;
use jwt::ClaimRules;
use keys::{alg_name, KeySet};

pub use error::AuthError;
pub use mint::{mint_hs256, MintError};

/// Clock skew tolerated on `exp` and `nbf`, in seconds.
pub const DEFAULT_LEEWAY_SECS: u64 = 5;
pub const DEFAULT_USER_CLAIM: &str = "sub";
pub const DEFAULT_TOKEN_QUERY_PARAM: &str = "access_token";

#[derive(Clone)]
pub struct AuthConfig {
    /// `--jwt-secret`: shared secret for HS256/384/512.
    pub jwt_secret: Option<String>,
    /// `--jwt-public-key-file` (repeatable): RSA, EC P-256/P-384 or Ed25519 public key PEM.
    pub jwt_public_key_files: Vec<PathBuf>,
    /// `--jwks-file`: JWK set; keys are chosen by the token's `kid`.
    pub jwks_file: Option<PathBuf>,
    /// `--jwt-algorithms`: allow-list; empty means every algorithm a configured key fits.
    pub algorithms: Vec<String>,
    /// `--jwt-issuer`: required `iss` when set.
    pub issuer: Option<String>,
    /// `--jwt-audience`: required member of `aud` when set.
    pub audience: Option<String>,
    /// `--user-claim`: claim holding the user id (string or integer).
    pub user_claim: String,
    /// `--token-cookie`: cookie to read the token from.
    pub token_cookie: Option<String>,
    /// `--token-query-param`: query parameter to read the token from; `None` disables it.
    pub token_query_param: Option<String>,
    /// `--jwks-url`: a JWK set fetched over HTTP(S) and refreshed.
    pub jwks_url: Option<String>,
    /// `--jwks-refresh`: how often the JWKS URL is refetched.
    pub jwks_refresh: std::time::Duration,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            jwt_secret: None,
            jwt_public_key_files: Vec::new(),
            jwks_file: None,
            algorithms: Vec::new(),
            issuer: None,
            audience: None,
            user_claim: DEFAULT_USER_CLAIM.to_owned(),
            token_cookie: None,
            token_query_param: Some(DEFAULT_TOKEN_QUERY_PARAM.to_owned()),
            jwks_url: None,
            jwks_refresh: remote::DEFAULT_JWKS_REFRESH,
        }
    }
}

impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthConfig")
            .field("jwt_secret", &self.jwt_secret.as_ref().map(|_| "<redacted>"))
            .field("jwt_public_key_files", &self.jwt_public_key_files)
            .field("jwks_file", &self.jwks_file)
            .field("algorithms", &self.algorithms)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("user_claim", &self.user_claim)
            .field("token_cookie", &self.token_cookie)
            .field("token_query_param", &self.token_query_param)
            .field("jwks_url", &self.jwks_url)
            .finish()
    }
}

/// Who a verified token speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user_id: Arc<str>,
    /// `exp` in unix seconds.
    pub expires_at: Option<u64>,
    /// Set when a session cookie authenticated the request: the session's key, so revoking the
    /// session closes the stream.
    pub session: Option<session::SessionKey>,
}

/// Verifies tokens against the configured keys. Build once, share in an `Arc`.
///
/// Deliberately strict: the header `alg` must be on the allow-list *and* fit
/// the type of the key that verifies it, `exp` is required, and a token is
/// read from exactly one place in the request.
pub struct Authenticator {
    keys: KeySet,
    allowed: Vec<Algorithm>,
    /// `allowed` as text, kept for error messages.
    allowed_names: Arc<str>,
    rules: ClaimRules,
    token_cookie: Option<String>,
    token_query_param: Option<String>,
    remote: Option<Arc<remote::RemoteJwks>>,
}

impl Authenticator {
    /// Loads and checks every key and setting, returning all problems at once.
    pub fn new(cfg: &AuthConfig) -> Result<Authenticator, Vec<ConfigError>> {
        let mut errors = Vec::new();
        let keys = KeySet::load(cfg, &mut errors);
        let remote = match cfg.jwks_url.as_deref().filter(|u| !u.is_empty()) {
            Some(url) => match remote::RemoteJwks::new(url.to_owned(), cfg.jwks_refresh) {
                Ok(r) => Some(Arc::new(r)),
                Err(msg) => {
                    errors.push(ConfigError::new("--jwks-url", msg));
                    None
                }
            },
            None => None,
        };
        // After a key source failed, "no key" and "RS256 has no key" would only echo it.
        let keys_loaded = errors.is_empty();
        if keys_loaded && keys.is_empty() && remote.is_none() {
            errors.push(ConfigError::new(
                "--jwt-secret",
                "no verification key configured; set --jwt-secret, --jwt-public-key-file, --jwks-file or --jwks-url",
            ));
        }
        let check_keys = keys_loaded && (!keys.is_empty() || remote.is_some());
        let allowed = keys::allowed_algorithms(&cfg.algorithms, &keys, remote.is_some(), check_keys, &mut errors);

        let non_empty = [
            ("--user-claim", Some(&cfg.user_claim)),
            ("--jwt-issuer", cfg.issuer.as_ref()),
            ("--jwt-audience", cfg.audience.as_ref()),
            ("--token-query-param", cfg.token_query_param.as_ref()),
        ];
        for (flag, value) in non_empty {
            if value.is_some_and(|v| v.is_empty()) {
                errors.push(ConfigError::new(flag, "must not be empty"));
            }
        }
        if let Some(name) = &cfg.token_cookie {
            if !is_cookie_name(name) {
                errors.push(ConfigError::new("--token-cookie", format!("{name:?} is not a valid cookie name")));
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }

        let names: Vec<_> = allowed.iter().map(|alg| alg_name(*alg)).collect();
        Ok(Authenticator {
            keys,
            allowed,
            allowed_names: names.join(", ").into(),
            rules: ClaimRules {
                issuer: cfg.issuer.as_deref().map(Arc::from),
                audience: cfg.audience.as_deref().map(Arc::from),
                user_claim: cfg.user_claim.as_str().into(),
                leeway: DEFAULT_LEEWAY_SECS,
            },
            token_cookie: cfg.token_cookie.clone(),
            token_query_param: cfg.token_query_param.clone(),
            remote,
        })
    }

    /// The JWKS URL source, if configured (its refresher task is started by `run`).
    pub fn remote(&self) -> Option<&Arc<remote::RemoteJwks>> {
        self.remote.as_ref()
    }

    /// `authenticate`, plus one early JWKS refetch when the token names a key not seen yet
    /// (a key rotation at the issuer must not lock users out until the next refresh).
    pub async fn authenticate_fresh(&self, headers: &HeaderMap, query: Option<&str>) -> Result<Identity, AuthError> {
        match self.authenticate(headers, query) {
            Err(AuthError::UnknownKey { .. }) if self.remote.is_some() => {
                if let Some(r) = &self.remote {
                    r.fetch_if_allowed().await;
                }
                self.authenticate(headers, query)
            }
            other => other,
        }
    }

    /// Whether a request carries something this authenticator would read (for choosing
    /// between several authentication methods).
    pub fn has_bearer(headers: &HeaderMap) -> bool {
        headers.get(hyper::header::AUTHORIZATION).is_some()
    }

    /// Extracts the token (`Authorization: Bearer`, then the cookie, then the
    /// query parameter) and verifies it. `query` is the raw URI query without `?`.
    pub fn authenticate(&self, headers: &HeaderMap, query: Option<&str>) -> Result<Identity, AuthError> {
        let token =
            extract::extract_token(headers, query, self.token_cookie.as_deref(), self.token_query_param.as_deref())?;
        self.verify(&token)
    }

    /// Verifies a bare token string.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        self.verify_at(token, unix_now())
    }

    pub(crate) fn verify_at(&self, token: &str, now: u64) -> Result<Identity, AuthError> {
        let parsed = jwt::parse(token)?;
        let alg = match parsed.alg {
            Ok(alg) if self.allowed.contains(&alg) => alg,
            Ok(alg) => return Err(self.not_allowed(alg_name(alg).to_owned())),
            Err(name) => return Err(self.not_allowed(name)),
        };
        let message = parsed.signing_input.as_bytes();
        // `crypto::verify` errs only on input `parse` has already rejected; count it as a mismatch.
        let verify_with = |set: &KeySet| -> Result<bool, AuthError> {
            Ok(set
                .candidates(parsed.kid.as_deref(), alg)?
                .into_iter()
                .any(|k| jsonwebtoken::crypto::verify(parsed.signature, message, &k.key, alg).unwrap_or(false)))
        };
        let verified = match (verify_with(&self.keys), &self.remote) {
            (Err(AuthError::UnknownKey { .. }), Some(remote)) => verify_with(&remote.current())?,
            (result, _) => result?,
        };
        if !verified {
            return Err(AuthError::InvalidSignature);
        }
        self.rules.check(&parsed.payload, now)
    }

    fn not_allowed(&self, alg: String) -> AuthError {
        let alg = if alg.is_empty() { "(empty)".to_owned() } else { alg };
        AuthError::AlgorithmNotAllowed { alg, allowed: self.allowed_names.clone() }
    }
}

/// Never shows key material.
impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("keys", &self.keys.len())
            .field("allowed", &self.allowed_names)
            .field("rules", &self.rules)
            .field("token_cookie", &self.token_cookie)
            .field("token_query_param", &self.token_query_param)
            .finish()
    }
}

/// RFC 6265 cookie-name: a token, i.e. visible ASCII without separators.
fn is_cookie_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b))
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
