"""Kubernetes lookups for analysis: AnalysisTemplates and Secrets (kubernetes sync client).

Both return None for "not found" (which parse_metrics / provider_from_spec turn into a
clear AnalysisConfigError) and let every other API error propagate (the caller retries).
"""
from __future__ import annotations

import base64
from typing import Any, Callable, Mapping

from kubernetes import client
from kubernetes.client.rest import ApiException

from ..api import GROUP, VERSION

__all__ = ["template_fetcher", "secret_reader", "TEMPLATE_PLURALS", "REQUEST_TIMEOUT_S"]

TEMPLATE_PLURALS = {"AnalysisTemplate": "analysistemplates", "ClusterAnalysisTemplate": "clusteranalysistemplates"}
REQUEST_TIMEOUT_S = 10


def template_fetcher(api: client.ApiClient, namespace: str) -> Callable[[str, str], Mapping[str, Any] | None]:
    """fetch(kind, name): an AnalysisTemplate in `namespace` or a ClusterAnalysisTemplate."""
    co = client.CustomObjectsApi(api)

    def fetch(kind: str, name: str) -> Mapping[str, Any] | None:
        plural = TEMPLATE_PLURALS.get(kind)
        if plural is None:
            return None
        try:
            if kind == "ClusterAnalysisTemplate":
                return co.get_cluster_custom_object(GROUP, VERSION, plural, name, _request_timeout=REQUEST_TIMEOUT_S)
            return co.get_namespaced_custom_object(
                GROUP, VERSION, namespace, plural, name, _request_timeout=REQUEST_TIMEOUT_S
            )
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    return fetch


def secret_reader(api: client.ApiClient, namespace: str) -> Callable[[str, str], str | None]:
    """read(name, key): the decoded value of a Secret's key, or None; one GET per Secret."""
    core = client.CoreV1Api(api)
    seen: dict[str, Mapping[str, str] | None] = {}

    def read(name: str, key: str) -> str | None:
        if name not in seen:
            try:
                secret = core.read_namespaced_secret(name, namespace, _request_timeout=REQUEST_TIMEOUT_S)
            except ApiException as e:
                if e.status == 404:
                    seen[name] = None
                    return None
                raise
            data = {k: base64.b64decode(v).decode("utf-8", "replace") for k, v in (secret.data or {}).items()}
            data.update(secret.string_data or {})
            seen[name] = data
        values = seen[name]
        return None if values is None else values.get(key)

    return read
