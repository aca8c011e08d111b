#!/usr/bin/env bash
# Obtain the real CRDs the traffic-router tests install into the local apiserver:
#
#   * Gateway API, standard channel (GatewayClass, Gateway, HTTPRoute, GRPCRoute,
#     ReferenceGrant, ...), from the Go module sigs.k8s.io/gateway-api
#     (config/crd/standard/*.yaml);
#   * Istio's VirtualService (and DestinationRule, Gateway) from the Go module istio.io/api
#     (kubernetes/customresourcedefinitions.gen.yaml).
#
# Both come through the Go module proxy (`go mod download`), at pinned versions, and
# are cached under ${TEAL_CACHE:-~/.cache/teal}/crds/<module>-<version>/. A complete
# cache is reused without touching the network. NGINX Ingress needs no CRD
# (networking.k8s.io/v1 Ingress is built in).
#
# Output (stdout), one line per folder, for scripts and tests:
#   GATEWAY_API_CRDS=/root/.cache/teal/crds/gateway-api-v1.6.3
#   ISTIO_CRDS=/root/.cache/teal/crds/istio-api-v1.32.0
#
# Versions: TEAL_GATEWAY_API_VERSION / TEAL_ISTIO_API_VERSION override the pins below.
set -euo pipefail

# Pinned in hack/versions.env. gateway-api v1.7.0 needs go >= 1.27 to `go mod download`;
# v1.6.3 is the newest release that the machine's Go toolchain accepts.
# shellcheck source=versions.env
source "$(cd "$(dirname "$0")" && pwd)/versions.env"
GATEWAY_API_VERSION="${TEAL_GATEWAY_API_VERSION:-$GATEWAY_API_VERSION}"
ISTIO_API_VERSION="${TEAL_ISTIO_API_VERSION:-$ISTIO_API_VERSION}"

CACHE="${TEAL_CACHE:-$HOME/.cache/teal}/crds"
GW_DIR="$CACHE/gateway-api-$GATEWAY_API_VERSION"
ISTIO_DIR="$CACHE/istio-api-$ISTIO_API_VERSION"
ISTIO_KEEP="virtualservices destinationrules gateways"

die() { echo "fetch-router-crds: error: $*" >&2; exit 1; }
log() { echo "fetch-router-crds: $*" >&2; }

# go mod download -json MODULE@VERSION -> the module's folder in the module cache.
module_dir() {
  local mod="$1" out dir err
  if ! command -v go >/dev/null 2>&1; then
    [ -x /usr/local/go/bin/go ] && PATH="$PATH:/usr/local/go/bin" \
      || die "the 'go' command is not on PATH (needed to fetch $mod from the Go module proxy)"
  fi
  # Run outside any module so a go.mod nearby cannot interfere.
  if ! out="$(cd / && GO111MODULE=on timeout "${TEAL_FETCH_TIMEOUT:-300}" go mod download -json "$mod" 2>&1)"; then
    err="$(printf '%s\n' "$out" | sed -n 's/.*"Error": "\(.*\)".*/\1/p' | head -1)"
    [ -n "$err" ] || err="$(printf '%s\n' "$out" | tail -3)"
    die "could not download $mod through the Go module proxy ($(go env GOPROXY)): $err
  Is the proxy reachable? Try: go list -m -versions ${mod%@*}"
  fi
  dir="$(printf '%s\n' "$out" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p' | head -1)"
  [ -n "$dir" ] && [ -d "$dir" ] || die "go mod download $mod printed no module folder: $out"
  printf '%s\n' "$dir"
}

# A cache folder is complete when its .complete stamp exists (written last).
fetch_gateway_api() {
  [ -f "$GW_DIR/.complete" ] && return 0
  local src tmp
  src="$(module_dir "sigs.k8s.io/gateway-api@$GATEWAY_API_VERSION")/config/crd/standard"
  [ -d "$src" ] || die "sigs.k8s.io/gateway-api@$GATEWAY_API_VERSION has no config/crd/standard folder"
  for kind in httproutes gateways gatewayclasses; do
    [ -f "$src/gateway.networking.k8s.io_$kind.yaml" ] || die "$src lacks gateway.networking.k8s.io_$kind.yaml"
  done
  mkdir -p "$CACHE"
  tmp="$(mktemp -d "$CACHE/.gateway-api.XXXXXX")"
  # Only the CRDs: the standard folder may also hold a ValidatingAdmissionPolicy.
  for f in "$src"/gateway.networking.k8s.io_*.yaml; do
    grep -q '^kind: CustomResourceDefinition' "$f" && cp "$f" "$tmp/"
  done
  chmod -R u+w "$tmp"; chmod 755 "$tmp"
  echo "sigs.k8s.io/gateway-api@$GATEWAY_API_VERSION config/crd/standard" > "$tmp/SOURCE"
  touch "$tmp/.complete"
  rm -rf "$GW_DIR"
  mv "$tmp" "$GW_DIR"
  log "cached Gateway API $GATEWAY_API_VERSION CRDs in $GW_DIR"
}

fetch_istio() {
  [ -f "$ISTIO_DIR/.complete" ] && return 0
  local src tmp kind
  src="$(module_dir "istio.io/api@$ISTIO_API_VERSION")/kubernetes/customresourcedefinitions.gen.yaml"
  [ -f "$src" ] || die "istio.io/api@$ISTIO_API_VERSION has no kubernetes/customresourcedefinitions.gen.yaml"
  mkdir -p "$CACHE"
  tmp="$(mktemp -d "$CACHE/.istio-api.XXXXXX")"
  # Split the multi-document file and keep the networking.istio.io CRDs Teal's tests use.
  for kind in $ISTIO_KEEP; do
    awk -v want="  name: $kind.networking.istio.io" '
      function flush() { if (hit) printf "%s", doc; doc = ""; hit = 0 }
      /^---[[:space:]]*$/ { flush(); next }
      { doc = doc $0 "\n"; if ($0 == want) hit = 1 }
      END { flush() }
    ' "$src" > "$tmp/networking.istio.io_$kind.yaml"
    grep -q '^kind: CustomResourceDefinition' "$tmp/networking.istio.io_$kind.yaml" \
      || die "no CRD $kind.networking.istio.io in $src"
  done
  chmod 755 "$tmp"
  echo "istio.io/api@$ISTIO_API_VERSION kubernetes/customresourcedefinitions.gen.yaml" > "$tmp/SOURCE"
  touch "$tmp/.complete"
  rm -rf "$ISTIO_DIR"
  mv "$tmp" "$ISTIO_DIR"
  log "cached Istio API $ISTIO_API_VERSION CRDs in $ISTIO_DIR"
}

# One fetch at a time per cache (pytest workers, a bench and a developer may race).
mkdir -p "$CACHE"
exec 9>"$CACHE/.fetch.lock"
if command -v flock >/dev/null 2>&1; then
  flock -w 900 9 || die "timed out waiting for another fetch-router-crds.sh ($CACHE/.fetch.lock)"
fi

fetch_gateway_api
fetch_istio
echo "GATEWAY_API_CRDS=$GW_DIR"
echo "ISTIO_CRDS=$ISTIO_DIR"
