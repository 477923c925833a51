#!/usr/bin/env bash
# What one relay round costs PostgreSQL per event, without contention (issue 14).
#
# A throwaway PostgreSQL (fsync off, pg_stat_statements), the `notifications` table watched in
# relay mode, a log of 20,000 rows written by one transaction (and analyzed right after it when
# ANALYZE=1: the sample then says a transaction has thousands of rows). Then ROUNDS times: TXS
# single-row INSERTs, each its own transaction, and one relay round announcing them, all from one
# session. Prints the mean time of a round and per event (pg_stat_statements).
#
# ROUND=read (the default) runs the gateway's round less what the gateway does itself:
# `pgsse.relay_read()` in a transaction (the gateway then makes, signs and sends the payloads;
# their pg_notify is not counted here). ROUND=whole runs `pgsse.relay()`, the same round with the
# payloads made, signed and sent in SQL.
#
# Run as root (the server runs as `postgres`) from the repository root after
# `cargo build --release`; needs psql. Environment: PGSSE_BIN (default target/release/pgsse; a
# binary of another version installs that version's SQL), TXS (default 100), ROUNDS (default 150),
# ANALYZE (default empty), PORT (default 55482), ROUND (read or whole).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PGSSE_BIN="${PGSSE_BIN:-$ROOT/target/release/pgsse}"
PORT="${PORT:-55482}"
TXS="${TXS:-100}"
ROUNDS="${ROUNDS:-150}"
ROUND="${ROUND:-read}"
D=$(mktemp -d /dev/shm/relay-round.XXXXXX)
# shellcheck source=benches/cluster.sh
. "$ROOT/benches/cluster.sh"
start_cluster "$D" "$PORT" fast "shared_preload_libraries = 'pg_stat_statements'"
export PGOPTIONS='-c client_min_messages=warning'
"$PGSSE_BIN" sql install --apply --database-url "$U" >/dev/null 2>&1
psql -qX "$U" -v ON_ERROR_STOP=1 -c "$NOTIFICATIONS_TABLE" >/dev/null
psql -qX "$U" -v ON_ERROR_STOP=1 >/dev/null <<'SQL'
CREATE EXTENSION pg_stat_statements;
SELECT pgsse.watch('notifications', 'user_id');
SELECT pgsse.set_notify_mode('relay');
INSERT INTO notifications (user_id, title) SELECT 'u' || g % 1000, 'warm' FROM generate_series(1, 20000) g;
SELECT * FROM pgsse.relay('bench', '1 hour');
SQL
[ -n "${ANALYZE:-}" ] && psql -qX "$U" -c "ANALYZE pgsse.events" >/dev/null
{
    echo "SET synchronous_commit = off;"
    for _ in $(seq "$ROUNDS"); do
        for _ in $(seq "$TXS"); do
            echo "INSERT INTO notifications (user_id, title, metadata) VALUES ('u$((RANDOM % 1000))', 'bench', jsonb_build_object('bench', '1.2.3.1700000000000000'));"
        done
        if [ "$ROUND" = whole ]; then
            echo "SELECT state FROM pgsse.relay('bench', '1 hour');"
        else
            echo "BEGIN;"
            echo "SELECT * FROM pgsse.relay_read('bench', '1 hour') \\g /dev/null"
            echo "COMMIT;"
        fi
    done
} > "$D/script.sql"
psql -qX "$U" -c "SELECT pg_stat_statements_reset()" >/dev/null
psql -qX "$U" -f "$D/script.sql" >/dev/null
psql -X "$U" -c "SELECT max(calls) AS rounds, round(sum(mean_exec_time)::numeric, 3) AS ms_per_round,
                        round((sum(mean_exec_time) * 1000 / $TXS)::numeric, 2) AS us_per_event
                   FROM pg_stat_statements WHERE query ~ 'pgsse[.]relay(_read)?[(]' AND query NOT LIKE '%pg_stat%'"
