#!/usr/bin/env bash
# The full benchmark: pgsse vs nginx + nchan vs an in-app Node server, on this machine.
# Installs what it needs (Debian packages, npm ci), builds release, and runs `pgsse-bench all`,
# which starts a throwaway PostgreSQL, runs every workload against every system, and writes the
# results into BENCHMARKS.md (between the results markers). Takes about 9 minutes on 2 cores.
# Extra arguments go to `pgsse-bench all` (e.g. --systems pgsse --skip-big). The run is in commit
# mode unless they say otherwise (--notify-mode relay): the Node server only LISTENs, so it needs
# the app's transactions to NOTIFY, and both gateways then get the very same payloads.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
[ -f /usr/lib/nginx/modules/ngx_nchan_module.so ] || need+=(libnginx-mod-nchan)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
command -v node >/dev/null 2>&1 || need+=(nodejs npm)
command -v heaptrack >/dev/null 2>&1 || need+=(heaptrack)
[ -f /usr/lib/x86_64-linux-gnu/libjemalloc.so.2 ] || need+=(libjemalloc2)
[ -f /usr/lib/x86_64-linux-gnu/libmimalloc.so.2 ] || need+=(libmimalloc2.0)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "benches/run.sh: please install: sudo apt-get install ${need[*]}" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
if ! command -v initdb >/dev/null 2>&1; then
  bindir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
  [ -n "$bindir" ] || { echo "benches/run.sh: install PostgreSQL (apt-get install postgresql)" >&2; exit 1; }
  export PATH="$bindir:$PATH"
fi
(cd benches/node && npm ci --no-audit --no-fund --loglevel=error)
cargo build --release -p pgsse -p pgsse-bench --bins

# One process may hold at most 20,000 open files here; the tool raises its soft limit to the hard one.
mode=(--notify-mode commit)
for a in "$@"; do case "$a" in --notify-mode|--notify-mode=*) mode=() ;; esac; done
exec ./target/release/pgsse-bench all --report BENCHMARKS.md --json target/bench-results.json \
  --command "benches/run.sh${*:+ $*}" "${mode[@]}" "$@"
