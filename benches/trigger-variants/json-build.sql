-- The log's data as json, built as json (json_build_object): the event as written, not parsed
-- into jsonb. The rest of pgsse still reads data::text, so only the writer's cost is measured.
ALTER TABLE pgsse.events ALTER COLUMN data TYPE json;
DO $$
DECLARE
    f   regprocedure;
    src text;
BEGIN
    SELECT t.tgfoid::regprocedure INTO f
      FROM pg_trigger t WHERE t.tgname = 'pgsse_insert' AND t.tgrelid = 'notifications'::regclass;
    SELECT p.prosrc INTO src FROM pg_proc p WHERE p.oid = f;
    EXECUTE format('CREATE OR REPLACE FUNCTION %s RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS %L',
                   f, replace(src, 'jsonb_build_object', 'json_build_object'));
END
$$;
