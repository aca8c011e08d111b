"""ReleasePolicies and ClusterReleasePolicies in the cluster, turned into the gates of one Rollout
(teal.policy.Gate, evaluated by teal.core.decide), and each policy's own status (Ready=False with
the reason for what CEL cannot check: an unknown time zone, an invalid cron schedule).

Policies are cached from kopf watch events; a change wakes the Rollouts it may concern, so a
freeze or an unfreeze acts at once. A single Rollout is frozen by its annotation
`teal.dev/freeze: {"reason": ..., "by": ..., "until": ...}` (kubectl teal freeze NAME).

Test clock: with TEAL_DEV_CLOCK_FILE set in the operator's environment (never by the chart), the
operator's "now" is the real time plus the seconds in that file, and it logs a warning at start.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import os
from typing import Any, Callable, Mapping

import kopf

from . import policy as P
from .api import GROUP, VERSION

log = logging.getLogger("teal")

FREEZE_ANNOTATION = "teal.dev/freeze"
DEV_CLOCK_ENV = "TEAL_DEV_CLOCK_FILE"
KINDS = {"releasepolicies": "ReleasePolicy", "clusterreleasepolicies": "ClusterReleasePolicy"}
CACHE: dict[tuple[str, str, str], Mapping[str, Any]] = {}  # (plural, namespace or "", name) -> body


def now() -> dt.datetime:
    real = dt.datetime.now(dt.timezone.utc)
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
        ok = {"In": key in labels and labels[key] in values, "NotIn": labels.get(key) not in values,
              "Exists": key in labels, "DoesNotExist": key not in labels}.get(op, False)
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
            until = until.replace(tzinfo=dt.timezone.utc)
    return P.Freeze(str(raw["reason"]), str(raw.get("by") or ""), until)


def gate_of(plural: str, body: Mapping[str, Any]) -> P.Gate:
    """The gate of one policy; PolicyError/ValueError when it cannot be evaluated."""
    meta, spec = body["metadata"], body.get("spec") or {}
    where = f"{meta['namespace']}/" if meta.get("namespace") else ""
    policy = P.policy_from_spec(meta["name"], spec)
    return P.Gate(f"{KINDS[plural]} {where}{meta['name']}", policy, spec.get("behaviour", P.HOLD_BEFORE_PROMOTION),
                  parse_freeze(spec.get("freeze")))


def gates_for(rollout: Mapping[str, Any], namespace_labels: Callable[[str], Mapping[str, str] | None]
              ) -> tuple[P.Gate, ...]:
    """The gates of every valid policy that selects this Rollout, and its own freeze annotation."""
    meta = rollout["metadata"]
    ns, labels = meta["namespace"], meta.get("labels") or {}
    gates = []
    for (plural, pns, _), body in sorted(CACHE.items()):
        spec = body.get("spec") or {}
        if plural == "releasepolicies" and pns != ns:
            continue
        if not selects(spec.get("rolloutSelector"), labels):
            continue
        if plural == "clusterreleasepolicies" and spec.get("namespaceSelector"):
            ns_labels = namespace_labels(ns)
            if ns_labels is None or not selects(spec["namespaceSelector"], ns_labels):
                continue
        try:
            gates.append(gate_of(plural, body))
        except (P.PolicyError, ValueError):
            continue  # reported on the policy's own status; an invalid policy holds nothing
    raw = (meta.get("annotations") or {}).get(FREEZE_ANNOTATION)
    if raw:
        try:
            freeze = parse_freeze(json.loads(raw))
        except ValueError:
            freeze = P.Freeze(f"unreadable {FREEZE_ANNOTATION} annotation: {raw[:100]}")
        if freeze:
            gates.append(P.Gate(f"annotation {FREEZE_ANNOTATION}", freeze=freeze))
    return tuple(gates)


def ready_status(plural: str, body: Mapping[str, Any]) -> dict[str, Any]:
    try:
        gate_of(plural, body)
        ok, reason, message = True, "Valid", "the policy is valid"
    except (P.PolicyError, ValueError) as e:
        ok, reason, message = False, "InvalidPolicy", str(e)
    gen = body["metadata"].get("generation")
    return {"observedGeneration": gen, "message": message,
            "conditions": [{"type": "Ready", "status": "True" if ok else "False", "reason": reason,
                            "message": message, "observedGeneration": gen,
                            "lastTransitionTime": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}]}


def _status_patch(plural: str, body: Mapping[str, Any]) -> dict[str, Any] | None:
    old = body.get("status") or {}
    new = ready_status(plural, body)
    if old.get("observedGeneration") == new["observedGeneration"] and old.get("message") == new["message"]:
        return None
    return new


def _on_policy(plural: str):
    async def handler(event: Mapping[str, Any], body: Mapping[str, Any], name: str, namespace: str | None,
                      **_: Any) -> None:
        from .controller import controller
        key = (plural, namespace or "", name)
        if event.get("type") == "DELETED":
            CACHE.pop(key, None)
        else:
            CACHE[key] = dict(body)
            patch = _status_patch(plural, body)
            if patch is not None:
                c = controller()
                args = (GROUP, VERSION, namespace, plural, name) if namespace else (GROUP, VERSION, plural, name)
                fn = (c.kube.custom.patch_namespaced_custom_object_status if namespace
                      else c.kube.custom.patch_cluster_custom_object_status)
                try:
                    await c.call(fn, *args, {"status": patch})
                except Exception as e:  # the next event tries again
                    log.warning("%s %s: cannot write status: %s", KINDS[plural], name, e)
        for (ns, _), loop in list(controller().loops.items()):
            if namespace is None or ns == namespace:
                loop.poke.set()
    return handler


kopf.on.event(GROUP, VERSION, "releasepolicies")(_on_policy("releasepolicies"))
kopf.on.event(GROUP, VERSION, "clusterreleasepolicies")(_on_policy("clusterreleasepolicies"))


def namespace_labels(kube) -> Callable[[str], Mapping[str, str] | None]:
    """Labels of a namespace through a list with a field selector (the list verb a cluster-wide
    operator has); None when they cannot be read (a namespaced operator)."""
    def read(ns: str) -> Mapping[str, str] | None:
        try:
            items = kube.core.list_namespace(field_selector=f"metadata.name={ns}", _request_timeout=10).items
        except Exception:
            return None
        return (items[0].metadata.labels or {}) if items else None
    return read


@kopf.on.startup()
async def _warn_dev_clock(**_: Any) -> None:
    if os.environ.get(DEV_CLOCK_ENV):
        log.warning("TEST CLOCK: %s is set; release windows are evaluated at a moved time (never in production)",
                    DEV_CLOCK_ENV)
