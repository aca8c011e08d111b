"""Smoke tests of the local control plane: workloads, Services, CRDs with CEL, RBAC."""

from __future__ import annotations

import dataclasses
import json
import socket

import kubernetes.client as k
import pytest
from kubernetes.client.rest import ApiException

from teal_devenv.binaries import BinariesNotFound, find_binaries
from teal_devenv.cluster import ClusterError, LocalCluster
from teal_devenv.wait import wait_for

pytestmark = pytest.mark.cluster


# ----------------------------------------------------------------- helpers


def deployment(name: str, labels: dict[str, str], replicas: int = 3) -> k.V1Deployment:
    return k.V1Deployment(
        metadata=k.V1ObjectMeta(name=name, labels=labels),
        spec=k.V1DeploymentSpec(
            replicas=replicas,
            selector=k.V1LabelSelector(match_labels=labels),
            template=k.V1PodTemplateSpec(
                metadata=k.V1ObjectMeta(labels=labels),
                spec=k.V1PodSpec(
                    containers=[
                        k.V1Container(
                            name="app",
                            image="example.invalid/demo:1",
                            ports=[k.V1ContainerPort(container_port=8080, name="http")],
                        )
                    ]
                ),
            ),
        ),
    )


def ready_pod_ips(core: k.CoreV1Api, ns: str, selector: str) -> set[str]:
    ips = set()
    for p in core.list_namespaced_pod(ns, label_selector=selector).items:
        conds = {c.type: c.status for c in (p.status.conditions or [])}
        if p.metadata.deletion_timestamp is None and conds.get("Ready") == "True" and p.status.pod_ip:
            ips.add(p.status.pod_ip)
    return ips


def ready_endpoint_ips(disc: k.DiscoveryV1Api, ns: str, service: str) -> set[str]:
    ips = set()
    for s in disc.list_namespaced_endpoint_slice(ns, label_selector=f"kubernetes.io/service-name={service}").items:
        for ep in s.endpoints or []:
            if ep.conditions is None or ep.conditions.ready:
                ips.update(ep.addresses)
    return ips


# ----------------------------------------------------------------- tests


def test_cluster_basics(cluster: LocalCluster, k8s) -> None:
    assert cluster.server.startswith("https://127.0.0.1:")
    nodes = k.CoreV1Api(k8s).list_node(label_selector="type=kwok").items
    assert len(nodes) == 3
    for n in nodes:
        assert {c.type: c.status for c in n.status.conditions}["Ready"] == "True"
        assert n.status.allocatable["cpu"] == "32"
    # clients verify the serving certificate against our CA
    version = k.VersionApi(k8s).get_code()
    assert version.git_version == "v1.34.4"


def test_deployment_service_endpoints_follow_selector(k8s, namespace: str) -> None:
    apps, core, disc = k.AppsV1Api(k8s), k.CoreV1Api(k8s), k.DiscoveryV1Api(k8s)
    blue = {"app": "demo", "teal.dev/color": "blue"}
    green = {"app": "demo", "teal.dev/color": "green"}
    apps.create_namespaced_deployment(namespace, deployment("demo-blue", blue))

    def blue_ready() -> bool:
        d = apps.read_namespaced_deployment_status("demo-blue", namespace)
        return (d.status.ready_replicas or 0) == 3

    wait_for(blue_ready, timeout=60, what="3 ready replicas of demo-blue")
    blue_ips = ready_pod_ips(core, namespace, "teal.dev/color=blue")
    assert len(blue_ips) == 3

    core.create_namespaced_service(
        namespace,
        k.V1Service(
            metadata=k.V1ObjectMeta(name="demo"),
            spec=k.V1ServiceSpec(selector=blue, ports=[k.V1ServicePort(port=80, target_port="http")]),
        ),
    )
    wait_for(
        lambda: ready_endpoint_ips(disc, namespace, "demo") == blue_ips,
        timeout=60,
        what="the Service's EndpointSlices to list the 3 blue pods",
    )

    apps.create_namespaced_deployment(namespace, deployment("demo-green", green))
    wait_for(lambda: len(ready_pod_ips(core, namespace, "teal.dev/color=green")) == 3, timeout=60, what="3 ready green pods")
    green_ips = ready_pod_ips(core, namespace, "teal.dev/color=green")
    assert not green_ips & blue_ips

    core.patch_namespaced_service("demo", namespace, {"spec": {"selector": green}})
    wait_for(
        lambda: ready_endpoint_ips(disc, namespace, "demo") == green_ips,
        timeout=60,
        what="the Service's endpoints to follow the selector to the green pods",
    )


def test_pod_not_ready_annotation(k8s, namespace: str) -> None:
    """kwok keeps pods annotated teal.dev/fake-not-ready Running but not Ready."""
    core = k.CoreV1Api(k8s)
    pod = k.V1Pod(
        metadata=k.V1ObjectMeta(name="slow", annotations={"teal.dev/fake-not-ready": "true"}),
        spec=k.V1PodSpec(containers=[k.V1Container(name="app", image="example.invalid/demo:1")]),
    )
    core.create_namespaced_pod(namespace, pod)

    def running() -> k.V1Pod | None:
        p = core.read_namespaced_pod("slow", namespace)
        return p if p.status.phase == "Running" and p.status.pod_ip else None

    p = wait_for(running, timeout=30, what="the annotated pod to run")
    assert {c.type: c.status for c in p.status.conditions}["Ready"] == "False"
    core.patch_namespaced_pod("slow", namespace, {"metadata": {"annotations": {"teal.dev/fake-not-ready": None}}})
    wait_for(
        lambda: ready_pod_ips(core, namespace, "") == {p.status.pod_ip},
        timeout=30,
        what="the pod to turn Ready once the annotation is gone",
    )


CRD_GROUP = "smoke.teal.dev"


def widget_crd() -> dict:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"widgets.{CRD_GROUP}"},
        "spec": {
            "group": CRD_GROUP,
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "listKind": "WidgetList"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "required": ["replicas"],
                                    "properties": {
                                        "replicas": {"type": "integer", "minimum": 0},
                                        "minReplicas": {"type": "integer", "minimum": 0},
                                    },
                                    "x-kubernetes-validations": [
                                        {
                                            "rule": "!has(self.minReplicas) || self.minReplicas <= self.replicas",
                                            "message": "minReplicas must not exceed replicas",
                                        }
                                    ],
                                },
                                "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                            },
                        }
                    },
                }
            ],
        },
    }


def test_crd_with_cel_validation(k8s, namespace: str) -> None:
    ext = k.ApiextensionsV1Api(k8s)
    custom = k.CustomObjectsApi(k8s)
    ext.create_custom_resource_definition(widget_crd())
    try:

        def established() -> bool:
            crd = ext.read_custom_resource_definition(f"widgets.{CRD_GROUP}")
            return any(c.type == "Established" and c.status == "True" for c in (crd.status.conditions or []))

        wait_for(established, timeout=30, what="the CRD to be Established")

        def widget(name: str, replicas: int, min_replicas: int) -> dict:
            return {
                "apiVersion": f"{CRD_GROUP}/v1",
                "kind": "Widget",
                "metadata": {"name": name},
                "spec": {"replicas": replicas, "minReplicas": min_replicas},
            }

        def create_good() -> dict:  # the new resource may take a moment to be served
            return custom.create_namespaced_custom_object(CRD_GROUP, "v1", namespace, "widgets", widget("good", 3, 1))

        created = wait_for(create_good, timeout=30, what="creating a valid Widget")
        assert created["spec"] == {"replicas": 3, "minReplicas": 1}

        with pytest.raises(ApiException) as err:
            custom.create_namespaced_custom_object(CRD_GROUP, "v1", namespace, "widgets", widget("bad", 1, 2))
        assert err.value.status == 422
        assert "minReplicas must not exceed replicas" in json.loads(err.value.body)["message"]

        # the structural schema is enforced too
        with pytest.raises(ApiException) as err:
            custom.create_namespaced_custom_object(CRD_GROUP, "v1", namespace, "widgets", widget("neg", -1, 0))
        assert err.value.status == 422
    finally:
        ext.delete_custom_resource_definition(f"widgets.{CRD_GROUP}")


def test_rbac_for_service_account_token(cluster: LocalCluster, k8s, namespace: str) -> None:
    core, rbac = k.CoreV1Api(k8s), k.RbacAuthorizationV1Api(k8s)
    core.create_namespaced_service_account(namespace, k.V1ServiceAccount(metadata=k.V1ObjectMeta(name="reader")))
    core.create_namespaced_secret(namespace, k.V1Secret(metadata=k.V1ObjectMeta(name="s1"), string_data={"a": "b"}))

    token = cluster.create_token(namespace, "reader", expiration_seconds=600)
    sa_client = cluster.api_client(token)
    try:
        who = k.AuthenticationV1Api(sa_client).create_self_subject_review(k.V1SelfSubjectReview())
        assert who.status.user_info.username == f"system:serviceaccount:{namespace}:reader"

        sa_core = k.CoreV1Api(sa_client)
        with pytest.raises(ApiException) as err:
            sa_core.list_namespaced_secret(namespace)
        assert err.value.status == 403

        rbac.create_namespaced_role(
            namespace,
            k.V1Role(
                metadata=k.V1ObjectMeta(name="secret-reader"),
                rules=[k.V1PolicyRule(api_groups=[""], resources=["secrets"], verbs=["get", "list"])],
            ),
        )
        rbac.create_namespaced_role_binding(
            namespace,
            k.V1RoleBinding(
                metadata=k.V1ObjectMeta(name="secret-reader"),
                role_ref=k.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="Role", name="secret-reader"),
                subjects=[k.RbacV1Subject(kind="ServiceAccount", name="reader", namespace=namespace)],
            ),
        )
        names = wait_for(
            lambda: [s.metadata.name for s in sa_core.list_namespaced_secret(namespace).items],
            timeout=30,
            what="the RoleBinding to grant listing secrets",
            ignore=(ApiException,),
        )
        assert "s1" in names
        # ...only in that namespace
        with pytest.raises(ApiException) as err:
            sa_core.list_namespaced_secret("default")
        assert err.value.status == 403
    finally:
        sa_client.close()


def _port_closed(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) != 0


def test_second_cluster_stops_cleanly(cluster: LocalCluster, tmp_path) -> None:
    """A separate one-node cluster starts, and stop() leaves no process, port or temp dir."""
    c = LocalCluster(tmp_path / "c2", nodes=1, keep_logs=False)
    with c:
        assert c.api("GET", "/api/v1/nodes")["items"][0]["metadata"]["name"] == "kwok-node-0"
        pids = dict(c.pids())
        assert set(pids) == {"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok"}
        etcd_port = int(c.etcd_url.rsplit(":", 1)[1])
        etcd_dir = c.etcd_dir
    c.stop()  # a second stop is harmless
    assert c.leftover_processes() == []
    assert _port_closed(c.apiserver_port) and _port_closed(etcd_port)
    assert not etcd_dir.exists()
    assert not (tmp_path / "c2" / "pki").exists()
    # the session cluster is untouched
    assert cluster.healthy()
    assert set(cluster.pids()) == set(pids)


def test_missing_binaries_are_named(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("TEAL_BIN_DIRS", str(tmp_path))
    with pytest.raises(BinariesNotFound) as err:
        find_binaries(build=False)
    assert "kube-apiserver" in str(err.value) and "kwok" in str(err.value)


def test_failing_component_is_reported_and_cleaned_up(tmp_path) -> None:
    """If a component dies during start(), the error carries its log and nothing is left running."""
    fake = tmp_path / "kube-apiserver"
    fake.write_text("#!/bin/sh\necho 'E0000 boom: this apiserver refuses to start' >&2\nexit 3\n")
    fake.chmod(0o755)
    binaries = dataclasses.replace(find_binaries(build=False), kube_apiserver=str(fake))
    c = LocalCluster(tmp_path / "broken", binaries=binaries, start_timeout=30)
    with pytest.raises(ClusterError) as err:
        c.start()
    assert "kube-apiserver exited (code 3)" in str(err.value)
    assert "this apiserver refuses to start" in str(err.value)
    assert c.leftover_processes() == []
    assert c.etcd_dir is not None and not c.etcd_dir.exists()
