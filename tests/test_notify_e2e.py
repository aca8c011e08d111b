"""Release notifications with the real operator (a subprocess it can SIGKILL) on the local
control plane, delivered to a local HTTP receiver (aiohttp, on loopback).

One scenario checks: targets from a ConfigMap (a URL from a Secret), subscriptions on the
Namespace and on the Rollout; every release event arrives once and in order; a receiver that
fails twice then accepts gets it on the third try, counted in teal_notifications_total; a
target that refuses (404) is given up at once and one the configuration lacks is dropped, each
counted and said in an Event; the operator killed
while the receiver fails (the events recorded, nothing sent) delivers them after its restart;
the operator killed while a request is in flight (received, not answered) sends it again after
its restart with the same idempotency key, so the receiver keeps it once.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import signal
import socket
import threading
import time
import urllib.request

import kubernetes
import pytest
from aiohttp import web

from operator_helpers import Env, OperatorProcess, rollout
from teal import notify
from teal_devenv.wait import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]


class Receiver:
    """Answers POST /<target> from a per-target mode: "ok" (200), "fail" (503), "hold" (record,
    then keep the request open until released), or a script of codes to answer first."""

    def __init__(self) -> None:
        self.requests: list[dict] = []  # every request: target, key, event, body, code, at
        self.mode: dict[str, str] = {}
        self.script: dict[str, list[int]] = {}
        self.lock = threading.Lock()
        self.loop = asyncio.new_event_loop()
        self.release = asyncio.Event()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    async def handle(self, request: web.Request) -> web.Response:
        target = request.match_info["target"]
        body = await request.read()
        with self.lock:
            script = self.script.get(target) or []
            code = script.pop(0) if script else {"ok": 200, "fail": 503, "gone": 404, "hold": 0}[self.mode.get(target, "ok")]
            data = json.loads(body)
            self.requests.append(
                {
                    "target": target,
                    "key": request.headers.get("Idempotency-Key"),
                    "content_type": request.headers.get("Content-Type"),
                    "body": data,
                    "code": code,
                    "at": time.time(),
                }
            )
        if code == 0:  # received, never answered while held
            await self.release.wait()
            return web.Response(status=503)
        return web.Response(status=code)

    def start(self) -> int:
        self.thread.start()

        async def serve() -> int:
            app = web.Application()
            app.router.add_post("/{target}", self.handle)
            self.runner = web.AppRunner(app)
            await self.runner.setup()
            site = web.TCPSite(self.runner, "127.0.0.1", 0)
            await site.start()
            return self.runner.addresses[0][1]

        return asyncio.run_coroutine_threadsafe(serve(), self.loop).result(10)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.release.set)
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    def accepted(self, target: str) -> list[dict]:
        """The deliveries the target kept: the first 200 of each key, in arrival order."""
        seen, out = set(), []
        with self.lock:
            for r in self.requests:
                if r["target"] == target and r["code"] == 200 and r["key"] not in seen:
                    seen.add(r["key"])
                    out.append(r)
        return out

    def of(self, target: str, key: str | None = None) -> list[dict]:
        with self.lock:
            return [r for r in self.requests if r["target"] == target and (key is None or r["key"] == key)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metric(port: int, name: str, **labels: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(name + "{"):
            got = ",".join(sorted(line[line.index("{") + 1 : line.index("}")].split(",")))
            if got == want:
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def events(deliveries: list[dict]) -> list[tuple[str, str]]:
    return [(d["body"]["data"]["revision"], d["body"]["data"]["event"]) for d in deliveries]


def check_cloudevent(d: dict, namespace: str) -> None:
    ce = d["body"]
    assert d["content_type"].startswith("application/cloudevents+json")
    assert ce["specversion"] == "1.0" and ce["id"] == d["key"] and ce["source"] == f"/namespaces/{namespace}/rollouts/app"
    assert ce["type"] == f"dev.teal.rollout.{ce['data']['event']}"
    dt.datetime.fromisoformat(ce["time"].replace("Z", "+00:00"))  # RFC 3339
    uid, revision, run, event = d["key"].split("/")
    assert (revision, event.split(".")[0]) == (ce["data"]["revision"], ce["data"]["event"]) and run.isdigit()


def pending(env: Env) -> dict:
    return (env.status().get("notifications") or {}).get("pending") or {}


def setup_targets(env: Env, port: int) -> None:
    env.core.create_namespaced_secret(
        env.ns,
        kubernetes.client.V1Secret(
            metadata=kubernetes.client.V1ObjectMeta(name="teal-slack"),
            data={"url": base64.b64encode(f"http://127.0.0.1:{port}/slack".encode()).decode()},
        ),
    )
    config = {
        "targets": [
            {"name": "hook", "type": "cloudevents", "url": f"http://127.0.0.1:{port}/hook"},
            {"name": "slack", "type": "slack", "urlFrom": {"secretKeyRef": {"name": "teal-slack", "key": "url"}}},
            {"name": "broken", "type": "webhook", "url": f"http://127.0.0.1:{port}/broken"},
        ],
        "retry": {"attempts": 40, "initialDelaySeconds": 0.3, "factor": 2, "maxDelaySeconds": 1},
    }
    env.core.create_namespaced_config_map(
        env.ns,
        kubernetes.client.V1ConfigMap(
            metadata=kubernetes.client.V1ObjectMeta(name="notify"), data={"config.yaml": json.dumps(config)}
        ),
    )
    # every event of the namespace's Rollouts to hook; this Rollout adds slack for promotions
    # and a target that refuses (404) for starts
    env.core.patch_namespace(env.ns, {"metadata": {"annotations": {notify.ANNOTATION_PREFIX + "all": "hook"}}})


def test_notifications_arrive_once_in_order_with_retries_and_across_kills(
    cluster, k8s, teal_crds, namespace, no_operator, tmp_path
):
    env = Env(k8s, namespace)
    env.create_service("app")
    env.create_service("app-preview")
    receiver = Receiver()
    port = receiver.start()
    metrics_port = free_port()
    setup_targets(env, port)
    receiver.mode["broken"] = "gone"
    args = ["--namespace", namespace, "--notifications-config", f"{namespace}/notify", "--metrics-port", str(metrics_port)]
    operator = OperatorProcess(cluster.kubeconfig, tmp_path / "operator.log", extra_args=args).start()
    try:
        body = rollout()
        body["metadata"]["annotations"] = {
            notify.ANNOTATION_PREFIX + "promoted": "hook,slack",
            notify.ANNOTATION_PREFIX + "started": "hook,broken",
            notify.ANNOTATION_PREFIX + "switched": "hook,nosuch",  # a target the ConfigMap lacks
        }
        env.create_rollout(body)
        env.wait_phase("Healthy", stableRevision="1")
        # revision 1's are sent in the background after the status that records them: all out first
        wait_for(lambda: not pending(env) and len(receiver.accepted("hook")) == 2, timeout=30, what="revision 1's sent")
        # revision 2: the receiver fails the first two tries of its first notification
        receiver.script["hook"] = [503, 500]
        env.set_image("v2")
        env.wait_phase("Healthy", stableRevision="2")
        wait_for(lambda: not pending(env), timeout=30, what="all delivered and removed from status")
        hook = receiver.accepted("hook")
        assert events(hook) == [("1", "started"), ("1", "promoted"), ("2", "started"), ("2", "switched"), ("2", "promoted")]
        for d in hook:
            check_cloudevent(d, namespace)
        started2 = hook[2]["key"]
        assert [r["code"] for r in receiver.of("hook", started2)] == [503, 500, 200]  # delivered on the third try
        assert len(receiver.of("hook")) == 7  # and nothing else was sent twice
        assert [r["body"]["text"].split(": ")[1] for r in receiver.accepted("slack")] == ["promoted", "promoted"]
        assert "blocks" in receiver.accepted("slack")[0]["body"]
        assert len(receiver.of("broken")) == 2  # a 404 is final: one try per start
        assert metric(metrics_port, "teal_notifications_total", target="hook", result="sent") == 5
        assert metric(metrics_port, "teal_notifications_total", target="slack", result="sent") == 2
        assert metric(metrics_port, "teal_notifications_total", target="broken", result="failed") == 2
        assert metric(metrics_port, "teal_notifications_total", target="nosuch", result="dropped") == 1
        wait_for(lambda: env.events().count("NotificationFailed") == 2, timeout=20, what="the give-ups said in Events")
        assert env.events().count("NotificationDropped") == 1

        # revision 3: the receiver is down; the operator is killed with the events recorded, unsent
        receiver.mode["hook"] = "fail"
        env.set_image("v3")
        env.wait_phase("Healthy", stableRevision="3")
        wait_for(
            lambda: {e["event"] for e in pending(env).values() if e["revision"] == "3"} == {"started", "switched", "promoted"},
            timeout=20,
            what="revision 3's notifications pending in status",
        )
        wait_for(lambda: receiver.of("hook") and receiver.of("hook")[-1]["code"] == 503, timeout=20, what="a failed try")
        operator.kill(signal.SIGKILL)
        assert {e["event"] for e in pending(env).values() if e["revision"] == "3"} >= {"started", "switched", "promoted"}
        receiver.mode["hook"] = "ok"
        operator.start()
        wait_for(lambda: not pending(env), timeout=60, what="revision 3 delivered after the restart")
        assert events(receiver.accepted("hook"))[5:] == [("3", "started"), ("3", "switched"), ("3", "promoted")]

        # revision 4: the first request is received but not answered when the operator is killed
        receiver.mode["hook"] = "hold"
        env.set_image("v4")
        held = wait_for(
            lambda: receiver.of("hook")[-1] if receiver.of("hook")[-1]["code"] == 0 else None, timeout=30, what="held"
        )
        operator.kill(signal.SIGKILL)
        receiver.mode["hook"] = "ok"
        receiver.loop.call_soon_threadsafe(receiver.release.set)
        operator.start()
        env.wait_phase("Healthy", stableRevision="4", timeout=60)
        wait_for(lambda: not pending(env), timeout=60, what="revision 4 delivered after the restart")
        again = receiver.of("hook", held["key"])
        assert [r["code"] for r in again] == [0, 200]  # sent again after the kill, with the same key
        assert again[0]["body"]["id"] == again[1]["body"]["id"] == held["key"]
        hook = receiver.accepted("hook")
        assert events(hook)[8:] == [("4", "started"), ("4", "switched"), ("4", "promoted")]
        assert len({d["key"] for d in hook}) == len(hook) == 11  # each release event kept once
    finally:
        operator.kill(signal.SIGTERM)
        receiver.stop()
