"""What every router must do, on the real apiserver with the real CRDs (one test per router)."""

from __future__ import annotations

import threading

import pytest
from kubernetes.client.exceptions import ApiException

from teal.routers import Router, RouterError, ensure_color_services
from teal_devenv.wait import wait_for

pytestmark = pytest.mark.cluster

KINDS = ("gatewayAPI", "nginx", "istio")
WALK = [(100, 0), (90, 10), (50, 50), (0, 100)]


def setup(routing, kind: str) -> Router:
    routing.active_service()
    if kind == "gatewayAPI":
        routing.httproute()
    elif kind == "istio":
        routing.virtualservice()
    else:
        routing.ingress()
    router = routing.router(kind)
    router.prepare()
    return router


@pytest.mark.parametrize("kind", KINDS)
def test_walk_the_steps_and_read_back(routing, kind):
    router = setup(routing, kind)
    assert isinstance(router, Router)
    assert router.get_weights() == {"blue": 100, "green": 0}
    for blue, green in WALK:
        assert router.set_weights({"blue": blue, "green": green}) is False
        assert router.last_drift is None
        assert router.get_weights() == {"blue": blue, "green": green}
        # a second router object (a restarted operator) reads the same from the cluster
        assert routing.router(kind).get_weights() == {"blue": blue, "green": green}
    assert router.describe()["weights"] == {"blue": 0, "green": 100}
    assert router.describe()["drifted"] is False


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("abort_at", [10, 50])
def test_abort_returns_to_100_0(routing, kind, abort_at):
    router = setup(routing, kind)
    for w in (10, 50):
        if w > abort_at:
            break
        router.set_weights({"blue": 100 - w, "green": w})
    router.set_weights({"blue": 100, "green": 0})
    assert router.get_weights() == {"blue": 100, "green": 0}


@pytest.mark.parametrize("kind", KINDS)
def test_prepare_is_idempotent_and_makes_owned_color_services(routing, kind):
    router = setup(routing, kind)
    router.set_weights({"blue": 80, "green": 20})
    for _ in range(2):
        router.prepare()
        assert router.get_weights() == {"blue": 80, "green": 20}
    for color in ("blue", "green"):
        svc = routing.service(f"checkout-{color}")
        assert svc["spec"]["selector"] == {"app": "checkout", "teal.dev/color": color}
        assert [(p["name"], p["port"], p["target_port"]) for p in svc["spec"]["ports"]] == [("http", 80, 8080)]
        assert svc["spec"]["type"] == "ClusterIP"
        (ref,) = svc["metadata"]["owner_references"]
        assert ref["uid"] == routing.owner_ref["uid"]
        assert svc["metadata"]["labels"]["teal.dev/rollout"] == "checkout"


@pytest.mark.parametrize("kind", KINDS)
def test_missing_route_is_a_clear_error(routing, kind):
    routing.active_service()
    router = routing.router(kind, name="nope")
    noun = {"gatewayAPI": "HTTPRoute", "nginx": "Ingress", "istio": "VirtualService"}[kind]
    for call in (router.prepare, router.get_weights, lambda: router.set_weights({"blue": 100})):
        with pytest.raises(RouterError) as err:
            call()
        assert str(err.value) == f"{noun} nope not found in namespace {routing.ns}"
        assert err.value.reason == "RouteNotFound"


@pytest.mark.parametrize("kind", KINDS)
def test_missing_active_service_is_a_clear_error(routing, kind):
    router = routing.router(kind)
    with pytest.raises(RouterError, match=rf"Service checkout not found in namespace {routing.ns}") as err:
        router.prepare()
    assert err.value.reason == "ServiceNotFound"


def test_color_service_owned_by_someone_else_is_left_alone(routing):
    routing.active_service()
    routing.core.create_namespaced_service(
        routing.ns, {"metadata": {"name": "checkout-green"}, "spec": {"selector": {"app": "other"}, "ports": [{"port": 81}]}}
    )
    with pytest.raises(RouterError, match="Service checkout-green exists and does not belong to Rollout checkout"):
        ensure_color_services(routing.core, routing.ns, "checkout", "checkout", routing.owner_ref)
    assert routing.service("checkout-green")["spec"]["selector"] == {"app": "other"}


def test_color_services_follow_the_active_service(routing):
    routing.active_service()
    names = ensure_color_services(routing.core, routing.ns, "checkout", "checkout", routing.owner_ref)
    assert names == {"blue": "checkout-blue", "green": "checkout-green"}
    # the user changes the active Service's ports and selector: the colour Services follow
    routing.core.patch_namespaced_service(
        "checkout",
        routing.ns,
        {
            "spec": {
                "selector": {"app": "checkout", "tier": "web"},
                "ports": [{"name": "http", "port": 80, "targetPort": 9090}, {"name": "admin", "port": 9901, "targetPort": 9901}],
            }
        },
    )
    ensure_color_services(routing.core, routing.ns, "checkout", "checkout", routing.owner_ref)
    svc = routing.service("checkout-blue")
    assert svc["spec"]["selector"] == {"app": "checkout", "tier": "web", "teal.dev/color": "blue"}
    assert sorted((p["port"], p["target_port"]) for p in svc["spec"]["ports"]) == [(80, 9090), (9901, 9901)]
    with pytest.raises(RouterError, match="trafficRouting port 8443 is not a port of Service checkout"):
        ensure_color_services(routing.core, routing.ns, "checkout", "checkout", routing.owner_ref, port=8443)


def test_a_labelled_color_service_is_adopted(routing):
    routing.active_service()
    routing.core.create_namespaced_service(
        routing.ns,
        {
            "metadata": {"name": "checkout-blue", "labels": {"teal.dev/rollout": "checkout"}},
            "spec": {"selector": {"app": "stale"}, "ports": [{"port": 81}]},
        },
    )
    ensure_color_services(routing.core, routing.ns, "checkout", "checkout", routing.owner_ref)
    svc = routing.service("checkout-blue")
    assert svc["spec"]["selector"] == {"app": "checkout", "teal.dev/color": "blue"}
    assert [r["uid"] for r in svc["metadata"]["owner_references"]] == [routing.owner_ref["uid"]]


def test_color_services_go_away_with_their_owner(routing):
    routing.active_service()
    ensure_color_services(routing.core, routing.ns, "checkout", "checkout", routing.owner_ref)
    routing.core.delete_namespaced_config_map(routing.owner_ref["name"], routing.ns)
    wait_for(
        lambda: routing.service("checkout-blue") is None and routing.service("checkout-green") is None,
        timeout=60,
        what="garbage collection of the colour Services",
    )


@pytest.mark.parametrize("kind", KINDS)
def test_bad_weights_are_rejected_before_any_write(routing, kind):
    router = setup(routing, kind)
    for bad in ({"blue": 60, "green": 60}, {"blue": 101}, {"red": 100}, {"blue": 50.5, "green": 49.5}, {}):
        with pytest.raises(ValueError):
            router.set_weights(bad)
    assert router.get_weights() == {"blue": 100, "green": 0}
    assert router.set_weights({"green": 30}) is False  # one colour named: the other gets the rest
    assert router.get_weights() == {"blue": 70, "green": 30}


@pytest.mark.parametrize("kind", ("gatewayAPI", "istio"))
def test_concurrent_writers_to_other_fields_are_kept(routing, kind):
    """A writer hammers the route (labels; for the HTTPRoute also its hostnames) while
    Teal walks the weights: every write of both ends up in the object."""
    router = setup(routing, kind)
    stop = threading.Event()
    errors: list[BaseException] = []
    done = []

    def editor() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            try:
                if kind == "gatewayAPI":
                    obj = routing.get_httproute()
                    obj["spec"]["hostnames"] = [f"h{i}.example" for i in range(n % 5 + 1)]
                    obj["metadata"].setdefault("labels", {})["edit"] = str(n)
                    routing.replace_httproute(obj)
                else:
                    obj = routing.get_virtualservice()
                    obj["metadata"].setdefault("labels", {})["edit"] = str(n)
                    obj["spec"]["hosts"] = [f"h{i}.example" for i in range(n % 5 + 1)]
                    routing.replace_virtualservice(obj)
                done.append(n)
            except ApiException as exc:
                if exc.status != 409:  # a stale replace by the editor itself: just retry
                    errors.append(exc)
                    return

    t = threading.Thread(target=editor, daemon=True)
    t.start()
    try:
        wait_for(lambda: len(done) >= 2, timeout=30, what="the editor to start writing")
        for w in (10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 0):
            router.set_weights({"blue": 100 - w, "green": w})
            assert router.get_weights() == {"blue": 100 - w, "green": w}
    finally:
        stop.set()
        t.join(timeout=30)
    assert not errors
    obj = routing.get_httproute() if kind == "gatewayAPI" else routing.get_virtualservice()
    n = done[-1]
    assert obj["metadata"]["labels"]["edit"] == str(n)
    key = "hostnames" if kind == "gatewayAPI" else "hosts"
    assert obj["spec"][key] == [f"h{i}.example" for i in range(n % 5 + 1)]


def _versions(routing, kind: str) -> dict[str, str]:
    """resourceVersion of every object a router reads or writes."""
    out = {
        f"svc/{n}": routing.service(n)["metadata"]["resource_version"] for n in ("checkout", "checkout-blue", "checkout-green")
    }
    if kind == "gatewayAPI":
        out["route"] = routing.get_httproute()["metadata"]["resourceVersion"]
    elif kind == "istio":
        out["route"] = routing.get_virtualservice()["metadata"]["resourceVersion"]
    else:
        out["route"] = routing.get_ingress()["metadata"]["resourceVersion"]
        out["canary"] = routing.get_ingress("checkout-teal-canary")["metadata"]["resourceVersion"]
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_steady_state_writes_nothing(routing, kind):
    """The operator calls prepare/get/set every reconcile: when nothing changed, no object
    is written (no watch events, no resourceVersion churn)."""
    router = setup(routing, kind)
    router.set_weights({"blue": 70, "green": 30})
    before = _versions(routing, kind)
    for _ in range(3):
        router.prepare()
        assert router.get_weights() == {"blue": 70, "green": 30}
        assert router.set_weights({"blue": 70, "green": 30}) is False
    assert _versions(routing, kind) == before
