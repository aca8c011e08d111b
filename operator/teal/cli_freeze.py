"""`kubectl teal freeze [-A | ROLLOUT] --reason "..." [--until TIME]` and `unfreeze`.

A freeze holds every matching release at its next gate (teal.core: a start, a promotion, a next
weighted step, a switch); aborts, reverts and fast rollbacks still act. Where it is stored:
- one Rollout: its annotation `teal.dev/freeze: {"reason", "by", "until"}`;
- the namespace (-n NS, or the context's): a ReleasePolicy `teal-freeze` with spec.freeze;
- every namespace (-A): a ClusterReleasePolicy `teal-freeze` with spec.freeze.
`by` is who the API server says you are (SelfSubjectReview), so the record says who and why.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re

from .api import GROUP, VERSION
from .cli_cluster import EXIT_OK, EXIT_USAGE, ROLLOUTS, ApiError, CliError, Cluster, _out
from .client import Resource

NAME = "teal-freeze"
ANNOTATION = "teal.dev/freeze"
_RELATIVE = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?$")


def add_parser(command) -> None:
    """Registers freeze and unfreeze; `command` is cli.parser()'s helper."""
    for verb, text in (
        ("freeze", "hold every matching release at its next gate (aborts and reverts still act)"),
        ("unfreeze", "end a freeze made by `freeze` with the same target"),
    ):
        c = command(verb, text, with_name=False)
        c.add_argument("name", metavar="ROLLOUT", nargs="?", help="one Rollout (default: the whole namespace)")
        c.add_argument("-A", "--all-namespaces", action="store_true", help="every Rollout of the cluster")
        if verb == "freeze":
            c.add_argument("--reason", required=True, help='why, recorded with who froze ("incident 4711")')
            c.add_argument(
                "--until",
                default=None,
                metavar="TIME",
                help="when it ends by itself: RFC 3339 (2026-12-02T09:00:00Z) or from now (2h, 1d12h)",
            )


def parse_until(text: str | None, now: dt.datetime) -> str | None:
    if text is None:
        return None
    m = _RELATIVE.match(text)
    if m and text:
        t = now + dt.timedelta(days=int(m[1] or 0), hours=int(m[2] or 0), minutes=int(m[3] or 0))
    else:
        try:
            t = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise CliError(f"--until {text!r}: want RFC 3339 (2026-12-02T09:00:00Z) or a duration (2h)", EXIT_USAGE) from None
        if t.tzinfo is None:
            raise CliError(f"--until {text!r}: give an offset or Z (a time without a zone is ambiguous)", EXIT_USAGE)
    if t <= now:
        raise CliError(f"--until {text!r} is not in the future", EXIT_USAGE)
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _policies(all_ns: bool) -> Resource:
    return (
        Resource(GROUP, VERSION, "clusterreleasepolicies", namespaced=False)
        if all_ns
        else Resource(GROUP, VERSION, "releasepolicies")
    )


def _target(cluster: Cluster, args: argparse.Namespace) -> str:
    if args.name and args.all_namespaces:
        raise CliError("give a ROLLOUT or -A, not both", EXIT_USAGE)
    if args.name:
        return f"rollout {args.name}"
    return "every Rollout of the cluster" if args.all_namespaces else f"every Rollout in namespace {cluster.namespace}"


def cmd_freeze(cluster: Cluster, args: argparse.Namespace) -> int:
    target = _target(cluster, args)
    record = {"reason": args.reason, "by": cluster.whoami() or "unknown"}
    until = parse_until(args.until, dt.datetime.now(dt.UTC))
    if until:
        record["until"] = until
    if args.name:
        cluster.get_rollout(args.name)  # exit 3 when it does not exist
        cluster.merge_patch(ROLLOUTS, args.name, {"metadata": {"annotations": {ANNOTATION: json.dumps(record)}}})
    else:
        kind = "ClusterReleasePolicy" if args.all_namespaces else "ReleasePolicy"
        meta = {"name": NAME, "labels": {"app.kubernetes.io/managed-by": "kubectl-teal"}}
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": kind, "metadata": meta, "spec": {"freeze": record}}
        try:
            cluster.create(_policies(args.all_namespaces), body)
        except ApiError as e:
            if e.status != 409:
                raise
            cluster.merge_patch(_policies(args.all_namespaces), NAME, {"spec": {"freeze": record}})
    _out(f"frozen: {target} by {record['by']}: {args.reason}" + (f" (until {until})" if until else ""))
    return EXIT_OK


def cmd_unfreeze(cluster: Cluster, args: argparse.Namespace) -> int:
    target = _target(cluster, args)
    if args.name:
        cluster.merge_patch(ROLLOUTS, args.name, {"metadata": {"annotations": {ANNOTATION: None}}})
    elif cluster.delete(_policies(args.all_namespaces), NAME) is None:
        _out(f"not frozen: {target}")
        return EXIT_OK
    _out(f"unfrozen: {target}")
    return EXIT_OK
