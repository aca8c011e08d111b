"""Fixtures and builders for the traffic-router tests (and bench/bench_routers.py).

* ``router_crds`` (session): runs hack/fetch-router-crds.sh once and installs the real
  Gateway API (standard channel) and Istio networking CRDs into the local apiserver,
  waiting until the apiserver serves them.
* ``owner`` (function): a ConfigMap in the test namespace standing in for the Rollout,
  returned as an ownerReference dict (the garbage collector sees a real owner).
* ``routing``: a :class:`RoutingEnv` for one namespace: the active Service, builders for
  HTTPRoute / VirtualService / Ingress, and ``router(kind, name, ...)``.

Use in a test module: ``from routing_helpers import owner, router_crds, routing  # noqa: F401``.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from teal.api import TrafficRouting
from teal.routers import ColorServices, make_router
from teal_devenv.crds import install_crds as devenv_install_crds
from teal_devenv.wait import wait_for

ROOT = Path(__file__).resolve().parents[1]
FETCH = ROOT / "hack" / "fetch-router-crds.sh"

GATEWAY = ("gateway.networking.k8s.io", "v1", "httproutes")
ISTIO = ("networking.istio.io", "v1", "virtualservices")
# The CRDs the router tests install (the fetch script caches more: BackendTLSPolicy, GRPCRoute,
# TCPRoute, DestinationRule, Istio Gateway...). Fewer CRDs: a faster Established apiserver.
TEST_CRDS = (
    "gatewayclasses.gateway.networking.k8s.io",
    "gateways.gateway.networking.k8s.io",
    "httproutes.gateway.networking.k8s.io",
    "referencegrants.gateway.networking.k8s.io",
    "virtualservices.networking.istio.io",
)
ROLLOUT = "checkout"
ACTIVE = "checkout"


# ---------------------------------------------------------------- CRDs


def fetch_router_crds(timeout: float = 900) -> dict[str, Path]:
    """Run hack/fetch-router-crds.sh; {'GATEWAY_API_CRDS': folder, 'ISTIO_CRDS': folder}."""
    proc = subprocess.run(["bash", str(FETCH)], capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"hack/fetch-router-crds.sh failed ({proc.returncode}):\n{proc.stderr.strip()}")
    out = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    return {k: Path(v) for k, v in out.items()}


def crd_documents(folders: Iterable[Path], names: Iterable[str] | None = TEST_CRDS) -> list[dict[str, Any]]:
    """The CRDs in the fetched folders (only `names`, unless None)."""
    wanted = set(names) if names is not None else None
    folders = list(folders)
    docs = []
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: 15x faster on these big files
    for folder in folders:
        for f in sorted(folder.glob("*.yaml")):
            if wanted is not None and not any(n.split(".", 1)[0] in f.name for n in wanted):
                continue
            for doc in yaml.load_all(f.read_text(), Loader=loader):
                is_crd = doc and doc.get("kind") == "CustomResourceDefinition"
                if is_crd and (wanted is None or doc["metadata"]["name"] in wanted):
                    docs.append(doc)
    if wanted is not None and len(docs) != len(wanted):
        found = {d["metadata"]["name"] for d in docs}
        raise RuntimeError(f"CRDs missing from {[str(f) for f in folders]}: {sorted(wanted - found)}")
    return docs


def install_crds(api_client: client.ApiClient, docs: list[dict[str, Any]], timeout: float = 120) -> list[str]:
    """Create (or leave as is) each CRD, then wait until all are Established and served."""
    names = devenv_install_crds(api_client, docs, timeout=timeout, replace=False)
    custom = client.CustomObjectsApi(api_client)
    for group, version, plural in (GATEWAY, ISTIO):
        wait_for(
            lambda: custom.list_cluster_custom_object(group, version, plural, limit=1) is not None,
            timeout=timeout,
            what=f"{plural}.{group}/{version} served",
        )
    return names


_INSTALLED: dict[str, dict[str, Path]] = {}  # apiserver URL -> folders (once per session)


@pytest.fixture(scope="session")
def router_crds(k8s) -> dict[str, Path]:
    """The real router CRDs, installed once per apiserver (test modules each import this
    fixture, which pytest would otherwise run once per module)."""
    host = k8s.configuration.host
    if host not in _INSTALLED:
        folders = fetch_router_crds()
        install_crds(k8s, crd_documents(folders.values()))
        _INSTALLED[host] = folders
    return _INSTALLED[host]


# ---------------------------------------------------------------- objects


def make_owner(api_client: client.ApiClient, namespace: str, name: str = "rollout-stand-in") -> dict[str, Any]:
    core = client.CoreV1Api(api_client)
    cm = core.create_namespaced_config_map(namespace, {"metadata": {"name": name}, "data": {}})
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "name": name,
        "uid": cm.metadata.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


@pytest.fixture
def owner(k8s, namespace) -> dict[str, Any]:
    return make_owner(k8s, namespace)


class RoutingEnv:
    """One namespace's objects for a router test."""

    def __init__(self, api_client: client.ApiClient, namespace: str, owner_ref: Mapping[str, Any]):
        self.api = api_client
        self.ns = namespace
        self.owner_ref = dict(owner_ref)
        self.core = client.CoreV1Api(api_client)
        self.net = client.NetworkingV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)

    # -- Services
    def active_service(self, name: str = ACTIVE, color: str | None = "blue", port: int = 80) -> dict[str, Any]:
        selector = {"app": "checkout"}
        if color:
            selector["teal.dev/color"] = color
        body = {
            "metadata": {"name": name},
            "spec": {"selector": selector, "ports": [{"name": "http", "port": port, "targetPort": 8080}]},
        }
        return self.core.create_namespaced_service(self.ns, body).to_dict()

    def select(self, color: str, name: str = ACTIVE) -> None:
        """What the operator's SelectColor does: point the active Service at a colour."""
        self.core.patch_namespaced_service(name, self.ns, {"spec": {"selector": {"teal.dev/color": color}}})

    def service(self, name: str) -> dict[str, Any] | None:
        try:
            return self.core.read_namespaced_service(name, self.ns).to_dict()
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    # -- Gateway API
    def httproute(self, name: str = "checkout", rules: list[dict[str, Any]] | None = None, **spec: Any) -> dict:
        if rules is None:
            rules = [{"backendRefs": [{"name": f"{ROLLOUT}-blue", "port": 80}]}]
        body = {
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "HTTPRoute",
            "metadata": {"name": name},
            "spec": {"parentRefs": [{"name": "public"}], "hostnames": ["shop.example"], "rules": rules, **spec},
        }
        return self.custom.create_namespaced_custom_object(*GATEWAY[:2], self.ns, GATEWAY[2], body)

    def get_httproute(self, name: str = "checkout") -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object(*GATEWAY[:2], self.ns, GATEWAY[2], name)

    def replace_httproute(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        return self.custom.replace_namespaced_custom_object(*GATEWAY[:2], self.ns, GATEWAY[2], obj["metadata"]["name"], obj)

    def patch_httproute(self, ops: list[dict[str, Any]], name: str = "checkout") -> dict[str, Any]:
        return self.custom.patch_namespaced_custom_object(
            *GATEWAY[:2], self.ns, GATEWAY[2], name, ops, _content_type="application/json-patch+json"
        )

    # -- Istio
    def virtualservice(self, name: str = "checkout", http: list[dict[str, Any]] | None = None) -> dict:
        if http is None:
            http = [
                {
                    "name": "primary",
                    "match": [{"uri": {"prefix": "/"}}],
                    "route": [
                        {
                            "destination": {"host": f"{ROLLOUT}-blue.{self.ns}.svc.cluster.local", "port": {"number": 80}},
                            "weight": 100,
                        }
                    ],
                }
            ]
        body = {
            "apiVersion": "networking.istio.io/v1",
            "kind": "VirtualService",
            "metadata": {"name": name},
            "spec": {"hosts": ["shop.example"], "gateways": ["public"], "http": http},
        }
        return self.custom.create_namespaced_custom_object(*ISTIO[:2], self.ns, ISTIO[2], body)

    def get_virtualservice(self, name: str = "checkout") -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object(*ISTIO[:2], self.ns, ISTIO[2], name)

    def replace_virtualservice(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        return self.custom.replace_namespaced_custom_object(*ISTIO[:2], self.ns, ISTIO[2], obj["metadata"]["name"], obj)

    # -- Ingress
    def ingress(
        self,
        name: str = "checkout",
        backend: str = ACTIVE,
        hosts: Iterable[str] = ("shop.example",),
        extra_paths: list[dict[str, Any]] | None = None,
        annotations: Mapping[str, str] | None = None,
    ):
        rules = []
        for host in hosts:
            paths = [{"path": "/", "pathType": "Prefix", "backend": {"service": {"name": backend, "port": {"number": 80}}}}]
            paths += list(extra_paths or [])
            rules.append({"host": host, "http": {"paths": paths}})
        body = {
            "metadata": {"name": name, "annotations": dict(annotations or {})},
            "spec": {"ingressClassName": "nginx", "rules": rules},
        }
        return self.net.create_namespaced_ingress(self.ns, body)

    def get_ingress(self, name: str = "checkout") -> dict[str, Any] | None:
        try:
            resp = self.net.read_namespaced_ingress(name, self.ns, _preload_content=False)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return json.loads(resp.data)

    def replace_ingress(self, obj: Mapping[str, Any]) -> None:
        self.net.replace_namespaced_ingress(obj["metadata"]["name"], self.ns, obj)

    # -- routers
    def router(
        self,
        kind: str,
        name: str = "checkout",
        routes: tuple[str, ...] = (),
        port: int | None = None,
        rollout: str = ROLLOUT,
        active: tuple[str, ...] = (ACTIVE,),
    ):
        routing = TrafficRouting(kind=kind, name=name, routes=tuple(routes), port=port)
        return make_router(self.api, self.ns, rollout, self.owner_ref, routing, ColorServices.for_rollout(rollout, active))


@pytest.fixture
def routing(k8s, namespace, owner, router_crds) -> RoutingEnv:
    return RoutingEnv(k8s, namespace, owner)


def backend_weights(route: Mapping[str, Any], rule: int = 0) -> dict[str, int | None]:
    """{backend name: weight} of one HTTPRoute rule."""
    return {r["name"]: r.get("weight") for r in route["spec"]["rules"][rule].get("backendRefs") or []}


def destination_weights(vs: Mapping[str, Any], route: int = 0) -> dict[str, int | None]:
    """{destination host: weight} of one VirtualService HTTP route."""
    return {d["destination"]["host"]: d.get("weight") for d in vs["spec"]["http"][route].get("route") or []}


def canary_state(ingress: Mapping[str, Any] | None) -> tuple[str | None, int | None]:
    """(backend service of the first path, canary-weight) of a canary Ingress."""
    if ingress is None:
        return None, None
    ann = ingress["metadata"].get("annotations") or {}
    path = ingress["spec"]["rules"][0]["http"]["paths"][0]
    return path["backend"]["service"]["name"], int(ann.get("nginx.ingress.kubernetes.io/canary-weight", -1))


def primary_backends(ingress: Mapping[str, Any]) -> list[str]:
    return [p["backend"]["service"]["name"] for r in ingress["spec"]["rules"] for p in r["http"]["paths"]]
