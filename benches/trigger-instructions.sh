#!/usr/bin/env bash
# What the capture trigger costs one INSERT, in CPU instructions (issue 14): exact and repeatable
# where this machine's timings move by 5% from minute to minute, so it can tell changes of 1-2%
# apart. Writers' throughput is still measured by benches/notify-modes.sh; this says why it moves.
#
# A throwaway PostgreSQL with the `notifications` table of `pgsse demo`; for each variant the server
# is stopped and a single-user `postgres --single` runs under valgrind's callgrind: a procedure that
# inserts one row and COMMITs, K times (one plan, so the figure is the executor's, the trigger's
# and the commit's, not parsing). Per INSERT = (instructions at K = 200 + N - instructions at
# K = 200) / N, so start-up and the first inserts' cache misses cancel out. Variants:
#   none     the table not watched
#   log      watched, relay mode with no gateway (the log row only: pgsse_announce is skipped,
#            as while a relay is awake)
#   commit   watched, commit mode (the log row and pgsse_announce's NOTIFY)
#   log:FILE as log, then the SQL in FILE run as superuser: what a change to the log or the
#            triggers would save, tried without building it (benches/trigger-variants/*.sql)
#
# Run as root (the server runs as `postgres`) from the repository root after `cargo build
# --release`; needs valgrind. Environment: PGSSE_BIN (default target/release/pgsse; a binary of
# another version installs that version's SQL), N (default 2000), VARIANTS (default
# "none log commit"), PORT (default 55491).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PGSSE_BIN="${PGSSE_BIN:-$ROOT/target/release/pgsse}"
PORT="${PORT:-55491}"
N="${N:-2000}"
VARIANTS="${VARIANTS:-none log commit}"
WARM=200
command -v valgrind >/dev/null || { echo "needs valgrind (apt-get install valgrind)" >&2; exit 1; }
D=$(mktemp -d /dev/shm/trigger-instructions.XXXXXX)
# shellcheck source=benches/cluster.sh
. "$ROOT/benches/cluster.sh"
start_cluster "$D" "$PORT" fast
export PGOPTIONS='-c client_min_messages=warning'
# pgsse and the table, installed afresh: a log:FILE variant changes them.
fresh() {
    psql -qX "$U" -v ON_ERROR_STOP=1 -c "DROP SCHEMA IF EXISTS pgsse CASCADE; DROP TABLE IF EXISTS notifications" >/dev/null
    "$PGSSE_BIN" sql install --apply --database-url "$U" >/dev/null 2>&1
    psql -qX "$U" -v ON_ERROR_STOP=1 -c "$NOTIFICATIONS_TABLE" >/dev/null
}
psql -qX "$U" -v ON_ERROR_STOP=1 >/dev/null <<'SQL'
CREATE PROCEDURE insert_rows(k int) LANGUAGE plpgsql AS $$
BEGIN
    FOR i IN 1..k LOOP
        INSERT INTO notifications (user_id, title) VALUES ('u' || i % 1000, 'bench');
        COMMIT;
    END LOOP;
END $$;
SQL

# Instructions of one single-user session running insert_rows($1). A single-user session prints
# its errors and exits 0: any ERROR stops the script, or its counts would be of the failure.
instructions() {
    local out="$D/callgrind.$1"
    su postgres -c "echo 'CALL insert_rows($1)' | valgrind --tool=callgrind --callgrind-out-file=$out \
        $BIN/postgres --single -D $D/data -c fsync=off postgres" >"$D/single.log" 2>&1
    if grep -q "ERROR" "$D/single.log" || [ ! -s "$out" ]; then
        echo "the single-user session failed:" >&2; cat "$D/single.log" >&2; exit 1
    fi
    awk '/^(summary|totals):/ { print $2; exit }' "$out"
}

printf '| variant | instructions per INSERT |\n|---|---|\n'
for v in $VARIANTS; do
    fresh
    case "$v" in
        none) psql -qX "$U" -c "SELECT pgsse.unwatch('notifications')" >/dev/null ;;
        log) psql -qX "$U" -c "SELECT pgsse.watch('notifications', 'user_id'); SELECT pgsse.set_notify_mode('relay')" >/dev/null ;;
        # One relay round finishes the switch back to commit (nothing is left to relay).
        commit) psql -qX "$U" -c "SELECT pgsse.watch('notifications', 'user_id'); SELECT pgsse.set_notify_mode('commit'); SELECT pgsse.relay('bench')" >/dev/null ;;
        log:*) psql -qX "$U" -c "SELECT pgsse.watch('notifications', 'user_id'); SELECT pgsse.set_notify_mode('relay')" >/dev/null
               psql -qX "$U" -v ON_ERROR_STOP=1 -f "${v#log:}" >/dev/null ;;
        *) echo "unknown variant $v" >&2; exit 1 ;;
    esac
    psql -qX "$U" -c "TRUNCATE notifications, pgsse.events" >/dev/null
    su postgres -c "$BIN/pg_ctl -D $D/data stop -m fast >/dev/null"
    a=$(instructions "$WARM")
    b=$(instructions $((WARM + N)))
    label=$v
    case "$v" in log:*) label="log + $(basename "${v#log:}" .sql)" ;; esac
    printf '| %s | %s |\n' "$label" "$(( (b - a) / N ))"
    su postgres -c "$BIN/pg_ctl -D $D/data -l $D/log start -w >/dev/null"
done
