#!/usr/bin/env bash
# ruff (lint + format) and mypy: `make lint`, and tests/test_code_health.py runs the same.
# Strict typing on the pure core, the API and the Kubernetes client; the rest of the package is checked
# with mypy's defaults.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
if [ -z "${VIRTUAL_ENV:-}" ] || ! command -v ruff >/dev/null; then
  # shellcheck source=hack/env.sh
  source hack/env.sh
fi
# caches outside the checkout, so a fresh clone with a warm ~/.cache/teal checks in seconds
CACHE="${TEAL_CACHE:-$HOME/.cache/teal}"
export RUFF_CACHE_DIR="$CACHE/ruff-cache"
PY_PATHS=(operator tests bench hack)
[ -d devenv ] && PY_PATHS+=(devenv)
STRICT=(operator/teal/core.py operator/teal/api.py)
for f in operator/teal/status.py operator/teal/client.py; do [ -f "$f" ] && STRICT+=("$f"); done

ruff check "${PY_PATHS[@]}"
ruff format --check "${PY_PATHS[@]}"
# one cache per set of options: mypy throws away a cache written with other flags
mypy --cache-dir "$CACHE/mypy-cache/strict" --strict --follow-imports=silent "${STRICT[@]}"
mypy --cache-dir "$CACHE/mypy-cache/package" operator/teal
