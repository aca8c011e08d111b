"""Istio router on the real apiserver with Istio's real VirtualService CRD."""

from __future__ import annotations

import pytest

from routing_helpers import destination_weights
from teal.routers import RouterError

pytestmark = pytest.mark.cluster


def _dest(host: str, weight: int | None = None, port: int | None = 80) -> dict:
    d: dict = {"destination": {"host": host}}
    if port:
        d["destination"]["port"] = {"number": port}
    if weight is not None:
        d["weight"] = weight
    return d


def _http(ns: str) -> list[dict]:
    return [
        {"name": "internal", "match": [{"headers": {"x-internal": {"exact": "1"}}}], "route": [_dest("checkout-green", 100)]},
        {
            "name": "primary",
            "match": [{"uri": {"prefix": "/"}}],
            "timeout": "5s",
            "route": [_dest(f"checkout-blue.{ns}.svc.cluster.local", 100), _dest("legacy", 0)],
        },
        {"name": "other", "route": [_dest("payments", 100)]},
    ]


def test_named_routes_only(routing):
    routing.active_service()
    routing.virtualservice(http=_http(routing.ns))
    router = routing.router("istio", routes=("primary",))
    router.prepare()
    vs = routing.get_virtualservice()
    blue, green = (f"checkout-{c}.{routing.ns}.svc.cluster.local" for c in ("blue", "green"))
    assert destination_weights(vs, 1) == {blue: 100, "legacy": 0, green: 0}  # green added with the FQDN form
    assert router.get_weights() == {"blue": 100, "green": 0}
    router.set_weights({"blue": 70, "green": 30})
    vs = routing.get_virtualservice()
    assert destination_weights(vs, 0) == {"checkout-green": 100}  # not named: untouched
    assert destination_weights(vs, 1) == {blue: 70, "legacy": 0, green: 30}
    assert destination_weights(vs, 2) == {"payments": 100}
    assert vs["spec"]["http"][1]["timeout"] == "5s"
    assert router.get_weights() == {"blue": 70, "green": 30}


def test_without_names_every_route_with_a_color_is_managed(routing):
    routing.active_service()
    routing.virtualservice(http=_http(routing.ns))
    router = routing.router("istio")
    router.prepare()
    # 'internal' sends all to green, 'primary' all to blue: no colour is sure of any share
    assert router.get_weights() == {"blue": 0, "green": 0}
    router.set_weights({"blue": 100, "green": 0})
    vs = routing.get_virtualservice()
    assert destination_weights(vs, 0) == {"checkout-green": 0, "checkout-blue": 100}  # short-name form kept
    assert router.get_weights() == {"blue": 100, "green": 0}
    assert destination_weights(vs, 2) == {"payments": 100}


@pytest.mark.parametrize("form", ["{svc}", "{svc}.{ns}", "{svc}.{ns}.svc", "{svc}.{ns}.svc.cluster.local"])
def test_host_forms(routing, form):
    routing.active_service()
    blue = form.format(svc="checkout-blue", ns=routing.ns)
    green = form.format(svc="checkout-green", ns=routing.ns)
    routing.virtualservice(http=[{"route": [_dest(blue, 40), _dest(green, 60)]}])
    router = routing.router("istio")
    assert router.get_weights() == {"blue": 40, "green": 60}
    router.set_weights({"blue": 10, "green": 90})
    assert destination_weights(routing.get_virtualservice()) == {blue: 10, green: 90}


def test_hosts_of_other_namespaces_are_not_teals(routing):
    routing.active_service()
    routing.virtualservice(http=[{"route": [_dest("checkout-blue.elsewhere.svc.cluster.local", 100)]}])
    with pytest.raises(RouterError, match="has no HTTP route with a destination host checkout-blue or checkout-green"):
        routing.router("istio").get_weights()


def test_a_lone_destination_without_weight_gets_everything(routing):
    routing.active_service()
    routing.virtualservice(http=[{"name": "primary", "route": [_dest("checkout-green", None)]}])
    router = routing.router("istio", routes=("primary",))
    assert router.get_weights() == {"blue": 0, "green": 100}


def test_gitops_edit_mid_release_keeps_the_users_change_and_gets_teals_weights_back(routing):
    routing.active_service()
    routing.virtualservice(http=_http(routing.ns))
    router = routing.router("istio", routes=("primary",))
    router.prepare()
    router.set_weights({"blue": 50, "green": 50})
    vs = routing.get_virtualservice()
    vs["spec"]["hosts"].append("checkout.example")
    primary = vs["spec"]["http"][1]
    primary["match"].append({"headers": {"x-beta": {"exact": "yes"}}})
    primary["retries"] = {"attempts": 3}
    primary["route"] = [_dest(f"checkout-blue.{routing.ns}.svc.cluster.local", 100), _dest("legacy", 0)]  # Git's
    routing.replace_virtualservice(vs)
    assert router.get_weights() == {"blue": 100, "green": 0}
    assert router.set_weights({"blue": 50, "green": 50}) is True
    assert router.last_drift == ("route 'primary' had no destination to checkout-green, but Teal had set blue 50/green 50")
    vs = routing.get_virtualservice()
    assert vs["spec"]["hosts"] == ["shop.example", "checkout.example"]
    assert vs["spec"]["http"][1]["match"][-1] == {"headers": {"x-beta": {"exact": "yes"}}}
    assert vs["spec"]["http"][1]["retries"] == {"attempts": 3}
    assert router.get_weights() == {"blue": 50, "green": 50}


def test_a_route_moved_by_the_user_is_followed_by_name(routing):
    routing.active_service()
    routing.virtualservice(http=_http(routing.ns))
    router = routing.router("istio", routes=("primary",))
    router.prepare()
    vs = routing.get_virtualservice()
    vs["spec"]["http"].reverse()  # 'primary' stays in the middle; move it first
    vs["spec"]["http"].insert(0, vs["spec"]["http"].pop(1))
    routing.replace_virtualservice(vs)
    router.set_weights({"blue": 20, "green": 80})
    vs = routing.get_virtualservice()
    assert [r["name"] for r in vs["spec"]["http"]] == ["primary", "other", "internal"]
    assert list(destination_weights(vs, 0).values()) == [20, 0, 80]
    assert destination_weights(vs, 2) == {"checkout-green": 100}


def test_a_route_name_that_does_not_exist_is_a_clear_error(routing):
    routing.active_service()
    routing.virtualservice(http=_http(routing.ns))
    router = routing.router("istio", routes=("primary", "canary"))
    for call in (router.prepare, router.get_weights, lambda: router.set_weights({"blue": 100})):
        with pytest.raises(RouterError) as err:
            call()
        assert str(err.value) == (
            "VirtualService checkout has no HTTP route named 'canary' (its named routes: internal, primary, other)"
        )
        assert err.value.reason == "RouteNameNotFound"


def test_a_named_route_without_colors_is_a_clear_error(routing):
    routing.active_service()
    routing.virtualservice(http=_http(routing.ns))
    router = routing.router("istio", routes=("other",))
    with pytest.raises(RouterError) as err:
        router.get_weights()
    assert str(err.value) == (
        "VirtualService checkout route 'other' has no destination with host checkout-blue or checkout-green"
    )
    assert err.value.reason == "BackendNotFound"
