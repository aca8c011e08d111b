#!/usr/bin/env bash
# Sourced by hack/test.sh and hack/sandbox.sh: makes sure everything Teal needs is here,
# building or installing what is missing, then puts it on PATH.
#   - binaries (kube-apiserver & co, kubectl, kwok, helm; etcd and Prometheus from Debian)
#   - a Python virtualenv with Teal, its test dependencies and the dev environment (devenv/: the
#     package teal_devenv, installed here only, never into the operator's wheel or image), cached
#     per pyproject.toml + devenv/pyproject.toml
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export TEAL_CACHE=${TEAL_CACHE:-$HOME/.cache/teal}
say() { echo "[teal] $*" >&2; }

command -v python3 >/dev/null || { say "ERROR: python3 (>= 3.11) is required"; exit 1; }
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { say "ERROR: Python >= 3.11 is required"; exit 1; }

# 1. binaries
bin_dirs=$(bash "$REPO/hack/build-binaries.sh")
TEAL_BIN_DIRS=$(echo "$bin_dirs" | paste -sd: -)
export TEAL_BIN_DIRS
export PATH="$TEAL_BIN_DIRS:$PATH"

# 2. the virtualenv, keyed by the dependency lists (the operator's and the dev environment's)
key=$(cat "$REPO/pyproject.toml" "$REPO/devenv/pyproject.toml" | sha256sum | cut -c1-12)
VENV="$TEAL_CACHE/venv-$(python3 -c 'import sys; print(f"py{sys.version_info[0]}{sys.version_info[1]}")')-$key"
# Two runs at once (a test run and the sandbox, say) share the cache: one makes the
# virtualenv while the other waits on the lock, instead of deleting it under its feet.
mkdir -p "$TEAL_CACHE"
exec 9>"$VENV.lock"
flock 9
if [ ! -x "$VENV/bin/python" ] || [ ! -f "$VENV/.complete" ]; then
  say "creating the Python environment $VENV"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip >&2
  "$VENV/bin/pip" install -q -e "$REPO[test]" -e "$REPO/devenv" >&2 || { say "ERROR: pip install failed (is PyPI reachable?)"; exit 1; }
  touch "$VENV/.complete"
fi
# point the editable installs at this checkout (CI runs in a fresh clone elsewhere)
"$VENV/bin/pip" install -q --no-deps -e "$REPO" -e "$REPO/devenv" >&2
exec 9>&-
export PATH="$VENV/bin:$PATH"
export VIRTUAL_ENV="$VENV"
