-- Without pgsse_announce: its WHEN (pgsse._announcing()), read and evaluated per statement.
DROP TRIGGER pgsse_announce ON notifications;
