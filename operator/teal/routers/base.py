"""What every traffic router shares: the interface, errors, the per-colour Services,
weight arithmetic and careful writes to objects that belong to someone else.

Writing to user objects (HTTPRoute, VirtualService, Ingress) follows one rule: Teal only
writes its own fields. Every write is an RFC 6902 JSON patch whose ``test`` operations
pin exactly the values Teal read and replaces only the lists it manages (the backendRefs
of one rule, the destinations of one route, the service name of one Ingress path). A
concurrent edit of those lists makes the patch fail (422), and the write is redone from
a fresh read; concurrent edits anywhere else are simply kept.

Every router records the weights it last wrote in the annotation ``teal.dev/weights`` of
the object it writes them to, so a later call can tell (without memory) that someone else
changed them: that is *drift*, reported by ``set_weights()`` returning True and by
``last_drift``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol, runtime_checkable

from .. import client
from ..api import BLUE, COLORS, GREEN, LABEL_COLOR, LABEL_ROLLOUT, TrafficRouting, other
from ..client import INGRESSES, SERVICES, ApiError, NotFound, Resource

ANNOTATION_WEIGHTS = "teal.dev/weights"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGER = "teal"
JSON_PATCH = client.JSON_PATCH
WRITE_ATTEMPTS = 8


# ---------------------------------------------------------------- interface


class RouterError(Exception):
    """A router cannot do its job; ``str(err)`` is one line fit for a status message.

    ``reason`` is machine-readable (RouteNotFound, BackendNotFound, RouteNameNotFound,
    ServiceNotFound, NotOwned, InvalidRoute, Conflict, APIError); ``transient`` is True
    when retrying later may help without anyone changing anything (apiserver 5xx/429,
    connection errors, too many concurrent writers).
    """

    def __init__(self, message: str, reason: str = "RouterError", transient: bool = False):
        super().__init__(message)
        self.message = message
        self.reason = reason
        self.transient = transient


@runtime_checkable
class Router(Protocol):
    """A weighted traffic router between the two colours. All methods are synchronous
    (the operator calls them in a thread) and read the cluster on every call."""

    kind: str  # "HTTPRoute", "Ingress", "VirtualService"
    name: str  # the user's object
    last_drift: str | None  # set by set_weights(): what someone else had changed (one clause), or None

    def prepare(self) -> None:
        """Create or adopt what the router needs; idempotent; RouterError if it cannot."""

    def set_weights(self, weights: Mapping[str, int]) -> bool:
        """Apply {'blue': 90, 'green': 10}; True when someone else had changed the weights
        Teal last wrote (they were re-applied; see ``last_drift``)."""

    def get_weights(self) -> dict[str, int]:
        """The weights in force, read from the cluster: {'blue': b, 'green': g}."""

    def cleanup(self) -> None:
        """Remove what prepare() made that is not needed without the router."""

    def describe(self) -> dict[str, Any]:
        """A JSON-able picture for status/Events/kubectl: weights, last applied, drift, places."""


class RouterBase:
    """What every router keeps: where it works and for whom (no state about weights)."""

    kind = ""

    def __init__(
        self,
        api: client.Client | Any,
        namespace: str,
        rollout_name: str,
        owner_ref: Mapping[str, Any],
        routing: TrafficRouting,
        services: ColorServices,
    ):
        self.raw = Raw(api)
        self.namespace = namespace
        self.rollout = rollout_name
        self.owner_ref = dict(owner_ref)
        self.routing = routing
        self.services = services
        self.name = routing.name
        self.last_drift: str | None = None


@dataclasses.dataclass(frozen=True)
class ColorServices:
    """The Services a weighted router sends traffic to.

    ``active_services`` are the user's active Services (spec.strategy.blueGreen
    .activeServices); the first one is the template of the per-colour Services
    ``<rollout>-blue`` / ``<rollout>-green`` (ports copied, selector + teal.dev/color).
    """

    rollout: str
    active_services: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.active_services:
            raise ValueError("ColorServices needs at least one active Service")
        object.__setattr__(self, "active_services", tuple(self.active_services))

    @classmethod
    def for_rollout(cls, rollout: str, active_services: Iterable[str]) -> ColorServices:
        return cls(rollout, tuple(active_services))

    @property
    def active(self) -> str:
        return self.active_services[0]

    def name(self, color: str) -> str:
        if color not in COLORS:
            raise ValueError(f"unknown colour {color!r}")
        return f"{self.rollout}-{color}"

    @property
    def names(self) -> dict[str, str]:
        return {c: self.name(c) for c in COLORS}

    def color_of(self, service_name: str | None) -> str | None:
        for c in COLORS:
            if service_name == self.name(c):
                return c
        return None

    def both(self) -> str:
        return f"{self.name(BLUE)} or {self.name(GREEN)}"


# ---------------------------------------------------------------- weights


def normalize_weights(weights: Mapping[str, int]) -> dict[str, int]:
    """Validate {'blue': b, 'green': g} (0..100 each, summing to 100; one key may be
    left out and is then 100 minus the other) and return it with both keys."""
    unknown = set(weights) - set(COLORS)
    if unknown:
        raise ValueError(f"weights name unknown colours {sorted(unknown)}; only {list(COLORS)}")
    if not weights:
        raise ValueError("weights must name at least one colour")
    out: dict[str, int] = {}
    for c in COLORS:
        if c in weights:
            w = weights[c]
            if isinstance(w, bool) or int(w) != w or not 0 <= int(w) <= 100:
                raise ValueError(f"weight of {c} must be an integer 0..100, got {w!r}")
            out[c] = int(w)
    for c in COLORS:
        if c not in out:
            out[c] = 100 - out[other(c)]
    if out[BLUE] + out[GREEN] != 100:
        raise ValueError(f"weights must sum to 100, got {out}")
    return out


def shares(raw: Mapping[str, float]) -> dict[str, int]:
    """Raw relative weights of the two colours in one place -> whole percentages of
    the traffic the two colours get there (blue + green = 100, or both 0 when neither
    gets any)."""
    b, g = float(raw.get(BLUE, 0) or 0), float(raw.get(GREEN, 0) or 0)
    total = b + g
    if total <= 0:
        return {BLUE: 0, GREEN: 0}
    blue = int(round(100 * b / total))
    return {BLUE: blue, GREEN: 100 - blue}


def combine(places: list[dict[str, int]]) -> dict[str, int]:
    """The weights over several places (rules, routes, paths): each colour's guaranteed
    share, i.e. its smallest share anywhere. When all places agree this is exactly their
    weights; when they disagree the result sums to less than 100, so it never equals a
    wanted split and the caller re-applies the weights."""
    if not places:
        return {BLUE: 0, GREEN: 0}
    return {c: min(p[c] for p in places) for c in COLORS}


def format_weights(w: Mapping[str, int] | None) -> str:
    if w is None:
        return "none"
    return "/".join(f"{c} {int(w.get(c, 0))}" for c in COLORS)


def recorded_weights(obj: Mapping[str, Any]) -> dict[str, int] | None:
    """The weights Teal last wrote to this object (its teal.dev/weights annotation)."""
    raw = ((obj.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_WEIGHTS)
    if not raw:
        return None
    try:
        value = json.loads(raw)
        return normalize_weights({k: int(v) for k, v in value.items()})
    except (ValueError, TypeError, AttributeError):
        return None


def weights_annotation(w: Mapping[str, int]) -> str:
    return json.dumps({c: int(w[c]) for c in COLORS}, separators=(",", ":"))


# ---------------------------------------------------------------- JSON patch helpers


def pointer(*parts: Any) -> str:
    """A JSON pointer from path parts (RFC 6901 escaping)."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def annotation_ops(obj: Mapping[str, Any], key: str, value: str) -> list[dict[str, Any]]:
    """JSON patch ops that set one annotation and nothing else."""
    meta = obj.get("metadata") or {}
    annotations = meta.get("annotations")
    if annotations is None:
        # Creating the map could overwrite one made concurrently: pin the resourceVersion.
        return [
            {"op": "test", "path": "/metadata/resourceVersion", "value": meta.get("resourceVersion")},
            {"op": "add", "path": "/metadata/annotations", "value": {key: value}},
        ]
    if annotations.get(key) == value:
        return []
    return [{"op": "add", "path": pointer("metadata", "annotations", key), "value": value}]


def replace_ops(path: tuple[Any, ...], old: Any, new: Any) -> list[dict[str, Any]]:
    """test that `path` still holds `old`, then replace it with `new` (no ops if equal)."""
    if old == new:
        return []
    p = pointer(*path)
    return [{"op": "test", "path": p, "value": old}, {"op": "replace", "path": p, "value": new}]


def is_patch_conflict(exc: ApiError) -> bool:
    """A failed JSON-patch `test` (422 without field causes) or a 409 Conflict."""
    return isinstance(exc, client.Conflict) or (exc.status == 422 and not exc.causes)


def api_error(exc: ApiError, what: str) -> RouterError:
    """An unexpected apiserver answer (or none) as a one-line RouterError."""
    transient = isinstance(exc, client.Transient)
    if exc.status == 0:
        return RouterError(f"{what}: cannot reach the apiserver: {exc.message}", "APIError", transient=True)
    return RouterError(f"{what}: {exc.status} {exc.quoted()}".strip(), "APIError", transient=transient)


def retry_writes(fn: Callable[[int], bool | None], what: str, attempts: int = WRITE_ATTEMPTS) -> bool | None:
    """Run fn(attempt) until it does not raise a write conflict; fn re-reads each time."""
    for attempt in range(attempts):
        try:
            return fn(attempt)
        except ApiError as exc:
            if not is_patch_conflict(exc):
                raise api_error(exc, what) from exc
            time.sleep(min(0.02 * (2**attempt), 0.5))
    raise RouterError(
        f"{what}: gave up after {attempts} attempts, the object kept changing under Teal",
        "Conflict",
        transient=True,
    )


class Raw:
    """The routers' access to the apiserver (teal.client): reads fail as RouterError (None
    when the object does not exist); writes raise teal.client.ApiError for retry_writes."""

    def __init__(self, api: client.Client | Any):
        self.client = client.Client.of(api)

    def read(self, res: Resource, ns: str, name: str, kind: str) -> dict[str, Any] | None:
        """An object as plain JSON; None when it does not exist."""
        try:
            # a copy: the routers edit what they read, and a caching client returns its stored object
            return copy.deepcopy(self.client.get(res, ns, name))
        except NotFound as exc:  # the resource type itself is missing
            raise RouterError(
                f"the {kind} API ({res.group or 'core'}/{res.version}) is not served by this cluster; are its CRDs installed?",
                "APINotFound",
            ) from exc
        except ApiError as exc:
            raise api_error(exc, f"reading {kind} {name}") from exc

    def get_service(self, ns: str, name: str) -> dict[str, Any] | None:
        return self.read(SERVICES, ns, name, "Service")

    def get_ingress(self, ns: str, name: str) -> dict[str, Any] | None:
        return self.read(INGRESSES, ns, name, "Ingress")

    def get_custom(self, group: str, version: str, plural: str, ns: str, name: str, kind: str) -> dict[str, Any] | None:
        return self.read(Resource(group, version, plural), ns, name, kind)

    def patch_custom(
        self, group: str, version: str, plural: str, ns: str, name: str, ops: list[dict[str, Any]]
    ) -> dict[str, Any]:
        return self.client.json_patch(Resource(group, version, plural), ns, name, ops)


# ---------------------------------------------------------------- ownership


def owned_by(obj: Mapping[str, Any], owner_ref: Mapping[str, Any]) -> bool:
    uid = owner_ref.get("uid")
    return any(r.get("uid") == uid for r in (obj.get("metadata") or {}).get("ownerReferences") or [])


def teal_labels(rollout: str, **extra: str) -> dict[str, str]:
    return {LABEL_ROLLOUT: rollout, LABEL_MANAGED_BY: MANAGER, **extra}


def may_manage(obj: Mapping[str, Any], rollout: str, owner_ref: Mapping[str, Any]) -> bool:
    """Teal manages an object it owns, or one labelled teal.dev/rollout=<rollout> (adoption)."""
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return owned_by(obj, owner_ref) or labels.get(LABEL_ROLLOUT) == rollout


# ---------------------------------------------------------------- per-colour Services

_PORT_FIELDS = ("name", "protocol", "port", "targetPort", "appProtocol")


def _service_ports(active: Mapping[str, Any]) -> list[dict[str, Any]]:
    ports = []
    for p in (active.get("spec") or {}).get("ports") or []:
        port = {k: p[k] for k in _PORT_FIELDS if p.get(k) is not None}
        port.setdefault("protocol", "TCP")
        port.setdefault("targetPort", port["port"])
        ports.append(port)
    return ports


def _ports_equal(a: list[Mapping[str, Any]], b: list[Mapping[str, Any]]) -> bool:
    def key(p: Mapping[str, Any]) -> tuple:
        return tuple(str(p.get(k)) for k in _PORT_FIELDS)

    return sorted(map(key, a)) == sorted(map(key, b))


def ensure_color_services(
    api: client.Client | Any,
    namespace: str,
    rollout_name: str,
    active_service: str,
    owner_ref: Mapping[str, Any],
    port: int | None = None,
) -> dict[str, str]:
    """Create or update the Services ``<rollout>-blue`` and ``<rollout>-green``.

    Each copies the ports of ``active_service`` and its selector (without teal.dev/color),
    adding ``teal.dev/color: <colour>``; it is ClusterIP, labelled teal.dev/rollout and
    owned by the Rollout (``owner_ref``), so it goes away with it. An existing Service of
    that name is updated when Teal owns it or it carries ``teal.dev/rollout: <rollout>``
    (then it is adopted: ports and selector set, owner reference added); any other
    Service of that name is a RouterError, never overwritten. ``port``, when given,
    must be one of the active Service's ports. ``api`` is a teal.client.Client (or anything
    teal.client.Client.of takes). Returns {colour: Service name}.
    """
    raw = Raw(api)
    selector, ports = _color_service_source(raw, namespace, rollout_name, active_service, port)
    names = {}
    for color in COLORS:
        name = names[color] = f"{rollout_name}-{color}"
        want = {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": teal_labels(rollout_name, **{LABEL_COLOR: color}),
                "ownerReferences": [dict(owner_ref)],
            },
            "spec": {"type": "ClusterIP", "selector": {**selector, LABEL_COLOR: color}, "ports": ports},
        }

        def once(attempt: int, want: dict[str, Any] = want) -> None:
            _ensure_color_service(raw, namespace, rollout_name, want, owner_ref)

        retry_writes(once, f"Service {name}")  # 409: a racing create or a stale resourceVersion
    return names


def _color_service_source(
    raw: Raw, namespace: str, rollout_name: str, active_service: str, port: int | None
) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """The selector (without teal.dev/color) and ports of the active Service, or RouterError."""
    active = raw.get_service(namespace, active_service)
    if active is None:
        raise RouterError(
            f"Service {active_service} not found in namespace {namespace}; the per-colour Services copy its ports and selector",
            "ServiceNotFound",
        )
    selector = dict((active.get("spec") or {}).get("selector") or {})
    selector.pop(LABEL_COLOR, None)
    if not selector:
        raise RouterError(
            f"Service {active_service} has no selector (besides {LABEL_COLOR}); "
            f"Teal cannot derive {rollout_name}-blue/{rollout_name}-green from it",
            "InvalidService",
        )
    ports = _service_ports(active)
    if not ports:
        raise RouterError(f"Service {active_service} has no ports to copy", "InvalidService")
    if port is not None and all(p["port"] != port for p in ports):
        have = ", ".join(str(p["port"]) for p in ports)
        raise RouterError(
            f"trafficRouting port {port} is not a port of Service {active_service} (ports: {have})",
            "InvalidService",
        )
    return selector, ports


def _ensure_color_service(
    raw: Raw, namespace: str, rollout_name: str, want: Mapping[str, Any], owner_ref: Mapping[str, Any]
) -> None:
    """One attempt: create the Service, or bring Teal's fields of an existing one in line
    (a replace guarded by the resourceVersion read: 409 -> retry from a fresh read)."""
    name = want["metadata"]["name"]
    svc = raw.get_service(namespace, name)
    if svc is None:
        raw.client.create(SERVICES, namespace, want)
        return
    if not may_manage(svc, rollout_name, owner_ref):
        raise RouterError(
            f"Service {name} exists and does not belong to Rollout {rollout_name} "
            f"(not owned by it, no label {LABEL_ROLLOUT}={rollout_name}); Teal will not overwrite it",
            "NotOwned",
        )
    meta, spec = svc["metadata"], svc.setdefault("spec", {})
    changed = False
    if spec.get("selector") != want["spec"]["selector"]:
        spec["selector"] = want["spec"]["selector"]
        changed = True
    if not _ports_equal(spec.get("ports") or [], want["spec"]["ports"]):
        spec["ports"] = want["spec"]["ports"]
        changed = True
    labels = meta.setdefault("labels", {})
    if any(labels.get(k) != v for k, v in want["metadata"]["labels"].items()):
        labels.update(want["metadata"]["labels"])
        changed = True
    if not owned_by(svc, owner_ref):
        meta.setdefault("ownerReferences", []).append(dict(owner_ref))
        changed = True
    if changed:
        raw.client.replace(SERVICES, namespace, name, svc)


# ---------------------------------------------------------------- drift


def drift_message(recorded: Mapping[str, int] | None, found: Mapping[str, int], detail: str = "") -> str | None:
    """What someone else changed, when Teal's last weights are no longer in force, else None.
    One clause without the object's name, e.g. "weights were blue 100/green 0, but Teal had
    set blue 90/green 10" (the caller says which object and that they were re-applied)."""
    if recorded is None:
        return None
    if all(found.get(c) == recorded[c] for c in COLORS) and not detail:
        return None
    what = detail or f"weights were {format_weights(found)}"
    return f"{what}, but Teal had set {format_weights(recorded)}"
