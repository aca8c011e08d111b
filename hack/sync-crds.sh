#!/usr/bin/env bash
# Copies the CRDs (crds/*.yaml, the source of truth) to where they ship:
#   operator/teal/crds/        - package data of the Python package (teal.crds)
#   charts/teal/files/crds/    - the Helm chart: templates/crds.yaml renders them (crds.install),
#                                so `helm upgrade` updates them
# tests/test_api_schema.py fails when a copy differs from crds/. Run after editing a CRD.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
for f in "$root"/crds/*.yaml; do
  # templates/crds.yaml adds the chart's annotations right after a top-level `metadata:`
  grep -q '^metadata:$' "$f" || { echo "sync-crds: $f has no top-level 'metadata:' line" >&2; exit 1; }
  if awk '/^metadata:$/{m=1; next} /^[^ ]/{m=0} m && /^  annotations:/{found=1} END{exit !found}' "$f"; then
    echo "sync-crds: $f has metadata.annotations; the chart adds its own there (use labels)" >&2; exit 1
  fi
done
for dest in operator/teal/crds charts/teal/files/crds; do
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
