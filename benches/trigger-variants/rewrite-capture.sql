-- Not a variant: included by those that change what the INSERT trigger's function does.
-- pg_temp.rewrite_capture(pattern, replacement) replaces, in the source of the table's capture
-- function, the regular expression pattern with replacement (an error if it is not there).
CREATE FUNCTION pg_temp.rewrite_capture(pattern text, replacement text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    f   regprocedure;
    src text;
BEGIN
    SELECT t.tgfoid::regprocedure INTO f
      FROM pg_trigger t WHERE t.tgname = 'pgsse_insert' AND t.tgrelid = 'notifications'::regclass;
    SELECT p.prosrc INTO src FROM pg_proc p WHERE p.oid = f;
    IF src !~ pattern THEN
        RAISE EXCEPTION 'the capture function has no %', pattern;
    END IF;
    EXECUTE format('CREATE OR REPLACE FUNCTION %s RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS %L',
                   f, regexp_replace(src, pattern, replacement));
END
$$;
