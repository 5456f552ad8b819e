"""The sim engine's capacity model: FIFO admission to a number of slots, and continuous batching
simulated one token step at a time."""

from __future__ import annotations

import asyncio
import math
from collections import deque
from dataclasses import dataclass

ENGINE_TICK_S = 0.01


# --- capacity model ----------------------------------------------------------


class SlotPool:
    """FIFO admission to `capacity()` slots; capacity may change at run time."""

    def __init__(self, capacity) -> None:
        self._capacity = capacity
        self._waiters: deque[asyncio.Future] = deque()
        self.active = 0
        self.peak_active = 0

    @property
    def queued(self) -> int:
        return sum(1 for w in self._waiters if not w.done())

    async def acquire(self) -> None:
        if not self._waiters and self.active < self._capacity():
            self._take()
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # granted just as we were cancelled: hand it on
            raise

    def release(self) -> None:
        self.active -= 1
        self.wake()

    def wake(self) -> None:
        """Admit waiters while there is room (also after `slots` grows)."""
        while self._waiters and self.active < self._capacity():
            waiter = self._waiters.popleft()
            if not waiter.done():
                self._take()
                waiter.set_result(None)

    def _take(self) -> None:
        self.active += 1
        self.peak_active = max(self.peak_active, self.active)


@dataclass
class _Generation:
    remaining_tokens: int
    done: asyncio.Future


class TokenEngine:
    """One shared loop that advances every active generation by a token per step.

    step_s(batch) = (1 / tokens_per_s) * (1 + batch_penalty * (batch - 1)). The
    loop sleeps in ticks of whole steps (>= ENGINE_TICK_S) to absolute
    deadlines, so time never drifts; newcomers join at the next tick.
    """

    def __init__(self, config) -> None:
        self._config = config
        self._joining: list[_Generation] = []
        self._task: asyncio.Task | None = None

    async def generate(self, n_tokens: int) -> None:
        if n_tokens <= 0 or self._config().tokens_per_s <= 0:
            return
        loop = asyncio.get_running_loop()
        generation = _Generation(n_tokens, loop.create_future())
        self._joining.append(generation)
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._run())
        await generation.done  # cancelling the caller cancels the future: the loop drops it

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        step_boundary = loop.time()
        active: list[_Generation] = []
        while True:
            active = [g for g in active + self._joining if not g.done.done()]
            self._joining.clear()
            if not active:
                return
            config = self._config()
            if config.tokens_per_s <= 0:
                k_steps = min(g.remaining_tokens for g in active)
            else:
                step_s = (1 + config.batch_penalty * (len(active) - 1)) / config.tokens_per_s
                per_tick = max(1, math.ceil(ENGINE_TICK_S / step_s))
                k_steps = min(per_tick, min(g.remaining_tokens for g in active))
                step_boundary += k_steps * step_s
            await asyncio.sleep(max(0.0, step_boundary - loop.time()))
            for g in active:
                g.remaining_tokens -= k_steps
                if g.remaining_tokens <= 0 and not g.done.done():
                    g.done.set_result(None)
