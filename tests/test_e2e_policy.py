"""Release windows and freezes with the real operator on the local control plane. The module runs
its own operator with a test clock (TEAL_DEV_CLOCK_FILE: seconds added to the real time), so a
window opens when the test moves the clock, not hours later."""

from __future__ import annotations

import datetime as dt
import json
import signal
import uuid

import kubernetes
import pytest

from cli_helpers import teal
from operator_helpers import Env, OperatorProcess, rollout
from teal_devenv.wait import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]
G, V = "teal.dev", "v1alpha1"
ALWAYS = {"name": "always", "days": ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"], "start": "00:00", "end": "24:00"}


@pytest.fixture(scope="module")
def clock(cluster, teal_crds, no_operator, tmp_path_factory):
    """(operator, clock file): the operator of this module, at real time + the file's seconds."""
    d = tmp_path_factory.mktemp("policy-operator")
    clock_file = d / "clock"
    clock_file.write_text("0")
    op = OperatorProcess(cluster.kubeconfig, d / "operator.log", env={"TEAL_DEV_CLOCK_FILE": str(clock_file)}).start()
    try:
        yield op, clock_file
    finally:
        op.kill(signal.SIGTERM)


@pytest.fixture
def new_env(k8s):
    """A factory of Envs, each in a namespace of its own, deleted after the test."""
    made: list[str] = []
    core = kubernetes.client.CoreV1Api(k8s)

    def make(services: bool = True) -> Env:
        ns = f"pol-{uuid.uuid4().hex[:6]}"
        core.create_namespace({"metadata": {"name": ns}})
        made.append(ns)
        e = Env(k8s, ns)
        if services:
            e.create_service("app")
            e.create_service("app-preview")
        return e

    yield make
    for ns in made:
        core.delete_namespace(ns)


def test_held_outside_a_window_and_promoted_when_it_opens(new_env, clock):
    op, clock_file = clock
    env = new_env()
    env.create_rollout(rollout())
    env.wait_phase("Healthy", activeColor="blue", stableRevision="1")
    start = dt.datetime.now(dt.UTC) + dt.timedelta(hours=2)
    end = start + dt.timedelta(hours=1)
    policy = {
        "apiVersion": f"{G}/{V}",
        "kind": "ReleasePolicy",
        "metadata": {"name": "later"},
        "spec": {
            "timeZone": "UTC",
            "windows": [
                {
                    "name": "later",
                    "days": ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"],
                    "start": f"{start:%H:%M}",
                    "end": f"{end:%H:%M}",
                }
            ],
        },
    }
    env.custom.create_namespaced_custom_object(G, V, env.ns, "releasepolicies", policy)
    wait_for(
        lambda: (
            (env.custom.get_namespaced_custom_object(G, V, env.ns, "releasepolicies", "later").get("status") or {})
            .get("conditions", [{}])[0]
            .get("status")
            == "True"
        ),
        timeout=30,
        what="policy Ready",
    )
    env.set_image("v2")
    st = env.wait(
        lambda s: s.get("reason") == "HeldByPolicy" and "v2" not in str(s.get("activeColor")) and env.replicas("green") == 2,
        what="held before promotion",
    )
    assert (
        f"waits before promotion: held by window later (UTC): opens {start:%a %H:%M}, in 1h5" in st["message"]
        or f"opens {start:%a %H:%M}, in 2h" in st["message"]
    ), st["message"]
    assert {c["type"]: c["status"] for c in st["conditions"]} == {"Ready": "False", "Reconciling": "True", "Stalled": "False"}
    assert env.selector_color("app") == "blue"
    wait_for(lambda: "HeldByPolicy" in env.events(), timeout=30, what="the HeldByPolicy Event")
    for argv in (["get", "app"], ["list", "-o", "wide"]):  # kubectl teal shows the hold
        res = teal("-n", env.ns, *argv)
        assert res.code == 0 and "held by window later (UTC): opens" in res.out, res
    assert st["release"]["heldSince"]  # held time is recorded, and shown
    listed = teal("-n", env.ns, "list").out.splitlines()
    held = listed[1].split()[listed[0].split().index("HELD")]
    assert held != "-", listed
    clock_file.write_text(str((start - dt.datetime.now(dt.UTC)).total_seconds() + 5))
    # Wake it with an event: the timer it set before the clock moved fires at the real opening,
    # 2 h on. (A patch that changes nothing, like a field the schema prunes, sends no event.)
    env.custom.patch_namespaced_custom_object(G, V, env.ns, "rollouts", "app", {"metadata": {"annotations": {"test/poke": "1"}}})
    done = env.wait_phase("Healthy", activeColor="green", stableRevision="2", timeout=60)
    assert env.events().count("HeldByPolicy") == 1
    held_s = done["stats"]["heldSeconds"]  # the moved clock: about 2 h held, none of it release time
    assert held_s > 3600 and done["stats"]["lastReleaseSeconds"] < 600, done["stats"]
    clock_file.write_text("0")


def test_an_invalid_policy_is_reported_on_its_status_and_holds_nothing(new_env, clock):
    env = new_env()
    policy = {
        "apiVersion": f"{G}/{V}",
        "kind": "ReleasePolicy",
        "metadata": {"name": "typo"},
        "spec": {
            "timeZone": "Europe/Londn",
            "freeze": {"reason": "never applies"},
            "windows": [{"name": "w", "days": ["Mon"], "start": "09:00", "end": "10:00"}],
        },
    }
    env.custom.create_namespaced_custom_object(G, V, env.ns, "releasepolicies", policy)

    def status() -> dict:
        return env.custom.get_namespaced_custom_object(G, V, env.ns, "releasepolicies", "typo").get("status") or {}

    wait_for(lambda: status().get("conditions"), timeout=30, what="the policy's status")
    ready = next(c for c in status()["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "InvalidPolicy")
    assert ready["message"] == "timeZone 'Europe/Londn' is not a known IANA time zone (e.g. Europe/London)"
    env.create_rollout(rollout())
    env.wait_phase("Healthy", stableRevision="1")
    env.set_image("v2")
    env.wait_phase("Healthy", stableRevision="2", activeColor="green")


def test_a_freeze_holds_twenty_rollouts_across_namespaces_and_releases_them(new_env, clock):
    envs = [new_env(services=False) for _ in range(4)]
    rollouts = [(e, f"r{i}") for e in envs for i in range(5)]
    for e, r in rollouts:
        e.create_service(r)
        e.create_service(f"{r}-preview")
        e.create_rollout(rollout(r, replicas=1))
    for e, r in rollouts:
        e.wait_phase("Healthy", name=r, stableRevision="1", timeout=120)
    res = teal("freeze", "-A", "--reason", "incident 4711", "--until", "1d")
    assert res.code == 0 and "frozen: every Rollout of the cluster by " in res.out, res
    try:
        for e, r in rollouts:
            e.set_image("v2", name=r)
        for e, r in rollouts:
            st = e.wait(lambda s: s.get("reason") == "HeldByPolicy", name=r, what=f"{r} frozen")
            assert "(ClusterReleasePolicy teal-freeze): incident 4711; until" in st["message"], st["message"]
            assert st["message"].startswith("the new template waits: frozen by ")  # who: from SelfSubjectReview
            assert e.selector_color(r) == "blue" and e.replicas("green", name=r) is None
    finally:
        res = teal("unfreeze", "-A")
    assert res.code == 0 and res.out.strip() == "unfrozen: every Rollout of the cluster", res
    for e, r in rollouts:
        e.wait_phase("Healthy", name=r, stableRevision="2", activeColor="green", timeout=120)


def test_abort_and_fast_rollback_act_during_a_freeze(new_env, clock):
    env = new_env(services=False)
    env.two_releases()  # v1 on blue (warm), v2 live on green
    assert teal("-n", env.ns, "freeze", "app", "--reason", "incident 4712").code == 0
    assert json.loads(env.get()["metadata"]["annotations"]["teal.dev/freeze"])["reason"] == "incident 4712"
    env.set_image("v1")  # fast rollback to the warm colour: never held
    env.wait_phase("Healthy", activeColor="blue", timeout=60)
    assert "FastRollback" in env.events()
    # a release that started before the freeze: held before promotion, then aborted by a user
    assert teal("-n", env.ns, "unfreeze", "app").code == 0
    env.patch_spec({"strategy": {"blueGreen": {"autoPromote": False}}})
    env.set_image("v3")
    env.wait(lambda s: s.get("reason") == "AwaitingPromotion", what="v3 waits for promote")
    assert teal("-n", env.ns, "freeze", "--reason", "incident 4713").code == 0  # the namespace this time
    env.promote()
    env.wait(lambda s: s.get("reason") == "HeldByPolicy", what="promotion held by the freeze")
    assert env.selector_color("app") == "blue"
    env.abort()
    env.wait_phase("Aborted", activeColor="blue", timeout=60)
    assert env.selector_color("app") == "blue"
    assert teal("-n", env.ns, "unfreeze").code == 0


def test_a_rollout_that_excludes_a_policy_is_released_and_a_freeze_still_holds_it(new_env, clock):
    """spec.releasePolicy.exclude leaves a closed ReleasePolicy out (the release goes through),
    but not a freeze: teal-freeze holds the same Rollout until unfrozen."""
    env = new_env()
    closed = {
        "apiVersion": f"{G}/{V}",
        "kind": "ReleasePolicy",
        "metadata": {"name": "closed"},
        "spec": {"windows": [{"name": "never-now", "from": "2099-01-01T00:00", "until": "2099-01-02T00:00"}]},
    }
    env.custom.create_namespaced_custom_object(G, V, env.ns, "releasepolicies", closed)
    body = rollout()
    body["spec"]["releasePolicy"] = {"exclude": ["closed", "teal-freeze"]}
    env.create_rollout(body)
    env.wait_phase("Healthy", stableRevision="1")
    env.set_image("v2")
    env.wait_phase("Healthy", stableRevision="2", activeColor="green", timeout=60)
    res = teal("-n", env.ns, "freeze", "--reason", "incident 4711")
    assert res.code == 0, res
    env.set_image("v3")
    st = env.wait(lambda s: s.get("reason") == "HeldByPolicy", what="held by the freeze it tried to exclude")
    assert "frozen by" in st["message"] and "incident 4711" in st["message"], st["message"]
    assert teal("-n", env.ns, "unfreeze").code == 0
    env.wait_phase("Healthy", stableRevision="3", activeColor="blue", timeout=60)


def test_a_policy_that_selects_no_rollout_says_so_until_one_comes(new_env, clock):
    """A policy selecting nothing is reported on its status (RolloutsSelected=False, NoRolloutSelected),
    not refused: the Rollout it is meant for may come later; when it comes, and when it goes, the
    condition follows."""
    env = new_env()
    policy = {
        "apiVersion": f"{G}/{V}",
        "kind": "ReleasePolicy",
        "metadata": {"name": "frontend-hours"},
        "spec": {"rolloutSelector": {"matchLabels": {"tier": "frontend"}}, "windows": [ALWAYS]},
    }
    env.custom.create_namespaced_custom_object(G, V, env.ns, "releasepolicies", policy)

    def selected() -> tuple[str, str] | None:
        st = env.custom.get_namespaced_custom_object(G, V, env.ns, "releasepolicies", "frontend-hours").get("status") or {}
        c = next((c for c in st.get("conditions") or [] if c["type"] == "RolloutsSelected"), None)
        return (c["status"], c["reason"]) if c else None

    wait_for(lambda: selected() == ("False", "NoRolloutSelected"), timeout=30, what="NoRolloutSelected")
    env.create_rollout(rollout())  # no tier label: still nothing
    env.wait_phase("Healthy", stableRevision="1")
    assert selected() == ("False", "NoRolloutSelected")
    env.custom.patch_namespaced_custom_object(G, V, env.ns, "rollouts", "app", {"metadata": {"labels": {"tier": "frontend"}}})
    wait_for(lambda: selected() == ("True", "Selected"), timeout=30, what="Selected once a Rollout matches")
    env.custom.delete_namespaced_custom_object(G, V, env.ns, "rollouts", "app")
    wait_for(lambda: selected() == ("False", "NoRolloutSelected"), timeout=30, what="NoRolloutSelected once it is gone")
