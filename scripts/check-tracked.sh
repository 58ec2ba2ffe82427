#!/usr/bin/env bash
# Fails when git tracks a build output: an executable binary (ELF) or any
# file over 1 MB. Build outputs go to bin/ (ignored); a committed binary is
# always older than the code next to it.
set -euo pipefail
cd "$(dirname "$0")/.."
bad=0
while IFS= read -r -d '' f; do
  [ -f "$f" ] || continue
  size=$(stat -c %s "$f")
  if [ "$size" -gt 1048576 ]; then
    echo "tracked file over 1 MB: $f ($size bytes)" >&2; bad=1
  elif [ "$(head -c 4 "$f" | od -An -c | tr -d ' ')" = '177ELF' ]; then
    echo "tracked executable: $f" >&2; bad=1
  fi
done < <(git ls-files -z)
if [ "$bad" -ne 0 ]; then
  echo "remove them from git (git rm --cached FILE) and ignore them" >&2
  exit 1
fi
