"""Kubernetes lookups for analysis: AnalysisTemplates and Secrets (teal.client).

Both return None for "not found" (which parse_metrics / provider_from_spec turn into a
clear AnalysisConfigError) and let every other API error propagate (the caller retries).
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping
from typing import Any

from .. import client
from ..api import GROUP, VERSION

__all__ = ["template_fetcher", "secret_reader", "TEMPLATE_PLURALS", "TEMPLATE_RESOURCES"]

TEMPLATE_PLURALS = {"AnalysisTemplate": "analysistemplates", "ClusterAnalysisTemplate": "clusteranalysistemplates"}
TEMPLATE_RESOURCES = {
    "AnalysisTemplate": client.Resource(GROUP, VERSION, "analysistemplates"),
    "ClusterAnalysisTemplate": client.Resource(GROUP, VERSION, "clusteranalysistemplates", namespaced=False),
}


def template_fetcher(api: client.Client | Any, namespace: str) -> Callable[[str, str], Mapping[str, Any] | None]:
    """fetch(kind, name): an AnalysisTemplate in `namespace` or a ClusterAnalysisTemplate.
    `api`: a teal.client.Client (or anything teal.client.Client.of takes)."""
    kube = client.Client.of(api)

    def fetch(kind: str, name: str) -> Mapping[str, Any] | None:
        res = TEMPLATE_RESOURCES.get(kind)
        return None if res is None else kube.get(res, namespace, name)

    return fetch


def secret_reader(api: client.Client | Any, namespace: str) -> Callable[[str, str], str | None]:
    """read(name, key): the decoded value of a Secret's key, or None; one GET per Secret."""
    kube = client.Client.of(api)
    seen: dict[str, Mapping[str, str] | None] = {}

    def read(name: str, key: str) -> str | None:
        if name not in seen:
            secret = kube.get(client.SECRETS, namespace, name)
            if secret is None:
                seen[name] = None
                return None
            data = {k: base64.b64decode(v).decode("utf-8", "replace") for k, v in (secret.get("data") or {}).items()}
            data.update(secret.get("stringData") or {})
            seen[name] = data
        values = seen[name]
        return None if values is None else values.get(key)

    return read
