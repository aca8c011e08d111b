"""A policy's own status (teal.policy_kube.ready_status): what the apiserver cannot refuse is
said there -- an invalid policy, windows that overlap, and a ClusterReleasePolicy's
namespaceSelector that a namespaced operator cannot evaluate (it cannot read Namespaces)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from kubernetes import client as k8s

from teal import policy_kube as PK
from teal.client import NAMESPACES, Client, Resource

SERVICE_ACCOUNTS = Resource("", "v1", "serviceaccounts")

NOW = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
WEEKDAYS = {"name": "day", "days": ["Mon", "Tue", "Wed", "Thu", "Fri"], "start": "09:00", "end": "16:00"}


def body(spec: dict[str, Any], namespace: str | None = "shop") -> dict[str, Any]:
    meta = {"name": "p", "generation": 3, **({"namespace": namespace} if namespace else {})}
    return {"metadata": meta, "spec": spec}


def ready(status: dict[str, Any]) -> tuple[str, str]:
    (c,) = status["conditions"]
    assert c["observedGeneration"] == status["observedGeneration"] == 3
    return c["status"], c["reason"]


def test_a_valid_policy_is_ready() -> None:
    st = PK.ready_status("releasepolicies", body({"windows": [WEEKDAYS]}), now=NOW)
    assert ready(st) == ("True", "Valid")


def test_overlapping_windows_are_reported_and_the_union_still_acts() -> None:
    late = {"name": "late", "days": ["Mon"], "start": "15:00", "end": "18:00"}
    b = body({"timeZone": "Europe/London", "windows": [WEEKDAYS, late]})
    st = PK.ready_status("releasepolicies", b, now=NOW)
    assert ready(st) == ("False", "OverlappingWindows")
    assert st["message"].startswith("windows: day and late overlap at 2026-12-07 15:00 (Europe/London)")
    gate = PK.gate_of("releasepolicies", b)  # still a gate: a deny or a window is not dropped
    assert gate.policy is not None and len(gate.policy.windows) == 2


def test_an_unreadable_namespace_selector_is_reported_only_where_it_matters() -> None:
    spec = {"windows": [WEEKDAYS], "namespaceSelector": {"matchLabels": {"env": "prod"}}}
    cluster = body(spec, namespace=None)
    assert ready(PK.ready_status("clusterreleasepolicies", cluster, namespaces_readable=False, now=NOW)) == (
        "False",
        "NamespaceSelectorUnreadable",
    )
    assert ready(PK.ready_status("clusterreleasepolicies", cluster, namespaces_readable=True, now=NOW)) == ("True", "Valid")
    no_selector = body({"windows": [WEEKDAYS]}, namespace=None)
    assert ready(PK.ready_status("clusterreleasepolicies", no_selector, namespaces_readable=False, now=NOW))[0] == "True"


def test_an_unreadable_selector_selects_nothing() -> None:
    pols = PK.Policies()
    pols.seen(
        "clusterreleasepolicies",
        None,
        "p",
        body({"windows": [WEEKDAYS], "namespaceSelector": {"matchLabels": {"env": "prod"}}}, namespace=None),
    )
    rollout = {"metadata": {"name": "r", "namespace": "shop"}}
    assert pols.gates_for(rollout, lambda ns: None) == ()
    assert len(pols.gates_for(rollout, lambda ns: {"env": "prod"})) == 1


@pytest.mark.cluster
def test_can_read_namespaces_is_what_rbac_says(cluster: Any, namespace: str) -> None:
    admin = Client.from_kubeconfig(cluster.kubeconfig, timeout=(5, 20))
    assert PK.can_read_namespaces(admin)
    assert admin.items(NAMESPACES, field_selector="metadata.name=default")
    admin.create(SERVICE_ACCOUNTS, namespace, {"metadata": {"name": "namespaced-operator"}})
    answer = admin.request(
        "POST",
        SERVICE_ACCOUNTS.path(namespace, "namespaced-operator", "token"),
        body={"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": 600}},
    )
    cfg = k8s.Configuration()
    cfg.host, cfg.ssl_ca_cert = admin.configuration.host, admin.configuration.ssl_ca_cert
    cfg.api_key, cfg.api_key_prefix = {"BearerToken": answer["status"]["token"]}, {"BearerToken": "Bearer"}
    assert not PK.can_read_namespaces(Client(cfg))


def test_held_seconds_are_counted_by_namespace() -> None:
    from teal import metrics

    counter = metrics.RELEASE_HELD_SECONDS.labels("held-ns")
    before = counter._value.get()
    body = {"metadata": {"namespace": "held-ns", "name": "r"}}
    metrics.observe_reconcile(0.01, body, {"stats": {"heldSeconds": 100}}, {"stats": {"heldSeconds": 160}})
    metrics.observe_reconcile(0.01, body, {"stats": {"heldSeconds": 160}}, {"stats": {"heldSeconds": 160}})
    assert counter._value.get() - before == 60


# ---------------------------------------------------------------- a Rollout's spec.releasePolicy


def policies(*items: tuple[str, str, dict[str, Any]]) -> PK.Policies:
    pols = PK.Policies()
    for plural, name, spec in items:
        ns = "shop" if plural == "releasepolicies" else None
        b = body(spec, namespace=ns)
        b["metadata"]["name"] = name
        pols.seen(plural, ns, name, b)
    return pols


def sources(pols: PK.Policies, release_policy: dict[str, Any] | None, labels: dict[str, str] | None = None) -> list[str]:
    spec = {"releasePolicy": release_policy} if release_policy is not None else {}
    rollout = {"metadata": {"name": "r", "namespace": "shop", "labels": labels or {}}, "spec": spec}
    return [g.source for g in pols.gates_for(rollout, lambda ns: {})]


FRONTEND = {"windows": [WEEKDAYS], "rolloutSelector": {"matchLabels": {"tier": "frontend"}}}
FREEZE = {"freeze": {"reason": "incident 4711"}}


def test_exclude_leaves_out_a_namespaced_policy_but_not_a_freeze_or_a_cluster_policy() -> None:
    pols = policies(
        ("releasepolicies", "trading-hours", {"windows": [WEEKDAYS]}),
        ("releasepolicies", "teal-freeze", FREEZE),
        ("clusterreleasepolicies", "nightly", {"windows": [WEEKDAYS]}),
        ("clusterreleasepolicies", "lenient", {"windows": [WEEKDAYS], "allowRolloutOptOut": True}),
    )
    every = [
        "ClusterReleasePolicy lenient",
        "ClusterReleasePolicy nightly",
        "ReleasePolicy shop/teal-freeze",
        "ReleasePolicy shop/trading-hours",
    ]
    assert sources(pols, None) == every
    out = sources(pols, {"exclude": ["trading-hours", "teal-freeze", "nightly", "lenient"]})
    assert out == ["ClusterReleasePolicy nightly", "ReleasePolicy shop/teal-freeze"]


def test_policies_names_the_namespaced_policies_that_apply() -> None:
    pols = policies(
        ("releasepolicies", "frontend-hours", FRONTEND),
        ("releasepolicies", "backend-hours", {"windows": [WEEKDAYS]}),
        ("releasepolicies", "teal-freeze", FREEZE),
        ("clusterreleasepolicies", "nightly", {"windows": [WEEKDAYS]}),
    )
    assert sources(pols, {"policies": ["frontend-hours"]}) == [
        "ClusterReleasePolicy nightly",
        "ReleasePolicy shop/frontend-hours",
        "ReleasePolicy shop/teal-freeze",
    ]
    assert sources(pols, {"policies": []}) == ["ClusterReleasePolicy nightly", "ReleasePolicy shop/teal-freeze"]


def test_an_invalid_override_is_a_spec_error_and_changes_nothing() -> None:
    from teal.api import SpecError, parse_release_policy

    with pytest.raises(SpecError, match="not both"):
        parse_release_policy({"policies": ["a"], "exclude": ["b"]})
    with pytest.raises(SpecError, match="list of policy names"):
        parse_release_policy({"exclude": "b"})
    pols = policies(("releasepolicies", "trading-hours", {"windows": [WEEKDAYS]}))
    assert sources(pols, {"policies": ["x"], "exclude": ["trading-hours"]}) == ["ReleasePolicy shop/trading-hours"]


def test_a_policy_reports_when_it_comes_to_select_a_rollout_and_when_it_no_longer_does() -> None:
    pols = PK.Policies()
    key = ("releasepolicies", "shop", "frontend")
    pols.seen(
        "releasepolicies", "shop", "frontend", body({"windows": [WEEKDAYS], "rolloutSelector": {"matchLabels": {"tier": "web"}}})
    )
    pols.reported[key] = False  # its status says: selects no Rollout
    web = {"metadata": {"namespace": "shop", "name": "a", "labels": {"tier": "web"}}, "spec": {}}
    other = {"metadata": {"namespace": "shop", "name": "b", "labels": {}}, "spec": {}}
    assert len(pols.gates_for(other, lambda ns: {})) == 0 and not pols.pending
    assert len(pols.gates_for(web, lambda ns: {})) == 1 and pols.pending == {key}
    pols.pending.clear()
    pols.reported[key] = True
    assert pols.note(("shop", "b"), set()) == []  # b was never selected
    assert pols.note(("shop", "a"), set()) == [key]  # a is gone: the policy selects nothing again


def test_the_selection_condition_is_written_only_when_it_changes() -> None:
    b = body({"windows": [WEEKDAYS]})
    new = PK._status_patch("releasepolicies", b, selects=False)
    assert new is not None
    sel = next(c for c in new["conditions"] if c["type"] == "RolloutsSelected")
    assert (sel["status"], sel["reason"]) == ("False", "NoRolloutSelected")
    assert "selects no Rollout" in sel["message"]
    b["status"] = new
    assert PK._status_patch("releasepolicies", b, selects=False) is None
    assert PK._status_patch("releasepolicies", b, selects=True) is not None
