#!/usr/bin/env bash
# Every benchmark, one after the other; each prints its figures.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=env.sh
source "$here/env.sh"
cd "$REPO"
bash hack/fetch-router-crds.sh >/dev/null
for b in bench_cluster bench_operator bench_revert bench_analysis bench_routers bench_bulkhead bench_chaos bench_scale bench_notify bench_failover bench_history; do
  echo "== bench/$b.py"
  python "bench/$b.py"
done
