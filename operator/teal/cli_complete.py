"""Shell completion and `version` for kubectl-teal.

Completion has two entrances, both answered by click's completion machinery over the same
command tree (so subcommands, flags and choices never drift from the parser):

- `kubectl teal <TAB>`: kubectl (1.26+) runs the executable `kubectl_complete-teal` with the
  plugin's arguments, the word being completed last (possibly ""), and reads one completion per
  line, then an optional `:<directive>` line (Cobra's ShellCompDirective; 4 = no file names);
- `kubectl-teal <TAB>`: the script `kubectl teal completion bash|zsh|fish` prints.

Rollout names are completed from the cluster (the global flags given so far choose it).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import platform
from collections.abc import Mapping, Sequence
from typing import Any

import click
from click.shell_completion import CompletionItem, ShellComplete, get_completion_class

from .cli_cluster import EXIT_OK, CliError, Cluster, _out, connect, namespace_args
from .client import DEPLOYMENTS

PROG_NAME = "kubectl-teal"
COMPLETE_VAR = "_KUBECTL_TEAL_COMPLETE"
COMPLETION_TIMEOUT_S = 3.0
# Cobra's ShellCompDirective values kubectl understands
NO_FILE_COMP = 4
DEFAULT_COMP = 0
# the chart's operator Deployment (charts/teal/templates/deployment.yaml: teal.labels + component)
OPERATOR_SELECTOR = "app.kubernetes.io/part-of=teal,app.kubernetes.io/component=operator"


def complete_rollouts(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """Rollout names of the namespace the flags so far select; nothing when the cluster can't say."""
    try:
        args = namespace_args(ctx)
        args.request_timeout = min(args.request_timeout, COMPLETION_TIMEOUT_S)
        cluster = connect(args)
        names = [ro["metadata"]["name"] for ro in cluster.list_rollouts()]
    except (CliError, click.ClickException, OSError, ValueError):
        return []
    return [CompletionItem(n) for n in names if n.startswith(incomplete)]


def completion_script(app: click.Command, shell: str) -> str:
    """The source script of `shell` that completes `kubectl-teal ...`."""
    cls = get_completion_class(shell)
    if cls is None:  # pragma: no cover - the Choice allows only known shells
        raise CliError(f"no completion for {shell}", 64)
    return cls(app, {}, PROG_NAME, COMPLETE_VAR).source()


def plugin_completions(app: click.Command, argv: Sequence[str]) -> list[str]:
    """The lines kubectl expects from kubectl_complete-teal for `kubectl teal ARGV` (last: the partial word)."""
    words = list(argv)
    incomplete = words.pop() if words else ""
    items = ShellComplete(app, {}, PROG_NAME, COMPLETE_VAR).get_completions(words, incomplete)
    lines = [f"{i.value}\t{i.help}" if i.help else str(i.value) for i in items if i.type == "plain"]
    files = any(i.type in ("file", "dir") for i in items)
    return [*lines, f":{DEFAULT_COMP if files else NO_FILE_COMP}"]


# ---------------------------------------------------------------- version


def plugin_version() -> str:
    try:
        return importlib.metadata.version("teal-operator")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - run from a source tree
        return "unknown"


def operator_builds(cluster: Cluster) -> list[dict[str, Any]]:
    """The operator Deployments the chart made, of every namespace when allowed, else of this one.

    Read from the Deployment (its `app.kubernetes.io/version` label and the image it runs) rather than
    from the operator's metrics endpoint: a get/list on Deployments is what anyone who reads Rollouts
    usually may do, while the metrics port needs a port-forward or a network path to the pod."""
    try:
        deployments = cluster.client.items(DEPLOYMENTS, None, label_selector=OPERATOR_SELECTOR)
    except Exception:  # noqa: BLE001 - forbidden cluster-wide: look in the namespace
        deployments = cluster.items(DEPLOYMENTS, OPERATOR_SELECTOR)
    out = []
    for dep in deployments:
        meta, spec, st = dep.get("metadata") or {}, dep.get("spec") or {}, dep.get("status") or {}
        containers = ((spec.get("template") or {}).get("spec") or {}).get("containers") or []
        image = next((c.get("image") for c in containers if c.get("name") == "operator"), None)
        out.append(
            {
                "namespace": meta.get("namespace"),
                "name": meta.get("name"),
                "version": (meta.get("labels") or {}).get("app.kubernetes.io/version"),
                "image": image or (containers[0].get("image") if containers else None),
                "ready": f"{int(st.get('readyReplicas') or 0)}/{int(spec.get('replicas', 1) or 0)}",
            }
        )
    return sorted(out, key=lambda d: (d["namespace"] or "", d["name"] or ""))


def cmd_version(cluster: Cluster | None, args: argparse.Namespace) -> int:
    info: dict[str, Any] = {
        "client": {"version": plugin_version(), "python": platform.python_version(), "click": importlib.metadata.version("click")}
    }
    if cluster is not None:
        info["operators"] = operator_builds(cluster)
    if args.output != "text":
        _out(json.dumps(info, indent=2) if args.output == "json" else _yaml(info))
        return EXIT_OK
    c = info["client"]
    _out(f"Client:   kubectl-teal {c['version']} (python {c['python']}, click {c['click']})")
    if cluster is None:
        return EXIT_OK
    if not info["operators"]:
        _out(f"Operator: none found (no Deployment labelled {OPERATOR_SELECTOR} that you may read)")
    for op in info["operators"]:
        _out(
            f"Operator: {op['version'] or '?'}  image {op['image'] or '?'}  deployment {op['namespace']}/{op['name']}  {op['ready']} ready"
        )
    return EXIT_OK


def _yaml(data: Mapping[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(dict(data), sort_keys=False).rstrip()
