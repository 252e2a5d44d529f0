#!/usr/bin/env bash
# Fails if the committed generated code (gen/, internal/store/db/) differs
# from what scripts/generate.sh makes of the current sources. It regenerates
# in a temporary copy of the work tree, so the tree itself is never touched.
set -euo pipefail
cd "$(dirname "$0")/.."

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# The tracked and the untracked-but-not-ignored files, as they are now.
git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do
  [ -e "$f" ] || continue # deleted, not yet committed
  mkdir -p "$tmp/tree/$(dirname "$f")"
  cp -p "$f" "$tmp/tree/$f"
done
(cd "$tmp/tree" && scripts/generate.sh >/dev/null)

rc=0
for d in gen internal/store/db sdk/go/capsule/internal/wire; do
  if ! diff -r "$d" "$tmp/tree/$d" >"$tmp/diff" 2>&1; then
    echo "check-generated: $d is not what scripts/generate.sh makes (run make generate):" >&2
    head -50 "$tmp/diff" >&2
    rc=1
  fi
done
[ "$rc" = 0 ] && echo "check-generated: gen/, internal/store/db/ and the SDK wire layer are up to date"
exit "$rc"
