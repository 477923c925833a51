-- Diagnostic, not a candidate (every reader finds rows by them): the log row written with no
-- index entry at all, to tell what the log's two indexes cost writers from what its heap row does.
ALTER TABLE pgsse.events DROP CONSTRAINT events_pkey;
DROP INDEX pgsse.events_user_id_tx_idx;
