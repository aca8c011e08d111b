"""Release notifications, pure parts: the outbox's detection (against the core's own Events, over
scripted and random histories of the simulated world), the formats, the configuration, and
delivery with backoff against a real local HTTP receiver (aiohttp)."""

from __future__ import annotations

import asyncio
import collections
import copy
import json

import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from sim import World, rollout_spec
from teal import core, notify
from test_core_properties import apply_op, configs, ops

UID = "0b7c6a52-7d1e-4c5e-9a43-9d8f7f1c2e01"
ALL = {f"{notify.ANNOTATION_PREFIX}all": "hook"}
BODY = {
    "metadata": {"name": "app", "namespace": "shop", "uid": UID, "annotations": ALL},
    "spec": {"template": {"spec": {"containers": [{"name": "app", "image": "registry.example.com/app:1.4.2"}]}}},
}
# what the core's Events say, by notification event
CORE_EVENTS = {
    "started": {"FirstRelease", "ReleaseStarted", "FastRollback", "Retry"},
    "switched": {"Switched"},
    "promoted": {"Promoted"},
    "aborted/reverted": {"Aborted", "RolledBack"},
}


class Outboxed(World):
    """The simulated world with the controller's outbox hook, and a sender that delivers each
    pending entry at once (it removes the entry, as the real one does once delivered)."""

    def __init__(self, *a, body=BODY, **kw):
        super().__init__(*a, **kw)
        self.body = body
        self.ticks_seen: list[tuple[list[core.Event], list[notify.Notice]]] = []
        self.delivered: list[tuple[str, dict]] = []

    def tick(self, seconds: float = 1.0) -> core.Plan:
        old = copy.deepcopy(self.status)
        plan = super().tick(seconds)
        notices = notify.detect(old, plan.status)
        self.ticks_seen.append((plan.events, notices))
        self.status = notify.outbox(old, plan.status, self.body, self.now)
        for key, entry in notify.pending_entries(self.status):
            self.delivered.append((key, dict(entry)))
        self.status.get("notifications", {}).pop("pending", None)
        plan.status = self.status
        return plan

    def sent(self) -> list[str]:
        return [e["event"] for _, e in self.delivered]


def healthy(**bg) -> Outboxed:
    w = Outboxed(rollout_spec(**bg))
    w.until(lambda w: w.status.get("phase") == "Healthy")
    return w


def test_a_release_notifies_started_switched_promoted_once_each():
    w = healthy()
    assert w.sent() == ["started", "promoted"]  # the first release has no switch
    w.set_image("v2")
    w.until(lambda w: w.status.get("stableRevision") == "2")
    w.run(40)  # scale-down, resyncs: nothing more
    assert w.sent() == ["started", "promoted", "started", "switched", "promoted"]
    keys = [k for k, _ in w.delivered]
    assert len(set(keys)) == len(keys)
    run = w.delivered[2][0].split("/")[2]
    assert keys[2:] == [f"{UID}/2/{run}/started", f"{UID}/2/{run}/switched", f"{UID}/2/{run}/promoted"]
    entry = w.delivered[4][1]
    assert entry["revision"] == "2" and entry["color"] == "green" and entry["targets"] == ["hook"]
    assert entry["images"] == ["registry.example.com/app:1.4.2"]
    assert entry["message"].startswith("revision 2 is live on green")


def test_no_op_reconciles_record_nothing():
    w = healthy()
    before = w.status
    plan = core.decide(core_spec(w), before, w.observe(), w.now)
    assert notify.detect(before, plan.status) == []
    assert notify.outbox(before, plan.status, BODY, w.now) == plan.status


def core_spec(w: World):
    from teal.api import parse_spec

    return parse_spec(w.spec)


def test_manual_promotion_abort_retry_and_analysis_failure():
    w = healthy(autoPromote=False)
    w.set_image("v2")
    w.until(lambda w: w.status.get("reason") == "AwaitingPromotion")
    w.run(5)
    w.status["abort"] = {"revision": "2", "reason": "AbortedByUser", "message": "by a test"}
    w.run(2)
    del w.status["abort"]  # retry: a new run of the same revision
    w.until(lambda w: w.status.get("reason") == "AwaitingPromotion")
    assert w.sent()[2:] == ["started", "awaiting-promotion", "aborted", "started", "awaiting-promotion"]
    runs = [k.split("/")[2] for k, _ in w.delivered[2:]]
    assert runs[0] == runs[1] == runs[2] != runs[3] == runs[4]  # the retry is a new run
    aborted = w.delivered[4][1]
    assert aborted["reason"] == "AbortedByUser" and "by a test" in aborted["message"]


def test_analysis_failure_before_and_after_the_switch():
    metrics = [{"name": "error-rate", "query": "x"}]
    w = healthy()
    w.spec["analysis"] = {"prePromotion": ["error-rate"], "metrics": metrics}
    w.set_image("v2")
    w.until(lambda w: (w.status.get("release") or {}).get("analysisKey"))
    key = w.status["release"]["analysisKey"]
    w.analysis = core.AnalysisRun(key=key, verdict="Failed", message="error-rate 0.2918 > max 0.05")
    w.run(2)
    assert w.sent()[2:] == ["started", "analysis-failed", "aborted"]
    assert "error-rate 0.2918 > max 0.05" in w.delivered[3][1]["message"]
    assert w.delivered[3][1]["reason"] == "AnalysisFailed"

    w2 = healthy()
    w2.spec["analysis"] = {"postPromotion": ["error-rate"], "metrics": metrics}
    w2.set_image("v2")
    w2.until(lambda w: (w.status.get("release") or {}).get("switchedAt") and w.status["release"].get("analysisKey"))
    w2.analysis = core.AnalysisRun(key=w2.status["release"]["analysisKey"], verdict="Failed", message="bad: 0.3 > 0.01")
    w2.run(2)
    assert w2.sent()[2:] == ["started", "switched", "analysis-failed", "reverted"]
    assert w2.services["app"] == "blue"


def test_fast_rollback_and_rollback_after_the_switch():
    w = healthy(scaleDownDelaySeconds=300)
    w.set_image("v2")
    w.until(lambda w: w.status.get("stableRevision") == "2")
    w.set_image("v1")  # the warm blue still runs v1: a fast rollback
    w.until(lambda w: w.status.get("stableRevision") == "3")
    assert w.sent()[5:] == ["started", "switched", "promoted"]
    assert "fast rollback" in w.delivered[5][1]["message"]


def test_step_pauses_awaiting_promotion_once_per_step():
    w = healthy(
        trafficRouting={"gatewayAPI": {"httpRoute": "app"}},
        steps=[{"setWeight": 20}, {"pause": {}}, {"setWeight": 50}, {"pause": {}}],
    )
    w.set_image("v2")
    for _ in range(2):
        w.until(lambda w: w.status.get("reason") == "PausedAtStep")
        w.run(3)
        w.status["promote"] = {"revision": "2", "step": w.status.get("currentStep")}
        w.tick()
    w.until(lambda w: w.status.get("stableRevision") == "2")
    assert w.sent()[2:] == ["started", "awaiting-promotion", "awaiting-promotion", "switched", "promoted"]
    keys = [k for k, _ in w.delivered[3:5]]
    assert keys[0].endswith("awaiting-promotion.step2") and keys[1].endswith("awaiting-promotion.step4"), keys


@settings(max_examples=150, deadline=None)
@given(configs(), st.lists(ops, max_size=40))
def test_notices_agree_with_the_cores_events(spec, history):
    """Over random histories: each decision's notices are exactly what its Events say, and a
    key is recorded once (awaiting-promotion may be seen again after the release went back)."""
    w = Outboxed(spec)
    for op, arg in history:
        apply_op(w, op, arg)
    w.run(5, 60)
    for events, notices in w.ticks_seen:
        reasons = collections.Counter(e.reason for e in events)
        said = collections.Counter(n.event for n in notices)
        for name, core_reasons in CORE_EVENTS.items():
            ours = sum(said[e] for e in name.split("/"))
            assert ours == sum(reasons[r] for r in core_reasons), (name, events, notices)
        analysis = [
            e for e in events if e.reason == "Aborted" and ("AnalysisFailed" in e.message or "AnalysisError" in e.message)
        ]
        assert said["analysis-failed"] == len(analysis), (events, notices)
    keys = collections.Counter(k for k, e in w.delivered if e["event"] != "awaiting-promotion")
    assert all(n == 1 for n in keys.values()), keys


def test_subscriptions_rollout_overrides_namespace():
    ns = {f"{notify.ANNOTATION_PREFIX}all": "ops", f"{notify.ANNOTATION_PREFIX}promoted": "ops,slack"}
    ro = {f"{notify.ANNOTATION_PREFIX}aborted": "pager", f"{notify.ANNOTATION_PREFIX}started": ""}
    subs = notify.subscriptions(ro, ns)
    assert subs["aborted"] == ["pager"]
    assert "started" not in subs  # turned off on the Rollout
    assert subs["promoted"] == ["ops", "slack"] and subs["switched"] == ["ops"]
    assert notify.subscriptions(None, None) == {}


def test_nothing_recorded_without_a_subscription_and_the_pending_map_is_bounded():
    w = healthy()
    old = w.status
    w.set_image("v2")
    plan = core.decide(core_spec(w), old, w.observe(), w.now)
    quiet = {**BODY, "metadata": {**BODY["metadata"], "annotations": {}}}
    assert notify.detect(old, plan.status) and not notify.pending_entries(notify.outbox(old, plan.status, quiet, w.now))
    full = {"notifications": {"pending": {f"k{i}": {"event": "started", "at": f"2025-12-31T00:00:{i:02d}Z"} for i in range(60)}}}
    out = notify.outbox({**old, **full}, {**plan.status, **full}, BODY, w.now)
    pending = out["notifications"]["pending"]
    assert len(pending) == notify.MAX_PENDING and "k0" not in pending and any(k.endswith("/started") for k in pending)


# ---------------------------------------------------------------- formats


def message(event: str = "reverted") -> notify.Message:
    entry = {
        "event": event,
        "revision": "3",
        "at": "2026-12-01T20:00:00.000000Z",
        "seq": 0,
        "targets": ["t"],
        "message": "revision 3 aborted: postPromotion analysis failed: error-rate 0.2918 > max 0.05 <b>",
        "images": ["registry.example.com/checkout:1.4.3"],
        "reason": "AnalysisFailed",
        "color": "blue",
    }
    return notify.Message(f"{UID}/3/1764619200000/{event}", "shop", "checkout", entry)


def target(kind: str, **kw) -> notify.Target:
    return notify.Target("t", kind, "http://127.0.0.1:1/x", **kw)


def test_cloudevents_structured_mode_has_the_required_attributes():
    headers, body = notify.payload(target("cloudevents"), message())
    assert headers["Content-Type"].startswith("application/cloudevents+json")
    assert headers["Idempotency-Key"] == body["id"] == message().key
    for attr in ("specversion", "id", "source", "type"):  # REQUIRED by CloudEvents 1.0
        assert isinstance(body[attr], str) and body[attr]
    assert body["specversion"] == "1.0"
    assert body["type"] == "dev.teal.rollout.reverted"
    assert body["source"] == "/namespaces/shop/rollouts/checkout"
    assert body["time"] == "2026-12-01T20:00:00.000000Z" and body["datacontenttype"] == "application/json"
    assert body["data"]["revision"] == "3" and body["data"]["images"] == ["registry.example.com/checkout:1.4.3"]
    json.dumps(body)


def test_webhook_slack_and_teams_shapes():
    _, hook = notify.payload(target("webhook"), message())
    assert hook["key"] == message().key and hook["event"] == "reverted" and hook["rollout"] == "checkout"
    assert hook["text"] == "shop/checkout: reverted: " + message().entry["message"]
    _, s = notify.payload(target("slack", template="*{rollout}* {event} ({revision}, {image}): {message}"), message())
    assert s["text"].startswith("*checkout* reverted (3, registry.example.com/checkout:1.4.3): revision 3")
    assert s["blocks"][0]["type"] == "section" and s["blocks"][0]["text"]["type"] == "mrkdwn"
    assert s["blocks"][0]["text"]["text"].endswith("&lt;b&gt;")  # Slack's escaping
    _, t = notify.payload(target("teams"), message())
    att = t["attachments"][0]
    assert t["type"] == "message" and att["contentType"] == "application/vnd.microsoft.card.adaptive"
    assert att["content"]["type"] == "AdaptiveCard" and att["content"]["body"][0]["color"] == "Attention"
    facts = {f["title"]: f["value"] for f in att["content"]["body"][2]["facts"]}
    assert facts["Rollout"] == "shop/checkout" and facts["Reason"] == "AnalysisFailed"
    _, mc = notify.payload(target("teams", card="messageCard"), message("promoted"))
    assert mc["@type"] == "MessageCard" and mc["themeColor"] == "2EB886" and mc["sections"][0]["facts"]


def test_templates_take_only_whitelisted_placeholders():
    for bad in ("{message.__class__}", "{spec}", "{message[0]}", "{message!r}", "{message:{rollout}}", "{"):
        with pytest.raises(notify.ConfigError):
            notify.check_template(bad)
    assert notify.render("{namespace}/{rollout} r{revision}: {key}", message()).startswith(f"shop/checkout r3: {UID}/")


def test_config_parsing():
    config = notify.parse_config(
        """
targets:
  - {name: hook, type: cloudevents, url: "http://127.0.0.1:9/ce", headers: {X-Team: payments}}
  - {name: slack, type: slack, urlFrom: {secretKeyRef: {name: teal-slack, key: url}}, template: "{rollout}: {message}"}
  - {name: bad-kind, type: email, url: "http://x"}
  - {name: bad-template, url: "http://x", template: "{oops}"}
  - {name: no-url}
retry: {attempts: 3, initialDelaySeconds: 0.5, factor: 2}
"""
    )
    assert set(config.targets) == {"hook", "slack"}
    assert config.targets["slack"].secret == ("teal-slack", "url") and config.targets["hook"].headers == (("X-Team", "payments"),)
    assert len(config.errors) == 3 and any("email" in e for e in config.errors)
    assert config.retry == notify.Retry(attempts=3, initial_delay=0.5, factor=2.0, max_delay=60.0)


def test_backoff_is_bounded():
    r = notify.Retry()  # the default: 5 tries over about 80 s of waiting
    assert [r.delay(i) for i in range(1, 5)] == [2.0, 6.0, 18.0, 54.0]
    assert 60 <= r.total() <= 120
    capped = notify.Retry(attempts=10, initial_delay=1, factor=10, max_delay=30)
    assert max(capped.delay(i) for i in range(1, 10)) == 30 and capped.total() <= 9 * 30


# ---------------------------------------------------------------- delivery against a real HTTP receiver


class Receiver:
    """An aiohttp server on loopback that answers from a script of statuses (then 200)."""

    def __init__(self, script: list[int] | None = None, retry_after: str | None = None):
        self.script = list(script or [])
        self.retry_after = retry_after
        self.requests: list[tuple[dict, bytes, int]] = []

    async def handle(self, request: web.Request) -> web.Response:
        code = self.script.pop(0) if self.script else 200
        self.requests.append((dict(request.headers), await request.read(), code))
        headers = {"Retry-After": self.retry_after} if self.retry_after and code >= 400 else {}
        return web.Response(status=code, headers=headers)

    async def __aenter__(self) -> str:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = self.runner.addresses[0][1]
        return f"http://127.0.0.1:{port}/hook"

    async def __aexit__(self, *exc: object) -> None:
        await self.runner.cleanup()


async def test_delivery_fails_twice_then_is_accepted_on_the_third_try():
    waits: list[float] = []

    async def sleep(s: float) -> None:
        waits.append(s)

    poster = notify.AiohttpPoster()
    headers, body = notify.payload(target("webhook"), message())
    try:
        receiver = Receiver([503, 500], retry_after="5")
        async with receiver as url:
            out = await notify.deliver(poster, url, headers, json.dumps(body).encode(), notify.Retry(), 5.0, sleep=sleep)
        assert out == notify.Outcome("sent", 3)
        assert [c for _, _, c in receiver.requests] == [503, 500, 200]
        assert {h["Idempotency-Key"] for h, _, _ in receiver.requests} == {message().key}
        assert waits == [5.0, 6.0]  # Retry-After (5 s) over the first backoff (2 s), then the backoff

        gone = Receiver([404])
        async with gone as url:
            out = await notify.deliver(poster, url, headers, b"{}", notify.Retry(), 5.0, sleep=sleep)
        assert out.result == "failed" and out.attempts == 1 and "404" in out.detail  # final: not retried

        down = Receiver([500] * 10)
        async with down as url:
            out = await notify.deliver(poster, url, headers, b"{}", notify.Retry(attempts=4), 5.0, sleep=sleep)
        assert out == notify.Outcome("failed", 4, "HTTP 500") and len(down.requests) == 4
    finally:
        await poster.aclose()
    out = await notify.deliver(poster, "http://127.0.0.1:1/closed", headers, b"{}", notify.Retry(attempts=2), 2.0, sleep=sleep)
    assert out.result == "failed" and out.attempts == 2 and "ConnectionError" in out.detail
    await poster.aclose()
    allowed = iter([True, False])
    async with Receiver([503]) as url:
        out = await notify.deliver(poster, url, headers, b"{}", notify.Retry(), 5.0, allowed=lambda: next(allowed), sleep=sleep)
    assert out.result == "abandoned" and out.attempts == 1  # this replica stopped leading: the next leader sends it
    await poster.aclose()
    await asyncio.sleep(0)


class FakeKube:
    """Just what the sender asks of teal.kube.Kube here: the ConfigMap, status patches, Events
    (the real ones are in tests/test_notify_e2e.py)."""

    def __init__(self, config: str):
        self.config = config
        self.patches: list[dict] = []
        self.events: list[core.Event] = []
        self.client = self

    def get(self, res, namespace, name):
        return {"data": {notify.CONFIG_KEY: self.config}}

    def items(self, res, **kw):
        return []

    def patch_status(self, res, namespace, name, patch):
        self.patches.append(patch)
        return {}

    def post_event(self, body, event):
        self.events.append(event)


async def test_a_replica_that_stops_acting_leaves_the_entries_for_the_next_one():
    async def call(fn, *a, **kw):
        return fn(*a, **kw)

    acting = {"shop": True}
    receiver = Receiver([503] * 3)
    async with receiver as url:
        kube = FakeKube(
            json.dumps({"targets": [{"name": "hook", "url": url}], "retry": {"attempts": 10, "initialDelaySeconds": 0.05}})
        )
        sender = notify.Notifier(kube, call, "teal-system/notify", lambda ns: acting[ns])
        w = healthy()
        entries = {k: e for k, e in w.delivered}  # revision 1's started and promoted, as recorded
        status = {**w.status, "notifications": {"pending": entries}}
        sender.offer(BODY, status)
        await asyncio.sleep(0.08)  # the first try failed
        acting["shop"] = False  # another replica acts for the namespace now
        for _ in range(100):
            if not sender.jobs:
                break
            await asyncio.sleep(0.02)
        assert not sender.jobs and not kube.patches  # nothing removed from status: the other replica sends
        acting["shop"] = True
        receiver.script.clear()
        sender.offer(BODY, status)  # offered again (this replica acts again, its reconcile reads the status)
        for _ in range(200):
            if kube.patches:
                break
            await asyncio.sleep(0.02)
        await sender.aclose()
    kept = [r for r in receiver.requests if r[2] == 200]
    assert [json.loads(b)["event"] for _, b, _ in kept] == ["started", "promoted"]  # in order, once each
    removed = {k for p in kube.patches for k in p["status"]["notifications"]["pending"]}
    assert removed == set(entries) and all(
        v is None for p in kube.patches for v in p["status"]["notifications"]["pending"].values()
    )
    assert not kube.events
