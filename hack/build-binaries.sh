#!/usr/bin/env bash
# Builds (or finds in the cache) every binary Teal's tests and sandbox need:
#   kube-apiserver, kube-controller-manager, kube-scheduler, kubectl  (k8s.io/kubernetes at K8S_VERSION)
#   kwok                                                             (sigs.k8s.io/kwok at KWOK_VERSION)
#   helm                                                             (helm.sh/helm/v3 at HELM_VERSION)
# and installs etcd and Prometheus from Debian's packages when missing.
#
# Idempotent: a second run only checks the cache and returns in about a second.
# Cache: ${TEAL_CACHE:-$HOME/.cache/teal}/bin/<component>-<version>/
# Prints the cache's bin folders, one per line, on stdout at the end (for PATH).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"
CACHE=${TEAL_CACHE:-$HOME/.cache/teal}
log() { echo "[build-binaries] $*" >&2; }
# cold build times are kept for bench/bench_cluster.py
timing() { log "$*"; mkdir -p "$CACHE"; echo "[build-binaries] $* ($(date -u +%F))" >> "$CACHE/build-times.log"; }
die() { echo "[build-binaries] ERROR: $*" >&2; exit 1; }

need_go() {
  command -v go >/dev/null 2>&1 || die "Go is not installed (need go >= 1.24 on PATH) to build the Kubernetes binaries."
  if ! timeout 60 go list -m "k8s.io/kubernetes@${K8S_VERSION}" >/dev/null 2>&1; then
    die "cannot reach the Go module proxy ($(go env GOPROXY)) to fetch k8s.io/kubernetes@${K8S_VERSION}."
  fi
}

# apt_install CMD "PACKAGES": shared with hack/build-image.sh
# shellcheck source=lib/apt.sh
source "$here/lib/apt.sh"

# ---- etcd and Prometheus from Debian ----
command -v etcd >/dev/null 2>&1 || [ -x /usr/bin/etcd ] || apt_install etcd "etcd-server"
command -v prometheus >/dev/null 2>&1 || [ -x /usr/bin/prometheus ] || apt_install prometheus "prometheus"
# headless Chromium for the dashboard's browser test (tests/test_dashboard.py drives it with playwright)
[ -x /usr/bin/chromium ] || apt_install chromium "chromium"
# a real terminal for `kubectl teal get --watch` (tests/test_cli_watch.py captures its pane)
[ -x /usr/bin/tmux ] || apt_install tmux "tmux"
# actionlint runs shellcheck on the workflows' run: blocks when it is installed (optional)
command -v shellcheck >/dev/null 2>&1 || ( apt_install shellcheck shellcheck ) \
  || log "shellcheck could not be installed: actionlint checks the workflows without it"
# Debian may start both as services on install (they run as their own users); the tests
# start their own on free ports. Only the services are stopped, never a test's processes.
for svc in etcd prometheus prometheus-node-exporter; do
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$svc" 2>/dev/null; then
    systemctl stop "$svc" >/dev/null 2>&1 || true
  fi
  id -u "$svc" >/dev/null 2>&1 && pkill -u "$svc" -x "$svc" >/dev/null 2>&1 || true
done

# ---- Kubernetes control plane from the pinned module ----
K8S_DIR="$CACHE/bin/kubernetes-$K8S_VERSION"
k8s_bins=(kube-apiserver kube-controller-manager kube-scheduler kubectl)
missing=()
for b in "${k8s_bins[@]}"; do [ -x "$K8S_DIR/$b" ] || missing+=("$b"); done
if [ ${#missing[@]} -gt 0 ]; then
  need_go
  work="$CACHE/build/kubernetes-$K8S_VERSION"
  mkdir -p "$work" "$K8S_DIR"
  staging_version="v0.${K8S_VERSION#v1.}"
  if [ ! -f "$work/go.mod" ]; then
    log "preparing a module that requires k8s.io/kubernetes $K8S_VERSION"
    ( cd "$work"
      modfile=$(go mod download -json "k8s.io/kubernetes@${K8S_VERSION}" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
      {
        echo "module teal.dev/k8sbuild"
        echo
        echo "go $(awk '/^go /{print $2; exit}' "$modfile")"
        echo
        echo "require k8s.io/kubernetes $K8S_VERSION"
        echo
        # every staging module replaced by './staging/...' upstream is published as k8s.io/<name> v0.X.Y
        grep -E '^\s*k8s.io/[a-z0-9-]+ => \./staging/' "$modfile" \
          | awk -v v="$staging_version" '{print "replace " $1 " => " $1 " " v}'
      } > go.mod.tmp
      mv go.mod.tmp go.mod
      cat > tools.go <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
GO
      go mod tidy -e >&2 2>&1 || true
      go mod download >&2
    )
  fi
  for b in "${missing[@]}"; do
    log "building $b $K8S_VERSION (several minutes the first time)"
    start=$(date +%s)
    ( cd "$work" && CGO_ENABLED=0 go build -tags tools -trimpath -ldflags "-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=${staging_version#v0.} -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION" \
        -o "$K8S_DIR/$b.tmp" "k8s.io/kubernetes/cmd/$b" >&2 ) || die "go build of $b failed"
    mv "$K8S_DIR/$b.tmp" "$K8S_DIR/$b"
    timing "built $b in $(( $(date +%s) - start ))s"
  done
fi

# ---- kwok and helm with go install ----
go_install() { # name module version binary
  local dir="$CACHE/bin/$1-$3"
  if [ ! -x "$dir/$4" ]; then
    need_go
    mkdir -p "$dir"
    log "go install $2@$3"
    start=$(date +%s)
    GOBIN="$dir" CGO_ENABLED=0 go install -trimpath -ldflags "-s -w" "$2@$3" >&2 || die "go install $2@$3 failed"
    timing "installed $4 in $(( $(date +%s) - start ))s"
  fi
}
go_install kwok sigs.k8s.io/kwok/cmd/kwok "$KWOK_VERSION" kwok
go_install helm helm.sh/helm/v3/cmd/helm "$HELM_VERSION" helm

# ---- the rules of the GitOps tools, for tests/test_gitops_health.py (hack/gitops-tools) ----
#   kstatus:    what Flux's health checks compute for a custom resource (sigs.k8s.io/cli-utils)
#   argocd-lua: a health script run in gopher-lua the way Argo CD runs one
# Versions pinned in hack/gitops-tools/go.mod. Not put on PATH: tests/gitops_helpers.py finds
# them in $CACHE/bin/gitops-tools-<hash of go.mod, go.sum and */main.go>/.
GITOPS_SRC="$here/gitops-tools"
GITOPS_DIR="$CACHE/bin/gitops-tools-$(cd "$GITOPS_SRC" && LC_ALL=C && cat go.mod go.sum */main.go | sha256sum | cut -c1-12)"
if [ ! -x "$GITOPS_DIR/kstatus" ] || [ ! -x "$GITOPS_DIR/argocd-lua" ]; then
  need_go
  mkdir -p "$GITOPS_DIR"
  log "building kstatus and argocd-lua (hack/gitops-tools)"
  start=$(date +%s)
  ( cd "$GITOPS_SRC" && CGO_ENABLED=0 go build -buildvcs=false -trimpath -ldflags "-s -w" -o "$GITOPS_DIR/" ./kstatus ./argocd-lua >&2 ) \
    || die "go build of hack/gitops-tools failed"
  timing "built kstatus and argocd-lua in $(( $(date +%s) - start ))s"
fi
# checks .github/workflows/ (tests/test_install_artifacts.py); shellcheck, if installed, checks their run: blocks
go_install actionlint github.com/rhysd/actionlint/cmd/actionlint "$ACTIONLINT_VERSION" actionlint

echo "$K8S_DIR"
echo "$CACHE/bin/kwok-$KWOK_VERSION"
echo "$CACHE/bin/helm-$HELM_VERSION"
echo "$CACHE/bin/actionlint-$ACTIONLINT_VERSION"
