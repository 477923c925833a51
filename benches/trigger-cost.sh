#!/usr/bin/env bash
# PostgreSQL alone: INSERTs per second into `notifications` with and without pgsse's trigger
# (pgbench, 1 and 4 clients, 10 s each; run as root: the server runs as `postgres`). Needs a
# release build (`cargo build --release`), or PGSSE_BIN=<pgsse binary> to install another
# version's SQL. With the trigger it also prints, from pg_stat_user_functions
# (track_functions = 'pl'), the mean time of each pgsse function call (total includes the
# functions it calls). PORT (default 55432) picks the server's port.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PGSSE_BIN="${PGSSE_BIN:-$ROOT/target/release/pgsse}"
PORT="${PORT:-55432}"
D=/dev/shm/trigcost-$PORT; rm -rf $D; mkdir -p $D
# shellcheck source=benches/cluster.sh
. "$ROOT/benches/cluster.sh"
start_cluster "$D" "$PORT" fast "full_page_writes = off
track_functions = 'pl'"
"$PGSSE_BIN" sql install --apply --database-url $U
psql -q $U -c "$NOTIFICATIONS_TABLE"
echo "INSERT INTO notifications (user_id, title, metadata) VALUES ('u' || (random()*1000)::int, 'bench', jsonb_build_object('bench', '1.2.3.1700000000000000'));" > $D/ins.sql
run() { $BIN/pgbench -n -h 127.0.0.1 -p $PORT -U postgres -f $D/ins.sql -T 10 -c $1 -j 1 postgres 2>/dev/null | grep -E "^tps|latency average"; }
echo "== no trigger"; run 1; run 4
psql -q $U -c "SELECT pgsse.watch('notifications', 'user_id')" >/dev/null
psql -q $U -c "SELECT pg_stat_reset()" >/dev/null
echo "== pgsse trigger (nobody listening)"; run 1; run 4
sleep 1 # function statistics reach the collector when a backend goes idle / exits
psql -q $U -c "SELECT funcname, calls, round((total_time * 1000 / calls)::numeric, 1) AS total_us_per_call,
                      round((self_time * 1000 / calls)::numeric, 1) AS self_us_per_call
                 FROM pg_stat_user_functions WHERE schemaname = 'pgsse' AND calls > 0 ORDER BY total_time DESC"

# ---- Where the log-only trigger's time goes ------------------------------------------------
# CPU-bound (8 clients on the machine's cores, fsync off), relay mode (the log row only), against
# a floor built from plain parts in a scratch schema: what any trigger costs, what the log row
# costs without and with pgsse.events' two indexes. Rounds alternate the variants; the median
# of 3 rounds of 5 s is shown with the CPU per INSERT (all cores busy: cores / tps).
export PGOPTIONS='-c client_min_messages=warning'
psql -qX $U -v ON_ERROR_STOP=1 <<'SQL' >/dev/null
SELECT pgsse.set_notify_mode('relay');
SELECT pgsse.unwatch('notifications');
CREATE SCHEMA floor;
CREATE TABLE floor.events (LIKE pgsse.events INCLUDING DEFAULTS INCLUDING IDENTITY);
CREATE FUNCTION floor.empty() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$;
CREATE FUNCTION floor.log() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO floor.events (user_id, event, data)
    VALUES (NEW.user_id, 'notification', jsonb_build_object('type', 'created', 'notification', to_jsonb(NEW)));
    RETURN NULL;
END $$;
SQL
floor_variant() {
    psql -qX $U -c "DROP TRIGGER IF EXISTS floor ON notifications" -c "SELECT pgsse.unwatch('notifications')" >/dev/null
    psql -qX $U -c "DROP INDEX IF EXISTS floor.pk, floor.by_user" >/dev/null
    local fn=log
    case "$1" in
        pgsse) psql -qX $U -c "SELECT pgsse.watch('notifications', 'user_id')" >/dev/null ;;
        none) fn="" ;;
        empty) fn=empty ;;
        indexed) psql -qX $U -c "CREATE UNIQUE INDEX pk ON floor.events (tx, id)" \
                     -c "CREATE INDEX by_user ON floor.events (user_id, tx)" >/dev/null ;;
    esac
    [ "$1" = pgsse ] || [ -z "$fn" ] || psql -qX $U -c "CREATE TRIGGER floor AFTER INSERT ON notifications FOR EACH ROW EXECUTE FUNCTION floor.$fn()" >/dev/null
    psql -qX $U -c "TRUNCATE notifications, pgsse.events, floor.events" >/dev/null
}
CORES=$(nproc)
FLOOR="none empty log indexed pgsse"
declare -A FT
for r in 1 2 3; do
    for v in $FLOOR; do
        floor_variant "$v"
        t=$($BIN/pgbench -n -h 127.0.0.1 -p $PORT -U postgres -f $D/ins.sql -T 5 -c 8 -j 2 postgres 2>/dev/null | awk '/^tps/ { printf "%.0f", $3 }')
        FT[$v]="${FT[$v]:-} $t"
    done
done
echo
echo "| variant (8 clients, fsync off) | tps (median of 3) | CPU per INSERT | vs no trigger |"
echo "|---|---|---|---|"
base=""
for v in $FLOOR; do
    m=$(echo ${FT[$v]} | tr ' ' '\n' | sort -n | sed -n 2p)
    [ -z "$base" ] && base=$m
    case "$v" in
        none) what="no trigger" ;;
        empty) what="an empty PL/pgSQL row trigger" ;;
        log) what="row trigger writing the log row (JSON of the row), no index" ;;
        indexed) what="the same with pgsse.events' two indexes" ;;
        pgsse) what="pgsse's triggers as installed, relay mode (the row-level INSERT; pgsse_announce skipped by its WHEN clause)" ;;
    esac
    awk -v w="$what" -v t="$m" -v b="$base" -v c="$CORES" 'BEGIN {
        printf "| %s | %d | %.0f µs | %.2f |\n", w, t, c * 1e6 / t, t / b }'
done
