"""kubectl-teal: the kubectl plugin for Teal Rollouts (`kubectl teal ...`).

Installed as the console script `kubectl-teal`, so kubectl finds it as a plugin. Talks
to the cluster with the kubernetes client and the usual kubeconfig (`--kubeconfig`,
`$KUBECONFIG`, `--context`, `-n/--namespace`; in a pod, the ServiceAccount).

Exit codes (see docs/kubectl-teal.md):
  0  done / healthy / manifests valid
  1  `status`: the release ended Aborted or Degraded;  `lint`: invalid manifests
  2  `status`: timed out
  3  the Rollout (or a revision asked for) was not found
  4  refused: the command does not apply in the Rollout's current state
  5  error talking to the cluster (unreachable, forbidden, conflict after retries)
  64 usage error (bad flags or arguments)
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import click

from .api import (
    ANNOTATION_HASH,
    ANNOTATION_REVISION,
    COLORS,
    LABEL_COLOR,
    LABEL_ROLLOUT,
    SpecError,
    parse_duration,
    template_hash,
)
from .cli_cluster import (  # noqa: F401  (re-exported: the commands' shared names)
    EXIT_API,
    EXIT_FAILED,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_TIMEOUT,
    EXIT_USAGE,
    FIELD_MANAGER,
    GLOBAL_KEYS,
    PROG,
    ROLLOUTS,
    TEAL_FIELD_MANAGER,
    ApiError,
    CliError,
    Cluster,
    _err,
    _out,
    connect,
    global_options,
    in_release,
    namespace_args,
)
from .status import Phase

# ---------------------------------------------------------------- helpers


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def retry_conflicts(fn: Callable[[], int], attempts: int = 5) -> int:
    """Re-read and re-apply on 409 Conflict (a patch guarded by resourceVersion)."""
    for i in range(attempts):
        try:
            return fn()
        except ApiError as exc:
            if exc.status != 409 or i == attempts - 1:
                raise
            time.sleep(0.2 * (i + 1))
    return EXIT_API  # pragma: no cover


def transient(exc: CliError) -> bool:
    """An error worth retrying while waiting: the API unreachable, overloaded or failing (not 4xx)."""
    if isinstance(exc, ApiError):
        return exc.status >= 500 or exc.status == 429
    return exc.code == EXIT_API


def parse_timeout(text: str) -> float:
    try:
        return parse_duration(text if not text.isdigit() else int(text), "--timeout")
    except SpecError as exc:
        raise CliError(f"--timeout: {exc.message}", EXIT_USAGE) from None


# ---------------------------------------------------------------- get / list


def gather(cluster: Cluster, ro: Mapping[str, Any]) -> tuple[dict, dict]:
    name = ro["metadata"]["name"]
    deployments = {c: cluster.deployment(f"{name}-{c}") for c in COLORS}
    bg = ((ro.get("spec") or {}).get("strategy") or {}).get("blueGreen") or {}
    names = list(bg.get("activeServices") or []) + ([bg["previewService"]] if bg.get("previewService") else [])
    services = {s: cluster.service(s) for s in names}
    return deployments, services


def cmd_get(cluster: Cluster, args: argparse.Namespace) -> int:
    from .cli_render import rollout_tree

    if args.output in ("yaml", "json"):
        ro = cluster.get_rollout(args.name)
        if args.output == "json":
            _out(json.dumps(ro, indent=2))
        else:
            import yaml

            _out(yaml.safe_dump(ro, sort_keys=False).rstrip())
        return EXIT_OK

    if args.watch:
        from .cli_watch import watch

        return watch(cluster, args, end_process=True)
    ro = cluster.get_rollout(args.name)
    deployments, services = gather(cluster, ro)
    _out(rollout_tree(ro, deployments, services, measurements=args.measurements))
    return EXIT_OK


def cmd_list(cluster: Cluster, args: argparse.Namespace) -> int:
    from .cli_render import list_table

    items = cluster.list_rollouts(args.all_namespaces)
    if args.output == "name":
        for ro in items:
            _out(f"rollout.teal.dev/{ro['metadata']['name']}")
        return EXIT_OK
    if not items:
        where = "any namespace" if args.all_namespaces else f"namespace {cluster.namespace}"
        print(f"No Rollouts found in {where}.", file=sys.stderr)
        return EXIT_OK
    _out(list_table(items, all_namespaces=args.all_namespaces, wide=args.output == "wide"))
    return EXIT_OK


# ---------------------------------------------------------------- promote / abort / retry


def cmd_promote(cluster: Cluster, args: argparse.Namespace) -> int:
    def attempt() -> int:
        ro = cluster.get_rollout(args.name)
        st = ro.get("status") or {}
        rev = st.get("currentRevision")
        if rev is None or not in_release(ro):
            raise CliError(
                f"rollout {args.name} has no release in progress to promote"
                + (f" (revision {rev} is stable)" if rev is not None else " (no status yet: is Teal running?)"),
                EXIT_REFUSED,
            )
        if st.get("phase") == Phase.ABORTED:
            raise CliError(f"revision {rev} of {args.name} was aborted; `{PROG} retry {args.name}` starts it again", EXIT_REFUSED)
        step = st.get("currentStep")
        promote = {"revision": str(rev), "step": int(step) if step is not None else None, "full": bool(args.full)}
        cluster.write_status(ro, {"promote": promote})
        what = (
            "fully (skipping the remaining steps and analysis)"
            if args.full
            else (f"past step {step}" if step is not None else "")
        )
        _out(f"rollout {args.name} revision {rev} promoted {what}".rstrip())
        return EXIT_OK

    return retry_conflicts(attempt)


def cmd_abort(cluster: Cluster, args: argparse.Namespace) -> int:
    user = cluster.whoami() or os.environ.get("USER") or "unknown user"

    def attempt() -> int:
        ro = cluster.get_rollout(args.name)
        st = ro.get("status") or {}
        rev = st.get("currentRevision")
        if rev is None or not in_release(ro):
            raise CliError(f"rollout {args.name} has no release in progress to abort", EXIT_REFUSED)
        if st.get("phase") == Phase.ABORTED or str((st.get("abort") or {}).get("revision")) == str(rev):
            _out(f"rollout {args.name} revision {rev} is already aborted")
            return EXIT_OK
        message = f"aborted by {user} with kubectl teal"
        if args.message:
            message += f": {args.message}"
        abort = {"revision": str(rev), "reason": "AbortedByUser", "message": message, "at": now_iso()}
        cluster.write_status(ro, {"abort": abort})
        _out(f"rollout {args.name} revision {rev} aborted: traffic goes back to the stable colour")
        return EXIT_OK

    return retry_conflicts(attempt)


def cmd_retry(cluster: Cluster, args: argparse.Namespace) -> int:
    def attempt() -> int:
        ro = cluster.get_rollout(args.name)
        st = ro.get("status") or {}
        if st.get("phase") != Phase.ABORTED:
            raise CliError(
                f"rollout {args.name} is {st.get('phase') or 'without status'}, not Aborted; only an aborted release can be retried",
                EXIT_REFUSED,
            )
        cluster.write_status(ro, {"abort": None})
        _out(f"rollout {args.name} revision {st.get('currentRevision', '?')} retried")
        return EXIT_OK

    return retry_conflicts(attempt)


# ---------------------------------------------------------------- pause / resume


def cmd_pause(cluster: Cluster, args: argparse.Namespace, paused: bool) -> int:
    ro = cluster.get_rollout(args.name)
    if bool((ro.get("spec") or {}).get("paused")) == paused:
        _out(f"rollout {args.name} is already {'paused' if paused else 'resumed'}")
        return EXIT_OK
    cluster.patch_rollout(args.name, {"spec": {"paused": paused}})
    _out(f"rollout {args.name} {'paused' if paused else 'resumed'}")
    return EXIT_OK


# ---------------------------------------------------------------- undo


def filter_managed(obj: Any, fields: Mapping[str, Any]) -> Any:
    """The part of `obj` listed in a managedFields fieldsV1 set (what one manager applied)."""
    if isinstance(obj, dict):
        out = {}
        for key, value in obj.items():
            sub = fields.get(f"f:{key}")
            if sub is None:
                continue
            if not isinstance(value, (dict, list)) or not _has_children(sub):
                out[key] = copy.deepcopy(value)
            else:
                out[key] = filter_managed(value, sub)
        return out
    if isinstance(obj, list):
        keyed = [k for k in fields if k.startswith(("k:", "v:", "i:"))]
        if not keyed:
            return copy.deepcopy(obj)
        out_list = []
        for i, item in enumerate(obj):
            for k in keyed:
                if k.startswith("k:"):
                    want = json.loads(k[2:])
                    if isinstance(item, dict) and all(item.get(a) == b for a, b in want.items()):
                        out_list.append(filter_managed(item, fields[k]) if _has_children(fields[k]) else item)
                        break
                elif k.startswith("v:"):
                    if item == json.loads(k[2:]):
                        out_list.append(copy.deepcopy(item))
                        break
                elif k == f"i:{i}":
                    out_list.append(filter_managed(item, fields[k]) if _has_children(fields[k]) else item)
                    break
        return out_list
    return obj


def _has_children(fields: Mapping[str, Any]) -> bool:
    return any(k != "." for k in fields)


def strip_teal_labels(template: Mapping[str, Any]) -> dict[str, Any]:
    tmpl = copy.deepcopy(dict(template))
    meta = tmpl.get("metadata")
    if isinstance(meta, dict):
        for k in ("creationTimestamp", "name", "namespace", "uid", "resourceVersion"):
            meta.pop(k, None)
        labels = meta.get("labels")
        if isinstance(labels, dict):
            labels.pop(LABEL_COLOR, None)
            labels.pop(LABEL_ROLLOUT, None)
        if not meta:
            tmpl.pop("metadata")
    return tmpl


def deployment_template(dep: Mapping[str, Any]) -> dict[str, Any]:
    """The pod template Teal applied to a colour Deployment, without the apiserver's defaults.

    Teal applies Deployments with server-side apply, so its managedFields entry lists
    exactly the fields it wrote; when the result hashes to the Deployment's
    teal.dev/template-hash it is the Rollout's template of that revision, byte for byte.
    """
    full = strip_teal_labels(((dep.get("spec") or {}).get("template")) or {})
    want = ((dep.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_HASH)
    candidates: list[dict[str, Any]] = []
    for entry in (dep.get("metadata") or {}).get("managedFields") or []:
        if entry.get("operation") != "Apply":
            continue
        tfields = ((entry.get("fieldsV1") or {}).get("f:spec") or {}).get("f:template")
        if not tfields:
            continue
        cand = strip_teal_labels(filter_managed(dep["spec"]["template"], tfields))
        if entry.get("manager") == TEAL_FIELD_MANAGER:
            candidates.insert(0, cand)
        else:
            candidates.append(cand)
    for cand in candidates:
        if want and template_hash(cand) == want:
            return cand
    if want and template_hash(full) == want:
        return full
    return candidates[0] if candidates else full


def revision_template(cr: Mapping[str, Any]) -> dict[str, Any] | None:
    """The pod template stored in a ControllerRevision's data (a few shapes are accepted)."""
    data = cr.get("data")
    if not isinstance(data, dict):
        return None
    for candidate in (data.get("template"), (data.get("spec") or {}).get("template"), data):
        if isinstance(candidate, dict) and isinstance(candidate.get("spec"), dict) and "containers" in candidate["spec"]:
            return strip_teal_labels(candidate)
    return None


def _int(v: Any) -> int | None:
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


def revisions_of(cluster: Cluster, name: str) -> list[tuple[int, str, dict[str, Any]]]:
    """(revision, where, template) from the colour Deployments, then ControllerRevisions."""
    found: list[tuple[int, str, dict[str, Any]]] = []
    for c in COLORS:
        dep = cluster.deployment(f"{name}-{c}")
        if not dep:
            continue
        labels = (dep.get("metadata") or {}).get("labels") or {}
        if labels.get(LABEL_ROLLOUT) not in (None, name):
            continue
        rev = _int(((dep.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_REVISION))
        if rev is not None:
            found.append((rev, f"deployment/{name}-{c}", deployment_template(dep)))
    seen = {r for r, _, _ in found}
    for cr in cluster.controller_revisions(name):
        rev = _int(cr.get("revision"))
        tmpl = revision_template(cr)
        if rev is not None and tmpl is not None and rev not in seen:
            found.append((rev, f"controllerrevision/{cr['metadata']['name']}", tmpl))
            seen.add(rev)
    return sorted(found, key=lambda x: -x[0])


def undo_plan(
    name: str, current: Mapping[str, Any], current_rev: int | None, rev: int, where: str, tmpl: Mapping[str, Any]
) -> str:
    """What undo will do: the revision, where its template comes from, its images, the diff of the templates."""
    import difflib

    import yaml

    from .cli_render import _images

    def lines(t: Mapping[str, Any]) -> list[str]:
        return yaml.safe_dump(dict(t), sort_keys=True).splitlines()

    diff = difflib.unified_diff(
        lines(current),
        lines(tmpl),
        f"spec.template (now, revision {current_rev or '?'})",
        f"spec.template (revision {rev})",
        lineterm="",
    )
    head = [
        f"rollout {name}: back to revision {rev} (its template from {where})",
        f"images: {_images(tmpl) or '-'} (now: {_images(current) or '-'})",
    ]
    return "\n".join([*head, *diff])


def confirmed(args: argparse.Namespace, question: str) -> bool:
    """--yes; else a question on a terminal; else (a script without --yes) no, and say how."""
    if args.dry_run:
        _out("dry run: nothing changed")
        return False
    if args.yes:
        return True
    if sys.stdin.isatty() and sys.stdout.isatty():
        return click.confirm(question, default=False)
    _err("not changed: add --yes to do it (or --dry-run to only show it)")
    return False


def cmd_undo(cluster: Cluster, args: argparse.Namespace) -> int:
    ro = cluster.get_rollout(args.name)
    spec, st = ro.get("spec") or {}, ro.get("status") or {}
    if spec.get("workloadRef"):
        ref = spec["workloadRef"].get("name", "?")
        raise CliError(
            f"rollout {args.name} takes its template from deployment/{ref}: undo that change where the "
            f"Deployment is managed (Git), or `kubectl rollout undo deployment/{ref}`",
            EXIT_REFUSED,
        )
    current = spec.get("template") or {}
    current_hash = template_hash(current)
    current_rev = _int(st.get("currentRevision"))
    revisions = revisions_of(cluster, args.name)
    if args.to_revision is not None:
        match = [r for r in revisions if r[0] == args.to_revision]
        if not match:
            known = ", ".join(str(r[0]) for r in revisions) or "none"
            raise CliError(f"revision {args.to_revision} of {args.name} not found (known revisions: {known})", EXIT_NOT_FOUND)
        rev, where, tmpl = match[0]
    else:
        earlier = [r for r in revisions if r[0] != current_rev and template_hash(r[2]) != current_hash]
        if not earlier:
            raise CliError(f"rollout {args.name} has no earlier revision to go back to", EXIT_REFUSED)
        rev, where, tmpl = earlier[0]
    if template_hash(tmpl) == current_hash:
        _out(f"rollout {args.name} already runs the template of revision {rev}")
        return EXIT_OK
    _out(undo_plan(args.name, current, current_rev, rev, where, tmpl))
    if not confirmed(args, f"roll rollout {args.name} back to revision {rev}?"):
        return EXIT_OK if args.dry_run else EXIT_REFUSED
    patch = [
        {"op": "test", "path": "/metadata/resourceVersion", "value": ro["metadata"]["resourceVersion"]},
        {"op": "replace" if "template" in spec else "add", "path": "/spec/template", "value": tmpl},
    ]
    try:
        cluster.patch_rollout(args.name, patch, json_patch=True)
    except ApiError as exc:
        if exc.status in (409, 422) and "test" in exc.message.lower():
            raise CliError(f"rollout {args.name} changed while undoing; run the command again", EXIT_API) from exc
        raise
    _out(f"rollout {args.name} rolled back to the template of revision {rev} (from {where})")
    return EXIT_OK


# ---------------------------------------------------------------- status


def judge(ro: Mapping[str, Any]) -> tuple[str, str]:
    """('done'|'failed'|'waiting', line) for `status`."""
    meta, st = ro.get("metadata") or {}, ro.get("status") or {}
    phase = st.get("phase")
    msg = st.get("message") or ""
    if not st:
        return "waiting", "waiting for Teal to report a status"
    if st.get("observedGeneration") != meta.get("generation"):
        return "waiting", (
            f"waiting for Teal to see generation {meta.get('generation')} (status is for {st.get('observedGeneration')})"
        )
    cur, stable = st.get("currentRevision"), st.get("stableRevision")
    if phase == Phase.HEALTHY and cur is not None and str(cur) == str(stable):
        return "done", f"Healthy: revision {cur} is live on {st.get('activeColor') or st.get('stableColor') or '?'}"
    if phase in (Phase.ABORTED, Phase.DEGRADED):
        reason = f" ({st['reason']})" if st.get("reason") else ""
        return "failed", f"{phase}{reason}: {msg}"
    step = f" step {st['currentStep']}" if st.get("currentStep") else ""
    return "waiting", f"{phase or 'Unknown'}{step}: {msg}"


def cmd_status(cluster: Cluster, args: argparse.Namespace) -> int:
    timeout = parse_timeout(args.timeout)
    t0 = time.monotonic()
    last = None
    while True:
        try:
            ro = cluster.get_rollout(args.name)
        except CliError as exc:
            if not transient(exc) or time.monotonic() - t0 >= timeout:
                raise
            print(f"warning: {exc.message} (retrying)", file=sys.stderr, flush=True)
            time.sleep(min(args.interval, 5.0))
            continue
        verdict, line = judge(ro)
        if line != last:
            elapsed = int(time.monotonic() - t0)
            _out(f"[{elapsed:>4}s] {line}")
            last = line
        if verdict == "done":
            return EXIT_OK
        if verdict == "failed":
            return EXIT_FAILED
        left = timeout - (time.monotonic() - t0)
        if left <= 0:
            _out(f"timed out after {args.timeout} waiting for rollout {args.name} to become Healthy")
            return EXIT_TIMEOUT
        time.sleep(min(args.interval, max(0.05, left)))


# ---------------------------------------------------------------- lint


def cmd_lint(args: argparse.Namespace) -> int:
    import yaml

    from .cli_lint import CrdIndex, default_crd_dirs, lint_paths

    dirs = [Path(p) for p in args.crds] if args.crds else default_crd_dirs()
    if not dirs:
        raise CliError("no CRDs found (the package's teal/crds is empty); pass --crds DIR", EXIT_USAGE)
    missing = [str(d) for d in dirs if not d.exists()]
    if missing:
        raise CliError(f"--crds: {', '.join(missing)} not found", EXIT_USAGE)
    try:
        index = CrdIndex.from_paths(dirs)
    except (OSError, yaml.YAMLError) as exc:
        raise CliError(f"cannot read the CRDs: {exc}", EXIT_USAGE) from exc
    if not len(index):
        raise CliError(f"no CustomResourceDefinitions in {', '.join(map(str, dirs))}", EXIT_USAGE)
    result = lint_paths(args.filename, index, recursive=args.recursive)
    for w in result.warnings:
        print(f"warning: {w}", file=sys.stderr)
    for p in result.problems:
        _out(p.line())
    if not args.quiet:
        summary = f"{result.files} file(s), {result.checked} Teal object(s) checked, {result.skipped} other object(s) skipped: "
        summary += f"{len(result.problems)} error(s)" if result.problems else "valid"
        print(summary, file=sys.stderr)
    return EXIT_FAILED if result.problems else EXIT_OK


# ---------------------------------------------------------------- the command line (click)

EXIT_CODES = (
    "Exit codes: 0 ok; 1 failed (status: Aborted/Degraded; lint: invalid); 2 status timed out; "
    "3 not found; 4 refused in this state (or not confirmed); 5 API error; 64 usage; 130 interrupted. "
    "See docs/kubectl-teal.md."
)


def _run(fn: Callable[[Cluster, argparse.Namespace], int], params: Mapping[str, Any]) -> int:
    """Connect with the global flags, then run fn(cluster, args)."""
    args = namespace_args(click.get_current_context(), **params)
    return fn(connect(args), args)


class TealCommand(click.Command):
    """A command that takes the global flags too (kubectl accepts them after the command); its help
    lists only its own options (the global ones are in `kubectl teal --help`), completion offers all."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.params.extend(global_options(hidden=False))

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        own = [p.get_help_record(ctx) for p in self.get_params(ctx) if p.name not in GLOBAL_KEYS]
        with formatter.section("Options"):
            formatter.write_dl([r for r in own if r is not None])
        formatter.write_paragraph()
        formatter.write_text("The connection flags of `kubectl teal --help` (--kubeconfig, -n, --as, ...) work here too.")


class TealGroup(click.Group):
    command_class = TealCommand


def _name(required: bool = True, metavar: str = "NAME") -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    from .cli_complete import complete_rollouts

    return click.argument("name", metavar=metavar, required=required, shell_complete=complete_rollouts)


@click.group(
    cls=TealGroup,
    name="kubectl-teal",
    help="Inspect and steer Teal blue/green Rollouts (kubectl teal).\n\n"
    "The connection flags (--kubeconfig, --context, -n, --as, --request-timeout, ...) work before or after the command.",
    epilog=EXIT_CODES,
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 120},
)
def app(**_: Any) -> None:
    pass


app.params.extend(global_options(hidden=False))


@app.command(name="get", help="Show a Rollout as a tree: phase, colours, pods, Services, weights, step, measurements, Events.")
@_name()
@click.option("-w", "--watch", is_flag=True, help="follow the Rollout from a watch stream, redrawn in place (Ctrl-C ends)")
@click.option("--interval", type=float, default=1.0, hidden=True, help="kept for compatibility; --watch reads a watch stream")
@click.option("--measurements", type=int, default=5, show_default=True, help="how many recent measurements to show")
@click.option("-o", "--output", type=click.Choice(["tree", "yaml", "json"]), default="tree", show_default=True)
def get_command(**params: Any) -> int:
    return _run(cmd_get, params)


@app.command(name="list", help="List Rollouts.")
@click.option("-o", "--output", type=click.Choice(["table", "wide", "name"]), default="table", show_default=True)
def list_command(**params: Any) -> int:
    return _run(cmd_list, params)


@app.command(name="promote", help="Let the release in progress go on (past a pause, a preview or an inconclusive analysis).")
@_name()
@click.option("--full", is_flag=True, help="skip the remaining steps and analysis: switch now")
def promote_command(**params: Any) -> int:
    return _run(cmd_promote, params)


@app.command(name="abort", help="Abort the release in progress: all traffic back to the stable colour.")
@_name()
@click.option("--message", default="", help="a note added to the abort message")
def abort_command(**params: Any) -> int:
    return _run(cmd_abort, params)


@app.command(name="retry", help="Start an aborted release again.")
@_name()
def retry_command(**params: Any) -> int:
    return _run(cmd_retry, params)


@app.command(name="pause", help="Hold the release in progress where it is (spec.paused=true).")
@_name()
def pause_command(**params: Any) -> int:
    return _run(lambda c, a: cmd_pause(c, a, True), params)


@app.command(name="resume", help="Let a paused Rollout go on (spec.paused=false).")
@_name()
def resume_command(**params: Any) -> int:
    return _run(lambda c, a: cmd_pause(c, a, False), params)


@app.command(
    name="undo",
    help="Go back to an earlier revision's pod template: prints the revision, its images and the diff, then needs --yes (or asks on a terminal).",
)
@_name()
@click.option("--to-revision", type=int, default=None, metavar="N", help="the revision to go back to (default: the previous one)")
@click.option("-y", "--yes", is_flag=True, help="do it without asking")
@click.option("--dry-run", is_flag=True, help="only print what it would do")
def undo_command(**params: Any) -> int:
    return _run(cmd_undo, params)


@app.command(name="status", help="Wait for the release to end; exit 0 healthy, 1 aborted/degraded, 2 timed out.")
@_name()
@click.option("--timeout", default="10m", show_default=True, help="how long to wait, like 30s, 10m, 1h")
@click.option("--interval", type=float, default=1.0, show_default=True, help="seconds between checks")
def status_command(**params: Any) -> int:
    return _run(cmd_status, params)


@app.command(
    name="handover",
    help="Delete the Rollout but keep its stable colour as a plain Deployment you own, so the Services keep their endpoints.",
)
@_name()
def handover_command(**params: Any) -> int:
    from .cli_handover import cmd_handover

    return _run(cmd_handover, params)


@app.command(name="freeze", help="Hold every matching release at its next gate (aborts and reverts still act).")
@_name(required=False, metavar="[ROLLOUT]")
@click.option("--reason", required=True, help='why, recorded with who froze ("incident 4711")')
@click.option(
    "--until",
    default=None,
    metavar="TIME",
    help="when it ends by itself: RFC 3339 (2026-12-02T09:00:00Z) or from now (2h, 1d12h)",
)
def freeze_command(**params: Any) -> int:
    from .cli_freeze import cmd_freeze

    return _run(cmd_freeze, params)


@app.command(name="unfreeze", help="End a freeze made by `freeze` with the same target.")
@_name(required=False, metavar="[ROLLOUT]")
def unfreeze_command(**params: Any) -> int:
    from .cli_freeze import cmd_unfreeze

    return _run(cmd_unfreeze, params)


@app.command(name="lint", help="Validate manifests offline against Teal's CRD schemas and rules.")
@click.option(
    "-f",
    "--filename",
    multiple=True,
    required=True,
    metavar="FILE",
    help="a manifest file, a directory of them, or - for stdin (repeatable)",
)
@click.option("-R", "--recursive", is_flag=True, help="walk directories recursively")
@click.option(
    "--crds",
    multiple=True,
    metavar="PATH",
    help="CRD files or directories to validate against (default: the ones shipped with Teal)",
)
@click.option("-q", "--quiet", is_flag=True, help="no summary line")
def lint_command(**params: Any) -> int:
    return cmd_lint(namespace_args(click.get_current_context(), **params))


@app.group(name="set", cls=TealGroup, help="Change a Rollout's pod template.")
def set_group(**_: Any) -> None:
    pass


@set_group.command(
    name="image", help="Set container images of a Rollout's pod template: set image NAME CONTAINER=IMAGE... or --all=IMAGE."
)
@_name()
@click.argument("images", nargs=-1, metavar="CONTAINER=IMAGE...")
@click.option("--all", "all_image", metavar="IMAGE", default=None, help="this image for every container (and init container)")
def set_image_command(**params: Any) -> int:
    from .cli_edit import cmd_set_image

    return _run(cmd_set_image, params)


@app.command(name="restart", help="New pods for the stable colour without a release (the operator rolls its Deployment).")
@_name()
def restart_command(**params: Any) -> int:
    from .cli_edit import cmd_restart

    return _run(cmd_restart, params)


@app.command(name="version", help="The plugin's version and the operator's build (image and version label of its Deployment).")
@click.option("--client", is_flag=True, help="only the plugin's version: no cluster needed")
@click.option("-o", "--output", type=click.Choice(["text", "json", "yaml"]), default="text", show_default=True)
def version_command(**params: Any) -> int:
    from .cli_complete import cmd_version

    args = namespace_args(click.get_current_context(), **params)
    return cmd_version(None if args.client else connect(args), args)


@app.command(
    name="completion",
    help="A completion script for kubectl-teal: bash, zsh or fish (kubectl teal <TAB> uses kubectl_complete-teal).",
)
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion_command(shell: str, **_: Any) -> int:
    from .cli_complete import completion_script

    _out(completion_script(app, shell).rstrip("\n"))
    return EXIT_OK


@app.command(
    name="stats",
    help="Release statistics of a Rollout, a namespace or all (-A) from their status.history: releases per day, "
    "change-failure rate, time to restore, lead time, time in analysis.",
)
@_name(required=False, metavar="[ROLLOUT]")
@click.option("--since", default="30d", show_default=True, help="the window: 30d, 12h, 2w, ...")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("--prometheus", metavar="URL", default=None, help="also the operator's metrics there (they reach back further)")
def stats_command(**params: Any) -> int:
    from .cli_stats import cmd_stats

    return _run(cmd_stats, params)


@app.command(name="dashboard", help="Serve a local, read-only web view of Rollouts (promote/abort only with --allow-actions).")
@click.option("--address", default="127.0.0.1", show_default=True, help="the address to listen on")
@click.option("--port", type=int, default=3100, show_default=True, help="the port to listen on (0: any free port)")
@click.option("--allow-actions", is_flag=True, help="show promote/abort buttons that act with your credentials")
@click.option("--open/--no-open", "open_browser", default=False, help="open it in a browser")
def dashboard_command(**params: Any) -> int:
    from . import cli_dashboard  # type: ignore[attr-defined]  # issue 14 item 4 (built beside this)

    args = namespace_args(click.get_current_context(), **params)
    cluster = connect(args)
    explicit = args.namespace is not None and not args.all_namespaces
    namespace = cluster.namespace if explicit else None
    actions = {"promote": cmd_promote, "abort": cmd_abort}  # the page's buttons run these (with --allow-actions)
    return int(
        cli_dashboard.serve(
            cluster.client, namespace, args.address, args.port, args.allow_actions, args.open_browser, actions=actions
        )
    )


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        rv = app.main(args=argv, prog_name=PROG, complete_var="_KUBECTL_TEAL_COMPLETE", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:
        print(exc.ctx.get_help() if exc.ctx else "", file=sys.stderr)
        return EXIT_USAGE
    except click.UsageError as exc:  # usage errors exit 64, not click's 2 (= status timed out)
        exc.show(file=sys.stderr)
        return EXIT_USAGE
    except click.ClickException as exc:
        exc.show(file=sys.stderr)
        return EXIT_USAGE
    except click.Abort:
        print(file=sys.stderr)
        return 130
    except CliError as exc:
        _err(exc.message)
        return exc.code
    except KeyboardInterrupt:
        return 130
    return int(rv) if isinstance(rv, int) else EXIT_OK


def complete_main() -> int:
    """The console script kubectl_complete-teal, which kubectl runs for `kubectl teal <TAB>`."""
    from .cli_complete import plugin_completions

    for line in plugin_completions(app, sys.argv[1:]):
        print(line)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
