"""Which replica may act: kopf's peering rule, applied to Teal's own reconcile loops too.

kopf pauses its watches in a replica that sees a live peer of higher (or equal) priority,
but Teal's per-Rollout loops are its own asyncio tasks: a leader that becomes a standby
(a new pod with a higher priority during a rolling update) would keep reconciling. This
gate reads the same peering objects kopf keeps (their `status` holds every peer's
priority, lifetime and last-seen time) and tells the loops whether this replica leads.

The rule is kopf's: act unless another live peer has a priority >= ours.
"""

from __future__ import annotations

import datetime as dt
import getpass
import os
import socket
from collections.abc import Mapping
from typing import Any

from .client import Client, Resource

PEERING_GROUP, PEERING_VERSION = "kopf.dev", "v1"
CLUSTER_PEERINGS = Resource(PEERING_GROUP, PEERING_VERSION, "clusterkopfpeerings", namespaced=False)
PEERINGS = Resource(PEERING_GROUP, PEERING_VERSION, "kopfpeerings")


def own_identity() -> str:
    """The peer id kopf and Teal share: POD_ID in a pod, else user@host/pid."""
    return os.environ.get("POD_ID") or f"{getpass.getuser()}@{socket.gethostname()}/{os.getpid()}"


def leads(peers: Mapping[str, Mapping[str, Any]], identity: str, priority: int, now: dt.datetime) -> bool:
    """Pure: does `identity` lead, given the peering object's status?"""
    for peer_id, peer in (peers or {}).items():
        if peer_id == identity or not isinstance(peer, Mapping):
            continue
        try:
            lastseen = dt.datetime.fromisoformat(str(peer.get("lastseen")).replace("Z", "+00:00"))
            lifetime = dt.timedelta(seconds=int(peer.get("lifetime", 60)))
        except (TypeError, ValueError):
            continue
        if lastseen.tzinfo is None:
            lastseen = lastseen.replace(tzinfo=dt.UTC)
        alive = lastseen + lifetime > now
        if alive and int(peer.get("priority", 0)) >= priority:
            return False
    return True


def read_peers(api: Client, name: str, namespaces: list[str]) -> list[Mapping[str, Any]]:
    """The peer lists of the ClusterKopfPeering (cluster-wide) or of each KopfPeering that exists."""
    found = [api.get(CLUSTER_PEERINGS, None, name)] if not namespaces else []
    found += [api.get(PEERINGS, ns, name) for ns in namespaces]
    return [obj.get("status") or {} for obj in found if obj is not None]
