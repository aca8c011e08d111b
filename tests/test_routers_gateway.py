"""Gateway API router on the real apiserver with the real HTTPRoute CRD."""

from __future__ import annotations

import copy

import pytest

from routing_helpers import backend_weights
from teal.routers import ANNOTATION_WEIGHTS, RouterError

pytestmark = pytest.mark.cluster

BLUE, GREEN = "checkout-blue", "checkout-green"


def _ref(name: str, weight: int | None = None, port: int = 80) -> dict:
    ref = {"name": name, "port": port}
    if weight is not None:
        ref["weight"] = weight
    return ref


def test_prepare_adds_the_missing_color_without_moving_traffic(routing):
    routing.active_service()
    routing.httproute()  # the user lists only checkout-blue
    router = routing.router("gatewayAPI")
    router.prepare()
    route = routing.get_httproute()
    assert backend_weights(route) == {BLUE: 1, GREEN: 0}
    assert route["spec"]["rules"][0]["backendRefs"][1] == {"group": "", "kind": "Service", "name": GREEN, "port": 80, "weight": 0}
    assert router.get_weights() == {"blue": 100, "green": 0}


def test_only_teal_backend_weights_change(routing):
    routing.active_service()
    rules = [
        {  # managed: a header match, a filter, another backend with its own weight
            "matches": [{"path": {"type": "PathPrefix", "value": "/api"}, "headers": [{"name": "x-env", "value": "prod"}]}],
            "filters": [{"type": "RequestHeaderModifier", "requestHeaderModifier": {"add": [{"name": "x-via", "value": "gw"}]}}],
            "backendRefs": [_ref(BLUE, 100), _ref(GREEN, 0), _ref("legacy", 7, 8080)],
        },
        {  # not managed: sends to the active Service
            "matches": [{"path": {"type": "PathPrefix", "value": "/static"}}],
            "backendRefs": [_ref("checkout", 3)],
        },
        {  # managed too
            "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
            "backendRefs": [_ref(GREEN, 5), _ref(BLUE, 5)],
        },
    ]
    routing.httproute(rules=rules)
    router = routing.router("gatewayAPI")
    router.prepare()
    assert router.get_weights() == {"blue": 50, "green": 0}  # 100/0 and 50/50: each colour's least share
    before = routing.get_httproute()
    router.set_weights({"blue": 75, "green": 25})
    after = routing.get_httproute()
    assert backend_weights(after, 0) == {BLUE: 75, GREEN: 25, "legacy": 7}
    assert backend_weights(after, 1) == {"checkout": 3}
    assert backend_weights(after, 2) == {GREEN: 25, BLUE: 75}
    # nothing else changed: blank out the weights and the annotation and compare
    for obj in (before, after):
        for rule in obj["spec"]["rules"]:
            for ref in rule["backendRefs"]:
                if ref["name"] in (BLUE, GREEN):
                    ref["weight"] = None
        obj["metadata"].get("annotations", {}).pop(ANNOTATION_WEIGHTS, None)
        for k in ("resourceVersion", "generation", "managedFields", "annotations"):
            obj["metadata"].pop(k, None)
    assert after == before


def test_gitops_edit_mid_release_keeps_the_users_change_and_gets_teals_weights_back(routing):
    routing.active_service()
    routing.httproute(rules=[{"backendRefs": [_ref(BLUE, 100), _ref(GREEN, 0)]}])
    router = routing.router("gatewayAPI")
    router.prepare()
    router.set_weights({"blue": 90, "green": 10})
    # A GitOps tool syncs Git's version: weights back to 100/0, plus a new hostname,
    # a header match and a filter.
    route = routing.get_httproute()
    route["spec"]["hostnames"].append("checkout.example")
    rule = route["spec"]["rules"][0]
    rule["matches"] = [{"path": {"type": "PathPrefix", "value": "/"}, "headers": [{"name": "x-canary", "value": "no"}]}]
    rule["filters"] = [{"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "x-git", "value": "1"}]}}]
    for ref in rule["backendRefs"]:
        ref["weight"] = 100 if ref["name"] == BLUE else 0
    routing.replace_httproute(route)
    assert router.get_weights() == {"blue": 100, "green": 0}  # honest: what is in force
    assert router.describe()["drifted"] is True

    assert router.set_weights({"blue": 90, "green": 10}) is True
    assert router.last_drift == "weights were blue 100/green 0, but Teal had set blue 90/green 10"
    route = routing.get_httproute()
    assert backend_weights(route) == {BLUE: 90, GREEN: 10}
    assert route["spec"]["hostnames"] == ["shop.example", "checkout.example"]
    assert route["spec"]["rules"][0]["matches"][0]["headers"] == [{"name": "x-canary", "type": "Exact", "value": "no"}]
    assert route["spec"]["rules"][0]["filters"][0]["requestHeaderModifier"]["set"] == [{"name": "x-git", "value": "1"}]

    # an edit that leaves the weights alone is no drift
    route["spec"]["hostnames"].append("third.example")
    routing.replace_httproute(route)
    assert router.set_weights({"blue": 50, "green": 50}) is False
    assert router.last_drift is None
    route = routing.get_httproute()
    assert route["spec"]["hostnames"][-1] == "third.example"
    assert backend_weights(route) == {BLUE: 50, GREEN: 50}


def test_a_removed_backend_is_restored_and_reported(routing):
    routing.active_service()
    routing.httproute(rules=[{"backendRefs": [_ref(BLUE, 100), _ref(GREEN, 0)]}])
    router = routing.router("gatewayAPI")
    router.prepare()
    router.set_weights({"blue": 50, "green": 50})
    route = routing.get_httproute()
    route["spec"]["rules"][0]["backendRefs"] = [_ref(BLUE, 1)]  # Git does not list green
    routing.replace_httproute(route)
    assert router.get_weights() == {"blue": 100, "green": 0}
    assert router.set_weights({"blue": 50, "green": 50}) is True
    assert router.last_drift == "rule 0 had no backendRef to checkout-green, but Teal had set blue 50/green 50"
    assert backend_weights(routing.get_httproute()) == {BLUE: 50, GREEN: 50}


def test_a_racing_edit_of_the_same_backends_is_kept(routing):
    """The user adds a backend between Teal's read and Teal's write: the JSON-patch test
    fails, Teal re-reads and writes again, and the user's backend survives."""
    routing.active_service()
    routing.httproute(rules=[{"backendRefs": [_ref(BLUE, 100), _ref(GREEN, 0)]}])
    router = routing.router("gatewayAPI")
    router.prepare()
    real_get = router.raw.get_custom
    calls = []

    def racing_get(*args, **kwargs):
        obj = real_get(*args, **kwargs)
        calls.append(1)
        if len(calls) == 1:  # after Teal's first read, someone edits the same list
            edited = routing.get_httproute()
            edited["spec"]["rules"][0]["backendRefs"].append(_ref("mirror", 1, 9090))
            routing.replace_httproute(edited)
        return obj

    router.raw.get_custom = racing_get
    assert router.set_weights({"blue": 60, "green": 40}) is False
    assert len(calls) == 2
    assert backend_weights(routing.get_httproute()) == {BLUE: 60, GREEN: 40, "mirror": 1}


def test_no_backend_to_a_color_is_a_clear_error(routing):
    routing.active_service()
    routing.httproute(rules=[{"backendRefs": [_ref("checkout", 1)]}, {"backendRefs": [_ref("other", 1)]}])
    router = routing.router("gatewayAPI")
    for call in (router.prepare, router.get_weights, lambda: router.set_weights({"blue": 100})):
        with pytest.raises(RouterError) as err:
            call()
        assert str(err.value) == (
            "HTTPRoute checkout has no backendRef to checkout-blue or checkout-green "
            "(rule 0 sends to the active Service checkout; list backendRefs checkout-blue and "
            "checkout-green there instead)"
        )
        assert err.value.reason == "BackendNotFound"
    route = routing.get_httproute()
    assert backend_weights(route, 0) == {"checkout": 1}  # untouched


def test_refs_of_another_kind_or_namespace_are_not_teals(routing):
    routing.active_service()
    routing.httproute(
        rules=[
            {
                "backendRefs": [
                    {"name": BLUE, "port": 80, "namespace": "elsewhere"},
                    {"group": "example.io", "kind": "Bucket", "name": GREEN},
                ]
            }
        ]
    )
    with pytest.raises(RouterError, match="HTTPRoute checkout has no backendRef to checkout-blue or checkout-green$"):
        routing.router("gatewayAPI").get_weights()


def test_route_port_is_used_for_an_added_backend(routing):
    routing.active_service(port=80)
    routing.httproute(rules=[{"backendRefs": [_ref(GREEN, 1, port=80)]}])
    router = routing.router("gatewayAPI", port=80)
    router.prepare()
    refs = routing.get_httproute()["spec"]["rules"][0]["backendRefs"]
    assert [(r["name"], r["port"], r["weight"]) for r in refs] == [(GREEN, 80, 1), (BLUE, 80, 0)]
    assert router.get_weights() == {"blue": 0, "green": 100}


def test_the_api_not_being_served_is_a_clear_error(routing):
    routing.active_service()
    router = routing.router("gatewayAPI")
    router.version = "v0alpha0"  # as if the Gateway API CRDs were not installed
    router.fallback_versions = ("v0beta0",)
    with pytest.raises(RouterError, match=r"the HTTPRoute API \(gateway.networking.k8s.io/v0alpha0\) is not served"):
        router.get_weights()


def test_weights_written_are_honoured_when_the_user_scales_them(routing):
    """Read-back is relative between the two colours: 9/1 reads as 90/10."""
    routing.active_service()
    routing.httproute(rules=[{"backendRefs": [_ref(BLUE, 9), _ref(GREEN, 1)]}])
    router = routing.router("gatewayAPI")
    assert router.get_weights() == {"blue": 90, "green": 10}
    route = copy.deepcopy(routing.get_httproute())
    route["spec"]["rules"][0]["backendRefs"] = [_ref(BLUE, 0), _ref(GREEN, 0)]
    routing.replace_httproute(route)
    assert router.get_weights() == {"blue": 0, "green": 0}  # nobody gets traffic: never equals a wanted split


def test_an_older_served_version_is_used(routing):
    routing.active_service()
    routing.httproute()
    router = routing.router("gatewayAPI")
    router.version = "v0alpha0"  # not served; v1 is
    router.fallback_versions = ("v1",)
    router.prepare()
    router.set_weights({"blue": 40, "green": 60})
    assert router.version == "v1"
    assert router.get_weights() == {"blue": 40, "green": 60}
