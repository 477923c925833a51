//! `pgsse sql status`: what pgsse SQL a database holds, and what `sql install --apply` would change.

use std::fmt::Write as _;

use super::schema::{self, Capture, Installed, StrayTrigger, Watched, SCHEMA_VERSION};
use super::PgError;

/// Objects earlier versions created that this version's script drops (kind, `to_regclass` /
/// `to_regprocedure` name).
const OBSOLETE: &[(&str, &str)] = &[
    ("function", "pgsse._sign(text)"),
    ("function", "pgsse._capture_sql(text, text, text, text, text[], text)"),
    ("index", "pgsse.events_created_at_idx"),
    ("index", "pgsse.events_tx_idx"),
];

/// Everything `status` reports.
#[derive(Debug)]
pub struct Status {
    pub database: String,
    pub installed: Option<Installed>,
    pub watched: Vec<Watched>,
    /// Objects of earlier versions still present.
    pub obsolete: Vec<String>,
    /// Triggers calling a capture function in a shape `watch()` never creates.
    pub stray: Vec<StrayTrigger>,
}

pub async fn read(client: &tokio_postgres::Client) -> Result<Status, PgError> {
    let database: String = client.query_one("SELECT current_database()::text", &[]).await?.try_get(0)?;
    let installed = schema::installed(client).await?;
    let mut obsolete = Vec::new();
    let mut watched = Vec::new();
    let mut stray = Vec::new();
    if installed.is_some() {
        watched = schema::watched(client).await?;
        stray = schema::stray_triggers(client).await?;
        for (kind, name) in OBSOLETE {
            let f = if *kind == "index" { "to_regclass" } else { "to_regprocedure" };
            let row = client.query_one(&format!("SELECT {f}($1) IS NOT NULL"), &[name]).await?;
            if row.try_get(0)? {
                obsolete.push(format!("{kind} {name}"));
            }
        }
    }
    Ok(Status { database, installed, watched, obsolete, stray })
}

impl Status {
    /// What `pgsse sql install --apply` would change, one line each; empty when nothing.
    pub fn upgrade_plan(&self) -> Vec<String> {
        let Some(inst) = &self.installed else {
            return vec![format!("install pgsse's SQL version {SCHEMA_VERSION} (schema pgsse), in relay mode")];
        };
        let mut plan = Vec::new();
        let v = inst.version.unwrap_or(1);
        if v > SCHEMA_VERSION {
            return vec![format!(
                "nothing: the installed SQL (version {v}) is newer than this binary's ({SCHEMA_VERSION}), and \
                 `sql install --apply` refuses to downgrade it"
            )];
        }
        if v < SCHEMA_VERSION {
            plan.push(format!(
                "upgrade the SQL from {} to version {SCHEMA_VERSION}, in one transaction (writers to watched tables wait \
                 for it, typically well under a second; nothing is lost)",
                inst.describe()
            ));
            if v < 5 {
                plan.push(
                    "rebuild the primary key of pgsse.events on (tx, id), which replaces the index on tx (the log \
                     stays locked meanwhile: under a second per million rows)"
                        .into(),
                );
            }
            if !self.watched.is_empty() {
                let names = self.watched.iter().map(|w| w.table.as_str()).collect::<Vec<_>>().join(", ");
                plan.push(format!(
                    "regenerate the trigger function of every watched table with the columns it was watched with: {names}"
                ));
            }
            if inst.notify_mode.is_none() {
                plan.push(
                    "keep commit mode (writers NOTIFY at commit, as before); switch later with SELECT \
                     pgsse.set_notify_mode('relay')"
                        .into(),
                );
            }
        }
        for w in self.watched.iter().filter(|w| w.capture == Capture::Generic) {
            plan.push(match w.options {
                Some(_) => format!("move {} from the generic pgsse.capture() to its own generated function", w.table),
                None => format!("fail: cannot tell which columns {} was watched with", w.table),
            });
        }
        for w in self.watched.iter().filter(|w| w.options.is_some() && w.earlier_insert_triggers()) {
            plan.push(format!(
                "re-create the INSERT triggers of {} in this version's shape (cheaper INSERTs) if the installing \
                 role owns it; else its owner ({}) runs watch() again afterwards",
                w.table, w.owner
            ));
        }
        for w in self.watched.iter().filter(|w| w.options.is_none() && w.capture == Capture::Generated) {
            plan.push(format!(
                "fail: cannot tell which columns {} was watched with (the comment on {} was changed): run SELECT \
                 pgsse.unwatch('{}') first, then watch() it after the upgrade",
                w.table, w.function, w.table
            ));
        }
        if !self.obsolete.is_empty() {
            plan.push(format!("drop what earlier versions left: {}", self.obsolete.join(", ")));
        }
        plan
    }

    /// The report `pgsse sql status` prints.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "database:       {}", self.database);
        let _ = writeln!(out, "this binary:    pgsse SQL version {SCHEMA_VERSION}");
        let Some(inst) = &self.installed else {
            let _ = writeln!(out, "installed:      nothing (no schema pgsse)");
            return self.render_plan(out);
        };
        let _ = writeln!(out, "installed:      pgsse SQL {}", inst.describe());
        let served = match inst.servable() {
            Ok(()) => "yes".to_string(),
            Err(why) => format!("no: {why}"),
        };
        let _ = writeln!(out, "gateway serves: {served}");
        let mode = inst.notify_mode.as_deref().unwrap_or("commit (the only mode before version 2)");
        let _ = writeln!(out, "notify mode:    {mode}");
        let _ = writeln!(out, "watched tables: {}", self.watched.len());
        for w in &self.watched {
            let opts = match &w.options {
                Some(o) => format!(
                    "user_column={} id_column={} read_column={} exclude_columns={{{}}}",
                    o.user_column,
                    o.id_column,
                    o.read_column.as_deref().unwrap_or("NULL"),
                    o.exclude_columns.join(",")
                ),
                None => "options unknown".into(),
            };
            let how = match w.capture {
                Capture::Generated => "generated",
                Capture::Generic => "generic, from an earlier version",
            };
            let _ = writeln!(out, "  {}  {opts}  owner={}  function={} ({how})", w.table, w.owner, w.function);
            for (what, col) in w.missing_columns() {
                let _ = writeln!(out, "    ! column {col:?} ({what}) no longer exists: writes to {} fail", w.table);
            }
            if w.triggers < w.expected_triggers() || w.disabled > 0 {
                let _ = writeln!(
                    out,
                    "    ! {} of {} triggers present, {} disabled",
                    w.triggers,
                    w.expected_triggers(),
                    w.disabled
                );
            }
            if w.earlier_insert_triggers() {
                let _ = writeln!(out, "    ! the INSERT triggers of an earlier version");
            }
        }
        for t in &self.stray {
            let _ = writeln!(out, "  ! {}: {}", t.table, t.problem());
            let _ = writeln!(out, "    fix: {}", t.fix());
        }
        self.render_plan(out)
    }

    fn render_plan(&self, mut out: String) -> String {
        let plan = self.upgrade_plan();
        if plan.is_empty() {
            let _ = writeln!(out, "sql install:    nothing to change (the installed SQL is this binary's)");
        } else {
            let _ = writeln!(out, "sql install --apply would:");
            for line in plan {
                let _ = writeln!(out, "  - {line}");
            }
        }
        out
    }
}
