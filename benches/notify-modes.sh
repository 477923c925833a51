#!/usr/bin/env bash
# What pgsse costs the app's writers, per notify mode, side by side in one run (issue 14).
#
# A throwaway PostgreSQL with durable commits (fsync = on, synchronous_commit = on, on disk, not
# tmpfs), the `notifications` table of `pgsse demo`, and pgbench single-row
# `INSERT INTO notifications (user_id, title) VALUES (...)` at 1, 16 and 64 writers, for:
#   none     no trigger (pgsse installed, the table not watched); a LISTENer attached
#   log      the capture trigger writing log rows only: relay mode with no gateway running (the
#            `_announce`-is-a-no-op variant of the issue): pgsse_announce is skipped, as while a
#            relay is awake; the same LISTENer attached
#   relay    relay mode, a gateway running (it relays, and LISTENs) holding STREAMS open streams
#   commit   commit mode (NOTIFY in the writer's transaction), the same gateway and streams
#   log:FILE as log, with pgsse installed afresh and then the SQL in FILE run: what a change to the
#            log or the triggers would give writers, tried without building it
#            (benches/trigger-variants/*.sql; benches/trigger-instructions.sh counts its instructions)
# Rounds alternate the variants, each round starting one variant later (none, log, relay, commit;
# then log, relay, commit, none; ...), so drift on a busy machine and a cell's place in the round
# hit them alike; the table prints the median of the rounds and the ratios the issue's targets
# name. The streams belong to a user no INSERT writes to: the gateway receives and dispatches
# every event but delivers none, so the figures are the database's, not the clients'.
#
# Then, IDLE_SECS seconds with no writes: the CPU PostgreSQL spends (postmaster and all its
# children, utime + stime from /proc) with no gateway, with the gateway in relay mode, and in
# commit mode (the relay's own cost is the difference between the last two).
#
# Run as root (the server runs as `postgres`) from the repository root after
# `cargo build --release`; needs pgbench, psql and python3. Environment: SECS (per pgbench run,
# default 10), ROUNDS (default 3), WRITERS (default "1 16 64"), STREAMS (default 2000),
# IDLE_SECS (default 60; 0 skips the idle part), PORT (default 55433), PGSSE_BIN (default target/release/pgsse),
# DATA_DIR (default a fresh directory under /var/tmp), GATEWAY_ARGS (more `pgsse serve` flags, e.g.
# "--relay-interval 25ms"), VARIANTS (default "none log relay commit"; the ratios need all four).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PGSSE_BIN="${PGSSE_BIN:-$ROOT/target/release/pgsse}"
PORT="${PORT:-55433}"
SECS="${SECS:-10}"
ROUNDS="${ROUNDS:-3}"
WRITERS="${WRITERS:-1 16 64}"
STREAMS="${STREAMS:-2000}"
IDLE_SECS="${IDLE_SECS:-60}"
GW_PORT=$((PORT + 1))
SECRET=notify-modes-bench-secret-0123456789
D="${DATA_DIR:-$(mktemp -d /var/tmp/notify-modes.XXXXXX)}"
mkdir -p "$D"
# shellcheck source=benches/cluster.sh
. "$ROOT/benches/cluster.sh"
start_cluster "$D" "$PORT" durable "max_wal_size = 4GB
max_connections = 200"
GW_PID=""; HOLD_PID=""; LISTEN_PID=""
stop_gateway() {
    [ -n "$HOLD_PID" ] && kill "$HOLD_PID" 2>/dev/null && wait "$HOLD_PID" 2>/dev/null || true
    [ -n "$GW_PID" ] && kill "$GW_PID" 2>/dev/null && wait "$GW_PID" 2>/dev/null || true
    HOLD_PID=""; GW_PID=""
}
cleanup() {
    stop_gateway
    listener_off
    su postgres -c "$BIN/pg_ctl -D $D/data stop -m fast >/dev/null" || true
    rm -rf "$D"
}
trap cleanup EXIT
trap 'exit 1' INT TERM
q() { psql -qAtX "$U" -c "$1"; }
"$PGSSE_BIN" sql install --apply --database-url "$U" >/dev/null
q "$NOTIFICATIONS_TABLE"
CHANNEL=$(q "SELECT channel FROM pgsse.secret")
echo "INSERT INTO notifications (user_id, title) VALUES ('u' || (random()*1000)::int, 'bench');" > "$D/ins.sql"

# A LISTENer on pgsse's channel while no gateway runs (nothing is sent on it then; an idle psql
# does not read, so it must not stay while the gateway, the other LISTENer, gets NOTIFYs).
listener_on() {
    [ -z "$LISTEN_PID" ] || return 0
    (echo "LISTEN \"$CHANNEL\";"; echo $BASHPID > "$D/listen-feed.pid"; exec sleep 100000) | psql -qX "$U" >/dev/null &
    LISTEN_PID=$!
}
listener_off() {
    [ -s "$D/listen-feed.pid" ] && kill "$(cat "$D/listen-feed.pid")" 2>/dev/null || true
    rm -f "$D/listen-feed.pid"
    [ -n "$LISTEN_PID" ] && kill "$LISTEN_PID" 2>/dev/null && wait "$LISTEN_PID" 2>/dev/null || true
    LISTEN_PID=""
}

start_gateway() {
    # shellcheck disable=SC2086 # GATEWAY_ARGS: extra words for `pgsse serve`
    RUST_LOG=warn "$PGSSE_BIN" serve --database-url "$U" --listen 127.0.0.1:$GW_PORT --jwt-secret "$SECRET" \
        --max-connections-per-user 0 --metrics-listen off ${GATEWAY_ARGS:-} >"$D/gateway.log" 2>&1 &
    GW_PID=$!
    for _ in $(seq 100); do
        curl -sf "http://127.0.0.1:$GW_PORT/readyz" >/dev/null 2>&1 && break
        sleep 0.1
    done
    local token
    token=$("$PGSSE_BIN" token --sub bench-idle --secret "$SECRET" --ttl 1d)
    # Removed first: the line waited for below must be this run's.
    rm -f "$D/streams.log"
    python3 - "$GW_PORT" "$token" "$STREAMS" >"$D/streams.log" 2>&1 <<'PY' &
import asyncio, sys
port, token, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
async def hold(i, opened):
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(f"GET /api/notifications/stream HTTP/1.1\r\nHost: b\r\nAccept: text/event-stream\r\n"
            f"Authorization: Bearer {token}\r\n\r\n".encode())
    await w.drain()
    seen = b""
    while b"connected" not in seen:
        seen += await r.read(4096)
    opened.append(i)
    while await r.read(65536):
        pass
async def main():
    opened = []
    tasks = []
    for i in range(n):
        tasks.append(asyncio.create_task(hold(i, opened)))
        if i % 100 == 99:
            await asyncio.sleep(0.05)
    while len(opened) < n:
        await asyncio.sleep(0.1)
    print("open", len(opened), flush=True)
    await asyncio.gather(*tasks)
asyncio.run(main())
PY
    HOLD_PID=$!
    # Up to 60 s: on a loaded machine 2000 streams have taken more than 30.
    for _ in $(seq 600); do grep -q "^open" "$D/streams.log" 2>/dev/null && break; sleep 0.1; done
    grep -q "^open $STREAMS" "$D/streams.log" || { echo "streams did not open: $(cat "$D/streams.log")"; exit 1; }
}

# pgsse and the table installed afresh: after a log:FILE variant, which changed them.
DIRTY=0
fresh_install() {
    stop_gateway
    listener_off
    q "SET client_min_messages = warning; DROP SCHEMA pgsse CASCADE; DROP TABLE notifications" >/dev/null
    "$PGSSE_BIN" sql install --apply --database-url "$U" >/dev/null
    q "$NOTIFICATIONS_TABLE"
    CHANNEL=$(q "SELECT channel FROM pgsse.secret")
    DIRTY=0
}

# Every variant starts from empty tables (their indexes' size is part of the cost).
reset_tables() {
    q "TRUNCATE notifications, pgsse.events" >/dev/null
    q "CHECKPOINT" >/dev/null
}

# tps of one pgbench run with $1 writers.
run() {
    local j=$(( $1 < 2 ? 1 : 2 ))
    "$BIN/pgbench" -n -h 127.0.0.1 -p "$PORT" -U postgres -f "$D/ins.sql" -T "$SECS" -c "$1" -j "$j" postgres 2>/dev/null \
        | awk '/^tps/ { printf "%.0f\n", $3 }'
}

variant() {
    case "$1" in log:*) fresh_install ;; *) [ "$DIRTY" = 0 ] || fresh_install ;; esac
    case "$1" in
        none) stop_gateway; listener_on; q "SELECT pgsse.unwatch('notifications')" >/dev/null ;;
        log) stop_gateway; listener_on; q "SELECT pgsse.watch('notifications', 'user_id')" >/dev/null
             q "SELECT pgsse.set_notify_mode('relay')" >/dev/null ;;
        relay) q "SELECT pgsse.watch('notifications', 'user_id')" >/dev/null
               q "SELECT pgsse.set_notify_mode('relay')" >/dev/null ;;
        commit) q "SELECT pgsse.watch('notifications', 'user_id')" >/dev/null
                q "SELECT pgsse.set_notify_mode('commit')" >/dev/null ;;
        log:*) listener_on; q "SELECT pgsse.watch('notifications', 'user_id')" >/dev/null
               q "SELECT pgsse.set_notify_mode('relay')" >/dev/null
               psql -qX "$U" -v ON_ERROR_STOP=1 -f "${1#log:}" >/dev/null
               DIRTY=1 ;;
        *) echo "unknown variant $1" >&2; exit 1 ;;
    esac
    reset_tables
    if [ "$1" = relay ] || [ "$1" = commit ]; then
        listener_off
        [ -n "$GW_PID" ] || start_gateway
        sleep 1
    fi
}

pg_ticks() {
    local pm; pm=$(head -1 "$D/data/postmaster.pid")
    local total=0
    for p in $pm $(pgrep -P "$pm"); do
        [ -r /proc/$p/stat ] || continue
        # utime and stime: fields 14 and 15 (the command name has no spaces here).
        total=$((total + $(awk '{ print $14 + $15 }' /proc/$p/stat 2>/dev/null || echo 0)))
    done
    echo $total
}
gw_ticks() { awk '{ print $14 + $15 }' /proc/$GW_PID/stat; }
# The gateway's backends (application_name pgsse, the relay's pgsse relay), named by what they last
# ran, with their CPU time in ns so far (/proc/<pid>/schedstat, first field): "<pid> <role> <ns>" per line.
backends() {
    q "SELECT pid, CASE WHEN application_name = 'pgsse relay' THEN 'relay'
                        WHEN query LIKE '%pgsse.mark(%' THEN 'marker'
                        WHEN query LIKE '%pg_locks%' OR query LIKE '%pg_notification_queue_usage%' THEN 'health'
                        WHEN state = 'idle' AND backend_type = 'client backend' AND wait_event = 'ClientRead'
                             AND query LIKE '%LISTEN%' THEN 'listen'
                        ELSE 'other' END
         FROM pg_stat_activity WHERE application_name IN ('pgsse', 'pgsse relay')" | while IFS='|' read -r pid role; do
        [ -r "/proc/$pid/schedstat" ] && echo "$pid $role $(cut -d' ' -f1 "/proc/$pid/schedstat")"
    done
}
HZ=$(getconf CLK_TCK)
# "<role> <% of a core>" of each of the gateway's backends between two `backends` listings ($1, $2)
# over $3 seconds (a backend present at both ends).
backend_cpu() {
    printf '%s\n--\n%s\n' "$1" "$2" | awk -v s="$3" '
        $0 == "--" { after = 1; next }
        !after { t0[$1] = $3; next }
        ($1 in t0) { cpu[$2] += $3 - t0[$1] }
        END { line = ""; for (r in cpu) line = line sprintf(" %s %.2f%%", r, 100 * cpu[r] / 1e9 / s); print line }'
}

VARIANTS="${VARIANTS:-none log relay commit}"
declare -A TPS
echo "PostgreSQL $(q 'SHOW server_version'), fsync $(q 'SHOW fsync'), synchronous_commit $(q 'SHOW synchronous_commit'); $(nproc) cores; ${SECS}s per run, $ROUNDS rounds, $STREAMS streams on the gateway"
# shellcheck disable=SC2086 # the variants are words (and no globs)
set -f; set -- $VARIANTS; set +f
[ $# -gt 0 ] || { echo "VARIANTS is empty" >&2; exit 1; }
for r in $(seq "$ROUNDS"); do
    for v in "$@"; do
        variant "$v"
        for c in $WRITERS; do
            g0=$(gw_ticks 2>/dev/null || echo 0); b0=$(backends)
            t=$(run "$c")
            g1=$(gw_ticks 2>/dev/null || echo 0); b1=$(backends)
            TPS[$v,$c]="${TPS[$v,$c]:-} $t"
            # What relaying costs while the writers run: the gateway and its backends.
            cost=""
            [ "$v" = relay ] && cost=$(awk -v g=$((g1 - g0)) -v hz="$HZ" -v s="$SECS" 'BEGIN { printf "  (gateway %.1f%% of a core;", 100 * g / hz / s }')$(backend_cpu "$b0" "$b1" "$SECS")")"
            echo "round $r  $v  $c writers: $t tps$cost"
        done
    done
    # The next round starts one variant later.
    set -- "${@:2}" "$1"
done
stop_gateway

median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
echo
echo "| writers | no trigger | log only (relay, no gateway) | relay (gateway relaying) | commit | relay / log only | relay / commit | log only / no trigger |"
echo "|---|---|---|---|---|---|---|---|"
for c in $WRITERS; do
    declare -A M
    for v in $VARIANTS; do M[$v]=$(echo "${TPS[$v,$c]}" | median); done
    # A variant left out of VARIANTS shows as 0, and the ratios that need it as "-".
    awk -v c="$c" -v n="${M[none]:-0}" -v l="${M[log]:-0}" -v r="${M[relay]:-0}" -v m="${M[commit]:-0}" '
        function ratio(a, b, unit) { return (a > 0 && b > 0) ? sprintf("%.2f%s", a / b, unit) : "-" }
        BEGIN { printf "| %s | %d | %d | %d | %d | %s | %s | %s |\n", c, n, l, r, m,
                       ratio(r, l, ""), ratio(r, m, "x"), ratio(l, n, "") }'
done

# Each log:FILE variant against log only and no trigger (medians of the same rounds).
if [[ " $VARIANTS " == *" log:"* ]]; then
    echo
    echo "| writers | variant | tps | / log only | / no trigger |"
    echo "|---|---|---|---|---|"
    for c in $WRITERS; do
        n=$(echo "${TPS[none,$c]:-}" | median); l=$(echo "${TPS[log,$c]:-}" | median)
        for v in $VARIANTS; do
            [[ "$v" == log:* ]] || continue
            awk -v c="$c" -v v="log + $(basename "${v#log:}" .sql)" -v t="$(echo "${TPS[$v,$c]}" | median)" \
                -v l="${l:-0}" -v n="${n:-0}" '
                function ratio(a, b) { return (a > 0 && b > 0) ? sprintf("%.2f", a / b) : "-" }
                BEGIN { printf "| %s | %s | %d | %s | %s |\n", c, v, t, ratio(t, l), ratio(t, n) }'
        done
    done
fi

# ---- Idle: what PostgreSQL spends with a gateway and no writes ------------------------------
echo
[ "$IDLE_SECS" -gt 0 ] || exit 0
for v in log relay commit; do
    variant "$v"
    sleep 2
    p0=$(pg_ticks); g0=0; [ -n "$GW_PID" ] && g0=$(gw_ticks)
    b0=$(backends)
    sleep "$IDLE_SECS"
    p1=$(pg_ticks); g1=0; [ -n "$GW_PID" ] && g1=$(gw_ticks)
    b1=$(backends)
    what="$v mode, a gateway with $STREAMS streams"; [ "$v" = log ] && what="no gateway"
    awk -v m="$what" -v p=$((p1 - p0)) -v g=$((g1 - g0)) -v hz="$HZ" -v s="$IDLE_SECS" 'BEGIN {
        printf "idle %d s, no writes, %s: PostgreSQL %.2f%% of a core, gateway %.2f%%\n", s, m, 100 * p / hz / s, 100 * g / hz / s }'
    # Per backend of the gateway (a backend present at both ends).
    [ -n "$GW_PID" ] && echo "  per backend:$(backend_cpu "$b0" "$b1" "$IDLE_SECS")"
done
