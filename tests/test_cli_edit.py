"""kubectl teal set image / restart / version / completion and kubectl's global flags, against the
local control plane (no operator: statuses are written by hand, as in test_cli_commands.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cli_helpers import healthy_status, progressing_status, rollout_manifest, teal

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("no_operator")]


def test_set_image_patches_the_template(rollouts, namespace):
    m = rollout_manifest("img")
    m["spec"]["template"]["spec"]["containers"].append({"name": "sidecar", "image": "registry.example.com/proxy:1"})
    m["spec"]["template"]["spec"]["initContainers"] = [{"name": "init", "image": "registry.example.com/init:1"}]
    rollouts.create(m)

    r = teal("set", "image", "img", "app=registry.example.com/demo:2", "-n", namespace)
    assert r.code == 0, r
    assert "container app: registry.example.com/demo:1 -> registry.example.com/demo:2" in r.out
    pod = rollouts.get("img")["spec"]["template"]["spec"]
    assert [c["image"] for c in pod["containers"]] == ["registry.example.com/demo:2", "registry.example.com/proxy:1"]

    r = teal("-n", namespace, "set", "image", "img", "app=registry.example.com/demo:3", "sidecar=registry.example.com/proxy:2")
    assert r.code == 0, r
    pod = rollouts.get("img")["spec"]["template"]["spec"]
    assert [c["image"] for c in pod["containers"]] == ["registry.example.com/demo:3", "registry.example.com/proxy:2"]

    r = teal("set", "image", "img", "--all=registry.example.com/all:9", "-n", namespace)
    assert r.code == 0, r
    pod = rollouts.get("img")["spec"]["template"]["spec"]
    assert {c["image"] for c in pod["containers"] + pod["initContainers"]} == {"registry.example.com/all:9"}

    again = teal("set", "image", "img", "--all=registry.example.com/all:9", "-n", namespace)
    assert again.code == 0 and "nothing changed" in again.out
    unknown = teal("set", "image", "img", "nope=x:1", "-n", namespace)
    assert unknown.code == 3 and "no container named nope" in unknown.err and "app, sidecar, init" in unknown.err
    assert teal("set", "image", "img", "app", "-n", namespace).code == 64  # not CONTAINER=IMAGE
    assert teal("set", "image", "img", "-n", namespace).code == 64  # neither pairs nor --all
    assert teal("set", "image", "missing", "app=x:1", "-n", namespace).code == 3


def test_set_image_refuses_a_workload_ref(rollouts, namespace):
    ref = rollout_manifest("gitops")
    del ref["spec"]["template"]
    ref["spec"]["workloadRef"] = {"name": "gitops-app"}
    rollouts.create(ref)
    r = teal("set", "image", "gitops", "app=x:2", "-n", namespace)
    assert r.code == 4 and "deployment/gitops-app" in r.err and "kubectl set image deployment/gitops-app" in r.err


def test_restart_asks_the_operator_by_annotation(rollouts, namespace):
    rollouts.create(rollout_manifest("rs"))
    refused = teal("restart", "rs", "-n", namespace)
    assert refused.code == 4 and "no stable colour" in refused.err
    rollouts.set_status("rs", progressing_status())
    busy = teal("restart", "rs", "-n", namespace)
    assert busy.code == 4 and "release in progress" in busy.err
    rollouts.set_status("rs", healthy_status("blue", "1"))
    r = teal("restart", "rs", "-n", namespace)
    assert r.code == 0, r
    at = rollouts.get("rs")["metadata"]["annotations"]["teal.dev/restart-at"]
    assert at in r.out and "deployment/rs-blue" in r.out


def test_version(rollouts, namespace, k8s, helm, chart_dir, cluster):
    client_only = teal("version", "--client")
    assert client_only.code == 0 and client_only.out.startswith("Client:   kubectl-teal 0.1.0 ")
    # the operator's Deployment as the chart renders it (labels and image), in the test's namespace
    rendered = subprocess.run(
        [helm, "template", "teal", str(chart_dir), "-n", namespace], capture_output=True, text=True, check=True
    ).stdout
    dep = next(d for d in yaml.safe_load_all(rendered) if d and d.get("kind") == "Deployment")
    from kubernetes import client

    client.AppsV1Api(k8s).create_namespaced_deployment(namespace, dep)
    r = teal("version", "-n", namespace, "-o", "json")
    assert r.code == 0, r
    ops = [op for op in json.loads(r.out)["operators"] if op["namespace"] == namespace]
    assert ops == [
        {
            "namespace": namespace,
            "name": "teal",
            "version": "0.1.0",
            "image": "ghcr.io/teal-dev/teal:0.1.0",
            "ready": ops[0]["ready"],
        }
    ]
    text = teal("version", "-n", namespace)
    assert f"image ghcr.io/teal-dev/teal:0.1.0  deployment {namespace}/teal" in text.out


def test_global_flags_as_kubectl(rollouts, namespace, cluster, tmp_path):
    rollouts.create(rollout_manifest("gf"))
    rollouts.set_status("gf", healthy_status())
    assert teal("get", "gf", "-n", namespace, "--request-timeout", "30s").code == 0
    assert teal("--request-timeout=1m", "get", "gf", "-n", namespace).code == 0
    assert teal("get", "gf", "-n", namespace, "--request-timeout", "0", "-v", "6").code == 0
    assert teal("get", "gf", "-n", namespace, "--request-timeout", "soon").code == 64
    # --as: the apiserver sees another user (who may not read Rollouts)
    r = teal("get", "gf", "-n", namespace, "--as", "nobody@example.com", "--as-group", "team-a", "--as-group", "team-b")
    assert r.code == 5 and "nobody@example.com" in r.err, r
    # --cluster/--user: a context that points elsewhere, overridden by the kubeconfig's real entries
    cfg = yaml.safe_load(Path(cluster.kubeconfig).read_text())
    real_ctx = cfg["contexts"][0]["context"]
    cfg["clusters"].append({"name": "nowhere", "cluster": {"server": "https://127.0.0.1:1"}})
    cfg["users"].append({"name": "nobody", "user": {"token": "wrong"}})
    cfg["contexts"] = [{"name": "broken", "context": {"cluster": "nowhere", "user": "nobody", "namespace": namespace}}]
    cfg["current-context"] = "broken"
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(cfg))
    assert teal("--kubeconfig", str(path), "--request-timeout", "2s", "get", "gf").code == 5
    fixed = teal("--kubeconfig", str(path), "get", "gf", "--cluster", real_ctx["cluster"], "--user", real_ctx["user"])
    assert fixed.code == 0, fixed
    assert teal("--kubeconfig", str(path), "get", "gf", "--cluster", "unknown").code == 64
    # -A before the command, -o after it
    everywhere = teal("-A", "list", "-o", "name")
    assert "rollout.teal.dev/gf" in everywhere.out


def _env(cluster) -> dict[str, str]:
    bindir = str(Path(sys.executable).parent)
    return {**os.environ, "KUBECONFIG": cluster.kubeconfig, "PATH": bindir + os.pathsep + os.environ["PATH"]}


def test_completion_through_kubectl(rollouts, namespace, cluster, kubectl):
    rollouts.create(rollout_manifest("complete-me"))
    env = _env(cluster)

    def complete(*words: str) -> list[str]:
        out = subprocess.run([kubectl, "__complete", "teal", *words], env=env, capture_output=True, text=True, timeout=60)
        return out.stdout.splitlines()

    commands = complete("")
    assert {"get", "list", "promote", "set", "restart", "undo", "version", "completion"} <= {c.split("\t")[0] for c in commands}
    assert commands[-1] == ":4"  # no file names
    assert [c.split("\t")[0] for c in complete("-n", namespace, "get", "")][:-1] == ["complete-me"]
    assert "--watch" in {c.split("\t")[0] for c in complete("get", "--w")}
    assert "image" in {c.split("\t")[0] for c in complete("set", "")}


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_scripts(shell):
    r = teal("completion", shell)
    assert r.code == 0 and "_KUBECTL_TEAL_COMPLETE" in r.out
    if shell == "bash":
        subprocess.run(["bash", "-n"], input=r.out, text=True, check=True)  # it parses
