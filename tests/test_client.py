"""teal.client against the real apiserver (and kmock for what a real one will not do on demand).

The error taxonomy (404/409/422/403, a missing resource type), None for a missing object, the
status subresource, json-patch tests, label-selected lists, a watch with events and bookmarks,
impersonation, credentials refreshed per request, and bounded failures: a closed port, 5xx and
429 on reads (retried) and writes (not), a hung read (one timeout, never re-sent).
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from types import SimpleNamespace
from typing import Any

import kmock
import pytest
from kubernetes import client as k8s
from kubernetes.client import AppsV1Api as k8s_apps

from fault_helpers import SERVICES as KM_SERVICES
from fault_helpers import fake_api, status_body
from teal import client as tc
from teal.client import (
    DEPLOYMENTS,
    SERVICES,
    Client,
    Conflict,
    Forbidden,
    Invalid,
    NotFound,
    Resource,
    Transient,
)

CONFIGMAPS = Resource("", "v1", "configmaps")
SERVICE_ACCOUNTS = Resource("", "v1", "serviceaccounts")
NOT_SERVED = Resource("nothing.teal.dev", "v1", "widgets")


def _service(name: str, port: int = 80, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {"selector": {"app": name}, "ports": [{"port": port}]},
    }


def _configmap(name: str, labels: dict[str, str] | None = None, **data: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": labels or {}}, "data": data}


@pytest.fixture(scope="module")
def api(cluster: Any) -> Any:
    c = Client.from_kubeconfig(cluster.kubeconfig, timeout=(5, 20))
    yield c
    c.close()


# ---------------------------------------------------------------- the taxonomy on a real apiserver


@pytest.mark.cluster
def test_get_is_none_for_a_missing_object_and_not_found_for_a_missing_type(api: Client, namespace: str) -> None:
    assert api.get(SERVICES, namespace, "nope") is None
    with pytest.raises(NotFound) as err:
        api.get(NOT_SERVED, namespace, "x")
    assert err.value.kind_missing and err.value.status == 404
    with pytest.raises(NotFound) as err:  # a write to a missing object is NotFound, quoting the apiserver
        api.merge_patch(SERVICES, namespace, "nope", {"metadata": {"labels": {"a": "b"}}})
    assert not err.value.kind_missing and '"nope" not found' in err.value.message
    assert api.delete(SERVICES, namespace, "nope") is None


@pytest.mark.cluster
def test_create_read_patch_replace_delete_round_trip(api: Client, namespace: str) -> None:
    made = api.create(SERVICES, namespace, _service("web"))
    assert made["metadata"]["name"] == "web" and made["spec"]["ports"][0]["port"] == 80
    got = api.get(SERVICES, namespace, "web")
    assert got is not None and got["metadata"]["uid"] == made["metadata"]["uid"]
    patched = api.merge_patch(SERVICES, namespace, "web", {"spec": {"selector": {"app": "web", "teal.dev/color": "blue"}}})
    assert patched["spec"]["selector"] == {"app": "web", "teal.dev/color": "blue"}
    patched["metadata"]["labels"] = {"x": "y"}
    replaced = api.replace(SERVICES, namespace, "web", patched)
    assert replaced["metadata"]["labels"] == {"x": "y"}
    ops = [
        {"op": "test", "path": "/metadata/labels/x", "value": "y"},
        {"op": "replace", "path": "/metadata/labels/x", "value": "z"},
    ]
    assert api.json_patch(SERVICES, namespace, "web", ops)["metadata"]["labels"] == {"x": "z"}
    deleted = api.delete(SERVICES, namespace, "web", uid=made["metadata"]["uid"])
    assert deleted is not None
    assert api.get(SERVICES, namespace, "web") is None


@pytest.mark.cluster
def test_conflict_on_a_second_create_and_on_a_stale_resource_version(api: Client, namespace: str) -> None:
    first = api.create(CONFIGMAPS, namespace, _configmap("cm", a="1"))
    with pytest.raises(Conflict) as err:
        api.create(CONFIGMAPS, namespace, _configmap("cm"))
    assert err.value.status == 409 and err.value.reason == "AlreadyExists"
    api.merge_patch(CONFIGMAPS, namespace, "cm", {"data": {"a": "2"}})
    stale = {"metadata": {"resourceVersion": first["metadata"]["resourceVersion"]}, "data": {"a": "3"}}
    with pytest.raises(Conflict) as err:
        api.merge_patch(CONFIGMAPS, namespace, "cm", stale)
    assert err.value.reason == "Conflict" and "modified" in err.value.message
    assert (api.get(CONFIGMAPS, namespace, "cm") or {})["data"] == {"a": "2"}, "a refused write changed nothing"
    with pytest.raises(Conflict):  # a delete guarded by a uid that is not the object's
        api.delete(CONFIGMAPS, namespace, "cm", uid=str(uuid.uuid4()))


@pytest.mark.cluster
def test_invalid_with_causes_and_a_failed_json_patch_test_without(api: Client, namespace: str) -> None:
    with pytest.raises(Invalid) as err:
        api.create(SERVICES, namespace, _service("bad", port=70000))
    assert err.value.status == 422 and err.value.causes and "70000" in err.value.quoted()
    api.create(CONFIGMAPS, namespace, _configmap("cm", a="1"))
    with pytest.raises(Invalid) as err:
        api.json_patch(CONFIGMAPS, namespace, "cm", [{"op": "test", "path": "/data/a", "value": "2"}])
    assert err.value.status == 422 and not err.value.causes


@pytest.mark.cluster
def test_list_with_label_selector_and_pages(api: Client, namespace: str) -> None:
    for i in range(5):
        api.create(CONFIGMAPS, namespace, _configmap(f"cm-{i}", labels={"teal.dev/test-set": "odd" if i % 2 else "even"}))
    even = api.list(CONFIGMAPS, namespace, label_selector="teal.dev/test-set=even")
    assert sorted(o["metadata"]["name"] for o in even["items"]) == ["cm-0", "cm-2", "cm-4"]
    assert even["metadata"]["resourceVersion"], "a watch can start from the list"
    paged = api.items(CONFIGMAPS, namespace, label_selector="teal.dev/test-set", limit=2)
    assert sorted(o["metadata"]["name"] for o in paged) == [f"cm-{i}" for i in range(5)]


@pytest.mark.cluster
def test_status_subresource_and_server_side_apply(api: Client, namespace: str) -> None:
    dep = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "d", "namespace": namespace},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": "d"}},
            "template": {"metadata": {"labels": {"app": "d"}}, "spec": {"containers": [{"name": "c", "image": "x"}]}},
        },
    }
    applied = api.apply(DEPLOYMENTS, namespace, "d", dep, field_manager="teal-test")
    assert any(m.get("manager") == "teal-test" for m in applied["metadata"].get("managedFields") or [])
    # The status subresource takes status and ignores spec (the Deployment controller may
    # rewrite the status right after: the answer is what the write did).
    out = api.patch_status(DEPLOYMENTS, namespace, "d", {"status": {"observedGeneration": 42}, "spec": {"replicas": 3}})
    assert out["status"]["observedGeneration"] == 42 and out["spec"]["replicas"] == 0
    scaled = api.merge_patch(DEPLOYMENTS, namespace, "d", {"spec": {"replicas": 0}}, sub="scale")
    assert scaled["kind"] == "Scale"


def _limited_token(api: Client, namespace: str) -> str:
    api.create(SERVICE_ACCOUNTS, namespace, {"metadata": {"name": "nobody"}})
    answer = api.request(
        "POST",
        SERVICE_ACCOUNTS.path(namespace, "nobody", "token"),
        body={"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": 600}},
    )
    return str(answer["status"]["token"])


@pytest.mark.cluster
def test_forbidden_for_a_service_account_without_rbac(api: Client, namespace: str) -> None:
    cfg = k8s.Configuration()
    cfg.host, cfg.ssl_ca_cert = api.configuration.host, api.configuration.ssl_ca_cert
    cfg.api_key = {"BearerToken": _limited_token(api, namespace)}
    cfg.api_key_prefix = {"BearerToken": "Bearer"}
    nobody = Client(cfg)
    with pytest.raises(Forbidden) as err:
        nobody.get(SERVICES, namespace, "anything")
    assert err.value.status == 403 and f"system:serviceaccount:{namespace}:nobody" in err.value.message
    with pytest.raises(Forbidden) as err:  # no token at all
        Client(k8s.Configuration(host=cfg.host, ssl_ca_cert=cfg.ssl_ca_cert)).get(SERVICES, namespace, "x")
    assert err.value.status in (401, 403)


@pytest.mark.cluster
def test_impersonation_headers_are_honoured(api: Client, cluster: Any, namespace: str) -> None:
    who = "/apis/authentication.k8s.io/v1/selfsubjectreviews"
    body = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
    me = api.request("POST", who, body=body)["status"]["userInfo"]
    assert me["username"] != "alice" and "system:masters" in me["groups"]
    alice = Client(api.configuration, impersonate_user="alice", impersonate_groups=("dev", "qa"))
    seen = alice.request("POST", who, body=body)["status"]["userInfo"]
    assert seen["username"] == "alice" and {"dev", "qa"} <= set(seen.get("groups") or [])
    with pytest.raises(Forbidden):  # alice has no RBAC
        alice.get(SERVICES, namespace, "x")


@pytest.mark.cluster
def test_credentials_are_read_through_the_refresh_hook_on_every_request(api: Client, namespace: str) -> None:
    """What keeps exec plugins and rotated ServiceAccount tokens working: the Configuration's
    refresh_api_key_hook runs before each request, and the client sends what it left."""
    good = api.configuration.api_key.get("BearerToken") or api.configuration.api_key.get("authorization")
    assert good, "the admin kubeconfig has a token"
    cfg = k8s.Configuration(host=api.configuration.host, ssl_ca_cert=api.configuration.ssl_ca_cert)
    tokens = iter(["not-a-token", good.removeprefix("Bearer ")])
    calls = []

    def refresh(c: k8s.Configuration) -> None:
        calls.append(1)
        c.api_key = {"BearerToken": next(tokens)}
        c.api_key_prefix = {"BearerToken": "Bearer"}

    cfg.refresh_api_key_hook = refresh
    cfg.api_key = {"BearerToken": "expired"}
    rotating = Client(cfg)
    with pytest.raises(Forbidden):
        rotating.get(SERVICES, namespace, "x")
    assert rotating.get(SERVICES, namespace, "x") is None, "the rotated token is used"
    assert len(calls) == 2


# ---------------------------------------------------------------- watch


@pytest.mark.cluster
def test_watch_yields_events_and_bookmarks_from_a_resource_version(api: Client, namespace: str) -> None:
    start = api.list(CONFIGMAPS, namespace)["metadata"]["resourceVersion"]
    events: list[dict[str, Any]] = []

    def watch() -> None:
        for ev in api.watch(CONFIGMAPS, namespace, resource_version=start, timeout_seconds=5, label_selector="w"):
            events.append(ev)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    api.create(CONFIGMAPS, namespace, _configmap("a", labels={"w": "1"}))
    api.create(CONFIGMAPS, namespace, _configmap("ignored"))
    api.merge_patch(CONFIGMAPS, namespace, "a", {"data": {"k": "v"}})
    api.delete(CONFIGMAPS, namespace, "a")
    t.join(5 + tc.WATCH_MARGIN_S)
    assert not t.is_alive(), "the watch ends when the server ends it (timeoutSeconds)"
    changes = [(e["type"], e["object"]["metadata"]["name"]) for e in events if e["type"] != "BOOKMARK"]
    assert changes == [("ADDED", "a"), ("MODIFIED", "a"), ("DELETED", "a")]
    assert events[1]["object"]["data"] == {"k": "v"}
    # The apiserver sends a bookmark about once a minute, or when a watch with
    # timeoutSeconds ends; a watch's last event before the end is one (Kubernetes >= 1.27).
    bookmarks = [e for e in events if e["type"] == "BOOKMARK"]
    assert bookmarks, f"no BOOKMARK among {[e['type'] for e in events]}"
    assert int(bookmarks[-1]["object"]["metadata"]["resourceVersion"]) >= int(
        events[-2 if events[-1] is bookmarks[-1] else -1]["object"]["metadata"]["resourceVersion"]
    )


async def test_watch_error_events_raise_their_error_and_a_cut_stream_is_transient() -> None:
    """kmock: a 410 ERROR event (resourceVersion too old) is Gone (list again); a stream cut
    in the middle is Transient; events before either are delivered."""
    async with fake_api() as fake:
        svc = fake.store(KM_SERVICES, {"metadata": {"name": "s", "namespace": "ns"}, "spec": {}})
        watches = fake[kmock.action.WATCH, KM_SERVICES]
        gone = {"type": "ERROR", "object": status_body(410, "Expired", "too old resource version: 1 (1000)")}
        watches[:1] << 200 << ({"type": "MODIFIED", "object": svc}, gone)
        c = Client(k8s.Configuration(host=str(fake.url).rstrip("/")), timeout=(2, 2))

        def drain(events: list[dict[str, Any]]) -> None:
            for ev in c.watch(SERVICES, "ns", resource_version="1", timeout_seconds=5):
                events.append(ev)

        seen: list[dict[str, Any]] = []
        with pytest.raises(tc.Gone) as err:
            await asyncio.to_thread(drain, seen)
        assert err.value.status == 410 and "too old resource version" in err.value.message
        assert [e["type"] for e in seen] == ["MODIFIED"]
        assert list(watches)[0].params.get("allowWatchBookmarks") == "true"

        fake.drop(watches[1:2], {"type": "MODIFIED", "object": svc})
        seen = []
        with pytest.raises(Transient) as err:
            await asyncio.to_thread(drain, seen)
        assert err.value.status == 0 and [e["type"] for e in seen] == ["MODIFIED"]


# ---------------------------------------------------------------- bounded failures


def test_a_closed_port_is_transient_retried_and_bounded() -> None:
    cfg = k8s.Configuration(host="http://127.0.0.1:9")  # discard port: nothing listens
    c = Client(cfg, timeout=(1, 1), retries=2)
    started = time.monotonic()
    with pytest.raises(Transient) as err:
        c.get(SERVICES, "ns", "x")
    assert err.value.status == 0 and err.value.retryable and "127.0.0.1:9" in err.value.message
    assert time.monotonic() - started < 5


async def test_5xx_and_429_are_retried_on_reads_but_a_write_is_sent_once() -> None:
    for code, reason in ((503, "ServiceUnavailable"), (429, "TooManyRequests")):
        async with fake_api() as fake:  # a few failures: the read is retried and succeeds
            fake.store(KM_SERVICES, {"metadata": {"name": "s", "namespace": "ns"}, "spec": {}})
            c = Client(k8s.Configuration(host=str(fake.url).rstrip("/")), timeout=(2, 2), retries=3)
            fake.fail(fake[kmock.method.GET, KM_SERVICES], code, times=2, reason=reason, retry_after=0)
            assert await asyncio.to_thread(c.get, SERVICES, "ns", "s") is not None
            assert len(fake.requests(kmock.method.GET, KM_SERVICES)) == 3
    async with fake_api() as fake:  # more than the retries: Transient, with the apiserver's words
        c = Client(k8s.Configuration(host=str(fake.url).rstrip("/")), timeout=(2, 2), retries=3)
        fake.fail(fake[kmock.method.GET, KM_SERVICES], 429, times=10, reason="TooManyRequests", retry_after=0)
        with pytest.raises(Transient) as err:
            await asyncio.to_thread(c.get, SERVICES, "ns", "s")
        assert err.value.status == 429 and err.value.reason == "TooManyRequests"
        assert "injected by the test" in err.value.message
        assert len(fake.requests(kmock.method.GET, KM_SERVICES)) == 4, "the first try and 3 retries"
    async with fake_api() as fake:  # a write that reached the server is never re-sent
        fake.store(KM_SERVICES, {"metadata": {"name": "s", "namespace": "ns"}, "spec": {}})
        c = Client(k8s.Configuration(host=str(fake.url).rstrip("/")), timeout=(2, 2), retries=3)
        fake.fail(fake[kmock.method.PATCH, KM_SERVICES], 500, times=1)
        with pytest.raises(Transient) as err:
            await asyncio.to_thread(c.merge_patch, SERVICES, "ns", "s", {"metadata": {"labels": {"a": "b"}}})
        assert err.value.status == 500 and len(fake.requests(kmock.method.PATCH, KM_SERVICES)) == 1


async def test_a_hung_read_fails_after_one_read_timeout_and_is_not_resent() -> None:
    async with fake_api() as fake:
        c = Client(k8s.Configuration(host=str(fake.url).rstrip("/")), timeout=(1, 0.5), retries=3)
        hung = fake[kmock.method.GET, KM_SERVICES]
        fake.hang(hung)
        started = time.monotonic()
        with pytest.raises(Transient) as err:
            await asyncio.to_thread(c.get, SERVICES, "ns", "s")
        waited = time.monotonic() - started
        fake.release()
        assert err.value.status == 0 and err.value.reason == "Timeout" and not err.value.retryable
        assert len(list(hung)) == 1, "a read that timed out is not sent again"
        assert waited < 5


def test_error_for_maps_every_status_to_one_class() -> None:
    assert type(tc.error_for(404, None)) is NotFound
    assert type(tc.error_for(409, None)) is Conflict
    assert type(tc.error_for(400, None)) is Invalid and type(tc.error_for(422, None)) is Invalid
    assert type(tc.error_for(401, None)) is Forbidden and type(tc.error_for(403, None)) is Forbidden
    assert type(tc.error_for(410, None)) is tc.Gone
    for status in (429, 500, 502, 503, 504):
        e = tc.error_for(status, None)
        assert type(e) is Transient and e.retryable
    status = {"kind": "Status", "code": 409, "reason": "AlreadyExists", "message": 'services "x" already exists'}
    e = tc.error_for(409, status)
    assert (e.status, e.reason, e.message) == (409, "AlreadyExists", 'services "x" already exists')
    assert tc.error_for(404, None, "404 page not found").kind_missing


@pytest.mark.cluster
def test_a_workload_template_hashes_as_it_did_through_the_generated_models(api: Client, k8s: Any, namespace: str) -> None:
    """kube.Kube reads a workloadRef Deployment as JSON; its template (nulls dropped) must hash
    exactly as the generated client's model did, or every workloadRef Rollout would start a
    release on upgrade."""
    from teal.api import WorkloadRef, template_hash
    from teal.kube import Kube

    template = {
        "metadata": {"labels": {"app": "w"}, "annotations": {"a": "b"}},
        "spec": {
            "containers": [
                {
                    "name": "c",
                    "image": "x:1",
                    "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                    "resources": {"limits": {"cpu": "500m", "memory": "64Mi"}},
                    "readinessProbe": {"httpGet": {"path": "/", "port": "http"}},
                }
            ]
        },
    }
    dep = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "w"},
        "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "w"}}, "template": template},
    }
    api.create(DEPLOYMENTS, namespace, dep)
    old = k8s.sanitize_for_serialization(k8s_apps(k8s).read_namespaced_deployment("w", namespace).spec.template)
    spec = SimpleNamespace(template=None, workload_ref=WorkloadRef(name="w"))
    new, error = Kube(api).desired_template(namespace, spec)  # type: ignore[arg-type]
    assert error is None and new == old and template_hash(new) == template_hash(old)
