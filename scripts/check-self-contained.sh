#!/usr/bin/env bash
# Fails when a tracked file names a path outside the repository: the developers' sibling folder of
# notes and test data (by its usual spellings), or the absolute path of the directory this checkout
# sits in. A user's clone has neither, so tests, scripts and docs must not depend on them.
set -euo pipefail
cd "$(dirname "$0")/.."
# Spelled with a bracket so that this script does not match itself.
patterns=('\.\./shar[e]d(/|\b)' '(^|[^A-Za-z0-9_.-])shar[e]d/(testdata|docs|hooks)\b')
parent=$(cd .. && pwd -P)
if [ "$parent" != / ]; then
    patterns+=("$(printf '%s' "$parent/" | sed 's/[][\.*^$+?(){}|]/\\&/g')")
fi
found=0
for p in "${patterns[@]}"; do
    if git grep -nIE "$p" -- . ':!scripts/check-self-contained.sh'; then
        found=1
    fi
done
if [ "$found" = 1 ]; then
    echo "scripts/check-self-contained.sh: the lines above name a path outside the repository; copy what is needed into it" >&2
    exit 1
fi
echo "scripts/check-self-contained.sh: no tracked file names a path outside the repository"
