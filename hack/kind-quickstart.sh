#!/usr/bin/env bash
# Teal on kind, from nothing to a first blue/green release (docs/kind-quickstart.md).
#
#   hack/kind-quickstart.sh            # cluster, image, chart, plugin, demo release v1 -> v2
#   hack/kind-quickstart.sh --delete   # remove the kind cluster again
#
# Needs: docker (with BuildKit, Docker 23+), kind >= 0.30,
# kubectl, helm 3, python3 >= 3.11. Environment knobs:
#   CLUSTER_NAME   kind cluster name (default: teal, as in kind-config.yaml)
#   TEAL_IMAGE     operator image (default: ghcr.io/teal-dev/teal:<chart appVersion>)
#   SKIP_BUILD=1   do not build the image; kind pulls TEAL_IMAGE from its registry
#   IMAGE_ARCHIVE=1 build the image without docker build (make image: an OCI archive of
#                  ghcr.io/teal-dev/teal:<version>, Debian host, root) and load the archive
#   WITH_INGRESS=1 also install ingress-nginx (host ports 80/443) for weighted releases
#   DEMO_NS        namespace of the demo Rollout (default: demo)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
cd "$root"

CLUSTER_NAME=${CLUSTER_NAME:-teal}
DEMO_NS=${DEMO_NS:-demo}
APP_VERSION=$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' charts/teal/Chart.yaml)
TEAL_IMAGE=${TEAL_IMAGE:-ghcr.io/teal-dev/teal:${APP_VERSION}}
INGRESS_NGINX_VERSION=controller-v1.13.3
ECHO_IMAGE=hashicorp/http-echo:1.0.0
CURL_IMAGE=curlimages/curl:8.10.1

say() { printf '\n\033[1;36m==> %s\033[0m\n' "$*"; }
die() { printf '\033[1;31merror:\033[0m %s\n' "$*" >&2; exit 1; }
need() { command -v "$1" >/dev/null 2>&1 || die "$1 is not installed (see docs/kind-quickstart.md)"; }

if [[ "${1:-}" == "--delete" ]]; then
  need kind
  kind delete cluster --name "$CLUSTER_NAME"
  exit 0
fi

for tool in kind kubectl helm python3; do need "$tool"; done
need docker   # kind's nodes are Docker containers

ctx="kind-$CLUSTER_NAME"
k() { kubectl --context "$ctx" "$@"; }

# ------------------------------------------------------------------ 1. the cluster
if kind get clusters 2>/dev/null | grep -qx "$CLUSTER_NAME"; then
  say "kind cluster $CLUSTER_NAME exists; reusing it"
else
  say "Creating the kind cluster $CLUSTER_NAME (1 control plane, 2 workers)"
  kind create cluster --name "$CLUSTER_NAME" --config kind-config.yaml --wait 120s
fi
k cluster-info >/dev/null

# ------------------------------------------------------------------ 2. the operator image
if [[ -n "${IMAGE_ARCHIVE:-}" ]]; then
  say "Building the image as an OCI archive (make image) and loading it into the kind nodes"
  make image
  TEAL_IMAGE=$(python3 -c 'import json; print(json.load(open("dist/teal-image.json"))["ref"])')
  kind load image-archive dist/teal-image.oci.tar --name "$CLUSTER_NAME"
elif [[ -z "${SKIP_BUILD:-}" ]]; then
  say "Building $TEAL_IMAGE from operator/Dockerfile"
  docker build -f operator/Dockerfile -t "$TEAL_IMAGE" --build-arg VERSION="$APP_VERSION" .
  say "Loading $TEAL_IMAGE into the kind nodes"
  kind load docker-image "$TEAL_IMAGE" --name "$CLUSTER_NAME"
fi

# ------------------------------------------------------------------ 3. optional ingress controller
if [[ -n "${WITH_INGRESS:-}" ]]; then
  say "Installing ingress-nginx $INGRESS_NGINX_VERSION (for trafficRouting.nginx)"
  k apply -f "https://raw.githubusercontent.com/kubernetes/ingress-nginx/${INGRESS_NGINX_VERSION}/deploy/static/provider/kind/deploy.yaml"
  k -n ingress-nginx rollout status deployment/ingress-nginx-controller --timeout 180s
fi

# ------------------------------------------------------------------ 4. Teal, with Helm
if ! ls charts/teal/files/crds/*.yaml >/dev/null 2>&1; then
  bash hack/sync-crds.sh   # the chart renders Teal's CRDs from files/crds/ (crds.install)
fi
repo=${TEAL_IMAGE%:*}
tag=${TEAL_IMAGE##*:}
say "Installing the Teal chart (namespace teal-system, image $repo:$tag)"
helm upgrade --install teal charts/teal --kube-context "$ctx" \
  --namespace teal-system --create-namespace \
  --set image.repository="$repo" --set image.tag="$tag" \
  --wait --timeout 180s
k -n teal-system rollout status deployment/teal --timeout 120s

# ------------------------------------------------------------------ 5. kubectl teal
if ! command -v kubectl-teal >/dev/null 2>&1; then
  venv="$root/.teal-quickstart-venv"
  say "Installing the kubectl teal plugin into $venv"
  [[ -d "$venv" ]] || python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet "$root"
  export PATH="$venv/bin:$PATH"
  echo "(add it to your PATH for later: export PATH=\"$venv/bin:\$PATH\")"
fi
kt() { kubectl teal --context "$ctx" -n "$DEMO_NS" "$@"; }

# ------------------------------------------------------------------ 6. a first release
say "Deploying the demo Rollout 'hello' (revision 1) in namespace $DEMO_NS"
k create namespace "$DEMO_NS" --dry-run=client -o yaml | k apply -f -
cat <<EOF | k -n "$DEMO_NS" apply -f -
apiVersion: v1
kind: Service
metadata:
  name: hello
spec:
  selector: {app: hello}      # Teal adds teal.dev/color: blue|green
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata:
  name: hello-preview
spec:
  selector: {app: hello}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: teal.dev/v1alpha1
kind: Rollout
metadata:
  name: hello
spec:
  replicas: 2
  selector:
    matchLabels: {app: hello}
  template:
    metadata:
      labels: {app: hello}
    spec:
      containers:
        - name: app
          image: $ECHO_IMAGE
          args: ["-listen=:8080", "-text=hello from v1"]
          ports: [{name: http, containerPort: 8080}]
          readinessProbe:
            httpGet: {path: /, port: http}
            periodSeconds: 2
  strategy:
    blueGreen:
      activeServices: [hello]
      previewService: hello-preview
      autoPromote: false          # wait for \`kubectl teal promote\` before switching
      scaleDownDelaySeconds: 60   # keep the old colour warm for an instant undo
EOF
kt status hello --timeout 5m
kt get hello
selector() { echo "service/$1 selects: $(k -n "$DEMO_NS" get service "$1" -o jsonpath='{.spec.selector}')"; }
selector hello

curl_hello() {
  k -n "$DEMO_NS" run "curl-$RANDOM" --rm -i --quiet --restart=Never --image="$CURL_IMAGE" \
    --command -- curl -s --max-time 5 "http://$1" || true
}
say "The Service answers:"
curl_hello hello

# ------------------------------------------------------------------ 7. the blue/green release
say "Releasing revision 2 (a new pod template): it starts on the idle colour"
k -n "$DEMO_NS" patch rollout hello --type json \
  -p '[{"op": "replace", "path": "/spec/template/spec/containers/0/args", "value": ["-listen=:8080", "-text=hello from v2"]}]'
k -n "$DEMO_NS" wait rollout/hello --for=jsonpath='{.status.reason}'=AwaitingPromotion --timeout 5m
kt get hello
say "Live traffic still goes to revision 1; the preview Service already shows revision 2:"
curl_hello hello
curl_hello hello-preview

say "Promoting: the active Service switches to the new colour in one update"
kt promote hello
kt status hello --timeout 5m
selector hello
curl_hello hello
kt get hello

cat <<EOF

Done. Things to try next (docs/kind-quickstart.md, docs/kubectl-teal.md):
  kubectl teal --context $ctx -n $DEMO_NS get hello --watch
  kubectl teal --context $ctx -n $DEMO_NS undo hello --yes      # back to revision 1
  kubectl teal --context $ctx -n $DEMO_NS abort hello           # during a release
  kubectl teal lint -f examples/                                 # offline checks for CI
  hack/kind-quickstart.sh --delete                                # remove the cluster
EOF
