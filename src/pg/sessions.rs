//! Session lookups for cookie authentication: the app's session table (or any query), cached briefly.
//!
//! A reconnect storm (every tab of every user after a deploy) must not become a query storm, so
//! positive answers are cached for a short TTL in a bounded map. Revocation (a NOTIFY from the
//! `pgsse.watch_sessions` trigger) evicts the entry at once, so the cache never outlives it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use futures_util::future::BoxFuture;

use super::PgError;
use crate::auth::session::{session_key, Found, Session, SessionKey};
use crate::auth::SessionLookup;
use crate::clock::{unix_now, unix_secs};

/// How to find a session by its token.
#[derive(Debug, Clone)]
pub enum Lookup {
    /// Better Auth's shape: a table with token, user id and expiry columns (names as the app has them).
    Table { table: String, token: String, user: String, expires: String },
    /// Any query taking the token as `$1` and returning the user id (text) and optionally the
    /// expiry (timestamptz) of a live session.
    Query(String),
}

impl Lookup {
    fn sql(&self) -> String {
        match self {
            Lookup::Table { table, token, user, expires } => format!(
                "SELECT {}::text, {}::timestamptz FROM {} WHERE {} = $1",
                ident(user),
                ident(expires),
                qualified(table),
                ident(token)
            ),
            Lookup::Query(q) => q.clone(),
        }
    }
}

/// A double-quoted identifier, exactly as given (so `userId` stays camelCase).
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `schema.table` or `table`, each part quoted.
fn qualified(name: &str) -> String {
    name.split('.').map(ident).collect::<Vec<_>>().join(".")
}

struct Cached {
    session: Session,
    at: Instant,
}

pub struct SessionStore {
    pool: super::Pool,
    sql: String,
    ttl: Duration,
    capacity: usize,
    cache: Mutex<HashMap<SessionKey, Cached>>,
}

impl SessionStore {
    pub fn new(pool: super::Pool, lookup: &Lookup, ttl: Duration, capacity: usize) -> Self {
        Self { pool, sql: lookup.sql(), ttl, capacity, cache: Mutex::new(HashMap::new()) }
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<SessionKey, Cached>> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Finds the session of `token`, from the cache when fresh.
    pub async fn find(&self, token: &str) -> Result<Found, PgError> {
        let key = session_key(token);
        let now = unix_now();
        if let Some(c) = self.cache().get(&key) {
            let live = c.session.expires_at.is_none_or(|e| e > now);
            if c.at.elapsed() < self.ttl && live {
                return Ok(Found::Live(c.session.clone()));
            }
        }
        let row = self.pool.run(async |c| Ok(c.query_opt(&self.sql, &[&token]).await?)).await?;
        let Some(row) = row else {
            self.forget(&key);
            return Ok(Found::Missing);
        };
        let user: Option<String> = row.try_get(0)?;
        let Some(user) = user.filter(|u| !u.is_empty()) else { return Ok(Found::Missing) };
        let expires_at = if row.len() > 1 {
            let t: Option<SystemTime> = row.try_get(1)?;
            t.map(unix_secs)
        } else {
            None
        };
        if let Some(exp) = expires_at.filter(|e| *e <= now) {
            self.forget(&key);
            return Ok(Found::Expired(exp));
        }
        let session = Session { user_id: user.into(), expires_at };
        let mut cache = self.cache();
        if cache.len() >= self.capacity {
            let ttl = self.ttl;
            cache.retain(|_, c| c.at.elapsed() < ttl);
            if cache.len() >= self.capacity {
                // Still full of fresh entries: start over rather than track recency per hit.
                cache.clear();
            }
        }
        cache.insert(key, Cached { session: session.clone(), at: Instant::now() });
        Ok(Found::Live(session))
    }

    /// Drops a session from the cache (it was revoked, deleted or changed).
    pub fn forget(&self, key: &SessionKey) {
        self.cache().remove(key);
    }
}

impl SessionLookup for SessionStore {
    fn find<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Found, Box<dyn std::error::Error + Send + Sync>>> {
        Box::pin(async move { Ok(SessionStore::find(self, token).await?) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_lookup_quotes_names_exactly() {
        let l = Lookup::Table {
            table: "auth.session".into(),
            token: "token".into(),
            user: "userId".into(),
            expires: "expiresAt".into(),
        };
        assert_eq!(
            l.sql(),
            r#"SELECT "userId"::text, "expiresAt"::timestamptz FROM "auth"."session" WHERE "token" = $1"#
        );
        let evil = Lookup::Table {
            table: "s\"; DROP TABLE x; --".into(),
            token: "t".into(),
            user: "u".into(),
            expires: "e".into(),
        };
        assert!(evil.sql().contains(r#""s""; DROP TABLE x; --""#));
    }
}
