#!/usr/bin/env bash
# Installs npm swagger-ui-dist (pinned in web/apidocs/package-lock.json) and
# copies the Swagger UI assets that `capsule serve` embeds at /docs into
# internal/api/apidocs/dist (gitignored). Run by scripts/deps.sh and by the
# build (make bin/capsule), so a fresh clone's `make build` embeds them.
# Cached by content hash: with unchanged inputs it only checks the copies.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .cache

die() { echo "apidocs: $*" >&2; exit 1; }

src=web/apidocs
dst=internal/api/apidocs/dist
files=(swagger-ui.css swagger-ui-bundle.js swagger-ui-standalone-preset.js favicon-32x32.png favicon-16x16.png LICENSE NOTICE)

stamp=.cache/apidocs.$(cat "$src/package.json" "$src/package-lock.json" | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ] || [ ! -d "$src/node_modules/swagger-ui-dist" ]; then
  command -v npm >/dev/null || die "npm is not installed (scripts/deps.sh installs it)"
  echo "apidocs: installing swagger-ui-dist (npm ci)"
  # --ignore-scripts: no install scripts (swagger-ui-dist's dependency
  # @scarf/scarf would report the installation).
  (cd "$src" && SCARF_ANALYTICS=false npm ci --ignore-scripts --prefer-offline --no-audit --no-fund --loglevel=error)
  rm -f .cache/apidocs.*
  touch "$stamp"
fi

want=$(sed -n 's/.*"swagger-ui-dist": "\(.*\)".*/\1/p' "$src/package.json")
have=$(sed -n 's/^  "version": "\(.*\)".*/\1/p' "$src/node_modules/swagger-ui-dist/package.json")
[ "$want" = "$have" ] || die "swagger-ui-dist $have installed, $want pinned"

mkdir -p "$dst"
for f in "${files[@]}"; do
  [ -f "$src/node_modules/swagger-ui-dist/$f" ] || die "swagger-ui-dist has no $f"
  cmp -s "$src/node_modules/swagger-ui-dist/$f" "$dst/$f" || cp "$src/node_modules/swagger-ui-dist/$f" "$dst/$f"
done
