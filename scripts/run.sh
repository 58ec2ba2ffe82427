#!/usr/bin/env bash
# make run: find or start PostgreSQL, migrate, serve.
# DATABASE_URL (or PULLWAKE_DATABASE_URL) names a running server to use;
# without it a private cluster lives under .data/pg (port 55432).
set -euo pipefail
cd "$(dirname "$0")/.."
url=${PULLWAKE_DATABASE_URL:-${DATABASE_URL:-}}
if [ -z "$url" ]; then
  admin=$(scripts/pg.sh ensure .data/pg 55432)
  if ! psql "$admin" -tAXc "SELECT 1 FROM pg_database WHERE datname = 'pullwake'" | grep -q 1; then
    psql "$admin" -qXc "CREATE DATABASE pullwake"
  fi
  url="postgres://postgres@127.0.0.1:55432/pullwake?sslmode=disable"
  echo "make run: using the private PostgreSQL cluster in .data/pg ($url)"
fi
export PULLWAKE_DATABASE_URL="$url"
bin/pullwake migrate up
addr=${PULLWAKE_ADDR:-127.0.0.1:8080}
cat <<MSG
make run: pullwake serving on http://$addr
  try:  curl -s http://$addr/healthz
        curl -s -X PUT http://$addr/entities/chat/42 -H 'content-type: application/json' -d '{}'
  (the README walks through a whole claim cycle with curl)
MSG
exec bin/pullwake serve
