"""The one polling helper of the dev environment: wait on a condition with a timeout, never a
bare sleep. (``procs.wait_while_alive`` is the same wait that also fails at once when a child
process it depends on exits.)"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


class WaitTimeout(TimeoutError):
    """A condition did not become true in time.

    ``last_value`` is the last value the condition returned and ``last_error``
    the last exception it raised (conditions may raise while not yet true).
    """

    def __init__(self, message: str, last_value: object = None, last_error: BaseException | None = None):
        super().__init__(message)
        self.last_value = last_value
        self.last_error = last_error


def _describe(what: str | None, fn: Callable) -> str:
    return what or getattr(fn, "__name__", None) or repr(fn)


def _timed_out(
    timeout: float, what: str | None, fn: Callable, last_value: object, last_error: BaseException | None
) -> WaitTimeout:
    detail = f"last error: {last_error!r}" if last_error is not None else f"last value: {last_value!r}"
    return WaitTimeout(f"timed out after {timeout:.1f}s waiting for {_describe(what, fn)} ({detail})", last_value, last_error)


def wait_for(
    fn: Callable[[], T | None],
    timeout: float = 30.0,
    interval: float = 0.2,
    what: str | None = None,
    ignore: tuple[type[BaseException], ...] = (Exception,),
) -> T:
    """Call ``fn`` until it returns a truthy value and return that value.

    Exceptions of the ``ignore`` types raised by ``fn`` count as "not yet".
    Raises :class:`WaitTimeout` (a ``TimeoutError``) after ``timeout`` seconds,
    naming ``what`` and the last value or error seen.
    """
    deadline = time.monotonic() + timeout
    last_value: object = None
    last_error: BaseException | None = None
    while True:
        try:
            value = fn()
        except ignore as exc:  # not ready yet
            last_error = exc
        else:
            if value:
                return value
            last_value = value
            last_error = None
        if time.monotonic() >= deadline:
            raise _timed_out(timeout, what, fn, last_value, last_error)
        time.sleep(max(0.01, min(interval, deadline - time.monotonic())))


async def async_wait_for(
    fn: Callable[[], T | None | Awaitable[T | None]],
    timeout: float = 30.0,
    interval: float = 0.2,
    what: str | None = None,
    ignore: tuple[type[BaseException], ...] = (Exception,),
) -> T:
    """Like :func:`wait_for` for asyncio code; ``fn`` may be sync or async."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last_value: object = None
    last_error: BaseException | None = None
    while True:
        try:
            value = fn()
            if asyncio.iscoroutine(value) or isinstance(value, asyncio.Future):
                value = await value
        except ignore as exc:
            last_error = exc
        else:
            if value:
                return value  # type: ignore[return-value]
            last_value = value
            last_error = None
        if loop.time() >= deadline:
            raise _timed_out(timeout, what, fn, last_value, last_error)
        await asyncio.sleep(max(0.01, min(interval, deadline - loop.time())))
