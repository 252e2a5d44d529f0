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
say() { echo "e2b-sdk fullstack: $*"; }
die() {
	echo "e2b-sdk fullstack: FAIL: $*" >&2
	exit 1
}
prereq() {
	[[ ${CAPSULE_TEST_STRICT:-} == 1 ]] && die "$* (CAPSULE_TEST_STRICT=1)"
	say "SKIP: $*"
	exit 0
}

[[ $(id -u) -eq 0 ]] || prereq "must run as root (capsule serve runs VMs)"
for tool in node npm curl qemu-system-x86_64; do
	command -v "$tool" >/dev/null 2>&1 || prereq "required tool '$tool' is not installed"
done
capsule=${CAPSULE_BIN:-$root/bin/capsule}
[[ -x $capsule && -x $(dirname "$capsule")/envd ]] || die "$capsule (and envd next to it) not built: run make build"

# node dependencies (the debug suite's; reinstalled when the lock changes)
lock_hash=$(cat "$sdk/package.json" "$sdk/package-lock.json" | sha256sum | cut -d' ' -f1)
stamp="$sdk/node_modules/.capsule-lock.sha256"
if [[ ! -d $sdk/node_modules || ! -f $stamp || $(cat "$stamp") != "$lock_hash" ]]; then
	say "installing node dependencies (npm ci)"
	(cd "$sdk" && npm ci --prefer-offline --no-audit --no-fund --loglevel=error)
	echo "$lock_hash" >"$stamp"
fi

work=$(mktemp -d /tmp/capsule-sdk-XXXXXX)
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
	# Nothing of the server may be left: VMMs, network namespaces.
	if pgrep -f "qemu-system.*$work" >/dev/null; then
		echo "e2b-sdk fullstack: FAIL: VMMs left running" >&2
		rc=1
	fi
	if ip netns list 2>/dev/null | grep -q '^capsule-sdk-'; then
		echo "e2b-sdk fullstack: FAIL: network namespaces left: $(ip netns list | grep '^capsule-sdk-' | tr '\n' ' ')" >&2
		rc=1
	fi
	((rc != 0)) || rm -rf "$work"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

say "starting capsule serve on 127.0.0.1:$port, sandbox traffic on 127.0.0.1:$sandbox_port (data $work, log $log)"
"$capsule" serve -listen "127.0.0.1:$port" -sandbox-listen "127.0.0.1:$sandbox_port" -data-dir "$work/data" -run-dir "$work/run" \
	-images-dir "${CAPSULE_IMAGES_DIR:-/var/lib/capsule}" -domain capsule.test \
	-net-name capsule-sdk -net-host-cidr 198.18.112.0/24 -net-link-cidr 198.18.113.0/24 -net-max-slots 32 \
	-max-vcpus 16 -cpu-overcommit 8 -max-memory-mb 8192 >"$log" 2>&1 &
serve_pid=$!
for ((i = 0; i < 3000; i++)); do # the first start builds the base image (about a minute)
	kill -0 "$serve_pid" 2>/dev/null || die "capsule serve exited during startup"
	curl -fsS -o /dev/null --max-time 1 "http://127.0.0.1:$port/healthz" 2>/dev/null && break
	sleep 0.1
done
curl -fsS -o /dev/null --max-time 1 "http://127.0.0.1:$port/healthz" || die "capsule serve did not become healthy in 5 minutes"
key=$(node -e 'console.log(JSON.parse(require("fs").readFileSync(process.argv[1])).api_key)' "$work/data/admin.json")
say "capsule serve is up"

tap="$work/results.tap"
node_args=(--test --test-concurrency=1
	--test-reporter=spec --test-reporter-destination=stdout
	--test-reporter=tap --test-reporter-destination="$tap")
[[ -n ${E2B_SDK_TEST_NAME:-} ]] && node_args+=(--test-name-pattern="$E2B_SDK_TEST_NAME")
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
echo
echo "# e2b-sdk fullstack summary (TAP: $tap)"
grep -E '^# (tests|suites|pass|fail|cancelled|skipped|todo|duration_ms) ' "$tap" || true
kill -0 "$serve_pid" 2>/dev/null || die "capsule serve died while the suite was running"
((test_rc == 0)) || die "node --test exited with status $test_rc"
skipped=$(sed -n 's/^# skipped \([0-9]*\)$/\1/p' "$tap" | tail -n 1)
if [[ ${CAPSULE_TEST_STRICT:-} == 1 && ${skipped:-0} != 0 ]]; then
	die "$skipped test(s) skipped under CAPSULE_TEST_STRICT=1"
fi
