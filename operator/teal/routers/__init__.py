"""Traffic routers: weighted blue/green through Gateway API, NGINX Ingress and Istio.

    from teal.routers import ColorServices, RouterError, make_router

    router = make_router(client, "shop", "checkout", owner_ref, spec.blue_green.traffic_routing,
                         ColorServices.for_rollout("checkout", spec.blue_green.active_services))
    router.prepare()                     # per-colour Services, canary Ingress; idempotent
    observed = router.get_weights()      # {'blue': 90, 'green': 10}, read from the cluster
    drifted = router.set_weights({"blue": 50, "green": 50})   # True: someone else had changed them
    router.last_drift                    # 'weights were blue 100/green 0, but Teal had set blue 50/green 50'

Every method is synchronous, reads the cluster each time (routers keep no state the
operator relies on) and raises RouterError with a one-line message for what a user must
fix (reason/transient tell the operator how to react). See base.py for the write rules.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .. import client
from ..api import TrafficRouting
from .base import (
    ANNOTATION_WEIGHTS,
    ColorServices,
    Router,
    RouterError,
    ensure_color_services,
    normalize_weights,
)
from .gateway import GatewayAPIRouter
from .istio import IstioRouter
from .nginx import NginxRouter

ROUTERS = {"gatewayAPI": GatewayAPIRouter, "nginx": NginxRouter, "istio": IstioRouter}


def make_router(
    api: client.Client | Any,
    namespace: str,
    rollout_name: str,
    owner_ref: Mapping[str, Any],
    routing: TrafficRouting,
    services: ColorServices,
) -> Router:
    """The router for `routing.kind` ("gatewayAPI", "nginx", "istio").

    `api` is a teal.client.Client (or anything teal.client.Client.of takes); `owner_ref` is the Rollout's ownerReference (apiVersion, kind, name, uid; controller
    and blockOwnerDeletion as the operator wants) put on the objects Teal creates.
    """
    try:
        cls = ROUTERS[routing.kind]
    except KeyError:
        raise RouterError(f"unknown traffic router {routing.kind!r}; one of {', '.join(ROUTERS)}", "InvalidSpec") from None
    if services.rollout != rollout_name:
        raise ValueError(f"ColorServices are for {services.rollout!r}, not {rollout_name!r}")
    return cls(api, namespace, rollout_name, owner_ref, routing, services)


__all__ = [
    "ANNOTATION_WEIGHTS",
    "ColorServices",
    "GatewayAPIRouter",
    "IstioRouter",
    "NginxRouter",
    "ROUTERS",
    "Router",
    "RouterError",
    "ensure_color_services",
    "make_router",
    "normalize_weights",
]
