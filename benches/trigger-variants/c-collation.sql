-- user_id compared bytewise in its index (under the database's collation otherwise).
DROP INDEX pgsse.events_user_id_tx_idx;
ALTER TABLE pgsse.events ALTER COLUMN user_id TYPE text COLLATE "C";
CREATE INDEX events_user_id_tx_idx ON pgsse.events (user_id, tx);
