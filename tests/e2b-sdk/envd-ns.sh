#!/usr/bin/env bash
# PID 1 of the private PID + mount namespace that run.sh creates with unshare.
# It gives envd the environment of E2B's `base` template without touching the
# host: temp copies of /etc/passwd, /etc/group and /etc/shadow that add the
# non-root user `user` (uid/gid 1000, home /home/user, shell /bin/bash) are
# bind-mounted over the originals, /home is a fresh tmpfs holding only
# /home/user, /tmp and /root are fresh tmpfs too, and /run is a private
# overlay (see isolate). When the host has sudo, `user` gets passwordless
# sudo through a private copy of /etc/sudoers.d. envd runs with -isnotfc, as
# E2B's envd does in the SDKs' debug setup. All of it disappears with the
# namespace.
#
# usage: envd-ns.sh ENVD_BINARY STATE_DIR ADDR PORT
set -euo pipefail

envd_bin=$1 state=$2 addr=$3 port=$4

if [[ $$ -ne 1 ]]; then
	echo "envd-ns: must run as PID 1 of a new PID namespace (started by run.sh)" >&2
	exit 2
fi

umask 022
mkdir -p "$state/etc"

# Accounts: drop whatever holds the name `user` or id 1000 on the host, then
# add the E2B template's user.
awk -F: '$1 != "user" && $3 != "1000"' /etc/passwd >"$state/etc/passwd"
echo 'user:x:1000:1000:E2B sandbox user:/home/user:/bin/bash' >>"$state/etc/passwd"
awk -F: '$1 != "user" && $3 != "1000"' /etc/group >"$state/etc/group"
echo 'user:x:1000:' >>"$state/etc/group"
chmod 0644 "$state/etc/passwd" "$state/etc/group"
mount --bind "$state/etc/passwd" /etc/passwd
mount --bind "$state/etc/group" /etc/group
if [[ -f /etc/shadow ]]; then
	awk -F: '$1 != "user"' /etc/shadow >"$state/etc/shadow"
	echo 'user:*:19000:0:99999:7:::' >>"$state/etc/shadow"
	chmod 0640 "$state/etc/shadow"
	mount --bind "$state/etc/shadow" /etc/shadow
fi

# Give a host directory a private, writable view: an empty tmpfs normally;
# an overlay (host content read-only below, tmpfs above) when something we
# still need (the state dir, the envd binary) lives below it, e.g. a checkout
# under /home or /tmp, or when the third argument is "keep". Either way
# nothing written there reaches the host.
isolate() {
	local dir=$1 mode=$2 why='' p layer
	if [[ ${3:-} == keep ]]; then
		why="its content is kept"
	fi
	for p in "$(realpath "$state")" "$(realpath "$envd_bin")"; do
		if [[ $p == "$dir"/* ]]; then
			why="it holds $p"
		fi
	done
	if [[ -z $why ]]; then
		mount -t tmpfs -o "mode=$mode" tmpfs "$dir"
		return 0
	fi
	layer="$state/ns${dir//\//-}"
	mkdir -p "$layer"
	mount -t tmpfs -o mode=0700 tmpfs "$layer"
	mkdir "$layer/upper" "$layer/work"
	chmod "$mode" "$layer/upper"
	mount -t overlay overlay -o "lowerdir=$dir,upperdir=$layer/upper,workdir=$layer/work" "$dir"
	echo "envd-ns: $dir is an overlay over the host's ($why)" >&2
}

isolate /home 0755
mountpoint -q /home # never touch the host's /home
rm -rf /home/user
mkdir -m 0755 /home/user
if [[ -d /etc/skel ]]; then
	cp -a /etc/skel/. /home/user/
fi
chown -R 1000:1000 /home/user
isolate /tmp 1777
isolate /root 0700
# envd writes E2B's sandbox metadata files to /run/e2b; the rest of /run
# (resolver, sudo state) stays visible.
isolate /run 0755 keep

# Passwordless sudo for `user`, as in E2B's base template (when the host has
# sudo at all): a private copy of /etc/sudoers.d with one more rule.
if command -v sudo >/dev/null 2>&1 && [[ -d /etc/sudoers.d ]]; then
	rm -rf "$state/etc/sudoers.d"
	mkdir -p "$state/etc/sudoers.d"
	cp -a /etc/sudoers.d/. "$state/etc/sudoers.d/"
	echo 'user ALL=(ALL:ALL) NOPASSWD: ALL' >"$state/etc/sudoers.d/e2b-user"
	chmod 0440 "$state/etc/sudoers.d/e2b-user"
	mount --bind "$state/etc/sudoers.d" /etc/sudoers.d
fi

echo "envd-ns: starting $envd_bin on $addr:$port as default user 'user'" >&2
# -isnotfc: like E2B's envd in the SDKs' debug setup (E2B_SANDBOX=false).
env -i \
	PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
	HOME=/root USER=root LOGNAME=root LANG=C.UTF-8 \
	"$envd_bin" -addr "$addr" -port "$port" -user user -isnotfc &
child=$!

# As PID 1 we only receive the signals we handle: pass TERM/INT on to envd.
trap 'kill -TERM "$child" 2>/dev/null || true' TERM INT
rc=0
while :; do
	wait "$child" && rc=0 || rc=$?
	kill -0 "$child" 2>/dev/null || break
done
echo "envd-ns: envd exited with status $rc" >&2
# Leaving PID 1 tears the namespace down: the kernel kills every process
# envd left behind.
exit "$rc"
