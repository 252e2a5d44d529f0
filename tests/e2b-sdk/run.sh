#!/usr/bin/env bash
# Runs the E2B JS SDK suite (npm e2b@2.51.0, debug mode) against a locally
# built envd.
#
#   bash tests/e2b-sdk/run.sh [extra node --test arguments, e.g. a test file]
#
# Environment:
#   ENVD_BIN              use this envd binary instead of building ./cmd/envd
#   CAPSULE_TEST_STRICT=1 a missing prerequisite (not root, no node, no
#                         unshare) is a failure instead of a SKIP
#   E2B_SDK_TEST_NAME     only run tests whose name matches this pattern
#                         (node --test-name-pattern)
#
# envd runs as root in a private PID + mount namespace (envd-ns.sh) where the
# E2B `base` template's user `user` exists and /home, /tmp and /root are empty
# tmpfs; the host's /etc/passwd is never modified. Its log is kept in
# tests/e2b-sdk/.tmp/envd.log.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
state="$here/.tmp"
addr=127.0.0.1
port=49983
log="$state/envd.log"

say() { echo "e2b-sdk: $*"; }
die() {
	echo "e2b-sdk: FAIL: $*" >&2
	exit 1
}
prereq() {
	if [[ ${CAPSULE_TEST_STRICT:-} == 1 ]]; then
		die "$* (CAPSULE_TEST_STRICT=1)"
	fi
	say "SKIP: $*"
	exit 0
}

if [[ $(id -u) -ne 0 ]]; then
	prereq "must run as root: envd is started in a private mount namespace (unshare) to provide the E2B 'user' account"
fi
for tool in node npm unshare mount curl awk sha256sum; do
	command -v "$tool" >/dev/null 2>&1 || prereq "required tool '$tool' is not installed"
done
if ! unshare --mount --propagation private --pid --fork --mount-proc true 2>/dev/null; then
	prereq "unshare --mount --pid does not work here (no CAP_SYS_ADMIN?)"
fi
node_major=$(node -p 'process.versions.node.split(".")[0]')
((node_major >= 20)) || prereq "node >= 20 is required (found $(node --version))"

# The SDK's debug mode talks to localhost:49983 (IPv6 or IPv4): nothing else
# may answer there.
check_port() {
	local host
	for host in 127.0.0.1 ::1; do
		if (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; then
			die "port $port is already in use on $host (another envd?); the E2B SDK's debug mode only talks to localhost:$port"
		fi
	done
}
check_port

mkdir -p "$state"

# --- node dependencies (reinstalled when package-lock.json changes) --------
lock_hash=$(cat "$here/package.json" "$here/package-lock.json" | sha256sum | cut -d' ' -f1)
stamp="$here/node_modules/.capsule-lock.sha256"
if [[ ! -d $here/node_modules || ! -f $stamp || $(cat "$stamp") != "$lock_hash" ]]; then
	say "installing node dependencies (npm ci)"
	(cd "$here" && npm ci --prefer-offline --no-audit --no-fund --loglevel=error)
	echo "$lock_hash" >"$stamp"
fi

# --- envd binary ------------------------------------------------------------
if [[ -n ${ENVD_BIN:-} ]]; then
	envd_bin=$(realpath "$ENVD_BIN")
	[[ -x $envd_bin ]] || die "ENVD_BIN=$ENVD_BIN is not an executable file"
else
	command -v go >/dev/null 2>&1 || prereq "go is required to build envd (or set ENVD_BIN)"
	say "building envd"
	envd_bin="$state/envd"
	(cd "$root" && CGO_ENABLED=0 go build -o "$envd_bin" ./cmd/envd) || die "go build ./cmd/envd failed"
fi

# --- start envd -------------------------------------------------------------
check_port

# alive PID: the process exists and is not a zombie.
alive() {
	local st
	st=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
	[[ -n $st && $st != Z ]]
}

print_log() {
	echo "----- last 80 lines of envd log ($log) -----" >&2
	tail -n 80 "$log" >&2 || true
	echo "----- end of envd log -----" >&2
}

ns_pid=
cleanup() {
	local rc=$? init i
	trap - EXIT INT TERM
	if [[ -n $ns_pid ]] && alive "$ns_pid"; then
		# TERM the namespace's PID 1: it stops envd; leaving PID 1 kills the
		# rest of the namespace. unshare --kill-child SIGKILLs PID 1 should
		# unshare itself die first.
		init=$(cat "/proc/$ns_pid/task/$ns_pid/children" 2>/dev/null || true)
		for i in $init; do kill -TERM "$i" 2>/dev/null || true; done
		for ((i = 0; i < 100; i++)); do
			alive "$ns_pid" || break
			sleep 0.1
		done
		if alive "$ns_pid"; then
			kill -KILL "$ns_pid" 2>/dev/null || true
		fi
		wait "$ns_pid" 2>/dev/null || true
	fi
	if ((rc != 0)); then
		print_log
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

: >"$log"
unshare --mount --propagation private --pid --fork --kill-child --mount-proc \
	bash "$here/envd-ns.sh" "$envd_bin" "$state" "$addr" "$port" >>"$log" 2>&1 &
ns_pid=$!
say "envd starting (log: $log)"

ready=0
for ((i = 0; i < 150; i++)); do
	if ! alive "$ns_pid"; then
		die "envd exited during startup"
	fi
	if curl -fsS -o /dev/null --max-time 1 "http://$addr:$port/health" 2>/dev/null; then
		ready=1
		break
	fi
	sleep 0.1
done
((ready)) || die "envd did not answer GET /health on $addr:$port within 15s"
say "envd is up"

# --- run the suite ----------------------------------------------------------
tap="$state/results.tap"
node_args=(--test --test-concurrency=1
	--test-reporter=spec --test-reporter-destination=stdout
	--test-reporter=tap --test-reporter-destination="$tap")
if [[ -n ${E2B_SDK_TEST_NAME:-} ]]; then
	node_args+=(--test-name-pattern="$E2B_SDK_TEST_NAME")
fi
if (($# > 0)); then
	# node runs in $here: make paths given relative to the caller absolute.
	for arg in "$@"; do
		if [[ $arg != -* && -e $arg ]]; then
			arg=$(realpath "$arg")
		fi
		node_args+=("$arg")
	done
else
	node_args+=("$here"/*.test.mjs)
fi

set +e
(
	cd "$here" &&
		env -u E2B_SANDBOX_URL -u E2B_API_URL -u E2B_DOMAIN -u E2B_API_KEY -u E2B_ACCESS_TOKEN \
			E2B_DEBUG=true NODE_NO_WARNINGS=1 node "${node_args[@]}"
)
test_rc=$?
set -e

envd_ok=1
if ! alive "$ns_pid" || ! curl -fsS -o /dev/null --max-time 2 "http://$addr:$port/health" 2>/dev/null; then
	envd_ok=0
fi

echo
echo "# e2b-sdk summary (node --test, TAP: $tap)"
grep -E '^# (tests|suites|pass|fail|cancelled|skipped|todo|duration_ms) ' "$tap" || true

if ((envd_ok == 0)); then
	die "envd died while the suite was running"
fi
if ((test_rc != 0)); then
	die "node --test exited with status $test_rc"
fi
skipped=$(sed -n 's/^# skipped \([0-9]*\)$/\1/p' "$tap" | tail -n 1)
if [[ ${CAPSULE_TEST_STRICT:-} == 1 && ${skipped:-0} != 0 ]]; then
	grep -B2 '# SKIP' "$tap" >&2 || true
	die "$skipped test(s) skipped under CAPSULE_TEST_STRICT=1"
fi
