#!/usr/bin/env bash
# How long the upgrade to SQL version 5 keeps the log locked: it rebuilds the primary key of
# pgsse.events on (tx, id). Version 4's script (tests/fixtures/install-v4.sql) installed, ROWS
# log rows (default 1,000,000; 100 per transaction, each the JSON of a `notifications` row), then
# `pgsse sql install --apply` timed. Durable commits, on disk.
#
# Run as root (the server runs as `postgres`) from the repository root after
# `cargo build --release`; needs psql. Environment: ROWS, PORT (default 55484), PGSSE_BIN
# (default target/release/pgsse).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PGSSE_BIN="${PGSSE_BIN:-$ROOT/target/release/pgsse}"
PORT="${PORT:-55484}"
ROWS="${ROWS:-1000000}"
D=$(mktemp -d /var/tmp/upgrade-key.XXXXXX)
# shellcheck source=benches/cluster.sh
. "$ROOT/benches/cluster.sh"
start_cluster "$D" "$PORT" durable "max_wal_size = 4GB"
export PGOPTIONS='-c client_min_messages=warning'
psql -qX "$U" -v ON_ERROR_STOP=1 -f "$ROOT/tests/fixtures/install-v4.sql" >/dev/null
psql -qX "$U" -v ON_ERROR_STOP=1 >/dev/null <<SQL
INSERT INTO pgsse.events (tx, user_id, data)
SELECT (1000 + g / 100)::text::xid8, 'u' || g % 1000,
       jsonb_build_object('type', 'created', 'notification', jsonb_build_object(
           'id', g, 'user_id', 'u' || g % 1000, 'type', 'info', 'title', 'bench', 'message', '',
           'read', false, 'metadata', NULL, 'created_at', now()))
  FROM generate_series(1, $ROWS) AS g;
VACUUM ANALYZE pgsse.events;
CHECKPOINT;
SQL
size=$(psql -qAtX "$U" -c "SELECT pg_size_pretty(pg_total_relation_size('pgsse.events'))")
start=$(date +%s.%N)
"$PGSSE_BIN" sql install --apply --database-url "$U" >/dev/null 2>&1
end=$(date +%s.%N)
psql -qAtX "$U" -c "SELECT version FROM pgsse.meta" | grep -qx 5
psql -qAtX "$U" -c "SELECT indexdef FROM pg_indexes WHERE schemaname = 'pgsse' AND tablename = 'events'"
awk -v r="$ROWS" -v s="$size" -v a="$start" -v b="$end" 'BEGIN {
    printf "upgrade 4 -> 5 with %d log rows (%s with indexes): %.2f s\n", r, s, b - a }'
