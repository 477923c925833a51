-- The cuts that keep replay's index: no pgsse_announce, the event built as json, user_id
-- bytewise in its index.
\ir no-announce-trigger.sql
\ir json-build.sql
\ir c-collation.sql
