-- =============================================================================
-- pgsse: uninstall
-- =============================================================================
--
--   psql "$DATABASE_URL" -v ON_ERROR_STOP=1 -f sql/uninstall.sql
--
-- Removes everything sql/install.sql created: the pgsse_insert /
-- pgsse_update / pgsse_delete triggers on every watched table, then the whole
-- "pgsse" schema (the event log pgsse.events and its history included, the
-- bookkeeping table pgsse.meta and all pgsse functions). The application's own
-- tables and rows are not touched.
--
-- Idempotent: safe to run when pgsse is not (or no longer) installed.
-- Run it as the role that installed pgsse (it must own the schema) and that
-- owns the watched tables (dropping a trigger requires owning its table).
-- One transaction, no psql meta-commands (the gateway embeds this file).
-- =============================================================================

BEGIN;

-- Same lock as install.sql: do not race a concurrent install.
DO $lock$ BEGIN PERFORM pg_catalog.pg_advisory_xact_lock(482771956581); END $lock$;

-- Drop the triggers that use a pgsse function (normally the ones created by
-- pgsse.watch()). DROP SCHEMA ... CASCADE below would drop them too; doing it
-- explicitly keeps the cleanup visible and independent of CASCADE.
DO $uninstall$
DECLARE
    r record;
BEGIN
    FOR r IN
        SELECT t.tgname, t.tgrelid::pg_catalog.regclass AS tbl
          FROM pg_catalog.pg_trigger t
          JOIN pg_catalog.pg_proc p ON p.oid = t.tgfoid
          JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
         WHERE n.nspname = 'pgsse'
           AND NOT t.tgisinternal
           AND t.tgparentid = 0          -- clones on partitions go with their parent
         ORDER BY t.tgrelid, t.tgname
    LOOP
        EXECUTE pg_catalog.format('DROP TRIGGER IF EXISTS %I ON %s', r.tgname, r.tbl);
    END LOOP;
END
$uninstall$;

DROP SCHEMA IF EXISTS pgsse CASCADE;

COMMIT;
