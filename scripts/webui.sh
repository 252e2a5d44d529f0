#!/usr/bin/env bash
# Builds the dashboard (web/app: SvelteKit, static adapter, with its npm
# dependencies pinned in web/app/package-lock.json) and copies the build
# into internal/webui/dist (gitignored), which `capsule` embeds. Run by the
# build (make bin/capsule) and scripts/deps.sh.
# Cached by content hash of every input (the lock, the sources, the
# configuration, this script): with unchanged inputs it does nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .cache

die() { echo "webui: $*" >&2; exit 1; }

app=web/app
dst=internal/webui/dist

inputs() {
  find "$app/src" "$app/static" -type f | LC_ALL=C sort
  printf '%s\n' "$app/package.json" "$app/package-lock.json" "$app/svelte.config.js" "$app/vite.config.js" scripts/webui.sh
}
hash=$(inputs | xargs sha256sum | sha256sum | cut -c1-16)
stamp=.cache/webui.$hash
if [ -f "$stamp" ] && [ -f "$dst/index.html" ]; then
  exit 0
fi
command -v npm >/dev/null || die "npm is not installed (scripts/deps.sh installs it)"

# npm dependencies: reinstalled when the lock changes.
lock=$(cat "$app/package.json" "$app/package-lock.json" | sha256sum | cut -c1-16)
if [ ! -f "$app/node_modules/.capsule-lock.$lock" ]; then
  echo "webui: installing the dashboard's npm dependencies (npm ci)"
  (cd "$app" && npm ci --ignore-scripts --prefer-offline --no-audit --no-fund --loglevel=error)
  touch "$app/node_modules/.capsule-lock.$lock"
fi

echo "webui: building the dashboard (vite build)"
(cd "$app" && rm -rf build && npx --no-install vite build --logLevel warn)
[ -f "$app/build/index.html" ] || die "the build has no index.html"

find "$dst" -mindepth 1 ! -name .gitkeep -delete
cp -R "$app/build/." "$dst/"
rm -f .cache/webui.*
touch "$stamp"
