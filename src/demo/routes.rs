//! The demo's extra routes: the page, the browser client, and the demo-only write API.
//!
//! | route | what |
//! |---|---|
//! | `GET /` | the demo page (`page.html`), `GET /demo/page.js` its script |
//! | `GET /client.js`, `GET /transports.js` | `clients/js/pgsse-client.js` as the page imports it, and the module it imports |
//! | `GET\|POST /demo/api/login?user=alice` | sets the `pgsse_token` cookie (HttpOnly, SameSite=Lax) |
//! | `POST /demo/api/logout` | clears it (shows how the client degrades on 401) |
//! | `GET /demo/api/me` | the signed-in user, the users to pick from, the stream path |
//! | `GET /demo/api/notifications` | the user's rows, newest first |
//! | `GET /demo/api/unread-count` | `{"count": n}` |
//! | `POST /demo/api/notifications` | create: `{"title", "message"?, "type"?, "to"?}` |
//! | `POST /demo/api/notifications/{id}/read` | mark one read |
//! | `POST /demo/api/notifications/{id}/title` | edit the title: `{"title"}` (an `updated` event) |
//! | `DELETE /demo/api/notifications/{id}` | delete one |
//! | `POST /demo/api/notifications/read-all`, `.../delete-read` | one statement for many rows |
//!
//! The API acts for the user of the token in the cookie (or `Authorization: Bearer`): an HS256
//! token the demo minted with its own secret, as the stream accepts it. These routes exist only in
//! `pgsse demo`.

use std::pin::Pin;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderValue, AUTHORIZATION, CACHE_CONTROL, COOKIE as COOKIE_HEADER, SET_COOKIE};
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;
use serde_json::json;

use super::{COOKIE, TOKEN_TTL, USERS};
use crate::http::{error, full, json, Body, ExtraRoutes};
use crate::pg::{demo as db, PgError};

const PAGE_HTML: &str = include_str!("page.html");
const PAGE_JS: &str = include_str!("page.js");
const CLIENT_JS: &str = include_str!("../../clients/js/pgsse-client.js");
const TRANSPORTS_JS: &str = include_str!("../../clients/js/transports.js");
/// Largest request body accepted by the API.
const MAX_BODY: usize = 16 * 1024;

pub(super) struct DemoRoutes {
    pool: deadpool_postgres::Pool,
    secret: String,
    stream_path: String,
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
}

#[derive(Deserialize)]
struct NewNotification {
    title: String,
    #[serde(default)]
    message: String,
    #[serde(default, rename = "type")]
    kind: Option<String>,
    /// Recipient; the signed-in user when absent.
    #[serde(default)]
    to: Option<String>,
}

#[derive(Deserialize)]
struct NewTitle {
    title: String,
}

impl DemoRoutes {
    pub(super) fn new(pool: deadpool_postgres::Pool, secret: String, stream_path: String) -> Self {
        crate::auth::install_crypto();
        Self { pool, secret, stream_path }
    }

    /// The signed-in user: the `sub` of a valid, unexpired token in the cookie or the header.
    fn user(&self, headers: &HeaderMap) -> Option<String> {
        let key = jsonwebtoken::DecodingKey::from_secret(self.secret.as_bytes());
        let validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        let bearer = headers
            .get_all(AUTHORIZATION)
            .iter()
            .filter_map(|v| v.to_str().ok()?.strip_prefix("Bearer ").map(str::trim));
        let cookies = headers.get_all(COOKIE_HEADER).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| {
            v.split(';').filter_map(|kv| kv.trim().strip_prefix(COOKIE)?.strip_prefix('=')).collect::<Vec<_>>()
        });
        bearer
            .chain(cookies)
            .find_map(|t| jsonwebtoken::decode::<Claims>(t, &key, &validation).ok())
            .map(|d| d.claims.sub)
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path().to_string();
        let get = matches!(*req.method(), Method::GET | Method::HEAD);
        match path.as_str() {
            "/" if get => static_file("text/html; charset=utf-8", PAGE_HTML),
            "/demo/page.js" if get => static_file("text/javascript; charset=utf-8", PAGE_JS),
            "/client.js" if get => static_file("text/javascript; charset=utf-8", CLIENT_JS),
            "/transports.js" if get => static_file("text/javascript; charset=utf-8", TRANSPORTS_JS),
            "/favicon.ico" => full(StatusCode::NO_CONTENT, "image/x-icon", Bytes::new()),
            "/" | "/demo/page.js" | "/client.js" | "/transports.js" => {
                error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "GET")
            }
            "/demo/api/login" => self.login(&req),
            "/demo/api/logout" => with_cookie(json(StatusCode::OK, json!({"user": null})), ""),
            "/demo/api/me" => self.me(&req),
            p if p.starts_with("/demo/api/") => match self.user(req.headers()) {
                // The cookie is per browser: another tab may have switched users under this one.
                Some(user) if req.headers().get("x-demo-user").is_some_and(|u| u.as_bytes() != user.as_bytes()) => {
                    let msg =
                        format!("this browser is now signed in as {user} (another tab switched): reload the page");
                    error(StatusCode::CONFLICT, "user_switched", &msg)
                }
                Some(user) => {
                    self.api(req, &path["/demo/api/".len()..], &user).await.unwrap_or_else(ApiError::response)
                }
                None => {
                    error(StatusCode::UNAUTHORIZED, "not_signed_in", "pick a user first (/demo/api/login?user=alice)")
                }
            },
            _ => error(StatusCode::NOT_FOUND, "not_found", "no such endpoint"),
        }
    }

    fn login(&self, req: &Request<Incoming>) -> Response<Body> {
        let user = req.uri().query().unwrap_or("").split('&').find_map(|kv| kv.strip_prefix("user="));
        let Some(user) = user.filter(|u| valid_user(u)) else {
            return error(StatusCode::BAD_REQUEST, "bad_user", "?user= must be a short name like alice");
        };
        match crate::auth::mint_hs256(user, self.secret.as_bytes(), TOKEN_TTL, None, None) {
            Ok(token) => with_cookie(json(StatusCode::OK, json!({"user": user})), &token),
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "mint_failed", &e.to_string()),
        }
    }

    fn me(&self, req: &Request<Incoming>) -> Response<Body> {
        let user = self.user(req.headers());
        json(StatusCode::OK, json!({"user": user, "users": USERS, "streamPath": &self.stream_path}))
    }

    /// The authenticated API.
    async fn api(&self, req: Request<Incoming>, route: &str, user: &str) -> Result<Response<Body>, ApiError> {
        let method = req.method().clone();
        let parts: Vec<&str> = route.split('/').collect();
        let ok = |done: bool| {
            if done {
                json(StatusCode::OK, json!({"ok": true}))
            } else {
                error(StatusCode::NOT_FOUND, "not_found", "no such notification of yours")
            }
        };
        Ok(match (&method, parts.as_slice()) {
            (&Method::GET, ["notifications"]) => raw_json(db::list(&self.pool, user).await.map_err(db_error)?),
            (&Method::GET, ["unread-count"]) => {
                json(StatusCode::OK, json!({"count": db::unread_count(&self.pool, user).await.map_err(db_error)?}))
            }
            (&Method::POST, ["notifications"]) => {
                let n: NewNotification = body(req).await?;
                let to = n.to.filter(|t| !t.is_empty()).unwrap_or_else(|| user.to_string());
                let kind = n.kind.filter(|k| !k.is_empty()).unwrap_or_else(|| "info".into());
                let title = n.title.trim();
                if !valid_user(&to)
                    || kind.len() > 32
                    || title.is_empty()
                    || title.len() > 200
                    || n.message.len() > 2000
                {
                    return Err(ApiError::bad("bad_notification", "title (1-200), message, type, to"));
                }
                let row = db::create(&self.pool, &to, &kind, title, &n.message).await.map_err(db_error)?;
                let mut r = raw_json(row);
                *r.status_mut() = StatusCode::CREATED;
                r
            }
            (&Method::POST, ["notifications", "read-all"]) => {
                json(StatusCode::OK, json!({"updated": db::mark_all_read(&self.pool, user).await.map_err(db_error)?}))
            }
            (&Method::POST, ["notifications", "delete-read"]) => {
                json(StatusCode::OK, json!({"deleted": db::delete_read(&self.pool, user).await.map_err(db_error)?}))
            }
            (&Method::POST, ["notifications", id, "read"]) => {
                ok(db::mark_read(&self.pool, user, parse_id(id)?).await.map_err(db_error)?)
            }
            (&Method::POST, ["notifications", id, "title"]) => {
                let id = parse_id(id)?;
                let t: NewTitle = body(req).await?;
                let title = t.title.trim();
                if title.is_empty() || title.len() > 200 {
                    return Err(ApiError::bad("bad_title", "title must have 1 to 200 characters"));
                }
                ok(db::edit_title(&self.pool, user, id, title).await.map_err(db_error)?)
            }
            (&Method::DELETE, ["notifications", id]) => {
                ok(db::delete(&self.pool, user, parse_id(id)?).await.map_err(db_error)?)
            }
            _ => error(StatusCode::NOT_FOUND, "not_found", "no such endpoint (see src/demo/routes.rs)"),
        })
    }
}

impl ExtraRoutes for DemoRoutes {
    fn matches(&self, _method: &Method, path: &str) -> bool {
        matches!(path, "/" | "/client.js" | "/transports.js" | "/favicon.ico") || path.starts_with("/demo/")
    }

    fn call(&self, req: Request<Incoming>) -> Pin<Box<dyn std::future::Future<Output = Response<Bytes>> + Send + '_>> {
        Box::pin(async move { self.handle(req).await.map(Body::into_document) })
    }
}

/// Short, plain user names only (they end up in cookies, SQL parameters and the page).
fn valid_user(u: &str) -> bool {
    (1..=64).contains(&u.len()) && u.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.@-".contains(&b))
}

/// An API failure, turned into `{"error", "message"}` with its status.
struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn bad(code: &'static str, message: impl Into<String>) -> Self {
        Self { status: StatusCode::BAD_REQUEST, code, message: message.into() }
    }

    fn response(self) -> Response<Body> {
        error(self.status, self.code, &self.message)
    }
}

fn parse_id(s: &str) -> Result<i64, ApiError> {
    s.parse().map_err(|_| ApiError::bad("bad_id", "notification ids are numbers"))
}

async fn body<T: for<'de> Deserialize<'de>>(req: Request<Incoming>) -> Result<T, ApiError> {
    let bytes = http_body_util::Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|_| ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            code: "bad_body",
            message: "request body too large or cut off".into(),
        })?
        .to_bytes();
    serde_json::from_slice(&bytes).map_err(|e| ApiError::bad("bad_json", e.to_string()))
}

fn db_error(e: PgError) -> ApiError {
    tracing::warn!(error = %e, "demo API: database error");
    ApiError { status: StatusCode::INTERNAL_SERVER_ERROR, code: "database", message: e.to_string() }
}

fn raw_json(text: String) -> Response<Body> {
    let mut r = full(StatusCode::OK, "application/json", text);
    r.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn static_file(content_type: &'static str, text: &'static str) -> Response<Body> {
    let mut r = full(StatusCode::OK, content_type, Bytes::from_static(text.as_bytes()));
    r.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r.headers_mut().insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    r
}

/// Sets (or, with an empty token, clears) the token cookie.
fn with_cookie(mut r: Response<Body>, token: &str) -> Response<Body> {
    let max_age = if token.is_empty() { 0 } else { TOKEN_TTL.as_secs() };
    let cookie = format!("{COOKIE}={token}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age}");
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(SET_COOKIE, v);
    }
    r
}
