-- Diagnostic, not a candidate (the log row is the event): the trigger still fires and builds the
-- event, but writes no log row, to tell what the row itself (heap, index entries, WAL) costs writers
-- from what running the trigger costs them.
\ir rewrite-capture.sql
SELECT pg_temp.rewrite_capture('INSERT INTO pgsse\.events \(user_id, event, data\)\s*SELECT', 'PERFORM');
