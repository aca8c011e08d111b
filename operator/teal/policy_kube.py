"""ReleasePolicies and ClusterReleasePolicies in the cluster, turned into the gates of one Rollout
(teal.policy.Gate, evaluated by teal.core.decide), and each policy's own status (Ready=False with
the reason for what CEL cannot check: an unknown time zone, an invalid cron schedule).

Policies are cached (`Policies`, one per Controller) from kopf watch events; a change wakes the
Rollouts it may concern, so a freeze or an unfreeze acts at once. A single Rollout is frozen by its annotation
`teal.dev/freeze: {"reason": ..., "by": ..., "until": ...}` (kubectl teal freeze NAME).

Test clock: with TEAL_DEV_CLOCK_FILE set in the operator's environment (never by the chart), the
operator's "now" is the real time plus the seconds in that file, and it logs a warning at start.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import os
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import kopf

from . import policy as P
from .api import GROUP, PLURAL, VERSION, ReleasePolicyRef, SpecError, parse_release_policy
from .client import NAMESPACES, ApiError, Client, Resource


class Operator(Protocol):
    """What the policy watches need of teal.controller.Controller (no import: no circle)."""

    policies: Policies

    @property
    def loops(self) -> Mapping[tuple[str, str], Any]: ...

    kube: Any

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any: ...

    def owns(self, namespace: str | None) -> bool: ...


log = logging.getLogger("teal")

FREEZE_ANNOTATION = "teal.dev/freeze"
DEV_CLOCK_ENV = "TEAL_DEV_CLOCK_FILE"
ROLLOUTS = Resource(GROUP, VERSION, PLURAL)
KINDS = {"releasepolicies": "ReleasePolicy", "clusterreleasepolicies": "ClusterReleasePolicy"}
RESOURCES = {
    "releasepolicies": Resource(GROUP, VERSION, "releasepolicies"),
    "clusterreleasepolicies": Resource(GROUP, VERSION, "clusterreleasepolicies", namespaced=False),
}


def now() -> dt.datetime:
    real = dt.datetime.now(dt.UTC)
    path = os.environ.get(DEV_CLOCK_ENV)
    if not path:
        return real
    try:
        return real + dt.timedelta(seconds=float(open(path).read().strip() or 0))
    except (OSError, ValueError):
        return real


def selects(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """A metav1.LabelSelector; empty or absent selects everything."""
    selector = selector or {}
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for e in selector.get("matchExpressions") or []:
        key, op, values = e.get("key"), e.get("operator"), e.get("values") or []
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": labels.get(key) not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }.get(op, False)
        if not ok:
            return False
    return True


def parse_freeze(raw: Any) -> P.Freeze | None:
    if not isinstance(raw, Mapping) or not raw.get("reason"):
        return None
    until = None
    if raw.get("until"):
        until = dt.datetime.fromisoformat(str(raw["until"]).replace("Z", "+00:00"))
        if until.tzinfo is None:
            until = until.replace(tzinfo=dt.UTC)
    return P.Freeze(str(raw["reason"]), str(raw.get("by") or ""), until)


def gate_of(plural: str, body: Mapping[str, Any]) -> P.Gate:
    """The gate of one policy; PolicyError/ValueError when it cannot be evaluated."""
    meta, spec = body["metadata"], body.get("spec") or {}
    where = f"{meta['namespace']}/" if meta.get("namespace") else ""
    policy = P.policy_from_spec(meta["name"], spec)
    return P.Gate(
        f"{KINDS[plural]} {where}{meta['name']}",
        policy,
        spec.get("behaviour", P.HOLD_BEFORE_PROMOTION),
        parse_freeze(spec.get("freeze")),
    )


PolicyKey = tuple[str, str, str]  # (plural, namespace or "", name)
RolloutKey = tuple[str, str]  # (namespace, name)


class Policies:
    """The ReleasePolicies and ClusterReleasePolicies the watches have seen, and which Rollouts
    each applies to (so that a policy selecting no Rollout says so on its status)."""

    def __init__(self) -> None:
        self.bodies: dict[PolicyKey, Mapping[str, Any]] = {}
        self.selected: dict[PolicyKey, set[RolloutKey]] = {}  # by the policy's listing, then each reconcile
        self.reported: dict[PolicyKey, bool] = {}  # what its status says: selects a Rollout or not
        self.readable: dict[PolicyKey, bool] = {}  # could the operator read Namespaces when it last looked
        self.pending: set[PolicyKey] = set()  # policies whose selection changed: their status is due
        self.version = 0  # bumped whenever a policy is seen or deleted (a quiet Rollout decides again)

    def seen(self, plural: str, namespace: str | None, name: str, body: Mapping[str, Any] | None) -> None:
        """Remember a policy as last seen (None: deleted)."""
        key = (plural, namespace or "", name)
        self.version += 1
        if body is None:
            self.bodies.pop(key, None)
            self.selected.pop(key, None)
            self.reported.pop(key, None)
            self.readable.pop(key, None)
        else:
            self.bodies[key] = dict(body)

    def applies(
        self,
        key: PolicyKey,
        body: Mapping[str, Any],
        rollout: Mapping[str, Any],
        namespace_labels: Callable[[str], Mapping[str, str] | None],
    ) -> bool:
        """Does policy `key` apply to this Rollout (its selectors, and the Rollout's spec.releasePolicy)?"""
        plural, pns, name = key
        spec = body.get("spec") or {}
        meta = rollout["metadata"]
        ns, labels = meta["namespace"], meta.get("labels") or {}
        if plural == "releasepolicies" and pns != ns:
            return False
        chosen = overridden(_override(rollout), plural, name, spec)
        if chosen is False or (chosen is None and not selects(spec.get("rolloutSelector"), labels)):
            return False
        if plural == "clusterreleasepolicies" and spec.get("namespaceSelector"):
            ns_labels = namespace_labels(ns)
            return ns_labels is not None and selects(spec["namespaceSelector"], ns_labels)
        return True

    def note(self, rollout: RolloutKey, applied: set[PolicyKey]) -> list[PolicyKey]:
        """Record which policies apply to a Rollout (empty: it is gone); the policies whose status
        must change because they now select some Rollout, or no Rollout any more."""
        changed = []
        for key in list(self.bodies):
            members = self.selected.setdefault(key, set())
            (members.add if key in applied else members.discard)(rollout)
            if key in self.reported and self.reported[key] != bool(members):
                changed.append(key)
        return changed

    def gates_for(
        self, rollout: Mapping[str, Any], namespace_labels: Callable[[str], Mapping[str, str] | None]
    ) -> tuple[P.Gate, ...]:
        """The gates of every valid policy that selects this Rollout, and its own freeze annotation."""
        meta = rollout["metadata"]
        gates, applied = [], set()
        for key, body in sorted(self.bodies.items()):
            if not self.applies(key, body, rollout, namespace_labels):
                continue
            applied.add(key)
            try:
                gates.append(gate_of(key[0], body))
            except (P.PolicyError, ValueError):
                continue  # reported on the policy's own status; an invalid policy holds nothing
        self.pending.update(self.note((meta["namespace"], meta["name"]), applied))
        freeze = annotation_freeze(meta)
        return (*gates, P.Gate(f"annotation {FREEZE_ANNOTATION}", freeze=freeze)) if freeze else tuple(gates)


def _override(rollout: Mapping[str, Any]) -> ReleasePolicyRef | None:
    try:
        return parse_release_policy((rollout.get("spec") or {}).get("releasePolicy"))
    except SpecError:
        return None  # said on the Rollout (InvalidSpec); the policies apply as they select


def overridden(ref: ReleasePolicyRef | None, plural: str, name: str, spec: Mapping[str, Any]) -> bool | None:
    """What a Rollout's spec.releasePolicy says of one policy: True (named in `policies`: it
    applies whatever its rolloutSelector), False (left out), None (its selectors decide). A
    freeze, and a ClusterReleasePolicy, are left out only when the policy allows it
    (spec.allowRolloutOptOut): an incident freeze or a cluster-wide rule is not escaped by a spec."""
    if ref is None:
        return None
    may_opt_out = bool(spec.get("allowRolloutOptOut")) or (plural == "releasepolicies" and not spec.get("freeze"))
    if plural == "releasepolicies" and ref.policies is not None:
        if name in ref.policies:
            return True
        return False if may_opt_out else None
    if name in ref.exclude and may_opt_out:
        return False
    return None


def annotation_freeze(meta: Mapping[str, Any]) -> P.Freeze | None:
    """A single Rollout's freeze (its teal.dev/freeze annotation)."""
    raw = (meta.get("annotations") or {}).get(FREEZE_ANNOTATION)
    if not raw:
        return None
    try:
        return parse_freeze(json.loads(raw))
    except ValueError:
        return P.Freeze(f"unreadable {FREEZE_ANNOTATION} annotation: {raw[:100]}")


NO_NAMESPACE_LABELS = (
    "namespaceSelector selects no namespace: this operator cannot read Namespaces (a namespaced install); "
    "use ReleasePolicies in the watched namespaces, or install the operator cluster-wide"
)


def ready_status(
    plural: str, body: Mapping[str, Any], namespaces_readable: bool = True, now: dt.datetime | None = None
) -> dict[str, Any]:
    """The policy's status: Ready=False when it cannot act as written. InvalidPolicy: it holds
    nothing; OverlappingWindows: it acts on the windows' union; NamespaceSelectorUnreadable:
    it selects no namespace (the operator cannot read Namespace labels)."""
    ok, reason, message = True, "Valid", "the policy is valid"
    try:
        gate = gate_of(plural, body)
    except (P.PolicyError, ValueError) as e:
        ok, reason, message = False, "InvalidPolicy", str(e)
    else:
        found = P.overlaps(gate.policy, now or dt.datetime.now(dt.UTC)) if gate.policy else []
        if found:
            ok, reason = False, "OverlappingWindows"
            message = "; ".join(found) + " (the policy acts on their union; make the windows disjoint)"
        elif plural == "clusterreleasepolicies" and (body.get("spec") or {}).get("namespaceSelector") and not namespaces_readable:
            ok, reason, message = False, "NamespaceSelectorUnreadable", NO_NAMESPACE_LABELS
    gen = body["metadata"].get("generation")
    return {
        "observedGeneration": gen,
        "message": message,
        "conditions": [
            {
                "type": "Ready",
                "status": "True" if ok else "False",
                "reason": reason,
                "message": message,
                "observedGeneration": gen,
                "lastTransitionTime": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
        ],
    }


SELECTED = "RolloutsSelected"
NO_ROLLOUT = (
    "selects no Rollout: none matches its rolloutSelector{ns}, or each that does leaves it out "
    "(spec.releasePolicy); it holds nothing until one does"
)


def selection_condition(plural: str, body: Mapping[str, Any], selects: bool) -> dict[str, Any]:
    """Whether the policy applies to any Rollout now (a policy selecting nothing is reported, not refused:
    the Rollouts it is meant for may come later)."""
    ns = " and namespaceSelector" if plural == "clusterreleasepolicies" else " in its namespace"
    message = "applies to at least one Rollout" if selects else NO_ROLLOUT.format(ns=ns)
    return {
        "type": SELECTED,
        "status": "True" if selects else "False",
        "reason": "Selected" if selects else "NoRolloutSelected",
        "message": message,
        "observedGeneration": body["metadata"].get("generation"),
        "lastTransitionTime": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def _condition(status: Mapping[str, Any], type_: str) -> Mapping[str, Any]:
    return next((c for c in status.get("conditions") or [] if c.get("type") == type_), {})


def _status_patch(
    plural: str, body: Mapping[str, Any], namespaces_readable: bool = True, selects: bool | None = None
) -> dict[str, Any] | None:
    old = body.get("status") or {}
    new = ready_status(plural, body, namespaces_readable)
    if selects is not None:
        new["conditions"].append(selection_condition(plural, body, selects))
    same_selection = selects is None or _condition(old, SELECTED).get("status") == ("True" if selects else "False")
    if old.get("observedGeneration") == new["observedGeneration"] and old.get("message") == new["message"] and same_selection:
        return None
    return new


def _selection(ctl: Operator, key: PolicyKey) -> bool | None:
    """List the Rollouts the policy could apply to and record those it does (None: can't list them)."""
    plural, pns, _ = key
    try:
        rollouts = ctl.kube.client.items(ROLLOUTS, pns or None)
    except ApiError:
        return None
    labels = namespace_labels(ctl.kube.client)
    pols, body = ctl.policies, ctl.policies.bodies.get(key)
    if body is None:
        return None  # deleted meanwhile
    pols.selected[key] = {
        (r["metadata"]["namespace"], r["metadata"]["name"]) for r in rollouts if pols.applies(key, body, r, labels)
    }
    return bool(pols.selected[key])


async def write_status(ctl: Operator, key: PolicyKey, body: Mapping[str, Any], selects: bool | None) -> None:
    plural, namespace, name = key
    if not ctl.owns(namespace):  # the replica that holds the namespace's shard (shard 0: cluster policies) writes
        return
    new_status = _status_patch(plural, body, ctl.policies.readable.get(key, True), selects)
    if new_status is not None:
        try:
            await ctl.call(ctl.kube.client.patch_status, RESOURCES[plural], namespace or None, name, {"status": new_status})
        except ApiError as e:  # the next event tries again
            log.warning("%s %s: cannot write status: %s", KINDS[plural], name, e)
            return
    if selects is not None:
        ctl.policies.reported[key] = selects


async def report_selection(ctl: Operator) -> None:
    """Write the status of the policies whose selection changed (a Rollout came, went or relabelled)."""
    pols = ctl.policies
    while pols.pending:
        key = pols.pending.pop()
        if key in pols.bodies:
            await write_status(ctl, key, pols.bodies[key], bool(pols.selected.get(key)))


def _on_policy(ctl: Operator, plural: str) -> Callable[..., Any]:
    async def handler(event: Mapping[str, Any], body: Mapping[str, Any], name: str, namespace: str | None, **_: Any) -> None:
        deleted = event.get("type") == "DELETED"
        key = (plural, namespace or "", name)
        ctl.policies.seen(plural, namespace, name, None if deleted else body)
        if not deleted:
            if plural == "clusterreleasepolicies" and (body.get("spec") or {}).get("namespaceSelector"):
                ctl.policies.readable[key] = await ctl.call(can_read_namespaces, ctl.kube.client)
            known = key in ctl.policies.reported and (body.get("status") or {}).get("observedGeneration") == body["metadata"].get(
                "generation"
            )
            selects = bool(ctl.policies.selected.get(key)) if known else await ctl.call(_selection, ctl, key)
            await write_status(ctl, key, body, selects)
        for (ns, _rollout), loop in list(ctl.loops.items()):
            if namespace is None or ns == namespace:
                loop.poke.set()

    return handler


def register(registry: kopf.OperatorRegistry, ctl: Operator) -> None:
    """The policy watches (feeding ctl.policies) and the test clock's warning, on `registry`."""
    for plural in RESOURCES:
        kopf.on.event(GROUP, VERSION, plural, registry=registry)(_on_policy(ctl, plural))
    kopf.on.startup(registry=registry)(_warn_dev_clock)


def load_policies(ctl: Operator) -> None:
    """List the policies once before any Rollout is decided (kopf's watches, which keep them
    current, may deliver them after the informers' first sync). Best effort: a policy that can't
    be listed now comes with its watch event, as before."""
    settings = getattr(ctl, "settings", None)
    scopes: list[str | None] = list(settings.namespaces) if settings is not None and settings.namespaces else [None]
    for plural, res in RESOURCES.items():
        for ns in [None] if not res.namespaced else scopes:
            try:
                items = ctl.kube.client.items(res, ns)
            except ApiError as e:
                log.info("%s: not listed at start-up (%s); their watch brings them", plural, e.quoted(200))
                continue
            for body in items:
                meta = body.get("metadata") or {}
                ctl.policies.seen(plural, meta.get("namespace"), meta["name"], body)


def namespace_labels(api: Client) -> Callable[[str], Mapping[str, str] | None]:
    """Labels of a namespace through a list with a field selector (the list verb a cluster-wide
    operator has); None when they cannot be read (a namespaced operator). Each namespace is read
    once per reader: a reader serves one reconcile, or one policy's listing of its Rollouts."""

    @functools.cache
    def read(ns: str) -> Mapping[str, str] | None:
        meta = namespace_metadata(api, ns)
        return (meta.get("labels") or {}) if meta is not None else None

    return read


def namespace_metadata(api: Client, ns: str) -> Mapping[str, Any] | None:
    """A namespace's metadata through a list with a field selector (the list verb a cluster-wide
    operator has; the informers answer it from memory); None when it cannot be read or is gone."""
    try:
        items = api.items(NAMESPACES, field_selector=f"metadata.name={ns}")
    except ApiError:
        return None
    return (items[0].get("metadata") or {}) if items else None


def can_read_namespaces(api: Client) -> bool:
    """May this operator list Namespaces (and so read the labels a namespaceSelector needs)?"""
    try:
        api.items(NAMESPACES, field_selector="metadata.name=default")
    except ApiError as e:
        return getattr(e, "status", None) not in (401, 403)  # a transient error says nothing
    return True


async def _warn_dev_clock(**_: Any) -> None:
    if os.environ.get(DEV_CLOCK_ENV):
        log.warning("TEST CLOCK: %s is set; release windows are evaluated at a moved time (never in production)", DEV_CLOCK_ENV)
