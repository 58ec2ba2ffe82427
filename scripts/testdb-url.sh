#!/usr/bin/env bash
# Prints the URL of a maintenance database to run tests and tools against:
# PULLWAKE_TEST_DATABASE_URL, else 127.0.0.1:5432 when it answers (unless
# PULLWAKE_TEST_PRIVATE=1), else a private cluster under .data/pgtest.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${PULLWAKE_TEST_DATABASE_URL:-}" ]; then echo "$PULLWAKE_TEST_DATABASE_URL"; exit 0; fi
url="postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"
if [ "${PULLWAKE_TEST_PRIVATE:-}" != "1" ] && command -v pg_isready >/dev/null 2>&1 &&
  pg_isready -q -h 127.0.0.1 -p 5432 -t 2; then
  echo "$url"; exit 0
fi
exec scripts/pg.sh ensure .data/pgtest 55433
