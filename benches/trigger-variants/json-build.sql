-- The log's data as json, built as json (json_build_object): the event as written, not parsed
-- into jsonb. The rest of pgsse still reads data::text, so only the writer's cost is measured.
ALTER TABLE pgsse.events ALTER COLUMN data TYPE json;
\ir rewrite-capture.sql
SELECT pg_temp.rewrite_capture('jsonb_build_object', 'json_build_object');
