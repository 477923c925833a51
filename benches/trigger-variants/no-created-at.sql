-- Without created_at (retention's clock).
ALTER TABLE pgsse.events DROP COLUMN created_at;
