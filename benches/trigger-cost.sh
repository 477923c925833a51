#!/usr/bin/env bash
# PostgreSQL alone: INSERTs per second into `notifications` with and without pgsse's trigger
# (pgbench, 1 and 4 clients, 10 s each; run as root: the server runs as `postgres`). Needs a
# release build (`cargo build --release`).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
D=/dev/shm/trigcost; rm -rf $D; mkdir -p $D; chown postgres $D
su postgres -c "$BIN/initdb -D $D/data -U postgres --auth=trust --no-sync >/dev/null"
cat >> $D/data/postgresql.conf <<C
fsync = off
synchronous_commit = off
full_page_writes = off
shared_buffers = 256MB
listen_addresses = '127.0.0.1'
port = 55432
unix_socket_directories = '$D'
C
su postgres -c "$BIN/pg_ctl -D $D/data -l $D/log start -w >/dev/null"
trap 'su postgres -c "$BIN/pg_ctl -D $D/data stop -m fast >/dev/null"; rm -rf $D' EXIT
U=postgres://postgres@127.0.0.1:55432/postgres
"$ROOT/target/release/pgsse" sql install --apply --database-url $U
psql -q $U -c "CREATE TABLE notifications (id serial PRIMARY KEY, user_id text NOT NULL, type text NOT NULL DEFAULT 'info', title text NOT NULL DEFAULT '', message text NOT NULL DEFAULT '', read boolean NOT NULL DEFAULT false, metadata jsonb, created_at timestamptz NOT NULL DEFAULT now())"
echo "INSERT INTO notifications (user_id, title, metadata) VALUES ('u' || (random()*1000)::int, 'bench', jsonb_build_object('bench', '1.2.3.1700000000000000'));" > $D/ins.sql
run() { $BIN/pgbench -n -h 127.0.0.1 -p 55432 -U postgres -f $D/ins.sql -T 10 -c $1 -j 1 postgres 2>/dev/null | grep -E "^tps|latency average"; }
echo "== no trigger"; run 1; run 4
psql -q $U -c "SELECT pgsse.watch('notifications', 'user_id')" >/dev/null
echo "== pgsse trigger (nobody listening)"; run 1; run 4
