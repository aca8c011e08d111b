"""Istio: the weighted destinations of HTTP routes of a VirtualService the user names.

The user writes the VirtualService; in the HTTP routes to shift, destinations whose
``host`` is ``<rollout>-blue`` / ``<rollout>-green`` (short name, ``name.namespace``,
``name.namespace.svc`` or the full ``name.namespace.svc.<cluster domain>``). Teal sets
the ``weight`` of those destinations and nothing else.

* ``routes`` (trafficRouting.istio.routes) names the HTTP routes (``http[].name``) to
  manage: a name that does not exist, or a named route without a colour destination, is
  a RouterError. Without names, every HTTP route with a colour destination is managed,
  and it is a RouterError when there is none.
* A managed route that lists only one colour gets the other added by ``prepare()``
  (a copy of the listed destination with the host's service name changed, weight 0).
* Subset-based routing (one host, two DestinationRule subsets) is not what Teal uses:
  the colours are Services, so no DestinationRule is needed.

Writes are JSON patches that pin (``test``) the route's name and destination list and
replace only that list, plus the annotation teal.dev/weights.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

from ..api import COLORS
from .base import RouterError
from .weighted import ListRouter, Place, find_named


class IstioRouter(ListRouter):
    kind = "VirtualService"
    group = "networking.istio.io"
    version = "v1"
    fallback_versions = ("v1beta1", "v1alpha3")
    plural = "virtualservices"
    entry_word = "destination"

    def _host_split(self, host: str | None) -> tuple[str, str] | None:
        """(colour, suffix after the service name) when host names a colour Service."""
        if not host:
            return None
        for c in COLORS:
            name = self.services.name(c)
            if host == name:
                return c, ""
            rest = host[len(name) :] if host.startswith(name + ".") else None
            if rest is None:
                continue
            ns = f".{self.namespace}"
            if rest == ns or rest == f"{ns}.svc" or rest.startswith(f"{ns}.svc."):
                return c, rest
        return None

    def entry_color(self, entry: Mapping[str, Any]) -> str | None:
        hit = self._host_split((entry.get("destination") or {}).get("host"))
        return hit[0] if hit else None

    def raw_weight(self, entry: Mapping[str, Any], items: Sequence[Mapping[str, Any]]) -> float:
        w = entry.get("weight")
        if w is None:
            return 100.0 if len(items) == 1 else 0.0  # a lone destination gets everything
        return float(w)

    def new_entry(self, sibling: Mapping[str, Any], color: str) -> dict[str, Any]:
        entry = copy.deepcopy(dict(sibling))
        dest = entry.setdefault("destination", {})
        _, suffix = self._host_split(dest.get("host")) or (None, "")
        dest["host"] = self.services.name(color) + suffix
        if self.routing.port is not None and not dest.get("port"):
            dest["port"] = {"number": self.routing.port}
        return entry

    def find_places(self, obj: Mapping[str, Any]) -> list[Place]:
        http = (obj.get("spec") or {}).get("http") or []

        def place(i: int) -> Place | None:
            route = http[i]
            label = f"route {route['name']!r}" if route.get("name") else f"http[{i}]"
            guards = []
            if route.get("name"):
                guards = [{"op": "test", "path": f"/spec/http/{i}/name", "value": route["name"]}]
            return self._place(label, ("spec", "http", i, "route"), route.get("route") or [], guards)

        if self.routing.routes:
            places = []
            for name in self.routing.routes:
                i = find_named(http, name)
                if i is None:
                    named = [r["name"] for r in http if r.get("name")]
                    have = f"its named routes: {', '.join(named)}" if named else "it has no named HTTP routes"
                    raise RouterError(
                        f"VirtualService {self.name} has no HTTP route named {name!r} ({have})",
                        "RouteNameNotFound",
                    )
                p = place(i)
                if p is None:
                    raise RouterError(
                        f"VirtualService {self.name} route {name!r} has no destination with host {self.services.both()}",
                        "BackendNotFound",
                    )
                places.append(p)
            return places
        places = [p for p in (place(i) for i in range(len(http))) if p is not None]
        if not places:
            raise RouterError(
                f"VirtualService {self.name} has no HTTP route with a destination host {self.services.both()}",
                "BackendNotFound",
            )
        return places
