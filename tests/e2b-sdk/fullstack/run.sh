#!/usr/bin/env bash
# Runs the full-stack E2B JS SDK suite: a real `capsule serve` (its own
# embedded PostgreSQL in a temporary data directory, its own network slot
# pool, real VMs) driven by the unmodified npm e2b@2.51.0 through
# E2B_API_URL (the API listener) / E2B_SANDBOX_URL (the sandbox traffic
# listener, -sandbox-listen) / E2B_DOMAIN, exactly as a user points the SDK
# at a Capsule server.
#
#   bash tests/e2b-sdk/fullstack/run.sh [node --test arguments]
#
# Environment:
#   CAPSULE_BIN           the capsule binary (default bin/capsule; envd next to it)
#   CAPSULE_IMAGES_DIR    the guest image store to share (default /var/lib/capsule)
#   CAPSULE_TEST_STRICT=1 a missing prerequisite is a failure instead of a SKIP
#   E2B_SDK_TEST_NAME     only run tests whose name matches (node --test-name-pattern)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
sdk="$(cd "$here/.." && pwd)"
root="$(cd "$sdk/../.." && pwd)"
suite="e2b-sdk fullstack"
# shellcheck source=../../lib/serve.sh
source "$root/tests/lib/serve.sh"

require_serve_tools
node_deps "$sdk" # the debug suite's dependencies
start_serve capsule-sdk 198.18.112.0/24 198.18.113.0/24 32 -max-vcpus 16 -max-memory-mb 8192
key=$(node -e 'console.log(JSON.parse(require("fs").readFileSync(process.argv[1])).api_key)' "$work/data/admin.json")

tap="$work/results.tap"
node_test_args "$tap" "${E2B_SDK_TEST_NAME:-}"
if (($# > 0)); then
	for arg in "$@"; do
		[[ $arg != -* && -e $arg ]] && arg=$(realpath "$arg")
		node_args+=("$arg")
	done
else
	node_args+=("$here"/*.test.mjs)
fi
set +e
(
	cd "$here" &&
		env -u E2B_DEBUG -u E2B_ACCESS_TOKEN \
			E2B_API_URL="http://127.0.0.1:$port" E2B_SANDBOX_URL="http://127.0.0.1:$sandbox_port" \
			E2B_DOMAIN=capsule.test E2B_API_KEY="$key" CAPSULE_URL="http://127.0.0.1:$port" \
			NODE_NO_WARNINGS=1 node "${node_args[@]}"
)
test_rc=$?
set -e
verdict "$tap" "$test_rc"
