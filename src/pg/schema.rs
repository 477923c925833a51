//! What pgsse SQL a database holds: its version, whether this gateway can serve it, the watched tables.

use super::{within, PgError};

/// The version of `sql/install.sql` embedded in this binary (`pgsse.meta.version` once installed).
pub const SCHEMA_VERSION: i32 = 5;
/// The oldest installed SQL this gateway serves. Versions before 2 recorded none.
pub const OLDEST_SERVED: i32 = 2;

/// The command that installs or upgrades the SQL in place.
pub const INSTALL_COMMAND: &str = "pgsse sql install --apply";

/// What `pgsse.meta` says about the installed SQL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    /// `None`: installed by a version before 2, which recorded none.
    pub version: Option<i32>,
    /// The oldest gateway version that can serve it (`None` before version 2).
    pub gateway_min: Option<i32>,
    /// `commit` or `relay` (`None` before version 2).
    pub notify_mode: Option<String>,
}

impl Installed {
    /// The version as people say it: versions before 2 recorded none.
    pub fn describe(&self) -> String {
        match self.version {
            Some(v) => format!("version {v}"),
            None => "version 1 (installed before versions were recorded)".into(),
        }
    }

    /// Whether a gateway of this binary can serve it; the error says what to run.
    pub fn servable(&self) -> Result<(), String> {
        let v = self.version.unwrap_or(1);
        if v < OLDEST_SERVED {
            return Err(format!(
                "this database holds pgsse's SQL {}, and this gateway needs version {OLDEST_SERVED} or later: run \
                 `{INSTALL_COMMAND}` to upgrade it in place (one transaction; `pgsse sql status` shows what it changes)",
                self.describe()
            ));
        }
        let min = self.gateway_min.unwrap_or(v);
        if min > SCHEMA_VERSION {
            return Err(format!(
                "this database holds pgsse's SQL version {v}, which needs a gateway of version {min} or later; this \
                 gateway is version {SCHEMA_VERSION}: run a newer pgsse binary"
            ));
        }
        Ok(())
    }
}

/// Reads the installed SQL's version; `None` when pgsse is not installed in this database.
pub async fn installed(client: &tokio_postgres::Client) -> Result<Option<Installed>, PgError> {
    let row = client.query_one("SELECT to_regclass('pgsse.meta') IS NOT NULL", &[]).await?;
    if !row.try_get::<_, bool>(0)? {
        return Ok(None);
    }
    // As JSON, so that columns of later versions are simply absent from an earlier install.
    let row = client
        .query_opt(
            "SELECT (j->>'version')::int, (j->>'gateway_min_version')::int, j->>'notify_mode' \
             FROM (SELECT to_jsonb(m) AS j FROM pgsse.meta AS m) AS x",
            &[],
        )
        .await?;
    let Some(row) = row else {
        return Err(PgError::Schema(format!("pgsse.meta has no row: run `{INSTALL_COMMAND}` again")));
    };
    Ok(Some(Installed { version: row.try_get(0)?, gateway_min: row.try_get(1)?, notify_mode: row.try_get(2)? }))
}

/// The installed SQL, or why this gateway cannot serve it (an error naming the command to run).
pub async fn ensure_servable(client: &tokio_postgres::Client) -> Result<Installed, PgError> {
    let Some(inst) = installed(client).await? else {
        return Err(PgError::Schema(format!(
            "pgsse's SQL is not installed in this database: run `{INSTALL_COMMAND}` (as the DBA)"
        )));
    };
    inst.servable().map_err(PgError::Schema)?;
    Ok(inst)
}

/// At start: when the database answers, refuse a schema this gateway cannot serve, before
/// anything runs a statement against it. A database that does not answer yet is the source's
/// business (it retries); so is one that changes later (it checks again on every connect).
pub async fn preflight(cfg: &tokio_postgres::Config, timeout: std::time::Duration) -> Result<(), PgError> {
    let Ok(Ok(client)) = tokio::time::timeout(timeout, super::connect(cfg)).await else {
        return Ok(());
    };
    let inst = within("setup", timeout, ensure_servable(&client)).await?;
    if inst.version > Some(SCHEMA_VERSION) {
        tracing::info!(
            installed = inst.version,
            gateway = SCHEMA_VERSION,
            "the installed pgsse SQL is newer than this gateway and declares it compatible"
        );
    }
    Ok(())
}

/// The options a table was watched with (`pgsse.watch`'s arguments).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct Options {
    pub user_column: String,
    pub id_column: String,
    pub read_column: Option<String>,
    pub exclude_columns: Vec<String>,
}

/// How a watched table's triggers capture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capture {
    /// Its own generated `pgsse.capture_<oid>()`.
    Generated,
    /// The generic `pgsse.capture()` of earlier versions.
    Generic,
}

/// One table with pgsse's triggers.
#[derive(Debug, Clone)]
pub struct Watched {
    pub table: String,
    pub owner: String,
    pub function: String,
    pub capture: Capture,
    /// `None` when nothing says how it was watched (see `install.sql`'s `_rewatch`).
    pub options: Option<Options>,
    /// Whether the options come from `pgsse.watched` (version 2 on) rather than the old places.
    pub recorded: bool,
    /// Of pgsse's triggers (`pgsse_insert`, `pgsse_announce`, `pgsse_update`, `pgsse_delete`):
    /// how many exist, how many are disabled.
    pub triggers: i64,
    pub disabled: i64,
    /// Whether `pgsse_insert` is `FOR EACH ROW` (version 3 on), rather than the statement-level
    /// trigger with a transition table of earlier versions and of the generic function.
    pub row_insert: bool,
    /// Whether `pgsse_announce` has the WHEN clause that skips it while `pgsse.announcing` is 0
    /// (version 4 on).
    pub announce_when: bool,
    /// The table's columns now.
    pub columns: Vec<String>,
}

impl Watched {
    /// How many triggers this table's shape has: four with a row-level `pgsse_insert` (which
    /// needs `pgsse_announce` after each statement), three otherwise.
    pub fn expected_triggers(&self) -> i64 {
        if self.row_insert {
            4
        } else {
            3
        }
    }

    /// A generated function still behind an earlier version's INSERT triggers (a statement-level
    /// `pgsse_insert`, or a `pgsse_announce` that runs on every statement).
    pub fn earlier_insert_triggers(&self) -> bool {
        self.capture == Capture::Generated && !(self.row_insert && self.announce_when)
    }

    /// The named columns that no longer exist, as (argument, column).
    pub fn missing_columns(&self) -> Vec<(&'static str, String)> {
        let Some(o) = &self.options else { return Vec::new() };
        let named = [("user_column", Some(&o.user_column)), ("id_column", Some(&o.id_column))]
            .into_iter()
            .chain([("read_column", o.read_column.as_ref())])
            .filter_map(|(what, c)| c.map(|c| (what, c.clone())))
            .chain(o.exclude_columns.iter().map(|c| ("exclude_columns", c.clone())));
        named.filter(|(_, c)| !self.columns.contains(c)).collect()
    }

    /// The `pgsse.watch(...)` call that watches it again with the same options.
    pub fn watch_call(&self) -> String {
        let q = |s: &str| format!("'{}'", s.replace('\'', "''"));
        let Some(o) = &self.options else { return format!("SELECT pgsse.watch({}, ...)", q(&self.table)) };
        let mut call = format!("SELECT pgsse.watch({}, {}", q(&self.table), q(&o.user_column));
        if o.id_column != "id" {
            call.push_str(&format!(", id_column => {}", q(&o.id_column)));
        }
        match &o.read_column {
            None => call.push_str(", read_column => NULL"),
            Some(r) if r != "read" => call.push_str(&format!(", read_column => {}", q(r))),
            Some(_) => {}
        }
        if !o.exclude_columns.is_empty() {
            let list = o.exclude_columns.iter().map(|c| format!("\"{}\"", c.replace('"', "\\\""))).collect::<Vec<_>>();
            call.push_str(&format!(", exclude_columns => {}", q(&format!("{{{}}}", list.join(",")))));
        }
        call + ")"
    }
}

/// Whether the trigger `t` calls one of pgsse's capture functions (`p` its `pg_proc` row): a
/// table's generated `pgsse.capture_<oid>()` (renamed `_<oid>` when a restore gave its name to
/// another table), or the generic `pgsse.capture()` of earlier versions.
const CALLS_CAPTURE: &str = "p.oid = t.tgfoid AND p.pronamespace = to_regnamespace('pgsse') \
                             AND (p.proname = 'capture' OR p.proname ~ '^capture_[0-9]+(_[0-9]+)?$')";

/// A trigger calling a capture function in a shape `pgsse.watch()` never creates. The functions
/// trust their trigger's shape rather than test it on every row (see `_generate_capture`), so
/// such a trigger logs wrong events: every row it fires for, as created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StrayTrigger {
    pub table: String,
    /// Quoted where SQL needs it.
    pub name: String,
    /// As CREATE TRIGGER says it, e.g. `BEFORE INSERT OR UPDATE FOR EACH ROW`.
    pub shape: String,
}

impl StrayTrigger {
    /// What goes wrong, for `pgsse check` and `pgsse sql status`.
    pub fn problem(&self) -> String {
        let effect = if self.shape.ends_with("ROW") {
            "every row it fires for is logged as created"
        } else {
            "the statements it fires for fail or go unannounced"
        };
        format!(
            "trigger {} calls pgsse's capture function as {}, a shape pgsse.watch() never creates: {effect}",
            self.name, self.shape
        )
    }

    /// The statement that removes it; `watch()` again afterwards if the table should stay watched.
    pub fn fix(&self) -> String {
        format!(
            "as the table's owner: DROP TRIGGER {} ON {} (then SELECT pgsse.watch(...) again if it was pgsse's own)",
            self.name, self.table
        )
    }
}

/// Every stray trigger (see [`StrayTrigger`]).
pub async fn stray_triggers(client: &tokio_postgres::Client) -> Result<Vec<StrayTrigger>, PgError> {
    // pg_trigger.tgtype: 1 row, 2 before, 4 insert, 8 delete, 16 update, 32 truncate, 64 instead.
    let rows = client
        .query(
            &format!(
                "SELECT t.tgrelid::regclass::text, quote_ident(t.tgname), t.tgtype::int \
                   FROM pg_trigger AS t, pg_proc AS p \
                  WHERE {CALLS_CAPTURE} AND t.tgparentid = 0 \
                    AND (t.tgname::text, t.tgtype::int) NOT IN \
                        (('pgsse_insert', 5), ('pgsse_insert', 4), ('pgsse_announce', 4), \
                         ('pgsse_update', 16), ('pgsse_delete', 8)) \
                  ORDER BY 1, 2"
            ),
            &[],
        )
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let tgtype: i32 = row.try_get(2)?;
        out.push(StrayTrigger { table: row.try_get(0)?, name: row.try_get(1)?, shape: trigger_shape(tgtype) });
    }
    Ok(out)
}

/// `pg_trigger.tgtype` as CREATE TRIGGER says it.
fn trigger_shape(tgtype: i32) -> String {
    let timing = match (tgtype & 2 != 0, tgtype & 64 != 0) {
        (true, _) => "BEFORE",
        (false, true) => "INSTEAD OF",
        (false, false) => "AFTER",
    };
    let events = [(4, "INSERT"), (8, "DELETE"), (16, "UPDATE"), (32, "TRUNCATE")]
        .iter()
        .filter(|(bit, _)| tgtype & bit != 0)
        .map(|(_, name)| *name)
        .collect::<Vec<_>>()
        .join(" OR ");
    let level = if tgtype & 1 != 0 { "ROW" } else { "STATEMENT" };
    format!("{timing} {events} FOR EACH {level}")
}

/// Every table with pgsse's row triggers, with the options it was watched with.
pub async fn watched(client: &tokio_postgres::Client) -> Result<Vec<Watched>, PgError> {
    let recorded = client.query_one("SELECT to_regclass('pgsse.watched') IS NOT NULL", &[]).await?.try_get(0)?;
    let from_table = if recorded {
        "(SELECT to_jsonb(w)::text FROM pgsse.watched AS w WHERE w.tbl = t.tgrelid)"
    } else {
        "NULL::text"
    };
    let rows = client
        .query(
            &format!(
                "SELECT t.tgrelid::regclass::text, pg_get_userbyid(c.relowner)::text, \
                        min(t.tgfoid::regprocedure::text), min(p.proname::text), \
                        (array_agg(t.tgargs))[1], min(obj_description(t.tgfoid, 'pg_proc')), \
                        count(*), count(*) FILTER (WHERE t.tgenabled = 'D'), {from_table}, \
                        ARRAY(SELECT a.attname::text FROM pg_attribute AS a \
                               WHERE a.attrelid = t.tgrelid AND a.attnum > 0 AND NOT a.attisdropped), \
                        coalesce(bool_or(t.tgname = 'pgsse_insert' AND (t.tgtype::int & 1) = 1), false), \
                        coalesce(bool_or(t.tgname = 'pgsse_announce' AND t.tgqual IS NOT NULL), false) \
                   FROM pg_trigger AS t, pg_proc AS p, pg_class AS c \
                  WHERE {CALLS_CAPTURE} AND c.oid = t.tgrelid AND t.tgparentid = 0 \
                    AND t.tgname IN ('pgsse_insert', 'pgsse_announce', 'pgsse_update', 'pgsse_delete') \
                  GROUP BY t.tgrelid, c.relowner ORDER BY 1"
            ),
            &[],
        )
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let proname: String = row.try_get(3)?;
        let capture = if proname == "capture" { Capture::Generic } else { Capture::Generated };
        let tgargs: Vec<u8> = row.try_get(4)?;
        let comment: Option<String> = row.try_get(5)?;
        let watched_row: Option<String> = row.try_get(8)?;
        let from_row = watched_row.as_deref().and_then(|j| serde_json::from_str::<Options>(j).ok());
        let options = match (&from_row, capture) {
            (Some(o), _) => Some(o.clone()),
            (None, Capture::Generic) => options_from_trigger_args(&tgargs),
            (None, Capture::Generated) => comment.as_deref().and_then(options_from_comment),
        };
        out.push(Watched {
            table: row.try_get(0)?,
            owner: row.try_get(1)?,
            function: row.try_get(2)?,
            capture,
            options,
            recorded: from_row.is_some(),
            triggers: row.try_get(6)?,
            disabled: row.try_get(7)?,
            columns: row.try_get(9)?,
            row_insert: row.try_get(10)?,
            announce_when: row.try_get(11)?,
        });
    }
    Ok(out)
}

/// The generic `pgsse.capture(user, id, read or '', excluded)`'s trigger arguments.
fn options_from_trigger_args(args: &[u8]) -> Option<Options> {
    let parts: Vec<String> =
        args.split(|b| *b == 0).map(|p| String::from_utf8_lossy(p).into_owned()).take(4).collect::<Vec<_>>();
    let [user, id, read, excluded] = <[String; 4]>::try_from(parts).ok()?;
    Some(Options {
        user_column: user,
        id_column: id,
        read_column: Some(read).filter(|r| !r.is_empty()),
        exclude_columns: parse_text_array(&excluded)?,
    })
}

/// `... generated by pgsse.watch('tbl', 'user', 'id', 'read', '{excluded}')`, each a literal as
/// PostgreSQL's `format('%L')` writes it (the comment versions before 2 kept the options in).
fn options_from_comment(comment: &str) -> Option<Options> {
    let (_, rest) = comment.rsplit_once("generated by pgsse.watch(")?;
    let rest = rest.strip_suffix(')')?;
    let mut lits = Vec::new();
    let mut s = rest;
    for i in 0..5 {
        let (lit, after) = sql_literal(s)?;
        lits.push(lit);
        s = if i < 4 { after.strip_prefix(", ")? } else { after };
    }
    if !s.is_empty() {
        return None;
    }
    let excluded = lits.pop()?.unwrap_or_else(|| "{}".into());
    let read = lits.pop()?;
    let id = lits.pop()??;
    let user = lits.pop()??;
    Some(Options { user_column: user, id_column: id, read_column: read, exclude_columns: parse_text_array(&excluded)? })
}

/// One `NULL`, `'...'` or `E'...'` literal at the start of `s`; returns it and what follows.
fn sql_literal(s: &str) -> Option<(Option<String>, &str)> {
    if let Some(rest) = s.strip_prefix("NULL") {
        return Some((None, rest));
    }
    let (escaped, body) = match s.strip_prefix("E'") {
        Some(b) => (true, b),
        None => (false, s.strip_prefix('\'')?),
    };
    let mut out = String::new();
    let mut chars = body.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            '\'' if chars.peek().map(|(_, n)| *n) == Some('\'') => {
                chars.next();
                out.push('\'');
            }
            '\'' => return Some((Some(out), &body[i + 1..])),
            '\\' if escaped => out.push(chars.next()?.1),
            c => out.push(c),
        }
    }
    None
}

/// A one-dimensional `text[]` in PostgreSQL's output form: `{a,"b c"}`.
fn parse_text_array(s: &str) -> Option<Vec<String>> {
    let inner = s.trim().strip_prefix('{')?.strip_suffix('}')?;
    let mut out = Vec::new();
    let mut chars = inner.chars().peekable();
    while chars.peek().is_some() {
        let mut item = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next()? {
                    '"' => break,
                    '\\' => item.push(chars.next()?),
                    c => item.push(c),
                }
            }
        } else {
            while let Some(c) = chars.peek().copied().filter(|c| *c != ',') {
                item.push(c);
                chars.next();
            }
        }
        out.push(item);
        match chars.next() {
            None | Some(',') => {}
            Some(_) => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_script_installs_this_version() {
        let line = format!("UPDATE pgsse.meta SET version = {SCHEMA_VERSION}, gateway_min_version = ");
        assert!(super::super::install::INSTALL_SQL.contains(&line));
        assert!(
            super::super::install::INSTALL_SQL.contains(&format!("newer than this script (version {SCHEMA_VERSION})"))
        );
    }

    #[test]
    fn options_read_back_from_an_old_comment() {
        let c = "pgsse trigger function of table \"Odd\" (oid 16446), generated by pgsse.watch('\"Odd\"', 'userId', \
                 'id', NULL, '{secret,\"a b\"}')";
        let o = options_from_comment(c).unwrap();
        assert_eq!(o.user_column, "userId");
        assert_eq!(o.read_column, None);
        assert_eq!(o.exclude_columns, vec!["secret".to_string(), "a b".to_string()]);
        let c = "generated by pgsse.watch('t', 'it''s', E'back\\\\slash', 'read', '{}')";
        let o = options_from_comment(c).unwrap();
        assert_eq!((o.user_column.as_str(), o.id_column.as_str()), ("it's", "back\\slash"));
        assert_eq!(o.read_column.as_deref(), Some("read"));
        assert!(options_from_comment("changed by hand").is_none());
    }

    #[test]
    fn options_read_back_from_generic_trigger_arguments() {
        let o = options_from_trigger_args(b"user_id\0id\0\0{}\0").unwrap();
        assert_eq!(
            o,
            Options {
                user_column: "user_id".into(),
                id_column: "id".into(),
                read_column: None,
                exclude_columns: vec![]
            }
        );
    }

    #[test]
    fn versions_served() {
        let at = |v: Option<i32>, min: Option<i32>| Installed { version: v, gateway_min: min, notify_mode: None };
        assert!(at(None, None).servable().unwrap_err().contains(INSTALL_COMMAND));
        assert!(at(Some(SCHEMA_VERSION), Some(SCHEMA_VERSION)).servable().is_ok());
        assert!(at(Some(SCHEMA_VERSION + 1), Some(SCHEMA_VERSION)).servable().is_ok());
        assert!(at(Some(SCHEMA_VERSION + 1), Some(SCHEMA_VERSION + 1)).servable().unwrap_err().contains("newer pgsse"));
    }

    #[test]
    fn trigger_shapes_read_as_create_trigger_says_them() {
        assert_eq!(trigger_shape(5), "AFTER INSERT FOR EACH ROW");
        assert_eq!(trigger_shape(2 | 4 | 16 | 1), "BEFORE INSERT OR UPDATE FOR EACH ROW");
        assert_eq!(trigger_shape(64 | 8 | 1), "INSTEAD OF DELETE FOR EACH ROW");
        assert_eq!(trigger_shape(32), "AFTER TRUNCATE FOR EACH STATEMENT");
    }
}
