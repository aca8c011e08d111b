"""NGINX Ingress: a canary Ingress beside the user's Ingress.

The user names their Ingress (the *primary*). Its paths whose backend is an active
Service (``checkout``, switched by the Service selector) or a colour Service
(``checkout-blue`` / ``checkout-green``) are the *managed paths*; other paths and the
default backend are left alone. Teal creates ``<ingress>-teal-canary``, owned by the
Rollout, with the same hosts and managed paths, backends on one colour Service and the
annotations ``nginx.ingress.kubernetes.io/canary: "true"`` and ``canary-weight: "<w>"``.
ingress-nginx then sends w% of each managed path to the canary colour and the rest to
the primary's backend.

Which colour the primary serves is read, never remembered: from the colour Service name
in its backend, or from the ``teal.dev/color`` of the active Service's selector. So
``get_weights()`` is honest per path ({canary colour: w, primary colour: 100 - w}), and
when the two disagree between paths it reports each colour's smallest share.

``set_weights()``:

* a split (e.g. blue 90 / green 10): the canary points at the colour the primary does
  not serve, with that colour's weight;
* all on one colour (100/0): if the primary already serves it, canary weight 0. If it
  does not and the primary's backends are colour Services, Teal moves the primary
  without a gap: canary -> that colour at 100, then the primary's backend service name
  -> that colour, then canary weight 0. If the primary's backend is the active Service
  (whose selector the operator switches, not the router), the canary holds 100 until the
  selector follows; ``prepare()`` then folds the canary back to weight 0 (traffic does
  not move).

The only field of the primary Teal ever writes is ``backend.service.name`` of managed
paths that already name a colour Service (JSON patch with ``test``). The canary is
Teal's: it is rewritten whole (guarded by resourceVersion) and follows the primary's
hosts, paths and class.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from typing import Any

from ..api import COLORS, LABEL_COLOR, other
from ..client import INGRESSES, ApiError
from .base import (
    ANNOTATION_WEIGHTS,
    RouterBase,
    RouterError,
    annotation_ops,
    api_error,
    combine,
    drift_message,
    ensure_color_services,
    format_weights,
    may_manage,
    normalize_weights,
    recorded_weights,
    replace_ops,
    retry_writes,
    teal_labels,
    weights_annotation,
)

NGINX_PREFIX = "nginx.ingress.kubernetes.io/"
CANARY = NGINX_PREFIX + "canary"
CANARY_WEIGHT = NGINX_PREFIX + "canary-weight"
CANARY_TOTAL = NGINX_PREFIX + "canary-weight-total"
CLASS_ANNOTATION = "kubernetes.io/ingress.class"
CANARY_SUFFIX = "-teal-canary"


@dataclasses.dataclass
class _Path:
    rule: int
    index: int
    host: str | None
    path: str | None
    path_type: str | None
    service: str
    port: dict[str, Any]
    color: str | None  # the colour it serves (None: unknown)
    switchable: bool  # backend is a colour Service (Teal may rename it)

    @property
    def key(self) -> tuple:
        return (self.host or "", self.path or "", self.path_type or "")


@dataclasses.dataclass
class _Canary:
    obj: dict[str, Any] | None
    color: str | None
    weight: int  # percent
    valid: bool  # an actual canary (annotation canary: "true", one colour)
    keys: set[tuple]


class NginxRouter(RouterBase):
    kind = "Ingress"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.canary_name = self.routing.name + CANARY_SUFFIX

    def __repr__(self) -> str:
        return f"<NginxRouter {self.namespace}/{self.name}>"

    # ------------------------------------------------------------ reading

    def _read_primary(self) -> tuple[dict[str, Any], list[_Path]]:
        obj = self.raw.get_ingress(self.namespace, self.name)
        if obj is None:
            raise RouterError(f"Ingress {self.name} not found in namespace {self.namespace}", "RouteNotFound")
        active = set(self.services.active_services)
        selector_color: dict[str, str | None] = {}
        paths: list[_Path] = []
        for i, rule in enumerate((obj.get("spec") or {}).get("rules") or []):
            for j, p in enumerate((rule.get("http") or {}).get("paths") or []):
                svc = (p.get("backend") or {}).get("service") or {}
                name = svc.get("name")
                color = self.services.color_of(name)
                if not isinstance(name, str) or (color is None and name not in active):
                    continue
                if color is None:
                    if name not in selector_color:
                        service = self.raw.get_service(self.namespace, name)
                        sel = ((service or {}).get("spec") or {}).get("selector") or {}
                        selector_color[name] = sel.get(LABEL_COLOR) if sel.get(LABEL_COLOR) in COLORS else None
                    color = selector_color[name]
                paths.append(
                    _Path(
                        i,
                        j,
                        rule.get("host"),
                        p.get("path"),
                        p.get("pathType"),
                        name,
                        dict(svc.get("port") or {}),
                        color,
                        self.services.color_of(name) is not None,
                    )
                )
        if not paths:
            names = ", ".join([*self.services.active_services, *self.services.names.values()])
            raise RouterError(f"Ingress {self.name} has no path whose backend is Service {names}", "BackendNotFound")
        return obj, paths

    def _read_canary(self) -> _Canary:
        obj = self.raw.get_ingress(self.namespace, self.canary_name)
        if obj is None:
            return _Canary(None, None, 0, True, set())
        if not may_manage(obj, self.rollout, self.owner_ref):
            raise RouterError(
                f"Ingress {self.canary_name} exists and does not belong to Rollout {self.rollout}; Teal will not overwrite it",
                "NotOwned",
            )
        ann = (obj.get("metadata") or {}).get("annotations") or {}
        colors, keys = set(), set()
        for rule in (obj.get("spec") or {}).get("rules") or []:
            for p in (rule.get("http") or {}).get("paths") or []:
                colors.add(self.services.color_of(((p.get("backend") or {}).get("service") or {}).get("name")))
                keys.add((rule.get("host") or "", p.get("path") or "", p.get("pathType") or ""))
        try:
            w = int(ann.get(CANARY_WEIGHT) or 0)
            total = int(ann.get(CANARY_TOTAL) or 100)
            weight = max(0, min(100, round(100 * w / total))) if total > 0 else 0
        except ValueError:
            weight, total = 0, 0
        color = colors.pop() if len(colors) == 1 else None
        valid = ann.get(CANARY) == "true" and total > 0 and (color is not None or not keys)
        return _Canary(obj, color, weight, valid, keys)

    @staticmethod
    def _path_weights(p: _Path, canary: _Canary) -> dict[str, int]:
        c, w = canary.color, canary.weight
        if not canary.valid or (canary.obj is not None and p.key in canary.keys and c is None):
            return {col: 0 for col in COLORS}
        if canary.obj is None or p.key not in canary.keys:
            c, w = None, 0
        if c is not None and w >= 100:
            return {c: 100, other(c): 0}
        if p.color is None:
            return {c: w, other(c): 0} if c is not None and w > 0 else {col: 0 for col in COLORS}
        if c is None or w == 0 or c == p.color:
            return {p.color: 100, other(p.color): 0}
        return {c: w, p.color: 100 - w}

    def _weights(self, paths: list[_Path], canary: _Canary) -> dict[str, int]:
        return combine([self._path_weights(p, canary) for p in paths])

    # ------------------------------------------------------------ writing

    def _canary_body(
        self, primary: dict[str, Any], paths: list[_Path], color: str, weight: int, existing: dict[str, Any] | None
    ) -> dict[str, Any]:
        rules: list[dict[str, Any]] = []
        by_rule: dict[int, dict[str, Any]] = {}
        for p in paths:
            if p.rule not in by_rule:
                rule: dict[str, Any] = {"http": {"paths": []}}
                if p.host:
                    rule["host"] = p.host
                by_rule[p.rule] = rule
                rules.append(rule)
            port = {"number": self.routing.port} if self.routing.port is not None else p.port
            entry: dict[str, Any] = {"backend": {"service": {"name": self.services.name(color), "port": port}}}
            if p.path is not None:
                entry["path"] = p.path
            if p.path_type is not None:
                entry["pathType"] = p.path_type
            by_rule[p.rule]["http"]["paths"].append(entry)
        pmeta = primary.get("metadata") or {}
        old_meta = copy.deepcopy((existing or {}).get("metadata") or {})
        annotations = {k: v for k, v in (old_meta.get("annotations") or {}).items() if not k.startswith(NGINX_PREFIX)}
        annotations.pop(CLASS_ANNOTATION, None)
        annotations.update({CANARY: "true", CANARY_WEIGHT: str(weight)})
        if (pmeta.get("annotations") or {}).get(CLASS_ANNOTATION):
            annotations[CLASS_ANNOTATION] = pmeta["annotations"][CLASS_ANNOTATION]
        labels = {**(old_meta.get("labels") or {}), **teal_labels(self.rollout)}
        owners = list(old_meta.get("ownerReferences") or [])
        if not any(o.get("uid") == self.owner_ref.get("uid") for o in owners):
            owners.append(dict(self.owner_ref))
        spec: dict[str, Any] = {"rules": rules}
        if (primary.get("spec") or {}).get("ingressClassName"):
            spec["ingressClassName"] = primary["spec"]["ingressClassName"]
        meta = {
            **old_meta,
            "name": self.canary_name,
            "namespace": self.namespace,
            "labels": labels,
            "annotations": annotations,
            "ownerReferences": owners,
        }
        return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": meta, "spec": spec}

    def _write_canary(self, primary: dict[str, Any], paths: list[_Path], canary: _Canary, color: str, weight: int) -> _Canary:
        body = self._canary_body(primary, paths, color, weight, canary.obj)
        if canary.obj is None:
            body = self.raw.client.create(INGRESSES, self.namespace, body)
        else:
            old = canary.obj
            same = (
                (old.get("spec") or {}).get("rules") == body["spec"]["rules"]
                and (old.get("spec") or {}).get("ingressClassName") == body["spec"].get("ingressClassName")
                and (old.get("metadata") or {}).get("annotations") == body["metadata"]["annotations"]
                and (old.get("metadata") or {}).get("labels") == body["metadata"]["labels"]
                and (old.get("metadata") or {}).get("ownerReferences") == body["metadata"]["ownerReferences"]
            )
            if not same:  # replace guarded by the resourceVersion read (409 -> retry)
                body = self.raw.client.replace(INGRESSES, self.namespace, self.canary_name, body)
            else:
                body = old
        return _Canary(body, color, weight, True, {p.key for p in paths})

    def _patch_primary(self, primary: dict[str, Any], paths: list[_Path], color: str | None, record: str | None = None) -> None:
        """Point the switchable managed paths at `color` and/or record Teal's weights."""
        ops: list[dict[str, Any]] = []
        if color is not None:
            target = self.services.name(color)
            for p in paths:
                if p.switchable:
                    path = ("spec", "rules", p.rule, "http", "paths", p.index, "backend", "service", "name")
                    ops += replace_ops(path, p.service, target)
        if record is not None:
            ops += annotation_ops(primary, ANNOTATION_WEIGHTS, record)
        if ops:
            self.raw.client.json_patch(INGRESSES, self.namespace, self.name, ops)
        if color is not None:
            for p in paths:
                if p.switchable:
                    p.service, p.color = self.services.name(color), color

    # ------------------------------------------------------------ the Router interface

    def prepare(self) -> None:
        ensure_color_services(
            self.raw.client, self.namespace, self.rollout, self.services.active, self.owner_ref, self.routing.port
        )

        def once(attempt: int) -> None:
            primary, paths = self._read_primary()
            canary = self._read_canary()
            served = {p.color for p in paths}
            p = served.pop() if len(served) == 1 else None
            if canary.obj is not None and canary.valid and canary.color is not None:
                color, weight = canary.color, canary.weight
            else:  # no canary yet, or a broken one: weight 0, or what Teal last set
                recorded = recorded_weights(primary)
                color = other(p) if p else COLORS[0]
                weight = recorded[color] if recorded and canary.obj is not None and p else 0
            if p is not None and color == p:  # the canary serves what the primary serves: fold it
                color, weight = other(p), 0
            self._write_canary(primary, paths, canary, color, weight)

        retry_writes(once, f"Ingress {self.canary_name}")

    def get_weights(self) -> dict[str, int]:
        _, paths = self._read_primary()
        return self._weights(paths, self._read_canary())

    def set_weights(self, weights: Mapping[str, int]) -> bool:
        want = normalize_weights(weights)
        record = weights_annotation(want)
        drift: list[str | None] = [None]
        wrote = [False]  # after Teal's own first write, what it reads is no longer drift

        def once(attempt: int) -> None:
            primary, paths = self._read_primary()
            canary = self._read_canary()
            if not wrote[0]:
                found = self._weights(paths, canary)
                recorded = recorded_weights(primary)
                detail = ""
                if canary.obj is None and recorded is not None:
                    detail = f"canary Ingress {self.canary_name} was missing"
                elif canary.obj is not None and not canary.valid:
                    detail = f"canary Ingress {self.canary_name} was not a valid canary"
                drift[0] = drift[0] or drift_message(recorded, found, detail)

            served = {p.color for p in paths}
            foldable = all(p.switchable for p in paths)  # Teal may move every managed path
            full = next((c for c in COLORS if want[c] == 100), None)
            move_to: str | None = None  # the colour to point the primary's paths at
            if full is not None:
                if served == {full}:
                    final = (other(full), 0)
                elif foldable:  # make before break: the canary takes all, then the primary moves
                    canary = self._write_canary(primary, paths, canary, full, 100)
                    wrote[0] = True
                    move_to, final = full, (other(full), 0)
                else:  # the primary follows the active Service's selector, not Teal's router
                    final = (full, 100)
            else:
                if len(served) == 1 and None not in served:
                    p = next(c for c in served if c is not None)
                elif foldable:
                    p = move_to = max(COLORS, key=lambda c: want[c])
                else:
                    raise self._no_primary_color(paths, want)
                final = (other(p), want[other(p)])
            if move_to is not None:
                self._patch_primary(primary, paths, move_to, record)
                wrote[0] = True
                self._write_canary(primary, paths, canary, *final)
            else:
                self._write_canary(primary, paths, canary, *final)
                wrote[0] = True
                self._patch_primary(primary, paths, None, record)

        retry_writes(once, f"Ingress {self.name}")
        self.last_drift = drift[0]
        return drift[0] is not None

    def _no_primary_color(self, paths: list[_Path], want: Mapping[str, int]) -> RouterError:
        unknown = sorted({x.service for x in paths if x.color is None})
        why = (
            f"Service {', '.join(unknown)} selects no colour ({LABEL_COLOR})"
            if unknown
            else "its managed paths serve different colours"
        )
        return RouterError(
            f"Ingress {self.name}: cannot split traffic {format_weights(want)} while {why}",
            "NoPrimaryColor",
            transient=True,
        )

    def cleanup(self) -> None:
        """Delete the canary Ingress (only if it is Teal's). Its weight goes with it, so
        call this when the primary serves what should be served (weights 100/0)."""
        canary = self.raw.get_ingress(self.namespace, self.canary_name)
        if canary is None:
            return
        if not may_manage(canary, self.rollout, self.owner_ref):
            return
        try:  # None: gone already; Conflict: replaced by a new one of that name in between
            self.raw.client.delete(INGRESSES, self.namespace, self.canary_name, uid=canary["metadata"]["uid"])
        except ApiError as exc:
            if exc.status != 409:
                raise api_error(exc, f"deleting Ingress {self.canary_name}") from exc

    def describe(self) -> dict[str, Any]:
        primary, paths = self._read_primary()
        canary = self._read_canary()
        weights = self._weights(paths, canary)
        recorded = recorded_weights(primary)
        places = [
            f"{p.host or '*'}{p.path or ''} -> {p.service} ({p.color or 'no colour'}): "
            f"{format_weights(self._path_weights(p, canary))}"
            for p in paths
        ]
        return {
            "kind": self.kind,
            "name": self.name,
            "canary": self.canary_name if canary.obj is not None else None,
            "canaryColor": canary.color,
            "canaryWeight": canary.weight,
            "weights": weights,
            "lastApplied": recorded,
            "drifted": recorded is not None and recorded != weights,
            "places": places,
        }
