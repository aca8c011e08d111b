"""The Prometheus provider (I/O) and `measure`, which turns one metric into a Measurement.

`Provider` is a two-method interface (`query`, `is_online`) so tests and other backends
can stand in for Prometheus; a provider may also have `aquery`, the same query awaited.
`PrometheusProvider` speaks the HTTP query API with aiohttp:
- a timeout on every request (default 10 s), also sent to Prometheus as the query's
  `timeout` parameter so the server gives up first;
- no retries; a failed measurement is simply measured again at the next interval and
  counted against consecutiveErrorLimit;
- bearer token, basic auth, extra headers (e.g. X-Scope-OrgID), a CA bundle or insecure;
- a bulkhead per server: at most `PER_SERVER_LIMIT` queries in flight to one address
  (per event loop); the wait for a slot counts against the query's timeout.

The operator awaits `aquery`: waiting for a hung Prometheus costs no thread, and the
limit keeps one server from hogging sockets. `query` runs the same code in an event loop
of its own for synchronous callers.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import re
import ssl
import threading
import weakref
from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlparse

import aiohttp

from .model import (
    AnalysisConfigError,
    Measurement,
    Metric,
    QueryResult,
    check_promql,
    judge,
    render,
    with_color,
)

__all__ = [
    "Provider",
    "PrometheusProvider",
    "ProviderCache",
    "provider_settings",
    "provider_from_spec",
    "measure",
    "ameasure",
    "DEFAULT_TIMEOUT_S",
    "PER_SERVER_LIMIT",
]

DEFAULT_TIMEOUT_S = 10.0
PER_SERVER_LIMIT = 16  # queries in flight to one Prometheus server at a time


@runtime_checkable
class Provider(Protocol):
    def query(self, promql: str) -> QueryResult: ...

    def is_online(self) -> bool: ...


# ---------------------------------------------------------------- the Prometheus provider


def _http_error(status: int, body: str) -> tuple[int, str | None, str]:
    """(HTTP status, Prometheus errorType, error text) of an answer other than 200."""
    try:
        doc = json.loads(body)
    except (TypeError, ValueError):
        snippet = " ".join(str(body).split())[:200]
        return status, None, snippet or f"HTTP {status}"
    if isinstance(doc, Mapping):
        return status, doc.get("errorType"), str(doc.get("error") or doc)
    return status, None, str(doc)[:200]


def _kind_for(status: int | None, error_type: str | None) -> str:
    if error_type == "bad_data" or (status == 400 and error_type is None):
        return "bad_data"
    if error_type in ("timeout", "canceled"):
        return "timeout"
    if error_type == "execution" or status == 422:
        return "execution"
    if status in (401, 403):
        return "unauthorized"
    if status == 404:
        return "not_found"
    if status in (429, 502, 503, 504) or error_type == "unavailable":
        return "unavailable"
    return "http"


def _labels(series: Mapping[str, Any]) -> str:
    metric = series.get("metric") or {}
    inner = ", ".join(f'{k}="{v}"' for k, v in sorted(metric.items()))
    return "{" + inner + "}"


def _parse_result(result: Any) -> QueryResult:
    """An instant query's `data.result` (resultType is implied by its shape) -> QueryResult."""
    if isinstance(result, list) and len(result) == 2 and not any(isinstance(x, Mapping) for x in result):
        # scalar [ts, "1.5"] (or string [ts, "text"])
        try:
            return QueryResult(value=float(result[1]))
        except (TypeError, ValueError):
            return QueryResult.failure("bad_data", f"the query returns a string ({result[1]!r}), not a number")
    if not isinstance(result, list):
        return QueryResult.failure("bad_response", f"unexpected result {str(result)[:200]}")
    if not result:
        return QueryResult.nothing()
    if any(isinstance(s, Mapping) and "values" in s for s in result):
        return QueryResult.failure(
            "bad_data", "the query returns a range vector; wrap it in a function such as rate(...) or avg_over_time(...)"
        )
    if len(result) > 1:
        shown = ", ".join(_labels(s) for s in result[:3]) + (", ..." if len(result) > 3 else "")
        return QueryResult.failure(
            "multiple_series",
            f"the query returned {len(result)} series ({shown}); a metric needs one number: "
            "aggregate the query, e.g. sum(...) or max(...)",
        )
    try:
        return QueryResult(value=float(result[0]["value"][1]))
    except (KeyError, IndexError, TypeError, ValueError):
        return QueryResult.failure("bad_response", f"unexpected series {str(result[0])[:200]}")


_BULKHEADS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, asyncio.Semaphore]] = weakref.WeakKeyDictionary()


def _server(address: str) -> str:
    u = urlparse(address)
    return f"{u.scheme}://{u.netloc}"


def _bulkhead(server: str) -> asyncio.Semaphore:
    """The query slots of one Prometheus server in the running event loop."""
    per_loop = _BULKHEADS.setdefault(asyncio.get_running_loop(), {})
    slot = per_loop.get(server)
    if slot is None:
        slot = per_loop[server] = asyncio.Semaphore(PER_SERVER_LIMIT)
    return slot


def _ssl_setting(ca_file: str | None, ca_data: str | None, insecure: bool) -> ssl.SSLContext | bool:
    if insecure:
        return False
    if ca_file or ca_data:
        return ssl.create_default_context(cafile=ca_file, cadata=ca_data)
    return True


def _close_later(session: aiohttp.ClientSession) -> None:
    asyncio.ensure_future(session.close())


class PrometheusProvider:
    """Instant queries against one Prometheus (or a compatible API: Thanos, Mimir, ...)."""

    def __init__(
        self,
        address: str,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        headers: Mapping[str, str] | None = None,
        bearer_token: str | None = None,
        basic_auth: tuple[str, str] | None = None,
        ca_file: str | None = None,
        ca_data: str | None = None,
        insecure: bool = False,
    ):
        if not address:
            raise AnalysisConfigError("no Prometheus address", field="spec.analysis.prometheus.address")
        if not timeout or timeout <= 0:
            raise AnalysisConfigError(f"timeout must be positive, got {timeout!r}", field="spec.analysis.prometheus.timeout")
        self.address = address.rstrip("/")
        self.server = _server(self.address)
        self.timeout = float(timeout)
        self.headers = {str(k): str(v) for k, v in (headers or {}).items()}
        if bearer_token:
            self.headers["Authorization"] = f"Bearer {bearer_token.strip()}"
        if basic_auth:
            self.headers["Authorization"] = aiohttp.encode_basic_auth(*basic_auth)
        try:
            self._ssl = _ssl_setting(ca_file, ca_data, insecure)
        except (ssl.SSLError, OSError, ValueError) as e:
            raise AnalysisConfigError(f"unusable CA certificate: {e}", field="spec.analysis.prometheus.caSecretRef") from None
        # the server-side evaluation limit, a little below ours, so a slow query says so
        self._server_timeout = f"{max(0.1, self.timeout * 0.9):.3f}"
        self._sessions: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aiohttp.ClientSession] = weakref.WeakKeyDictionary()

    def _new_session(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=PER_SERVER_LIMIT, ssl=self._ssl),
            headers=self.headers,
            trust_env=False,  # no HTTP(S)_PROXY surprises for an in-cluster address
            timeout=aiohttp.ClientTimeout(total=self.timeout + 1),  # backstop; aquery's own deadline comes first
        )

    def close(self) -> None:
        """Close the connection pools (each in its own loop, when that loop still runs)."""
        for loop, session in list(self._sessions.items()):
            if not session.closed and not loop.is_closed():
                loop.call_soon_threadsafe(_close_later, session)
        self._sessions.clear()

    async def aclose(self) -> None:
        """Close the connection pool of the running loop (and schedule the others')."""
        session = self._sessions.pop(asyncio.get_running_loop(), None)
        if session is not None:
            await session.close()
        self.close()

    def __enter__(self) -> PrometheusProvider:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"PrometheusProvider({self.address!r}, timeout={self.timeout:g})"

    async def aquery(self, promql: str) -> QueryResult:
        """One instant query, awaited; never raises for transport or server errors."""
        loop = asyncio.get_running_loop()
        session = self._sessions.get(loop)
        if session is None or session.closed:
            session = self._sessions[loop] = self._new_session()
        return await self._guarded(session, promql)

    def query(self, promql: str) -> QueryResult:
        """`aquery` for synchronous callers (its own event loop and connection)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self._query_once(promql))
        box: list[QueryResult] = []  # called from a coroutine: don't nest loops in its thread
        t = threading.Thread(target=lambda: box.append(asyncio.run(self._query_once(promql))))
        t.start()
        t.join()
        return box[0]

    async def _query_once(self, promql: str) -> QueryResult:
        async with self._new_session() as session:
            return await self._guarded(session, promql)

    async def _guarded(self, session: aiohttp.ClientSession, promql: str) -> QueryResult:
        slot = _bulkhead(self.server)
        busy = slot.locked()
        try:
            async with asyncio.timeout(self.timeout):
                async with slot:
                    return await self._ask(session, promql)
        except TimeoutError:
            why = f" (all {PER_SERVER_LIMIT} query slots for {self.server} were taken)" if busy else ""
            return QueryResult.failure("timeout", f"no answer from {self.address} within {self.timeout:g}s{why}")
        except (aiohttp.ClientSSLError, ssl.SSLError) as e:
            return QueryResult.failure("tls", f"TLS error talking to {self.address}: {_short(e)}")
        except (aiohttp.ClientError, OSError) as e:
            return QueryResult.failure("unavailable", f"cannot reach {self.address}: {_short(e)}")
        except (ValueError, KeyError, TypeError) as e:  # 200 with a body that is not Prometheus's
            return QueryResult.failure("bad_response", f"{self.address} did not answer like Prometheus: {_short(e)}")

    async def _ask(self, session: aiohttp.ClientSession, promql: str) -> QueryResult:
        params = {"query": str(promql), "timeout": self._server_timeout}
        async with session.get(f"{self.address}/api/v1/query", params=params) as resp:
            status, body = resp.status, await resp.text(errors="replace")
        if status != 200:
            status, error_type, text = _http_error(status, body)
            return QueryResult.failure(_kind_for(status, error_type), f"HTTP {status} from {self.address}: {text}")
        return _parse_result(json.loads(body)["data"]["result"])

    def is_online(self) -> bool:
        """True when the query API answers (with this provider's credentials)."""
        r = self.query("vector(1)")
        return r.error is None


def _short(e: BaseException) -> str:
    os_error = getattr(e, "os_error", None)
    if isinstance(os_error, OSError) and os_error.strerror:
        return os_error.strerror
    text = str(e)
    m = re.search(r"\[Errno -?\d+\] [^'\")]+", text)
    if m:
        return m.group(0).strip()
    return text[:200]


# ---------------------------------------------------------------- from spec.analysis.prometheus


def _ref(raw: Any, field: str, default_key: str) -> tuple[str, str]:
    if not isinstance(raw, Mapping) or not raw.get("name"):
        raise AnalysisConfigError("needs a Secret name", field=field)
    return str(raw["name"]), str(raw.get("key") or default_key)


def _secret(read_secret: Callable[[str, str], str | None], name: str, key: str, field: str) -> str:
    value = read_secret(name, key)
    if value is None:
        raise AnalysisConfigError(f"Secret {name!r} or its key {key!r} not found in the Rollout's namespace", field=field)
    return value


def provider_settings(
    prom_spec: Mapping[str, Any] | None,
    read_secret: Callable[[str, str], str | None],
    default_address: str | None,
) -> dict[str, Any]:
    """The provider's settings from `spec.analysis.prometheus` (Secrets read through `read_secret`);
    raises AnalysisConfigError naming the field. kubectl-teal lint runs it too."""
    from ..api import SpecError, parse_duration

    spec = prom_spec or {}
    base = "spec.analysis.prometheus"
    address = spec.get("address") or default_address
    if not address:
        raise AnalysisConfigError(
            "no Prometheus address: set spec.analysis.prometheus.address (the operator has no default)",
            field=f"{base}.address",
        )
    parsed = urlparse(str(address))
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise AnalysisConfigError(f"{address!r} is not an http(s) URL", field=f"{base}.address")
    try:
        timeout = parse_duration(spec.get("timeout", DEFAULT_TIMEOUT_S), f"{base}.timeout")
    except SpecError as e:
        raise AnalysisConfigError(e.message, field=e.field) from None
    if timeout <= 0:
        raise AnalysisConfigError("must be positive", field=f"{base}.timeout")
    headers: dict[str, str] = {}
    raw_headers = spec.get("headers") or []
    if isinstance(raw_headers, Mapping):
        raw_headers = [{"name": k, "value": v} for k, v in raw_headers.items()]
    for i, h in enumerate(raw_headers):
        if not isinstance(h, Mapping) or not h.get("name"):
            raise AnalysisConfigError("every header needs a name", field=f"{base}.headers[{i}]")
        name = str(h["name"])
        if not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", name):
            raise AnalysisConfigError(f"{name!r} is not a valid HTTP header name", field=f"{base}.headers[{i}].name")
        value = str(h.get("value", ""))
        if "\n" in value or "\r" in value:
            raise AnalysisConfigError(f"the value of header {name} contains a line break", field=f"{base}.headers[{i}].value")
        headers[name] = value
    token = None
    if spec.get("bearerTokenSecretRef"):
        field = f"{base}.bearerTokenSecretRef"
        name, key = _ref(spec["bearerTokenSecretRef"], field, "token")
        token = _secret(read_secret, name, key, field).strip()
        if not token:
            raise AnalysisConfigError(f"Secret {name!r} key {key!r} is empty", field=field)
    basic = None
    if spec.get("basicAuthSecretRef"):
        field = f"{base}.basicAuthSecretRef"
        if token:
            raise AnalysisConfigError("set bearerTokenSecretRef or basicAuthSecretRef, not both", field=field)
        ref = spec["basicAuthSecretRef"]
        name, _ = _ref(ref, field, "")
        user = _secret(read_secret, name, "username", field)
        password = _secret(read_secret, name, "password", field)
        basic = (user.strip(), password.strip("\r\n"))
    if (token or basic) and any(k.lower() == "authorization" for k in headers):
        raise AnalysisConfigError("an Authorization header conflicts with the token/basic-auth Secret", field=f"{base}.headers")
    ca = None
    insecure = bool(spec.get("insecureSkipVerify", False))
    if spec.get("caSecretRef"):
        field = f"{base}.caSecretRef"
        if insecure:
            raise AnalysisConfigError("set caSecretRef or insecureSkipVerify, not both", field=field)
        name, key = _ref(spec["caSecretRef"], field, "ca.crt")
        ca = _secret(read_secret, name, key, field)
        if "BEGIN CERTIFICATE" not in ca:
            raise AnalysisConfigError(f"Secret {name!r} key {key!r} holds no PEM certificate", field=field)
    return {
        "address": str(address),
        "timeout": timeout,
        "headers": headers,
        "bearer_token": token,
        "basic_auth": basic,
        "ca_data": ca,
        "insecure": insecure,
    }


def provider_from_spec(
    prom_spec: Mapping[str, Any] | None,
    read_secret: Callable[[str, str], str | None],
    default_address: str | None = None,
) -> PrometheusProvider:
    """A provider for spec.analysis.prometheus; Secrets are read through `read_secret`.

    `read_secret(name, key)` returns the decoded value, or None when the Secret or the key
    is missing (that becomes an AnalysisConfigError naming them).
    """
    return PrometheusProvider(**provider_settings(prom_spec, read_secret, default_address))


class ProviderCache:
    """Reuse providers (and their connection pools) across reconciles.

    Keyed by the settings *including* the Secret values read this time, so a rotated
    token or CA gives a fresh provider. Bounded; evicted providers are closed.
    """

    def __init__(self, size: int = 64):
        self._size = size
        self._items: dict[str, PrometheusProvider] = {}
        self._lock = threading.Lock()

    def get(
        self,
        prom_spec: Mapping[str, Any] | None,
        read_secret: Callable[[str, str], str | None],
        default_address: str | None = None,
    ) -> PrometheusProvider:
        settings = provider_settings(prom_spec, read_secret, default_address)
        key = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()
        with self._lock:
            p = self._items.pop(key, None)
            if p is None:
                p = PrometheusProvider(**settings)
            self._items[key] = p  # most recently used last
            while len(self._items) > self._size:
                oldest = next(iter(self._items))
                self._items.pop(oldest).close()
            return p

    def close(self) -> None:
        with self._lock:
            for p in self._items.values():
                p.close()
            self._items.clear()

    async def aclose(self) -> None:
        """`close` from the event loop whose connection pools it closes."""
        with self._lock:
            items = list(self._items.values())
            self._items.clear()
        for p in items:
            await p.aclose()

    def __len__(self) -> int:
        return len(self._items)


# ---------------------------------------------------------------- measure


def _checked(r: Any) -> QueryResult:
    if not isinstance(r, QueryResult):
        return QueryResult.failure("provider", f"the provider returned {type(r).__name__}, not a QueryResult")
    if r.value is not None and not isinstance(r.value, float):
        r = QueryResult(value=float(r.value), empty=r.empty, error=r.error, error_kind=r.error_kind)
    return r


def _safe_query(provider: Provider, promql: str) -> QueryResult:
    try:
        return _checked(provider.query(promql))
    except Exception as e:  # a provider must not take the reconcile down with it
        return QueryResult.failure("provider", f"{type(e).__name__}: {e}")


async def _asafe_query(provider: Provider, promql: str) -> QueryResult:
    """Awaits the provider's `aquery`; a provider without one runs `query` in a thread."""
    try:
        aquery = getattr(provider, "aquery", None)
        r = await aquery(promql) if aquery else await asyncio.to_thread(provider.query, promql)
        return _checked(r)
    except Exception as e:
        return QueryResult.failure("provider", f"{type(e).__name__}: {e}")


def resolve_queries(metric: Metric, variables: Mapping[str, str | None], color: str | None = None) -> tuple[str, str | None]:
    """The metric's query (and baseline query) with the variables filled in.

    The baseline query is rendered for the stable colour: {{color}}, {{deployment}},
    {{podRegex}} and {{revision}} mean the stable colour's there ({{stableColor}},
    {{stablePodRegex}}, ... work too).
    """
    env = with_color(variables, color if color is not None else variables.get("color"))
    env.update({f"args.{k}": v for k, v in metric.args.items()})
    try:
        q = render(metric.query, env)
        check_promql(q)
    except AnalysisConfigError as e:
        raise e.within(metric=metric.name, template=metric.template) from None
    bq = None
    if metric.baseline is not None:
        benv = with_color(env, env.get("stableColor"))
        benv["revision"] = env.get("stableRevision")
        try:
            bq = render(metric.baseline, benv)
            check_promql(bq)
        except AnalysisConfigError as e:
            raise AnalysisConfigError(e.detail, metric=metric.name, template=metric.template, field="baseline") from None
    return q, bq


def _rejected(r: QueryResult, metric: Metric, query: str, field: str) -> None:
    """Prometheus's own 'bad_data' answer is a configuration error, not a measurement."""
    if r.error_kind == "bad_data":
        what = "query" if field == "query" else "baseline query"
        raise AnalysisConfigError(
            f"Prometheus rejected the {what}: {r.error} (query: {query})",
            metric=metric.name,
            template=metric.template,
            field=field,
        )


def measure(
    provider: Provider,
    metric: Metric,
    variables: Mapping[str, str | None],
    key: str,
    color: str,
    now: dt.datetime,
) -> Measurement:
    """Render, query (value and baseline) and judge one metric.

    Provider trouble (down, timeout, several series, ...) becomes an Error measurement;
    configuration trouble (unknown variable, invalid PromQL, including Prometheus's own
    'bad_data' answer) raises AnalysisConfigError.
    """
    q, bq = resolve_queries(metric, variables, color)
    value = _safe_query(provider, q)
    _rejected(value, metric, q, "query")
    baseline = None
    if bq is not None and value.error is None and not value.no_data:
        baseline = _safe_query(provider, bq)
        _rejected(baseline, metric, bq, "baseline")
    return judge(metric, value, baseline, q, key, color, now, baseline_query=bq)


async def ameasure(
    provider: Provider,
    metric: Metric,
    variables: Mapping[str, str | None],
    key: str,
    color: str,
    now: dt.datetime,
) -> Measurement:
    """`measure`, awaiting the provider (see `_asafe_query`)."""
    q, bq = resolve_queries(metric, variables, color)
    value = await _asafe_query(provider, q)
    _rejected(value, metric, q, "query")
    baseline = None
    if bq is not None and value.error is None and not value.no_data:
        baseline = await _asafe_query(provider, bq)
        _rejected(baseline, metric, bq, "baseline")
    return judge(metric, value, baseline, q, key, color, now, baseline_query=bq)
