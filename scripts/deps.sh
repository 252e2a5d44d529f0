#!/usr/bin/env bash
# Installs what `make run` and `make test` need and is missing: Debian
# packages (scripts/apt-packages.txt), Go modules and npm swagger-ui-dist
# (scripts/apidocs.sh), the dashboard build (scripts/webui.sh). Cached by content hash:
# a second run with unchanged inputs does nothing but a few checks.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .cache

die() { echo "deps: $*" >&2; exit 1; }

command -v go >/dev/null || die "Go is not installed (need Go $(sed -n 's/^go //p' go.mod) or newer at /usr/local/go)"

mapfile -t pkgs < <(grep -v '^\s*#' scripts/apt-packages.txt | sed '/^\s*$/d')
stamp=.cache/apt.$(sha256sum scripts/apt-packages.txt | cut -c1-16)
if [ ! -f "$stamp" ]; then
  missing=()
  for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
  done
  # node and npm may come from elsewhere than Debian (this machine's image).
  if command -v node >/dev/null && command -v npm >/dev/null; then
    missing=("${missing[@]/#nodejs/}"); missing=("${missing[@]/#npm/}")
  fi
  read -ra missing <<<"${missing[*]:-}"
  if [ "${#missing[@]}" -gt 0 ]; then
    [ "$(id -u)" = 0 ] || die "missing Debian packages (${missing[*]}); run as root"
    echo "deps: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # Capsule runs its own PostgreSQL (internal/pgembed): the Debian package
    # must not create and start a system-wide cluster on port 5432.
    if [ ! -e /etc/postgresql-common/createcluster.conf ]; then
      mkdir -p /etc/postgresql-common
      echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.conf
    fi
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  rm -f .cache/apt.*
  touch "$stamp"
fi

# *.localhost resolves to loopback through libnss-myhostname, once it is on
# the hosts: line of nsswitch.conf (after files, before dns; added once).
if [ -f /etc/nsswitch.conf ] && compgen -G '/lib/*/libnss_myhostname.so.2' >/dev/null &&
  ! grep -Eq '^hosts:.*\bmyhostname\b' /etc/nsswitch.conf; then
  if [ "$(id -u)" = 0 ]; then
    sed -i -E '/^hosts:/{/\bfiles\b/!s/$/ myhostname/;s/\bfiles\b/files myhostname/}' /etc/nsswitch.conf
    echo "deps: added myhostname to the hosts: line of /etc/nsswitch.conf"
  else
    echo "deps: note: add myhostname to the hosts: line of /etc/nsswitch.conf (as root) for *.localhost" >&2
  fi
fi

gostamp=.cache/gomod.$(cat go.mod go.sum | sha256sum | cut -c1-16)
if [ ! -f "$gostamp" ]; then
  go mod download
  rm -f .cache/gomod.*
  touch "$gostamp"
fi

# The Swagger UI assets capsule embeds at /docs (npm swagger-ui-dist).
scripts/apidocs.sh
# The dashboard build that capsule embeds (internal/webui; npm, SvelteKit).
scripts/webui.sh
