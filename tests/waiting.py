"""The one way a test waits for something another process or task does: a condition polled to a
generous deadline. Never a fixed sleep followed by an assertion.

CI runs the suite on a busy 2-core machine, where a step that takes 50 ms here can take several
seconds. The deadline is only there so that a real failure ends with a message instead of hanging;
a passing run never waits for it.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import Any

DEADLINE_S = 60.0
POLL_S = 0.05


class NotYet(AssertionError):
    """The condition was still false at the deadline."""


class _Deadline:
    """Judges each look at the condition: met (keep its value), not yet, or too late (`NotYet`)."""

    def __init__(self, what: str, timeout_s: float):
        self.what, self.timeout_s = what, timeout_s
        self.at = time.monotonic() + timeout_s
        self.value: Any = None

    def met(self, value: Any, error: BaseException | None) -> bool:
        if error is None and value:
            self.value = value
            return True
        if time.monotonic() > self.at:
            detail = f"last error {type(error).__name__}: {error}" if error is not None else f"last value {value!r}"
            raise NotYet(f"{self.what}: still not so after {self.timeout_s:.0f} s ({detail})"[:2000])
        return False


def _look(check: Callable[[], Any], retry_on: tuple[type[BaseException], ...]) -> tuple[Any, BaseException | None]:
    try:
        return check(), None
    except retry_on as exc:
        return None, exc


async def until(check: Callable[[], Any], what: str, timeout_s: float = DEADLINE_S, every_s: float = POLL_S,
                retry_on: tuple[type[BaseException], ...] = ()) -> Any:
    """Call `check` (a function or coroutine function) until it returns something truthy, and
    return that. Exceptions listed in `retry_on` count as "not yet" (a server restarting);
    `NotYet` at the deadline, naming `what` and the last value seen."""
    deadline = _Deadline(what, timeout_s)

    async def look() -> tuple[Any, BaseException | None]:
        value, error = _look(check, retry_on)
        if inspect.isawaitable(value):
            value, error = await _look_async(value, retry_on)
        return value, error

    while not deadline.met(*await look()):
        await asyncio.sleep(every_s)
    return deadline.value


async def _look_async(pending, retry_on: tuple[type[BaseException], ...]) -> tuple[Any, BaseException | None]:
    try:
        return await pending, None
    except retry_on as exc:
        return None, exc


def until_sync(check: Callable[[], Any], what: str, timeout_s: float = DEADLINE_S, every_s: float = POLL_S,
               retry_on: tuple[type[BaseException], ...] = ()) -> Any:
    """`until` for plain (non-async) tests."""
    deadline = _Deadline(what, timeout_s)
    while not deadline.met(*_look(check, retry_on)):
        time.sleep(every_s)
    return deadline.value


async def queue_empty(h) -> bool:
    """Whether the harness `h`'s synth work queue holds no message (all acked or deleted)."""
    return (await h.js.stream_info(h.names.synth_stream)).state.messages == 0
