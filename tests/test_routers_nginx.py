"""NGINX Ingress router (canary Ingress) on the real apiserver."""

from __future__ import annotations

import pytest

from routing_helpers import canary_state, primary_backends
from teal.routers import RouterError

pytestmark = pytest.mark.cluster

CANARY = "checkout-teal-canary"


def _other_path(service: str = "payments") -> dict:
    return {"path": "/pay", "pathType": "Prefix", "backend": {"service": {"name": service, "port": {"number": 80}}}}


def test_canary_ingress_shape(routing):
    routing.active_service()
    routing.ingress(
        extra_paths=[_other_path()],
        annotations={
            "kubernetes.io/ingress.class": "nginx",
            "nginx.ingress.kubernetes.io/rewrite-target": "/",
        },
    )
    router = routing.router("nginx")
    router.prepare()
    router.set_weights({"blue": 90, "green": 10})
    canary = routing.get_ingress(CANARY)
    meta = canary["metadata"]
    assert meta["annotations"] == {
        "nginx.ingress.kubernetes.io/canary": "true",
        "nginx.ingress.kubernetes.io/canary-weight": "10",
        "kubernetes.io/ingress.class": "nginx",
    }
    assert meta["labels"]["teal.dev/rollout"] == "checkout"
    assert [r["uid"] for r in meta["ownerReferences"]] == [routing.owner_ref["uid"]]
    assert canary["spec"] == {
        "ingressClassName": "nginx",
        "rules": [
            {
                "host": "shop.example",
                "http": {
                    "paths": [
                        {
                            "path": "/",
                            "pathType": "Prefix",
                            "backend": {"service": {"name": "checkout-green", "port": {"number": 80}}},
                        }
                    ]
                },
            }
        ],
    }
    primary = routing.get_ingress()
    assert primary_backends(primary) == ["checkout", "payments"]  # the user's Ingress is untouched
    assert primary["metadata"]["annotations"]["teal.dev/weights"] == '{"blue":90,"green":10}'


def test_primary_on_the_active_service_follows_the_selector(routing):
    routing.active_service(color="blue")
    routing.ingress(backend="checkout")
    router = routing.router("nginx")
    router.prepare()
    assert canary_state(routing.get_ingress(CANARY)) == ("checkout-green", 0)
    expected = {10: ("checkout-green", 10), 50: ("checkout-green", 50), 100: ("checkout-green", 100)}
    for w, state in expected.items():
        router.set_weights({"blue": 100 - w, "green": w})
        assert router.get_weights() == {"blue": 100 - w, "green": w}
        assert canary_state(routing.get_ingress(CANARY)) == state
        assert primary_backends(routing.get_ingress()) == ["checkout"]
    # the operator switches the active Service; the canary still sends all to green
    routing.select("green")
    assert router.get_weights() == {"blue": 0, "green": 100}
    router.prepare()  # folds the canary back: no traffic moves
    assert canary_state(routing.get_ingress(CANARY)) == ("checkout-blue", 0)
    assert router.get_weights() == {"blue": 0, "green": 100}
    # the next release, to blue
    router.set_weights({"blue": 10, "green": 90})
    assert canary_state(routing.get_ingress(CANARY)) == ("checkout-blue", 10)
    assert router.get_weights() == {"blue": 10, "green": 90}


def test_primary_on_a_color_service_is_moved_without_a_gap(routing):
    routing.active_service()
    routing.ingress(backend="checkout-blue", hosts=("shop.example", "www.shop.example"), extra_paths=[_other_path()])
    router = routing.router("nginx")
    router.prepare()
    for w in (10, 50):
        router.set_weights({"blue": 100 - w, "green": w})
        assert canary_state(routing.get_ingress(CANARY)) == ("checkout-green", w)
    router.set_weights({"blue": 0, "green": 100})
    assert primary_backends(routing.get_ingress()) == ["checkout-green", "payments"] * 2
    assert canary_state(routing.get_ingress(CANARY)) == ("checkout-blue", 0)
    assert router.get_weights() == {"blue": 0, "green": 100}
    # abort of the next release (to blue) at 50: back to 100% green, primary unchanged
    router.set_weights({"blue": 50, "green": 50})
    assert canary_state(routing.get_ingress(CANARY)) == ("checkout-blue", 50)
    router.set_weights({"blue": 0, "green": 100})
    assert canary_state(routing.get_ingress(CANARY)) == ("checkout-blue", 0)
    assert primary_backends(routing.get_ingress()) == ["checkout-green", "payments"] * 2


def test_gitops_resetting_the_primary_is_drift_and_gets_fixed(routing):
    routing.active_service()
    routing.ingress(backend="checkout-blue")
    router = routing.router("nginx")
    router.prepare()
    router.set_weights({"blue": 0, "green": 100})
    primary = routing.get_ingress()
    primary["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"] = "checkout-blue"  # Git's value
    primary["spec"]["rules"].append(
        {
            "host": "new.example",
            "http": {
                "paths": [
                    {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "checkout-blue", "port": {"number": 80}}}}
                ]
            },
        }
    )
    primary["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-body-size"] = "8m"
    routing.replace_ingress(primary)
    assert router.get_weights() == {"blue": 100, "green": 0}
    assert router.set_weights({"blue": 0, "green": 100}) is True
    assert router.last_drift == ("weights were blue 100/green 0, but Teal had set blue 0/green 100")
    primary = routing.get_ingress()
    assert primary_backends(primary) == ["checkout-green", "checkout-green"]
    assert primary["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-body-size"] == "8m"
    assert router.get_weights() == {"blue": 0, "green": 100}


def test_a_new_host_on_the_primary_is_followed_by_the_canary(routing):
    routing.active_service()
    routing.ingress(backend="checkout")
    router = routing.router("nginx")
    router.prepare()
    router.set_weights({"blue": 90, "green": 10})
    primary = routing.get_ingress()
    primary["spec"]["rules"].append(
        {
            "host": "new.example",
            "http": {
                "paths": [
                    {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "checkout", "port": {"number": 80}}}}
                ]
            },
        }
    )
    routing.replace_ingress(primary)
    assert router.get_weights() == {"blue": 90, "green": 0}  # new.example gets no canary yet
    assert router.set_weights({"blue": 90, "green": 10}) is True
    canary = routing.get_ingress(CANARY)
    assert [r["host"] for r in canary["spec"]["rules"]] == ["shop.example", "new.example"]
    assert router.get_weights() == {"blue": 90, "green": 10}


def test_a_deleted_or_edited_canary_is_drift(routing):
    routing.active_service()
    routing.ingress()
    router = routing.router("nginx")
    router.prepare()
    router.set_weights({"blue": 50, "green": 50})
    routing.net.delete_namespaced_ingress(CANARY, routing.ns)
    assert router.get_weights() == {"blue": 100, "green": 0}
    assert router.set_weights({"blue": 50, "green": 50}) is True
    assert router.last_drift == "canary Ingress checkout-teal-canary was missing, but Teal had set blue 50/green 50"
    assert canary_state(routing.get_ingress(CANARY)) == ("checkout-green", 50)
    canary = routing.get_ingress(CANARY)
    canary["metadata"]["annotations"]["nginx.ingress.kubernetes.io/canary-weight"] = "5"
    canary["metadata"]["annotations"]["nginx.ingress.kubernetes.io/canary-by-header"] = "x-canary"
    routing.replace_ingress(canary)
    assert router.get_weights() == {"blue": 95, "green": 5}
    assert router.set_weights({"blue": 50, "green": 50}) is True
    ann = routing.get_ingress(CANARY)["metadata"]["annotations"]
    assert ann["nginx.ingress.kubernetes.io/canary-weight"] == "50"
    assert "nginx.ingress.kubernetes.io/canary-by-header" not in ann


def test_split_needs_the_primary_to_serve_a_color(routing):
    routing.active_service(color=None)  # the operator has not switched the selector yet
    routing.ingress()
    router = routing.router("nginx")
    router.prepare()
    assert router.get_weights() == {"blue": 0, "green": 0}
    with pytest.raises(RouterError) as err:
        router.set_weights({"blue": 90, "green": 10})
    assert str(err.value) == (
        "Ingress checkout: cannot split traffic blue 90/green 10 while Service checkout selects no colour (teal.dev/color)"
    )
    assert err.value.transient
    router.set_weights({"blue": 100, "green": 0})  # all on one colour works: the canary takes it all
    assert canary_state(routing.get_ingress(CANARY)) == ("checkout-blue", 100)
    assert router.get_weights() == {"blue": 100, "green": 0}


def test_cleanup_removes_only_the_canary(routing):
    routing.active_service()
    routing.ingress()
    router = routing.router("nginx")
    router.prepare()
    router.set_weights({"blue": 100, "green": 0})
    router.cleanup()
    assert routing.get_ingress(CANARY) is None
    assert primary_backends(routing.get_ingress()) == ["checkout"]
    assert routing.service("checkout-blue") is not None
    router.cleanup()  # idempotent


def test_a_canary_ingress_of_someone_else_is_not_touched(routing):
    routing.active_service()
    routing.ingress()
    routing.ingress(name=CANARY, annotations={"nginx.ingress.kubernetes.io/canary": "true"})
    router = routing.router("nginx")
    with pytest.raises(RouterError, match=f"Ingress {CANARY} exists and does not belong to Rollout checkout") as err:
        router.prepare()
    assert err.value.reason == "NotOwned"
    router.cleanup()
    assert routing.get_ingress(CANARY) is not None


def test_an_ingress_without_the_service_is_a_clear_error(routing):
    routing.active_service()
    routing.ingress(backend="payments")
    router = routing.router("nginx")
    with pytest.raises(RouterError) as err:
        router.get_weights()
    assert str(err.value) == ("Ingress checkout has no path whose backend is Service checkout, checkout-blue, checkout-green")
    assert err.value.reason == "BackendNotFound"
