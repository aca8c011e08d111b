"""Gateway API: the weights of two backendRefs of an HTTPRoute the user names.

The user writes the HTTPRoute (hostnames, parentRefs, matches, filters...) and, in each
rule that should be shifted, a backendRef to ``<rollout>-blue`` and/or
``<rollout>-green`` (kind Service, this namespace). Teal manages the ``weight`` of those
backendRefs in every rule that lists at least one of them, and nothing else:

* a rule that lists only one colour gets the other one added by ``prepare()`` (a copy of
  the listed backendRef with the name changed, weight 0: traffic does not move);
* rules without a colour backendRef are left alone (for instance a rule that sends to
  the active Service, which follows the selector switch);
* when no rule references either colour, that is a RouterError: Teal does not rewrite a
  rule's backends on its own.

Teal's writes are JSON patches that pin (``test``) and replace the backendRefs list of
each managed rule, plus the annotation teal.dev/weights.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

from .base import RouterError
from .weighted import ListRouter, Place


class GatewayAPIRouter(ListRouter):
    kind = "HTTPRoute"
    group = "gateway.networking.k8s.io"
    version = "v1"
    fallback_versions = ("v1beta1",)
    plural = "httproutes"
    entry_word = "backendRef"

    def _service_ref(self, ref: Mapping[str, Any]) -> bool:
        return (
            ref.get("group") in (None, "")
            and ref.get("kind") in (None, "Service")
            and ref.get("namespace") in (None, "", self.namespace)
        )

    def entry_color(self, entry: Mapping[str, Any]) -> str | None:
        if not self._service_ref(entry):
            return None
        return self.services.color_of(entry.get("name"))

    def raw_weight(self, entry: Mapping[str, Any], items: Sequence[Mapping[str, Any]]) -> float:
        w = entry.get("weight")
        return 1.0 if w is None else float(w)  # the Gateway API default weight is 1

    def new_entry(self, sibling: Mapping[str, Any], color: str) -> dict[str, Any]:
        entry = copy.deepcopy(dict(sibling))
        entry["name"] = self.services.name(color)
        if entry.get("port") is None and self.routing.port is not None:
            entry["port"] = self.routing.port
        return entry

    def find_places(self, obj: Mapping[str, Any]) -> list[Place]:
        rules = (obj.get("spec") or {}).get("rules") or []
        places = []
        for i, rule in enumerate(rules):
            place = self._place(f"rule {i}", ("spec", "rules", i, "backendRefs"), rule.get("backendRefs") or [])
            if place is not None:
                places.append(place)
        if places:
            return places
        hint = ""
        active = set(self.services.active_services)
        to_active = [
            i
            for i, rule in enumerate(rules)
            if any(self._service_ref(r) and r.get("name") in active for r in rule.get("backendRefs") or [])
        ]
        if to_active:
            rules_text = ", ".join(str(i) for i in to_active)
            hint = (
                f" (rule {rules_text} sends to the active Service {self.services.active}; "
                f"list backendRefs {self.services.name('blue')} and {self.services.name('green')} there instead)"
            )
        raise RouterError(
            f"HTTPRoute {self.name} has no backendRef to {self.services.both()}{hint}",
            "BackendNotFound",
        )
