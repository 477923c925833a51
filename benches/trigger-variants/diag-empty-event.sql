-- Diagnostic, not a candidate (the event must carry the row): the trigger logs '{}' instead of
-- the row's JSON, to tell what building and storing the event costs.
\ir rewrite-capture.sql
SELECT pg_temp.rewrite_capture(
    'pg_catalog\.jsonb_build_object\(''type'', ''created'', ''notification'', NEW\)', '''{}''::pg_catalog.jsonb');
