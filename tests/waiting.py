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


def _failure(what: str, timeout_s: float, last: Any, error: BaseException | None) -> NotYet:
    detail = f"last error {type(error).__name__}: {error}" if error is not None else f"last value {last!r}"
    return NotYet(f"{what}: still not so after {timeout_s:.0f} s ({detail})"[:2000])


async def until(check: Callable[[], Any], what: str, timeout_s: float = DEADLINE_S, every_s: float = POLL_S,
                retry_on: tuple[type[BaseException], ...] = ()) -> Any:
    """Call `check` (a function or coroutine function) until it returns something truthy, and
    return that. Exceptions listed in `retry_on` count as "not yet" (a server restarting);
    `NotYet` at the deadline, naming `what` and the last value seen."""
    deadline = time.monotonic() + timeout_s
    while True:
        last, error = None, None
        try:
            last = check()
            if inspect.isawaitable(last):
                last = await last
        except retry_on as exc:
            error = exc
        if error is None and last:
            return last
        if time.monotonic() > deadline:
            raise _failure(what, timeout_s, last, error)
        await asyncio.sleep(every_s)


def until_sync(check: Callable[[], Any], what: str, timeout_s: float = DEADLINE_S, every_s: float = POLL_S,
               retry_on: tuple[type[BaseException], ...] = ()) -> Any:
    """`until` for plain (non-async) tests."""
    deadline = time.monotonic() + timeout_s
    while True:
        last, error = None, None
        try:
            last = check()
        except retry_on as exc:
            error = exc
        if error is None and last:
            return last
        if time.monotonic() > deadline:
            raise _failure(what, timeout_s, last, error)
        time.sleep(every_s)


async def queue_empty(h) -> bool:
    """Whether the harness `h`'s synth work queue holds no message (all acked or deleted)."""
    return (await h.js.stream_info(h.names.synth_stream)).state.messages == 0
