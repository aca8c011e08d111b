"""What every kubectl-teal command shares: exit codes, errors, and the Cluster (one namespace of the
cluster through teal.client) built from the kubeconfig flags. Commands live in teal.cli,
teal.cli_handover and teal.cli_freeze, which all import this module (and not each other's)."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from . import client
from .api import GROUP, LABEL_ROLLOUT, PLURAL, VERSION

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
        try:
            api = client.Client.from_kubeconfig(cfg_file, args.context, **options)
            namespace = namespace or client.Client.kubeconfig_namespace(cfg_file, args.context)
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
