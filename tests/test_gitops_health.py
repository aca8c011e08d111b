"""docs/gitops.md, checked: the Argo CD health check it shows and the Flux-style waits,
run on the statuses of real releases by the real operator in every phase.

One namespace holds five Rollouts, each driven to one phase (Healthy, Progressing,
Paused, Degraded, Aborted). For each, the live object (``kubectl get -o json``) goes to
* the doc's Lua health check, run in gopher-lua (the interpreter Argo CD embeds) and in
  the reference Lua 5.1 and 5.4,
* ``kubectl wait --for=condition=Ready`` as the doc shows it,
* kstatus, the library Flux's health checks use for a custom resource.
The last test stops the operator, changes every spec (the status is then stale, as right
after a GitOps sync) and creates a Rollout the operator has never seen.
"""

from __future__ import annotations

import json
import re
import signal
import uuid
from collections.abc import Iterator
from typing import Any

import kubernetes
import pytest

from cli_helpers import run
from gitops_helpers import GITOPS_DOC, LUA_RUNTIMES, argocd_health, doc_health_script, kstatus
from operator_helpers import Env, rollout

pytestmark = [pytest.mark.timeout(300)]

# Rollout name -> (Teal phase, Argo CD health, kstatus)
EXPECTED = {
    "healthy": ("Healthy", "Healthy", "Current"),
    "progressing": ("Progressing", "Progressing", "InProgress"),
    "paused": ("Paused", "Suspended", "InProgress"),
    "degraded": ("Degraded", "Degraded", "Failed"),
    "aborted": ("Aborted", "Degraded", "Failed"),
}
UNSCHEDULABLE = {"nodeSelector": {"teal.dev/no-such-node": "true"}}  # pods stay Pending: a release in flight


def own_labels(body: dict[str, Any]) -> dict[str, Any]:
    """Several Rollouts in one namespace: each selects only its own pods."""
    name = body["metadata"]["name"]
    body["spec"]["selector"] = {"matchLabels": {"app": name}}
    body["spec"]["template"]["metadata"]["labels"] = {"app": name}
    return body


@pytest.fixture(scope="module")
def env(k8s, teal_operator) -> Iterator[Env]:
    core = kubernetes.client.CoreV1Api(k8s)
    ns = f"gitops-health-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"metadata": {"name": ns, "labels": {"teal.dev/test": "true"}}})
    try:
        yield Env(k8s, ns)
    finally:
        core.delete_namespace(ns, propagation_policy="Background")


@pytest.fixture(scope="module")
def releases(env: Env) -> dict[str, str]:
    """Drives one Rollout into each phase; returns name -> its status.message at that point."""
    for name in EXPECTED:
        if name != "degraded":  # its Services are missing: ServiceNotFound on the first release
            env.create_service(name, {"app": name})
            env.create_service(f"{name}-preview", {"app": name})
        manual = name in ("paused", "aborted")
        env.create_rollout(own_labels(rollout(name, autoPromote=not manual, progressDeadlineSeconds=900)))
    for name in ("healthy", "progressing", "paused", "aborted"):
        env.wait_phase("Healthy", name=name, stableRevision="1")
    env.set_image("v2", name="progressing", labels={"app": "progressing"}, **UNSCHEDULABLE)
    env.set_image("v2", name="paused", labels={"app": "paused"})
    env.set_image("v2", name="aborted", labels={"app": "aborted"})
    env.wait_phase("Paused", name="aborted", reason="AwaitingPromotion")
    env.abort("aborted")
    reached = {
        "healthy": env.wait_phase("Healthy", name="healthy"),
        "progressing": env.wait_phase("Progressing", name="progressing", currentRevision="2"),
        "paused": env.wait_phase("Paused", name="paused", reason="AwaitingPromotion"),
        "degraded": env.wait_phase("Degraded", name="degraded", reason="ServiceNotFound"),
        "aborted": env.wait_phase("Aborted", name="aborted", reason="AbortedByUser"),
    }
    return {name: st["message"] for name, st in reached.items()}


def live(kubectl: str, env: Env, name: str) -> dict[str, Any]:
    return json.loads(run([kubectl, "get", f"rollouts.teal.dev/{name}", "-n", env.ns, "-o", "json"]).stdout)


def doc_wait_command(kubectl: str, env: Env, name: str, timeout: str) -> list[str]:
    """The `kubectl wait` line docs/gitops.md shows, with this test's Rollout and namespace."""
    line = next((ln for ln in GITOPS_DOC.read_text().splitlines() if ln.startswith("kubectl wait ")), None)
    assert line, "docs/gitops.md shows no `kubectl wait` command"
    argv = line.split()
    assert "rollouts.teal.dev/checkout" in argv and "shop" in argv, line
    subst = {"rollouts.teal.dev/checkout": f"rollouts.teal.dev/{name}", "shop": env.ns}
    argv = [subst.get(a, a) for a in argv]
    return [kubectl, *[re.sub(r"^--timeout=.*", f"--timeout={timeout}", a) for a in argv[1:]]]


def kubectl_wait_ready(kubectl: str, env: Env, name: str, ready: bool) -> None:
    proc = run(doc_wait_command(kubectl, env, name, "30s" if ready else "2s"), check=False, timeout=60)
    if ready:
        assert proc.returncode == 0, proc.stderr
        assert "condition met" in proc.stdout
    else:
        assert proc.returncode != 0, f"kubectl wait said Ready for {name}: {proc.stdout}"
        assert "timed out waiting for the condition" in proc.stderr, proc.stderr


@pytest.mark.parametrize("runtime", LUA_RUNTIMES)
def test_the_lua_state_is_as_bare_as_argocds(runtime):
    """What the doc claims of its script holds only if the sandbox is Argo CD's."""
    obj = {"metadata": {"generation": 3}}
    with pytest.raises(Exception, match="string|format"):  # each interpreter words it its own way
        argocd_health('return {status = string.format("%s", "Healthy")}', obj, runtime)
    with pytest.raises(Exception, match="string"):
        argocd_health('return {status = ("healthy"):upper()}', obj, runtime)
    with pytest.raises(AssertionError, match="not a table"):
        argocd_health('return "Healthy"', obj, runtime)
    assert argocd_health('return {status = "Fine"}', obj, runtime)["status"] == "Unknown"
    assert argocd_health('return {status = "Healthy", message = "g" .. obj.metadata.generation}', obj, runtime) == {
        "status": "Healthy",
        "message": "g3",
    }  # as gopher-lua prints a whole number


@pytest.mark.cluster
@pytest.mark.parametrize("runtime", LUA_RUNTIMES)
@pytest.mark.parametrize("name", list(EXPECTED))
def test_argocd_health_check_from_the_doc(releases, env, kubectl, name, runtime):
    phase, health, _ = EXPECTED[name]
    obj = live(kubectl, env, name)
    assert obj["status"]["phase"] == phase
    assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"]
    hs = argocd_health(doc_health_script(), obj, runtime)
    assert hs == {"status": health, "message": obj["status"]["message"]}


@pytest.mark.cluster
@pytest.mark.parametrize("name", list(EXPECTED))
def test_flux_and_kubectl_wait(releases, env, kubectl, name):
    phase, _, expected = EXPECTED[name]
    obj = live(kubectl, env, name)
    assert obj["status"]["phase"] == phase
    kubectl_wait_ready(kubectl, env, name, ready=phase == "Healthy")
    ks = kstatus(obj)
    assert ks["status"] == expected, ks
    if expected != "Current":  # kstatus quotes the Reconciling / Stalled condition: Teal's message
        assert ks["message"] == releases[name] == obj["status"]["message"]


@pytest.mark.cluster
def test_stale_or_missing_status_is_never_ready(releases, env, kubectl, teal_operator):
    """Right after a sync changed the spec, and before Teal has seen a new Rollout at all."""
    teal_operator.kill(signal.SIGTERM)
    try:
        for name in EXPECTED:
            env.patch_spec({"revisionHistoryLimit": 7}, name=name)  # any spec change: a new generation
        env.create_service("fresh", {"app": "fresh"})
        env.create_service("fresh-preview", {"app": "fresh"})
        env.create_rollout(own_labels(rollout("fresh")))
        for name in EXPECTED:
            obj = live(kubectl, env, name)
            assert obj["status"]["observedGeneration"] < obj["metadata"]["generation"]
            for runtime in LUA_RUNTIMES:
                hs = argocd_health(doc_health_script(), obj, runtime)
                assert hs["status"] == "Progressing", (name, runtime, hs)
                assert f"generation {obj['metadata']['generation']}" in hs["message"], hs
            kubectl_wait_ready(kubectl, env, name, ready=False)
            ks = kstatus(obj)
            assert ks["status"] == "InProgress" and f"generation is {obj['metadata']['generation']}" in ks["message"], ks
        fresh = live(kubectl, env, "fresh")
        assert "status" not in fresh
        for runtime in LUA_RUNTIMES:
            assert argocd_health(doc_health_script(), fresh, runtime)["status"] == "Progressing"
        kubectl_wait_ready(kubectl, env, "fresh", ready=False)
        # kstatus has nothing to go on and calls it Current: the gap docs/gitops.md warns about
        assert kstatus(fresh)["status"] == "Current"
    finally:
        teal_operator.start()
    # once the operator has caught up, the same checks say Ready again
    env.wait(
        lambda s: s.get("phase") == "Healthy" and s.get("observedGeneration") == 2,
        name="healthy",
        what="healthy at generation 2",
        timeout=90,
    )
    kubectl_wait_ready(kubectl, env, "healthy", ready=True)
    assert kstatus(live(kubectl, env, "healthy"))["status"] == "Current"
    assert argocd_health(doc_health_script(), live(kubectl, env, "healthy"))["status"] == "Healthy"
    env.wait_phase("Healthy", name="fresh", stableRevision="1", timeout=90)
    kubectl_wait_ready(kubectl, env, "fresh", ready=True)
