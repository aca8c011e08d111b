"""Release notifications that arrive once: an outbox in the Rollout's status, and a sender.

The outbox. `outbox(old, new, body, now)` is pure: it compares the status before and after a
decision, finds the release events (started, awaiting-promotion, switched, promoted, aborted,
reverted, analysis-failed) and records one entry per subscribed event in
`status.notifications.pending`, a map keyed by the event's idempotency key
`<rollout uid>/<revision>/<run>/<event>` (run: the release's start, in epoch milliseconds). The
controller applies it to the status it is about to write, so an event and its notification are
recorded in the same write: a kill between the event and the send loses nothing.

The sender. `Notifier.offer` is handed every status the controller wrote (or read, after a
restart) and delivers the pending entries in the background, never in a reconcile: in order per
Rollout and target, with exponential backoff and a bounded number of tries, then removes each
entry from status with a merge patch of its key to null. Every request carries the key (header
`Idempotency-Key`, and the CloudEvents `id`), so a resend after a kill between the send and
the removal is one a receiver can recognise. Only a replica that reconciles the Rollout sends
(offers come from its reconciles; a replica that stops leading stops sending).

Subscriptions are annotations on the Rollout or its Namespace:
`notifications.teal.dev/on-<event>: <target>[,<target>...]`, or `...on-all` for every event;
the Rollout's annotation for an event replaces its Namespace's (an empty value turns it off).
Targets (webhook, cloudevents, slack, teams) are configured once, in a ConfigMap (the chart's
`notifications.targets`), their URLs optionally from Secrets. docs/notifications.md has it all.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import dataclasses
import datetime as dt
import json
import logging
import string
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import yaml

from . import metrics, policy_kube
from .client import SECRETS, NotFound, Resource
from .core import Event
from .kube import ROLLOUTS
from .status import Release, Status, iso, parse_time

log = logging.getLogger("teal.notify")

EVENTS = ("started", "awaiting-promotion", "switched", "promoted", "aborted", "reverted", "analysis-failed")
ANNOTATION_PREFIX = "notifications.teal.dev/on-"
MAX_PENDING = 50  # per Rollout: the oldest entries go first when a receiver has been down for long
KINDS = ("webhook", "cloudevents", "slack", "teams")
PLACEHOLDERS = frozenset({"rollout", "namespace", "event", "message", "revision", "image", "reason", "key", "color"})
DEFAULT_TEMPLATE = "{namespace}/{rollout}: {event}: {message}"
ANALYSIS_REASONS = ("AnalysisFailed", "AnalysisError")
CLOUDEVENTS_TYPE = "dev.teal.rollout."
CLOUDEVENTS_CONTENT_TYPE = "application/cloudevents+json; charset=utf-8"
CONFIG_KEY = "config.yaml"
CONFIG_TTL = 10.0  # seconds a read of the ConfigMap, a Secret or a Namespace is reused
DONE_MEMORY = 10_000  # keys delivered by this process, so a stale status never sends one again
REMOVE_AGAIN = 5.0  # seconds before a delivered key still seen in status is removed again
CONFIGMAPS = Resource("", "v1", "configmaps")


# ---------------------------------------------------------------- detection (pure)


@dataclasses.dataclass(frozen=True)
class Notice:
    """One release event, found by comparing two statuses."""

    event: str
    revision: str
    run: str  # the release's start, epoch milliseconds: a retry or a new release is a new run
    color: str | None
    reason: str | None
    message: str
    step: int | None = None  # the step a release waits at (awaiting-promotion at a pause step)


def run_id(t: dt.datetime | None) -> str:
    return str(round(t.timestamp() * 1000)) if t is not None else "0"


def _stat(s: Status, key: str) -> int:
    try:
        return int((s.stats or {}).get(key, 0))
    except (TypeError, ValueError):
        return 0


def _stat_time(s: Status, key: str) -> dt.datetime | None:
    try:
        return parse_time((s.stats or {}).get(key))
    except ValueError:
        return None


def _same_run(a: Release | None, b: Release | None) -> bool:
    return a is not None and b is not None and (a.revision, a.started_at) == (b.revision, b.started_at)


def detect(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[Notice]:
    """The release events between two statuses, in the order they happened: first what ended
    (or went on in) the run that was under way, then the new run's. Nothing when nothing moved."""
    o, n = Status.read(old), Status.read(new)
    return _ended(o, n) + _begun(o, n)


def _promoted(o: Status, n: Status) -> list[Notice]:
    """The promotion of the run under way (switched too, if that happened in this decision), or
    of a release that started and finished in this decision (a fast rollback, an instant first one)."""
    rev, r, out = n.stable_revision or "", o.release, []
    if r is not None and r.revision == rev:
        run, started, switched = run_id(r.started_at), False, r.switched_at is None
    elif o.stable_revision is None and o.first_release_started_at is not None:
        run, started, switched = run_id(o.first_release_started_at), False, False  # a first release has no switch
    else:
        run, started, switched = run_id(_stat_time(n, "lastPromotedAt")), True, o.stable_revision is not None
    if started:
        how = f" (fast rollback: {n.stable_color} still ran it)" if _stat(n, "rollbacks") > _stat(o, "rollbacks") else ""
        out.append(Notice("started", rev, run, n.stable_color, None, f"revision {rev} starts on {n.stable_color}{how}"))
    if switched:
        out.append(Notice("switched", rev, run, n.stable_color, None, _switched_text(rev, n.stable_color)))
    took = (n.stats or {}).get("lastReleaseSeconds")
    text = f"revision {rev} is live on {n.stable_color}" + (f" (release took {float(took):.0f}s)" if took is not None else "")
    return [*out, Notice("promoted", rev, run, n.stable_color, "Promoted", text)]


def _ended(o: Status, n: Status) -> list[Notice]:
    """Promoted, aborted, reverted and analysis-failed: the counters in status.stats say that
    it happened in this decision, the release before it says which run it was."""
    out: list[Notice] = []
    r = o.release
    if _stat(n, "promoted") > _stat(o, "promoted"):
        out += _promoted(o, n)
    if _stat(n, "aborted") > _stat(o, "aborted") and n.release is not None:
        nr = n.release
        same = r if r is not None and r.revision == nr.revision and r.aborted_at is None else None
        run = run_id(same.started_at if same is not None else nr.started_at)
        reason = n.abort.reason if n.abort is not None else None
        if reason in ANALYSIS_REASONS:
            why = (n.abort.message if n.abort is not None else None) or reason
            out.append(Notice("analysis-failed", nr.revision, run, nr.color, reason, f"revision {nr.revision}: {why}"))
        event = "reverted" if same is not None and same.switched_at is not None else "aborted"
        out.append(Notice(event, nr.revision, run, n.stable_color, reason, n.message or ""))
    elif (
        r is not None
        and r.switched_at is not None
        and r.aborted_at is None
        and n.release is None
        and n.stable_revision == o.stable_revision
        and _stat(n, "promoted") == _stat(o, "promoted")
    ):  # the template went back to the stable one after the switch: traffic back on stable
        text = f"revision {r.revision} rolled back after the switch: revision {n.stable_revision} serves all traffic on {n.stable_color}"
        out.append(Notice("reverted", r.revision, run_id(r.started_at), n.stable_color, "RolledBack", text))
    return out


def _begun(o: Status, n: Status) -> list[Notice]:
    """Started, awaiting-promotion and switched of the run under way after the decision."""
    nr = n.release
    if nr is None:
        first = n.first_release_started_at
        if first is not None and first != o.first_release_started_at:
            rev = n.current_revision or ""
            return [
                Notice("started", rev, run_id(first), n.first_color, None, f"first release: revision {rev} on {n.first_color}")
            ]
        return []
    if nr.aborted_at is not None:
        return []
    out: list[Notice] = []
    run = run_id(nr.started_at)
    new_run = not _same_run(o.release, nr) or (o.release is not None and o.release.aborted_at is not None)
    if new_run:
        how = f" (fast rollback: {nr.color} still runs it)" if nr.fast_rollback else ""
        out.append(Notice("started", nr.revision, run, nr.color, None, f"revision {nr.revision} starts on {nr.color}{how}"))
    if _awaits(n) and (new_run or not _awaits(o) or o.current_step != n.current_step):
        step = n.current_step if n.reason == "PausedAtStep" else None
        out.append(Notice("awaiting-promotion", nr.revision, run, nr.color, n.reason, n.message or "", step))
    if nr.switched_at is not None and (new_run or o.release is None or o.release.switched_at is None):
        out.append(Notice("switched", nr.revision, run, nr.color, None, _switched_text(nr.revision, nr.color)))
    return out


def _awaits(s: Status) -> bool:
    """Paused until someone promotes (not a timed pause, not spec.paused)."""
    if s.reason == "AwaitingPromotion":
        return True
    return s.reason == "PausedAtStep" and "until promoted" in (s.message or "")


def _switched_text(revision: str, color: str | None) -> str:
    return f"all active Services now select {color} (revision {revision})"


def subscriptions(
    rollout_annotations: Mapping[str, str] | None, namespace_annotations: Mapping[str, str] | None
) -> dict[str, list[str]]:
    """event -> targets, from `notifications.teal.dev/on-<event>` (or `on-all`) annotations;
    the Rollout's setting for an event replaces its Namespace's ("" turns it off)."""

    def level(annotations: Mapping[str, str] | None, event: str) -> list[str] | None:
        a = annotations or {}
        value = a.get(ANNOTATION_PREFIX + event, a.get(ANNOTATION_PREFIX + "all"))
        return None if value is None else [t.strip() for t in str(value).split(",") if t.strip()]

    out: dict[str, list[str]] = {}
    for event in EVENTS:
        targets = level(rollout_annotations, event)
        if targets is None:
            targets = level(namespace_annotations, event)
        if targets:
            out[event] = list(dict.fromkeys(targets))
    return out


def idempotency_key(uid: str, notice: Notice) -> str:
    suffix = f".step{notice.step}" if notice.step is not None else ""
    return f"{uid}/{notice.revision}/{notice.run}/{notice.event}{suffix}"


def images(body: Mapping[str, Any]) -> list[str]:
    spec = (body.get("spec") or {}).get("template") or {}
    containers = (spec.get("spec") or {}).get("containers") or []
    return [str(c.get("image")) for c in containers if isinstance(c, Mapping) and c.get("image")]


def outbox(
    old: Mapping[str, Any],
    new: Mapping[str, Any],
    body: Mapping[str, Any],
    now: dt.datetime,
    namespace_annotations: Mapping[str, str] | None = None,
    notices: list[Notice] | None = None,
) -> dict[str, Any]:
    """`new` with an entry in status.notifications.pending for each subscribed release event
    between `old` and `new` (the same dict when there is none). Pure."""
    found = detect(old, new) if notices is None else notices
    if not found:
        return dict(new)
    subs = subscriptions((body.get("metadata") or {}).get("annotations"), namespace_annotations)
    uid = str((body.get("metadata") or {}).get("uid") or "")
    notifications = dict(new.get("notifications") or {})
    pending = dict(notifications.get("pending") or {})
    added = 0
    for i, notice in enumerate(found):
        targets = subs.get(notice.event)
        if not targets:
            continue
        entry = {
            "event": notice.event,
            "revision": notice.revision,
            "at": iso(now),
            "seq": i,
            "targets": targets,
            "message": notice.message[:1000],
            "images": images(body),
        }
        entry.update({k: v for k, v in (("reason", notice.reason), ("color", notice.color)) if v})
        pending[idempotency_key(uid, notice)] = entry
        added += 1
    if not added:
        return dict(new)
    for key in sorted(pending, key=lambda k: _order(pending[k]))[: max(0, len(pending) - MAX_PENDING)]:
        del pending[key]  # a receiver down for long: the oldest go first
    notifications["pending"] = pending
    return {**new, "notifications": notifications}


def _order(entry: Mapping[str, Any]) -> tuple[str, int]:
    try:
        return str(entry.get("at") or ""), int(entry.get("seq") or 0)
    except (TypeError, ValueError):
        return str(entry.get("at") or ""), 0


def pending_entries(status: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """The pending entries of a status, oldest first."""
    pending = (status.get("notifications") or {}).get("pending") or {}
    items = [(k, v) for k, v in pending.items() if isinstance(v, Mapping)]
    return sorted(items, key=lambda kv: _order(kv[1]))


# ---------------------------------------------------------------- configuration


class ConfigError(ValueError):
    pass


@dataclasses.dataclass(frozen=True)
class Retry:
    attempts: int = 5
    initial_delay: float = 2.0
    factor: float = 3.0
    max_delay: float = 60.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait after the `attempt`-th try failed (1-based)."""
        return float(min(self.max_delay, self.initial_delay * self.factor ** (attempt - 1)))

    def total(self) -> float:
        """The longest a delivery waits between tries in all (timeouts of the tries not counted)."""
        return sum(self.delay(i) for i in range(1, self.attempts))


@dataclasses.dataclass(frozen=True)
class Target:
    name: str
    kind: str
    url: str | None = None
    secret: tuple[str, str] | None = None  # (Secret name, key) holding the URL
    headers: tuple[tuple[str, str], ...] = ()
    template: str = DEFAULT_TEMPLATE
    timeout: float = 10.0
    card: str = "adaptive"  # teams: adaptive (Workflows webhooks) or messageCard (connectors)


@dataclasses.dataclass(frozen=True)
class Config:
    targets: Mapping[str, Target]
    retry: Retry = Retry()
    errors: tuple[str, ...] = ()  # targets left out, and why


def check_template(template: str) -> str:
    """A template may use only the whitelisted placeholders, by plain name."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as e:
        raise ConfigError(f"template: {e}") from e
    for _, field, spec, conversion in parsed:
        if field is None:
            continue
        if field not in PLACEHOLDERS or conversion or (spec and "{" in spec):
            raise ConfigError(f"template: unknown placeholder {{{field}}}; use {', '.join(sorted(PLACEHOLDERS))}")
    return template


def parse_target(raw: Mapping[str, Any]) -> Target:
    name = str(raw.get("name") or "")
    if not name:
        raise ConfigError("a target needs a name")
    kind = str(raw.get("type") or "webhook")
    if kind not in KINDS:
        raise ConfigError(f"target {name}: type {kind!r} is not one of {', '.join(KINDS)}")
    url, ref = raw.get("url"), ((raw.get("urlFrom") or {}).get("secretKeyRef") or {})
    secret = (str(ref["name"]), str(ref["key"])) if ref.get("name") and ref.get("key") else None
    if bool(url) == bool(secret):
        raise ConfigError(f"target {name}: give url or urlFrom.secretKeyRef (name, key), not both")
    headers = tuple((str(k), str(v)) for k, v in (raw.get("headers") or {}).items())
    try:
        template = check_template(str(raw.get("template") or DEFAULT_TEMPLATE))
    except ConfigError as e:
        raise ConfigError(f"target {name}: {e}") from e
    card = str(raw.get("card") or "adaptive")
    if card not in ("adaptive", "messageCard"):
        raise ConfigError(f"target {name}: card {card!r} is not adaptive or messageCard")
    return Target(name, kind, str(url) if url else None, secret, headers, template, float(raw.get("timeoutSeconds") or 10), card)


def parse_config(text: str) -> Config:
    """The ConfigMap's config.yaml. A bad target is left out (and said in `errors`), the others work."""
    data = yaml.safe_load(text or "") or {}
    if not isinstance(data, Mapping):
        raise ConfigError("config.yaml is not a mapping")
    targets: dict[str, Target] = {}
    errors: list[str] = []
    for raw in data.get("targets") or []:
        try:
            t = parse_target(raw if isinstance(raw, Mapping) else {})
            targets[t.name] = t
        except (ConfigError, TypeError, ValueError) as e:
            errors.append(str(e))
    r = data.get("retry") or {}
    retry = Retry(
        attempts=max(1, int(r.get("attempts", Retry.attempts))),
        initial_delay=float(r.get("initialDelaySeconds", Retry.initial_delay)),
        factor=max(1.0, float(r.get("factor", Retry.factor))),
        max_delay=float(r.get("maxDelaySeconds", Retry.max_delay)),
    )
    return Config(targets, retry, tuple(errors))


# ---------------------------------------------------------------- formats (pure)


@dataclasses.dataclass(frozen=True)
class Message:
    """One pending entry of one Rollout, as every format needs it."""

    key: str
    namespace: str
    rollout: str
    entry: Mapping[str, Any]

    @property
    def event(self) -> str:
        return str(self.entry.get("event") or "")

    def fields(self) -> dict[str, str]:
        e = self.entry
        imgs = [str(i) for i in e.get("images") or []]
        return {
            "rollout": self.rollout,
            "namespace": self.namespace,
            "event": self.event,
            "message": str(e.get("message") or ""),
            "revision": str(e.get("revision") or ""),
            "image": ", ".join(imgs),
            "reason": str(e.get("reason") or ""),
            "key": self.key,
            "color": str(e.get("color") or ""),
        }

    def data(self, text: str) -> dict[str, Any]:
        e = self.entry
        return {
            "key": self.key,
            "event": self.event,
            "namespace": self.namespace,
            "rollout": self.rollout,
            "revision": str(e.get("revision") or ""),
            "color": e.get("color"),
            "reason": e.get("reason"),
            "message": str(e.get("message") or ""),
            "images": list(e.get("images") or []),
            "at": e.get("at"),
            "text": text,
        }


def render(template: str, msg: Message) -> str:
    return check_template(template).format(**msg.fields())


def _mrkdwn(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


BAD = ("aborted", "reverted", "analysis-failed")


def payload(target: Target, msg: Message) -> tuple[dict[str, str], dict[str, Any]]:
    """(headers, JSON body) of one notification to one target."""
    text = render(target.template, msg)
    headers = {"Idempotency-Key": msg.key, "Content-Type": "application/json", "User-Agent": "teal-operator"}
    headers.update(dict(target.headers))
    if target.kind == "cloudevents":
        headers["Content-Type"] = CLOUDEVENTS_CONTENT_TYPE
        return headers, cloudevent(msg, text)
    if target.kind == "slack":
        return headers, slack(msg, text)
    if target.kind == "teams":
        return headers, teams_message_card(msg, text) if target.card == "messageCard" else teams_adaptive(msg, text)
    return headers, msg.data(text)


def cloudevent(msg: Message, text: str) -> dict[str, Any]:
    """CloudEvents 1.0, structured mode: the attributes and the data in one JSON object."""
    return {
        "specversion": "1.0",
        "id": msg.key,
        "source": f"/namespaces/{msg.namespace}/rollouts/{msg.rollout}",
        "type": CLOUDEVENTS_TYPE + msg.event,
        "subject": str(msg.entry.get("revision") or ""),
        "time": msg.entry.get("at"),
        "datacontenttype": "application/json",
        "data": msg.data(text),
    }


def slack(msg: Message, text: str) -> dict[str, Any]:
    f = msg.fields()
    context = f"revision {f['revision']}" + (f" · {f['image']}" if f["image"] else "") + f" · {msg.key}"
    return {
        "text": _mrkdwn(text),
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": _mrkdwn(text)}},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": _mrkdwn(context)}]},
        ],
    }


def _facts(msg: Message) -> list[tuple[str, str]]:
    f = msg.fields()
    facts = [("Rollout", f"{f['namespace']}/{f['rollout']}"), ("Event", f["event"]), ("Revision", f["revision"])]
    facts += [(k, f[k.lower()]) for k in ("Image", "Reason") if f[k.lower()]]
    return facts


def teams_adaptive(msg: Message, text: str) -> dict[str, Any]:
    """An Adaptive Card in the message envelope that Teams' Workflows webhooks take."""
    card = {
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.4",
        "body": [
            {
                "type": "TextBlock",
                "text": f"{msg.rollout}: {msg.event}",
                "weight": "Bolder",
                "size": "Medium",
                "color": "Attention" if msg.event in BAD else "Good",
            },
            {"type": "TextBlock", "text": text, "wrap": True},
            {"type": "FactSet", "facts": [{"title": k, "value": v} for k, v in _facts(msg)]},
        ],
    }
    return {
        "type": "message",
        "attachments": [{"contentType": "application/vnd.microsoft.card.adaptive", "contentUrl": None, "content": card}],
    }


def teams_message_card(msg: Message, text: str) -> dict[str, Any]:
    """The legacy connector format (Office 365 connectors)."""
    return {
        "@type": "MessageCard",
        "@context": "https://schema.org/extensions",
        "summary": text[:200],
        "themeColor": "D83B01" if msg.event in BAD else "2EB886",
        "title": f"{msg.rollout}: {msg.event}",
        "text": text,
        "sections": [{"facts": [{"name": k, "value": v} for k, v in _facts(msg)]}],
    }


# ---------------------------------------------------------------- delivery


@dataclasses.dataclass(frozen=True)
class Outcome:
    result: str  # sent, failed, dropped, abandoned (this replica stopped leading)
    attempts: int
    detail: str = ""


RETRYABLE = (408, 425, 429)


async def deliver(
    post: Callable[[str, Mapping[str, str], bytes, float], Awaitable[tuple[int, Mapping[str, str]]]],
    url: str,
    headers: Mapping[str, str],
    body: bytes,
    retry: Retry,
    timeout: float,
    allowed: Callable[[], bool] = lambda: True,
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
) -> Outcome:
    """POST until a 2xx, at most retry.attempts times with exponential backoff (a Retry-After
    of a 429/503 is honoured up to the backoff's cap); a 4xx other than 408/425/429 is final."""
    detail = ""
    for attempt in range(1, retry.attempts + 1):
        if not allowed():
            return Outcome("abandoned", attempt - 1, "this replica no longer reconciles the Rollout")
        wait = retry.delay(attempt)
        try:
            code, answer = await post(url, headers, body, timeout)
        except (OSError, TimeoutError) as e:  # ConnectionError from the poster, a timeout
            detail = f"{type(e).__name__}: {e}"
        else:
            if 200 <= code < 300:
                return Outcome("sent", attempt)
            detail = f"HTTP {code}"
            if code < 500 and code not in RETRYABLE:
                return Outcome("failed", attempt, detail)
            wait = max(wait, min(retry.max_delay, _retry_after(answer.get("Retry-After"))))
        if attempt < retry.attempts:
            await sleep(wait)
    return Outcome("failed", retry.attempts, detail)


def _retry_after(value: str | None) -> float:
    try:
        return max(0.0, float(value)) if value else 0.0
    except ValueError:
        return 0.0


class AiohttpPoster:
    """POSTs with one aiohttp session (made on first use, in the running loop)."""

    def __init__(self) -> None:
        self.session: Any = None

    async def __call__(self, url: str, headers: Mapping[str, str], body: bytes, timeout: float) -> tuple[int, Mapping[str, str]]:
        import aiohttp

        if self.session is None:
            self.session = aiohttp.ClientSession()
        t = aiohttp.ClientTimeout(total=timeout)
        try:
            async with self.session.post(url, data=body, headers=dict(headers), timeout=t, allow_redirects=False) as resp:
                await resp.read()
                return resp.status, dict(resp.headers)
        except aiohttp.ClientError as e:  # not all of them are OSErrors: deliver() retries these
            raise ConnectionError(f"{type(e).__name__}: {e}") from e

    async def aclose(self) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None


class Cached:
    """A value read at most every `ttl` seconds."""

    def __init__(self, ttl: float = CONFIG_TTL) -> None:
        self.ttl = ttl
        self.values: dict[Any, tuple[float, Any]] = {}

    def get(self, key: Any, read: Callable[[], Any]) -> Any:
        hit = self.values.get(key)
        if hit is not None and time.monotonic() - hit[0] < self.ttl:
            return hit[1]
        value = read()
        self.values[key] = (time.monotonic(), value)
        return value


@dataclasses.dataclass
class _Job:
    key: str
    namespace: str
    rollout: str
    body: Mapping[str, Any]  # the Rollout as last seen (for Events)
    entry: Mapping[str, Any]
    left: set[str]  # targets not done yet


class Notifier:
    """The sender (see the module doc). `kube` is teal.kube.Kube; `call` runs a blocking call in
    the operator's thread pool; `allowed(namespace)` says whether this replica may act there now."""

    def __init__(
        self,
        kube: Any,
        call: Callable[..., Awaitable[Any]],
        config_ref: str | None,
        allowed: Callable[[str], bool] = lambda ns: True,
        post: Any = None,
    ) -> None:
        self.kube = kube
        self.call = call
        self.config_ref = _split_ref(config_ref) if config_ref else None
        self.allowed = allowed
        self.post = post or AiohttpPoster()
        self.jobs: dict[str, _Job] = {}
        self.queues: dict[tuple[str, str, str], list[str]] = {}  # (namespace, rollout, target) -> keys in order
        self.workers: dict[tuple[str, str, str], asyncio.Task[None]] = {}
        self.done: collections.OrderedDict[str, float] = collections.OrderedDict()  # key -> when removed
        self.removals: dict[tuple[str, str], set[str]] = {}
        self.remover: dict[tuple[str, str], asyncio.Task[None]] = {}
        self.cache = Cached()

    @property
    def enabled(self) -> bool:
        return self.config_ref is not None

    # -- the outbox, applied by the controller to the status it writes
    async def record(self, old: Mapping[str, Any], new: dict[str, Any], body: Mapping[str, Any]) -> None:
        """Add the pending entries of this decision's release events to `new`, in place."""
        if not self.enabled:
            return
        notices = detect(old, new)
        if not notices:
            return
        ns = str(body["metadata"].get("namespace") or "")
        ns_annotations = await self.call(self._namespace_annotations, ns)
        out = outbox(old, new, body, dt.datetime.now(dt.UTC), ns_annotations, notices)
        if "notifications" in out:
            new["notifications"] = out["notifications"]

    def _namespace_annotations(self, ns: str) -> Mapping[str, str] | None:
        def read() -> Mapping[str, str] | None:
            # None when a namespaced operator may not list Namespaces: Rollout annotations only
            meta = policy_kube.namespace_metadata(self.kube.client, ns)
            return (meta.get("annotations") or {}) if meta is not None else None

        return self.cache.get(("ns", ns), read)  # type: ignore[no-any-return]

    # -- the sender
    def offer(self, body: Mapping[str, Any], status: Mapping[str, Any]) -> None:
        """Deliver what is pending in this status (already queued or delivered keys are skipped)."""
        if not self.enabled:
            return
        meta = body["metadata"]
        ns, name = str(meta.get("namespace") or ""), str(meta["name"])
        for key, entry in pending_entries(status):
            if key in self.jobs:
                self.jobs[key].body = body
                continue
            if key in self.done:  # delivered: a stale read, a failed removal, or the event seen again
                if time.monotonic() - self.done[key] > REMOVE_AGAIN:
                    self.done[key] = time.monotonic()
                    self._remove_later(ns, name, key)
                continue
            targets = [str(t) for t in entry.get("targets") or []]
            job = self.jobs[key] = _Job(key, ns, name, body, dict(entry), set(targets))
            if not targets:
                self._finished(job)
            for target in targets:
                q = (ns, name, target)
                self.queues.setdefault(q, []).append(key)
                worker = self.workers.get(q)
                if worker is None or worker.done():
                    self.workers[q] = asyncio.create_task(self._work(q), name=f"teal:notify:{ns}/{name}:{target}")

    async def _work(self, q: tuple[str, str, str]) -> None:
        ns, _, target = q
        queue = self.queues[q]
        while queue:
            job = self.jobs.get(queue[0])
            if job is not None:
                try:
                    outcome = await self._send(job, target)
                except asyncio.CancelledError:
                    raise
                except Exception as e:  # a bug must not stop the queue: the entry is counted as failed
                    log.exception("notification %s to %s", job.key, target)
                    outcome = Outcome("failed", 0, f"{type(e).__name__}: {e}")
                if outcome.result == "abandoned":  # the queue's jobs wait for the replica that acts now
                    for key in queue:
                        self.jobs.pop(key, None)
                    queue.clear()
                    break
                await self._settled(job, target, outcome)
            if queue:
                queue.pop(0)
        self.queues.pop(q, None)
        self.workers.pop(q, None)

    async def _send(self, job: _Job, target_name: str) -> Outcome:
        config = await self.call(self.config)
        target = config.targets.get(target_name)
        if target is None:
            return Outcome("dropped", 0, f"no target {target_name!r} in the notifications configuration")
        try:
            url = target.url or await self.call(self._secret_url, target)
        except Exception as e:
            return Outcome("dropped", 0, f"the URL of target {target_name} cannot be read: {e}")
        headers, data = payload(target, Message(job.key, job.namespace, job.rollout, job.entry))
        body = json.dumps(data).encode()
        return await deliver(self.post, url, headers, body, config.retry, target.timeout, lambda: self.allowed(job.namespace))

    async def _settled(self, job: _Job, target: str, outcome: Outcome) -> None:
        metrics.NOTIFICATIONS.labels(target, outcome.result).inc()
        what = f"notification {job.entry.get('event')} of revision {job.entry.get('revision')} to {target}"
        if outcome.result == "sent":
            log.info("%s/%s: %s sent (try %d, key %s)", job.namespace, job.rollout, what, outcome.attempts, job.key)
        else:
            text = f"{what} {'not delivered after ' + str(outcome.attempts) + ' tries' if outcome.attempts else 'dropped'}: {outcome.detail}"
            log.warning("%s/%s: %s", job.namespace, job.rollout, text)
            await self._event(job, "NotificationFailed" if outcome.result == "failed" else "NotificationDropped", text)
        job.left.discard(target)
        if not job.left:
            self._finished(job)

    async def _event(self, job: _Job, reason: str, text: str) -> None:
        try:
            await self.call(self.kube.post_event, job.body, Event("Warning", reason, text))
        except Exception as e:
            log.info("event not posted: %s", e)

    def _finished(self, job: _Job) -> None:
        self.jobs.pop(job.key, None)
        self.done[job.key] = time.monotonic()
        while len(self.done) > DONE_MEMORY:
            self.done.popitem(last=False)
        self._remove_later(job.namespace, job.rollout, job.key)

    def _remove_later(self, ns: str, name: str, key: str) -> None:
        r = (ns, name)
        self.removals.setdefault(r, set()).add(key)
        task = self.remover.get(r)
        if task is None or task.done():
            self.remover[r] = asyncio.create_task(self._remove(r), name=f"teal:notify-remove:{r[0]}/{r[1]}")

    async def _remove(self, r: tuple[str, str]) -> None:
        """One merge patch for the keys done meanwhile: {key: null} removes just those entries."""
        for attempt in range(6):
            await asyncio.sleep(0.05)  # let entries finished together go in one patch
            keys = self.removals.pop(r, set())
            if not keys:
                return
            patch = {"status": {"notifications": {"pending": dict.fromkeys(sorted(keys))}}}
            try:
                await self.call(self.kube.client.patch_status, ROLLOUTS, r[0], r[1], patch)
            except NotFound:
                return
            except Exception as e:  # sent already; a later reconcile offers it again only after a restart
                log.warning("%s/%s: delivered notifications not removed from status (%s); retrying", r[0], r[1], e)
                self.removals.setdefault(r, set()).update(keys)
                await asyncio.sleep(min(10.0, 0.5 * 2**attempt))

    # -- configuration
    def config(self) -> Config:
        """The targets, read from the ConfigMap at most every CONFIG_TTL seconds."""
        return self.cache.get("config", self._read_config)  # type: ignore[no-any-return]

    def _read_config(self) -> Config:
        if self.config_ref is None:
            return Config({})
        ns, name = self.config_ref
        try:
            cm = self.kube.client.get(CONFIGMAPS, ns, name)
        except Exception as e:
            log.warning("notifications: ConfigMap %s/%s not read: %s", ns, name, e)
            return Config({}, errors=(str(e),))
        if cm is None:
            log.warning("notifications: ConfigMap %s/%s not found: no target", ns, name)
            return Config({})
        try:
            config = parse_config((cm.get("data") or {}).get(CONFIG_KEY, ""))
        except (ConfigError, yaml.YAMLError, TypeError, ValueError) as e:
            log.error("notifications: ConfigMap %s/%s: %s", ns, name, e)
            return Config({}, errors=(str(e),))
        for err in config.errors:
            log.error("notifications: ConfigMap %s/%s: %s", ns, name, err)
        return config

    def _secret_url(self, target: Target) -> str:
        assert target.secret is not None and self.config_ref is not None
        secret_name, key = target.secret
        ns = self.config_ref[0]

        def read() -> str:
            secret = self.kube.client.get(SECRETS, ns, secret_name)
            value = ((secret or {}).get("data") or {}).get(key)
            if not value:
                raise ConfigError(f"Secret {ns}/{secret_name} has no key {key}")
            return base64.b64decode(value).decode().strip()

        return self.cache.get(("secret", secret_name, key), read)  # type: ignore[no-any-return]

    async def aclose(self) -> None:
        tasks = [*self.workers.values(), *self.remover.values()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        close = getattr(self.post, "aclose", None)
        if close is not None:
            await close()


def _split_ref(ref: str) -> tuple[str, str]:
    ns, sep, name = ref.partition("/")
    if not sep or not ns or not name:
        raise ValueError(f"--notifications-config wants NAMESPACE/NAME of a ConfigMap, not {ref!r}")
    return ns, name


def summary(entries: Iterable[tuple[str, Mapping[str, Any]]]) -> list[str]:
    """One line per pending entry (for logs and the CLI)."""
    return [f"{k}: {v.get('event')} -> {', '.join(v.get('targets') or [])}" for k, v in entries]
