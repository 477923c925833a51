-- Each session takes 100 ids of the log's identity at a time.
ALTER TABLE pgsse.events ALTER COLUMN id SET CACHE 100;
