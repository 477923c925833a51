-- The log's primary key (tx, id) replaced by indexes that writers do not all insert at one place:
-- a BRIN index on tx (ranges of pages; a writer adds nothing to a range not summarized yet) for
-- the readers of a range of transactions, and a hash index on tx for the readers of one.
-- (xid8 has no BRIN operator class, and only a superuser may create one: tx as a bigint.)
ALTER TABLE pgsse.events DROP CONSTRAINT events_pkey;
CREATE INDEX events_tx_brin ON pgsse.events USING brin (((tx::text)::bigint));
CREATE INDEX events_tx_hash ON pgsse.events USING hash (tx);
