"""The Prometheus provider (I/O) and `measure`, which turns one metric into a Measurement.

`Provider` is a two-method interface (`query`, `is_online`) so tests and other backends
can stand in for Prometheus. `PrometheusProvider` is built on
prometheus_api_client.PrometheusConnect with:
- a timeout on every request (default 10 s; the library's default is none), also sent to
  Prometheus as the query's `timeout` parameter so the server gives up first;
- no silent retries (the library retries 3 times with back-off by default, which would
  multiply the timeout); a failed measurement is simply measured again at the next
  interval and counted against consecutiveErrorLimit;
- bearer token, basic auth, extra headers (e.g. X-Scope-OrgID), a CA bundle or insecure.

Calls block (requests); run them in a worker thread (asyncio.to_thread) from async code.
"""
from __future__ import annotations

import ast
import datetime as dt
import hashlib
import json
import os
import re
import tempfile
import threading
import weakref
from typing import Any, Callable, Mapping, Protocol, runtime_checkable
from urllib.parse import urlparse

import requests
from prometheus_api_client.exceptions import PrometheusApiClientException
from prometheus_api_client.prometheus_connect import PrometheusConnect
from urllib3.util.retry import Retry

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
    "provider_from_spec",
    "measure",
    "DEFAULT_TIMEOUT_S",
]

DEFAULT_TIMEOUT_S = 10.0


@runtime_checkable
class Provider(Protocol):
    def query(self, promql: str) -> QueryResult: ...

    def is_online(self) -> bool: ...


# ---------------------------------------------------------------- the Prometheus provider


_STATUS_RE = re.compile(r"^HTTP Status Code (\d+) \((.*)\)$", re.DOTALL)


def _api_error(exc: PrometheusApiClientException) -> tuple[int | None, str | None, str]:
    """(HTTP status, Prometheus errorType, error text) from the library's exception text."""
    text = str(exc)
    m = _STATUS_RE.match(text)
    if not m:
        return None, None, text
    status = int(m.group(1))
    body: Any = m.group(2)
    try:
        raw = ast.literal_eval(body)
        body = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    except (ValueError, SyntaxError):
        pass
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
    """An instant query's `data.result` (the library drops resultType) -> QueryResult."""
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


def _timeout_error(exc: BaseException) -> bool:
    if isinstance(exc, requests.Timeout):
        return True
    seen = 0
    cur: BaseException | None = exc
    while cur is not None and seen < 6:
        if "timed out" in str(cur).lower() or "timeout" in type(cur).__name__.lower():
            return True
        nxt = cur.__cause__ or cur.__context__
        if nxt is None and cur.args and isinstance(cur.args[0], BaseException):
            nxt = cur.args[0]
        cur, seen = nxt, seen + 1
    return False


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
        retries: int = 0,
    ):
        if not address:
            raise AnalysisConfigError("no Prometheus address", field="spec.analysis.prometheus.address")
        if not timeout or timeout <= 0:
            raise AnalysisConfigError(f"timeout must be positive, got {timeout!r}", field="spec.analysis.prometheus.timeout")
        self.address = address.rstrip("/")
        self.timeout = float(timeout)
        hdrs = {str(k): str(v) for k, v in (headers or {}).items()}
        if bearer_token:
            hdrs["Authorization"] = f"Bearer {bearer_token.strip()}"
        self._ca_tmp: str | None = None
        if ca_data:
            fd, path = tempfile.mkstemp(prefix="teal-prom-ca-", suffix=".crt")
            with os.fdopen(fd, "w") as f:
                f.write(ca_data)
            self._ca_tmp = path
            ca_file = path
        session = requests.Session()
        session.trust_env = False  # no HTTP(S)_PROXY surprises for an in-cluster address
        session.verify = False if insecure else (ca_file or True)
        self._session = session
        self._client = PrometheusConnect(
            url=self.address,
            headers=hdrs or None,
            disable_ssl=insecure,
            retry=Retry(total=retries, connect=retries, read=False, status=0, redirect=2, backoff_factor=0, raise_on_status=False),
            auth=basic_auth,
            session=session,
            timeout=self.timeout,
        )
        # the server-side evaluation limit, a little below ours, so a slow query says so
        self._server_timeout = f"{max(0.1, self.timeout * 0.9):.3f}"
        self._finalizer = weakref.finalize(self, PrometheusProvider._cleanup, session, self._ca_tmp)

    @staticmethod
    def _cleanup(session: requests.Session, ca_tmp: str | None) -> None:
        session.close()
        if ca_tmp:
            try:
                os.unlink(ca_tmp)
            except OSError:
                pass

    def close(self) -> None:
        self._finalizer()

    def __enter__(self) -> "PrometheusProvider":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"PrometheusProvider({self.address!r}, timeout={self.timeout:g})"

    def query(self, promql: str) -> QueryResult:
        """One instant query; never raises for transport or server errors."""
        try:
            result = self._client.custom_query(promql, params={"timeout": self._server_timeout})
        except PrometheusApiClientException as e:
            status, error_type, text = _api_error(e)
            kind = _kind_for(status, error_type)
            where = f"HTTP {status}" if status else "error"
            return QueryResult.failure(kind, f"{where} from {self.address}: {text}")
        except requests.exceptions.SSLError as e:
            return QueryResult.failure("tls", f"TLS error talking to {self.address}: {_short(e)}")
        except requests.RequestException as e:
            if _timeout_error(e):
                return QueryResult.failure("timeout", f"no answer from {self.address} within {self.timeout:g}s")
            return QueryResult.failure("unavailable", f"cannot reach {self.address}: {_short(e)}")
        except (ValueError, KeyError, TypeError) as e:  # 200 with a body that is not Prometheus's
            return QueryResult.failure("bad_response", f"{self.address} did not answer like Prometheus: {_short(e)}")
        return _parse_result(result)

    def is_online(self) -> bool:
        """True when the query API answers (with this provider's credentials)."""
        r = self.query("vector(1)")
        return r.error is None


def _short(e: BaseException) -> str:
    text = str(e)
    m = re.search(r"\[Errno -?\d+\] [^'\")]+", text)
    if m:
        return m.group(0).strip()
    if "Read timed out" in text:
        return "read timed out"
    return text[:200]


# ---------------------------------------------------------------- from spec.analysis.prometheus


def _ref(raw: Any, field: str, default_key: str | None) -> tuple[str, str | None]:
    if not isinstance(raw, Mapping) or not raw.get("name"):
        raise AnalysisConfigError("needs a Secret name", field=field)
    return str(raw["name"]), (raw.get("key") or default_key)


def _secret(read_secret: Callable[[str, str], str | None], name: str, key: str, field: str) -> str:
    value = read_secret(name, key)
    if value is None:
        raise AnalysisConfigError(
            f"Secret {name!r} or its key {key!r} not found in the Rollout's namespace", field=field
        )
    return value


def _settings(
    prom_spec: Mapping[str, Any] | None,
    read_secret: Callable[[str, str], str | None],
    default_address: str | None,
) -> dict[str, Any]:
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
        name, _ = _ref(ref, field, None)
        user = _secret(read_secret, name, "username", field)
        password = _secret(read_secret, name, "password", field)
        basic = (user.strip(), password.strip("\r\n"))
    if (token or basic) and any(k.lower() == "authorization" for k in headers):
        raise AnalysisConfigError(
            "an Authorization header conflicts with the token/basic-auth Secret", field=f"{base}.headers"
        )
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
    return PrometheusProvider(**_settings(prom_spec, read_secret, default_address))


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
        settings = _settings(prom_spec, read_secret, default_address)
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

    def __len__(self) -> int:
        return len(self._items)


# ---------------------------------------------------------------- measure


def _safe_query(provider: Provider, promql: str) -> QueryResult:
    try:
        r = provider.query(promql)
    except Exception as e:  # a provider must not take the reconcile down with it
        return QueryResult.failure("provider", f"{type(e).__name__}: {e}")
    if not isinstance(r, QueryResult):
        return QueryResult.failure("provider", f"the provider returned {type(r).__name__}, not a QueryResult")
    if r.value is not None and not isinstance(r.value, float):
        r = QueryResult(value=float(r.value), empty=r.empty, error=r.error, error_kind=r.error_kind)
    return r


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
    if value.error_kind == "bad_data":
        raise AnalysisConfigError(
            f"Prometheus rejected the query: {value.error} (query: {q})", metric=metric.name, template=metric.template, field="query"
        )
    baseline = None
    if bq is not None and value.error is None and not value.no_data:
        baseline = _safe_query(provider, bq)
        if baseline.error_kind == "bad_data":
            raise AnalysisConfigError(
                f"Prometheus rejected the baseline query: {baseline.error} (query: {bq})",
                metric=metric.name,
                template=metric.template,
                field="baseline",
            )
    return judge(metric, value, baseline, q, key, color, now, baseline_query=bq)

