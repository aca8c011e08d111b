"""Local development and test environment for Teal.

Everything here runs real programs on this machine, bound to 127.0.0.1:

* :class:`~teal_devenv.cluster.LocalCluster` -- etcd, kube-apiserver,
  kube-controller-manager, kube-scheduler and kwok (fake nodes), started as
  plain processes from the binaries that ``hack/build-binaries.sh`` caches.
* :class:`~teal_devenv.prometheus.LocalPrometheus` -- a Prometheus server with
  a 1 s scrape interval whose targets can be changed at run time.
* :mod:`~teal_devenv.fakeapp` -- a tiny HTTP app exporting request metrics,
  and a bounded load generator aimed at loopback targets.

The submodules are imported lazily so that ``import teal_devenv`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "Binaries",
    "BinariesNotFound",
    "ClusterError",
    "FakeApp",
    "FakeAppProcess",
    "LoadGenerator",
    "LocalCluster",
    "LocalPrometheus",
    "PrometheusError",
    "find_binaries",
    "run_fakeapp",
    "wait_for",
]

_WHERE = {
    "Binaries": "binaries",
    "BinariesNotFound": "binaries",
    "find_binaries": "binaries",
    "LocalCluster": "cluster",
    "ClusterError": "cluster",
    "LocalPrometheus": "prometheus",
    "PrometheusError": "prometheus",
    "FakeApp": "fakeapp",
    "FakeAppProcess": "fakeapp",
    "run_fakeapp": "fakeapp",
    "LoadGenerator": "fakeapp",
    "wait_for": "wait",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'teal_devenv' has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
