"""API faults only a fake apiserver can inject, against Teal's real code.

Teal's real `Kube` adapter (the official client, through a kubernetes `ApiClient` pointed
at a kmock server), `Controller.reconcile` and the per-Rollout `Loop`s run unchanged; the
last two tests run the real kopf operator with Teal's handlers. The fake API is
`fault_helpers.FakeApi`: kmock's Kubernetes emulator with resourceVersions, optimistic
concurrency, and scripted faults (status codes, Retry-After, held requests, cut streams).

The world every test seeds (`seed_release`): a Rollout whose revision 1 is live on blue,
whose spec now asks for image v2, while green already runs v2 with every pod ready. One
reconcile finishes that release: it points both Services at green, then writes the status
(which records the switch). A fault in the middle of that shows what Teal does.
"""

from __future__ import annotations

import re
import time

import kmock
import pytest

from fault_helpers import (
    DEPLOYMENTS,
    ROLLOUTS,
    SERVICES,
    fake_api,
    rollout,
    rollout_status,
    running_controller,
    running_operator,
    seed_release,
    seed_world,
    selector_color,
    status_body,
    switched,
    template,
    until,
)
from teal import kube as teal_kube
from teal.client import Conflict, Transient
from teal.controller import Loop

pytestmark = pytest.mark.timeout(60)

NS = "faults"
PATCH, GET = kmock.method.PATCH, kmock.method.GET
STATUS = kmock.subresource("status")


def retry_delays(caplog: pytest.LogCaptureFixture, name: str, status: int) -> list[float]:
    """The backoffs the Loop logged for API errors with this status code, in order."""
    pattern = re.compile(rf"^{NS}/{name}: API error {status} .*; retrying in ([0-9.]+)s$")
    found = (pattern.match(r.getMessage()) for r in caplog.records if r.name == "teal")
    return [float(m.group(1)) for m in found if m]


# ------------------------------------------------------------------ 409 Conflict on the status write


async def test_conflict_on_status_write_decides_again_on_fresh_data() -> None:
    """Someone reverts the template to the stable one between Teal's read and its status
    write. The switch to green (ready pods) went out first; the status write is refused
    (stale resourceVersion), and the next reconcile, at once, decides on the reverted spec:
    no release, and every Service back on blue, where the fresh status says."""
    async with fake_api() as api:
        seed_release(api, NS, "app")
        status_writes = api[PATCH, ROLLOUTS, STATUS]
        revert = {"spec": {"template": template("v1")}}
        api.before(status_writes[:1], lambda _: api.edit(ROLLOUTS, NS, "app", revert))
        async with running_controller(api) as ctl:
            ctl.wake(NS, "app")
            await until(
                lambda: rollout_status(api, NS, "app").get("observedGeneration") == 2 and ctl.settled(NS, "app"),
                10,
                "generation 2 decided, with nothing left to do",
            )

            assert [r.id for r in api.conflicts] == [status_writes[0].id]
            (failure,) = ctl.failures(NS, "app")
            assert isinstance(failure, Conflict) and failure.status == 409
            rereads = [r for r in api.requests(GET, ROLLOUTS) if r.id > status_writes[0].id]
            assert api.arrived(rereads[0]) - api.arrived(status_writes[0]) < 0.3, "a 409 is retried at once"
            moves = api.requests(PATCH, SERVICES)
            there = [r for r in moves if r.data["spec"]["selector"] == {"teal.dev/color": "green"}]
            back = [r for r in moves if r.data["spec"]["selector"] == {"teal.dev/color": "blue"}]
            assert all(r.id < status_writes[0].id for r in there), "the stale decision moved first"
            assert sorted(r.name for r in back) == ["app", "app-preview"], "the fresh decision moves both back"
            assert api.arrived(back[-1]) - api.arrived(status_writes[0]) < 0.3, "back on blue at once"
            st = rollout_status(api, NS, "app")
            assert (st["phase"], st["stableColor"], st["activeColor"], st["currentRevision"]) == ("Healthy", "blue", "blue", "1")
            assert "release" not in st
            assert selector_color(api, NS, "app") == selector_color(api, NS, "app-preview") == "blue"


async def test_conflict_with_an_unrelated_write_switches_once_then_records_the_switch() -> None:
    """Someone labels the Rollout in between: the Services switch, the status write gets 409,
    the retry decides the same switch, finds it done and records it: each Service patched once."""
    async with fake_api() as api:
        seed_release(api, NS, "app")
        status_writes = api[PATCH, ROLLOUTS, STATUS]
        api.before(status_writes[:1], lambda _: api.edit(ROLLOUTS, NS, "app", {"metadata": {"labels": {"team": "x"}}}))
        async with running_controller(api) as ctl:
            ctl.wake(NS, "app")
            await until(lambda: switched(api, NS, "app") and ctl.settled(NS, "app"), 10, "the switch to green")

            assert len(api.conflicts) == 1
            svc_patches = api.requests(PATCH, SERVICES)
            assert sorted(r.name for r in svc_patches) == ["app", "app-preview"], "each Service patched once"
            assert all(r.data["spec"]["selector"] == {"teal.dev/color": "green"} for r in svc_patches)
            recorded = [r for r in status_writes if r.id > svc_patches[-1].id and r not in api.conflicts]
            assert recorded and recorded[0].data["status"]["activeColor"] == "green", (
                "the switch is recorded by a successful status write after the Services moved"
            )
            assert api.stored(ROLLOUTS, NS, "app")["metadata"]["labels"] == {"team": "x"}


# ------------------------------------------------------------------ 500 on the Service selector patch


async def test_service_patch_500_retries_with_growing_backoff_until_the_switch(caplog) -> None:
    async with fake_api() as api:
        seed_release(api, NS, "app")
        api.fail(api[PATCH, SERVICES, kmock.name("app")], 500, times=3)
        async with running_controller(api) as ctl:
            ctl.wake(NS, "app")
            await until(lambda: switched(api, NS, "app") and ctl.settled(NS, "app"), 15, "the switch to green")

            attempts = api.requests(PATCH, SERVICES, kmock.name("app"))
            assert len(attempts) == 4, "three refused, the fourth applied"
            assert retry_delays(caplog, "app", 500) == [0.4, 0.8, 1.6]
            gaps = [api.arrived(b) - api.arrived(a) for a, b in zip(attempts, attempts[1:], strict=False)]
            assert all(gap >= delay - 0.05 for gap, delay in zip(gaps, [0.4, 0.8, 1.6], strict=False)), gaps
            # Until the Service really moved, status said traffic was moving, never that the release was done.
            before_switch = [r for r in api.requests(PATCH, ROLLOUTS, STATUS) if r.id < attempts[-1].id]
            assert before_switch
            assert all(r.data["status"].get("phase", "Progressing") != "Healthy" for r in before_switch)
            assert not ctl.loops[(NS, "app")].task.done(), "the loop is alive"


async def test_backoff_is_capped_at_30s_and_an_event_cuts_it_short(caplog) -> None:
    async with fake_api() as api:
        seed_release(api, NS, "app")
        api.fail(api[PATCH, SERVICES, kmock.name("app")], 500, times=1)
        async with running_controller(api) as ctl:
            loop = ctl.loops[(NS, "app")] = Loop(ctl, NS, "app")
            loop.failures = 20  # as after a long outage
            loop.start()
            await until(lambda: retry_delays(caplog, "app", 500), 10, "the failed reconcile")
            assert retry_delays(caplog, "app", 500) == [30.0]
            ctl.wake(NS, "app")  # a watch event for the Rollout: retry now, not in 30 s
            await until(lambda: switched(api, NS, "app"), 10, "the switch to green")
            assert ctl.loops[(NS, "app")] is loop


# ------------------------------------------------------------------ 429 Too Many Requests on reads


async def test_throttled_read_is_retried_after_retry_after(caplog) -> None:
    """Two 429s with Retry-After: 1 on the Rollout read: the client waits and retries, and
    the reconcile goes through without failing."""
    async with fake_api() as api:
        seed_release(api, NS, "app")
        api.fail(api[GET, ROLLOUTS], 429, times=2, reason="TooManyRequests", retry_after=1)
        async with running_controller(api) as ctl:
            ctl.wake(NS, "app")
            await until(lambda: switched(api, NS, "app") and ctl.settled(NS, "app"), 15, "the switch to green")

            reads = api.requests(GET, ROLLOUTS)
            assert all(api.arrived(b) - api.arrived(a) >= 0.95 for a, b in zip(reads[:2], reads[1:3], strict=False)), (
                "Retry-After is honoured"
            )
            assert ctl.failures(NS, "app") == [] and retry_delays(caplog, "app", 429) == []


async def test_throttling_storm_fails_the_reconcile_then_backs_off_and_converges(caplog) -> None:
    """More 429s than the client retries: the reconcile fails before deciding anything, the
    loop backs off, and once the storm is over the switch happens."""
    async with fake_api() as api:
        seed_release(api, NS, "app")
        throttled = api.fail(api[GET, DEPLOYMENTS], 429, times=8, reason="TooManyRequests", retry_after=0)
        async with running_controller(api) as ctl:
            ctl.wake(NS, "app")
            await until(lambda: switched(api, NS, "app") and ctl.settled(NS, "app"), 15, "the switch to green")

            assert [getattr(f, "status", None) for f in ctl.failures(NS, "app")] == [429, 429]
            assert retry_delays(caplog, "app", 429) == [0.4, 0.8]
            last_429 = list(throttled)[-1]
            writes = api.requests(PATCH)
            assert writes and all(w.id > last_429.id for w in writes), "nothing is written from a partial read"


# ------------------------------------------------------------------ a request that hangs


async def test_hung_read_times_out_while_other_rollouts_keep_working(monkeypatch, caplog) -> None:
    """Reads of `slow`'s Deployments get no answer. The call gives up after kube.TIMEOUT
    (teal.client never re-sends a timed-out request; the bound allows 4 read timeouts), the
    loop retries, and meanwhile `fast` is reconciled and switched. Once the API answers
    again, `slow` converges too."""
    read_timeout = 1.0
    monkeypatch.setattr(teal_kube, "TIMEOUT", (1, read_timeout))
    async with fake_api() as api:
        seed_release(api, NS, "slow")
        seed_release(api, NS, "fast")
        hung = api[GET, DEPLOYMENTS, kmock.name(re.compile("slow-.*"))]
        api.hang(hung)
        async with running_controller(api) as ctl:
            ctl.wake(NS, "slow")
            await until(lambda: api.held, 5, "slow's first Deployment read is held")
            ctl.wake(NS, "fast")
            await until(lambda: switched(api, NS, "fast"), 5, "fast switched to green")
            assert (NS, "slow") in ctl.running and not ctl.failures(NS, "slow"), (
                "fast was reconciled while slow's reconcile waited for its read"
            )

            failure = await until(lambda: ctl.failures(NS, "slow"), 4 * read_timeout + 5, "slow's read timed out")
            waited = time.monotonic() - api.arrived(list(hung)[0])
            assert isinstance(failure[0], Transient) and failure[0].status == 0
            assert "Read timed out" in str(failure[0])
            assert read_timeout * 0.9 <= waited <= 4 * read_timeout + 3
            assert 1 <= len(list(hung)) <= 4, "one read: the first try and at most 3 re-sends"
            assert selector_color(api, NS, "slow") == "blue", "nothing acted on without a full read"

            api.release()
            await until(lambda: switched(api, NS, "slow"), 10, "slow switched once the API answers")
            assert not ctl.loops[(NS, "slow")].task.done()


# ------------------------------------------------------------------ steady state


async def test_steady_state_reconcile_writes_nothing() -> None:
    """Once converged, a reconcile reads and writes nothing: every needless status write is
    API load (and, carrying a resourceVersion, a chance of a 409)."""
    async with fake_api() as api:
        seed_release(api, NS, "app")
        async with running_controller(api) as ctl:
            ctl.wake(NS, "app")
            await until(lambda: switched(api, NS, "app") and ctl.settled(NS, "app"), 10, "the switch to green")
            before = len(api.requests())
            done = len(ctl.outcomes[(NS, "app")])
            ctl.wake(NS, "app")
            await until(lambda: len(ctl.outcomes[(NS, "app")]) > done and ctl.settled(NS, "app"), 10, "a reconcile")
            extra = [r for r in api.requests()[before:] if r.method != GET]
            assert extra == [], [(r.method, r.url.path, r.data) for r in extra]
            assert api.requests(GET, ROLLOUTS)[-1].id >= before, "the reconcile did read the Rollout"


# ------------------------------------------------------------------ kopf's watch: cut streams, 410 Gone


def rollout_watches(api):
    return api[kmock.action.WATCH, ROLLOUTS]


def rollout_lists(api):
    return api[kmock.action.LIST, ROLLOUTS]


async def test_kopf_resumes_a_cut_watch_and_teal_reacts_to_what_came_meanwhile() -> None:
    """The first watch of Rollouts is cut in the middle of the stream. kopf watches again
    from the last resourceVersion it saw; a Rollout created while the watch was down is
    delivered on the new stream, and Teal's loop for it runs (nothing else would start it)."""
    async with fake_api() as api:
        seed_release(api, NS, "app")
        seed_world(api, NS, "late")
        app = api.stored(ROLLOUTS, NS, "app")
        api.drop(rollout_watches(api), {"type": "MODIFIED", "object": app})
        api.before(rollout_watches(api)[1:2], lambda _: api.store(ROLLOUTS, rollout(NS, "late", "v2")))
        async with running_operator(api):
            await until(lambda: switched(api, NS, "late"), 15, "Teal switched the late Rollout")

            watches = list(rollout_watches(api))
            assert len(watches) >= 2
            assert watches[1].params.get("resourceVersion") == app["metadata"]["resourceVersion"], (
                "kopf resumed from the last event of the cut stream"
            )
            assert api.requests(GET, ROLLOUTS, kmock.name("late")), "the late Rollout's loop read it"
            await until(lambda: switched(api, NS, "app"), 10, "the listed Rollout switched too")


async def test_kopf_relists_after_410_gone_and_teal_reacts() -> None:
    """The first watch answers with a 410 Gone ERROR event (resourceVersion too old). kopf
    lists again and watches anew; a Rollout created before that list reaches Teal."""
    async with fake_api() as api:
        seed_release(api, NS, "app")
        seed_world(api, NS, "late")
        gone = {"type": "ERROR", "object": status_body(410, "Expired", "too old resource version")}
        rollout_watches(api)[:1] << 200 << (gone,)
        api.before(rollout_lists(api)[1:2], lambda _: api.store(ROLLOUTS, rollout(NS, "late", "v2")))
        async with running_operator(api):
            await until(lambda: switched(api, NS, "late"), 15, "Teal switched the late Rollout")

            lists, watches = list(rollout_lists(api)), list(rollout_watches(api))
            assert len(lists) >= 2 and len(watches) >= 2
            assert lists[1].id > watches[0].id, "the second list came after the 410"
            assert api.requests(GET, ROLLOUTS, kmock.name("late"))
            await until(lambda: switched(api, NS, "app"), 10, "the listed Rollout switched too")


# ------------------------------------------------------------------ kopf's watch: other errors (teal.kopf_compat)


def watch_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "teal" and "listing and watching again" in r.getMessage()]


async def test_a_watch_error_event_other_than_410_restarts_the_watch_not_the_operator(caplog) -> None:
    """The first watch of Rollouts answers with an ERROR event with code 500. kopf 1.45 alone
    raises WatchingError and the operator exits; with teal.kopf_compat the stream ends as
    after a 410: a warning, a new list, a new watch, and Teal reconciles what it lists."""
    async with fake_api() as api:
        seed_release(api, NS, "app")
        seed_world(api, NS, "late")
        boom = {"type": "ERROR", "object": status_body(500, "InternalError", "etcdserver: request timed out")}
        rollout_watches(api)[:1] << 200 << (boom,)
        api.before(rollout_lists(api)[1:2], lambda _: api.store(ROLLOUTS, rollout(NS, "late", "v2")))
        async with running_operator(api):  # fails on exit if kopf ended
            await until(lambda: switched(api, NS, "late"), 20, "Teal switched the Rollout listed after the error")
            lists, watches = list(rollout_lists(api)), list(rollout_watches(api))
            assert len(lists) >= 2 and lists[1].id > watches[0].id, "listed again after the error"
            await until(lambda: switched(api, NS, "app"), 10, "the first Rollout switched too")
        assert any("etcdserver: request timed out" in w for w in watch_warnings(caplog)), watch_warnings(caplog)


async def test_a_watch_request_forbidden_past_kopfs_retries_is_watched_again_not_fatal(caplog) -> None:
    """Watch requests for Rollouts get 403 (say RBAC being re-applied) until kopf's own
    retries (shortened here to two) run out. kopf alone then exits; with teal.kopf_compat
    the stream ends with a warning, kopf lists and watches again after 0.5 s, and a
    Rollout created meanwhile is reconciled."""
    async with fake_api() as api:
        seed_release(api, NS, "app")
        seed_world(api, NS, "late")
        api.fail(rollout_watches(api), 403, 3, reason="Forbidden")
        api.before(rollout_lists(api)[1:2], lambda _: api.store(ROLLOUTS, rollout(NS, "late", "v2")))
        async with running_operator(api, error_backoffs=(0.05, 0.05)):
            await until(lambda: switched(api, NS, "late"), 20, "Teal switched the Rollout created during the 403s")
            assert len(list(rollout_lists(api))) >= 2 and len(list(rollout_watches(api))) >= 4
        delays = [
            float(m.group(1)) for w in watch_warnings(caplog) if (m := re.search(r"again in ([0-9.]+)s$", w)) and "403" in w
        ]
        assert delays[:1] == [0.5], watch_warnings(caplog)
