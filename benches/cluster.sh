# A throwaway PostgreSQL for one benchmark; sourced by the scripts beside it (run as root: the
# server runs as `postgres`).
#
# The app's table, as `pgsse demo` creates it: what every benchmark writes to.
NOTIFICATIONS_TABLE="CREATE TABLE notifications (id serial PRIMARY KEY, user_id text NOT NULL,
    type text NOT NULL DEFAULT 'info', title text NOT NULL DEFAULT '', message text NOT NULL DEFAULT '',
    read boolean NOT NULL DEFAULT false, metadata jsonb, created_at timestamptz NOT NULL DEFAULT now())"

# start_cluster DIR PORT MODE [CONF]: initdb in DIR/data, MODE `durable` (fsync and
# synchronous_commit on) or `fast` (both off, and initdb without syncing), 256MB of shared
# buffers, TCP on 127.0.0.1:PORT and a socket in DIR, then the lines CONF; starts it, and stops it
# and removes DIR when the script exits. Sets BIN (the server's bin directory) and U (its URL).
start_cluster() {
    local dir=$1 port=$2 mode=$3 conf=${4:-} sync=""
    BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
    chown postgres "$dir"
    [ "$mode" = durable ] || sync=--no-sync
    su postgres -c "$BIN/initdb -D $dir/data -U postgres --auth=trust $sync >/dev/null"
    local on=on; [ "$mode" = durable ] || on=off
    cat >> "$dir/data/postgresql.conf" <<C
fsync = $on
synchronous_commit = $on
shared_buffers = 256MB
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$dir'
$conf
C
    su postgres -c "$BIN/pg_ctl -D $dir/data -l $dir/log start -w >/dev/null"
    # shellcheck disable=SC2064 # expanded now: the directory of this cluster
    trap "su postgres -c '$BIN/pg_ctl -D $dir/data stop -m fast >/dev/null'; rm -rf '$dir'" EXIT
    U=postgres://postgres@127.0.0.1:$port/postgres
}
