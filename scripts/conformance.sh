#!/usr/bin/env bash
# make conformance: runs the pinned Durable Streams conformance suite
# (../shared/conformance/durable-streams.sh, or $DS_CONFORMANCE_SCRIPT)
# against `pullwake serve` on a fresh database, and fails when fewer tests
# pass than the threshold (the figure reached: the whole suite).
#   scripts/conformance.sh [MIN_PASSED]     (default $CONFORMANCE_MIN, else 332)
# Needs node/npm (the suite installs itself into a cache folder) and
# PostgreSQL (found or started like the tests: scripts/testdb-url.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
min=${1:-${CONFORMANCE_MIN:-332}}
# The runner lives beside the repository in the workplace (../shared), not
# in it; a clone elsewhere finds it at its absolute place.
suite=${DS_CONFORMANCE_SCRIPT:-}
if [ -z "$suite" ]; then
  for c in ../shared/conformance/durable-streams.sh /work/shared/conformance/durable-streams.sh; do
    [ -x "$c" ] && { suite=$c; break; }
  done
fi
[ -n "$suite" ] && [ -x "$suite" ] || {
  cat >&2 <<'MSG'
conformance: the suite runner (durable-streams.sh) is not in this repository and was not
found beside it (../shared/conformance, /work/shared/conformance). To get the suite itself:
it is the public npm package @durable-streams/server-conformance-tests, version 0.3.6
(npm install it, then run its runConformanceTests({baseUrl}) under vitest against the
server's root URL). Point DS_CONFORMANCE_SCRIPT at an executable that does so, called as
  SCRIPT BASE_URL --verbose
and prints the line "conformance: N passed, M failed".
MSG
  exit 2
}

make -s build
admin=$(scripts/testdb-url.sh)
db="pw_conformance_$$"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
psql "$admin" -qXc "CREATE DATABASE $db" >/dev/null
url=$(echo "$admin" | sed -E "s#/postgres(\?|$)#/$db\1#")
log=$(mktemp -t pullwake-conformance.XXXXXX.log)
pid=
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
  psql "$admin" -qXc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null || true
}
trap cleanup EXIT

# No admin token: the suite creates and deletes streams anonymously. A short
# long-poll timeout: the suite's long-poll tests wait at most 5 s.
env -u PULLWAKE_ADMIN_TOKEN PULLWAKE_DATABASE_URL="$url" PULLWAKE_ADDR="127.0.0.1:$port" \
  PULLWAKE_LONG_POLL_TIMEOUT=2s PULLWAKE_LOG_LEVEL=warn bin/pullwake serve >"$log" 2>&1 &
pid=$!
for _ in $(seq 1 100); do
  curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break
  kill -0 "$pid" 2>/dev/null || { echo "conformance: pullwake serve exited; log:" >&2; cat "$log" >&2; exit 2; }
  sleep 0.1
done

# (Not `tee /dev/stderr`: reopening a log file that stderr points to
# truncates it, and CI's log lost everything before this step.)
out=$("$suite" "http://127.0.0.1:$port" --verbose)
printf '%s\n' "$out"
passed=$(echo "$out" | sed -nE 's/^conformance: ([0-9]+) passed.*/\1/p')
[ -n "$passed" ] || { echo "conformance: no result" >&2; exit 2; }
if [ "$passed" -lt "$min" ]; then
  echo "conformance: $passed passed, below the threshold of $min (server log: $log)" >&2
  exit 1
fi
echo "conformance: $passed passed (threshold $min)"
