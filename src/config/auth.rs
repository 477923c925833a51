//! Authentication flags: which methods are on (`--auth`), JWT keys, and session-cookie lookup.

use std::sync::Arc;
use std::time::Duration;

use super::{parse_duration, ConfigError};
use crate::auth::session::SessionCookie;
use crate::auth::{JwtConfig, JwtVerifier, Setting, SetupError};
use crate::cli::{duration_text, AuthArgs};
use crate::defaults::{
    DEFAULT_COOKIE_PREFIX, DEFAULT_EXPIRES_COLUMN, DEFAULT_JWKS_REFRESH, DEFAULT_SESSION_CACHE_SIZE,
    DEFAULT_SESSION_CACHE_TTL, DEFAULT_SESSION_TABLE, DEFAULT_TOKEN_COLUMN, DEFAULT_TOKEN_QUERY_PARAM,
    DEFAULT_USER_CLAIM, DEFAULT_USER_COLUMN,
};
use crate::pg::sessions::Lookup;

/// Session-cookie authentication, ready to use once a pool exists.
#[derive(Clone)]
pub struct SessionSetup {
    pub cookie: Arc<SessionCookie>,
    pub lookup: Lookup,
    pub cache_ttl: Duration,
    pub cache_size: usize,
}

/// Every authentication method `--auth` turned on, checked and ready.
#[derive(Clone, Default)]
pub struct AuthSetup {
    /// JWT verification, when `--auth` includes `jwt`.
    pub jwt: Option<Arc<JwtVerifier>>,
    /// Session-cookie authentication, when `--auth` includes `better-auth`.
    pub sessions: Option<SessionSetup>,
}

/// The flag that sets an authentication setting.
fn flag(setting: Setting) -> &'static str {
    match setting {
        Setting::JwtSecret => "--jwt-secret",
        Setting::PublicKeyFile => "--jwt-public-key-file",
        Setting::JwksFile => "--jwks-file",
        Setting::JwksUrl => "--jwks-url",
        Setting::Algorithms => "--jwt-algorithms",
        Setting::Issuer => "--jwt-issuer",
        Setting::Audience => "--jwt-audience",
        Setting::UserClaim => "--user-claim",
        Setting::TokenCookie => "--token-cookie",
        Setting::TokenQueryParam => "--token-query-param",
        Setting::CookiePrefix => "--better-auth-cookie-prefix",
        Setting::SessionSecret => "--better-auth-secret",
    }
}

fn report(errs: &mut Vec<ConfigError>, problems: Vec<SetupError>) {
    errs.extend(problems.into_iter().map(|e| ConfigError::new(flag(e.setting), e.message)));
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
            let cfg = JwtConfig {
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
            JwtVerifier::new(&cfg).map_err(|e| report(errs, e)).ok().map(Arc::new)
        } else {
            None
        };
        let sessions = if methods.contains(&"better-auth") { self.sessions(errs) } else { None };
        self.without_effect(methods.contains(&"jwt"), methods.contains(&"better-auth"), errs);
        (errs.len() == before).then_some(AuthSetup { jwt, sessions })
    }

    /// Flags given for a method `--auth` did not turn on, or overridden by another flag: ignoring
    /// them silently would hide the mistake until every request fails, so each is an error naming
    /// the fix. Flags with defaults count as given when they differ from the default.
    fn without_effect(&self, jwt: bool, sessions: bool, errs: &mut Vec<ConfigError>) {
        let mut refuse = |given: &[(&'static str, bool)], why: &str| {
            let named = given.iter().filter(|(_, set)| *set);
            errs.extend(named.map(|(flag, _)| ConfigError::new(flag, why)));
        };
        let jwks_url = self.jwks_url.as_deref().is_some_and(|u| !u.is_empty());
        let jwks_refresh = self.jwks_refresh != duration_text(DEFAULT_JWKS_REFRESH);
        if !jwt {
            refuse(
                &[
                    ("--jwt-secret", self.jwt_secret.is_some()),
                    ("--jwt-public-key-file", !self.jwt_public_key_file.is_empty()),
                    ("--jwks-file", self.jwks_file.is_some()),
                    ("--jwks-url", jwks_url),
                    ("--jwks-refresh", jwks_refresh),
                    ("--jwt-algorithms", !self.jwt_algorithms.is_empty()),
                    ("--jwt-issuer", self.jwt_issuer.is_some()),
                    ("--jwt-audience", self.jwt_audience.is_some()),
                    ("--user-claim", self.user_claim != DEFAULT_USER_CLAIM),
                    ("--token-cookie", self.token_cookie.is_some()),
                    ("--token-query-param", self.token_query_param != DEFAULT_TOKEN_QUERY_PARAM),
                ],
                "has no effect: --auth does not include jwt (add it, e.g. --auth jwt,better-auth, or remove this flag)",
            );
        } else if !jwks_url {
            refuse(
                &[("--jwks-refresh", jwks_refresh)],
                "has no effect without --jwks-url (set it or remove this flag)",
            );
        }
        let table = [
            ("--session-table", self.session_table != DEFAULT_SESSION_TABLE),
            ("--session-token-column", self.session_token_column != DEFAULT_TOKEN_COLUMN),
            ("--session-user-column", self.session_user_column != DEFAULT_USER_COLUMN),
            ("--session-expires-column", self.session_expires_column != DEFAULT_EXPIRES_COLUMN),
        ];
        if !sessions {
            let mut given = vec![
                ("--better-auth-secret", self.better_auth_secret.iter().any(|s| !s.trim().is_empty())),
                ("--better-auth-cookie-prefix", self.better_auth_cookie_prefix != DEFAULT_COOKIE_PREFIX),
                ("--session-query", self.session_query.is_some()),
                ("--session-cache-ttl", self.session_cache_ttl != duration_text(DEFAULT_SESSION_CACHE_TTL)),
                ("--session-cache-size", self.session_cache_size != DEFAULT_SESSION_CACHE_SIZE),
            ];
            given.extend(table);
            refuse(
                &given,
                "has no effect: --auth does not include better-auth (add it, e.g. --auth jwt,better-auth, or remove this flag)",
            );
        } else if self.session_query.as_deref().is_some_and(|q| !q.trim().is_empty()) {
            refuse(&table, "has no effect with --session-query, which names the table itself: remove one of the two");
        }
    }

    fn sessions(&self, errs: &mut Vec<ConfigError>) -> Option<SessionSetup> {
        let mut secrets: Vec<String> = self.better_auth_secret.iter().map(|s| s.trim().to_string()).collect();
        if secrets.iter().all(String::is_empty) {
            if let Ok(s) = std::env::var("BETTER_AUTH_SECRET") {
                secrets = vec![s];
            }
        }
        let cookie = SessionCookie::new(&self.better_auth_cookie_prefix, &secrets).map_err(|e| report(errs, e)).ok();
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
        if self.session_cache_size == 0 {
            let msg = "must be at least 1 (--session-cache-ttl 0s turns the cache off)";
            errs.push(ConfigError::new("--session-cache-size", msg));
        } else if cache_ttl == Some(Duration::ZERO) && self.session_cache_size != DEFAULT_SESSION_CACHE_SIZE {
            let msg = "has no effect: --session-cache-ttl 0s turns the cache off (remove one of the two)";
            errs.push(ConfigError::new("--session-cache-size", msg));
        }
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
        assert!(ok.auth.jwt.is_none() && ok.auth.sessions.is_some());
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

    /// The flags refused for `args` (after a database URL), and the first message.
    fn refused(args: &[&str]) -> (Vec<&'static str>, String) {
        let argv = ["--database-url", "postgres://u@h/db"].iter().chain(args).copied();
        let errs = Config::from_argv(argv).err().unwrap_or_else(|| panic!("{args:?} is refused"));
        (errs.0.iter().map(|e| e.flag).collect(), errs.0[0].message.clone())
    }

    #[test]
    fn flags_of_a_method_that_is_off_are_refused_with_the_fix() {
        let (flags, message) =
            refused(&["--jwt-secret", "s", "--better-auth-secret", "b", "--session-table", "sessions"]);
        assert_eq!(flags, ["--better-auth-secret", "--session-table"]);
        assert!(message.contains("--auth jwt,better-auth"), "{message}");

        let better_auth = ["--auth", "better-auth", "--better-auth-secret", "b"];
        let (flags, _) = refused(&[&better_auth[..], &["--jwt-secret", "s", "--token-query-param", "t"]].concat());
        assert_eq!(flags, ["--jwt-secret", "--token-query-param"]);
        let query = ["--session-query", "SELECT user_id FROM s WHERE token = $1", "--session-user-column", "uid"];
        assert_eq!(refused(&[&better_auth[..], &query].concat()).0, ["--session-user-column"]);
        let cache_off = ["--session-cache-ttl", "0s", "--session-cache-size", "50"];
        assert_eq!(refused(&[&better_auth[..], &cache_off].concat()).0, ["--session-cache-size"]);
        assert_eq!(refused(&["--jwt-secret", "s", "--jwks-refresh", "1m"]).0, ["--jwks-refresh"]);
    }
}
