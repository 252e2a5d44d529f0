# shellcheck shell=bash
# The set-up every suite that drives a real `capsule serve` shares (the
# full-stack E2B SDK suite, the browser suite): prerequisites, node
# dependencies cached by their lock's hash, a server on free loopback ports
# with its own data directory, PostgreSQL and network pool, its clean-up
# (which fails the run when a VMM or a network namespace is left), and the
# TAP summary's verdict.
#
# Source it after setting suite (a name for messages) and root (the
# repository); it sets capsule, and start_serve sets work, log, port,
# sandbox_port and serve_pid.

say() { echo "$suite: $*" >&2; }
die() {
	echo "$suite: FAIL: $*" >&2
	exit 1
}
# prereq: a missing prerequisite skips the suite, or fails it under
# CAPSULE_TEST_STRICT=1.
prereq() {
	[[ ${CAPSULE_TEST_STRICT:-} == 1 ]] && die "$* (CAPSULE_TEST_STRICT=1)"
	say "SKIP: $*"
	exit 0
}

# require_serve_tools checks root, the tools every such suite needs and
# the built binaries (capsule: CAPSULE_BIN or bin/capsule, envd beside it).
require_serve_tools() {
	[[ $(id -u) -eq 0 ]] || prereq "must run as root (capsule serve runs VMs)"
	local tool
	for tool in node npm curl qemu-system-x86_64; do
		command -v "$tool" >/dev/null 2>&1 || prereq "required tool '$tool' is not installed"
	done
	capsule=${CAPSULE_BIN:-$root/bin/capsule}
	[[ -x $capsule && -x $(dirname "$capsule")/envd ]] || die "$capsule (and envd next to it) not built: run make build"
}

# node_deps DIR [npm ci arguments]: npm ci in DIR, again only when its
# package.json or lock changed.
node_deps() {
	local dir=$1
	shift
	local lock_hash stamp
	lock_hash=$(cat "$dir/package.json" "$dir/package-lock.json" | sha256sum | cut -d' ' -f1)
	stamp="$dir/node_modules/.capsule-lock.sha256"
	if [[ ! -d $dir/node_modules || ! -f $stamp || $(cat "$stamp") != "$lock_hash" ]]; then
		say "installing node dependencies (npm ci)"
		(cd "$dir" && npm ci "$@" --prefer-offline --no-audit --no-fund --loglevel=error)
		echo "$lock_hash" >"$stamp"
	fi
}

free_port() { node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})'; }

# start_serve NET HOST_CIDR LINK_CIDR SLOTS [serve arguments]: capsule
# serve on two free loopback ports (API, sandbox traffic) with a data
# directory of its own under /tmp and the network pool NET, stopped (and
# checked for leftovers) when the script exits; returns once it is
# healthy.
start_serve() {
	serve_net=$1
	local host_cidr=$2 link_cidr=$3 slots=$4 i
	shift 4
	work=$(mktemp -d "/tmp/$serve_net-XXXXXX")
	chmod 755 "$work" # the embedded PostgreSQL runs as its own user
	log="$work/serve.log"
	port=$(free_port)
	sandbox_port=$(free_port)
	while [[ $sandbox_port == "$port" ]]; do sandbox_port=$(free_port); done
	serve_pid=
	trap stop_serve EXIT
	trap 'exit 130' INT
	trap 'exit 143' TERM
	say "starting capsule serve on 127.0.0.1:$port, sandbox traffic on 127.0.0.1:$sandbox_port (data $work, log $log)"
	"$capsule" serve -listen "127.0.0.1:$port" -sandbox-listen "127.0.0.1:$sandbox_port" -data-dir "$work/data" -run-dir "$work/run" \
		-images-dir "${CAPSULE_IMAGES_DIR:-/var/lib/capsule}" -domain capsule.test \
		-net-name "$serve_net" -net-host-cidr "$host_cidr" -net-link-cidr "$link_cidr" -net-max-slots "$slots" \
		"$@" >"$log" 2>&1 &
	serve_pid=$!
	for ((i = 0; i < 3000; i++)); do # the first start builds the base image (about a minute)
		kill -0 "$serve_pid" 2>/dev/null || die "capsule serve exited during startup"
		curl -fsS -o /dev/null --max-time 1 "http://127.0.0.1:$port/healthz" 2>/dev/null && break
		sleep 0.1
	done
	curl -fsS -o /dev/null --max-time 1 "http://127.0.0.1:$port/healthz" || die "capsule serve did not become healthy in 5 minutes"
	say "capsule serve is up"
}

# stop_serve (the EXIT trap): stops the server (TERM, then KILL after a
# minute), shows its log's end on failure, fails when a VMM or a network
# namespace of it is left, and removes its directory after a success.
stop_serve() {
	local rc=$? i
	trap - EXIT INT TERM
	if [[ -n ${serve_pid:-} ]] && kill -0 "$serve_pid" 2>/dev/null; then
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
		echo "$suite: FAIL: VMMs left running" >&2
		rc=1
	fi
	if ip netns list 2>/dev/null | grep -q "^$serve_net-"; then
		echo "$suite: FAIL: network namespaces left: $(ip netns list | grep "^$serve_net-" | tr '\n' ' ')" >&2
		rc=1
	fi
	((rc != 0)) || rm -rf "$work"
	exit "$rc"
}

# node_test_args TAP NAME_PATTERN: node --test's arguments, reporting to
# stdout and as TAP to the file TAP, only the tests whose name matches
# NAME_PATTERN when it is set (into the array node_args).
node_test_args() {
	node_args=(--test --test-concurrency=1
		--test-reporter=spec --test-reporter-destination=stdout
		--test-reporter=tap --test-reporter-destination="$1")
	[[ -n ${2:-} ]] && node_args+=(--test-name-pattern="$2")
	return 0
}

# verdict TAP RC: the TAP file's summary, then the suite fails when node
# --test exited with RC ≠ 0, the server died, or (CAPSULE_TEST_STRICT=1) a
# test skipped itself (a test left out by a name filter is not one).
verdict() {
	local tap=$1 test_rc=$2 skipped
	echo
	echo "# $suite summary (TAP: $tap)"
	grep -E '^# (tests|suites|pass|fail|cancelled|skipped|todo|duration_ms) ' "$tap" || true
	kill -0 "$serve_pid" 2>/dev/null || die "capsule serve died while the suite was running"
	((test_rc == 0)) || die "node --test exited with status $test_rc"
	skipped=$(grep -E '^ *ok [0-9]+ - .* # SKIP' "$tap" | grep -vc '# SKIP test name does not match pattern$' || true)
	if [[ ${CAPSULE_TEST_STRICT:-} == 1 && ${skipped:-0} != 0 ]]; then
		die "$skipped test(s) skipped under CAPSULE_TEST_STRICT=1"
	fi
}
