"""Notification delivery latency: from the release event (the time Teal recorded it in the
Rollout's status, the entry's `at`) to its arrival at a receiver.

A real control plane, the operator as a subprocess with a ConfigMap of targets, and a local
CloudEvents receiver (aiohttp on loopback). Each round releases a new version (autoPromote);
its started, switched and promoted notifications are timed. Also printed: the status bytes a
pending entry costs while it waits.

    python bench/bench_notify.py [--rounds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import kubernetes
from aiohttp import web

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "operator"))
sys.path.insert(0, str(REPO / "devenv"))  # teal_devenv, when not installed

from stats import summary  # noqa: E402

from teal import notify  # noqa: E402
from teal_devenv.cluster import LocalCluster  # noqa: E402
from teal_devenv.crds import crd_documents, install_crds  # noqa: E402
from teal_devenv.operator import OperatorProcess  # noqa: E402
from teal_devenv.wait import wait_for  # noqa: E402

NS = "bench"


class Receiver:
    """Records (arrival time, CloudEvent) of every POST; answers 200."""

    def __init__(self) -> None:
        self.got: list[tuple[float, dict]] = []
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.got.append((time.time(), json.loads(body)))
        return web.Response(status=200)

    def __enter__(self) -> Receiver:
        self.thread.start()

        async def serve() -> int:
            app = web.Application()
            app.router.add_post("/ce", self.handle)
            self.runner = web.AppRunner(app)
            await self.runner.setup()
            await web.TCPSite(self.runner, "127.0.0.1", 0).start()
            return self.runner.addresses[0][1]

        self.port = asyncio.run_coroutine_threadsafe(serve(), self.loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def template(i: int) -> dict:
    return {"metadata": {"labels": {"app": "demo"}}, "spec": {"containers": [{"name": "app", "image": f"example.com/app:{i}"}]}}


def setup(api, port: int) -> None:
    core = kubernetes.client.CoreV1Api(api)
    core.create_namespace({"metadata": {"name": NS, "annotations": {notify.ANNOTATION_PREFIX + "all": "bench"}}})
    for svc in ("app", "app-preview"):
        core.create_namespaced_service(
            NS, {"metadata": {"name": svc}, "spec": {"selector": {"app": "demo"}, "ports": [{"port": 80}]}}
        )
    config = {"targets": [{"name": "bench", "type": "cloudevents", "url": f"http://127.0.0.1:{port}/ce"}]}
    core.create_namespaced_config_map(NS, {"metadata": {"name": "notify"}, "data": {"config.yaml": json.dumps(config)}})


def stored(data: dict) -> dict:
    """The entry as status.notifications.pending holds it (teal.notify.outbox)."""
    entry = {k: data[k] for k in ("event", "revision", "at", "message", "images")}
    entry.update({"seq": 0, "targets": ["bench"], **{k: data[k] for k in ("reason", "color") if data.get(k)}})
    return entry


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="teal-bench-notify-"))
    with contextlib.ExitStack() as stack:
        cluster = stack.enter_context(LocalCluster(work / "cluster"))
        receiver = stack.enter_context(Receiver())
        api = cluster.api_client()
        install_crds(api, crd_documents(sorted((REPO / "crds").glob("*.yaml"))))
        setup(api, receiver.port)
        custom = kubernetes.client.CustomObjectsApi(api)
        log = work / "operator.log"
        extra = ["--namespace", NS, "--notifications-config", f"{NS}/notify"]
        stack.enter_context(OperatorProcess(cluster.kubeconfig, log, extra, log_level="info"))

        def status() -> dict:
            return custom.get_namespaced_custom_object("teal.dev", "v1alpha1", NS, "rollouts", "app").get("status") or {}

        bg = {"activeServices": ["app"], "previewService": "app-preview", "scaleDownDelaySeconds": 0}
        spec = {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "demo"}},
            "template": template(1),
            "strategy": {"blueGreen": bg},
        }
        custom.create_namespaced_custom_object(
            "teal.dev",
            "v1alpha1",
            NS,
            "rollouts",
            {"apiVersion": "teal.dev/v1alpha1", "kind": "Rollout", "metadata": {"name": "app"}, "spec": spec},
        )
        wait_for(lambda: status().get("stableRevision") == "1", timeout=60, what="first release")
        entry_bytes: list[int] = []
        for i in range(2, args.rounds + 2):
            custom.patch_namespaced_custom_object(
                "teal.dev", "v1alpha1", NS, "rollouts", "app", {"spec": {"template": template(i)}}
            )
            wait_for(lambda: status().get("stableRevision") == str(i), timeout=60, what=f"release {i}")
            wait_for(
                lambda: sum(1 for _, ce in receiver.got if ce["data"]["revision"] == str(i)) == 3, timeout=30, what="3 events"
            )
            entry_bytes += [len(json.dumps({ce["id"]: stored(ce["data"])})) for _, ce in receiver.got[-3:]]
        by_event: dict[str, list[float]] = {}
        for arrived, ce in receiver.got:
            if ce["data"]["revision"] == "1":
                continue
            at = dt.datetime.fromisoformat(ce["time"].replace("Z", "+00:00")).timestamp()
            by_event.setdefault(ce["data"]["event"], []).append(arrived - at)
        keys = [ce["id"] for _, ce in receiver.got]
        print(summary("event recorded -> received, all", [v for vs in by_event.values() for v in vs]))
        for event, values in by_event.items():
            print(summary(f"  {event}", values))
        print(f"deliveries: {len(keys)} requests, {len(set(keys))} keys (duplicates: {len(keys) - len(set(keys))})")
        print(
            f"a pending entry in status while it waits: ~{sum(entry_bytes) / len(entry_bytes):.0f} bytes of JSON (removed once delivered)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
