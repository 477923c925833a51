//! The front door: takes a request, picks the method it uses (session cookie or JWT) and returns
//! the principal or a refusal. A new authentication method is added here.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use hyper::header::AUTHORIZATION;
use hyper::HeaderMap;

use super::error::{AuthError, Refusal};
use super::identity::Identity;
use super::session::{session_key, Found, SessionCookie};
use super::verifier::JwtVerifier;

/// Where a signed session cookie's session is looked up (the app's session table, in `pg`).
pub trait SessionLookup: Send + Sync {
    /// The session `token` names. An error means the store could not answer, not that the
    /// session is unknown.
    fn find<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Found, Box<dyn std::error::Error + Send + Sync>>>;
}

/// Session-cookie authentication: the cookie's signature check, and the store its sessions are in.
#[derive(Clone)]
pub struct SessionAuth {
    pub cookie: Arc<SessionCookie>,
    pub store: Arc<dyn SessionLookup>,
}

/// Every configured authentication method, in front of the stream endpoint.
#[derive(Clone, Default)]
pub struct Authenticator {
    jwt: Option<Arc<JwtVerifier>>,
    sessions: Option<SessionAuth>,
}

impl Authenticator {
    pub fn new(jwt: Option<Arc<JwtVerifier>>, sessions: Option<SessionAuth>) -> Self {
        Self { jwt, sessions }
    }

    /// The JWT verifier, when JWTs are accepted.
    pub fn jwt(&self) -> Option<&Arc<JwtVerifier>> {
        self.jwt.as_ref()
    }

    /// Picks the method the request uses: a Bearer header means JWT; otherwise the session cookie
    /// when cookie authentication is on and the cookie is present; otherwise a JWT from the token
    /// cookie or query parameter. `query` is the raw URI query without `?`.
    pub async fn authenticate(&self, headers: &HeaderMap, query: Option<&str>) -> Result<Identity, Refusal> {
        let bearer = self.jwt.is_some() && headers.get(AUTHORIZATION).is_some();
        if let Some(sessions) = self.sessions.as_ref().filter(|_| !bearer) {
            if let Some(token) = sessions.cookie.token(headers) {
                let token = token?;
                return match sessions.store.find(&token).await.map_err(Refusal::Unavailable)? {
                    Found::Live(s) => Ok(Identity {
                        user_id: s.user_id,
                        expires_at: s.expires_at,
                        session: Some(session_key(&token)),
                    }),
                    Found::Expired(exp) => Err(AuthError::SessionExpired { exp }.into()),
                    Found::Missing => Err(AuthError::SessionNotFound.into()),
                };
            }
        }
        let missing = |jwt| match &self.sessions {
            Some(s) => AuthError::MissingSessionCookie { cookie: s.cookie.name().into(), jwt },
            None => AuthError::MissingToken,
        };
        match &self.jwt {
            Some(jwt) => match jwt.authenticate_fresh(headers, query).await {
                Err(AuthError::MissingToken) => Err(missing(true).into()),
                r => Ok(r?),
            },
            None => Err(missing(false).into()),
        }
    }
}
