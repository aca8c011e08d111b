"""Fixtures and helpers for the kubectl-teal and Helm chart tests.

Import what a test module uses (`from cli_helpers import ...`); the fixtures build on
the session fixtures of tests/conftest.py (`cluster`, `k8s`, `namespace`).
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from teal_devenv.wait import wait_for

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "teal"
CRDS = ROOT / "crds"
EXAMPLES = ROOT / "examples"
GROUP, VERSION, PLURAL = "teal.dev", "v1alpha1", "rollouts"


# ---------------------------------------------------------------- binaries


@pytest.fixture(scope="session")
def binaries():
    from teal_devenv.binaries import find_binaries

    return find_binaries()


@pytest.fixture(scope="session")
def helm(binaries) -> str:
    if not binaries.helm:
        pytest.fail("helm was not found (run hack/build-binaries.sh)")
    return binaries.helm


@pytest.fixture(scope="session")
def kubectl(binaries) -> str:
    return binaries.kubectl


def run(
    cmd: list[str], input: str | None = None, check: bool = True, timeout: float = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


# ---------------------------------------------------------------- CRDs


def apply_crds(kubectl: str, kubeconfig: str, paths: list[Path]) -> None:
    """Install or update CRDs (server-side apply, so any test may call it) and wait until Established."""
    for path in paths:
        run(
            [
                kubectl,
                "--kubeconfig",
                kubeconfig,
                "apply",
                "--server-side",
                "--force-conflicts",
                "--field-manager",
                "teal-tests",
                "-f",
                str(path),
            ]
        )
    names = []
    for path in paths:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "CustomResourceDefinition":
                names.append(doc["metadata"]["name"])
    for name in names:
        run([kubectl, "--kubeconfig", kubeconfig, "wait", "--for=condition=Established", "--timeout=60s", f"crd/{name}"])


@pytest.fixture(scope="session")
def teal_crds(cluster, kubectl) -> list[str]:
    """The repository's CRDs (crds/*.yaml) installed in the local cluster."""
    rollouts = CRDS / "rollouts.yaml"
    assert rollouts.exists(), "crds/rollouts.yaml is missing"
    apply_crds(kubectl, cluster.kubeconfig, [rollouts])
    installed = [rollouts.name]
    for other in sorted(CRDS.glob("*.yaml")):
        if other == rollouts:
            continue
        try:  # the CLI tests need only Rollouts; the other CRDs are a bonus
            apply_crds(kubectl, cluster.kubeconfig, [other])
            installed.append(other.name)
        except AssertionError as exc:
            warnings.warn(f"could not install {other.name}: {str(exc)[:300]}", stacklevel=2)
    return installed


# ---------------------------------------------------------------- the chart


@pytest.fixture(scope="session")
def chart_dir(tmp_path_factory) -> Path:
    """charts/teal, with its files/crds/ filled from crds/ when the sync has not run yet."""
    if any((CHART / "files" / "crds").glob("*.yaml")):
        return CHART
    copy = tmp_path_factory.mktemp("chart") / "teal"
    shutil.copytree(CHART, copy)
    (copy / "files" / "crds").mkdir(parents=True, exist_ok=True)
    for f in CRDS.glob("*.yaml"):
        shutil.copy(f, copy / "files" / "crds" / f.name)
    return copy


def release_name(prefix: str = "teal") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


# ---------------------------------------------------------------- running kubectl-teal


class Result:
    def __init__(self, code: int, out: str, err: str):
        self.code, self.out, self.err = code, out, err

    def __repr__(self) -> str:
        return f"Result(code={self.code}, out={self.out!r}, err={self.err!r})"


def teal(*argv: str) -> Result:
    """Run `kubectl teal ARGV...` in this process; (exit code, stdout, stderr)."""
    from teal.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return Result(code, out.getvalue(), err.getvalue())


def teal_subprocess(*argv: str, **kwargs: Any) -> subprocess.Popen:
    """`kubectl-teal ARGV...` as a child process (line-buffered text stdout)."""
    return subprocess.Popen(
        [sys.executable, "-u", "-c", "import sys; from teal.cli import main; sys.exit(main())", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        bufsize=1,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        **kwargs,
    )


# ---------------------------------------------------------------- Rollouts in the cluster


def rollout_manifest(name: str, image: str = "registry.example.com/demo:1", **bg: Any) -> dict[str, Any]:
    blue_green = {"activeServices": [f"{name}-active"], **bg}
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Rollout",
        "metadata": {"name": name},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": image}]},
            },
            "strategy": {"blueGreen": blue_green},
        },
    }


class Rollouts:
    """Create Rollouts and write their status like the operator would."""

    def __init__(self, api_client: Any, namespace: str):
        from kubernetes import client

        self.ns = namespace
        self.custom = client.CustomObjectsApi(api_client)
        self.apps = client.AppsV1Api(api_client)
        self.core = client.CoreV1Api(api_client)

    def create(self, manifest: dict[str, Any]) -> dict[str, Any]:
        return self.custom.create_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, manifest)

    def get(self, name: str) -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, name)

    def set_status(self, name: str, status: dict[str, Any], observed: bool = True) -> dict[str, Any]:
        """Replace status wholesale (merge patch with nulls for keys that go away)."""
        ro = self.get(name)
        status = dict(status)
        if observed:
            status.setdefault("observedGeneration", ro["metadata"]["generation"])
        patch = {k: None for k in (ro.get("status") or {}) if k not in status}
        patch.update(status)
        return self.custom.patch_namespaced_custom_object_status(
            GROUP,
            VERSION,
            self.ns,
            PLURAL,
            name,
            {"status": patch},
            _content_type="application/merge-patch+json",
        )

    def patch_spec(self, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        return self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, self.ns, PLURAL, name, {"spec": spec}, _content_type="application/merge-patch+json"
        )

    def service(self, name: str, app: str, color: str | None = None) -> None:
        from kubernetes import client

        selector = {"app": app}
        if color:
            selector["teal.dev/color"] = color
        self.core.create_namespaced_service(
            self.ns,
            client.V1Service(
                metadata=client.V1ObjectMeta(name=name),
                spec=client.V1ServiceSpec(selector=selector, ports=[client.V1ServicePort(port=80, target_port=8080)]),
            ),
        )

    def colour_deployment(
        self, rollout: dict[str, Any], color: str, template: dict[str, Any], revision: int, replicas: int = 1
    ) -> dict[str, Any]:
        """A colour Deployment made the way the operator makes it (server-side apply as `teal`)."""
        from teal.api import template_hash
        from teal.kube import owner_reference

        name = rollout["metadata"]["name"]
        tmpl = yaml.safe_load(yaml.safe_dump(template))
        tmpl.setdefault("metadata", {}).setdefault("labels", {}).update({"teal.dev/rollout": name, "teal.dev/color": color})
        match = dict(rollout["spec"]["selector"]["matchLabels"], **{"teal.dev/color": color})
        manifest = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {
                "name": f"{name}-{color}",
                "namespace": self.ns,
                "labels": {"teal.dev/rollout": name, "teal.dev/color": color},
                "annotations": {"teal.dev/template-hash": template_hash(template), "teal.dev/revision": str(revision)},
                "ownerReferences": [owner_reference(rollout)],
            },
            "spec": {"replicas": replicas, "selector": {"matchLabels": match}, "template": tmpl},
        }
        return self.apps.patch_namespaced_deployment(
            f"{name}-{color}",
            self.ns,
            manifest,
            field_manager="teal",
            force=True,
            _content_type="application/apply-patch+yaml",
        )


def healthy_status(color: str = "blue", revision: str = "1", hash_: str = "h1") -> dict[str, Any]:
    return {
        "phase": "Healthy",
        "reason": "Healthy",
        "message": f"revision {revision} is live on {color}",
        "activeColor": color,
        "stableColor": color,
        "stableRevision": revision,
        "stableHash": hash_,
        "currentRevision": revision,
        "currentHash": hash_,
        "revision": int(revision),
    }


def progressing_status(
    stable: str = "blue",
    new: str = "green",
    stable_rev: str = "1",
    rev: str = "2",
    step: int | None = None,
    phase: str = "Progressing",
    **extra: Any,
) -> dict[str, Any]:
    st = {
        "phase": phase,
        "reason": extra.pop("reason", "Deploying"),
        "message": extra.pop("message", f"revision {rev}: waiting for {new}"),
        "activeColor": stable,
        "stableColor": stable,
        "previewColor": new,
        "stableRevision": stable_rev,
        "stableHash": "h1",
        "currentRevision": rev,
        "currentHash": "h2",
        "revision": int(rev),
        "release": {"revision": rev, "hash": "h2", "color": new, "stage": "Deploying"},
    }
    if step is not None:
        st["currentStep"] = step
    st.update(extra)
    return st


@pytest.fixture
def rollouts(k8s, namespace, teal_crds) -> Rollouts:
    return Rollouts(k8s, namespace)


def wait_line(proc: subprocess.Popen, predicate, timeout: float = 20.0) -> str:
    """Read the child's stdout until a line satisfies `predicate` (a reader thread keeps it non-blocking)."""
    import queue
    import threading

    q: queue.Queue[str | None] = getattr(proc, "_lines", None) or queue.Queue()
    if not hasattr(proc, "_lines"):

        def pump() -> None:
            for line in proc.stdout:  # type: ignore[union-attr]
                q.put(line.rstrip("\n"))
            q.put(None)

        threading.Thread(target=pump, daemon=True).start()
        proc._lines = q  # type: ignore[attr-defined]
    seen: list[str] = []

    def step() -> str | bool:
        try:
            line = q.get(timeout=0.1)
        except queue.Empty:
            return False
        if line is None:
            raise AssertionError(f"the process ended (exit {proc.wait()}) before the line came; saw {seen!r}")
        seen.append(line)
        return line if predicate(line) else False

    return wait_for(step, timeout=timeout, interval=0.0, what="a matching line", ignore=())


@contextlib.contextmanager
def kubeconfig_env(path: str) -> Iterator[None]:
    old = os.environ.get("KUBECONFIG")
    os.environ["KUBECONFIG"] = path
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("KUBECONFIG", None)
        else:
            os.environ["KUBECONFIG"] = old


def temp_kubeconfig(cluster: Any, token: str, user: str) -> str:
    fd, path = tempfile.mkstemp(prefix="kubeconfig-", suffix=".yaml")
    os.close(fd)
    return cluster.write_kubeconfig(path, token=token, user=user)


# ---------------------------------------------------------------- the chart, installed


class InstalledChart:
    """A `helm install` of charts/teal and a token for its ServiceAccount (TokenRequest API)."""

    def __init__(self, release: str, namespace: str, service_account: str, token: str, kubeconfig: str):
        self.release = release
        self.namespace = namespace
        self.service_account = service_account
        self.token = token
        self.kubeconfig = kubeconfig  # authenticates as the chart's ServiceAccount
        self.username = f"system:serviceaccount:{namespace}:{service_account}"


@contextlib.contextmanager
def installed_chart(
    helm: str, chart: Path, cluster: Any, k8s: Any, namespace: str, *sets: str, release: str | None = None, timeout: float = 180
) -> Iterator[InstalledChart]:
    """Install the chart into `namespace` with `--set` values, yield its ServiceAccount's credentials,
    uninstall afterwards. The operator can run outside the cluster with `.kubeconfig`."""
    from kubernetes import client

    release = release or release_name()
    env = {"KUBECONFIG": cluster.kubeconfig}
    args = [helm, "install", release, str(chart), "--namespace", namespace]
    for s in sets:
        args += ["--set", s]
    run(args, env=env, timeout=timeout)
    try:
        sa = release if "teal" in release else f"{release}-teal"
        answer = client.CoreV1Api(k8s).create_namespaced_service_account_token(
            sa, namespace, {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": 3600}}
        )
        token = answer.status.token
        kubeconfig = cluster.write_kubeconfig(Path(tempfile.mkdtemp(prefix="teal-sa-")) / "kubeconfig", token=token, user=sa)
        yield InstalledChart(release, namespace, sa, token, kubeconfig)
    finally:
        run([helm, "uninstall", release, "--namespace", namespace, "--wait", "--timeout", "60s"], env=env, check=False)
