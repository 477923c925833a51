-- =============================================================================
-- pgsse: database side of the pgsse Server-Sent Events gateway
-- =============================================================================
--
-- Install with:   psql "$DATABASE_URL" -v ON_ERROR_STOP=1 -f sql/install.sql
-- Remove with:    psql "$DATABASE_URL" -v ON_ERROR_STOP=1 -f sql/uninstall.sql
--
-- Requires PostgreSQL 13 or later (xid8, pg_current_xact_id()).
--
-- The script is idempotent: running it again (for example to upgrade the
-- functions) changes nothing else and keeps every row of pgsse.events. It is
-- one transaction: it either installs everything or nothing. It uses no psql
-- meta-commands, so it can also be sent as a single simple-query string (the
-- gateway embeds this very file).
--
-- No superuser is needed. Run it as a role that has CREATE on the database
-- and that owns the application's table(s) you want to watch (or run it as
-- any such role and let each table owner call pgsse.watch(), see below).
--
-- -----------------------------------------------------------------------------
-- What it creates (everything lives in schema "pgsse")
-- -----------------------------------------------------------------------------
--
--   pgsse.events    The event log and the source of truth. One row per event
--                   to deliver: (id, tx, user_id, event, data, created_at).
--                   user_id NULL means "broadcast to every connection". The
--                   gateway replays it to reconnecting browsers
--                   (Last-Event-ID) and prunes it by age.
--   pgsse.meta      Exactly one row. pruned_tx = the largest tx of any log
--                   row ever deleted by retention; the gateway tells clients
--                   asking for history at or below it to reset.
--   pgsse.capture() Generic statement-level trigger function. Turns every
--                   INSERT / UPDATE / DELETE statement on a watched table into
--                   log rows (one INSERT ... SELECT) and ONE NOTIFY.
--   pgsse.watch(tbl, user_column, id_column => 'id', read_column => 'read',
--               exclude_columns => '{}')
--                   Validates the column names and (re)creates the three
--                   triggers pgsse_insert, pgsse_update, pgsse_delete on tbl.
--                   Call it as the table's owner, e.g.:
--                     SELECT pgsse.watch('notifications', 'user_id');
--                     SELECT pgsse.watch('"Notification"', 'userId',
--                                        read_column => 'isRead');
--                     SELECT pgsse.watch('app.alerts', 'owner_id',
--                                        read_column => NULL,
--                                        exclude_columns => '{secret}');
--                   The id column must identify rows (unique); old and new
--                   versions of updated rows are paired on it. Run watch()
--                   again after renaming one of the named columns.
--   pgsse.unwatch(tbl)
--                   Drops those three triggers.
--   pgsse.publish(user_id, data, event => 'notification') -> bigint
--                   Logs and announces an event that is not a row change
--                   (user_id NULL = broadcast). Returns the log id.
--   pgsse.watch_sessions(tbl, token_column => 'token',
--                        expires_column => 'expiresAt', id_column => 'id')
--                   Optional, for cookie authentication: reports deleted
--                   sessions and changed session tokens/expiries so the
--                   gateways close revoked sessions' streams at once.
--                   pgsse.unwatch_sessions(tbl) removes it.
--   pgsse.mark(gateway, seq)
--                   The gateway's signed horizon marker (see below).
--   pgsse._announce(...), pgsse._sign(...)
--                   Internal helpers building, signing and sending NOTIFYs.
--
-- Row changes become events (SSE event name "notification") with data:
--   INSERT                          {"type":"created","notification":<row>}
--   UPDATE read column false/NULL -> true
--                                   {"type":"read","notificationId":<id>}
--   other UPDATE                    {"type":"updated","notification":<row>}
--                                   (rows whose visible content did not
--                                   change produce nothing)
--   UPDATE of the user column       "deleted" for the old user, then
--                                   "created" for the new one
--   DELETE                          {"type":"deleted","notificationId":<id>}
-- <row> is the row as JSON without the excluded columns; <id> keeps its JSON
-- type (numbers stay numbers, uuid/text become strings). Rows whose user
-- column is NULL are never logged (nothing is broadcast by accident; use
-- pgsse.publish(NULL, ...) to broadcast). TRUNCATE is not captured.
--
-- -----------------------------------------------------------------------------
-- Privileges
-- -----------------------------------------------------------------------------
--
-- * The application's role needs NOTHING extra: it keeps writing its own
--   table; pgsse.capture() is SECURITY DEFINER (it runs as the role that ran
--   this script, which owns pgsse.events) with a pinned search_path
--   (pg_catalog, pg_temp) and schema-qualified references. Triggers need no
--   EXECUTE grant to fire.
-- * EXECUTE on pgsse.capture() and pgsse.publish() is revoked from PUBLIC:
--   whoever may attach capture() to a table of their own or call publish()
--   can send events to any user. Grant them deliberately, e.g.:
--     -- GRANT USAGE ON SCHEMA pgsse TO app_backend;
--     -- GRANT EXECUTE ON FUNCTION pgsse.publish(text, jsonb, text) TO app_backend;
--   If a table is owned by a role other than the one that ran this script,
--   that owner needs, to call pgsse.watch() (CREATE TRIGGER checks EXECUTE
--   on the trigger function):
--     -- GRANT USAGE ON SCHEMA pgsse TO table_owner;
--     -- GRANT EXECUTE ON FUNCTION pgsse.capture() TO table_owner;
-- * The gateway's role needs:
--     -- GRANT USAGE ON SCHEMA pgsse TO pgsse_gateway;
--     -- GRANT SELECT, DELETE ON pgsse.events TO pgsse_gateway;
--     -- GRANT SELECT, UPDATE ON pgsse.meta TO pgsse_gateway;
--   (LISTEN needs no privilege.)
-- * Only grant EXECUTE on pgsse.capture() to roles you trust as much as the
--   role that ran this script: capture() runs as that role over the rows of
--   the owner's table, and a table owner controls the types, casts and
--   operators used on them. For the same reason, prefer running this script
--   as the (non-superuser) owner of the watched tables rather than as a
--   superuser.
-- * PostgreSQL lets ANY role that can connect to the database send NOTIFY on
--   any channel. So every payload pgsse sends is signed: HMAC-SHA256 with a
--   random key generated at install time and kept in pgsse.secret, which only
--   the installing role and the gateway's role can read. The gateway ignores
--   (and counts) any payload on "pgsse" whose signature does not verify, so a
--   role that can merely connect cannot push events to browsers. The gateway's
--   role therefore also needs:
--     -- GRANT SELECT ON pgsse.secret TO pgsse_gateway;
--   pgsse.mark() (the gateway's horizon marker) is executable by everyone: it
--   only ever announces a true fact (the current snapshot xmin).
--
-- -----------------------------------------------------------------------------
-- NOTIFY payload (channel "pgsse")
-- -----------------------------------------------------------------------------
--
-- Exactly one NOTIFY per statement (or per publish() call) that logged at
-- least one row; it is delivered when the writing transaction commits and is
-- discarded if it rolls back. tx is pg_current_xact_id() of the writing
-- transaction as a decimal string (the same value as pgsse.events.tx).
--
-- Every payload is <signature><json>: 64 lowercase hex characters of
-- HMAC-SHA256(pgsse.secret.key, <json>), immediately followed by the JSON.
--
--   inline, when the whole payload (signature included) is at most 7900 bytes:
--     {"t":"<tx>","e":[[<id>,<user_id string or null>,"<event>",<data>], ...]}
--     (entries ordered by id; the JSON may contain insignificant whitespace,
--     as PostgreSQL's json/jsonb output functions write it)
--   otherwise a reference (payloads must stay under 8000 bytes):
--     {"t":"<tx>","r":[<min id>,<max id>]}
--     and the gateway reads the rows with
--       SELECT id, user_id, event, data FROM pgsse.events
--        WHERE tx = <tx> AND id BETWEEN <min id> AND <max id> ORDER BY id;
--   the gateway's horizon marker (see pgsse.mark):
--     {"m":"<snapshot xmin>","g":"<gateway instance>","n":<sequence>}
--
-- =============================================================================

BEGIN;

-- Serialize concurrent installs (e.g. several gateways starting at once).
-- The key is the bytes 'pgsse' read as a number.
DO $lock$ BEGIN PERFORM pg_catalog.pg_advisory_xact_lock(482771956581); END $lock$;

CREATE SCHEMA IF NOT EXISTS pgsse;

COMMENT ON SCHEMA pgsse IS
    'pgsse: event log and triggers feeding the pgsse Server-Sent Events gateway';

-- -----------------------------------------------------------------------------
-- The event log
-- -----------------------------------------------------------------------------

CREATE TABLE IF NOT EXISTS pgsse.events (
    id         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- writing transaction: orders and groups the events of one commit
    tx         xid8        NOT NULL DEFAULT pg_catalog.pg_current_xact_id(),
    -- recipient, as text; NULL = broadcast to every connection
    user_id    text,
    -- SSE "event:" name
    event      text        NOT NULL DEFAULT 'notification',
    -- SSE "data:" (JSON)
    data       jsonb       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT pg_catalog.now()
);

COMMENT ON TABLE pgsse.events IS
    'pgsse event log: one row per Server-Sent Event; user_id NULL = broadcast';

-- per-user replay on reconnect
CREATE INDEX IF NOT EXISTS events_user_id_tx_idx ON pgsse.events (user_id, tx);
-- gateway catch-up after a lost LISTEN connection, and reference payloads
CREATE INDEX IF NOT EXISTS events_tx_idx ON pgsse.events (tx);
-- retention pruning
CREATE INDEX IF NOT EXISTS events_created_at_idx ON pgsse.events (created_at);

-- -----------------------------------------------------------------------------
-- Bookkeeping: exactly one row
-- -----------------------------------------------------------------------------

CREATE TABLE IF NOT EXISTS pgsse.meta (
    id        boolean PRIMARY KEY DEFAULT true CHECK (id),
    -- largest tx of any pgsse.events row ever deleted by retention
    pruned_tx xid8    NOT NULL DEFAULT '0'
);

COMMENT ON TABLE pgsse.meta IS
    'pgsse bookkeeping (single row): pruned_tx = largest tx deleted by retention';

INSERT INTO pgsse.meta DEFAULT VALUES ON CONFLICT DO NOTHING;

-- -----------------------------------------------------------------------------
-- Signing key for NOTIFY payloads: exactly one row, generated once
-- -----------------------------------------------------------------------------
-- key is 32 bytes from gen_random_uuid() (PostgreSQL's strong random source);
-- ipad/opad are the key XOR-ed with HMAC's pads, so signing costs two sha256()
-- calls. Readable only by the installing role and roles granted SELECT (the
-- gateway). To rotate: DELETE FROM pgsse.secret; then run this script again,
-- and restart the gateways.

CREATE TABLE IF NOT EXISTS pgsse.secret (
    id         boolean     PRIMARY KEY DEFAULT true CHECK (id),
    key        bytea       NOT NULL,
    ipad       bytea       NOT NULL,
    opad       bytea       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT pg_catalog.now()
);

COMMENT ON TABLE pgsse.secret IS
    'pgsse HMAC key signing NOTIFY payloads; readable by the gateway only';

REVOKE ALL ON pgsse.secret FROM PUBLIC;

INSERT INTO pgsse.secret (key, ipad, opad)
SELECT k.key,
       pg_catalog.decode(pg_catalog.string_agg(pg_catalog.lpad(pg_catalog.to_hex(
           (CASE WHEN i < 32 THEN pg_catalog.get_byte(k.key, i) ELSE 0 END) # 54), 2, '0'), '' ORDER BY i), 'hex'),
       pg_catalog.decode(pg_catalog.string_agg(pg_catalog.lpad(pg_catalog.to_hex(
           (CASE WHEN i < 32 THEN pg_catalog.get_byte(k.key, i) ELSE 0 END) # 92), 2, '0'), '' ORDER BY i), 'hex')
  FROM (SELECT pg_catalog.decode(
                   pg_catalog.replace(pg_catalog.gen_random_uuid()::text, '-', '')
                || pg_catalog.replace(pg_catalog.gen_random_uuid()::text, '-', ''), 'hex') AS key) AS k,
       pg_catalog.generate_series(0, 63) AS i
 GROUP BY k.key
ON CONFLICT DO NOTHING;

-- -----------------------------------------------------------------------------
-- pgsse._sign: <hex HMAC-SHA256 of body><body>
-- -----------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION pgsse._sign(body text) RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT pg_catalog.encode(pg_catalog.sha256(s.opad OPERATOR(pg_catalog.||)
               pg_catalog.sha256(s.ipad OPERATOR(pg_catalog.||) pg_catalog.convert_to(body, 'UTF8'))), 'hex')
           OPERATOR(pg_catalog.||) body
      FROM pgsse.secret AS s
$fn$;

COMMENT ON FUNCTION pgsse._sign(text) IS
    'pgsse internal: prefixes a NOTIFY payload with its HMAC-SHA256 signature (hex)';

REVOKE ALL ON FUNCTION pgsse._sign(text) FROM PUBLIC;

-- -----------------------------------------------------------------------------
-- pgsse.mark: the gateway's horizon marker
-- -----------------------------------------------------------------------------
-- Every transaction whose xid is below the snapshot xmin has finished, and
-- this NOTIFY is queued after all of their NOTIFYs: when a gateway receives
-- it, it has received every event of those transactions. SECURITY DEFINER so
-- it can sign; safe for anyone because it only states the true xmin.

CREATE OR REPLACE FUNCTION pgsse.mark(gateway text, seq bigint) RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    PERFORM pg_catalog.pg_notify('pgsse', pgsse._sign(pg_catalog.json_build_object(
        'm', pg_catalog.pg_snapshot_xmin(pg_catalog.pg_current_snapshot())::text,
        'g', pg_catalog.left(gateway, 64),
        'n', seq)::text));
END
$fn$;

COMMENT ON FUNCTION pgsse.mark(text, bigint) IS
    'pgsse: sends a signed horizon marker (the current snapshot xmin) on channel pgsse';

-- -----------------------------------------------------------------------------
-- pgsse._announce: send the one NOTIFY for a batch of freshly logged rows
-- -----------------------------------------------------------------------------
-- n       number of rows logged (nothing is sent when 0)
-- min_id  smallest / max_id largest pgsse.events.id of the batch
-- entries JSON array text [[id, user_id, event, data], ...] ordered by id

CREATE OR REPLACE FUNCTION pgsse._announce(
    tx xid8, n bigint, min_id bigint, max_id bigint, entries text
) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    payload text;
BEGIN
    IF n IS NULL OR n = 0 THEN
        RETURN;
    END IF;
    payload := pg_catalog.format('{"t":"%s","e":%s}', tx, entries);
    -- 64 bytes of signature go in front (NOTIFY payloads must be < 8000 bytes)
    IF payload IS NULL OR pg_catalog.octet_length(payload) > 7900 - 64 THEN
        payload := pg_catalog.format('{"t":"%s","r":[%s,%s]}', tx, min_id, max_id);
    END IF;
    PERFORM pg_catalog.pg_notify('pgsse', pgsse._sign(payload));
END
$fn$;

COMMENT ON FUNCTION pgsse._announce(xid8, bigint, bigint, bigint, text) IS
    'pgsse internal: sends the single NOTIFY pgsse for a batch of log rows';

REVOKE ALL ON FUNCTION pgsse._announce(xid8, bigint, bigint, bigint, text) FROM PUBLIC;

-- -----------------------------------------------------------------------------
-- pgsse.capture: the statement-level trigger function
-- -----------------------------------------------------------------------------
-- Trigger arguments (set by pgsse.watch):
--   TG_ARGV[0] user column, TG_ARGV[1] id column,
--   TG_ARGV[2] read column ('' = none), TG_ARGV[3] excluded columns (text[]).
-- Transition tables: pgsse_new (INSERT, UPDATE), pgsse_old (UPDATE, DELETE);
-- plpgsql's EXECUTE can read them.

CREATE OR REPLACE FUNCTION pgsse.capture() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    user_col text   := TG_ARGV[0];
    id_col   text   := TG_ARGV[1];
    read_col text   := COALESCE(TG_ARGV[2], '');
    excluded text[] := COALESCE(TG_ARGV[3], '{}')::text[];
    -- one (user, id, visible row, read flag) tuple per transition row
    row_sql  text   := 'SELECT true AS p, t.%1$I::text AS u, t.%2$I AS k,'
                       ' pg_catalog.to_jsonb(t) OPERATOR(pg_catalog.-) $1 AS j,'
                       ' %3$s AS rd FROM %4$I AS t';
    read_expr text;
    body     text;
    n        bigint;
    min_id   bigint;
    max_id   bigint;
    entries  text;
BEGIN
    IF TG_LEVEL <> 'STATEMENT' OR TG_WHEN <> 'AFTER' THEN
        RAISE EXCEPTION 'pgsse.capture() must be an AFTER ... FOR EACH STATEMENT trigger (use pgsse.watch())';
    END IF;

    IF read_col = '' THEN
        read_expr := 'false';
    ELSE
        read_expr := pg_catalog.format('(t.%I IS TRUE)', read_col);
    END IF;

    IF TG_OP = 'INSERT' THEN
        body := pg_catalog.format(
            'SELECT n.u, pg_catalog.jsonb_build_object(''type'', ''created'', ''notification'', n.j)'
            ' FROM (' || row_sql || ') AS n'
            ' WHERE n.u IS NOT NULL'
            ' ORDER BY n.k',
            user_col, id_col, read_expr, 'pgsse_new');
    ELSIF TG_OP = 'DELETE' THEN
        body := pg_catalog.format(
            'SELECT o.u, pg_catalog.jsonb_build_object(''type'', ''deleted'','
            ' ''notificationId'', pg_catalog.to_jsonb(o.k))'
            ' FROM (' || row_sql || ') AS o'
            ' WHERE o.u IS NOT NULL'
            ' ORDER BY o.k',
            user_col, id_col, read_expr, 'pgsse_old');
    ELSIF TG_OP = 'UPDATE' THEN
        -- Old and new versions are paired on the id column. A row whose id
        -- changed (or whose user changed) is reported as deleted for the
        -- old user (ord 0), then created for the new user (ord 1).
        body := pg_catalog.format(
            'SELECT x.u, x.d'
            ' FROM (' || row_sql || ') AS o'
            ' FULL JOIN (' || pg_catalog.replace(row_sql, '%4$I', '%5$I') || ') AS n'
            '   ON n.k = o.k'
            ' CROSS JOIN LATERAL (VALUES'
            '  (0, CASE WHEN o.p AND (n.p IS NULL OR o.u IS DISTINCT FROM n.u) THEN o.u END,'
            '      pg_catalog.jsonb_build_object(''type'', ''deleted'','
            '                                    ''notificationId'', pg_catalog.to_jsonb(o.k))),'
            '  (1, CASE WHEN n.p THEN n.u END,'
            '      CASE WHEN o.p IS NULL OR o.u IS DISTINCT FROM n.u'
            '             THEN pg_catalog.jsonb_build_object(''type'', ''created'', ''notification'', n.j)'
            '           WHEN n.rd AND NOT o.rd'
            '             THEN pg_catalog.jsonb_build_object(''type'', ''read'','
            '                                                ''notificationId'', pg_catalog.to_jsonb(n.k))'
            '           WHEN n.j IS DISTINCT FROM o.j'
            '             THEN pg_catalog.jsonb_build_object(''type'', ''updated'', ''notification'', n.j)'
            '      END)'
            ' ) AS x(ord, u, d)'
            ' WHERE x.u IS NOT NULL AND x.d IS NOT NULL'
            ' ORDER BY COALESCE(n.k, o.k), x.ord',
            user_col, id_col, read_expr, 'pgsse_old', 'pgsse_new');
    ELSE
        RAISE EXCEPTION 'pgsse.capture() does not handle %', TG_OP;
    END IF;

    EXECUTE
        'WITH ins AS ('
        '  INSERT INTO pgsse.events (user_id, event, data)'
        '  SELECT s.u, ''notification'', s.d FROM (' || body || ') AS s(u, d)'
        '  RETURNING id, user_id, event, data)'
        ' SELECT pg_catalog.count(*), pg_catalog.min(id), pg_catalog.max(id),'
        '  pg_catalog.json_agg(pg_catalog.json_build_array(id, user_id, event, data) ORDER BY id)::text'
        ' FROM ins'
        INTO n, min_id, max_id, entries
        USING excluded;

    PERFORM pgsse._announce(pg_catalog.pg_current_xact_id(), n, min_id, max_id, entries);
    RETURN NULL;
END
$fn$;

COMMENT ON FUNCTION pgsse.capture() IS
    'pgsse trigger function: logs row changes to pgsse.events and sends one NOTIFY per statement; attach with pgsse.watch()';

REVOKE ALL ON FUNCTION pgsse.capture() FROM PUBLIC;

-- -----------------------------------------------------------------------------
-- pgsse.publish: log and announce an arbitrary event
-- -----------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION pgsse.publish(
    user_id text, data jsonb, event text DEFAULT 'notification'
) RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    new_id  bigint;
    entries text;
BEGIN
    -- The event name becomes an SSE "event:" line. (A NUL byte cannot occur
    -- in a PostgreSQL text value at all.)
    IF publish.event IS NULL OR publish.event = ''
       OR pg_catalog.strpos(publish.event, pg_catalog.chr(10)) > 0
       OR pg_catalog.strpos(publish.event, pg_catalog.chr(13)) > 0 THEN
        RAISE EXCEPTION 'pgsse.publish: invalid event name %: it must be non-empty and contain no CR, LF or NUL',
            COALESCE(pg_catalog.to_json(publish.event)::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF publish.data IS NULL THEN
        RAISE EXCEPTION 'pgsse.publish: data must not be NULL (use ''null''::jsonb for a JSON null)'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;

    INSERT INTO pgsse.events AS e (user_id, event, data)
    VALUES (publish.user_id, publish.event, publish.data)
    RETURNING e.id,
              pg_catalog.json_build_array(
                  pg_catalog.json_build_array(e.id, e.user_id, e.event, e.data))::text
    INTO new_id, entries;

    PERFORM pgsse._announce(pg_catalog.pg_current_xact_id(), 1, new_id, new_id, entries);
    RETURN new_id;
END
$fn$;

COMMENT ON FUNCTION pgsse.publish(text, jsonb, text) IS
    'pgsse: log and announce an event (user_id NULL = broadcast); returns the pgsse.events id';

-- Only roles the DBA trusts may publish:
--   GRANT USAGE ON SCHEMA pgsse TO some_role;
--   GRANT EXECUTE ON FUNCTION pgsse.publish(text, jsonb, text) TO some_role;
REVOKE ALL ON FUNCTION pgsse.publish(text, jsonb, text) FROM PUBLIC;

-- -----------------------------------------------------------------------------
-- pgsse.watch / pgsse.unwatch
-- -----------------------------------------------------------------------------
-- Not SECURITY DEFINER: CREATE TRIGGER needs the caller to own the table.

CREATE OR REPLACE FUNCTION pgsse.watch(
    tbl regclass,
    user_column name,
    id_column name DEFAULT 'id',
    read_column name DEFAULT 'read',
    exclude_columns text[] DEFAULT '{}'
) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    kind     "char";
    columns  text;
    col      text;
    what     text;
    read_arg text := '';
    read_typ regtype;
    trg      name;
BEGIN
    IF tbl IS NULL THEN
        RAISE EXCEPTION 'pgsse.watch: tbl must not be NULL';
    END IF;
    SELECT c.relkind INTO kind FROM pg_catalog.pg_class c WHERE c.oid = tbl;
    IF kind IS NULL OR kind NOT IN ('r', 'p') THEN
        RAISE EXCEPTION 'pgsse.watch: % is not a table', tbl
            USING ERRCODE = 'wrong_object_type';
    END IF;
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_class c
                JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
               WHERE c.oid = tbl AND n.nspname = 'pgsse') THEN
        RAISE EXCEPTION 'pgsse.watch: % belongs to pgsse itself and cannot be watched', tbl
            USING ERRCODE = 'wrong_object_type';
    END IF;

    SELECT pg_catalog.string_agg(pg_catalog.quote_ident(a.attname), ', ' ORDER BY a.attnum)
      INTO columns
      FROM pg_catalog.pg_attribute a
     WHERE a.attrelid = tbl AND a.attnum > 0 AND NOT a.attisdropped;

    IF user_column IS NULL THEN
        RAISE EXCEPTION 'pgsse.watch: user_column must not be NULL';
    END IF;
    IF id_column IS NULL THEN
        RAISE EXCEPTION 'pgsse.watch: id_column must not be NULL';
    END IF;

    -- Every named column must exist. The error lists the real column names,
    -- which makes "userId" vs "user_id" mistakes obvious.
    FOR col, what IN
        SELECT c.col, c.what
          FROM (SELECT user_column::text, 'user_column', 1
                UNION ALL SELECT id_column::text, 'id_column', 2
                UNION ALL SELECT read_column::text, 'read_column', 3
                UNION ALL
                SELECT e.col, 'exclude_columns', 4
                  FROM pg_catalog.unnest(COALESCE(exclude_columns, '{}')) AS e(col)
               ) AS c(col, what, ord)
         WHERE c.col IS NOT NULL
         ORDER BY c.ord
    LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a
                        WHERE a.attrelid = tbl AND a.attname = col
                          AND a.attnum > 0 AND NOT a.attisdropped) THEN
            IF what = 'read_column' AND col = 'read' THEN
                RAISE EXCEPTION 'pgsse.watch: table % has no column "read" (the default read_column); its columns are: %',
                        tbl, columns
                    USING ERRCODE = 'undefined_column',
                          HINT = 'Name the boolean "is read" column with read_column => ''...'', '
                                 'or pass read_column => NULL if the table has none.';
            END IF;
            RAISE EXCEPTION 'pgsse.watch: table % has no column "%" (%); its columns are: %',
                    tbl, col, what, columns
                USING ERRCODE = 'undefined_column',
                      HINT = 'Column names are case-sensitive: pass them exactly as stored, '
                             'without double quotes (e.g. ''userId'').';
        END IF;
    END LOOP;

    IF read_column IS NOT NULL THEN
        SELECT a.atttypid::regtype INTO read_typ
          FROM pg_catalog.pg_attribute a
         WHERE a.attrelid = tbl AND a.attname = read_column
           AND a.attnum > 0 AND NOT a.attisdropped;
        IF read_typ <> 'boolean'::regtype THEN
            RAISE EXCEPTION 'pgsse.watch: read column "%" of table % has type %, expected boolean',
                    read_column, tbl, read_typ
                USING ERRCODE = 'datatype_mismatch',
                      HINT = 'Pass read_column => NULL if the table has no boolean "is read" column.';
        END IF;
        read_arg := read_column;
    END IF;

    -- (Re)create the three triggers. Transition tables are not allowed on
    -- triggers for several events, hence one trigger per event.
    FOR trg IN
        SELECT t.tgname FROM pg_catalog.pg_trigger t
         WHERE t.tgrelid = tbl
           AND t.tgname IN ('pgsse_insert', 'pgsse_update', 'pgsse_delete')
    LOOP
        EXECUTE pg_catalog.format('DROP TRIGGER IF EXISTS %I ON %s', trg, tbl);
    END LOOP;

    EXECUTE pg_catalog.format(
        'CREATE TRIGGER pgsse_insert AFTER INSERT ON %s'
        ' REFERENCING NEW TABLE AS pgsse_new'
        ' FOR EACH STATEMENT EXECUTE FUNCTION pgsse.capture(%L, %L, %L, %L)',
        tbl, user_column, id_column, read_arg, COALESCE(exclude_columns, '{}'));
    EXECUTE pg_catalog.format(
        'CREATE TRIGGER pgsse_update AFTER UPDATE ON %s'
        ' REFERENCING OLD TABLE AS pgsse_old NEW TABLE AS pgsse_new'
        ' FOR EACH STATEMENT EXECUTE FUNCTION pgsse.capture(%L, %L, %L, %L)',
        tbl, user_column, id_column, read_arg, COALESCE(exclude_columns, '{}'));
    EXECUTE pg_catalog.format(
        'CREATE TRIGGER pgsse_delete AFTER DELETE ON %s'
        ' REFERENCING OLD TABLE AS pgsse_old'
        ' FOR EACH STATEMENT EXECUTE FUNCTION pgsse.capture(%L, %L, %L, %L)',
        tbl, user_column, id_column, read_arg, COALESCE(exclude_columns, '{}'));
END
$fn$;

COMMENT ON FUNCTION pgsse.watch(regclass, name, name, name, text[]) IS
    'pgsse: validate the column names and (re)create the pgsse_insert/update/delete triggers on a table';

CREATE OR REPLACE FUNCTION pgsse.unwatch(tbl regclass) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    trg name;
BEGIN
    IF tbl IS NULL THEN
        RETURN;
    END IF;
    FOR trg IN
        SELECT t.tgname FROM pg_catalog.pg_trigger t
         WHERE t.tgrelid = tbl
           AND t.tgname IN ('pgsse_insert', 'pgsse_update', 'pgsse_delete')
    LOOP
        EXECUTE pg_catalog.format('DROP TRIGGER IF EXISTS %I ON %s', trg, tbl);
    END LOOP;
END
$fn$;

COMMENT ON FUNCTION pgsse.unwatch(regclass) IS
    'pgsse: drop the pgsse_insert/update/delete triggers from a table';

-- -----------------------------------------------------------------------------
-- Sessions: close a signed-out user's streams at once (optional)
-- -----------------------------------------------------------------------------
-- For gateways that authenticate with the app's session cookie (--auth
-- better-auth): when a session row is deleted (sign-out, revocation) or its
-- token or expiry changes, the gateway is told, and closes that session's
-- streams within a second. Only a SHA-256 of the token goes over NOTIFY.
--   SELECT pgsse.watch_sessions('session');                     -- Better Auth
--   SELECT pgsse.watch_sessions('sessions', 'session_token', 'expires_at');
-- Payload: {"s":[["<sha256 hex of token>", <new expiry in unix ms | null>], ...]}
-- (signed like every payload; at most 80 entries per NOTIFY).

CREATE OR REPLACE FUNCTION pgsse.capture_sessions() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    token_col   text := TG_ARGV[0];
    expires_col text := TG_ARGV[1];
    id_col      text := TG_ARGV[2];
    changes     text;
    chunk       text;
BEGIN
    IF TG_OP = 'DELETE' THEN
        changes := pg_catalog.format(
            'SELECT pg_catalog.encode(pg_catalog.sha256(pg_catalog.convert_to(o.%1$I::text, ''UTF8'')), ''hex'') AS k,'
            ' NULL::bigint AS e FROM pgsse_old AS o WHERE o.%1$I IS NOT NULL',
            token_col);
    ELSIF TG_OP = 'UPDATE' THEN
        -- A changed token revokes the old one; a changed expiry is reported as is.
        changes := pg_catalog.format(
            'SELECT pg_catalog.encode(pg_catalog.sha256(pg_catalog.convert_to(o.%1$I::text, ''UTF8'')), ''hex'') AS k,'
            ' CASE WHEN n.%3$I IS NULL OR n.%1$I IS DISTINCT FROM o.%1$I THEN NULL'
            '      ELSE (pg_catalog.date_part(''epoch'', n.%2$I::timestamptz) * 1000)::bigint END AS e'
            ' FROM pgsse_old AS o LEFT JOIN pgsse_new AS n ON n.%3$I = o.%3$I'
            ' WHERE o.%1$I IS NOT NULL'
            '   AND (n.%3$I IS NULL OR n.%1$I IS DISTINCT FROM o.%1$I OR n.%2$I IS DISTINCT FROM o.%2$I)',
            token_col, expires_col, id_col);
    ELSE
        RETURN NULL;
    END IF;
    FOR chunk IN EXECUTE
        'SELECT pg_catalog.json_agg(pg_catalog.json_build_array(c.k, c.e))::text'
        ' FROM (SELECT x.k, x.e, (pg_catalog.row_number() OVER () - 1) / 80 AS g FROM (' || changes || ') AS x) AS c'
        ' GROUP BY c.g'
    LOOP
        PERFORM pg_catalog.pg_notify('pgsse', pgsse._sign('{"s":' OPERATOR(pg_catalog.||) chunk OPERATOR(pg_catalog.||) '}'));
    END LOOP;
    RETURN NULL;
END
$fn$;

COMMENT ON FUNCTION pgsse.capture_sessions() IS
    'pgsse trigger function: reports deleted sessions and changed session tokens/expiries over NOTIFY';

REVOKE ALL ON FUNCTION pgsse.capture_sessions() FROM PUBLIC;

CREATE OR REPLACE FUNCTION pgsse.watch_sessions(
    tbl regclass,
    token_column name DEFAULT 'token',
    expires_column name DEFAULT 'expiresAt',
    id_column name DEFAULT 'id'
) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    columns text;
    col     text;
    what    text;
BEGIN
    IF tbl IS NULL THEN
        RAISE EXCEPTION 'pgsse.watch_sessions: tbl must not be NULL';
    END IF;
    SELECT pg_catalog.string_agg(pg_catalog.quote_ident(a.attname), ', ' ORDER BY a.attnum)
      INTO columns
      FROM pg_catalog.pg_attribute a
     WHERE a.attrelid = tbl AND a.attnum > 0 AND NOT a.attisdropped;
    FOR col, what IN VALUES (token_column::text, 'token_column'), (expires_column::text, 'expires_column'),
                            (id_column::text, 'id_column')
    LOOP
        IF col IS NULL OR NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a
                        WHERE a.attrelid = tbl AND a.attname = col AND a.attnum > 0 AND NOT a.attisdropped) THEN
            RAISE EXCEPTION 'pgsse.watch_sessions: table % has no column "%" (%); its columns are: %',
                    tbl, col, what, columns
                USING ERRCODE = 'undefined_column',
                      HINT = 'Better Auth''s defaults are token, "expiresAt", id; a snake_case schema may use expires_at.';
        END IF;
    END LOOP;
    PERFORM pgsse.unwatch_sessions(tbl);
    EXECUTE pg_catalog.format(
        'CREATE TRIGGER pgsse_sessions_delete AFTER DELETE ON %s'
        ' REFERENCING OLD TABLE AS pgsse_old'
        ' FOR EACH STATEMENT EXECUTE FUNCTION pgsse.capture_sessions(%L, %L, %L)',
        tbl, token_column, expires_column, id_column);
    EXECUTE pg_catalog.format(
        'CREATE TRIGGER pgsse_sessions_update AFTER UPDATE ON %s'
        ' REFERENCING OLD TABLE AS pgsse_old NEW TABLE AS pgsse_new'
        ' FOR EACH STATEMENT EXECUTE FUNCTION pgsse.capture_sessions(%L, %L, %L)',
        tbl, token_column, expires_column, id_column);
END
$fn$;

COMMENT ON FUNCTION pgsse.watch_sessions(regclass, name, name, name) IS
    'pgsse: report session deletions and changes so gateways close revoked sessions'' streams';

CREATE OR REPLACE FUNCTION pgsse.unwatch_sessions(tbl regclass) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    IF tbl IS NOT NULL THEN
        EXECUTE pg_catalog.format('DROP TRIGGER IF EXISTS pgsse_sessions_delete ON %s', tbl);
        EXECUTE pg_catalog.format('DROP TRIGGER IF EXISTS pgsse_sessions_update ON %s', tbl);
    END IF;
END
$fn$;

COMMENT ON FUNCTION pgsse.unwatch_sessions(regclass) IS
    'pgsse: drop the session triggers from a table';

COMMIT;
