#!/usr/bin/env bash
# The whole test suite, on a fresh machine or a warm one: installs what is missing,
# then runs pytest against a real local control plane and a real Prometheus.
# Extra arguments go to pytest (e.g. hack/test.sh -k e2e -x).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=env.sh
source "$here/env.sh"
cd "$REPO"
if [ -x hack/fetch-router-crds.sh ] || [ -f hack/fetch-router-crds.sh ]; then
  bash hack/fetch-router-crds.sh >/dev/null
fi
start=$(date +%s)
set +e
python -m pytest -q -ra --durations=15 "$@"
rc=$?
set -e
echo "[teal] test suite took $(( $(date +%s) - start ))s (exit $rc)" >&2
# pytest's 5 means no test ran: that is a failure here
if [ "$rc" -eq 5 ]; then echo "[teal] ERROR: no test ran" >&2; exit 1; fi
exit "$rc"
