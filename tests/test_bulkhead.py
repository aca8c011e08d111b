"""Bulkheads for Prometheus: Rollouts whose Prometheus hangs must not delay a Rollout
whose Prometheus answers (issue 12, failure 4).

The analysis of 100 Rollouts points at a server that accepts connections and never answers
(analysis_helpers.Silent); one more Rollout's analysis queries the real Prometheus. The
queries are awaited on the event loop, as the operator's analysis_driver does, with the
blocking template/Secret reads offloaded to a small thread pool like the operator's API pool;
the last test does the same with the real operator and 40 Rollouts on the local control plane.
Before the bulkheads, every query took a thread of one shared pool of 32: the hung queries
held all of them and the healthy run waited out their timeouts. How long the healthy run
takes, alone and beside the hung ones, is measured by bench/bench_bulkhead.py.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
import threading

import pytest

from analysis_helpers import Silent
from operator_helpers import Env, rollout
from teal.analysis import SUCCESSFUL
from teal.analysis.engine import evaluate_async, rollout_variables
from teal.analysis.prometheus import PER_SERVER_LIMIT, ProviderCache
from teal_devenv.prometheus import LocalPrometheus
from teal_devenv.wait import wait_for

pytestmark = [pytest.mark.prometheus, pytest.mark.timeout(120)]

HUNG_ROLLOUTS = 100
HUNG_TIMEOUT = "60s"  # far longer than the healthy run may take even on a loaded machine
T0 = dt.datetime(2030, 1, 1, 12, 0, tzinfo=dt.UTC)


def spec(address: str, timeout: str, count: int = 3) -> dict:
    return {
        "interval": "10s",
        "count": count,
        "prePromotion": ["error-rate"],
        "prometheus": {"address": address, "timeout": timeout},
        "metrics": [{"name": "error-rate", "query": "vector(0)", "thresholdRange": {"max": 0.01}}],
    }


def variables(name: str) -> dict:
    return rollout_variables(
        namespace="shop",
        name=name,
        color="green",
        stable_color="blue",
        revision=2,
        stable_revision=1,
        active_services=[name],
        preview_service=None,
    )


async def run_analysis(analysis: dict, name: str, pool, providers: ProviderCache):
    """The ticks of one run, as its reconcile loop drives them (the clock jumps to each next_at)."""

    def offload(fn):
        return asyncio.get_running_loop().run_in_executor(pool, fn)

    state = history = None
    now = T0
    while True:
        ev = await evaluate_async(
            analysis,
            "2:prePromotion",
            variables=variables(name),
            state=state,
            history=history,
            fetch_template=lambda k, n: None,
            read_secret=lambda n, k: None,
            now=now,
            providers=providers,
            offload=offload,
        )
        state, history = ev.state, ev.history
        if ev.run.next_at is None:
            return ev
        now = ev.run.next_at


async def test_a_hung_prometheus_delays_only_the_rollouts_that_query_it(prometheus: LocalPrometheus) -> None:
    pool = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="test-api")
    providers = ProviderCache()
    with Silent() as hung:
        hung_runs = [
            asyncio.create_task(run_analysis(spec(hung.url, HUNG_TIMEOUT), f"hung-{i}", pool, providers))
            for i in range(HUNG_ROLLOUTS)
        ]
        try:
            # the hung server holds as many queries as its bulkhead lets through, no more
            await asyncio.to_thread(
                wait_for,
                lambda: len(hung.conns) >= PER_SERVER_LIMIT,
                timeout=30,
                what=f"{PER_SERVER_LIMIT} queries hanging on the silent server",
            )
            threads = threading.active_count()
            healthy = await run_analysis(spec(prometheus.url, "10s"), "healthy", pool, providers)
            assert healthy.run.verdict == SUCCESSFUL, healthy.run.message
            assert [m.verdict for m in healthy.measurements] == [SUCCESSFUL]
            # the healthy run completed while every hung query still waits for its first answer
            assert not any(t.done() for t in hung_runs)
            assert len(hung.conns) == PER_SERVER_LIMIT  # the other hung runs queue for a slot
            assert threading.active_count() <= threads + 2  # waiting costs no thread
        finally:
            for t in hung_runs:
                t.cancel()
            await asyncio.gather(*hung_runs, return_exceptions=True)
            await providers.aclose()
            pool.shutdown(wait=True)


async def test_a_query_waiting_for_a_slot_times_out_with_its_own_deadline_and_says_why() -> None:
    providers = ProviderCache()
    pool = concurrent.futures.ThreadPoolExecutor(2)
    with Silent() as hung:
        holders = [
            asyncio.create_task(run_analysis(spec(hung.url, "60s"), f"h-{i}", pool, providers)) for i in range(PER_SERVER_LIMIT)
        ]
        try:
            await asyncio.to_thread(
                wait_for,
                lambda: len(hung.conns) >= PER_SERVER_LIMIT,
                timeout=30,
                what="every query slot of the silent server taken",
            )
            late = await evaluate_async(
                spec(hung.url, "300ms", count=1),
                "2:prePromotion",
                variables=variables("late"),
                state=None,
                history=None,
                fetch_template=lambda k, n: None,
                read_secret=lambda n, k: None,
                now=T0,
                providers=providers,
            )
            (m,) = late.measurements
            assert m.error_kind == "timeout" and f"all {PER_SERVER_LIMIT} query slots" in m.message, m.message
        finally:
            for t in holders:
                t.cancel()
            await asyncio.gather(*holders, return_exceptions=True)
            await providers.aclose()
            pool.shutdown(wait=True)


# ------------------------------------------------------------------ the real operator on the local control plane

OPERATOR_HUNG = 40  # more than the 32 query threads the operator had before the bulkheads


def labelled_rollout(name: str, analysis: dict | None) -> dict:
    body = rollout(name=name, replicas=1)
    del body["spec"]["strategy"]["blueGreen"]["previewService"]
    body["spec"]["selector"] = {"matchLabels": {"app": name}}
    body["spec"]["template"]["metadata"]["labels"] = {"app": name}
    if analysis:
        body["spec"]["analysis"] = analysis
    return body


@pytest.mark.cluster
@pytest.mark.timeout(240)
def test_rollouts_on_a_hung_prometheus_do_not_delay_a_healthy_one_in_the_operator(
    k8s, namespace, prometheus, teal_operator
) -> None:
    """40 Rollouts start a release whose analysis queries a server that never answers (60 s
    timeout); then a Rollout whose analysis queries the real Prometheus releases, analysed,
    before any hung query has timed out (no hung Rollout has a measurement yet)."""
    env = Env(k8s, namespace)
    with Silent() as hung:

        def gate(address: str, timeout: str) -> dict:
            return {
                "prometheus": {"address": address, "timeout": timeout},
                "interval": "1s",
                "count": 2,
                "prePromotion": ["gate"],
                "metrics": [{"name": "gate", "query": "vector(0)", "thresholdRange": {"max": 0.01}}],
            }

        names = [f"h{i}" for i in range(OPERATOR_HUNG)]
        for name in names + ["ok"]:
            env.create_service(name, {"app": name})
            analysis = gate(hung.url, "60s") if name != "ok" else gate(prometheus.url, "10s")
            env.create_rollout(labelled_rollout(name, analysis))
        for name in names + ["ok"]:
            env.wait_phase("Healthy", name=name, stableRevision="1", timeout=90)
        for name in names:
            env.set_image("v2", name=name, labels={"app": name})
        wait_for(lambda: len(hung.conns) >= PER_SERVER_LIMIT, timeout=60, what="hung queries in flight")
        env.set_image("v2", name="ok", labels={"app": "ok"})
        st = env.wait_phase("Healthy", name="ok", stableRevision="2", timeout=50)
        assert [m["verdict"] for m in st["analysis"] if m["run"] == "2:prePromotion"] == [SUCCESSFUL, SUCCESSFUL]
        assert not any(env.status(name).get("analysis") for name in names), "a hung query timed out first"
        assert all(env.status(name)["phase"] == "Progressing" for name in names)
