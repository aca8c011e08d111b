"""The common machinery of routers that keep weights in lists inside one user object:
the backendRefs of HTTPRoute rules (Gateway API) and the destinations of VirtualService
HTTP routes (Istio).

A *place* is one such list that holds at least one entry for a colour Service. Teal
writes the weight of the colour entries of every place and nothing else; a place that
lists only one colour gets the other one added (a copy of its sibling entry with the
name changed) so both colours can receive traffic. Entries for other backends keep
their weights: the percentages Teal reads and writes are those of blue versus green.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from ..api import COLORS, other
from .base import (
    ANNOTATION_WEIGHTS,
    RouterBase,
    RouterError,
    annotation_ops,
    combine,
    drift_message,
    ensure_color_services,
    format_weights,
    normalize_weights,
    pointer,
    recorded_weights,
    replace_ops,
    retry_writes,
    shares,
    weights_annotation,
)


@dataclasses.dataclass
class Place:
    """One list of weighted entries inside the object."""

    label: str  # "rule 0", "route 'primary'"
    path: tuple[Any, ...]  # JSON path of the list
    items: list[dict[str, Any]]
    index: dict[str, list[int]]  # colour -> positions of its entries in items
    guards: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # extra `test` ops

    @property
    def missing(self) -> list[str]:
        return [c for c in COLORS if not self.index[c]]


class ListRouter(RouterBase):
    """Base of GatewayAPIRouter and IstioRouter; subclasses describe the object."""

    kind = ""
    group = ""
    version = ""
    fallback_versions: tuple[str, ...] = ()  # older API versions to try when `version` is not served
    plural = ""
    entry_word = "entry"

    # -- what subclasses provide
    def entry_color(self, entry: Mapping[str, Any]) -> str | None:
        raise NotImplementedError

    def raw_weight(self, entry: Mapping[str, Any], items: Sequence[Mapping[str, Any]]) -> float:
        raise NotImplementedError

    def with_weight(self, entry: Mapping[str, Any], weight: int) -> dict[str, Any]:
        out = copy.deepcopy(dict(entry))
        out["weight"] = weight
        return out

    def new_entry(self, sibling: Mapping[str, Any], color: str) -> dict[str, Any]:
        raise NotImplementedError

    def find_places(self, obj: Mapping[str, Any]) -> list[Place]:
        raise NotImplementedError

    # -- shared
    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.namespace}/{self.name}>"

    def _place(self, label: str, path: tuple[Any, ...], items: list[dict[str, Any]], guards=None) -> Place | None:
        index: dict[str, list[int]] = {c: [] for c in COLORS}
        for i, entry in enumerate(items):
            c = self.entry_color(entry)
            if c is not None:
                index[c].append(i)
        if not any(index.values()):
            return None
        return Place(label, path, items, index, list(guards or []))

    def read(self) -> dict[str, Any]:
        try:
            obj = self.raw.get_custom(self.group, self.version, self.plural, self.namespace, self.name, self.kind)
        except RouterError as err:
            older = [v for v in self.fallback_versions if v != self.version]
            if err.reason != "APINotFound" or not older:
                raise
            for version in older:  # e.g. a cluster with an older Gateway API or Istio
                try:
                    obj = self.raw.get_custom(self.group, version, self.plural, self.namespace, self.name, self.kind)
                except RouterError as again:
                    if again.reason != "APINotFound":
                        raise
                    continue
                self.version = version  # write with the version that is served
                break
            else:
                raise
        if obj is None:
            raise RouterError(f"{self.kind} {self.name} not found in namespace {self.namespace}", "RouteNotFound")
        return obj

    def place_shares(self, place: Place) -> dict[str, int]:
        raw = {c: sum(self.raw_weight(place.items[i], place.items) for i in place.index[c]) for c in COLORS}
        return shares(raw)

    def weighted_items(self, place: Place, weights: Mapping[str, int] | None) -> list[dict[str, Any]]:
        """The place's list with both colours present and (if given) Teal's weights set.
        The first entry of a colour carries its weight, further ones get 0."""
        items = copy.deepcopy(place.items)
        index = {c: list(v) for c, v in place.index.items()}
        for c in COLORS:
            if not index[c]:
                sibling = items[index[other(c)][0]]
                entry = self.new_entry(sibling, c)
                entry["weight"] = 0
                items.append(entry)
                index[c].append(len(items) - 1)
        if weights is not None:
            for c in COLORS:
                for n, i in enumerate(index[c]):
                    items[i] = self.with_weight(items[i], weights[c] if n == 0 else 0)
        return items

    def _ops(self, place: Place, new: list[dict[str, Any]]) -> list[dict[str, Any]]:
        ops = replace_ops(place.path, place.items, new)
        return (place.guards + ops) if ops else []

    def _patch(self, ops: list[dict[str, Any]]) -> None:
        self.raw.patch_custom(self.group, self.version, self.plural, self.namespace, self.name, ops)

    # -- the Router interface
    def prepare(self) -> None:
        ensure_color_services(
            self.raw.client, self.namespace, self.rollout, self.services.active, self.owner_ref, self.routing.port
        )

        def once(attempt: int) -> None:
            obj = self.read()
            ops: list[dict[str, Any]] = []
            for place in self.find_places(obj):
                if place.missing:  # add the absent colour with weight 0: traffic does not change
                    ops += self._ops(place, self.weighted_items(place, None))
            if ops:
                self._patch(ops)

        retry_writes(once, f"{self.kind} {self.name}")

    def get_weights(self) -> dict[str, int]:
        obj = self.read()
        return combine([self.place_shares(p) for p in self.find_places(obj)])

    def set_weights(self, weights: Mapping[str, int]) -> bool:
        want = normalize_weights(weights)
        drift: list[str | None] = [None]

        def once(attempt: int) -> None:
            obj = self.read()
            places = self.find_places(obj)
            found = combine([self.place_shares(p) for p in places])
            lost = [f"{p.label} had no {self.entry_word} to {self.services.name(c)}" for p in places for c in p.missing]
            # one atomic patch per attempt: every attempt sees someone else's state
            drift[0] = drift[0] or drift_message(recorded_weights(obj), found, "; ".join(lost))
            ops: list[dict[str, Any]] = []
            for place in places:
                ops += self._ops(place, self.weighted_items(place, want))
            ops += annotation_ops(obj, ANNOTATION_WEIGHTS, weights_annotation(want))
            if ops:
                self._patch(ops)

        retry_writes(once, f"{self.kind} {self.name}")
        self.last_drift = drift[0]
        return drift[0] is not None

    def cleanup(self) -> None:
        """Nothing to delete: the route is the user's, and the per-colour Services stay
        (the route still sends traffic to them; they go away with the Rollout)."""

    def describe(self) -> dict[str, Any]:
        obj = self.read()
        places = self.find_places(obj)
        per_place = []
        for p in places:
            s = self.place_shares(p)
            per_place.append(f"{p.label}: {format_weights(s)}" + (f" (no {', '.join(p.missing)})" if p.missing else ""))
        weights = combine([self.place_shares(p) for p in places])
        recorded = recorded_weights(obj)
        return {
            "kind": self.kind,
            "name": self.name,
            "weights": weights,
            "lastApplied": recorded,
            "drifted": recorded is not None and recorded != weights,
            "places": per_place,
        }


def find_named(items: list[Mapping[str, Any]], name: str) -> int | None:
    for i, item in enumerate(items):
        if item.get("name") == name:
            return i
    return None


__all__ = ["ListRouter", "Place", "find_named", "pointer"]
