//! The SQL of `pgsse demo`: the demo `notifications` table and the reads and writes of its page.
//!
//! Everything here acts on one user's rows (`user_id::text = $1`), and rows travel as the same
//! JSON the triggers put in events (`to_jsonb(row)`), so the page can treat both alike.

use std::time::Duration;

use super::PgError;

/// The demo table, shaped like a typical app's (`INSERT ... (user_id, title)` is enough).
pub const CREATE_TABLE_SQL: &str = "
CREATE TABLE IF NOT EXISTS notifications (
    id serial PRIMARY KEY,
    user_id text NOT NULL,
    type text NOT NULL DEFAULT 'info',
    title text NOT NULL DEFAULT '',
    message text NOT NULL DEFAULT '',
    read boolean NOT NULL DEFAULT false,
    metadata jsonb,
    created_at timestamptz NOT NULL DEFAULT now()
)";

/// Columns the demo page reads and writes; an existing table must have them all.
const REQUIRED_COLUMNS: [&str; 6] = ["id", "user_id", "type", "title", "message", "read"];

/// How many rows the page lists (newest first).
pub const LIST_LIMIT: i64 = 200;

/// What `setup` did, for the start banner.
#[derive(Debug, Clone)]
pub struct Setup {
    /// `false`: a `notifications` table already existed and is used as it is.
    pub table_created: bool,
    /// `SHOW server_version`.
    pub server_version: String,
}

/// Connects once and returns the server version: used to wait for a starting server.
pub async fn ping(cfg: &tokio_postgres::Config) -> Result<String, PgError> {
    let client = super::connect(cfg).await?;
    let row = client.query_one("SHOW server_version", &[]).await?;
    Ok(row.try_get(0)?)
}

/// Installs (or updates) the pgsse SQL, creates the demo table unless one exists, and watches it.
pub async fn setup(cfg: &tokio_postgres::Config) -> Result<Setup, PgError> {
    // Installing again (a kept --state-dir, a reused --database-url) is a page of "already
    // exists, skipping" notices; the demo's terminal is for its banner.
    let mut quiet = cfg.clone();
    let options = quiet.get_options().map(|o| format!("{o} ")).unwrap_or_default();
    quiet.options(format!("{options}-c client_min_messages=warning"));
    super::install::apply(&quiet, super::install::INSTALL_SQL).await?;
    let client = super::connect(cfg).await?;
    let server_version: String = client.query_one("SHOW server_version", &[]).await?.try_get(0)?;
    let exists: bool = client.query_one("SELECT to_regclass('notifications') IS NOT NULL", &[]).await?.try_get(0)?;
    if exists {
        let rows = client
            .query(
                "SELECT a.attname::text FROM pg_attribute a \
                  WHERE a.attrelid = 'notifications'::regclass AND a.attnum > 0 AND NOT a.attisdropped",
                &[],
            )
            .await?;
        let have: Vec<String> = rows.iter().map(|r| r.try_get(0)).collect::<Result<_, _>>()?;
        let missing: Vec<&str> = REQUIRED_COLUMNS.into_iter().filter(|c| !have.iter().any(|h| h == c)).collect();
        if !missing.is_empty() {
            return Err(PgError::Protocol(format!(
                "a table \"notifications\" already exists without the demo's columns ({}); its columns are: {}. \
                 Run the demo against another database",
                missing.join(", "),
                have.join(", ")
            )));
        }
    } else {
        client.batch_execute(CREATE_TABLE_SQL).await?;
    }
    client.batch_execute("SELECT pgsse.watch('notifications', 'user_id')").await?;
    Ok(Setup { table_created: !exists, server_version })
}

/// Runs `f` with a pooled connection, bounded in time so a stuck database cannot hang the page.
async fn with_client<T, F, Fut>(pool: &deadpool_postgres::Pool, f: F) -> Result<T, PgError>
where
    F: FnOnce(deadpool_postgres::Object) -> Fut,
    Fut: std::future::Future<Output = Result<T, PgError>>,
{
    const TIMEOUT: Duration = Duration::from_secs(10);
    let work = async {
        let client = pool.get().await?;
        f(client).await
    };
    tokio::time::timeout(TIMEOUT, work).await.map_err(|_| PgError::Timeout(TIMEOUT))?
}

/// The user's rows, newest first, as a JSON array (text).
pub async fn list(pool: &deadpool_postgres::Pool, user: &str) -> Result<String, PgError> {
    with_client(pool, |c| async move {
        let row = c
            .query_one(
                "SELECT COALESCE(jsonb_agg(to_jsonb(n) ORDER BY n.id DESC), '[]'::jsonb)::text \
                   FROM (SELECT * FROM notifications WHERE user_id::text = $1 ORDER BY id DESC LIMIT $2) n",
                &[&user, &LIST_LIMIT],
            )
            .await?;
        Ok(row.try_get(0)?)
    })
    .await
}

/// How many of the user's rows are unread.
pub async fn unread_count(pool: &deadpool_postgres::Pool, user: &str) -> Result<i64, PgError> {
    with_client(pool, |c| async move {
        let row =
            c.query_one("SELECT count(*) FROM notifications WHERE user_id::text = $1 AND NOT read", &[&user]).await?;
        Ok(row.try_get(0)?)
    })
    .await
}

/// A new notification for `user`. Returns the row as JSON (text).
pub async fn create(
    pool: &deadpool_postgres::Pool,
    user: &str,
    kind: &str,
    title: &str,
    message: &str,
) -> Result<String, PgError> {
    with_client(pool, |c| async move {
        let row = c
            .query_one(
                "INSERT INTO notifications AS n (user_id, type, title, message, metadata) \
                 VALUES ($1, $2, $3, $4, jsonb_build_object('source', 'pgsse demo')) \
                 RETURNING to_jsonb(n)::text",
                &[&user, &kind, &title, &message],
            )
            .await?;
        Ok(row.try_get(0)?)
    })
    .await
}

/// Runs one statement on the user's rows; returns how many it touched.
async fn touch(pool: &deadpool_postgres::Pool, sql: &'static str, user: &str, id: Option<i64>) -> Result<u64, PgError> {
    with_client(pool, |c| async move {
        Ok(match id {
            Some(id) => c.execute(sql, &[&user, &id]).await?,
            None => c.execute(sql, &[&user]).await?,
        })
    })
    .await
}

/// Marks one row read; `false` if the user has no such row (or it was read already).
pub async fn mark_read(pool: &deadpool_postgres::Pool, user: &str, id: i64) -> Result<bool, PgError> {
    let sql = "UPDATE notifications SET read = true WHERE user_id::text = $1 AND id = $2::bigint AND NOT read";
    Ok(touch(pool, sql, user, Some(id)).await? > 0)
}

/// Marks every unread row of the user read (one statement, so one NOTIFY); returns how many.
pub async fn mark_all_read(pool: &deadpool_postgres::Pool, user: &str) -> Result<u64, PgError> {
    touch(pool, "UPDATE notifications SET read = true WHERE user_id::text = $1 AND NOT read", user, None).await
}

/// Deletes one row; `false` if the user has no such row.
pub async fn delete(pool: &deadpool_postgres::Pool, user: &str, id: i64) -> Result<bool, PgError> {
    let sql = "DELETE FROM notifications WHERE user_id::text = $1 AND id = $2::bigint";
    Ok(touch(pool, sql, user, Some(id)).await? > 0)
}

/// Deletes every read row of the user; returns how many.
pub async fn delete_read(pool: &deadpool_postgres::Pool, user: &str) -> Result<u64, PgError> {
    touch(pool, "DELETE FROM notifications WHERE user_id::text = $1 AND read", user, None).await
}

/// Changes one row's title (an `updated` event); `false` if the user has no such row.
pub async fn edit_title(pool: &deadpool_postgres::Pool, user: &str, id: i64, title: &str) -> Result<bool, PgError> {
    with_client(pool, |c| async move {
        let n = c
            .execute(
                "UPDATE notifications SET title = $3 WHERE user_id::text = $1 AND id = $2::bigint",
                &[&user, &id, &title],
            )
            .await?;
        Ok(n > 0)
    })
    .await
}
