#!/usr/bin/env bash
# Runs the Go tests. Under CAPSULE_TEST_STRICT=1 a skipped test is a failure
# (every test must really run in CI); testenv.Skip already fails in that
# mode, and this catches any plain t.Skip too. The VM packages take minutes
# under TCG (the sandbox package with its fault injection about ten): the
# timeout is 30 minutes per package.
set -uo pipefail
cd "$(dirname "$0")/.."
log=$(mktemp)
trap 'rm -f "$log"' EXIT
go test -v -timeout 30m "$@" ./... 2>&1 | tee "$log" | grep --line-buffered -E '^(--- |ok |FAIL|panic:|\s+\S+\.go:[0-9]+: |\s+(> |FAIL: |\[stdout\]|\[stderr\]|\[exit status))'
rc=${PIPESTATUS[0]}
pass=$(grep -c -- '--- PASS' "$log")
fail=$(grep -c -- '--- FAIL' "$log")
skip=$(grep -c -- '--- SKIP' "$log")
if [ "${CAPSULE_TEST_STRICT:-}" = 1 ] && [ "$skip" != 0 ]; then
  echo "gotest: $skip skipped test(s) under CAPSULE_TEST_STRICT=1:" >&2
  grep -A1 -- '--- SKIP' "$log" >&2
  rc=1
fi
# The whole output of each failing top-level test (the filter above keeps
# only its summary lines), without the VMMs' debug lines, at most 150
# lines of it each.
if [ "$fail" != 0 ]; then
  for name in $(grep -oE '^--- FAIL: [A-Za-z0-9_]+' "$log" | awk '{print $3}' | sort -u); do
    echo "gotest: output of $name:"
    awk -v n="$name" '$0 == "=== RUN   " n {on=1} on && !/level=DEBUG/ {print} on && index($0, "--- FAIL: " n " ") == 1 {on=0}' "$log" | tail -150
  done
fi
echo "go: $pass passed, $fail failed, $skip skipped"
exit "$rc"
