"""kubectl-teal against real Rollouts in the local control plane.

No operator runs here: each test writes status through the status subresource to put a
Rollout in the state it needs (the way Teal would), runs a command, and checks exit
codes, output and what the command wrote.
"""

from __future__ import annotations

import re
import time

import pytest
import yaml

from cli_helpers import (
    healthy_status,
    progressing_status,
    rollout_manifest,
    teal,
    teal_subprocess,
    wait_line,
)
from teal.api import template_hash
from teal_devenv.wait import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("no_operator")]  # statuses written by hand


def ns_args(namespace: str) -> list[str]:
    return ["-n", namespace]


# ---------------------------------------------------------------- list / get


def test_list_shows_every_rollout(rollouts, namespace):
    rollouts.create(rollout_manifest("alpha"))
    rollouts.create(rollout_manifest("beta"))
    rollouts.set_status("alpha", healthy_status("blue", "3"))
    rollouts.set_status("beta", progressing_status(step=2, weights={"blue": 90, "green": 10}))

    r = teal("list", "-n", namespace)
    assert r.code == 0, r
    lines = r.out.splitlines()
    assert lines[0].split() == ["NAME", "PHASE", "ACTIVE", "PREVIEW", "STABLE", "CURRENT", "STEP", "WEIGHTS", "HELD", "AGE"]
    assert lines[1].split()[:6] == ["alpha", "Healthy", "blue", "-", "3", "3"]
    assert lines[2].split()[:8] == ["beta", "Progressing", "blue", "green", "1", "2", "2/0", "blue:90/green:10"]

    wide = teal("list", "-n", namespace, "-o", "wide")
    assert "MESSAGE" in wide.out and "revision 3 is live on blue" in wide.out
    names = teal("list", "-n", namespace, "-o", "name")
    assert names.out.split() == ["rollout.teal.dev/alpha", "rollout.teal.dev/beta"]
    everywhere = teal("list", "-A")
    assert everywhere.code == 0
    assert any(line.split()[:2] == [namespace, "alpha"] for line in everywhere.out.splitlines())


def test_list_empty_namespace(rollouts, namespace):
    r = teal("list", "-n", namespace)
    assert r.code == 0 and r.out == "" and f"No Rollouts found in namespace {namespace}" in r.err


def test_get_shows_the_tree(rollouts, namespace, k8s):
    ro = rollouts.create(
        rollout_manifest("shop", previewService="shop-preview", steps=[{"setWeight": 0}, {"pause": {}}, {"setWeight": 100}])
    )
    rollouts.service("shop-active", "shop", "blue")
    rollouts.service("shop-preview", "shop", "green")
    tmpl = ro["spec"]["template"]
    rollouts.colour_deployment(ro, "blue", tmpl, 1, replicas=2)
    green_tmpl = yaml.safe_load(yaml.safe_dump(tmpl))
    green_tmpl["spec"]["containers"][0]["image"] = "registry.example.com/demo:2"
    rollouts.colour_deployment(ro, "green", green_tmpl, 2, replicas=1)
    rollouts.set_status(
        "shop",
        progressing_status(
            step=2,
            phase="Paused",
            reason="AwaitingPromotion",
            message="revision 2 ready on green; waiting for promote",
            weights={"blue": 100, "green": 0},
            analysis=[
                {
                    "metric": "error-rate",
                    "phase": "prePromotion",
                    "color": "green",
                    "value": 0.002,
                    "verdict": "Successful",
                    "at": "2025-01-01T12:00:05Z",
                },
                {
                    "metric": "latency-p99",
                    "phase": "prePromotion",
                    "color": "green",
                    "value": 0.31,
                    "baseline": 0.3,
                    "verdict": "Successful",
                    "at": "2025-01-01T12:00:06Z",
                },
            ],
            conditions=[
                {
                    "type": "Ready",
                    "status": "False",
                    "reason": "AwaitingPromotion",
                    "message": "waiting for promote",
                    "lastTransitionTime": "2025-01-01T12:00:00Z",
                }
            ],
        ),
    )
    # kwok makes the pods Ready: wait until the Deployments say so
    from kubernetes import client

    apps = client.AppsV1Api(k8s)
    wait_for(
        lambda: (apps.read_namespaced_deployment("shop-blue", namespace).status.ready_replicas or 0) == 2,
        timeout=60,
        what="shop-blue ready",
    )
    wait_for(
        lambda: (apps.read_namespaced_deployment("shop-green", namespace).status.ready_replicas or 0) == 1,
        timeout=60,
        what="shop-green ready",
    )

    r = teal("get", "shop", "-n", namespace)
    assert r.code == 0, r
    out = r.out
    assert out.splitlines()[0] == f"Rollout {namespace}/shop"
    assert "Phase      Paused (AwaitingPromotion)" in out
    assert "revision 2 ready on green; waiting for promote" in out
    assert "current 2 (h2)" in out and "stable 1 (h1) on blue" in out
    assert "Step       2/3 pause until promoted" in out
    assert "Weights    blue 100%" in out and "green 0%" in out
    blue = next(line for line in out.splitlines() if "deployment/shop-blue" in line)
    assert "active, stable" in blue and "revision 1" in blue and "2/2 ready" in blue and "demo:1" in blue
    green = next(line for line in out.splitlines() if "deployment/shop-green" in line)
    assert "preview" in green and "revision 2" in green and "1/1 ready" in green and "demo:2" in green
    assert re.search(r"shop-active\s+active\s+(→|->) blue", out)
    assert re.search(r"shop-preview\s+preview\s+(→|->) green", out)
    assert "last 2 of 2 measurements" in out
    assert re.search(r"12:00:06\s+latency-p99\s+green\s+0.31 \(baseline 0.3\)\s+Successful", out)
    assert re.search(r"Ready\s+False\s+AwaitingPromotion", out)

    as_yaml = teal("get", "shop", "-n", namespace, "-o", "yaml")
    assert yaml.safe_load(as_yaml.out)["status"]["phase"] == "Paused"


def test_get_without_status_says_so_and_missing_is_exit_3(rollouts, namespace):
    rollouts.create(rollout_manifest("fresh"))
    r = teal("get", "fresh", "-n", namespace)
    assert r.code == 0 and "no status yet" in r.out
    assert "missing" in r.out  # no Deployments, no Service
    gone = teal("get", "nope", "-n", namespace)
    assert gone.code == 3 and 'Rollout "nope" not found' in gone.err


def test_get_watch_prints_updates(rollouts, namespace, cluster):
    rollouts.create(rollout_manifest("watched"))
    rollouts.set_status("watched", progressing_status(message="revision 2: waiting for green"))
    proc = teal_subprocess("--kubeconfig", cluster.kubeconfig, "get", "watched", "-n", namespace, "--watch", "--interval", "0.2")
    try:
        wait_line(proc, lambda line: "revision 2: waiting for green" in line, timeout=30)
        rollouts.set_status("watched", healthy_status("green", "2"))
        wait_line(proc, lambda line: line.startswith("├─ Phase      Healthy") or "Phase      Healthy" in line, timeout=30)
        wait_line(proc, lambda line: "revision 2 is live on green" in line, timeout=10)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        proc.stdout.close()
        proc.stderr.close()


# ---------------------------------------------------------------- promote


def test_promote_writes_revision_and_step(rollouts, namespace):
    rollouts.create(rollout_manifest("pro", steps=[{"setWeight": 0}, {"pause": {}}]))
    rollouts.set_status("pro", progressing_status(step=2, phase="Paused"))
    r = teal("promote", "pro", "-n", namespace)
    assert r.code == 0, r
    assert rollouts.get("pro")["status"]["promote"] == {"revision": "2", "step": 2, "full": False}

    r = teal("promote", "pro", "--full", "-n", namespace)
    assert r.code == 0, r
    assert rollouts.get("pro")["status"]["promote"] == {"revision": "2", "step": 2, "full": True}


def test_promote_without_step_and_refusals(rollouts, namespace):
    rollouts.create(rollout_manifest("pro2", autoPromote=False))
    rollouts.set_status("pro2", progressing_status(phase="Paused", reason="AwaitingPromotion"))
    r = teal("promote", "pro2", "-n", namespace)
    assert r.code == 0, r
    promote = rollouts.get("pro2")["status"]["promote"]
    assert promote["revision"] == "2" and promote["full"] is False and promote.get("step") is None

    rollouts.set_status("pro2", healthy_status("green", "2"))
    r = teal("promote", "pro2", "-n", namespace)
    assert r.code == 4 and "no release in progress" in r.err

    rollouts.set_status("pro2", progressing_status(phase="Aborted", rev="3", reason="AnalysisFailed"))
    r = teal("promote", "pro2", "-n", namespace)
    assert r.code == 4 and "retry" in r.err

    assert teal("promote", "nope", "-n", namespace).code == 3


# ---------------------------------------------------------------- abort / retry


def test_abort_then_retry(rollouts, namespace, cluster):
    rollouts.create(rollout_manifest("ab"))
    rollouts.set_status("ab", progressing_status(step=1))
    r = teal("abort", "ab", "-n", namespace)
    assert r.code == 0, r
    abort = rollouts.get("ab")["status"]["abort"]
    assert abort["revision"] == "2" and abort["reason"] == "AbortedByUser"
    assert re.fullmatch(r"aborted by \S+ with kubectl teal", abort["message"]), abort
    assert abort["message"] != "aborted by unknown user with kubectl teal"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", abort["at"])

    # retry only once Teal says Aborted
    r = teal("retry", "ab", "-n", namespace)
    assert r.code == 4 and "not Aborted" in r.err
    assert rollouts.get("ab")["status"]["abort"]["revision"] == "2"

    st = progressing_status(phase="Aborted", reason="AbortedByUser")
    st["abort"] = abort
    rollouts.set_status("ab", st)
    again = teal("abort", "ab", "-n", namespace)
    assert again.code == 0 and "already aborted" in again.out
    r = teal("retry", "ab", "-n", namespace)
    assert r.code == 0, r
    assert "abort" not in rollouts.get("ab")["status"]


def test_abort_needs_a_release(rollouts, namespace):
    rollouts.create(rollout_manifest("calm"))
    rollouts.set_status("calm", healthy_status())
    r = teal("abort", "calm", "-n", namespace)
    assert r.code == 4 and "no release in progress" in r.err
    assert "abort" not in rollouts.get("calm")["status"]


# ---------------------------------------------------------------- pause / resume


def test_pause_and_resume(rollouts, namespace):
    rollouts.create(rollout_manifest("pz"))
    assert teal("pause", "pz", "-n", namespace).code == 0
    assert rollouts.get("pz")["spec"]["paused"] is True
    again = teal("pause", "pz", "-n", namespace)
    assert again.code == 0 and "already paused" in again.out
    assert teal("resume", "pz", "-n", namespace).code == 0
    assert rollouts.get("pz")["spec"]["paused"] is False
    assert teal("resume", "nope", "-n", namespace).code == 3


# ---------------------------------------------------------------- undo


def _with_image(template, image):
    t = yaml.safe_load(yaml.safe_dump(template))
    t["spec"]["containers"][0]["image"] = image
    return t


def test_undo_goes_back_to_the_other_colour(rollouts, namespace):
    v1 = rollout_manifest("un")["spec"]["template"]
    v1["spec"]["containers"][0]["ports"] = [{"containerPort": 8080, "name": "http"}]
    v1["spec"]["containers"][0]["env"] = [{"name": "MODE", "value": "one"}]
    v2 = _with_image(v1, "registry.example.com/demo:2")
    m = rollout_manifest("un")
    m["spec"]["template"] = v2
    ro = rollouts.create(m)
    rollouts.colour_deployment(ro, "blue", v1, 1)
    rollouts.colour_deployment(ro, "green", v2, 2)
    rollouts.set_status("un", healthy_status("green", "2"))

    shown = teal("undo", "un", "-n", namespace, "--dry-run")
    assert shown.code == 0 and "dry run: nothing changed" in shown.out, shown
    assert "back to revision 1 (its template from deployment/un-blue)" in shown.out
    assert "images: registry.example.com/demo:1 (now: registry.example.com/demo:2)" in shown.out
    assert "-    image: registry.example.com/demo:2" in shown.out and "+    image: registry.example.com/demo:1" in shown.out
    refused = teal("undo", "un", "-n", namespace)  # no terminal to ask on, no --yes: nothing written
    assert refused.code == 4 and "--yes" in refused.err, refused
    assert rollouts.get("un")["spec"]["template"] == v2
    r = teal("undo", "un", "-n", namespace, "--yes")
    assert r.code == 0, r
    assert "revision 1" in r.out and "deployment/un-blue" in r.out
    template = rollouts.get("un")["spec"]["template"]
    # exactly the template of revision 1: no Teal labels, no apiserver defaults
    assert template == v1
    assert template_hash(template) == template_hash(v1)

    # the template is revision 1 again: undo --to-revision 1 has nothing to do
    r = teal("undo", "un", "--to-revision", "1", "-n", namespace)
    assert r.code == 0 and "already runs" in r.out
    r = teal("undo", "un", "--to-revision", "2", "-n", namespace, "-y")
    assert r.code == 0, r
    assert rollouts.get("un")["spec"]["template"] == v2
    r = teal("undo", "un", "--to-revision", "7", "-n", namespace)
    assert r.code == 3 and "revision 7" in r.err and "known revisions: 2, 1" in r.err


def test_undo_from_a_controller_revision(rollouts, namespace, k8s):
    from kubernetes import client

    v3 = _with_image(rollout_manifest("cr")["spec"]["template"], "registry.example.com/demo:3")
    ro = rollouts.create(rollout_manifest("cr"))
    client.AppsV1Api(k8s).create_namespaced_controller_revision(
        namespace,
        {
            "apiVersion": "apps/v1",
            "kind": "ControllerRevision",
            "metadata": {"name": "cr-3", "labels": {"teal.dev/rollout": "cr"}},
            "revision": 3,
            "data": {"template": {**v3, "metadata": {"labels": {**v3["metadata"]["labels"], "teal.dev/color": "blue"}}}},
        },
    )
    rollouts.set_status("cr", healthy_status("blue", "4"))
    r = teal("undo", "cr", "--to-revision", "3", "-n", namespace, "--yes")
    assert r.code == 0, r
    assert "controllerrevision/cr-3" in r.out
    assert rollouts.get("cr")["spec"]["template"] == v3
    assert ro["spec"]["template"] != v3


def test_undo_refusals(rollouts, namespace):
    rollouts.create(rollout_manifest("lone"))
    r = teal("undo", "lone", "-n", namespace)
    assert r.code == 4 and "no earlier revision" in r.err
    ref = rollout_manifest("gitops")
    del ref["spec"]["template"]
    ref["spec"]["workloadRef"] = {"name": "gitops-app"}
    rollouts.create(ref)
    r = teal("undo", "gitops", "-n", namespace)
    assert r.code == 4 and "deployment/gitops-app" in r.err


# ---------------------------------------------------------------- status


def test_status_exit_codes(rollouts, namespace):
    rollouts.create(rollout_manifest("st"))
    rollouts.set_status("st", healthy_status("blue", "1"))
    ok = teal("status", "st", "-n", namespace, "--timeout", "5s")
    assert ok.code == 0, ok
    assert "Healthy: revision 1 is live on blue" in ok.out

    rollouts.set_status(
        "st", progressing_status(phase="Aborted", reason="AnalysisFailed", message="revision 2 aborted: error-rate 0.2 > 0.01")
    )
    failed = teal("status", "st", "-n", namespace, "--timeout", "5s")
    assert failed.code == 1, failed
    assert "Aborted (AnalysisFailed): revision 2 aborted: error-rate 0.2 > 0.01" in failed.out

    rollouts.set_status(
        "st", progressing_status(phase="Degraded", reason="ServiceNotFound", message="Service st-active not found")
    )
    assert teal("status", "st", "-n", namespace, "--timeout", "5s").code == 1

    rollouts.set_status("st", progressing_status(step=1))
    t0 = time.monotonic()
    slow = teal("status", "st", "-n", namespace, "--timeout", "1s", "--interval", "0.2")
    assert slow.code == 2, slow
    assert time.monotonic() - t0 < 15
    assert "timed out after 1s" in slow.out

    # Healthy, but the spec changed since: not done until Teal has seen the new generation
    rollouts.set_status("st", healthy_status("blue", "1"))
    rollouts.patch_spec("st", {"replicas": 3})
    stale = teal("status", "st", "-n", namespace, "--timeout", "1s", "--interval", "0.2")
    assert stale.code == 2 and "waiting for Teal to see generation 2" in stale.out

    assert teal("status", "nope", "-n", namespace, "--timeout", "1s").code == 3
    assert teal("status", "st", "-n", namespace, "--timeout", "soon").code == 64


def test_status_follows_a_release_to_the_end(rollouts, namespace, cluster):
    rollouts.create(rollout_manifest("follow"))
    rollouts.set_status("follow", progressing_status(message="revision 2: waiting for green"))
    proc = teal_subprocess(
        "--kubeconfig", cluster.kubeconfig, "status", "follow", "-n", namespace, "--timeout", "60s", "--interval", "0.1"
    )
    try:
        first = wait_line(proc, lambda line: "waiting for green" in line, timeout=30)
        rollouts.set_status("follow", progressing_status(step=1, message="revision 2: step 1/1 setWeight 100"))
        second = wait_line(proc, lambda line: "setWeight 100" in line, timeout=30)
        rollouts.set_status("follow", healthy_status("green", "2"))
        last = wait_line(proc, lambda line: "Healthy" in line, timeout=30)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=10)
        proc.stdout.close()
        proc.stderr.close()
    assert re.fullmatch(r"\[\s*\d+s\] Progressing: revision 2: waiting for green", first)
    assert re.fullmatch(r"\[\s*\d+s\] Progressing step 1: revision 2: step 1/1 setWeight 100", second)
    assert re.fullmatch(r"\[\s*\d+s\] Healthy: revision 2 is live on green", last)


# ---------------------------------------------------------------- flags


def test_connection_flags(rollouts, namespace, cluster, tmp_path):
    rollouts.create(rollout_manifest("flags"))
    # --kubeconfig with a context whose namespace is ours: no -n needed
    cfg = yaml.safe_load(open(cluster.kubeconfig))
    cfg["contexts"].append({"name": "here", "context": {**cfg["contexts"][0]["context"], "namespace": namespace}})
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(cfg))
    r = teal("--kubeconfig", str(path), "--context", "here", "get", "flags")
    assert r.code == 0, r
    r = teal("get", "flags", "--kubeconfig", str(path), "--context", "here")  # flags after the command too
    assert r.code == 0, r
    assert teal("--kubeconfig", str(path), "--context", "nowhere", "list").code == 64
    assert teal("--kubeconfig", str(tmp_path / "missing"), "list").code == 64
    assert teal("frobnicate").code == 64
    assert teal().code == 64


def test_forbidden_is_exit_5(rollouts, namespace, cluster, k8s):
    from kubernetes import client

    core = client.CoreV1Api(k8s)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "nobody"}})
    token = cluster.create_token(namespace, "nobody")
    path = cluster.write_kubeconfig(f"{cluster.workdir}/nobody-{namespace}.yaml", token=token, user="nobody")
    rollouts.create(rollout_manifest("guarded"))
    r = teal("--kubeconfig", path, "get", "guarded", "-n", namespace)
    assert r.code == 5 and "forbidden" in r.err.lower()
