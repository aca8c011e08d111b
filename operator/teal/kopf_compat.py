"""Keep kopf's watch streams alive through watch errors other than 410 Gone.

kopf 1.45 (kopf/_cogs/clients/watching.py, `continuous_watch`) restarts a watch after an
ERROR event with code 410 (resourceVersion too old), but raises `WatchingError` for any
other ERROR event, e.g. a 500 ("etcdserver: request timed out") or a 403 after an RBAC
change mid-watch. Nothing catches it: the watcher task fails and the whole operator exits.
An API error of the watch or list request itself (a 5xx after kopf's own retries, a 403)
ends the same way.

`install()` (called by `teal run` before kopf starts) wraps `continuous_watch`, which
kopf's `infinite_watch` looks up by module name on every reconnect. Such an error is
logged as a warning and ends only that stream, as a 410 does: `infinite_watch` lists
again and watches on. While the errors repeat, the wrapper waits before giving the
stream back, 0.5 s doubling up to 30 s, so a lasting 403 does not hammer the apiserver;
any event received resets the backoff. A 401 is left to kopf's re-login, and a
cancellation (the operator stopping) passes through.

Checked against kopf 1.45.2 (pinned in pyproject.toml): `install()` refuses a kopf whose
`continuous_watch` it does not know, rather than patching blindly.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

from kopf._cogs.clients import errors, watching

log = logging.getLogger("teal")

MAX_BACKOFF_S = 30.0
_ORIGINAL = watching.continuous_watch
_failures: dict[tuple[str, str | None], int] = {}


async def continuous_watch(*, settings: Any, resource: Any, namespace: Any, operator_pause_waiter: Any) -> AsyncIterator[Any]:
    key = (str(resource), namespace)
    try:
        async for event in _ORIGINAL(
            settings=settings, resource=resource, namespace=namespace, operator_pause_waiter=operator_pause_waiter
        ):
            _failures.pop(key, None)
            yield event
    except (watching.WatchingError, errors.APIError) as e:
        if isinstance(e, errors.APIUnauthorizedError):
            raise  # kopf's authentication handles it (re-login)
        n = _failures[key] = _failures.get(key, 0) + 1
        delay = min(MAX_BACKOFF_S, 0.5 * 2 ** (n - 1))
        where = f"in {namespace!r}" if namespace is not None else "cluster-wide"
        log.warning("watch of %s %s failed: %s; listing and watching again in %.1fs", resource, where, e, delay)
        await asyncio.sleep(delay)


def install() -> None:
    """Patch kopf (idempotent)."""
    if watching.continuous_watch is continuous_watch:
        return
    if getattr(watching.continuous_watch, "__qualname__", "") != "continuous_watch" or not hasattr(watching, "infinite_watch"):
        raise RuntimeError("teal.kopf_compat: this kopf's watching module is not the one it was written for")
    watching.continuous_watch = continuous_watch
