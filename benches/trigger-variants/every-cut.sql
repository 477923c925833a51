-- Every cut at once: no pgsse_announce, the event built as json, and no (user_id, tx) index.
\ir no-announce-trigger.sql
\ir json-build.sql
\ir no-user-index.sql
