"""The one Kubernetes client of Teal: JSON dicts in and out, one error taxonomy, every call bounded.

The operator (controller, routers, analysis, leases, policies) and kubectl-teal all talk to the
apiserver through `Client`. It speaks JSON over urllib3 and takes its connection settings
(host, TLS, credentials) from a `kubernetes.client.Configuration` filled by the kubernetes
package's public config API (`load_kube_config`, `load_incluster_config`); nothing of the generated
client (its models, `ApiClient` internals) is used, so the hot path deserializes no model classes
and any kubernetes package version that has that config API works.

Rules (the same for every caller):

- **Errors.** Every failure is an `ApiError` with the HTTP `status` (0 when no answer came), the
  apiserver's `reason` and its `message` (the Status body's own words, fit to quote in a status
  condition or an Event). Subclasses: `NotFound` (404), `Conflict` (409), `Invalid` (400, 422),
  `Forbidden` (401, 403), `Gone` (410: a watch's resourceVersion is too old) and `Transient` (429,
  5xx, timeouts, connection errors: trying again later may help without anyone changing anything).
- **Missing objects.** `get()` and `delete()` return None when the object does not exist; a write to
  a missing object raises `NotFound`. A 404 for the resource *type* (its CRD is not installed, or the
  API group is not served) is never None: `get()` raises `NotFound` with `kind_missing` True.
- **Timeouts.** Every request has a connect and a read timeout (`Timeouts`, default 5 s + 20 s;
  one per client, e.g. kubectl's --request-timeout); a watch reads with `timeoutSeconds` plus a
  margin, so a silent stream ends too.
- **Retries.** Only `Transient` errors, only a few times (`retries`, default 3), with a short
  backoff or the server's Retry-After (capped): for reads (GET: 429, 5xx, a connection lost), and
  for any request that never reached the server (reason ConnectionError: refused, connect timeout). A read that timed out is not re-sent
  (a hung apiserver costs one timeout, not four), and a write that reached the server is never
  re-sent: writes are guarded by resourceVersion or preconditions, and the caller decides again.
- **Credentials.** Read from the Configuration on every request (`auth_settings()`), which runs its
  `refresh_api_key_hook`: exec plugins, OIDC and the projected ServiceAccount token keep rotating.
  Impersonation (`impersonate_user`, `impersonate_groups`) adds kubectl's --as/--as-group headers.
"""

from __future__ import annotations

import builtins
import collections
import dataclasses
import json
import logging
import ssl
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import urllib3
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config

log = logging.getLogger("teal.client")

JSON = dict[str, Any]

MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"
MAX_RETRY_AFTER_S = 10.0
WATCH_MARGIN_S = 30.0


class Timeouts(NamedTuple):
    """Seconds to connect and to wait for each read of the answer."""

    connect: float
    read: float


DEFAULT_TIMEOUT = Timeouts(5.0, 20.0)


def timeouts(value: Timeouts | tuple[float, float] | float) -> Timeouts:
    """(connect, read) from a pair, or from one number of seconds (connect at most 5 s of it)."""
    if isinstance(value, tuple):
        return Timeouts(float(value[0]), float(value[1]))
    return Timeouts(min(5.0, float(value)), float(value))


DEFAULT_RETRIES = 3


# ---------------------------------------------------------------- resources


@dataclasses.dataclass(frozen=True)
class Resource:
    """An API resource: group ('' for the core group), version, plural, namespaced or not."""

    group: str
    version: str
    plural: str
    namespaced: bool = True

    def path(self, namespace: str | None = None, name: str | None = None, sub: str | None = None) -> str:
        base = f"/api/{self.version}" if not self.group else f"/apis/{self.group}/{self.version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{urllib.parse.quote(namespace, safe='')}"
        base += f"/{self.plural}"
        if name:
            base += f"/{urllib.parse.quote(name, safe='')}"
        if sub:
            base += f"/{sub}"
        return base


SERVICES = Resource("", "v1", "services")
SECRETS = Resource("", "v1", "secrets")
EVENTS = Resource("", "v1", "events")
NAMESPACES = Resource("", "v1", "namespaces", namespaced=False)
DEPLOYMENTS = Resource("apps", "v1", "deployments")
CONTROLLER_REVISIONS = Resource("apps", "v1", "controllerrevisions")
INGRESSES = Resource("networking.k8s.io", "v1", "ingresses")
LEASES = Resource("coordination.k8s.io", "v1", "leases")


# ---------------------------------------------------------------- errors


class ApiError(Exception):
    """An apiserver answer other than success, or no answer (status 0)."""

    def __init__(
        self,
        status: int,
        reason: str,
        message: str,
        body: Mapping[str, Any] | None = None,
        retry_after: float | None = None,
        retryable: bool = False,
    ) -> None:
        super().__init__(f"{status} {reason}: {message}" if status else f"{reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message
        self.body: Mapping[str, Any] = body or {}
        self.retry_after = retry_after
        self.retryable = retryable

    @property
    def details(self) -> Mapping[str, Any]:
        details = self.body.get("details")
        return details if isinstance(details, Mapping) else {}

    @property
    def causes(self) -> list[Mapping[str, Any]]:
        causes = self.details.get("causes")
        return [c for c in causes if isinstance(c, Mapping)] if isinstance(causes, list) else []

    @property
    def kind_missing(self) -> bool:
        """A 404 for the resource type (CRD not installed, API group not served), not an object:
        the apiserver answers those with plain text (an unserved group) or this Status message."""
        if self.status != 404:
            return False
        return self.body.get("kind") != "Status" or "could not find the requested resource" in self.message

    def quoted(self, limit: int = 600) -> str:
        """The apiserver's message on one line, at most `limit` characters."""
        text = " ".join((self.message or self.reason or "").split())
        return text if len(text) <= limit else text[: limit - 1] + "…"


class NotFound(ApiError):
    """404: the object (or with `kind_missing`, its resource type) does not exist."""


class Conflict(ApiError):
    """409: someone wrote in between (stale resourceVersion), or the object already exists."""


class Invalid(ApiError):
    """400/422: what was sent is refused; sending it again gets the same answer."""


class Forbidden(ApiError):
    """401/403: not allowed (RBAC, a quota, an admission policy or webhook)."""


class Gone(ApiError):
    """410: the resourceVersion a watch or list started from is too old: list again."""


class Transient(ApiError):
    """429, 5xx, a timeout or no connection: trying again later may help."""


# A kubeconfig that can't be read or names no usable context (the kubernetes package's own error).
ConfigError = k8s_config.ConfigException


_BY_STATUS: dict[int, type[ApiError]] = {
    400: Invalid,
    401: Forbidden,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    410: Gone,
    422: Invalid,
    429: Transient,
}


def error_for(status: int, body: Mapping[str, Any] | None, text: str = "", retry_after: float | None = None) -> ApiError:
    """The ApiError of an answer: `body` is the Status object when the apiserver sent one."""
    body = body if isinstance(body, Mapping) else {}
    status = int(body.get("code") or status) if body.get("kind") == "Status" else status
    reason = str(body.get("reason") or "") or _default_reason(status)
    message = str(body.get("message") or text or reason)
    cls = _BY_STATUS.get(status) or (Transient if status >= 500 else ApiError)
    retryable = cls is Transient
    return cls(status, reason, message, body, retry_after=retry_after, retryable=retryable)


def _default_reason(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase.replace(" ", "")
    except ValueError:
        return "Unknown"


def _retry_after(value: str | None) -> float | None:
    try:
        return min(MAX_RETRY_AFTER_S, max(0.0, float(value))) if value else None
    except ValueError:
        return None


# ---------------------------------------------------------------- the client


class Client:
    """JSON over HTTP to one apiserver. Thread-safe (urllib3's pool); share one per process."""

    def __init__(
        self,
        configuration: k8s_client.Configuration,
        *,
        timeout: Timeouts | tuple[float, float] | float = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        impersonate_user: str | None = None,
        impersonate_groups: Sequence[str] = (),
        user_agent: str = "teal",
        pool_size: int | None = None,
    ) -> None:
        self.configuration = configuration
        self.host = str(configuration.host).rstrip("/")
        self.timeout = timeouts(timeout)
        self.retries = retries
        self.impersonate_user = impersonate_user
        self.impersonate_groups = tuple(impersonate_groups)
        self.user_agent = user_agent
        self.pool = _pool_manager(configuration, pool_size)
        # Requests sent, by (verb, resource) as the apiserver's audit log names them (a retry
        # counts again): what teal_api_requests_total exports and the request tests count.
        self.requests: collections.Counter[tuple[str, str]] = collections.Counter()

    # -- construction
    @classmethod
    def from_kubeconfig(cls, config_file: str | None = None, context: str | None = None, **kwargs: Any) -> Client:
        """From a kubeconfig (default: $KUBECONFIG, else ~/.kube/config), optionally one context."""
        cfg = k8s_client.Configuration()
        k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=config_file, context=context, client_configuration=cfg
        )
        return cls(cfg, **kwargs)

    @staticmethod
    def kubeconfig_namespace(config_file: str, context: str | None = None) -> str | None:
        """The namespace a kubeconfig's context (default: its current context) names, as kubectl reads it."""
        contexts, active = k8s_config.list_kube_config_contexts(config_file=config_file)  # type: ignore[no-untyped-call]
        chosen = next((c for c in contexts if c.get("name") == context), active) if context else active
        namespace = ((chosen or {}).get("context") or {}).get("namespace")
        return str(namespace) if namespace else None

    @classmethod
    def in_cluster(cls, **kwargs: Any) -> Client:
        """From the pod's ServiceAccount (its token file is re-read as it rotates)."""
        cfg = k8s_client.Configuration()
        k8s_config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
        return cls(cfg, **kwargs)

    @classmethod
    def auto(cls, **kwargs: Any) -> Client:
        """In-cluster credentials when in a pod, else the kubeconfig."""
        try:
            return cls.in_cluster(**kwargs)
        except k8s_config.ConfigException:
            return cls.from_kubeconfig(**kwargs)

    @classmethod
    def of(cls, thing: Any, **kwargs: Any) -> Client:
        """A Client for a Client (itself), a Configuration, or anything carrying one through the
        public attributes `configuration` (a generated ApiClient) or `api_client` (a generated *Api)."""
        if isinstance(thing, Client):
            return thing
        if isinstance(thing, k8s_client.Configuration):
            return cls(thing, **kwargs)
        if thing is None:
            return cls(k8s_client.Configuration.get_default_copy(), **kwargs)
        if hasattr(thing, "configuration"):
            return cls(thing.configuration, **kwargs)
        if hasattr(thing, "api_client"):
            return cls.of(thing.api_client, **kwargs)
        raise TypeError(f"cannot make a Kubernetes client of {type(thing).__name__}")

    def close(self) -> None:
        self.pool.clear()

    # -- reading
    def get(self, res: Resource, namespace: str | None, name: str, sub: str | None = None) -> JSON | None:
        """The object, or None when it does not exist (NotFound when its type does not)."""
        try:
            return self.request("GET", res.path(namespace, name, sub))
        except NotFound as e:
            if e.kind_missing:
                raise
            return None

    def list(
        self,
        res: Resource,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        limit: int | None = None,
    ) -> JSON:
        """The list object (items and metadata.resourceVersion, for a watch to start from);
        with `limit`, fetched in pages of that size and joined."""
        query: dict[str, Any] = {"labelSelector": label_selector, "fieldSelector": field_selector, "limit": limit}
        answer = self.request("GET", res.path(namespace), query=query)
        items = list(answer.get("items") or [])
        while limit and (answer.get("metadata") or {}).get("continue"):
            query["continue"] = answer["metadata"]["continue"]
            answer = self.request("GET", res.path(namespace), query=query)
            items.extend(answer.get("items") or [])
        answer["items"] = items
        return answer

    def items(self, res: Resource, namespace: str | None = None, **kwargs: Any) -> builtins.list[JSON]:
        return list(self.list(res, namespace, **kwargs)["items"])

    # -- writing
    def create(self, res: Resource, namespace: str | None, body: Mapping[str, Any], **query: Any) -> JSON:
        return self.request("POST", res.path(namespace), body=body, query=query)

    def replace(
        self, res: Resource, namespace: str | None, name: str, body: Mapping[str, Any], sub: str | None = None, **query: Any
    ) -> JSON:
        """PUT: guarded by the body's metadata.resourceVersion (Conflict when stale)."""
        return self.request("PUT", res.path(namespace, name, sub), body=body, query=query)

    def merge_patch(
        self, res: Resource, namespace: str | None, name: str, patch: Mapping[str, Any], sub: str | None = None, **query: Any
    ) -> JSON:
        """RFC 7386; put metadata.resourceVersion in the patch to guard it."""
        return self.request("PATCH", res.path(namespace, name, sub), body=patch, query=query, content_type=MERGE_PATCH)

    def json_patch(
        self,
        res: Resource,
        namespace: str | None,
        name: str,
        ops: Sequence[Mapping[str, Any]],
        sub: str | None = None,
        **query: Any,
    ) -> JSON:
        """RFC 6902; a failed `test` op is Invalid (422) without field causes."""
        return self.request("PATCH", res.path(namespace, name, sub), body=list(ops), query=query, content_type=JSON_PATCH)

    def apply(
        self,
        res: Resource,
        namespace: str | None,
        name: str,
        body: Mapping[str, Any],
        field_manager: str,
        force: bool = True,
        sub: str | None = None,
    ) -> JSON:
        """Server-side apply of `body` as `field_manager`."""
        query = {"fieldManager": field_manager, "force": "true" if force else None}
        return self.request("PATCH", res.path(namespace, name, sub), body=body, query=query, content_type=APPLY_PATCH)

    def patch_status(self, res: Resource, namespace: str | None, name: str, patch: Mapping[str, Any]) -> JSON:
        """Merge-patch the status subresource."""
        return self.merge_patch(res, namespace, name, patch, sub="status")

    def delete(
        self, res: Resource, namespace: str | None, name: str, *, uid: str | None = None, propagation: str | None = None
    ) -> JSON | None:
        """Delete (only the object of that `uid`, when given); None when it was already gone."""
        options: JSON = {"apiVersion": "v1", "kind": "DeleteOptions"}
        if uid:
            options["preconditions"] = {"uid": uid}
        if propagation:
            options["propagationPolicy"] = propagation
        try:
            return self.request("DELETE", res.path(namespace, name), body=options)
        except NotFound as e:
            if e.kind_missing:
                raise
            return None

    # -- watching
    def watch(
        self,
        res: Resource,
        namespace: str | None = None,
        *,
        resource_version: str | None = None,
        timeout_seconds: int = 300,
        label_selector: str | None = None,
        field_selector: str | None = None,
        bookmarks: bool = True,
    ) -> Iterator[JSON]:
        """Watch events ({"type": ADDED|MODIFIED|DELETED|BOOKMARK, "object": ...}) until the server
        ends the stream (after `timeout_seconds`). An ERROR event raises its ApiError (Gone for 410:
        list again); a cut or silent stream raises Transient. Keep the last resourceVersion seen
        (objects and BOOKMARKs) to watch on from there."""
        query = {
            "watch": "true",
            "resourceVersion": resource_version,
            "timeoutSeconds": timeout_seconds,
            "allowWatchBookmarks": "true" if bookmarks else None,
            "labelSelector": label_selector,
            "fieldSelector": field_selector,
        }
        timeout = urllib3.Timeout(connect=self.timeout.connect, read=timeout_seconds + WATCH_MARGIN_S)
        resp = self._send("GET", res.path(namespace), query, None, None, timeout, stream=True)
        try:
            if resp.status >= 400:
                raise _answer_error(resp, resp.read())
            yield from _events(resp, res)
        finally:
            resp.release_conn()

    # -- plumbing
    def request(
        self, method: str, path: str, *, body: Any = None, query: Mapping[str, Any] | None = None, content_type: str | None = None
    ) -> JSON:
        """One call, retried by the rules above; the answer's JSON ({} when empty)."""
        attempt = 0
        while True:
            try:
                return self._once(method, path, body, query, content_type)
            except ApiError as e:
                if attempt >= self.retries or not (e.retryable and (method == "GET" or e.reason == "ConnectionError")):
                    raise
                delay = e.retry_after if e.retry_after is not None else 0.1 * 2**attempt
                log.debug("%s %s: %s; retrying in %.2fs", method, path, e, delay)
                attempt += 1
                time.sleep(delay)

    def _once(self, method: str, path: str, body: Any, query: Mapping[str, Any] | None, content_type: str | None) -> JSON:
        timeout = urllib3.Timeout(connect=self.timeout.connect, read=self.timeout.read)
        resp = self._send(method, path, query, body, content_type, timeout)
        if resp.status >= 400:
            raise _answer_error(resp, resp.data)
        return json.loads(resp.data) if resp.data else {}

    def _send(
        self,
        method: str,
        path: str,
        query: Mapping[str, Any] | None,
        body: Any,
        content_type: str | None,
        timeout: urllib3.Timeout,
        stream: bool = False,
    ) -> urllib3.BaseHTTPResponse:
        params = {k: v for k, v in (query or {}).items() if v is not None}
        verb_resource = request_kind(method, path, stream)
        self.requests[verb_resource] += 1
        for observer in REQUEST_OBSERVERS:
            observer(*verb_resource)
        url = self.host + path + (f"?{urllib.parse.urlencode(params)}" if params else "")
        data = None if body is None else json.dumps(body).encode()
        headers = self.headers(content_type if body is not None else None)
        try:
            return self.pool.request(
                method,
                url,
                body=data,
                headers=headers,
                timeout=timeout,
                retries=False,
                preload_content=not stream,
                redirect=False,
            )
        except urllib3.exceptions.ReadTimeoutError as e:  # it may have been done: never re-sent
            raise Transient(0, "Timeout", f"{method} {path}: no answer within {timeout.read_timeout}s ({e})") from e
        except (urllib3.exceptions.NewConnectionError, urllib3.exceptions.ConnectTimeoutError) as e:
            raise Transient(
                0, "ConnectionError", f"cannot reach the apiserver at {self.host}: {e}", retryable=True
            ) from e  # never sent: safe to send again
        except (urllib3.exceptions.HTTPError, OSError) as e:
            # the connection broke after the request went out: only a read is safe to send again
            raise Transient(0, "ConnectionLost", f"{method} {path}: {type(e).__name__}: {e}", retryable=True) from e

    def headers(self, content_type: str | None = None) -> urllib3.HTTPHeaderDict:
        """Accept, User-Agent, credentials (refreshed by the Configuration's hook) and impersonation."""
        h = urllib3.HTTPHeaderDict({"Accept": "application/json", "User-Agent": self.user_agent})
        if content_type:
            h["Content-Type"] = content_type
        settings: Mapping[str, Any] = self.configuration.auth_settings()
        for auth in settings.values():
            if auth.get("in") == "header" and auth.get("value"):
                h[str(auth["key"])] = str(auth["value"])
        if "authorization" not in h and self.configuration.username and self.configuration.password:
            h["authorization"] = str(self.configuration.get_basic_auth_token())
        if self.impersonate_user:
            h["Impersonate-User"] = self.impersonate_user
        for group in self.impersonate_groups:
            h.add("Impersonate-Group", group)
        return h


# Called with (verb, resource) for every request any Client sends (teal.metrics counts them).
REQUEST_OBSERVERS: list[Callable[[str, str], None]] = []
_VERBS = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}


def request_kind(method: str, path: str, watch: bool = False) -> tuple[str, str]:
    """(verb, resource) of a request: ("get", "services"), ("list", "deployments"), ("watch", ...),
    ("patch", "rollouts/status"), ... as the apiserver's audit log and metrics name them."""
    parts = [p for p in path.split("?", 1)[0].split("/") if p]
    rest = parts[2:] if parts[:1] == ["api"] else parts[3:]  # /api/v1/... or /apis/group/version/...
    if len(rest) >= 3 and rest[0] == "namespaces":
        rest = rest[2:]
    resource, named, sub = (rest[0] if rest else ""), len(rest) > 1, (rest[2] if len(rest) > 2 else None)
    if method == "GET":
        verb = "watch" if watch else "get" if named else "list"
    else:
        verb = _VERBS.get(method, method.lower())
    return verb, f"{resource}/{sub}" if sub else resource


def _pool_manager(cfg: k8s_client.Configuration, size: int | None = None) -> urllib3.PoolManager:
    """A pool with the Configuration's TLS, client certificate, pool size and proxy settings."""
    args: dict[str, Any] = {
        "cert_reqs": ssl.CERT_REQUIRED if cfg.verify_ssl else ssl.CERT_NONE,
        "ca_certs": cfg.ssl_ca_cert,
        "cert_file": cfg.cert_file,
        "key_file": cfg.key_file,
        "maxsize": size or getattr(cfg, "connection_pool_maxsize", None) or 10,
        "retries": False,
    }
    if getattr(cfg, "ca_cert_data", None):
        args["ca_cert_data"] = cfg.ca_cert_data
    if cfg.assert_hostname is not None:
        args["assert_hostname"] = cfg.assert_hostname
    if getattr(cfg, "tls_server_name", None):
        args["server_hostname"] = cfg.tls_server_name
    if cfg.proxy and not _bypasses_proxy(str(cfg.host), getattr(cfg, "no_proxy", None) or ""):
        return urllib3.ProxyManager(cfg.proxy, proxy_headers=cfg.proxy_headers, **args)
    return urllib3.PoolManager(**args)


def _bypasses_proxy(host: str, no_proxy: str) -> bool:
    hostname = urllib.parse.urlparse(host).hostname or ""
    for entry in (e.strip().lower().lstrip(".") for e in no_proxy.split(",")):
        if entry == "*" or (entry and (hostname == entry or hostname.endswith("." + entry))):
            return True
    return False


def _answer_error(resp: urllib3.BaseHTTPResponse, raw: bytes) -> ApiError:
    try:
        body = json.loads(raw) if raw else None
    except ValueError:
        body = None
    text = raw.decode("utf-8", "replace").strip().splitlines()[0] if raw.strip() else ""
    return error_for(
        resp.status, body if isinstance(body, dict) else None, text, retry_after=_retry_after(resp.headers.get("Retry-After"))
    )


def _events(resp: urllib3.BaseHTTPResponse, res: Resource) -> Iterator[JSON]:
    """The events of a watch stream, one JSON document per line."""
    buf = b""
    try:
        for chunk in resp.stream(64 * 1024, decode_content=True):
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                if not line.strip():
                    continue
                event = json.loads(line)
                if event.get("type") == "ERROR":
                    obj = event.get("object")
                    raise error_for(int((obj or {}).get("code") or 500), obj if isinstance(obj, dict) else None)
                yield event
    except urllib3.exceptions.ReadTimeoutError as e:
        raise Transient(0, "Timeout", f"watch of {res.plural}: silent for too long ({e})") from e
    except (urllib3.exceptions.ProtocolError, urllib3.exceptions.HTTPError, OSError) as e:
        raise Transient(0, "ConnectionLost", f"watch of {res.plural} cut off: {e}") from e
