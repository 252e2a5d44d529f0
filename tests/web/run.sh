#!/usr/bin/env bash
# Runs the dashboard's browser suite: a real `capsule serve` (its own
# embedded PostgreSQL in a temporary data directory, its own network slot
# pool, real VMs) with the dashboard embedded, driven by Debian's chromium
# through playwright-core (pinned in tests/web/package-lock.json), with an
# axe-core scan of every page. Screenshots of every page at a laptop and a
# phone width go to .ci-artifacts/screenshots (CI keeps that directory).
#
#   bash tests/web/run.sh [node --test arguments]
#   bash tests/web/run.sh bench     the budgets instead (bench.mjs): one JSON object
#
# Environment:
#   CAPSULE_BIN           the capsule binary (default bin/capsule; envd next to it)
#   CAPSULE_IMAGES_DIR    the guest image store to share (default /var/lib/capsule)
#   CHROMIUM              the browser (default /usr/bin/chromium)
#   CAPSULE_TEST_STRICT=1 a missing prerequisite is a failure instead of a SKIP
#   WEB_TEST_NAME         only run tests whose name matches (node --test-name-pattern)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
suite=web
# shellcheck source=../lib/serve.sh
source "$root/tests/lib/serve.sh"

chromium=${CHROMIUM:-/usr/bin/chromium}
[[ $(id -u) -eq 0 ]] || prereq "must run as root (capsule serve runs VMs)"
[[ -x $chromium ]] || prereq "chromium is not installed (apt package chromium; scripts/deps.sh installs it)"
require_serve_tools
# The binary must embed the dashboard (make build does, through scripts/webui.sh).
[[ -f $root/internal/webui/dist/index.html ]] || die "the dashboard is not built: run make build"
node_deps "$here" --ignore-scripts
start_serve capsule-web 198.18.194.0/24 198.18.195.0/24 16 -signup invite -max-vcpus 16 -max-memory-mb 8192

if [[ ${1:-} == bench ]]; then
	(cd "$here" && CAPSULE_URL="http://127.0.0.1:$port" CAPSULE_ADMIN_FILE="$work/data/admin.json" CHROMIUM="$chromium" \
		NODE_NO_WARNINGS=1 node bench.mjs)
	exit 0
fi

shots="$root/.ci-artifacts/screenshots"
rm -rf "$shots"
mkdir -p "$shots"
tap="$work/results.tap"
node_test_args "$tap" "${WEB_TEST_NAME:-}"
if (($# > 0)); then
	node_args+=("$@")
else
	node_args+=("$here"/*.test.mjs)
fi
set +e
(
	cd "$here" &&
		CAPSULE_URL="http://127.0.0.1:$port" CAPSULE_ADMIN_FILE="$work/data/admin.json" CHROMIUM="$chromium" \
			SCREENSHOT_DIR="$shots" NODE_NO_WARNINGS=1 node "${node_args[@]}"
)
test_rc=$?
set -e
echo "screenshots: $shots"
verdict "$tap" "$test_rc"
