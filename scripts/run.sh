#!/usr/bin/env bash
# make run: find or start PostgreSQL, migrate, serve.
#   DATABASE_URL (or PULLWAKE_DATABASE_URL) names a database to use;
#   else the PostgreSQL on 127.0.0.1:5432 (user postgres, database pullwake,
#   created when missing) when it answers, as the tests do;
#   else a private cluster under .data/pg (port 55432, wal_level=logical for
#   shape sync), started here:
#   `make stop` stops it, `make clean` removes it.
#   PULLWAKE_RUN_PRIVATE=1 skips 127.0.0.1:5432 and uses the private cluster.
# The server itself logs "pullwake serving" once its port is bound; a port
# in use is an error that names --addr / PULLWAKE_ADDR.
set -euo pipefail
cd "$(dirname "$0")/.."

# ensure_db ADMIN_URL: create the database pullwake on that server if missing.
ensure_db() {
  local admin=$1
  if ! psql "$admin" -tAXc "SELECT 1 FROM pg_database WHERE datname = 'pullwake'" | grep -q 1; then
    psql "$admin" -qXc "CREATE DATABASE pullwake"
  fi
}

# local_pg_answers: whether PostgreSQL answers on 127.0.0.1:5432 (three tries:
# a busy server may miss one).
local_pg_answers() {
  command -v pg_isready >/dev/null 2>&1 || return 1
  local i
  for i in 1 2 3; do
    pg_isready -q -h 127.0.0.1 -p 5432 -t 2 && return 0
    sleep 1
  done
  return 1
}

url=${PULLWAKE_DATABASE_URL:-${DATABASE_URL:-}}
given_url=$url
if [ -n "$url" ]; then
  echo "make run: using the database named by ${PULLWAKE_DATABASE_URL:+PULLWAKE_}DATABASE_URL"
elif [ "${PULLWAKE_RUN_PRIVATE:-}" != "1" ] && local_pg_answers; then
  admin="postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"
  ensure_db "$admin" || {
    echo "make run: PostgreSQL answers on 127.0.0.1:5432 but user postgres cannot use it; set DATABASE_URL, or PULLWAKE_RUN_PRIVATE=1 for a private cluster" >&2
    exit 1
  }
  url="postgres://postgres@127.0.0.1:5432/pullwake?sslmode=disable"
  echo "make run: using the PostgreSQL on 127.0.0.1:5432, database pullwake"
else
  echo "make run: no PostgreSQL answers on 127.0.0.1:5432: starting a private cluster in .data/pg (port 55432; make stop stops it, make clean removes it)"
  admin=$(scripts/pg.sh ensure .data/pg 55432 logical)
  ensure_db "$admin"
  url="postgres://postgres@127.0.0.1:55432/pullwake?sslmode=disable"
  echo "make run: using the private PostgreSQL cluster in .data/pg, database pullwake"
fi
export PULLWAKE_DATABASE_URL="$url"
# Shape sync (docs/shapes.md) needs wal_level=logical; everything else works without it.
if level=$(psql "$url" -tAXc "SHOW wal_level" 2>/dev/null) && [ "$level" != logical ]; then
  if [ -n "$given_url" ]; then hint="set wal_level = logical on that server and restart it"
  else hint="PULLWAKE_RUN_PRIVATE=1 uses a private cluster that has it"; fi
  echo "make run: this database has wal_level=$level: shape sync (/v1/shape) will answer 503 until it is logical; $hint"
fi
bin/pullwake migrate up
addr=${PULLWAKE_ADDR:-127.0.0.1:8080}
cat <<MSG
make run: starting $(bin/pullwake version) on $addr; once it logs "pullwake serving":
  curl -s http://$addr/healthz
  (the README walks through a whole claim cycle; the API reference is api/openapi.yaml)
MSG
exec bin/pullwake serve
