-- Diagnostic, not a candidate (the log must survive a crash): the log rows and their index
-- entries written without WAL, to tell what the log's WAL costs writers from what its CPU does.
ALTER TABLE pgsse.events SET UNLOGGED;
