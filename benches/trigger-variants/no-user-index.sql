-- Without the (user_id, tx) index: what a replay of one user's missed events reads by.
DROP INDEX pgsse.events_user_id_tx_idx;
