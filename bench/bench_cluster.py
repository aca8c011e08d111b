"""Startup and memory figures of the local test environment.

    python bench/bench_cluster.py [--runs N] [--idle SECONDS] [--build-log PATH]

Prints one figure per line:
  * hack/build-binaries.sh on a warm cache (skipped when the cache is not
    complete, so this never starts a build of its own, and skipped when a
    process named etcd or prometheus runs: the script pkills those),
  * the cold build times the build script logged ("built X in Ns"),
  * LocalCluster start (start() to ready) and stop times,
  * LocalPrometheus start time,
  * resident memory (VmRSS) of each control-plane process and the total, after
    the cluster has been idle for --idle seconds.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "operator"))
sys.path.insert(0, str(ROOT / "devenv"))  # teal_devenv, when not installed

from teal_devenv.binaries import cache_bin_dirs  # noqa: E402
from teal_devenv.cluster import LocalCluster  # noqa: E402
from teal_devenv.procs import rss_kib  # noqa: E402
from teal_devenv.prometheus import LocalPrometheus  # noqa: E402

ALL = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl", "kwok", "helm")


def figure(name: str, value: float | int | str, unit: str = "") -> None:
    if isinstance(value, float):
        value = f"{value:.2f}"
    print(f"{name}: {value}{(' ' + unit) if unit else ''}", flush=True)


def cache_complete() -> bool:
    dirs = cache_bin_dirs(ROOT)
    return all(any(os.access(os.path.join(d, b), os.X_OK) for d in dirs) for b in ALL)


def processes_named(*names: str) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            comm = stat[stat.find("(") + 1 : stat.rfind(")")]
            state = stat[stat.rfind(")") + 2 :].split()[0]
            if comm in names and state != "Z":
                pids.append(int(entry))
    return pids


def bench_warm_build(force: bool) -> None:
    if not cache_complete():
        figure("build_binaries_warm_seconds", "skipped (cache incomplete; not starting a build)")
        return
    # The script runs `pkill -x etcd` and `pkill -x prometheus`: never kill someone's running ones.
    victims = processes_named("etcd", "prometheus")
    if victims and not force:
        figure(
            "build_binaries_warm_seconds",
            f"skipped (the script would pkill running etcd/prometheus {victims}; --force-warm-build to run it)",
        )
        return
    t = time.monotonic()
    proc = subprocess.run(["bash", str(ROOT / "hack" / "build-binaries.sh")], capture_output=True, text=True)
    elapsed = time.monotonic() - t
    if proc.returncode != 0:
        figure("build_binaries_warm_seconds", f"failed (exit {proc.returncode})")
        return
    figure("build_binaries_warm_seconds", elapsed, "s")


def cold_build_times(log: Path) -> None:
    try:
        text = log.read_text(errors="replace")
    except OSError:
        figure("cold_build", f"no build log at {log}")
        return
    found = re.findall(r"(?:built|installed) (\S+) in (\d+)s", text)
    if not found:
        figure("cold_build", f"no 'built X in Ns' lines in {log}")
        return
    total = 0
    for name, secs in found:
        figure(f"cold_build_{name}_seconds", int(secs), "s")
        total += int(secs)
    figure("cold_build_total_seconds", total, "s")


def bench_cluster(runs: int, idle: float) -> None:
    starts, stops = [], []
    for i in range(runs):
        c = LocalCluster()
        t = time.monotonic()
        c.start()
        starts.append(time.monotonic() - t)
        try:
            if i == runs - 1:
                for phase in ("pki", "etcd", "apiserver", "nodes", "default_sa"):
                    figure(f"cluster_ready_{phase}_at_seconds", c.timings[phase], "s")
                time.sleep(idle)  # let it settle; this is the measurement, not a wait on a condition
                mem = c.memory_kib()
                for name in ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok"):
                    figure(f"rss_{name}_mib", mem.get(name, 0) / 1024, "MiB")
                figure("rss_control_plane_total_mib", sum(mem.values()) / 1024, "MiB")
        finally:
            t = time.monotonic()
            c.stop()
            stops.append(time.monotonic() - t)
            left = c.leftover_processes()
            if left:
                figure("cluster_leftover_processes", str(left))
    for label, xs in (("cluster_start_seconds", starts), ("cluster_stop_seconds", stops)):
        if len(xs) == 1:
            figure(label, xs[0], "s")
        else:
            figure(f"{label}_median", statistics.median(xs), "s")
            figure(f"{label}_min", min(xs), "s")
            figure(f"{label}_max", max(xs), "s")


def bench_prometheus() -> None:
    t = time.monotonic()
    with LocalPrometheus() as p:
        figure("prometheus_start_seconds", time.monotonic() - t, "s")
        figure("rss_prometheus_mib", (rss_kib(p.pid) or 0) / 1024, "MiB")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3, help="cluster start/stop cycles (default 3)")
    ap.add_argument("--idle", type=float, default=10.0, help="idle seconds before reading memory (default 10)")
    cache_log = Path(os.environ.get("TEAL_CACHE", Path.home() / ".cache" / "teal")) / "build-times.log"
    ap.add_argument("--build-log", default=os.environ.get("TEAL_BUILD_LOG", str(cache_log)))
    ap.add_argument(
        "--force-warm-build",
        action="store_true",
        help="time hack/build-binaries.sh even if it would pkill running etcd/prometheus",
    )
    args = ap.parse_args()
    figure("cpus", os.cpu_count() or 0)
    bench_warm_build(args.force_warm_build)
    cold_build_times(Path(args.build_log))
    bench_cluster(max(1, args.runs), args.idle)
    bench_prometheus()
    return 0


if __name__ == "__main__":
    sys.exit(main())
