"""Shared fixtures: a real local Kubernetes control plane and a real Prometheus.

* ``cluster``    (session)  -- a started :class:`teal_devenv.cluster.LocalCluster`;
                               ``KUBECONFIG`` points at it for the session.
* ``k8s``        (session)  -- a ``kubernetes.client.ApiClient`` for it (admin).
* ``namespace``  (function) -- a fresh namespace name, deleted afterwards.
* ``prometheus`` (session)  -- a started :class:`teal_devenv.prometheus.LocalPrometheus`
                               with no targets (tests call ``set_targets``).

Tests that use the cluster are marked ``@pytest.mark.cluster``; those using
Prometheus ``@pytest.mark.prometheus``. Keep this file small: put new
fixtures in ``tests/fixtures_<topic>.py`` and list them in ``pytest_plugins``.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import uuid
from collections.abc import Iterator

import pytest

from teal_devenv.cluster import LocalCluster
from teal_devenv.procs import live_children
from teal_devenv.prometheus import LocalPrometheus

# Fixtures of the helper modules, registered once for the whole session (a fixture
# imported into several test modules would otherwise exist once per module: several
# "session" operators at the same time).
pytest_plugins: list[str] = ["operator_helpers", "routing_helpers", "cli_helpers", "analysis_helpers"]

# The suite shares 2 cores with a control plane and Prometheus: property tests judge
# behaviour, never speed (speed belongs in bench/).
from hypothesis import HealthCheck  # noqa: E402
from hypothesis import settings as _hypothesis_settings  # noqa: E402

_hypothesis_settings.register_profile("teal", deadline=None, suppress_health_check=[HealthCheck.too_slow])
_hypothesis_settings.load_profile("teal")


def _loud(message: str) -> None:
    """Write past pytest's capture, so it is seen even on success."""
    bar = "!" * 78
    sys.__stderr__.write(f"\n{bar}\n{message}\n{bar}\n")
    sys.__stderr__.flush()


def _kill_and_report(pids: list[int], what: str) -> None:
    if not pids:
        return
    lines = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            lines.append(f"  {pid}: {cmd[:200]}")
        except OSError:
            lines.append(f"  {pid}: (gone)")
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    _loud(f"LEFTOVER PROCESSES after stopping the {what} (now killed):\n" + "\n".join(lines))
    raise AssertionError(f"{what} left {len(pids)} process(es) running: {pids}")


def pytest_configure(config: pytest.Config) -> None:
    # SIGTERM (e.g. from a CI timeout) -> KeyboardInterrupt, so fixtures and
    # atexit handlers still stop the child processes and remove temp dirs.
    if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):

        def _term(signum, frame):  # pragma: no cover - only on SIGTERM
            raise KeyboardInterrupt("SIGTERM")

        signal.signal(signal.SIGTERM, _term)


@pytest.hookimpl(trylast=True)  # after pytest's own teardown of the remaining fixtures
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Every fixture is torn down by now: no child process may be left."""
    left = [(pid, cmd) for pid, cmd in live_children() if cmd]
    if not left:
        return
    for pid, _ in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    _loud(
        "LEFTOVER CHILD PROCESSES at the end of the test session (now killed):\n"
        + "\n".join(f"  {pid}: {cmd[:200]}" for pid, cmd in left)
    )
    if session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A local control plane (etcd, apiserver, controller-manager, scheduler, kwok + 3 nodes)."""
    c = LocalCluster(tmp_path_factory.mktemp("cluster"), keep_logs=True)
    old_kubeconfig = os.environ.get("KUBECONFIG")
    try:
        c.start()  # raises ClusterError with the failing component's log tail
        os.environ["KUBECONFIG"] = c.kubeconfig  # type: ignore[assignment]
        try:
            import kubernetes.config

            kubernetes.config.load_kube_config(config_file=c.kubeconfig)  # default client config
        except Exception:  # pragma: no cover - the explicit `k8s` fixture still works
            pass
        yield c
    finally:
        c.stop()
        if old_kubeconfig is None:
            os.environ.pop("KUBECONFIG", None)
        else:
            os.environ["KUBECONFIG"] = old_kubeconfig
        _kill_and_report(c.leftover_processes(), "local cluster")


@pytest.fixture(scope="session")
def k8s(cluster: LocalCluster):
    """``kubernetes.client.ApiClient`` authenticated as cluster admin."""
    client = cluster.api_client()
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def namespace(request: pytest.FixtureRequest, k8s) -> Iterator[str]:
    """A new namespace named after the test; deleted (without waiting) afterwards."""
    import kubernetes.client
    from kubernetes.client.rest import ApiException

    core = kubernetes.client.CoreV1Api(k8s)
    stem = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"{stem or 't'}-{uuid.uuid4().hex[:6]}"
    core.create_namespace(
        kubernetes.client.V1Namespace(metadata=kubernetes.client.V1ObjectMeta(name=name, labels={"teal.dev/test": "true"}))
    )
    try:
        yield name
    finally:
        try:
            core.delete_namespace(name, propagation_policy="Background")
        except ApiException as exc:
            if exc.status != 404:
                raise


@pytest.fixture(scope="session")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalPrometheus]:
    """A local Prometheus (1 s scrape interval) with no targets; use ``set_targets``."""
    p = LocalPrometheus(tmp_path_factory.mktemp("prometheus"), keep_logs=True)
    try:
        p.start()
        yield p
    finally:
        p.stop()
        _kill_and_report(p.leftover_processes(), "local Prometheus")
