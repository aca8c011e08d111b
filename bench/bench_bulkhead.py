"""A healthy Rollout's analysis beside 100 Rollouts whose Prometheus hangs (issue 12, failure 4).

One analysis run (5 measurements, 250 ms apart, against a real local Prometheus) is timed
  * alone,
  * beside 100 runs querying a server that accepts connections and never answers
    (10 s timeout), the way the operator runs them now: queries awaited with aiohttp,
    a bulkhead per server, template/Secret reads in a 32-thread API pool;
  * beside the same 100 hung runs the way the operator ran them before: every evaluate()
    in one shared pool of 32 query threads (--no-before skips this ~30 s case).

    python bench/bench_bulkhead.py [--hung 100] [--no-before]
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import datetime as dt
import tempfile
import time
from pathlib import Path

from teal.analysis.engine import evaluate, evaluate_async, rollout_variables
from teal.analysis.prometheus import ProviderCache
from teal_devenv.prometheus import LocalPrometheus

KEY = "2:prePromotion"


def spec(address: str, count: int) -> dict:
    return {
        "interval": "250ms",
        "count": count,
        "prePromotion": ["error-rate"],
        "prometheus": {"address": address, "timeout": "10s"},
        "metrics": [{"name": "error-rate", "query": "vector(0)", "thresholdRange": {"max": 0.01}}],
    }


def kwargs(name: str, providers: ProviderCache) -> dict:
    variables = rollout_variables(
        namespace="bench",
        name=name,
        color="green",
        stable_color="blue",
        revision=2,
        stable_revision=1,
        active_services=[name],
        preview_service=None,
    )
    return dict(variables=variables, fetch_template=lambda k, n: None, read_secret=lambda n, k: None, providers=providers)


async def run(analysis: dict, name: str, providers: ProviderCache, pool, before: bool) -> str:
    """One analysis run on the real clock, ticked like a reconcile loop ticks it."""
    loop = asyncio.get_running_loop()
    state = history = None
    while True:
        now = dt.datetime.now(dt.UTC)
        kw = dict(kwargs(name, providers), state=state, history=history, now=now)
        if before:
            ev = await loop.run_in_executor(pool, lambda: evaluate(analysis, KEY, **kw))
        else:
            ev = await evaluate_async(analysis, KEY, offload=lambda fn: loop.run_in_executor(pool, fn), **kw)
        state, history = ev.state, ev.history
        if ev.run.next_at is None:
            return ev.run.verdict
        await asyncio.sleep(max(0.0, (ev.run.next_at - dt.datetime.now(dt.UTC)).total_seconds()))


async def case(prom_url: str, hung: int, before: bool) -> float:
    held = []
    server = await asyncio.start_server(lambda r, w: held.append(w), "127.0.0.1", 0)  # accepts, never answers
    hung_url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    providers = ProviderCache()
    pool = concurrent.futures.ThreadPoolExecutor(32)
    tasks = [asyncio.create_task(run(spec(hung_url, 100), f"hung-{i}", providers, pool, before)) for i in range(hung)]
    await asyncio.sleep(0.5 if hung else 0)  # let the hung runs send their first queries
    t = time.perf_counter()
    verdict = await run(spec(prom_url, 5), "healthy", providers, pool, before)
    took = time.perf_counter() - t
    assert verdict == "Successful", verdict
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for w in held:
        w.close()
    server.close()
    await providers.aclose()
    pool.shutdown(wait=False, cancel_futures=True)
    return took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hung", type=int, default=100)
    ap.add_argument("--no-before", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        prom = LocalPrometheus(Path(tmp) / "prom").start()
        try:
            alone = asyncio.run(case(prom.url, 0, before=False))
            print(f"healthy run alone:                          {alone:6.2f} s")
            beside = asyncio.run(case(prom.url, args.hung, before=False))
            print(f"beside {args.hung} hung runs (bulkheads, aiohttp):  {beside:6.2f} s  ({beside / alone:.2f}x)")
            if not args.no_before:
                old = asyncio.run(case(prom.url, args.hung, before=True))
                print(f"beside {args.hung} hung runs (one pool of 32 threads): {old:6.2f} s  ({old / alone:.2f}x)")
        finally:
            prom.stop()


if __name__ == "__main__":
    main()
