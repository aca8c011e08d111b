"""`kubectl teal handover NAME`: leave Teal without an outage.

Deleting a Rollout garbage-collects both colours' Deployments, so the Services lose their
endpoints. Handover instead turns the stable colour into a plain Deployment the user owns
and deletes the Rollout, in this order:

1. Refuse unless the Rollout is settled: no release in progress, every active Service
   selecting the stable colour, and the stable Deployment with ready pods.
2. Delete the Rollout with propagationPolicy=Orphan (guarded by its uid): the garbage
   collector removes the Rollout's ownerReference from everything it made instead of
   deleting it, and the operator stops at once (a Rollout with a deletionTimestamp is
   forgotten by its loop, teal.controller.reconcile). Nothing is deleted before the
   operator lets go, so a running operator cannot fight the handover.
3. Wait until the Rollout is gone; then the stable Deployment loses the `teal.dev/rollout`
   label (and any ownerReference to the gone Rollout a reconcile in flight re-added) and
   gets `teal.dev/handed-over-from`. Its pods keep their labels, so the Services, which
   select `teal.dev/color`, keep their endpoints.
4. Delete what only Teal needed: the other colour's Deployment (no traffic) and the
   revision history (ControllerRevisions). Per-colour Services a traffic router used are
   left in place and named (a route may still point at them).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Mapping
from typing import Any

from .api import COLORS, LABEL_COLOR, LABEL_ROLLOUT, SpecError, parse_spec
from .cli_cluster import EXIT_API, EXIT_OK, EXIT_REFUSED, PROG, ROLLOUTS, ApiError, CliError, Cluster, _out, in_release
from .client import CONTROLLER_REVISIONS, DEPLOYMENTS, SERVICES
from .status import Phase

ANNOTATION_HANDED_OVER = "teal.dev/handed-over-from"


def add_parser(command) -> None:
    """Registers the command; `command` is cli.parser()'s helper."""
    command(
        "handover",
        "delete the Rollout but keep its stable colour as a plain Deployment you own, so the Services keep their endpoints",
    )


def _settled(cluster: Cluster, ro: Mapping[str, Any]) -> tuple[str, dict[str, Any], list[str]]:
    """(stable colour, its Deployment, the active Services), or CliError saying why not now."""
    name = ro["metadata"]["name"]
    st = ro.get("status") or {}
    color = st.get("stableColor")
    if color not in COLORS:
        raise CliError(f"rollout {name} has no stable colour yet: nothing to hand over", EXIT_REFUSED)
    if in_release(ro) and st.get("phase") != Phase.ABORTED:
        raise CliError(
            f"rollout {name} has a release in progress; promote or abort it first (`{PROG} abort {name}`), then hand over",
            EXIT_REFUSED,
        )
    try:
        active = list(parse_spec(ro.get("spec") or {}).blue_green.active_services)
    except SpecError as e:
        raise CliError(f"rollout {name} has an invalid spec ({e}); fix it first", EXIT_REFUSED) from None
    for svc_name in active:
        svc = cluster.service(svc_name) or {}
        selected = ((svc.get("spec") or {}).get("selector") or {}).get(LABEL_COLOR)
        if selected != color:
            raise CliError(
                f"Service {svc_name} selects {selected or 'no colour'}, not the stable colour {color}; "
                "wait for the Rollout to settle",
                EXIT_REFUSED,
            )
    deploy = cluster.deployment(f"{name}-{color}")
    if deploy is None or not (deploy.get("status") or {}).get("readyReplicas"):
        raise CliError(
            f"the stable colour's Deployment {name}-{color} has no ready pods; a handover would keep an outage", EXIT_REFUSED
        )
    return color, deploy, active


def _wait_gone(cluster: Cluster, name: str, uid: str) -> None:
    deadline = time.monotonic() + cluster.timeout
    while time.monotonic() < deadline:
        ro = cluster.get(ROLLOUTS, name)
        if ro is None or ro["metadata"]["uid"] != uid:
            return  # gone (and maybe someone made a new one of the same name)
        time.sleep(0.2)
    raise CliError(
        f"rollout {name} was not deleted within {cluster.timeout:g}s (a finalizer?); "
        "its Deployments are orphaned, not deleted: run the command again",
        EXIT_API,
    )


def _keep(cluster: Cluster, deploy_name: str, rollout: str, uid: str) -> None:
    """The stable Deployment as the user's: no owner, no Teal label, a note where it came from."""
    for _ in range(5):
        d = cluster.deployment(deploy_name)
        if d is None:
            raise CliError(f"Deployment {deploy_name} disappeared during the handover", EXIT_API)
        meta = d["metadata"]
        owners = [o for o in meta.get("ownerReferences") or [] if o.get("uid") != uid]
        patch = {
            "metadata": {
                "resourceVersion": meta["resourceVersion"],
                "ownerReferences": owners or None,
                "labels": {LABEL_ROLLOUT: None},
                "annotations": {ANNOTATION_HANDED_OVER: f"rollout/{rollout}"},
            }
        }
        try:
            cluster.merge_patch(DEPLOYMENTS, deploy_name, patch)
            return
        except ApiError as exc:
            if exc.status != 409:
                raise
    raise CliError(f"Deployment {deploy_name} kept changing; run the command again", EXIT_API)


def cmd_handover(cluster: Cluster, args: argparse.Namespace) -> int:
    name = args.name
    ro = cluster.get_rollout(name)
    uid = ro["metadata"]["uid"]
    color, deploy, active = _settled(cluster, ro)
    cluster.delete(ROLLOUTS, name, uid=uid, propagation="Orphan")
    _wait_gone(cluster, name, uid)
    kept = deploy["metadata"]["name"]
    _keep(cluster, kept, name, uid)
    other = f"{name}-{next(c for c in COLORS if c != color)}"
    cluster.delete(DEPLOYMENTS, other)  # None: gone already
    for rev in cluster.controller_revisions(name):
        cluster.delete(CONTROLLER_REVISIONS, rev["metadata"]["name"])
    services = cluster.items(SERVICES, f"{LABEL_ROLLOUT}={name}")
    _out(
        f"rollout {name} handed over: Deployment {kept} is yours now (no owner; annotated "
        f"{ANNOTATION_HANDED_OVER}=rollout/{name}); {other} and the revision history are deleted"
    )
    if active:
        _out(
            f"Services {', '.join(active)} keep selecting its pods ({LABEL_COLOR}={color}); "
            f"drop {LABEL_COLOR} from their selectors only together with the pods' label"
        )
    if services:
        _out("left in place (a route may still use them): " + ", ".join(f"service/{s['metadata']['name']}" for s in services))
    return EXIT_OK
