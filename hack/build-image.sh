#!/usr/bin/env bash
# Teal's operator image as an OCI archive, built without a container engine:
#   dist/teal-image.oci.tar   (docker load -i / kind load image-archive / crane push)
#   dist/teal-image.json      (reference, digest, sizes, build time)
# from Debian's packages (mmdebstrap resolves and downloads them) and Teal's own wheel; see
# hack/image/build.py for how, and why the result is the same bytes for the same inputs.
# Needs root (chroot), Debian's apt and python3 >= 3.11. Cache: ${TEAL_CACHE:-~/.cache/teal}/image/.
# Arguments go to build.py: --output PATH, --relock (move to today's Debian and PyPI versions).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib/apt.sh
source "$here/lib/apt.sh"
export TEAL_CACHE=${TEAL_CACHE:-$HOME/.cache/teal}

python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
  || { echo "[build-image] ERROR: python3 >= 3.11 is required" >&2; exit 1; }
command -v mmdebstrap >/dev/null 2>&1 || apt_install mmdebstrap mmdebstrap
# on a Debian-family host that is not Debian (e.g. an Ubuntu CI runner), apt needs Debian's keys
[ -f /usr/share/keyrings/debian-archive-keyring.gpg ] || apt_install "Debian's archive keyring" debian-archive-keyring
python3 -c 'import ensurepip' 2>/dev/null || apt_install "python3 -m venv" python3-venv
command -v dpkg-deb >/dev/null 2>&1 || { echo "[build-image] ERROR: dpkg-deb is required (a Debian host)" >&2; exit 1; }

# one build at a time per cache (the tests and a user may start one together)
mkdir -p "$TEAL_CACHE/image"
exec 9>"$TEAL_CACHE/image/.lock"
flock 9
exec python3 "$here/image/build.py" "$@"
