"""teal.informer's store rules and teal.client's request names, without a cluster.

The informers against a real control plane are exercised by every e2e test (the operator reads
only through them) and counted by tests/test_e2e_requests.py."""

from __future__ import annotations

from typing import Any

import pytest

from teal.client import DEPLOYMENTS, SERVICES, Client, request_kind
from teal.informer import READS, CachingClient, Informer, Informers, matches, newer, parse_selector


def obj(name: str, rv: str, ns: str = "shop", **labels: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": ns, "resourceVersion": rv, "labels": labels}, "spec": {}}


class NoApi(Client):
    """A Client that must not be asked anything."""

    def __init__(self) -> None:
        self.requests = __import__("collections").Counter()

    def request(self, method: str, path: str, **_: Any) -> dict[str, Any]:
        raise AssertionError(f"{method} {path} went to the apiserver")


def synced(informers: Informers) -> Informers:
    for inf in informers.all():
        inf.synced.set()
        inf.settled.set()
    return informers


def test_resource_versions_compare_as_numbers_and_anything_unknown_is_newer():
    assert newer("10", "9") and not newer("9", "10") and not newer("7", "7")
    assert newer("7", None) and not newer(None, "7")
    assert newer("abc", "abd")  # not etcd's: different counts as newer


def test_equality_selectors_are_served_from_memory_and_the_rest_is_not():
    assert parse_selector("teal.dev/rollout=app,tier") == {"teal.dev/rollout": "app", "tier": None}
    assert parse_selector("a==b") == {"a": "b"}
    assert parse_selector(None) == {}
    for other in ("a!=b", "!a", "a in (b)", "a notin (b)"):
        assert parse_selector(other) is None
    assert matches({"a": "b", "c": None}, obj("x", "1", a="b", c="z"))
    assert not matches({"a": "b"}, obj("x", "1", a="c"))


def test_the_store_never_goes_back_to_an_older_version():
    inf = Informer(NoApi(), DEPLOYMENTS)
    seen: list[tuple[str, str]] = []
    inf.on_change = lambda res, typ, o: seen.append((typ, o["metadata"]["resourceVersion"]))
    assert inf.put(obj("app-blue", "5"))
    assert not inf.put(obj("app-blue", "4"))  # a late watch event of an older write
    assert not inf.put(obj("app-blue", "5"))  # the watch event of a write whose answer is stored
    assert inf.put(obj("app-blue", "6"))
    assert inf.get("shop", "app-blue")["metadata"]["resourceVersion"] == "6"
    inf.remove(obj("app-blue", "7"))
    assert inf.get("shop", "app-blue") is None
    assert seen == [("ADDED", "5"), ("MODIFIED", "6"), ("DELETED", "7")]


def test_the_caching_client_reads_from_memory_records_what_it_read_and_takes_writes_answers(monkeypatch):
    monkeypatch.setattr(CachingClient, "request", NoApi.request)  # what is not cached would go out
    informers = synced(Informers(NoApi(), ["shop"]))
    api = CachingClient(NoApi(), informers)
    informers.informer(SERVICES, "shop").put(obj("app", "3"))  # type: ignore[union-attr]
    informers.informer(DEPLOYMENTS, "shop").put(obj("app-blue", "8", **{"teal.dev/rollout": "app"}))  # type: ignore[union-attr]
    reads: dict[tuple[str, str, str], str | None] = {}
    READS.set(reads)
    assert api.get(SERVICES, "shop", "app")["metadata"]["resourceVersion"] == "3"  # type: ignore[index]
    assert api.get(SERVICES, "shop", "missing") is None
    assert [d["metadata"]["name"] for d in api.items(DEPLOYMENTS, "shop", label_selector="teal.dev/rollout=app")] == ["app-blue"]
    assert reads[("services", "shop", "app")] == "3" and reads[("services", "shop", "missing")] == "-"
    assert informers.unchanged(reads)
    informers.observe(SERVICES, obj("app", "4"))  # a write's answer
    assert not informers.unchanged(reads)
    assert api.get(SERVICES, "shop", "app")["metadata"]["resourceVersion"] == "4"  # type: ignore[index]
    with pytest.raises(AssertionError, match="went to the apiserver"):  # a namespace it does not watch
        api.get(SERVICES, "elsewhere", "app")


def test_a_scale_answer_updates_the_stored_deployment_until_its_watch_event():
    informers = synced(Informers(NoApi(), ["shop"]))
    inf = informers.informer(DEPLOYMENTS, "shop")
    assert inf is not None
    dep = obj("app-blue", "8")
    dep["metadata"]["generation"] = 2
    dep["spec"] = {"replicas": 3, "template": {}}
    inf.put(dep)
    informers.scaled(DEPLOYMENTS, "shop", "app-blue", {"metadata": {"resourceVersion": "9"}, "spec": {"replicas": 0}})
    got = inf.get("shop", "app-blue")
    assert got is not None and got["spec"] == {"replicas": 0, "template": {}}
    assert got["metadata"]["generation"] == 3 and got["metadata"]["resourceVersion"] == "9"
    assert dep["spec"]["replicas"] == 3  # the stored object was replaced, not edited


@pytest.mark.parametrize(
    ("method", "path", "watch", "want"),
    [
        ("GET", "/api/v1/namespaces/shop/services/app", False, ("get", "services")),
        ("GET", "/api/v1/namespaces/shop/services", False, ("list", "services")),
        ("GET", "/apis/apps/v1/deployments", True, ("watch", "deployments")),
        ("GET", "/api/v1/namespaces", False, ("list", "namespaces")),
        ("GET", "/api/v1/namespaces/shop", False, ("get", "namespaces")),
        ("PATCH", "/apis/teal.dev/v1alpha1/namespaces/shop/rollouts/app/status", False, ("patch", "rollouts/status")),
        ("PATCH", "/apis/apps/v1/namespaces/shop/deployments/app-blue/scale", False, ("patch", "deployments/scale")),
        ("POST", "/api/v1/namespaces/shop/events", False, ("create", "events")),
        ("PUT", "/api/v1/namespaces/shop/services/app-blue", False, ("update", "services")),
        ("DELETE", "/apis/apps/v1/namespaces/shop/controllerrevisions/app-1", False, ("delete", "controllerrevisions")),
    ],
)
def test_requests_are_named_as_the_apiserver_audit_log_names_them(method, path, watch, want):
    assert request_kind(method, path, watch) == want


@pytest.mark.parametrize(
    ("reads", "quiet"),
    [
        ({("rollouts", "shop", "app"): "7", ("services", "shop", "app"): "3"}, True),
        ({("rollouts", "shop", "app"): "7", ("namespaces", "", "shop"): None}, False),  # a GET: nothing to compare
    ],
)
def test_only_a_decision_that_read_everything_from_memory_can_wait_quietly(reads, quiet) -> None:
    """A quiet Rollout waits for an event or its timer (no periodic look): only safe when every
    input it read is in an informer, whose events wake it; else it looks every RESYNC_SECONDS."""
    import datetime as dt
    import types

    from teal.controller import Controller, Loop

    ctl = types.SimpleNamespace(informers=object(), policies=types.SimpleNamespace(version=1))
    loop = Loop.__new__(Loop)
    loop.quiet = None
    token = READS.set(dict(reads))
    try:
        Controller._remember_quiet(ctl, loop, None, dt.datetime(2026, 12, 1, tzinfo=dt.UTC))
    finally:
        READS.reset(token)
    assert (loop.quiet is not None) == quiet
