//! `pgsse check`: a read-only health check of a deployment, each finding ok / warning / error with its fix.

use super::schema::{self, Capture, INSTALL_COMMAND, SCHEMA_VERSION};
use super::PgError;

mod notify;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    Warning,
    Error,
}

/// One line of the report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Finding {
    pub check: String,
    pub status: Level,
    pub message: String,
    /// One line: what to run or change. `None` when there is nothing to do.
    pub fix: Option<String>,
}

#[derive(Debug, Default, serde::Serialize)]
pub struct Report {
    pub checks: Vec<Finding>,
}

impl Report {
    fn add(&mut self, check: impl Into<String>, status: Level, message: impl Into<String>, fix: Option<String>) {
        self.checks.push(Finding { check: check.into(), status, message: message.into(), fix });
    }

    fn ok(&mut self, check: impl Into<String>, message: impl Into<String>) {
        self.add(check, Level::Ok, message, None);
    }

    pub fn count(&self, level: Level) -> usize {
        self.checks.iter().filter(|f| f.status == level).count()
    }

    pub fn text(&self) -> String {
        let mut out = String::new();
        for f in &self.checks {
            let tag = match f.status {
                Level::Ok => "ok",
                Level::Warning => "WARNING",
                Level::Error => "ERROR",
            };
            out.push_str(&format!("{tag:<8}{}: {}\n", f.check, f.message));
            if let Some(fix) = &f.fix {
                out.push_str(&format!("        fix: {fix}\n"));
            }
        }
        out.push_str(&format!("{} errors, {} warnings\n", self.count(Level::Error), self.count(Level::Warning)));
        out
    }

    pub fn json(&self) -> String {
        serde_json::json!({
            "ok": self.count(Level::Error) == 0,
            "errors": self.count(Level::Error),
            "warnings": self.count(Level::Warning),
            "checks": self.checks,
        })
        .to_string()
    }
}

/// Runs every check on `client`, read-only, checking the grants of `gateway_role` (default: the
/// connecting role).
pub async fn run(client: &tokio_postgres::Client, gateway_role: Option<&str>) -> Result<Report, PgError> {
    // Read-only by construction, and never stuck behind a lock in production.
    client
        .batch_execute(
            "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY; SET statement_timeout = '10s'; \
             SET lock_timeout = '2s'; SET application_name = 'pgsse check'",
        )
        .await?;
    let mut report = Report::default();
    let role = match gateway_role {
        Some(r) => r.to_string(),
        None => client.query_one("SELECT current_user::text", &[]).await?.try_get(0)?,
    };
    let installed = match schema::installed(client).await {
        Err(PgError::Db(e)) if e.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) => {
            // Without its grants this role can read none of pgsse's tables: say which it lacks.
            report.add("schema", Level::Error, format!("cannot read pgsse.meta: {}", super::describe(&e)), None);
            grants(client, &role, gateway_role.is_none(), &mut report).await?;
            database(client, &role, &mut report).await?;
            return Ok(report);
        }
        other => other?,
    };
    let Some(inst) = installed else {
        report.add(
            "schema",
            Level::Error,
            "pgsse's SQL is not installed in this database (no schema pgsse)",
            Some(format!("{INSTALL_COMMAND} --database-url <the DBA's URL>")),
        );
        return Ok(report);
    };
    match inst.servable() {
        Ok(()) if inst.version == Some(SCHEMA_VERSION) => report.ok("schema", format!("pgsse SQL {}", inst.describe())),
        Ok(()) => report.add(
            "schema",
            Level::Warning,
            format!("pgsse SQL {}, this binary's is version {SCHEMA_VERSION}", inst.describe()),
            Some("run the pgsse binary of the installed SQL's version (this one serves it, but is older)".into()),
        ),
        Err(why) => report.add("schema", Level::Error, why, Some(INSTALL_COMMAND.into())),
    }
    watched(client, &mut report).await?;
    for t in schema::stray_triggers(client).await? {
        report.add(format!("table {}", t.table), Level::Error, t.problem(), Some(t.fix()));
    }
    grants(client, &role, gateway_role.is_none(), &mut report).await?;
    notify::check(client, inst.notify_mode.as_deref().unwrap_or("commit"), &mut report).await?;
    database(client, &role, &mut report).await?;
    Ok(report)
}

async fn watched(client: &tokio_postgres::Client, report: &mut Report) -> Result<(), PgError> {
    let tables = schema::watched(client).await?;
    if tables.is_empty() {
        report.add(
            "watched tables",
            Level::Warning,
            "no table is watched: nothing produces events but pgsse.publish()",
            Some("as the table's owner: SELECT pgsse.watch('notifications', 'user_id')".into()),
        );
    }
    for w in tables {
        let check = format!("table {}", w.table);
        let missing = w.missing_columns();
        if let Some((what, col)) = missing.first() {
            report.add(
                check,
                Level::Error,
                format!(
                    "watched column {col:?} ({what}) no longer exists (renamed or dropped?): every write to {} fails",
                    w.table
                ),
                Some(format!(
                    "as its owner, watch it with the new name: {}",
                    w.watch_call().replace(col, "<new name>")
                )),
            );
        } else if w.options.is_none() {
            report.add(
                check,
                Level::Warning,
                format!("cannot tell which columns it was watched with ({})", w.function),
                Some(format!("as its owner: {}", w.watch_call())),
            );
        } else if w.triggers < w.expected_triggers() || w.disabled > 0 {
            report.add(
                check,
                Level::Error,
                format!(
                    "{} of pgsse's {} triggers present, {} disabled: changes are missed",
                    w.triggers,
                    w.expected_triggers(),
                    w.disabled
                ),
                Some(format!("as its owner: {}", w.watch_call())),
            );
        } else if w.capture == Capture::Generic {
            report.add(
                check,
                Level::Warning,
                "uses the generic pgsse.capture() of an earlier version (more database CPU per statement)",
                Some(format!("as its owner ({}): {}", w.owner, w.watch_call())),
            );
        } else if w.earlier_insert_triggers() {
            report.add(
                check,
                Level::Warning,
                "keeps the INSERT triggers of an earlier version (more database CPU per INSERT)",
                Some(format!("as its owner ({}): {}", w.owner, w.watch_call())),
            );
        } else {
            let o = w.options.as_ref();
            report.ok(
                check,
                format!(
                    "user_column {:?}, id_column {:?}, read_column {}, {} excluded, {}",
                    o.map_or("", |o| o.user_column.as_str()),
                    o.map_or("", |o| o.id_column.as_str()),
                    o.and_then(|o| o.read_column.as_deref()).map_or("NULL".into(), |r| format!("{r:?}")),
                    o.map_or(0, |o| o.exclude_columns.len()),
                    w.function
                ),
            );
        }
    }
    Ok(())
}

/// What the gateway's role needs, as (object, privilege, kind of object).
const NEEDED: &[(&str, &str, &str)] = &[
    ("pgsse", "USAGE", "schema"),
    ("pgsse.events", "SELECT", "table"),
    ("pgsse.events", "DELETE", "table"),
    ("pgsse.meta", "SELECT", "table"),
    ("pgsse.meta", "UPDATE", "table"),
    ("pgsse.secret", "SELECT", "table"),
];

/// What it must not have: each lets it do more than a gateway does.
const EXCESS: &[(&str, &str, &str)] = &[
    ("pgsse.events", "INSERT", "table"),
    ("pgsse.events", "UPDATE", "table"),
    ("pgsse.events", "TRUNCATE", "table"),
    ("pgsse.secret", "UPDATE", "table"),
    ("pgsse.publish(text, jsonb, text)", "EXECUTE", "function"),
    ("pgsse.set_notify_mode(text)", "EXECUTE", "function"),
    ("pgsse._generate_capture(regclass, name, name, name, text[])", "EXECUTE", "function"),
];

/// Whether `role` holds `privilege` on the object; `None` when there is no such object. Objects
/// are found through the catalog by name, so a checking role without USAGE on the schema can
/// still ask.
async fn has(
    client: &tokio_postgres::Client,
    role: &str,
    (obj, privilege, kind): (&str, &str, &str),
) -> Result<Option<bool>, PgError> {
    let sql = match kind {
        "schema" => "SELECT has_schema_privilege($1, n.oid, $3) FROM pg_namespace AS n WHERE n.nspname = $2",
        "table" => {
            "SELECT has_table_privilege($1, c.oid, $3) FROM pg_class AS c \
                    JOIN pg_namespace AS n ON n.oid = c.relnamespace WHERE n.nspname || '.' || c.relname = $2"
        }
        _ => {
            "SELECT has_function_privilege($1, p.oid, $3) FROM pg_proc AS p \
              JOIN pg_namespace AS n ON n.oid = p.pronamespace \
              WHERE n.nspname || '.' || p.proname || '(' || oidvectortypes(p.proargtypes) || ')' = $2"
        }
    };
    let row = client.query_opt(sql, &[&role, &obj, &privilege]).await?;
    Ok(row.map(|r| r.try_get(0)).transpose()?)
}

async fn grants(
    client: &tokio_postgres::Client,
    role: &str,
    is_self: bool,
    report: &mut Report,
) -> Result<(), PgError> {
    let row = client
        .query_opt(
            "SELECT r.rolsuper, pg_has_role($1, c.relowner, 'USAGE') FROM pg_roles AS r, pg_class AS c \
               JOIN pg_namespace AS n ON n.oid = c.relnamespace \
              WHERE r.rolname = $1 AND n.nspname = 'pgsse' AND c.relname = 'events'",
            &[&role],
        )
        .await?;
    let Some(row) = row else {
        report.add(
            "grants",
            Level::Error,
            format!("no role {role:?}"),
            Some("pass the gateway's role: --gateway-role NAME".into()),
        );
        return Ok(());
    };
    let (superuser, owner): (bool, bool) = (row.try_get(0)?, row.try_get(1)?);
    let mut missing = Vec::new();
    for &need in NEEDED {
        if has(client, role, need).await? == Some(false) {
            missing.push(need);
        }
    }
    let q = |r: &str| format!("\"{}\"", r.replace('"', "\"\""));
    if missing.is_empty() {
        report.ok("grants", format!("role {role:?} has every grant the gateway needs"));
    } else {
        let fix = missing
            .iter()
            .map(|(obj, p, f)| match *f {
                "schema" => format!("GRANT {p} ON SCHEMA {obj} TO {};", q(role)),
                _ => format!("GRANT {p} ON {obj} TO {};", q(role)),
            })
            .collect::<Vec<_>>()
            .join(" ");
        let list = missing.iter().map(|(o, p, _)| format!("{p} on {o}")).collect::<Vec<_>>().join(", ");
        report.add("grants", Level::Error, format!("role {role:?} lacks {list}"), Some(fix));
    }
    let mut excess = Vec::new();
    if superuser {
        excess.push("is a superuser".to_string());
    } else if owner {
        excess.push("owns pgsse's objects (it is, or is a member of, the role that installed them)".to_string());
    } else {
        for &extra in EXCESS {
            if has(client, role, extra).await? == Some(true) {
                excess.push(format!("{} on {}", extra.1, extra.0));
            }
        }
    }
    if !excess.is_empty() {
        let fix = if is_self && (superuser || owner) {
            "run `pgsse check` as the gateway's role, or name it with --gateway-role".to_string()
        } else {
            format!(
                "run the gateway as a role with only the grants in README's \"The SQL API\" (REVOKE the rest from {})",
                q(role)
            )
        };
        report.add(
            "grants",
            Level::Warning,
            format!("role {role:?} has more than the gateway needs: {}", excess.join(", ")),
            Some(fix),
        );
    }
    let retention: Vec<_> = missing
        .iter()
        .filter(|(o, p, _)| matches!((*o, *p), ("pgsse.events", _) | ("pgsse.meta", "UPDATE") | ("pgsse", _)))
        .collect();
    if !retention.is_empty() {
        report.add(
            "retention",
            Level::Error,
            "retention cannot prune pgsse.events: the log grows without bound",
            Some("grant what the \"grants\" line lists".into()),
        );
        return Ok(());
    }
    let age: Option<f64> = client
        .query_one("SELECT extract(epoch FROM now() - min(created_at))::float8 FROM pgsse.events", &[])
        .await?
        .try_get(0)?;
    match age {
        Some(s) if s > 3.0 * 86_400.0 => report.add(
            "retention",
            Level::Warning,
            format!("it can run, yet the oldest event is {:.1} days old", s / 86_400.0),
            Some(
                "is a gateway running? Its /readyz shows retention's last error; --retention sets how long events stay"
                    .into(),
            ),
        ),
        _ => report.ok("retention", "the gateway's role can prune pgsse.events and record how far"),
    }
    Ok(())
}

/// PostgreSQL takes this lock (an object lock on database 0 of pg_database) in every notifying
/// transaction's commit and holds it through the WAL flush.
async fn database(client: &tokio_postgres::Client, role: &str, report: &mut Report) -> Result<(), PgError> {
    let row = client
        .query_one(
            "SELECT current_database()::text, has_database_privilege('public', current_database(), 'CONNECT'), \
                    current_setting('synchronous_commit'), pg_notification_queue_usage(), \
                    ARRAY(SELECT coalesce(r.rolname::text, 'every role') || ': ' || s.cfg \
                            FROM pg_db_role_setting AS d CROSS JOIN unnest(d.setconfig) AS s(cfg) \
                            LEFT JOIN pg_roles AS r ON r.oid = d.setrole \
                           WHERE d.setdatabase IN (0, (SELECT oid FROM pg_database WHERE datname = current_database())) \
                             AND s.cfg IN ('synchronous_commit=off', 'synchronous_commit=local'))",
            &[],
        )
        .await?;
    let db: String = row.try_get(0)?;
    let public_connect: bool = row.try_get(1)?;
    let sync: String = row.try_get(2)?;
    let usage: f64 = row.try_get(3)?;
    let off: Vec<String> = row.try_get(4)?;
    let q = |r: &str| format!("\"{}\"", r.replace('"', "\"\""));
    if public_connect {
        report.add(
            "connect",
            Level::Warning,
            format!(
                "CONNECT on database {db:?} is open to PUBLIC: any role of the cluster may connect, LISTEN and NOTIFY"
            ),
            Some(format!(
                "REVOKE CONNECT ON DATABASE {} FROM PUBLIC; GRANT CONNECT ON DATABASE {} TO {}, <the app's role>;",
                q(&db),
                q(&db),
                q(role)
            )),
        );
    } else {
        report.ok("connect", format!("CONNECT on database {db:?} is not open to PUBLIC"));
    }
    if sync == "off" || !off.is_empty() {
        let which =
            if off.is_empty() { format!("synchronous_commit = {sync} for this session") } else { off.join("; ") };
        report.add(
            "synchronous_commit",
            Level::Warning,
            format!("{which}: after a crash, a browser may have been shown an event whose transaction was lost"),
            Some(
                "ALTER ROLE <role> RESET synchronous_commit (or accept it: README, \"What the guarantee assumes\")"
                    .into(),
            ),
        );
    } else {
        report.ok("synchronous_commit", format!("{sync}: what a browser is shown is committed"));
    }
    let pct = usage * 100.0;
    let queue = format!("the NOTIFY queue is {pct:.1}% full");
    match usage {
        u if u > 0.5 => report.add("notify queue", Level::Error, format!("{queue}: some listener is not reading; at 100% every NOTIFYing commit fails"), Some("find the idle LISTENer: SELECT pid, application_name, state, xact_start FROM pg_stat_activity ORDER BY xact_start".into())),
        u if u > 0.1 => report.add("notify queue", Level::Warning, format!("{queue}: a listener is falling behind"), Some("look for a long transaction or a stuck LISTENer in pg_stat_activity".into())),
        _ => report.ok("notify queue", queue),
    }
    Ok(())
}
