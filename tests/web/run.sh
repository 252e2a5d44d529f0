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
say() { echo "web: $*" >&2; }
die() {
	echo "web: FAIL: $*" >&2
	exit 1
}
prereq() {
	[[ ${CAPSULE_TEST_STRICT:-} == 1 ]] && die "$* (CAPSULE_TEST_STRICT=1)"
	say "SKIP: $*"
	exit 0
}

[[ $(id -u) -eq 0 ]] || prereq "must run as root (capsule serve runs VMs)"
chromium=${CHROMIUM:-/usr/bin/chromium}
[[ -x $chromium ]] || prereq "chromium is not installed (apt package chromium; scripts/deps.sh installs it)"
for tool in node npm curl qemu-system-x86_64; do
	command -v "$tool" >/dev/null 2>&1 || prereq "required tool '$tool' is not installed"
done
capsule=${CAPSULE_BIN:-$root/bin/capsule}
[[ -x $capsule && -x $(dirname "$capsule")/envd ]] || die "$capsule (and envd next to it) not built: run make build"
# The binary must embed the dashboard (make build does, through scripts/webui.sh).
[[ -f $root/internal/webui/dist/index.html ]] || die "the dashboard is not built: run make build"

lock_hash=$(cat "$here/package.json" "$here/package-lock.json" | sha256sum | cut -d' ' -f1)
stamp="$here/node_modules/.capsule-lock.sha256"
if [[ ! -d $here/node_modules || ! -f $stamp || $(cat "$stamp") != "$lock_hash" ]]; then
	say "installing node dependencies (npm ci)"
	(cd "$here" && npm ci --ignore-scripts --prefer-offline --no-audit --no-fund --loglevel=error)
	echo "$lock_hash" >"$stamp"
fi

work=$(mktemp -d /tmp/capsule-web-XXXXXX)
chmod 755 "$work" # the embedded PostgreSQL runs as its own user
log="$work/serve.log"
free_port() { node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})'; }
port=$(free_port)
sandbox_port=$(free_port)
while [[ $sandbox_port == "$port" ]]; do sandbox_port=$(free_port); done
serve_pid=
cleanup() {
	local rc=$? i
	trap - EXIT INT TERM
	if [[ -n $serve_pid ]] && kill -0 "$serve_pid" 2>/dev/null; then
		kill -TERM "$serve_pid" 2>/dev/null || true
		for ((i = 0; i < 600; i++)); do
			kill -0 "$serve_pid" 2>/dev/null || break
			sleep 0.1
		done
		kill -KILL "$serve_pid" 2>/dev/null || true
		wait "$serve_pid" 2>/dev/null || true
	fi
	if ((rc != 0)); then
		echo "----- last 60 lines of the serve log ($log) -----" >&2
		tail -n 60 "$log" >&2 || true
	fi
	if pgrep -f "qemu-system.*$work" >/dev/null; then
		echo "web: FAIL: VMMs left running" >&2
		rc=1
	fi
	if ip netns list 2>/dev/null | grep -q '^capsule-web-'; then
		echo "web: FAIL: network namespaces left: $(ip netns list | grep '^capsule-web-' | tr '\n' ' ')" >&2
		rc=1
	fi
	((rc != 0)) || rm -rf "$work"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

say "starting capsule serve on 127.0.0.1:$port (data $work, log $log)"
"$capsule" serve -listen "127.0.0.1:$port" -sandbox-listen "127.0.0.1:$sandbox_port" -data-dir "$work/data" -run-dir "$work/run" \
	-images-dir "${CAPSULE_IMAGES_DIR:-/var/lib/capsule}" -domain capsule.test -signup invite \
	-net-name capsule-web -net-host-cidr 198.18.194.0/24 -net-link-cidr 198.18.195.0/24 -net-max-slots 16 \
	-max-vcpus 16 -cpu-overcommit 8 -max-memory-mb 8192 >"$log" 2>&1 &
serve_pid=$!
for ((i = 0; i < 3000; i++)); do # the first start builds the base image (about a minute)
	kill -0 "$serve_pid" 2>/dev/null || die "capsule serve exited during startup"
	curl -fsS -o /dev/null --max-time 1 "http://127.0.0.1:$port/healthz" 2>/dev/null && break
	sleep 0.1
done
curl -fsS -o /dev/null --max-time 1 "http://127.0.0.1:$port/healthz" || die "capsule serve did not become healthy in 5 minutes"
say "capsule serve is up"

if [[ ${1:-} == bench ]]; then
	(cd "$here" && CAPSULE_URL="http://127.0.0.1:$port" CAPSULE_ADMIN_FILE="$work/data/admin.json" CHROMIUM="$chromium" \
		NODE_NO_WARNINGS=1 node bench.mjs)
	exit 0
fi

shots="$root/.ci-artifacts/screenshots"
rm -rf "$shots"
mkdir -p "$shots"
tap="$work/results.tap"
node_args=(--test --test-concurrency=1
	--test-reporter=spec --test-reporter-destination=stdout
	--test-reporter=tap --test-reporter-destination="$tap")
[[ -n ${WEB_TEST_NAME:-} ]] && node_args+=(--test-name-pattern="$WEB_TEST_NAME")
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
echo
echo "# web summary (TAP: $tap; screenshots: $shots)"
grep -E '^# (tests|suites|pass|fail|cancelled|skipped|todo|duration_ms) ' "$tap" || true
kill -0 "$serve_pid" 2>/dev/null || die "capsule serve died while the suite was running"
((test_rc == 0)) || die "node --test exited with status $test_rc"
skipped=$(sed -n 's/^# skipped \([0-9]*\)$/\1/p' "$tap" | tail -n 1)
if [[ ${CAPSULE_TEST_STRICT:-} == 1 && ${skipped:-0} != 0 ]]; then
	die "$skipped test(s) skipped under CAPSULE_TEST_STRICT=1"
fi
