//! Upgrading the SQL in place: from the previous release's `install.sql` (tests/fixtures), while
//! writers run, then the gateway on the new binary; and the gateway's schema version check.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::gateway::{self, Gateway};
use common::sql::old_style_watch;
use common::{connect, describe_pg_error, exec, fresh_database, pgsse, wait_until};

/// `sql/install.sql` of the previous release (commit 90d34e1), before versions were recorded.
const PREVIOUS_RELEASE: &str = include_str!("fixtures/install-v1.sql");
const T: Duration = Duration::from_secs(20);

/// The previous release installed, `notifications` watched by its watch() (a generated function)
/// and `legacy` by the generic pgsse.capture() of the release before it.
async fn previous_release(url: &str) {
    exec(url, PREVIOUS_RELEASE).await;
    exec(url, pgsse::pg::demo::CREATE_TABLE_SQL).await;
    exec(url, "SELECT pgsse.watch('notifications', 'user_id', exclude_columns => '{metadata}')").await;
    exec(url, "CREATE TABLE legacy (id int PRIMARY KEY, \"ownerId\" text, body text, seen boolean)").await;
    exec(url, &old_style_watch("legacy", "ownerId", "id", "seen", "{}")).await;
}

/// The title of a `notifications` row event, or the body of a `legacy` one.
fn row_title(e: &common::SseEvent) -> String {
    let d = common::json(e);
    let row = &d["notification"];
    row["title"].as_str().or(row["body"].as_str()).unwrap_or_default().to_string()
}

/// What pgsse's schema consists of, comparable between databases (oids in names written out).
async fn fingerprint(url: &str) -> Vec<String> {
    let c = connect(url).await;
    let rows = c
        .query(
            "SELECT 'function ' || regexp_replace(p.oid::regprocedure::text, '[0-9]+', 'N', 'g') || ' '
                    || md5(regexp_replace(p.prosrc, 'capture_[0-9]+', 'capture_N', 'g')) || ' '
                    || coalesce(p.proacl::text, '') || ' ' || p.prosecdef
                    || ' ' || regexp_replace(coalesce(obj_description(p.oid, 'pg_proc'), ''), '[0-9]+', 'N', 'g')
               FROM pg_proc AS p WHERE p.pronamespace = 'pgsse'::regnamespace
             UNION ALL
             SELECT 'relation ' || c.relname || ' ' || c.relkind::text || ' ' || coalesce(c.relacl::text, '')
                    || ' ' || coalesce(obj_description(c.oid, 'pg_class'), '')
               FROM pg_class AS c WHERE c.relnamespace = 'pgsse'::regnamespace
             UNION ALL
             SELECT 'column ' || a.attrelid::regclass::text || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
                    || ' ' || a.attnotnull || ' ' || coalesce(pg_get_expr(d.adbin, d.adrelid), '')
               FROM pg_attribute AS a JOIN pg_class AS c ON c.oid = a.attrelid
               LEFT JOIN pg_attrdef AS d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
              WHERE c.relnamespace = 'pgsse'::regnamespace AND a.attnum > 0 AND NOT a.attisdropped
             UNION ALL
             SELECT 'trigger ' || t.tgrelid::regclass::text || ' ' || t.tgname || ' '
                    || regexp_replace(t.tgfoid::regprocedure::text, '[0-9]+', 'N', 'g') || ' ' || t.tgenabled::text
               FROM pg_trigger AS t WHERE NOT t.tgisinternal
             UNION ALL
             SELECT 'index ' || i.indexdef FROM pg_indexes AS i WHERE i.schemaname = 'pgsse'
             UNION ALL
             SELECT 'watched ' || w.tbl::text || ' ' || w.user_column || ' ' || w.id_column || ' '
                    || coalesce(w.read_column, 'NULL') || ' ' || w.exclude_columns::text
               FROM pgsse.watched AS w
             ORDER BY 1",
            &[],
        )
        .await
        .expect("fingerprint");
    rows.iter().map(|r| r.get(0)).collect()
}

/// Item 1 and 3: the previous release with writers running; `pgsse sql install --apply` from the
/// new binary while they write; the new gateway after it: every row logged exactly once, every
/// stream gets every event, resumes across a gateway restart, and the schema is exactly a fresh
/// install's (nothing of the old version left behind).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upgrade_from_the_previous_release_while_writers_run() {
    let url = fresh_database();
    previous_release(&url).await;

    // The new gateway cannot serve the previous release's SQL, and says what to run.
    let config = pgsse::Config::from_argv(["--database-url", &url, "--listen", "127.0.0.1:0", "--jwt-secret", "x"])
        .expect("config");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let refused = tokio::time::timeout(T, pgsse::run(config, listener, std::future::pending())).await;
    let err = refused.expect("the gateway gave up at start").expect_err("it cannot serve version 1").to_string();
    assert!(err.contains("pgsse sql install --apply"), "{err}");
    assert!(err.contains("version 1"), "{err}");

    let (ok, status, _) = pgsse(&["sql", "status", "--database-url", &url]).await;
    assert!(ok, "{status}");
    assert!(status.contains("version 1 (installed before versions were recorded)"), "{status}");
    assert!(status.contains("move legacy from the generic pgsse.capture()"), "{status}");
    assert!(status.contains("pgsse._sign(text)"), "{status}");
    assert!(status.contains("exclude_columns={metadata}"), "{status}");

    // Writers: one row per transaction, each user's titles numbered; none may fail.
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (url, stop) = (url.clone(), stop.clone());
            tokio::spawn(async move {
                let c = connect(&url).await;
                let user = format!("w{w}");
                let mut n = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    let t = format!("{user}-{n}");
                    let sql = if n % 2 == 0 {
                        c.execute("INSERT INTO notifications (user_id, title) VALUES ($1, $2)", &[&user, &t]).await
                    } else {
                        let id = (w * 1_000_000 + n) as i32;
                        c.execute("INSERT INTO legacy (id, \"ownerId\", body) VALUES ($1, $2, $3)", &[&id, &user, &t])
                            .await
                    };
                    sql.unwrap_or_else(|e| panic!("writer {user} failed at {t}: {}", describe_pg_error(&e)));
                    n += 1;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                n
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (ok, _, stderr) = pgsse(&["sql", "install", "--apply", "--database-url", &url]).await;
    assert!(ok, "the upgrade failed: {stderr}");
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The gateway on the new binary, streams open, writers still writing.
    let gw = Gateway::start(&url, &[]).await;
    // A browser holding an id of the previous release's gateway (no history in it) refetches.
    let mut old_tab = gw.stream("w0", &[("Last-Event-ID", "7424-1")]).await;
    old_tab.next_named("connected", T).await.expect("connected");
    let reset = old_tab.next_event(T).await.expect("an event after connected");
    assert_eq!(reset.event, "reset", "{reset:?}");
    drop(old_tab);
    let mut streams = Vec::new();
    for w in 0..4 {
        streams.push(gw.stream(&format!("w{w}"), &[]).await);
    }
    for s in &mut streams {
        s.next_named("connected", T).await.expect("connected");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The gateway restarts (its drain closes every stream); each stream comes back with the
    // position of the last event it read.
    let stopping = tokio::spawn(gw.stop());
    let mut got: Vec<Vec<String>> = vec![Vec::new(); 4];
    let mut resumes = Vec::new();
    for (w, s) in streams.iter_mut().enumerate() {
        while let Some(e) = s.next_named("notification", T).await {
            got[w].push(row_title(&e));
        }
        resumes.push(s.last_event_id().expect("a position"));
    }
    stopping.await.expect("stopped");
    let gw = Gateway::start(&url, &[]).await;
    let mut streams = Vec::new();
    for (w, id) in resumes.iter().enumerate() {
        streams.push(gw.stream(&format!("w{w}"), &[("Last-Event-ID", id.as_str())]).await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let mut written = Vec::new();
    for w in writers {
        written.push(w.await.expect("writer"));
    }

    // The log holds each committed row exactly once, from before, during and after the upgrade.
    let c = connect(&url).await;
    for (w, n) in written.iter().enumerate() {
        let rows = c
            .query(
                "SELECT coalesce(data->'notification'->>'title', data->'notification'->>'body') FROM pgsse.events \
                  WHERE user_id = $1 ORDER BY id",
                &[&format!("w{w}")],
            )
            .await
            .unwrap();
        let logged: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        let expected: Vec<String> = (0..*n).map(|i| format!("w{w}-{i}")).collect();
        assert_eq!(logged, expected, "writer w{w}: every committed row logged once, in order");
    }
    // Each stream got every event from its first one on, without a gap, across the restart.
    for (w, s) in streams.iter_mut().enumerate() {
        let n = written[w];
        let last = format!("w{w}-{}", n - 1);
        while got[w].last() != Some(&last) {
            let e =
                s.next_named("notification", T).await.unwrap_or_else(|| panic!("w{w}: stream ended at {:?}", got[w]));
            got[w].push(row_title(&e));
        }
        // Duplicates are allowed across the resume only (the guarantee); drop them.
        let mut seen: Vec<String> = Vec::new();
        for t in &got[w] {
            if !seen.contains(t) {
                seen.push(t.clone());
            }
        }
        let first: u32 = seen[0].rsplit('-').next().unwrap().parse().unwrap();
        let expected: Vec<String> = (first..n).map(|k| format!("w{w}-{k}")).collect();
        assert_eq!(seen, expected, "w{w}: events from its first one on, none missing");
    }

    // Nothing of the old version is left: the schema is a fresh install's with the same watch()es.
    let fresh = fresh_database();
    exec(&fresh, pgsse::pg::install::INSTALL_SQL).await;
    exec(&fresh, pgsse::pg::demo::CREATE_TABLE_SQL).await;
    exec(&fresh, "CREATE TABLE legacy (id int PRIMARY KEY, \"ownerId\" text, body text, seen boolean)").await;
    exec(&fresh, "SELECT pgsse.watch('notifications', 'user_id', exclude_columns => '{metadata}')").await;
    exec(&fresh, "SELECT pgsse.watch('legacy', 'ownerId', read_column => 'seen')").await;
    // pgsse._announcing()'s body says whether writers announce: compare in the same mode.
    exec(&fresh, "SELECT pgsse.set_notify_mode('commit')").await;
    assert_eq!(fingerprint(&url).await, fingerprint(&fresh).await);
    // An upgraded install keeps commit mode; a fresh one starts in relay mode.
    let mode: String = c.query_one("SELECT pgsse.notify_mode()", &[]).await.unwrap().get(0);
    assert_eq!(mode, "commit");
    let (ok, status, _) = pgsse(&["sql", "status", "--database-url", &url]).await;
    assert!(ok && status.contains("nothing to change"), "{status}");
    gw.stop().await;
}

/// Item 2: at start, a schema the gateway cannot serve is an error naming what to do; a newer one
/// that declares it compatible is served; on reconnect the check runs again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_checks_the_schema_version_at_start_and_on_reconnect() {
    let start = |url: String| async move {
        let config =
            pgsse::Config::from_argv(["--database-url", &url, "--listen", "127.0.0.1:0", "--jwt-secret", "x"]).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let run = tokio::spawn(pgsse::run(config, listener, async move {
            let _ = rx.await;
        }));
        let r = tokio::time::timeout(Duration::from_secs(3), run).await;
        let _ = tx.send(());
        match r {
            Ok(done) => Some(done.expect("join").map_err(|e| e.to_string())),
            Err(_) => None, // still running: it started
        }
    };
    let empty = fresh_database();
    let err = start(empty.clone()).await.expect("refused").expect_err("nothing installed");
    assert!(err.contains("not installed") && err.contains("pgsse sql install --apply"), "{err}");

    let url = fresh_database();
    gateway::install(&url).await;
    exec(&url, "UPDATE pgsse.meta SET version = 6, gateway_min_version = 6").await;
    let err = start(url.clone()).await.expect("refused").expect_err("too new");
    assert!(err.contains("version 6") && err.contains("newer pgsse binary"), "{err}");
    // A newer SQL that declares this gateway able to serve it.
    exec(&url, "UPDATE pgsse.meta SET version = 6, gateway_min_version = 2").await;
    let gw = Gateway::start(&url, &[]).await;
    // The install script never downgrades.
    let c = connect(&url).await;
    let e = c.batch_execute(pgsse::pg::install::INSTALL_SQL).await.expect_err("a downgrade");
    assert!(describe_pg_error(&e).contains("newer than this script"), "{}", describe_pg_error(&e));

    // On reconnect: an unservable schema keeps the gateway unready; fixed, it serves again.
    exec(&url, "UPDATE pgsse.meta SET version = 6, gateway_min_version = 6").await;
    exec(&url, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'pgsse'").await;
    assert!(
        wait_until(T, || async { !matches!(gateway::readyz(&gw.addr).await, Some((200, _))) }).await,
        "the gateway stayed ready on a schema it cannot serve"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!matches!(gateway::readyz(&gw.addr).await, Some((200, _))), "ready again on a schema it cannot serve");
    exec(&url, "UPDATE pgsse.meta SET version = 5, gateway_min_version = 2").await;
    assert!(gw.wait_ready(T).await, "the gateway never recovered once the schema was right");
    gw.stop().await;
}

/// `sql/install.sql` of version 2 (commit b34ef87): INSERTs captured by a statement-level trigger.
const VERSION_2: &str = include_str!("fixtures/install-v2.sql");
/// `sql/install.sql` of version 3 (commit 3bd51b8): a row-level INSERT trigger, and a
/// `pgsse_announce` that runs after every INSERT statement.
const VERSION_3: &str = include_str!("fixtures/install-v3.sql");

/// `sql/install.sql` of version 4 (commit 75b9721): the log keyed by id, with an index on tx.
const VERSION_4: &str = include_str!("fixtures/install-v4.sql");

/// Version 5 keys the log by (tx, id): one index fewer for every writer to pay. Upgrading a
/// version-4 install in relay mode under a running gateway rebuilds the key with rows in the log:
/// none is lost, the open stream gets every event written before, during and after the upgrade
/// exactly once, a stream resuming from a position taken before it misses nothing after that
/// position, and the schema is a fresh install's.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upgrade_from_version_4_keys_the_log_by_transaction() {
    let url = fresh_database();
    exec(&url, VERSION_4).await;
    exec(&url, pgsse::pg::demo::CREATE_TABLE_SQL).await;
    exec(&url, "SELECT pgsse.watch('notifications', 'user_id')").await;
    assert_ne!(common::sql::log_indexes(&url).await, common::sql::LOG_INDEXES, "version 4's log");
    let (ok, status, _) = pgsse(&["sql", "status", "--database-url", &url]).await;
    assert!(ok && status.contains("rebuild the primary key of pgsse.events on (tx, id)"), "{status}");
    assert!(status.contains("index pgsse.events_tx_idx"), "{status}");
    let insert = |from: u32, to: u32| {
        let url = url.clone();
        async move {
            for i in from..to {
                exec(&url, &format!("INSERT INTO notifications (user_id, title) VALUES ('a', 'b{i}')")).await;
            }
        }
    };
    let titles = |from: u32, to: u32| (from..to).map(|i| format!("b{i}")).collect::<Vec<_>>();
    let gw = Gateway::start(&url, &[]).await;
    let mut live = gw.stream("a", &[]).await;
    live.next_named("connected", T).await.expect("connected");
    let mut tab = gw.stream("a", &[]).await;
    tab.next_named("connected", T).await.expect("connected");
    insert(0, 5).await;
    let mut got = Vec::new();
    while got.len() < 3 {
        got.push(row_title(&tab.next_named("notification", T).await.expect("an event")));
    }
    assert_eq!(got, titles(0, 3));
    let position = tab.last_event_id().expect("a position");
    drop(tab);

    // Writers keep writing while the key is rebuilt.
    let during = tokio::spawn(insert(5, 25));
    let (ok, _, stderr) = pgsse(&["sql", "install", "--apply", "--database-url", &url]).await;
    assert!(ok, "the upgrade failed: {stderr}");
    during.await.expect("writer");
    insert(25, 30).await;
    assert_eq!(common::sql::log_indexes(&url).await, common::sql::LOG_INDEXES, "rebuilt");
    let c = connect(&url).await;
    let rows =
        c.query("SELECT data->'notification'->>'title' FROM pgsse.events ORDER BY tx, id", &[]).await.expect("the log");
    assert_eq!(rows.iter().map(|r| r.get(0)).collect::<Vec<String>>(), titles(0, 30), "every row, once");

    let mut got = Vec::new();
    while got.len() < 30 {
        got.push(row_title(&live.next_named("notification", T).await.expect("a live event")));
    }
    assert_eq!(got, titles(0, 30), "the open stream: every event, once, in order");
    let mut resumed = gw.stream("a", &[("Last-Event-ID", position.as_str())]).await;
    let mut got: Vec<String> = Vec::new();
    while got.last().map(String::as_str) != Some("b29") {
        let t = row_title(&resumed.next_named("notification", T).await.expect("a replayed event"));
        // Duplicates are allowed across a resume (the guarantee); drop them.
        if !got.contains(&t) {
            got.push(t);
        }
    }
    let first: u32 = got[0][1..].parse().expect("a title");
    assert!(first <= 3, "resumed after its position: {got:?}");
    assert_eq!(got, titles(first, 30), "resumed from before the upgrade: nothing missing");
    gw.stop().await;

    let fresh = fresh_database();
    exec(&fresh, pgsse::pg::install::INSTALL_SQL).await;
    exec(&fresh, pgsse::pg::demo::CREATE_TABLE_SQL).await;
    exec(&fresh, "SELECT pgsse.watch('notifications', 'user_id')").await;
    for u in [&url, &fresh] {
        exec(u, "SELECT pgsse.set_notify_mode('commit')").await;
    }
    assert_eq!(fingerprint(&url).await, fingerprint(&fresh).await);
    let (ok, status, _) = pgsse(&["sql", "status", "--database-url", &url]).await;
    assert!(ok && status.contains("nothing to change"), "{status}");
}

/// The INSERT triggers of `tbl`: whether `pgsse_insert` is FOR EACH ROW, whether
/// `pgsse_announce` has a WHEN clause, and how many pgsse triggers the table has.
async fn insert_shape(url: &str, tbl: &str) -> (bool, bool, i64) {
    let c = connect(url).await;
    let row = c
        .query_one(
            "SELECT bool_or(tgname = 'pgsse_insert' AND (tgtype::int & 1) = 1), \
                    coalesce(bool_or(tgname = 'pgsse_announce' AND tgqual IS NOT NULL), false), count(*) \
               FROM pg_trigger WHERE tgrelid = $1::text::regclass AND tgname LIKE 'pgsse%'",
            &[&tbl],
        )
        .await
        .expect("trigger shape");
    (row.get(0), row.get(1), row.get(2))
}

/// This version's INSERT triggers: a row-level `pgsse_insert`, a `pgsse_announce` skipped while
/// there is nothing to announce, `pgsse_update`, `pgsse_delete`.
const CURRENT: (bool, bool, i64) = (true, true, 4);

/// Version 3 captures INSERTs row by row (a third cheaper per INSERT). Upgrading a version-2
/// install moves every table the installing role owns to the new triggers; a table another role
/// owns keeps its statement-level INSERT trigger, which the regenerated function still serves
/// in both modes, and `pgsse sql status` says so until its owner runs watch() again. Every row
/// is announced once per statement in commit mode, and the version-2 script refuses to run over
/// this version (it would leave INSERTs failing).
#[tokio::test]
async fn upgrade_from_version_2_moves_inserts_to_a_row_trigger() {
    upgrade_moves_the_insert_triggers(VERSION_2, 2, (false, false, 3)).await;
}

/// Version 4 skips `pgsse_announce` while an awake relay relays. Upgrading a version-3 install
/// moves the tables the installing role owns to it; another role's table keeps its
/// `pgsse_announce` of every statement (still correct, costlier) until its owner runs watch().
#[tokio::test]
async fn upgrade_from_version_3_skips_the_announce_trigger_while_relaying() {
    upgrade_moves_the_insert_triggers(VERSION_3, 3, (true, false, 4)).await;
}

/// Installs the script of `version` as a DBA that is no superuser, watches a table it owns and
/// one another role owns (both of `shape`), upgrades, and checks both in both modes.
async fn upgrade_moves_the_insert_triggers(old: &str, version: i32, shape: (bool, bool, i64)) {
    use common::sql::{assert_inline, unique_role, url_as, Tracker};
    let db = fresh_database();
    // A DBA role that is no superuser, as in production: it cannot re-create triggers on a table
    // it does not own.
    let (dba, owner) = (unique_role("old_dba"), unique_role("old_owner"));
    common::shared_cluster().create_role(&dba, false);
    common::shared_cluster().create_role(&owner, false);
    exec(
        &db,
        &format!(
            "GRANT CREATE ON DATABASE \"{}\" TO {dba}; GRANT CREATE ON SCHEMA public TO {dba}, {owner};",
            common::sql::db_name(&db)
        ),
    )
    .await;
    let url = url_as(&db, &dba);
    exec(&url, old).await;
    exec(&url, "SELECT pgsse.set_notify_mode('commit')").await;
    exec(&url, pgsse::pg::demo::CREATE_TABLE_SQL).await;
    exec(&url, "SELECT pgsse.watch('notifications', 'user_id')").await;
    exec(
        &url,
        &format!(
            "GRANT USAGE ON SCHEMA pgsse TO {owner};
             GRANT EXECUTE ON FUNCTION pgsse._generate_capture(regclass, name, name, name, text[]),
                                       pgsse._drop_unused_captures() TO {owner};"
        ),
    )
    .await;
    let owner_url = url_as(&url, &owner);
    exec(
        &owner_url,
        &format!(
            "CREATE TABLE theirs (id serial PRIMARY KEY, owner_id text, body text);
             GRANT INSERT ON theirs TO {dba}; GRANT USAGE ON SEQUENCE theirs_id_seq TO {dba};
             SELECT pgsse.watch('theirs', 'owner_id', read_column => NULL);"
        ),
    )
    .await;
    assert_eq!(insert_shape(&url, "notifications").await, shape, "version {version}'s triggers");
    assert_eq!(insert_shape(&url, "theirs").await, shape);

    let (ok, out, err) = pgsse(&["sql", "install", "--apply", "--database-url", &url]).await;
    assert!(ok, "{out}{err}");
    assert!(
        err.contains("table public.theirs keeps the INSERT triggers of an earlier version"),
        "the upgrade names the table it could not move: {err}"
    );
    assert_eq!(insert_shape(&url, "notifications").await, CURRENT, "moved");
    assert_eq!(common::sql::log_indexes(&url).await, common::sql::LOG_INDEXES);
    assert_eq!(insert_shape(&url, "theirs").await, shape, "not its owner: left as it was");
    let (ok, status, _) = pgsse(&["sql", "status", "--database-url", &url]).await;
    assert!(ok && status.contains("! the INSERT triggers of an earlier version"), "{status}");

    // Commit mode, both shapes in one transaction: one NOTIFY per statement, each row in exactly one.
    let mut t = Tracker::new(&url).await;
    let (events, payloads) = t
        .run(
            "INSERT INTO notifications (user_id, title) VALUES ('a', '1'), ('b', '2');
             INSERT INTO theirs (owner_id, body) VALUES ('c', '3'), ('d', '4');
             INSERT INTO notifications (user_id, title) VALUES ('e', '5');",
        )
        .await;
    assert_eq!(events.len(), 5);
    assert_eq!(payloads.len(), 3, "{payloads:?}");
    assert_inline(&payloads[0], &events[..2]);
    assert_inline(&payloads[1], &events[2..4]);
    assert_inline(&payloads[2], &events[4..]);
    // Relay mode: both log, nothing is NOTIFYed in the writer's transaction.
    exec(&url, "SELECT pgsse.set_notify_mode('relay')").await;
    let (events, payloads) = t
        .run(
            "INSERT INTO notifications (user_id, title) VALUES ('f', '6');
             INSERT INTO theirs (owner_id, body) VALUES ('g', '7');",
        )
        .await;
    let users: Vec<_> = events.iter().map(|e| e.user_id.as_deref().unwrap_or_default()).collect();
    assert_eq!(users, ["f", "g"]);
    assert!(payloads.is_empty(), "{payloads:?}");

    // Its owner moves it.
    exec(&owner_url, "SELECT pgsse.watch('theirs', 'owner_id', read_column => NULL)").await;
    assert_eq!(insert_shape(&url, "theirs").await, CURRENT);
    let (_, status, _) = pgsse(&["sql", "status", "--database-url", &url]).await;
    assert!(!status.contains("earlier version"), "{status}");

    // The old script refuses to run over this version, and changes nothing.
    let c = connect(&url).await;
    let e = c.batch_execute(old).await.expect_err("a downgrade");
    let expected = format!("newer than this script (version {version})");
    assert!(describe_pg_error(&e).contains(&expected), "{}", describe_pg_error(&e));
    assert_eq!(insert_shape(&url, "notifications").await, CURRENT);
}
