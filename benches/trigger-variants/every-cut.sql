-- Every cut above at once: no pgsse_announce, the event built as json, user_id bytewise in its
-- index, and no (user_id, tx) index at all.
\ir no-announce-trigger.sql
\ir json-build.sql
\ir no-user-index.sql
