"""The real operator, run with nothing but the Helm chart's ServiceAccount credentials
(a TokenRequest token) in namespaced mode, completes a release: the chart's RBAC is enough."""

from __future__ import annotations

import signal
import uuid

import kubernetes
import pytest

from cli_helpers import installed_chart
from operator_helpers import Env, OperatorProcess

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]


@pytest.mark.parametrize("scope", ["namespaced", "cluster"])
def test_operator_with_chart_credentials_completes_a_release(
    cluster, k8s, helm, chart_dir, teal_crds, teal_operator, tmp_path, scope
):
    core = kubernetes.client.CoreV1Api(k8s)
    tag = uuid.uuid4().hex[:6]
    op_ns, app_ns = f"teal-system-{tag}", f"shop-{tag}"
    for ns in (op_ns, app_ns):
        core.create_namespace({"metadata": {"name": ns}})
    teal_operator.kill(signal.SIGTERM)  # the suite's cluster-wide operator must not help
    try:
        sets = ["rbac.scope=namespaced", f"watchNamespaces={{{app_ns}}}"] if scope == "namespaced" else []
        with installed_chart(helm, chart_dir, cluster, k8s, op_ns, *sets) as chart:
            args = ["--namespace", app_ns] if scope == "namespaced" else ["--all-namespaces"]
            op = OperatorProcess(chart.kubeconfig, tmp_path / "operator.log", extra_args=args)
            op.start()
            try:
                env = Env(k8s, app_ns)
                env.two_releases()
                assert "Switched" in env.events()  # Events are allowed too
                # (a cluster-wide operator also meets other tests' namespaces being deleted:
                # "unable to create new content ... being terminated" is a 403 too, not RBAC)
                denied = [
                    line
                    for line in op.log_tail(2000).splitlines()
                    if "system:serviceaccount:" in line or ("forbidden" in line.lower() and "being terminated" not in line)
                ]
                assert not denied, "\n".join(denied[:10])
            finally:
                op.kill(signal.SIGTERM)
    finally:
        teal_operator.start()
        for ns in (op_ns, app_ns):
            core.delete_namespace(ns)
