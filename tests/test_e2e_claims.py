"""Two Rollouts that name the same Service (issue 12, failure 1), with the real operator.

Before claims, two Rollouts whose active Services (or one's active and the other's preview
Service) were the same Service flipped its selector 22-39 times a second once one of them
released. Now the first claims it (annotation teal.dev/claimed-by), the second is Degraded
with reason ServiceClaimed naming the owner, a Warning Event, and nothing written to the
Service; the claim moves on when the owner stops naming it, is deleted, or never existed.

The module runs its own operator with a metrics endpoint (test_e2e_rejected's `metered`):
`teal_reconciles_total` shows the refused Rollout's loop stays quiet.
"""

from __future__ import annotations

import threading
from typing import Any

import kubernetes
import pytest

from operator_helpers import Env, rollout
from teal_devenv.wait import wait_for
from test_e2e_rejected import metered  # noqa: F401  (fixture: an operator with a metrics endpoint)

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]

CLAIM = "teal.dev/claimed-by"


class SelectorWatch:
    """Counts changes of a Service's teal.dev/color selector, from a watch (no polling)."""

    def __init__(self, api_client, namespace: str, name: str):
        self.core = kubernetes.client.CoreV1Api(api_client)
        self.ns, self.name = namespace, name
        self.colors: list[str | None] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> SelectorWatch:
        svc = self.core.read_namespaced_service(self.name, self.ns)
        self.colors.append((svc.spec.selector or {}).get("teal.dev/color"))
        self._rv = svc.metadata.resource_version
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            w = kubernetes.watch.Watch()
            try:
                for ev in w.stream(
                    self.core.list_namespaced_service,
                    self.ns,
                    field_selector=f"metadata.name={self.name}",
                    resource_version=self._rv,
                    timeout_seconds=2,
                ):
                    obj = ev["object"]
                    self._rv = obj.metadata.resource_version
                    color = (obj.spec.selector or {}).get("teal.dev/color")
                    if color != self.colors[-1]:
                        self.colors.append(color)
                    if self._stop.is_set():
                        break
            finally:
                w.stop()

    @property
    def changes(self) -> int:
        return len(self.colors) - 1


@pytest.fixture
def env(k8s, namespace, metered) -> Env:  # noqa: F811
    e = Env(k8s, namespace)
    for name in ("shared", "a-preview", "b-preview", "a-own", "b-own"):
        e.create_service(name)
    return e


def claim_of(env: Env, service: str) -> str | None:
    return (env.core.read_namespaced_service(service, env.ns).metadata.annotations or {}).get(CLAIM)


def uid(env: Env, name: str) -> str:
    return env.get(name)["metadata"]["uid"]


def two(active_b: list[str] | None = None, preview_b: str = "b-preview", **kw: Any) -> tuple[dict, dict]:
    a = rollout("a", activeServices=["shared"], previewService="a-preview", **kw)
    b = rollout("b", activeServices=active_b or ["shared"], previewService=preview_b, **kw)
    return a, b


def refused_by(env: Env, name: str, owner: str, service: str = "shared") -> dict:
    st = env.wait_phase("Degraded", reason="ServiceClaimed", name=name, timeout=30)
    assert f"Service {service} is claimed by Rollout {owner}" in st["message"], st["message"]
    wait_for(
        lambda: any(
            e.type == "Warning" and e.reason == "ServiceClaimed" and owner in e.message
            for e in env.core.list_namespaced_event(env.ns, field_selector=f"involvedObject.name={name}").items
        ),
        timeout=15,
        what=f"a ServiceClaimed Warning Event on {name}",
    )
    return st


def reconciles(metered, env: Env, name: str) -> float:  # noqa: F811
    return metered.value("teal_reconciles_total", namespace=env.ns, rollout=name)


def test_the_second_rollout_is_refused_and_the_selector_changes_once_per_release(env, k8s, metered):  # noqa: F811
    a, b = two()
    env.create_rollout(a)
    env.wait_phase("Healthy", name="a", activeColor="blue", timeout=60)
    assert claim_of(env, "shared") == f"a/{uid(env, 'a')}"
    with SelectorWatch(k8s, env.ns, "shared") as watch:
        env.create_rollout(b)
        refused_by(env, "b", "a")
        assert env.replicas("blue", name="b") is None  # nothing of b runs or steers
        env.set_image("v2", name="a")
        env.set_image("v2", name="b")
        env.wait_phase("Healthy", name="a", activeColor="green", stableRevision="2", timeout=60)
        rv_b = env.get("b")["metadata"]["resourceVersion"]
        before = reconciles(metered, env, "b"), reconciles(metered, env, "a")
        # a bounded window after both settled: 3 pokes of the refused Rollout through its own
        # preview Service, each seen by its loop (a watch on the shared Service runs meanwhile)
        for i in range(3):
            seen = reconciles(metered, env, "b")
            env.core.patch_namespaced_service("b-preview", env.ns, {"metadata": {"annotations": {"test/poke": str(i)}}})
            wait_for(lambda: reconciles(metered, env, "b") > seen, timeout=15, what=f"b reconciled after poke {i}")
        after = reconciles(metered, env, "b"), reconciles(metered, env, "a")
    assert watch.colors == ["blue", "green"], f"selector of the contested Service: {watch.colors}"
    assert env.get("b")["metadata"]["resourceVersion"] == rv_b, "the refused Rollout's status was written again"
    assert after[0] - before[0] <= 3 + 1 and after[1] - before[1] <= 2, (before, after)
    assert claim_of(env, "shared") == f"a/{uid(env, 'a')}"
    print(
        f"selector changes of the contested Service: {watch.changes}; reconciles b/a in the window: "
        f"{after[0] - before[0]:.0f}/{after[1] - before[1]:.0f}"
    )


def test_active_of_one_and_preview_of_the_other(env, k8s):
    a, b = two(active_b=["b-own"], preview_b="shared")
    env.create_rollout(a)
    env.wait_phase("Healthy", name="a", activeColor="blue", timeout=60)
    with SelectorWatch(k8s, env.ns, "shared") as watch:
        env.create_rollout(b)
        refused_by(env, "b", "a")
        env.set_image("v2", name="a")
        env.wait_phase("Healthy", name="a", activeColor="green", timeout=60)
    assert watch.colors == ["blue", "green"], watch.colors
    assert claim_of(env, "b-own") == f"b/{uid(env, 'b')}"  # what it alone names is its own
    # a stops naming shared: its claim is released and b takes over
    env.patch_spec({"strategy": {"blueGreen": {"activeServices": ["a-own"]}}}, name="a")
    env.wait_phase("Healthy", name="b", activeColor="blue", timeout=60)
    assert claim_of(env, "shared") == f"b/{uid(env, 'b')}" and env.selector_color("shared") == "blue"
    assert env.status("a")["claims"] == ["Service/a-own", "Service/a-preview"]


def test_a_deleted_owner_hands_over_and_a_stale_claim_is_taken_over(env):
    env.core.patch_namespaced_service("shared", env.ns, {"metadata": {"annotations": {CLAIM: "ghost/0000"}}})
    a, b = two()
    env.create_rollout(a)
    env.wait_phase("Healthy", name="a", activeColor="blue", timeout=60)  # the ghost's claim taken over
    assert claim_of(env, "shared") == f"a/{uid(env, 'a')}"
    env.create_rollout(b)
    refused_by(env, "b", "a")
    env.custom.delete_namespaced_custom_object("teal.dev", "v1alpha1", env.ns, "rollouts", "a")
    st = env.wait_phase("Healthy", name="b", timeout=60)
    assert claim_of(env, "shared") == f"b/{uid(env, 'b')}"
    assert env.selector_color("shared") == st["activeColor"]


def test_two_rollouts_created_in_the_same_second(env, k8s):
    a, b = two()
    with SelectorWatch(k8s, env.ns, "shared") as watch:
        threads = [threading.Thread(target=env.create_rollout, args=(body,)) for body in (a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        created = {n: env.get(n)["metadata"]["creationTimestamp"] for n in ("a", "b")}

        def settled() -> bool:
            phases = {n: (env.status(n).get("phase"), env.status(n).get("reason")) for n in ("a", "b")}
            return sorted(phases.values()) == [("Degraded", "ServiceClaimed"), ("Healthy", "Healthy")]

        wait_for(settled, timeout=60, what="one Rollout Healthy, the other refused")
        winner = next(n for n in ("a", "b") if env.status(n)["phase"] == "Healthy")
        loser = "b" if winner == "a" else "a"
        refused_by(env, loser, winner)
    assert claim_of(env, "shared") == f"{winner}/{uid(env, winner)}"
    assert watch.colors == [None, "blue"], watch.colors
    print(f"created {created}; {winner} won")


def test_a_route_is_claimed_too(k8s, namespace, metered, router_crds):  # noqa: F811
    """Two Rollouts whose trafficRouting names the same HTTPRoute: the second is refused
    and neither the route nor the second Rollout's Services are written by it."""
    from routing_helpers import ACTIVE, ROLLOUT, RoutingEnv, make_owner
    from test_e2e_weighted import make_route, weighted_rollout

    routing = RoutingEnv(k8s, namespace, make_owner(k8s, namespace))
    routing.active_service(color=None)
    routing.active_service(name="other", color=None)
    spec = make_route(routing, "gatewayAPI")
    env = Env(k8s, namespace)
    env.create_rollout(weighted_rollout("gatewayAPI", spec))
    env.wait_phase("Healthy", name=ROLLOUT, activeColor="blue", timeout=60)
    route = routing.get_httproute("checkout")
    assert route["metadata"]["annotations"][CLAIM] == f"{ROLLOUT}/{uid(env, ROLLOUT)}"
    assert env.status(ROLLOUT)["claims"] == ["HTTPRoute/checkout", f"Service/{ACTIVE}"]
    other = weighted_rollout("gatewayAPI", spec)
    other["metadata"]["name"] = "other"
    other["spec"]["strategy"]["blueGreen"]["activeServices"] = ["other"]
    env.create_rollout(other)
    st = env.wait_phase("Degraded", reason="ServiceClaimed", name="other", timeout=30)
    assert f"HTTPRoute checkout is claimed by Rollout {ROLLOUT}" in st["message"], st["message"]
    assert routing.get_httproute("checkout")["metadata"]["resourceVersion"] == route["metadata"]["resourceVersion"]
    assert env.selector_color("other") is None and env.replicas("blue", name="other") is None
