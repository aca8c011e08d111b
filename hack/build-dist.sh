#!/usr/bin/env bash
# What a release ships, built into dist/ (or --out DIR):
#   teal-<version>.tgz                   the chart (`helm package`), for `helm install` and `helm push oci://`
#   install.yaml                         Namespace teal-system + CRDs + the operator watching all namespaces
#   install-namespaced.yaml              the same with rbac.scope=namespaced, watching teal-system only
#                                        (other namespaces: `helm template` with watchNamespaces, see the chart's README)
#   teal_operator-<version>-py3-none-any.whl   the Python package: the operator and the kubectl-teal plugin
# Both manifests are rendered from the packaged chart, so they are what the chart installs.
# Usage: hack/build-dist.sh [--out DIR] [chart|manifests|wheel ...]   (default: all three)
# With TEAL_RELEASE_TAG=vX.Y.Z (the release workflow) it fails unless the chart's version,
# its appVersion and pyproject.toml's version are all X.Y.Z.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
die() { echo "[build-dist] ERROR: $*" >&2; exit 1; }
out="$root/dist"
parts=()
while [ $# -gt 0 ]; do
  case "$1" in
    --out) [ $# -ge 2 ] || die "--out needs a directory"; out=$2; shift 2 ;;
    chart|manifests|wheel) parts+=("$1"); shift ;;
    *) die "unknown argument '$1' (usage: build-dist.sh [--out DIR] [chart|manifests|wheel ...])" ;;
  esac
done
[ ${#parts[@]} -gt 0 ] || parts=(chart manifests wheel)
want() { [[ " ${parts[*]} " == *" $1 "* ]]; }
mkdir -p "$out"
out=$(cd "$out" && pwd)

# helm and the project's Python come from hack/env.sh unless they are on PATH already
if ! command -v helm >/dev/null 2>&1; then
  # shellcheck source=env.sh
  source "$root/hack/env.sh"
fi
python=${PYTHON:-$(command -v python || command -v python3)}

chart_version=$(awk '/^version:/{print $2; exit}' "$root/charts/teal/Chart.yaml")
app_version=$(awk -F'"' '/^appVersion:/{print $2; exit}' "$root/charts/teal/Chart.yaml")
py_version=$(awk -F'"' '/^version = /{print $2; exit}' "$root/pyproject.toml")
if [ -n "${TEAL_RELEASE_TAG:-}" ]; then
  v=${TEAL_RELEASE_TAG#v}
  if [ "$chart_version" != "$v" ] || [ "$app_version" != "$v" ] || [ "$py_version" != "$v" ]; then
    die "tag $TEAL_RELEASE_TAG, but Chart.yaml version=$chart_version appVersion=$app_version, pyproject.toml version=$py_version"
  fi
fi
[ -n "$(ls "$root"/charts/teal/files/crds/*.yaml 2>/dev/null)" ] || die "charts/teal/files/crds/ is empty: run hack/sync-crds.sh"

tgz="$out/teal-$chart_version.tgz"
if want chart || want manifests; then
  helm lint --strict "$root/charts/teal" >/dev/null || die "helm lint --strict charts/teal failed"
  helm package "$root/charts/teal" --destination "$out" >/dev/null
  [ -f "$tgz" ] || die "helm package did not write $tgz"
  if want chart; then echo "$tgz"; fi
fi

namespace=teal-system
render() { # file, extra helm args...
  local file=$1; shift
  {
    echo "# Teal $app_version, rendered from the chart by hack/build-dist.sh: helm template teal --namespace $namespace --include-crds${*:+ $*}"
    echo "# Apply: kubectl apply --server-side -f $(basename "$file")"
    echo "---"
    echo "apiVersion: v1"
    echo "kind: Namespace"
    echo "metadata:"
    echo "  name: $namespace"
    helm template teal "$tgz" --namespace "$namespace" --include-crds "$@"
  } > "$file.tmp"
  mv "$file.tmp" "$file"
  echo "$file"
}
if want manifests; then
  render "$out/install.yaml"
  render "$out/install-namespaced.yaml" --set rbac.scope=namespaced --set "watchNamespaces={$namespace}"
  want chart || rm -f "$tgz"
fi

if want wheel; then
  rm -f "$out"/teal_operator-*.whl
  # from a clean copy: pip builds in the source tree, and the work tree gets no build/ from it
  src=$(mktemp -d); trap 'rm -rf "$src"' EXIT
  tar -C "$root" --exclude=__pycache__ --exclude='*.egg-info' -cf - pyproject.toml README.md operator | tar -C "$src" -xf -
  "$python" -m pip wheel --quiet --no-deps --wheel-dir "$out" "$src" >&2 || die "pip wheel failed"
  ls "$out"/teal_operator-"$py_version"-*.whl
fi
