#!/usr/bin/env bash
# Teal's main job on a local default: a local control plane + Prometheus, the operator,
# and a demo release (add --bad-release to also watch a bad one get reverted).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=env.sh
source "$here/env.sh"
cd "$REPO"
exec python -m teal_devenv.sandbox "$@"
