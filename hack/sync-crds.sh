#!/usr/bin/env bash
# Copies the CRDs (crds/*.yaml, the source of truth) to where they ship:
#   operator/teal/crds/  - package data of the Python package (teal.crds)
#   charts/teal/crds/    - the Helm chart (Helm installs crds/ before the templates)
# tests/test_api_schema.py fails when a copy differs from crds/. Run after editing a CRD.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
for dest in operator/teal/crds charts/teal/crds; do
  mkdir -p "$root/$dest"
  for f in "$root"/crds/*.yaml; do
    cp "$f" "$root/$dest/$(basename "$f")"
  done
  # a CRD deleted from crds/ must not linger in a copy
  for f in "$root/$dest"/*.yaml; do
    [ -e "$root/crds/$(basename "$f")" ] || rm -f "$f"
  done
  echo "synced crds/ -> $dest/" >&2
done
