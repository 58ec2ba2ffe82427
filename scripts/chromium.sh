#!/usr/bin/env bash
# Finds Debian's headless-capable Chromium, installing the `chromium` package
# with apt-get when it is missing, and prints its path. The browser tests
# drive this binary through playwright-core; no browser is ever downloaded
# any other way.
#   scripts/chromium.sh            print the path (installing first if needed)
set -euo pipefail

find_chromium() {
  local c
  for c in "${PULLWAKE_CHROMIUM:-}" /usr/bin/chromium /usr/bin/chromium-browser; do
    [ -n "$c" ] && [ -x "$c" ] && { echo "$c"; return; }
  done
  return 1
}

if path=$(find_chromium); then echo "$path"; exit 0; fi

echo "chromium.sh: no Chromium found; installing the Debian chromium package" >&2
sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
# One install at a time when several test processes get here together.
exec 9>/tmp/pullwake-chromium-install.lock
flock 9
if path=$(find_chromium); then echo "$path"; exit 0; fi
$sudo apt-get update -qq >&2
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends chromium >&2
find_chromium || { echo "chromium.sh: the chromium package installed no /usr/bin/chromium" >&2; exit 1; }
