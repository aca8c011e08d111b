"""The Kubernetes adapter: read the world for the core, and carry out its actions.

Everything here is synchronous (teal.client is); the operator calls it from a thread pool so
that the event loop, and every other Rollout, never waits on it. Objects are plain JSON dicts
as the apiserver sends them (no generated-model deserialization).
"""

from __future__ import annotations

import copy
import datetime as dt
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from . import core
from .api import (
    ANNOTATION_CLAIMED_BY,
    ANNOTATION_HASH,
    ANNOTATION_REVISION,
    API_VERSION,
    COLORS,
    GROUP,
    KIND,
    LABEL_COLOR,
    LABEL_ROLLOUT,
    PLURAL,
    VERSION,
    RolloutSpec,
    steered_objects,
    template_hash,
)
from .client import CONTROLLER_REVISIONS, DEFAULT_TIMEOUT, DEPLOYMENTS, EVENTS, SERVICES, ApiError, Client, NotFound, Resource

log = logging.getLogger("teal.kube")
FIELD_MANAGER = "teal"
TIMEOUT = DEFAULT_TIMEOUT  # connect, read: no call may hang a Rollout's loop (teal.client's policy)
# Answers that refuse what was sent, not how: invalid (400, 422) or forbidden by a quota,
# a policy, an admission webhook or RBAC (403). Sending the same again gets the same answer.
REFUSALS = (400, 403, 422)
# the route objects a Rollout may claim (as controller.ROUTE_RESOURCES watches them)
ROUTE_API = {
    "HTTPRoute": Resource("gateway.networking.k8s.io", "v1", "httproutes"),
    "Ingress": Resource("networking.k8s.io", "v1", "ingresses"),
    "VirtualService": Resource("networking.istio.io", "v1", "virtualservices"),
}
ROLLOUTS = Resource(GROUP, VERSION, PLURAL)


def claim_value(body: Mapping[str, Any]) -> str:
    return f"{body['metadata']['name']}/{body['metadata']['uid']}"


def api_message(e: ApiError, limit: int = 600) -> str:
    """The apiserver's own words: the `message` of the Status body, on one line."""
    return e.quoted(limit)


def deployment_name(rollout: str, color: str) -> str:
    return f"{rollout}-{color}"


def owner_reference(body: Mapping[str, Any]) -> dict[str, Any]:
    meta = body["metadata"]
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def fresh_available(updated: int, available: int, total: int) -> int:
    """Available pods of the newest template only. While old pods still run, some of the
    available ones may be old: count only what must be new."""
    return max(0, min(updated, available - max(0, total - updated)))


def without_nulls(value: Any) -> Any:
    """`value` with every null dropped from its mappings, recursively."""
    if isinstance(value, Mapping):
        return {k: without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [without_nulls(v) for v in value]
    return value


def color_obs(dep: Mapping[str, Any]) -> core.ColorObs:
    """What the core needs of a colour's Deployment (a JSON dict)."""
    st, meta = dep.get("status") or {}, dep.get("metadata") or {}
    synced = (st.get("observedGeneration") or 0) >= (meta.get("generation") or 0)
    updated = st.get("updatedReplicas") or 0
    # The Deployment controller copies its ReplicaSets' ReplicaFailure condition (pods
    # refused by a ResourceQuota, a LimitRange, PodSecurity or a webhook).
    failure = next(
        (
            c.get("message") or c.get("reason")
            for c in st.get("conditions") or []
            if c.get("type") == "ReplicaFailure" and c.get("status") == "True"
        ),
        None,
    )
    return core.ColorObs(
        exists=True,
        hash=(meta.get("annotations") or {}).get(ANNOTATION_HASH),
        replicas=(dep.get("spec") or {}).get("replicas") or 0,
        ready=st.get("readyReplicas") or 0,
        updated_available=fresh_available(updated, st.get("availableReplicas") or 0, st.get("replicas") or 0),
        synced=synced,
        failure=failure,
    )


class Kube:
    """What one Rollout reconcile reads and writes, on one teal.client.Client."""

    def __init__(self, api: Client | Any = None):
        """`api`: a teal.client.Client (or a Configuration, or a generated ApiClient whose
        configuration is used; None: the default configuration), with kube.TIMEOUT."""
        self.client = api if isinstance(api, Client) else Client.of(api, timeout=TIMEOUT)

    @property
    def api_client(self) -> Client:
        return self.client

    def close(self) -> None:
        self.client.close()

    # ------------------------------------------------------------ reading

    def get_rollout(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.client.get(ROLLOUTS, namespace, name)

    def desired_template(self, namespace: str, spec: RolloutSpec) -> tuple[dict | None, str | None]:
        """The pod template to run: spec.template, or the template of the workloadRef Deployment."""
        if spec.template is not None:
            return dict(spec.template), None
        ref = spec.workload_ref
        if ref is None:
            return None, "spec has neither template nor workloadRef"
        dep = self.client.get(DEPLOYMENTS, namespace, ref.name)
        if dep is None:
            return None, f"workloadRef: Deployment {ref.name} not found in namespace {namespace}"
        # Without nulls (the apiserver sends metadata.creationTimestamp: null), as the generated
        # client's models gave it before: the template's hash, and so the revision, stays the same.
        return without_nulls((dep.get("spec") or {}).get("template") or {}), None

    def observe_color(self, namespace: str, rollout: str, color: str) -> core.ColorObs:
        dep = self.client.get(DEPLOYMENTS, namespace, deployment_name(rollout, color))
        if dep is None:
            return core.ColorObs()
        return color_obs(dep)

    def observe_service(self, namespace: str, name: str) -> core.ServiceObs:
        svc = self.client.get(SERVICES, namespace, name)
        if svc is None:
            return core.ServiceObs(exists=False)
        return core.ServiceObs(exists=True, color=((svc.get("spec") or {}).get("selector") or {}).get(LABEL_COLOR))

    def observe_traffic(self, body: Mapping[str, Any], services: Iterable[str]) -> core.Observed:
        """The colours and the named Services only: what acting on an abort needs without a spec."""
        ns, name = body["metadata"]["namespace"], body["metadata"]["name"]
        return core.Observed(
            template=None,
            template_hash=None,
            colors={c: self.observe_color(ns, name, c) for c in COLORS},
            services={s: self.observe_service(ns, s) for s in services},
        )

    def observe(self, body: Mapping[str, Any], spec: RolloutSpec) -> core.Observed:
        ns, name = body["metadata"]["namespace"], body["metadata"]["name"]
        template, error = self.desired_template(ns, spec)
        services = {}
        for svc in list(spec.blue_green.active_services) + (
            [spec.blue_green.preview_service] if spec.blue_green.preview_service else []
        ):
            services[svc] = self.observe_service(ns, svc)
        colors = {c: self.observe_color(ns, name, c) for c in COLORS}
        want = template_hash(template) if template is not None else None
        status = body.get("status") or {}
        stable, stable_hash = status.get("stableColor"), status.get("stableHash")
        stable_template = None
        if stable in COLORS and stable_hash and stable_hash != want and not colors[stable].exists:
            stable_template = self.revision_template(ns, name, stable_hash)
        return core.Observed(
            template=template,
            template_hash=want,
            colors=colors,
            services=services,
            template_error=error,
            stable_template=stable_template,
        )

    def revision_template(self, namespace: str, rollout: str, hash_: str) -> dict[str, Any] | None:
        """The pod template of a revision, from its ControllerRevision (record_revision); None if gone."""
        rev = self.client.get(CONTROLLER_REVISIONS, namespace, f"{rollout}-{hash_}")
        template = ((rev or {}).get("data") or {}).get("template")
        return dict(template) if isinstance(template, dict) else None  # named by its hash: <rollout>-<hash>

    # ------------------------------------------------------------ claims

    def _claim_meta(self, namespace: str, obj: str) -> tuple[str, str | None] | None:
        """(resourceVersion, claim annotation) of "Kind/name", or None if it does not exist."""
        kind, name = obj.split("/", 1)
        try:
            got = self.client.get(SERVICES if kind == "Service" else ROUTE_API[kind], namespace, name)
        except NotFound:  # the route's CRD is not installed: nothing to claim (the router says why)
            return None
        if got is None:
            return None
        meta = got["metadata"]
        return meta["resourceVersion"], (meta.get("annotations") or {}).get(ANNOTATION_CLAIMED_BY)

    def _set_claim(self, namespace: str, obj: str, resource_version: str, value: str | None) -> None:
        """Write (or with None remove) the claim; a 409 means someone wrote in between."""
        kind, name = obj.split("/", 1)
        patch = {"metadata": {"resourceVersion": resource_version, "annotations": {ANNOTATION_CLAIMED_BY: value}}}
        self.client.merge_patch(SERVICES if kind == "Service" else ROUTE_API[kind], namespace, name, patch)

    def _claim_holds(self, namespace: str, claim: str, obj: str) -> bool:
        """Does the claiming Rollout exist (same uid, not being deleted) and still name obj?"""
        owner, _, uid = claim.partition("/")
        ro = self.get_rollout(namespace, owner) if owner else None
        return bool(
            ro
            and ro["metadata"].get("uid") == uid
            and not ro["metadata"].get("deletionTimestamp")
            and obj in steered_objects(ro.get("spec"))
        )

    def claim(self, body: Mapping[str, Any], objects: list[str]) -> tuple[list[str], dict[str, str]]:
        """Claim each object ("Service/x", "HTTPRoute/y", ...): ours already, free, or held
        by a Rollout that is gone or no longer names it (taken over). Returns what this Rollout
        holds and, for the rest, the owning Rollout's name. Missing objects are skipped."""
        ns, mine = body["metadata"]["namespace"], claim_value(body)
        held, refused = [], {}
        for obj in objects:
            meta = self._claim_meta(ns, obj)
            if meta is None:
                continue
            rv, claim = meta
            if claim == mine:
                held.append(obj)
            elif claim and claim.partition("/")[0] != body["metadata"]["name"] and self._claim_holds(ns, claim, obj):
                refused[obj] = claim.partition("/")[0]
            else:
                if claim:
                    log.info(
                        "%s/%s: taking over %s from %s (gone, or no longer names it)", ns, body["metadata"]["name"], obj, claim
                    )
                self._set_claim(ns, obj, rv, mine)
                held.append(obj)
        return held, refused

    def release_claims(self, body: Mapping[str, Any], objects: list[str]) -> None:
        """Remove this Rollout's claim from objects it no longer names (or all, on deletion)."""
        ns, mine = body["metadata"]["namespace"], claim_value(body)
        for obj in objects:
            if "/" not in obj or obj.split("/", 1)[0] not in ("Service", *ROUTE_API):
                continue
            meta = self._claim_meta(ns, obj)
            if meta is not None and meta[1] == mine:
                try:
                    self._set_claim(ns, obj, meta[0], None)
                except NotFound:
                    pass  # gone in between: nothing left to release

    # ------------------------------------------------------------ writing

    def deployment_manifest(self, body: Mapping[str, Any], spec: RolloutSpec, action: core.DeployColor) -> dict[str, Any]:
        name = body["metadata"]["name"]
        template = copy.deepcopy(dict(action.template))
        tmeta = template.setdefault("metadata", {})
        labels = dict(tmeta.get("labels") or {})
        labels.update({LABEL_ROLLOUT: name, LABEL_COLOR: action.color})
        tmeta["labels"] = labels
        for k in ("creationTimestamp", "name", "namespace", "uid", "resourceVersion"):
            tmeta.pop(k, None)
        selector = dict(spec.match_labels)
        selector[LABEL_COLOR] = action.color
        return {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {
                "name": deployment_name(name, action.color),
                "namespace": body["metadata"]["namespace"],
                "labels": {LABEL_ROLLOUT: name, LABEL_COLOR: action.color},
                "annotations": {ANNOTATION_HASH: action.hash, ANNOTATION_REVISION: str(action.revision)},
                "ownerReferences": [owner_reference(body)],
            },
            "spec": {
                "replicas": action.replicas,
                "selector": {"matchLabels": selector},
                "template": template,
            },
        }

    def apply_deployment(self, manifest: Mapping[str, Any]) -> None:
        meta = manifest["metadata"]
        self.client.apply(DEPLOYMENTS, meta["namespace"], meta["name"], manifest, FIELD_MANAGER)

    def record_revision(self, body: Mapping[str, Any], action: core.RecordRevision, keep: int) -> None:
        """A ControllerRevision `<rollout>-<hash>` holding the template, newest `keep` kept."""
        meta = body["metadata"]
        ns, rollout = meta["namespace"], meta["name"]
        manifest = {
            "apiVersion": "apps/v1",
            "kind": "ControllerRevision",
            "metadata": {
                "name": f"{rollout}-{action.hash}",
                "namespace": ns,
                "labels": {LABEL_ROLLOUT: rollout, ANNOTATION_HASH: action.hash},
                "annotations": {ANNOTATION_REVISION: str(action.revision)},
                "ownerReferences": [owner_reference(body)],
            },
            "data": {"template": dict(action.template)},
            "revision": int(action.revision),
        }
        self.client.apply(CONTROLLER_REVISIONS, ns, f"{rollout}-{action.hash}", manifest, FIELD_MANAGER)
        revisions = self.client.items(CONTROLLER_REVISIONS, ns, label_selector=f"{LABEL_ROLLOUT}={rollout}")
        for old in sorted(revisions, key=lambda r: int(r.get("revision") or 0), reverse=True)[max(keep, 1) :]:
            self.client.delete(CONTROLLER_REVISIONS, ns, old["metadata"]["name"])  # None: gone already

    def scale(self, namespace: str, rollout: str, color: str, replicas: int) -> None:
        try:
            self.client.merge_patch(
                DEPLOYMENTS, namespace, deployment_name(rollout, color), {"spec": {"replicas": replicas}}, sub="scale"
            )
        except NotFound:
            pass  # no Deployment, nothing to scale: the next observation says so

    def select_color(self, namespace: str, service: str, color: str) -> None:
        self.client.merge_patch(SERVICES, namespace, service, {"spec": {"selector": {LABEL_COLOR: color}}})

    def patch_status(self, body: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
        """Merge-patch status, guarded by resourceVersion (a 409 means: decide again)."""
        meta = body["metadata"]
        return self.client.patch_status(
            ROLLOUTS, meta["namespace"], meta["name"], {"metadata": {"resourceVersion": meta["resourceVersion"]}, "status": patch}
        )

    def post_event(self, body: Mapping[str, Any], event: core.Event) -> None:
        meta = body["metadata"]
        now = dt.datetime.now(dt.UTC)
        ev = {
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": API_VERSION,
                "kind": KIND,
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta["uid"],
                "resourceVersion": meta.get("resourceVersion"),
            },
            "type": event.type,
            "reason": event.reason,
            "message": event.message[:1000],
            "source": {"component": "teal"},
            "reportingComponent": "teal.dev/operator",
            "reportingInstance": "teal",
            "firstTimestamp": now.isoformat(),
            "lastTimestamp": now.isoformat(),
            "count": 1,
        }
        try:
            self.client.create(EVENTS, meta["namespace"], ev)
        except ApiError as e:  # events are best effort
            log.warning("could not post event %s: %s", event.reason, e.quoted(300))


def merge_patch(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON merge patch (RFC 7386) that turns `old` into `new` (lists are replaced)."""
    old = old or {}
    patch: dict[str, Any] = {k: None for k in old if k not in new}
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, Mapping) and isinstance(before, Mapping):
            sub = merge_patch(before, value)
            if sub:
                patch[key] = sub
        elif (value != before) if key in old else (value is not None):  # a null for an absent key changes nothing
            patch[key] = copy.deepcopy(value)
    return patch
