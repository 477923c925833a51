//! JWT verification: the keys from every configured source, the allow-list, the claim rules, and
//! where in a request the token is read from.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hyper::HeaderMap;
use jsonwebtoken::{Algorithm, DecodingKey};

use super::error::{AuthError, Setting, SetupError};
use super::extract::{self, is_cookie_name};
use super::identity::Identity;
use super::jwt::{self, ClaimRules};
use super::keys::{self, alg_name, KeyKind, KeySet, VerifyKey};
use super::{jwks, pem, remote};
use crate::clock::unix_now;
use crate::defaults::{DEFAULT_JWKS_REFRESH, DEFAULT_LEEWAY_SECS, DEFAULT_TOKEN_QUERY_PARAM, DEFAULT_USER_CLAIM};

#[derive(Clone)]
pub struct JwtConfig {
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

impl Default for JwtConfig {
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
            jwks_refresh: DEFAULT_JWKS_REFRESH,
        }
    }
}

impl fmt::Debug for JwtConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtConfig")
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

/// Verifies JWTs against the configured keys. Build once, share in an `Arc`.
///
/// Deliberately strict: the header `alg` must be on the allow-list *and* fit
/// the type of the key that verifies it, `exp` is required, and a token is
/// read from exactly one place in the request.
pub struct JwtVerifier {
    keys: KeySet,
    allowed: Vec<Algorithm>,
    /// `allowed` as text, kept for error messages.
    allowed_names: Arc<str>,
    rules: ClaimRules,
    token_cookie: Option<String>,
    token_query_param: Option<String>,
    remote: Option<Arc<remote::RemoteJwks>>,
}

impl JwtVerifier {
    /// Loads and checks every key and setting, returning all problems at once.
    pub fn new(cfg: &JwtConfig) -> Result<JwtVerifier, Vec<SetupError>> {
        super::crypto::install();
        let mut errors = Vec::new();
        let keys = load_keys(cfg, &mut errors);
        let remote = match cfg.jwks_url.as_deref().filter(|u| !u.is_empty()) {
            Some(url) => match remote::RemoteJwks::new(url.to_owned(), cfg.jwks_refresh) {
                Ok(r) => Some(Arc::new(r)),
                Err(msg) => {
                    errors.push(SetupError::new(Setting::JwksUrl, msg));
                    None
                }
            },
            None => None,
        };
        // After a key source failed, "no key" and "RS256 has no key" would only echo it.
        let keys_loaded = errors.is_empty();
        if keys_loaded && keys.is_empty() && remote.is_none() {
            errors.push(SetupError::new(
                Setting::JwtSecret,
                "no verification key configured; set --jwt-secret, --jwt-public-key-file, --jwks-file or --jwks-url",
            ));
        }
        let check_keys = keys_loaded && (!keys.is_empty() || remote.is_some());
        let allowed = keys::allowed_algorithms(&cfg.algorithms, &keys, remote.is_some(), check_keys, &mut errors);

        let non_empty = [
            (Setting::UserClaim, Some(&cfg.user_claim)),
            (Setting::Issuer, cfg.issuer.as_ref()),
            (Setting::Audience, cfg.audience.as_ref()),
            (Setting::TokenQueryParam, cfg.token_query_param.as_ref()),
        ];
        for (setting, value) in non_empty {
            if value.is_some_and(|v| v.is_empty()) {
                errors.push(SetupError::new(setting, "must not be empty"));
            }
        }
        if let Some(name) = &cfg.token_cookie {
            if !is_cookie_name(name) {
                errors.push(SetupError::new(Setting::TokenCookie, format!("{name:?} is not a valid cookie name")));
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }

        let names: Vec<_> = allowed.iter().map(|alg| alg_name(*alg)).collect();
        Ok(JwtVerifier {
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
impl fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("keys", &self.keys.len())
            .field("allowed", &self.allowed_names)
            .field("rules", &self.rules)
            .field("token_cookie", &self.token_cookie)
            .field("token_query_param", &self.token_query_param)
            .finish()
    }
}

/// Loads every configured key, pushing one error per broken source.
fn load_keys(cfg: &JwtConfig, errors: &mut Vec<SetupError>) -> KeySet {
    let mut keys = Vec::new();
    if let Some(secret) = &cfg.jwt_secret {
        if secret.is_empty() {
            errors.push(SetupError::new(Setting::JwtSecret, "must not be empty"));
        } else {
            if secret.len() < 32 {
                tracing::warn!("--jwt-secret is shorter than 32 bytes; HS256 wants at least 32");
            }
            keys.push(VerifyKey::new(KeyKind::Hmac, DecodingKey::from_secret(secret.as_bytes())));
        }
    }
    for path in &cfg.jwt_public_key_files {
        match read(path).and_then(|text| pem::load_public_key(&text)) {
            Ok((kind, key)) => keys.push(VerifyKey::new(kind, key)),
            Err(msg) => errors.push(SetupError::new(Setting::PublicKeyFile, format!("{}: {msg}", path.display()))),
        }
    }
    if let Some(path) = &cfg.jwks_file {
        match read(path).and_then(|text| jwks::load(&text)) {
            Ok(loaded) => {
                for skipped in &loaded.skipped {
                    tracing::warn!(file = %path.display(), "skipping JWK: {skipped}");
                }
                keys.extend(loaded.keys);
            }
            Err(msg) => errors.push(SetupError::new(Setting::JwksFile, format!("{}: {msg}", path.display()))),
        }
    }
    KeySet::from_keys(keys)
}

fn read(path: &Path) -> Result<String, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    String::from_utf8(bytes).map_err(|_| "not a text file (PEM or JSON expected)".to_owned())
}
