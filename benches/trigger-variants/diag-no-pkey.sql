-- Diagnostic: the log without its primary key (tx, id); the (user_id, tx) index stays.
ALTER TABLE pgsse.events DROP CONSTRAINT events_pkey;
