//! Authentication flags: which methods are on (`--auth`), JWT keys, and session-cookie lookup.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use super::{parse_duration, ConfigError};
use crate::auth::remote::DEFAULT_JWKS_REFRESH;
use crate::auth::session::{SessionCookie, DEFAULT_COOKIE_PREFIX};
use crate::auth::{AuthConfig, Authenticator};
use crate::pg::sessions::{self, Lookup};

pub const DEFAULT_AUTH: &str = "jwt";

#[derive(Debug, Args, Clone)]
pub struct AuthArgs {
    /// Authentication methods, comma-separated: `jwt` (Bearer header, cookie or query token) and/or
    /// `better-auth` (the app's Better Auth session cookie, checked against its session table).
    #[arg(long, env = "PGSSE_AUTH", value_delimiter = ',', default_value = DEFAULT_AUTH)]
    pub auth: Vec<String>,
    /// HMAC secret for HS256/HS384/HS512 tokens.
    #[arg(long, env = "PGSSE_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// PEM public key file (RSA, EC P-256/P-384 or Ed25519); repeat or comma-separate for several.
    #[arg(long, env = "PGSSE_JWT_PUBLIC_KEY_FILE", value_delimiter = ',')]
    pub jwt_public_key_file: Vec<PathBuf>,
    /// JWK set file; the key is chosen by the token's `kid`.
    #[arg(long, env = "PGSSE_JWKS_FILE")]
    pub jwks_file: Option<PathBuf>,
    /// Allowed JWT algorithms, comma-separated (default: all that fit the configured keys).
    #[arg(long, env = "PGSSE_JWT_ALGORITHMS", value_delimiter = ',')]
    pub jwt_algorithms: Vec<String>,
    /// Required `iss` claim.
    #[arg(long, env = "PGSSE_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Required `aud` claim.
    #[arg(long, env = "PGSSE_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// Claim that holds the user id.
    #[arg(long, env = "PGSSE_USER_CLAIM", default_value = super::DEFAULT_USER_CLAIM)]
    pub user_claim: String,
    /// Also read the token from this cookie.
    #[arg(long, env = "PGSSE_TOKEN_COOKIE")]
    pub token_cookie: Option<String>,
    /// Query parameter that may carry the token (EventSource cannot set headers); empty disables.
    #[arg(long, env = "PGSSE_TOKEN_QUERY_PARAM", default_value = super::DEFAULT_TOKEN_QUERY_PARAM)]
    pub token_query_param: String,

    /// JWK set URL, e.g. https://app.example.com/api/auth/jwks (Better Auth's JWT plugin);
    /// fetched at start, refreshed, and refetched early for an unknown `kid`.
    #[arg(long, env = "PGSSE_JWKS_URL")]
    pub jwks_url: Option<String>,
    /// How often --jwks-url is refetched.
    #[arg(long, env = "PGSSE_JWKS_REFRESH", default_value = "10m")]
    pub jwks_refresh: String,

    /// The app's Better Auth secret (also BETTER_AUTH_SECRET); comma-separate to accept old ones
    /// during a rotation, newest first.
    #[arg(long, env = "PGSSE_BETTER_AUTH_SECRET", value_delimiter = ',', hide_env_values = true)]
    pub better_auth_secret: Vec<String>,
    /// Cookie name prefix: the cookie is `<prefix>.session_token` (or `__Secure-<prefix>.session_token`).
    #[arg(long, env = "PGSSE_BETTER_AUTH_COOKIE_PREFIX", default_value = DEFAULT_COOKIE_PREFIX)]
    pub better_auth_cookie_prefix: String,
    /// The app's session table (schema-qualified if needed).
    #[arg(long, env = "PGSSE_SESSION_TABLE", default_value = sessions::DEFAULT_SESSION_TABLE)]
    pub session_table: String,
    /// Its column holding the session token.
    #[arg(long, env = "PGSSE_SESSION_TOKEN_COLUMN", default_value = sessions::DEFAULT_TOKEN_COLUMN)]
    pub session_token_column: String,
    /// Its column holding the user id.
    #[arg(long, env = "PGSSE_SESSION_USER_COLUMN", default_value = sessions::DEFAULT_USER_COLUMN)]
    pub session_user_column: String,
    /// Its column holding the expiry.
    #[arg(long, env = "PGSSE_SESSION_EXPIRES_COLUMN", default_value = sessions::DEFAULT_EXPIRES_COLUMN)]
    pub session_expires_column: String,
    /// Instead of the table columns: a query taking the token as $1 and returning the user id
    /// (text) and optionally the expiry (timestamptz) of a live session.
    #[arg(long, env = "PGSSE_SESSION_QUERY")]
    pub session_query: Option<String>,
    /// How long a found session is trusted without asking the database again.
    #[arg(long, env = "PGSSE_SESSION_CACHE_TTL", default_value = "10s")]
    pub session_cache_ttl: String,
    /// Most sessions kept in that cache.
    #[arg(long, env = "PGSSE_SESSION_CACHE_SIZE", default_value_t = sessions::DEFAULT_CACHE_SIZE)]
    pub session_cache_size: usize,
}

/// Session-cookie authentication, ready to use once a pool exists.
#[derive(Clone)]
pub struct SessionSetup {
    pub cookie: Arc<SessionCookie>,
    pub lookup: Lookup,
    pub cache_ttl: Duration,
    pub cache_size: usize,
}

/// What `AuthArgs::build` yields.
pub struct AuthSetup {
    pub jwt: Option<Arc<Authenticator>>,
    pub sessions: Option<SessionSetup>,
}

impl AuthArgs {
    /// Checks every authentication flag; problems go to `errs`.
    pub(super) fn build(&self, errs: &mut Vec<ConfigError>) -> Option<AuthSetup> {
        let before = errs.len();
        let methods: Vec<&str> = self.auth.iter().map(|m| m.trim()).filter(|m| !m.is_empty()).collect();
        for m in &methods {
            if !matches!(*m, "jwt" | "better-auth") {
                errs.push(ConfigError::new("--auth", format!("unknown method {m:?}; expected jwt and/or better-auth")));
            }
        }
        if methods.is_empty() {
            errs.push(ConfigError::new("--auth", "at least one method is needed: jwt and/or better-auth"));
        }
        let jwks_refresh = match parse_duration(&self.jwks_refresh) {
            Some(d) if d >= Duration::from_secs(1) => d,
            _ => {
                errs.push(ConfigError::new(
                    "--jwks-refresh",
                    format!("{:?} is not a duration like 10m", self.jwks_refresh),
                ));
                DEFAULT_JWKS_REFRESH
            }
        };
        let jwt = if methods.contains(&"jwt") {
            let cfg = AuthConfig {
                jwt_secret: self.jwt_secret.clone(),
                jwt_public_key_files: self.jwt_public_key_file.clone(),
                jwks_file: self.jwks_file.clone(),
                algorithms: self
                    .jwt_algorithms
                    .iter()
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect(),
                issuer: self.jwt_issuer.clone(),
                audience: self.jwt_audience.clone(),
                user_claim: self.user_claim.clone(),
                token_cookie: self.token_cookie.clone().filter(|c| !c.is_empty()),
                token_query_param: Some(self.token_query_param.clone()).filter(|p| !p.is_empty()),
                jwks_url: self.jwks_url.clone().filter(|u| !u.is_empty()),
                jwks_refresh,
            };
            Authenticator::new(&cfg).map_err(|e| errs.extend(e)).ok().map(Arc::new)
        } else {
            None
        };
        let sessions = if methods.contains(&"better-auth") { self.sessions(errs) } else { None };
        (errs.len() == before).then_some(AuthSetup { jwt, sessions })
    }

    fn sessions(&self, errs: &mut Vec<ConfigError>) -> Option<SessionSetup> {
        let mut secrets: Vec<String> = self.better_auth_secret.iter().map(|s| s.trim().to_string()).collect();
        if secrets.iter().all(String::is_empty) {
            if let Ok(s) = std::env::var("BETTER_AUTH_SECRET") {
                secrets = vec![s];
            }
        }
        let cookie = SessionCookie::new(&self.better_auth_cookie_prefix, &secrets).map_err(|e| errs.extend(e)).ok();
        let lookup = match self.session_query.as_deref().map(str::trim).filter(|q| !q.is_empty()) {
            Some(q) if !q.contains("$1") => {
                errs.push(ConfigError::new("--session-query", "must use $1 for the session token"));
                None
            }
            Some(q) => Some(Lookup::Query(q.to_string())),
            None => {
                let named = [
                    ("--session-table", &self.session_table),
                    ("--session-token-column", &self.session_token_column),
                    ("--session-user-column", &self.session_user_column),
                    ("--session-expires-column", &self.session_expires_column),
                ];
                let bad: Vec<_> = named.iter().filter(|(_, v)| v.trim().is_empty() || v.contains('\0')).collect();
                for (flag, _) in &bad {
                    errs.push(ConfigError::new(flag, "must be a non-empty name"));
                }
                bad.is_empty().then(|| Lookup::Table {
                    table: self.session_table.clone(),
                    token: self.session_token_column.clone(),
                    user: self.session_user_column.clone(),
                    expires: self.session_expires_column.clone(),
                })
            }
        };
        let cache_ttl = parse_duration(&self.session_cache_ttl).or_else(|| {
            errs.push(ConfigError::new(
                "--session-cache-ttl",
                format!("{:?} is not a duration like 10s (0s disables the cache)", self.session_cache_ttl),
            ));
            None
        });
        Some(SessionSetup {
            cookie: Arc::new(cookie?),
            lookup: lookup?,
            cache_ttl: cache_ttl?,
            cache_size: self.session_cache_size.max(1),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::Config;

    #[test]
    fn better_auth_alone_needs_no_jwt_key_but_a_secret() {
        let errs =
            Config::from_argv(["--database-url", "postgres://u@h/db", "--auth", "better-auth"]).err().expect("errors");
        if std::env::var_os("BETTER_AUTH_SECRET").is_none() {
            assert_eq!(errs.0.iter().map(|e| e.flag).collect::<Vec<_>>(), ["--better-auth-secret"]);
        }
        let ok = Config::from_argv([
            "--database-url",
            "postgres://u@h/db",
            "--auth",
            "better-auth",
            "--better-auth-secret",
            "s3cret",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(ok.jwt.is_none() && ok.sessions.is_some());
    }

    #[test]
    fn unknown_methods_and_bad_session_query_are_named() {
        let errs = Config::from_argv([
            "--database-url",
            "postgres://u@h/db",
            "--auth",
            "jwt,oauth,better-auth",
            "--jwt-secret",
            "s",
            "--better-auth-secret",
            "b",
            "--session-query",
            "SELECT 1",
        ])
        .err()
        .expect("errors");
        let flags: Vec<_> = errs.0.iter().map(|e| e.flag).collect();
        assert_eq!(flags, ["--auth", "--session-query"]);
    }
}
