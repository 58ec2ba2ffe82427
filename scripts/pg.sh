#!/usr/bin/env bash
# Finds or starts a private PostgreSQL cluster from the installed binaries.
#   scripts/pg.sh ensure DIR PORT [logical]
#                                   start (initdb first if needed); print its URL;
#                                   with "logical", start it with wal_level=logical
#                                   (what shape sync needs) and room for slots
#   scripts/pg.sh stop DIR          stop it (fast shutdown)
#   scripts/pg.sh restart DIR       restart it
# Installs the Debian postgresql package with apt-get when no binaries exist.
# Runs the server as the postgres user when invoked as root (initdb refuses root).
set -euo pipefail

bindir() {
  local d
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    [ -x "$d/initdb" ] && { echo "$d"; return; }
  done
  command -v initdb >/dev/null 2>&1 && { dirname "$(command -v initdb)"; return; }
  return 1
}

install_pg() {
  echo "pg.sh: no PostgreSQL binaries found; installing the postgresql package" >&2
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq postgresql >&2
}

as_pg() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

cmd=${1:?usage: pg.sh ensure DIR PORT | stop DIR | restart DIR}
dir=${2:?missing DIR}
if [ "$cmd" = stop ]; then
  # Stopping needs no installation and creates nothing.
  if [ ! -f "$dir/PG_VERSION" ]; then
    echo "pg.sh: no private cluster in $dir" >&2; exit 0
  fi
  bin=$(bindir) || { echo "pg.sh: no PostgreSQL binaries to stop $dir with" >&2; exit 1; }
  dir=$(cd "$dir" && pwd)
  if as_pg "$bin/pg_ctl" -D "$dir" status >/dev/null 2>&1; then
    as_pg "$bin/pg_ctl" -D "$dir" -m fast -w stop >/dev/null
    echo "pg.sh: stopped the private cluster in $dir" >&2
  else
    echo "pg.sh: the private cluster in $dir is not running" >&2
  fi
  exit 0
fi
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
bin=$(bindir) || { install_pg; bin=$(bindir); }

case "$cmd" in
ensure)
  port=${3:?missing PORT}
  opts="-p $port -k $dir -c listen_addresses=127.0.0.1 -c max_connections=300"
  if [ "${4:-}" = logical ]; then
    opts="$opts -c wal_level=logical -c max_replication_slots=64 -c max_wal_senders=64"
  fi
  # Test packages run in parallel and may all find no cluster at once: one
  # of them starts it, the others wait for that and reuse it.
  exec 9>"$dir.lock"
  flock 9
  if [ "$(id -u)" -eq 0 ]; then chown postgres:postgres "$dir"; fi
  if [ ! -f "$dir/PG_VERSION" ]; then
    as_pg "$bin/initdb" -D "$dir" -U postgres --auth=trust -E UTF8 --no-sync >"$dir.initdb.log" 2>&1 ||
      { cat "$dir.initdb.log" >&2; exit 1; }
  fi
  if ! as_pg "$bin/pg_ctl" -D "$dir" status >/dev/null 2>&1; then
    # Another server (another checkout's private cluster, say) on the port
    # would make the start fail with only a log line: say so plainly.
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "pg.sh: port $port is taken by another server, so the private cluster in $dir cannot start; stop that server (for another checkout's cluster: make stop there) or free the port" >&2
      exit 1
    fi
    as_pg "$bin/pg_ctl" -D "$dir" -w -t 60 -l "$dir/server.log" \
      -o "$opts" start >&2 9>&- ||
      { tail -n 20 "$dir/server.log" >&2; exit 1; }
  fi
  echo "postgres://postgres@127.0.0.1:$port/postgres?sslmode=disable"
  ;;
restart)
  as_pg "$bin/pg_ctl" -D "$dir" -m fast -w -t 60 -l "$dir/server.log" restart >&2 9>&-
  ;;
*)
  echo "pg.sh: unknown command $cmd" >&2; exit 2 ;;
esac
