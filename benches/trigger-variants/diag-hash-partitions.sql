-- Diagnostic (what a log split in PARTS partitions by its tx would give writers): the log made
-- anew as a table partitioned by hash of tx, so concurrent writers insert at PARTS right edges
-- and last pages instead of one. Run on a fresh install (the log is empty).
\if :{?parts}
\else
\set parts 4
\endif
ALTER TABLE pgsse.events RENAME TO events_unpartitioned;
ALTER TABLE pgsse.events_unpartitioned RENAME CONSTRAINT events_pkey TO events_unpartitioned_pkey;
ALTER INDEX pgsse.events_user_id_tx_idx RENAME TO events_unpartitioned_user_id_tx_idx;
CREATE TABLE pgsse.events (LIKE pgsse.events_unpartitioned INCLUDING DEFAULTS INCLUDING IDENTITY,
                           CONSTRAINT events_pkey PRIMARY KEY (tx, id))
    PARTITION BY HASH (tx);
CREATE INDEX events_user_id_tx_idx ON pgsse.events (user_id, tx);
SELECT format('CREATE TABLE pgsse.events_p%s PARTITION OF pgsse.events FOR VALUES WITH (MODULUS %s, REMAINDER %s)',
              r, :parts, r)
  FROM generate_series(0, :parts - 1) AS r \gexec
