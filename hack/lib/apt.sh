# Sourced by hack/*.sh: apt_install CMD "PACKAGES" installs Debian packages when CMD is missing.
# apt-get update runs only when the package lists are missing or older than a day.
apt_install() {
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "[apt] ERROR: $1 is missing and there is no apt-get to install Debian package(s) '$2'. Install them and re-run." >&2
    exit 1
  fi
  echo "[apt] installing Debian package(s) $2" >&2
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  if [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*Packages*' -mtime -1 2>/dev/null | head -1)" ]; then
    $sudo apt-get update -qq >&2 || { echo "[apt] ERROR: apt-get update failed" >&2; exit 1; }
  fi
  # shellcheck disable=SC2086  # $2 is a list of package names
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
    -o DPkg::Lock::Timeout=300 $2 >&2 || { echo "[apt] ERROR: apt-get install $2 failed" >&2; exit 1; }
}
