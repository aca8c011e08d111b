"""What every kubectl-teal command shares: exit codes, errors, and the Cluster (one namespace of the
cluster through teal.client) built from the kubeconfig flags. Commands live in teal.cli,
teal.cli_handover and teal.cli_freeze, which all import this module (and not each other's)."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import click

from . import client
from .api import GROUP, LABEL_ROLLOUT, PLURAL, VERSION, SpecError, parse_duration

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_TIMEOUT = 2
EXIT_NOT_FOUND = 3
EXIT_REFUSED = 4
EXIT_API = 5
EXIT_USAGE = 64
ROLLOUTS = client.Resource(GROUP, VERSION, PLURAL)

PROG = "kubectl teal"
FIELD_MANAGER = "kubectl-teal"
TEAL_FIELD_MANAGER = "teal"  # the operator's server-side-apply manager (teal.kube.FIELD_MANAGER)


class CliError(Exception):
    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.message = message
        self.code = code


class ApiError(CliError):
    def __init__(self, status: int, message: str, reason: str = ""):
        code = EXIT_NOT_FOUND if status == 404 else EXIT_API
        super().__init__(message, code)
        self.status = status
        self.reason = reason


# ---------------------------------------------------------------- the cluster


class Cluster:
    """One namespace of the cluster through teal.client (dicts in, dicts out); every API error
    comes out as ApiError/CliError with the exit code the command should end with."""

    def __init__(self, api: client.Client, namespace: str):
        self.client = api
        self.namespace = namespace
        self.timeout = api.timeout.read

    # -- plumbing
    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        """teal.client's errors as the CLI's: no answer -> EXIT_API; else ApiError (404 -> EXIT_NOT_FOUND)."""
        try:
            yield
        except client.ApiError as exc:
            if exc.status == 0:
                raise CliError(f"cannot reach the Kubernetes API at {self.client.host}: {exc.message}", EXIT_API) from None
            raise ApiError(exc.status, exc.message, exc.reason) from None

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: Mapping[str, Any] | None = None,
        content_type: str | None = None,
    ) -> dict[str, Any]:
        """A raw call (for the endpoints without a Resource, e.g. SelfSubjectReview)."""
        with self._errors():
            return self.client.request(method, path, body=body, query=query, content_type=content_type)

    def get(self, res: client.Resource, name: str) -> dict[str, Any] | None:
        with self._errors():
            return self.client.get(res, self.namespace, name)

    def items(self, res: client.Resource, label_selector: str | None = None) -> list[dict[str, Any]]:
        with self._errors():
            return self.client.items(res, self.namespace, label_selector=label_selector)

    def create(self, res: client.Resource, body: Mapping[str, Any]) -> dict[str, Any]:
        with self._errors():
            return self.client.create(res, self.namespace, body, fieldManager=FIELD_MANAGER)

    def merge_patch(self, res: client.Resource, name: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        with self._errors():
            return self.client.merge_patch(res, self.namespace, name, patch, fieldManager=FIELD_MANAGER)

    def delete(
        self, res: client.Resource, name: str, uid: str | None = None, propagation: str | None = None
    ) -> dict[str, Any] | None:
        """None when it was gone already."""
        with self._errors():
            return self.client.delete(res, self.namespace, name, uid=uid, propagation=propagation)

    # -- rollouts
    def _rollout_api_missing(self) -> CliError:
        return CliError(
            "the Rollout API (rollouts.teal.dev) is not installed in this cluster; install Teal's CRDs", EXIT_NOT_FOUND
        )

    def get_rollout(self, name: str) -> dict[str, Any]:
        try:
            ro = self.get(ROLLOUTS, name)
        except ApiError as exc:
            raise self._rollout_api_missing() if exc.status == 404 else exc from None
        if ro is None:
            raise CliError(f'Rollout "{name}" not found in namespace "{self.namespace}"', EXIT_NOT_FOUND)
        return ro

    def list_rollouts(self, all_namespaces: bool = False) -> list[dict[str, Any]]:
        try:
            with self._errors():
                items = self.client.items(ROLLOUTS, None if all_namespaces else self.namespace)
        except ApiError as exc:
            raise self._rollout_api_missing() if exc.status == 404 else exc from None
        return sorted(items, key=lambda r: (r["metadata"].get("namespace", ""), r["metadata"]["name"]))

    def patch_rollout(self, name: str, patch: Any, status: bool = False, json_patch: bool = False) -> dict[str, Any]:
        sub = "status" if status else None
        with self._errors():
            if json_patch:
                return self.client.json_patch(ROLLOUTS, self.namespace, name, patch, sub=sub, fieldManager=FIELD_MANAGER)
            return self.client.merge_patch(ROLLOUTS, self.namespace, name, patch, sub=sub, fieldManager=FIELD_MANAGER)

    def write_status(self, ro: Mapping[str, Any], status: Mapping[str, Any]) -> dict[str, Any]:
        """Merge `status` into the Rollout's status, only if nobody wrote it since `ro` was read."""
        return self.patch_rollout(
            ro["metadata"]["name"],
            {"metadata": {"resourceVersion": ro["metadata"]["resourceVersion"]}, "status": dict(status)},
            status=True,
        )

    # -- what a Rollout owns or points at (None/empty when absent or not readable)
    def get_optional(self, res: client.Resource, name: str) -> dict[str, Any] | None:
        try:
            return self.get(res, name)
        except ApiError as exc:
            if exc.status in (404, 403):
                return None
            raise

    def deployment(self, name: str) -> dict[str, Any] | None:
        return self.get_optional(client.DEPLOYMENTS, name)

    def service(self, name: str) -> dict[str, Any] | None:
        return self.get_optional(client.SERVICES, name)

    def controller_revisions(self, rollout: str) -> list[dict[str, Any]]:
        try:
            return self.items(client.CONTROLLER_REVISIONS, f"{LABEL_ROLLOUT}={rollout}")
        except ApiError as exc:
            if exc.status in (403, 404):
                return []
            raise

    def whoami(self) -> str | None:
        """The user name as the apiserver sees it (SelfSubjectReview), if it says."""
        try:
            answer = self.request(
                "POST",
                "/apis/authentication.k8s.io/v1/selfsubjectreviews",
                {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"},
            )
        except CliError:
            return None
        return ((answer.get("status") or {}).get("userInfo") or {}).get("username")


# ---------------------------------------------------------------- kubeconfig


def _kubeconfig_paths(explicit: str | None) -> list[str]:
    if explicit:
        return [explicit]
    env = os.environ.get("KUBECONFIG")
    if env:
        return [p for p in env.split(os.pathsep) if p]
    return [str(Path.home() / ".kube" / "config")]


_PATH_KEYS = {"clusters": ("certificate-authority",), "users": ("client-certificate", "client-key", "tokenFile")}
OVERRIDE_CONTEXT = "kubectl-teal-override"


def _merged_kubeconfig(paths: Sequence[str]) -> dict[str, Any]:
    """The kubeconfig files merged as kubectl merges them (the first file naming an entry wins), with
    relative file paths made absolute (they are relative to the file that names them)."""
    import yaml

    merged: dict[str, Any] = {"clusters": [], "users": [], "contexts": [], "current-context": None}
    for path in paths:
        doc = yaml.safe_load(Path(path).read_text()) or {}
        base = Path(path).resolve().parent
        merged["current-context"] = merged["current-context"] or doc.get("current-context")
        for section in ("clusters", "users", "contexts"):
            known = {e.get("name") for e in merged[section]}
            for entry in doc.get(section) or []:
                if entry.get("name") in known:
                    continue
                body = dict(entry.get(section[:-1]) or {})
                for key in _PATH_KEYS.get(section, ()):
                    if body.get(key) and not Path(body[key]).is_absolute():
                        body[key] = str(base / body[key])
                merged[section].append({"name": entry.get("name"), section[:-1]: body})
    return merged


@contextlib.contextmanager
def _overridden(paths: Sequence[str], args: argparse.Namespace) -> Iterator[tuple[str, str] | None]:
    """With --cluster/--user: a private kubeconfig whose one context is the chosen one with that
    cluster/user (kubectl's overrides); removed once the client has read it. Else None."""
    if not (getattr(args, "cluster", None) or getattr(args, "user", None)):
        yield None
        return
    import tempfile

    import yaml

    cfg = _merged_kubeconfig(paths)
    want = args.context or cfg["current-context"]
    ctx = next((dict(c.get("context") or {}) for c in cfg["contexts"] if c.get("name") == want), {})
    for key, flag in (("cluster", args.cluster), ("user", args.user)):
        if flag:
            if not any(e.get("name") == flag for e in cfg[key + "s"]):
                raise CliError(f"{key} {flag!r} is not in the kubeconfig", EXIT_USAGE)
            ctx[key] = flag
    cfg["contexts"].append({"name": OVERRIDE_CONTEXT, "context": ctx})
    cfg["current-context"] = OVERRIDE_CONTEXT
    with tempfile.NamedTemporaryFile("w", prefix="kubectl-teal-", suffix=".yaml") as f:  # mode 0600
        yaml.safe_dump({"apiVersion": "v1", "kind": "Config", **cfg}, f)
        f.flush()
        yield f.name, OVERRIDE_CONTEXT


def connect(args: argparse.Namespace) -> Cluster:
    """A Cluster for the kubeconfig/context/namespace flags (or the in-cluster ServiceAccount);
    --request-timeout bounds every call; `as_user`/`as_groups`, when set, impersonate (kubectl's --as)."""
    options: dict[str, Any] = {
        "timeout": args.request_timeout,
        "user_agent": "kubectl-teal",
        "impersonate_user": getattr(args, "as_user", None),
        "impersonate_groups": getattr(args, "as_groups", None) or (),
    }
    paths = _kubeconfig_paths(args.kubeconfig)
    existing = [p for p in paths if Path(p).exists()]
    namespace = args.namespace
    if args.kubeconfig and not existing:
        raise CliError(f"kubeconfig {args.kubeconfig} not found", EXIT_USAGE)
    if existing:
        cfg_file = os.pathsep.join(existing) if len(existing) > 1 else existing[0]
        context = args.context
        with _overridden(existing, args) as override:
            if override is not None:
                cfg_file, context = override
            try:
                api = client.Client.from_kubeconfig(cfg_file, context, **options)
                namespace = namespace or client.Client.kubeconfig_namespace(cfg_file, context)
            except client.ConfigError as exc:
                raise CliError(f"invalid kubeconfig: {exc}", EXIT_USAGE) from None
    elif os.environ.get("KUBERNETES_SERVICE_HOST"):
        api = client.Client.in_cluster(**options)
        if not namespace:
            sa_ns = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
            namespace = sa_ns.read_text().strip() if sa_ns.exists() else None
    else:
        raise CliError(f"no kubeconfig found (looked at {', '.join(paths)}) and not running in a cluster", EXIT_USAGE)
    return Cluster(api, namespace or "default")


# ---------------------------------------------------------------- kubectl's global flags


def global_options(hidden: bool) -> list[click.Option]:
    """kubectl's connection flags; on the group and on every command, so they work before or after it."""
    return [
        click.Option(
            ["--kubeconfig"], metavar="PATH", hidden=hidden, help="the kubeconfig file (default $KUBECONFIG, ~/.kube/config)"
        ),
        click.Option(["--context"], metavar="NAME", hidden=hidden, help="the kubeconfig context to use"),
        click.Option(
            ["--cluster"], metavar="NAME", hidden=hidden, help="the kubeconfig cluster to use (overrides the context's)"
        ),
        click.Option(["--user"], metavar="NAME", hidden=hidden, help="the kubeconfig user to use (overrides the context's)"),
        click.Option(
            ["-n", "--namespace"], metavar="NS", hidden=hidden, help="the namespace (default: the context's, else default)"
        ),
        click.Option(
            ["-A", "--all-namespaces"],
            is_flag=True,
            default=None,
            hidden=hidden,
            help="every namespace (list, freeze, stats, dashboard)",
        ),
        click.Option(["--as", "as_user"], metavar="USER", hidden=hidden, help="impersonate this user (kubectl's --as)"),
        click.Option(
            ["--as-group", "as_groups"], metavar="GROUP", multiple=True, hidden=hidden, help="impersonate this group (repeatable)"
        ),
        click.Option(
            ["--request-timeout"],
            metavar="DURATION",
            hidden=hidden,
            help="how long to wait for one API request: 30s, 1m, a number of seconds, 0 for no limit (default 30s)",
        ),
        click.Option(["-v", "--v", "verbosity"], metavar="LEVEL", hidden=True, help="accepted for kubectl's habit; ignored"),
    ]


GLOBAL_KEYS = (
    "kubeconfig",
    "context",
    "cluster",
    "user",
    "namespace",
    "all_namespaces",
    "as_user",
    "as_groups",
    "request_timeout",
    "verbosity",
)
NO_LIMIT_S = 7 * 86400.0  # --request-timeout 0: no limit (a week bounds a read that nothing will ever answer)


def parse_request_timeout(text: str | None) -> float:
    """kubectl's --request-timeout: '30s', '1m', '1h', '0' (no limit) or a plain number of seconds."""
    if text is None:
        return 30.0
    value = text.strip()
    try:
        seconds = float(value) if value.replace(".", "", 1).isdigit() else parse_duration(value, "--request-timeout")
    except SpecError as exc:
        raise CliError(f"--request-timeout: {exc.message} (want e.g. 30s, 1m, 0)", EXIT_USAGE) from None
    return NO_LIMIT_S if seconds == 0 else float(seconds)


def namespace_args(ctx: click.Context, **params: Any) -> argparse.Namespace:
    """The command's parameters plus the global flags, a command's own value winning over the group's."""
    merged: dict[str, Any] = {k: None for k in GLOBAL_KEYS}
    chain = []
    c: click.Context | None = ctx
    while c is not None:
        chain.append(c)
        c = c.parent
    for level in reversed(chain):  # the root first, the command last
        for key in GLOBAL_KEYS:
            value = level.params.get(key)
            if key == "as_groups":
                merged[key] = [*(merged[key] or []), *(value or ())]
            elif value not in (None, ()):
                merged[key] = value
    merged["all_namespaces"] = bool(merged["all_namespaces"])
    merged["request_timeout"] = parse_request_timeout(merged["request_timeout"])
    merged.update({k: v for k, v in params.items() if k not in GLOBAL_KEYS})
    return argparse.Namespace(**merged)


# ---------------------------------------------------------------- output and state


def _out(text: str = "") -> None:
    print(text, flush=True)


def _err(text: str) -> None:
    print(f"error: {text}", file=sys.stderr, flush=True)


def in_release(ro: Mapping[str, Any]) -> bool:
    st = ro.get("status") or {}
    return bool(st.get("release")) or (
        st.get("currentRevision") is not None and st.get("currentRevision") != st.get("stableRevision")
    )
