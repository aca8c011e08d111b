"""`kubectl teal set image` and `kubectl teal restart`: the two ways to get new pods.

- `set image NAME CONTAINER=IMAGE... | --all=IMAGE` changes spec.template (a new template is a
  release, as with any edit). A Rollout that reads its template from a Deployment (workloadRef)
  is refused, naming the Deployment to change instead.
- `restart NAME` writes the annotation `teal.dev/restart-at: <now>` on the Rollout. The operator
  (teal.controller.Controller._restart) stamps that time on the stable colour's pod template,
  and the Deployment replaces its pods one by one under its rolling-update limits: new pods,
  same revision, no release, traffic never leaves the stable colour.
"""

from __future__ import annotations

import argparse
import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

from .api import ANNOTATION_RESTART_AT, COLORS
from .cli_cluster import (
    EXIT_API,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_USAGE,
    PROG,
    ApiError,
    CliError,
    Cluster,
    _out,
    in_release,
)
from .status import Phase

CONTAINER_LISTS = ("containers", "initContainers")


def parse_pairs(pairs: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        container, sep, image = pair.partition("=")
        if not sep or not container or not image:
            raise CliError(f"{pair!r}: want CONTAINER=IMAGE", EXIT_USAGE)
        out[container] = image
    return out


def image_ops(template: Mapping[str, Any], wanted: Mapping[str, str], all_image: str | None) -> list[tuple[str, str, str, str]]:
    """(json path, container, old image, new image) for each container whose image changes."""
    pod = template.get("spec") or {}
    known = [c.get("name") for key in CONTAINER_LISTS for c in pod.get(key) or []]
    missing = [c for c in wanted if c not in known]
    if missing:
        raise CliError(
            f"no container named {', '.join(missing)} in the pod template (containers: {', '.join(map(str, known)) or 'none'})",
            EXIT_NOT_FOUND,
        )
    ops = []
    for key in CONTAINER_LISTS:
        for i, c in enumerate(pod.get(key) or []):
            new = all_image if all_image is not None else wanted.get(c.get("name"))
            if new is not None and new != c.get("image"):
                ops.append((f"/spec/template/spec/{key}/{i}/image", str(c.get("name")), str(c.get("image")), new))
    return ops


def _guarded_patch(cluster: Cluster, ro: Mapping[str, Any], ops: list[dict[str, Any]]) -> dict[str, Any]:
    name = ro["metadata"]["name"]
    guard = {"op": "test", "path": "/metadata/resourceVersion", "value": ro["metadata"]["resourceVersion"]}
    try:
        return cluster.patch_rollout(name, [guard, *ops], json_patch=True)
    except ApiError as exc:
        if exc.status in (409, 422) and "test" in exc.message.lower():
            raise CliError(f"rollout {name} changed meanwhile; run the command again", EXIT_API) from exc
        raise


def cmd_set_image(cluster: Cluster, args: argparse.Namespace) -> int:
    wanted = parse_pairs(args.images)
    if bool(wanted) == (args.all_image is not None):
        raise CliError("give CONTAINER=IMAGE pairs or --all=IMAGE (one of them)", EXIT_USAGE)
    ro = cluster.get_rollout(args.name)
    spec = ro.get("spec") or {}
    if spec.get("workloadRef"):
        ref = spec["workloadRef"].get("name", "?")
        raise CliError(
            f"rollout {args.name} takes its pod template from deployment/{ref}: change the image there "
            f"(`kubectl set image deployment/{ref} ...`, or in Git), and Teal releases it",
            EXIT_REFUSED,
        )
    ops = image_ops(spec.get("template") or {}, wanted, args.all_image)
    if not ops:
        _out(f"rollout {args.name}: the images are already those; nothing changed")
        return EXIT_OK
    _guarded_patch(cluster, ro, [{"op": "replace", "path": path, "value": new} for path, _, _, new in ops])
    for _, container, old, new in ops:
        _out(f"rollout {args.name}: container {container}: {old} -> {new}")
    _out(f"a new pod template: Teal releases it on the idle colour (`{PROG} get {args.name} -w` follows it)")
    return EXIT_OK


def cmd_restart(cluster: Cluster, args: argparse.Namespace) -> int:
    ro = cluster.get_rollout(args.name)
    st = ro.get("status") or {}
    color = st.get("stableColor")
    if color not in COLORS:
        raise CliError(f"rollout {args.name} has no stable colour yet: nothing to restart", EXIT_REFUSED)
    if in_release(ro) and st.get("phase") != Phase.ABORTED:
        raise CliError(
            f"rollout {args.name} has a release in progress; restart once it ended (`{PROG} status {args.name}`)",
            EXIT_REFUSED,
        )
    at = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    cluster.patch_rollout(
        args.name,
        {"metadata": {"resourceVersion": ro["metadata"]["resourceVersion"], "annotations": {ANNOTATION_RESTART_AT: at}}},
    )
    _out(
        f"rollout {args.name}: restart requested at {at}: Teal replaces the pods of deployment/{args.name}-{color} "
        f"(the stable colour, revision {st.get('stableRevision', '?')}) under its rolling-update limits"
    )
    return EXIT_OK
