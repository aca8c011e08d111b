"""The routers' pure parts: weight arithmetic, host matching, list rewriting (no cluster)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from kubernetes import client

from teal.api import TrafficRouting
from teal.client import error_for
from teal.routers import ColorServices, RouterError, make_router, normalize_weights
from teal.routers.base import combine, drift_message, is_patch_conflict, pointer, recorded_weights, shares
from teal.routers.gateway import GatewayAPIRouter
from teal.routers.istio import IstioRouter
from teal.routers.nginx import NginxRouter, _Canary, _Path

SERVICES = ColorServices.for_rollout("checkout", ["checkout"])
OWNER = {"apiVersion": "teal.dev/v1alpha1", "kind": "Rollout", "name": "checkout", "uid": "u-1"}


def _router(kind: str, routes=(), port=None):
    return make_router(
        client.ApiClient(),
        "shop",
        "checkout",
        OWNER,
        TrafficRouting(kind=kind, name="checkout", routes=tuple(routes), port=port),
        SERVICES,
    )


def test_make_router_picks_the_kind():
    assert isinstance(_router("gatewayAPI"), GatewayAPIRouter)
    assert isinstance(_router("nginx"), NginxRouter)
    assert isinstance(_router("istio"), IstioRouter)
    with pytest.raises(RouterError, match="unknown traffic router 'linkerd'"):
        _router("linkerd")


def test_color_services():
    assert SERVICES.names == {"blue": "checkout-blue", "green": "checkout-green"}
    assert SERVICES.color_of("checkout-green") == "green"
    assert SERVICES.color_of("checkout") is None
    assert SERVICES.active == "checkout"
    with pytest.raises(ValueError):
        ColorServices("checkout", ())


@pytest.mark.parametrize(
    "given_, want",
    [
        ({"blue": 90, "green": 10}, {"blue": 90, "green": 10}),
        ({"green": 25}, {"blue": 75, "green": 25}),
        ({"blue": 100}, {"blue": 100, "green": 0}),
    ],
)
def test_normalize_weights(given_, want):
    assert normalize_weights(given_) == want


@pytest.mark.parametrize(
    "bad",
    [
        {},
        {"blue": 50, "green": 60},
        {"blue": -1, "green": 101},
        {"red": 1},
        {"blue": True, "green": 99},
        {"blue": 0.5, "green": 99.5},
    ],
)
def test_normalize_weights_rejects(bad):
    with pytest.raises(ValueError):
        normalize_weights(bad)


@given(st.integers(0, 10_000), st.integers(0, 10_000))
def test_shares_are_percentages(b, g):
    s = shares({"blue": b, "green": g})
    assert s["blue"] + s["green"] == (100 if b + g else 0)
    if b + g:
        assert abs(s["blue"] - 100 * b / (b + g)) <= 0.5


@given(st.lists(st.integers(0, 100).map(lambda b: {"blue": b, "green": 100 - b}), min_size=1, max_size=5))
def test_combine_is_exact_when_places_agree_and_short_otherwise(places):
    c = combine(places)
    if all(p == places[0] for p in places):
        assert c == places[0]
    else:
        assert c["blue"] + c["green"] < 100


def test_recorded_weights_and_drift_message():
    obj = {"metadata": {"annotations": {"teal.dev/weights": '{"blue":90,"green":10}'}}}
    assert recorded_weights(obj) == {"blue": 90, "green": 10}
    assert recorded_weights({"metadata": {"annotations": {"teal.dev/weights": "garbage"}}}) is None
    assert drift_message(None, {"blue": 1, "green": 99}) is None
    assert drift_message({"blue": 90, "green": 10}, {"blue": 90, "green": 10}) is None
    assert drift_message({"blue": 90, "green": 10}, {"blue": 100, "green": 0}) == (
        "weights were blue 100/green 0, but Teal had set blue 90/green 10"
    )


def test_pointer_escapes():
    assert pointer("metadata", "annotations", "teal.dev/weights") == "/metadata/annotations/teal.dev~1weights"
    assert pointer("a~b", 0) == "/a~0b/0"


def test_patch_conflicts():
    test_failed = error_for(422, {"kind": "Status", "reason": "Invalid", "details": {}})
    invalid = error_for(422, {"reason": "Invalid", "details": {"causes": [{"field": "spec.rules"}]}})
    assert is_patch_conflict(test_failed)
    assert not is_patch_conflict(invalid)
    assert is_patch_conflict(error_for(409, None))
    assert not is_patch_conflict(error_for(404, None))


@pytest.mark.parametrize(
    "host, color",
    [
        ("checkout-blue", "blue"),
        ("checkout-green.shop", "green"),
        ("checkout-blue.shop.svc", "blue"),
        ("checkout-blue.shop.svc.cluster.local", "blue"),
        ("checkout-blue.shop.svc.corp.internal", "blue"),
        ("checkout-blue.other.svc.cluster.local", None),
        ("checkout-blue2", None),
        ("checkout", None),
        ("checkout-blue.shopx", None),
        (None, None),
    ],
)
def test_istio_hosts(host, color):
    assert _router("istio").entry_color({"destination": {"host": host}}) == color


def test_istio_added_destination_keeps_the_host_form():
    r = _router("istio")
    sibling = {
        "destination": {"host": "checkout-blue.shop.svc.cluster.local", "port": {"number": 80}},
        "weight": 100,
        "headers": {"request": {"set": {"x": "1"}}},
    }
    assert r.new_entry(sibling, "green") == {
        "destination": {"host": "checkout-green.shop.svc.cluster.local", "port": {"number": 80}},
        "weight": 100,
        "headers": {"request": {"set": {"x": "1"}}},
    }


def test_gateway_weighted_items_touch_only_color_weights():
    r = _router("gatewayAPI", port=8080)
    items = [
        {"name": "legacy", "port": 80, "weight": 3},
        {"name": "checkout-green", "port": 80, "weight": 1, "filters": [{"type": "RequestHeaderModifier"}]},
        {"name": "checkout-green", "port": 81, "weight": 2},
    ]
    place = r._place("rule 0", ("spec", "rules", 0, "backendRefs"), items)
    assert place.missing == ["blue"]
    assert r.place_shares(place) == {"blue": 0, "green": 100}
    new = r.weighted_items(place, {"blue": 30, "green": 70})
    assert new == [
        {"name": "legacy", "port": 80, "weight": 3},
        {"name": "checkout-green", "port": 80, "weight": 70, "filters": [{"type": "RequestHeaderModifier"}]},
        {"name": "checkout-green", "port": 81, "weight": 0},
        {"name": "checkout-blue", "port": 80, "weight": 30, "filters": [{"type": "RequestHeaderModifier"}]},
    ]
    assert items[1]["weight"] == 1  # the read copy is not modified


def _path(color, switchable=False, host="a"):
    return _Path(0, 0, host, "/", "Prefix", f"checkout-{color}" if switchable else "checkout", {}, color, switchable)


@pytest.mark.parametrize(
    "primary, canary, want",
    [
        ("blue", ("green", 10), {"blue": 90, "green": 10}),
        ("blue", ("green", 0), {"blue": 100, "green": 0}),
        ("blue", ("green", 100), {"blue": 0, "green": 100}),
        ("green", ("green", 40), {"blue": 0, "green": 100}),  # canary on the primary's colour: all to it
        (None, ("green", 40), {"blue": 0, "green": 40}),  # primary unknown: only the canary share is sure
        (None, ("blue", 100), {"blue": 100, "green": 0}),
        (None, None, {"blue": 0, "green": 0}),
        ("blue", None, {"blue": 100, "green": 0}),
    ],
)
def test_nginx_path_weights(primary, canary, want):
    p = _path(primary)
    if canary is None:
        c = _Canary(None, None, 0, True, set())
    else:
        c = _Canary({"metadata": {}}, canary[0], canary[1], True, {p.key})
    assert NginxRouter._path_weights(p, c) == want


def test_nginx_invalid_canary_reads_as_unknown():
    p = _path("blue")
    assert NginxRouter._path_weights(p, _Canary({"metadata": {}}, "green", 10, False, {p.key})) == {"blue": 0, "green": 0}
