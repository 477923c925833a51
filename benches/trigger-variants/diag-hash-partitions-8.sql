-- diag-hash-partitions.sql with 8 partitions.
\set parts 8
\ir diag-hash-partitions.sql
