"""Scheduling a synth worker's model calls: call slots, the pull loop, the bulk lookahead, draining.

The worker makes at most `max_in_flight` model calls at once (plus up to `finishing_slots`
messages being stored and reported). Each time a slot frees, it asks the interactive consumer
first (a no-wait pull), then the bulk one; when both are empty it waits on both at once
(`poll_s`). While interactive requests are arriving, bulk leaves `interactive_reserve` of the
slots free, so they start at once on a batch that is not full.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time

import structlog
from nats.aio.msg import Msg

from pipeline.contracts.subjects import PRIORITY_BULK, PRIORITY_INTERACTIVE

log = structlog.get_logger("pipeline.synth")

# A bulk message held for the lookahead longer than this starts next, whatever its length.
LOOKAHEAD_MAX_HOLD_S = 30.0


class _CallSlot:
    """A message's claim on one of `max_in_flight` model-call slots, given back (once) as soon as
    the model has answered, so storing and reporting overlap the next call."""

    def __init__(self, worker: Scheduling, priority: str):
        self._worker = worker
        self._priority = priority
        self._held = True
        worker._calling[priority] += 1

    def release(self) -> None:
        if self._held:
            self._held = False
            self._worker._calling[self._priority] -= 1
            self._worker._slot_freed.set()
            if self._priority == PRIORITY_BULK:
                self._worker._start_held()  # refill from the lookahead at once: no NATS round trip


class _HeldMessage:
    """A bulk message in the lookahead: its text length (the call's expected length) and since when."""

    __slots__ = ("msg", "length", "since")

    def __init__(self, msg: Msg) -> None:
        self.msg = msg
        self.since = time.monotonic()
        try:
            text = json.loads(msg.data).get("text")
        except (ValueError, AttributeError):
            text = None
        # Unreadable messages start first: they fail fast and leave the slot to the next one.
        self.length = len(text) if isinstance(text, str) else 1 << 30


class Scheduling:
    """The scheduling half of `SynthWorker` (a mixin: it uses the worker's settings, pullers,
    counters and events, set up in `SynthWorker.__init__`)."""

    @property
    def call_limit(self) -> int:
        """Model calls this worker may have running now: `max_in_flight`, or the adaptive limit."""
        return self.adaptive.limit if self.adaptive is not None else self.settings.max_in_flight

    async def _pull_loop(self) -> None:
        paused = False
        while not self._stopping.is_set():
            blocked = self._blocked()
            if blocked:
                # Pulling now would only burn delivery attempts on work that cannot finish.
                if not paused:
                    log.warning("synth.paused", reason=blocked, backends=self.client.urls)
                    paused = True
                await asyncio.sleep(min(0.5, self.settings.poll_s))
                continue
            if paused:
                log.info("synth.resumed")
                paused = False
            held, self._held_paused = self._held_paused, []
            for msg, priority in held:
                self._take(msg, priority)
            if self.adaptive is not None:
                self.adaptive.used(sum(self._calling.values()))
                self.adaptive.tick(time.monotonic())
            self._start_held()
            free = self._free()
            if free <= 0:
                self._slot_freed.clear()
                await self._top_up_lookahead()
                await self._slot_freed.wait()
                continue
            try:
                await self._pull_some(free)
            except Exception as exc:  # NATS away: nats-py reconnects; we wait and ask again
                log.warning("synth.pull_failed", error=f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(min(1.0, self.settings.poll_s * 5))

    def _blocked(self) -> str | None:
        """Why no message may start now (every model server down, the store away), or None."""
        if self.client.all_down():
            return "all model servers down"
        return "object store unreachable" if self._store_down.is_set() else None

    def _free(self) -> int:
        """Messages this worker may start now. Model calls never exceed the call limit
        (`max_in_flight`); a few more messages may be finishing (checked, stored, reported)
        while the next calls already run. Slots held by waiting pulls are not free."""
        limit = self.call_limit
        return (min(limit - sum(self._calling.values()), limit + self.settings.finishing_slots - len(self._tasks))
                - sum(self._reserved.values()))

    def bulk_room(self) -> int:
        """Bulk calls that may start now: every slot, less the interactive reserve while
        interactive requests are arriving."""
        limit = self.call_limit
        if time.monotonic() - self._interactive_seen < self.settings.interactive_hold_s:
            limit -= math.floor(limit * self.settings.interactive_reserve)
        return limit - self._calling[PRIORITY_BULK] - self._reserved[PRIORITY_BULK]

    async def _pull_some(self, free: int) -> None:
        """Start up to `free` messages: interactive first, then bulk; wait a little when idle."""
        for priority in (PRIORITY_INTERACTIVE, PRIORITY_BULK):
            if priority == PRIORITY_INTERACTIVE:
                want = free
            else:
                want = min(free, self.bulk_room()) + max(0, self.settings.bulk_lookahead - len(self._lookahead))
            msgs = await self._pullers[priority].pull(want) if want > 0 else []
            if msgs:
                for msg in msgs:
                    self._take(msg, priority)
                self._start_held()
                return
        # Idle: wait on both queues at once (one wait per queue, each holding a reserved slot
        # until its pull request is over), so an interactive request starts the moment it
        # arrives; with one free slot, wait on bulk alone (interactive then waits <= `poll_s`);
        # with no room for bulk, on interactive alone.
        if self.bulk_room() <= 0:
            order: tuple[str, ...] = (PRIORITY_INTERACTIVE,)
        else:
            order = (PRIORITY_INTERACTIVE, PRIORITY_BULK) if free >= 2 else (PRIORITY_BULK,)
        for priority in order:
            waiting = self._idle_waits.get(priority)
            if (waiting is None or waiting.done()) and free > 0:
                self._idle_waits[priority] = asyncio.create_task(self._reserved_pull(priority))
                free -= 1
        pending = [t for t in self._idle_waits.values() if t is not None and not t.done()]
        if pending:
            await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)

    async def _reserved_pull(self, priority: str) -> None:
        self._reserved[priority] += 1
        try:
            msgs = await self._pullers[priority].pull(1, wait_s=self.settings.poll_s)
        except Exception as exc:  # NATS away or the worker stopping: nothing was taken
            log.debug("synth.idle_pull_failed", error=f"{type(exc).__name__}: {exc}")
            msgs = []
        finally:
            self._reserved[priority] -= 1
        for msg in msgs:
            if self._stopping.is_set():
                with contextlib.suppress(Exception):
                    await msg.nak()
            elif self._blocked():  # this wait began before the pause: hold the message until it ends
                self._held_paused.append((msg, priority))
            else:
                self._take(msg, priority)
        self._start_held()
        self._slot_freed.set()

    def _take(self, msg: Msg, priority: str) -> None:
        """Start a pulled message; with a bulk lookahead, hold it instead (the caller then runs
        `_start_held` once the whole pull is held, so the longest of them starts)."""
        if priority == PRIORITY_BULK and self.settings.bulk_lookahead > 0:
            self._lookahead.append(_HeldMessage(msg))
        else:
            self._start(msg, priority)

    def _start_held(self) -> None:
        """Start held bulk messages while bulk may start calls: the longest text first, or one
        held for more than `LOOKAHEAD_MAX_HOLD_S` (no short chunk waits for ever)."""
        if not self._lookahead or self._stopping.is_set() or self._blocked():
            return  # paused: held messages wait (kept alive) instead of burning delivery attempts
        while self._lookahead and min(self._free(), self.bulk_room()) > 0:
            now = time.monotonic()
            oldest = min(self._lookahead, key=lambda h: h.since)
            chosen = oldest if now - oldest.since > LOOKAHEAD_MAX_HOLD_S else max(
                self._lookahead, key=lambda h: (h.length, -h.since))
            self._lookahead.remove(chosen)
            self._start(chosen.msg, PRIORITY_BULK)

    async def _top_up_lookahead(self) -> None:
        """Every call slot is busy: pull bulk messages into the lookahead (without waiting)."""
        want = self.settings.bulk_lookahead - len(self._lookahead)
        if want <= 0 or self._stopping.is_set():
            return
        try:
            msgs = await self._pullers[PRIORITY_BULK].pull(want)
        except Exception as exc:  # NATS away: the pull loop notices and waits
            log.debug("synth.lookahead_pull_failed", error=f"{type(exc).__name__}: {exc}")
            return
        for msg in msgs:
            self._take(msg, PRIORITY_BULK)
        self._start_held()

    async def _lookahead_keepalive(self) -> None:
        """In-progress acks for held messages, so holding them never outlives the ack deadline."""
        while True:
            await asyncio.sleep(max(0.5, self.settings.ack_wait_s / 3))
            for msg in [h.msg for h in self._lookahead] + [m for m, _ in self._held_paused]:
                with contextlib.suppress(Exception):
                    await msg.in_progress()

    async def _release_lookahead(self) -> None:
        """Stopping: held messages go back to the stream for another worker, at once."""
        held = [h.msg for h in self._lookahead] + [m for m, _ in self._held_paused]
        self._lookahead, self._held_paused = [], []
        for msg in held:
            with contextlib.suppress(Exception):
                await msg.nak()

    def _start(self, msg: Msg, priority: str) -> None:
        if priority == PRIORITY_INTERACTIVE:
            self._interactive_seen = time.monotonic()
        task = asyncio.create_task(self._handle(msg, priority, _CallSlot(self, priority)))
        self._tasks.add(task)
        self.stats.in_flight = len(self._tasks)
        self.stats.peak_in_flight = max(self.stats.peak_in_flight, self.stats.in_flight)
        self.stats.by_priority[priority] += 1
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        self.stats.in_flight = len(self._tasks)
        self._slot_freed.set()

    async def _drain(self) -> None:
        if not self._tasks:
            return
        log.info("synth.draining", in_flight=len(self._tasks), deadline_s=self.settings.drain_timeout_s)
        _, pending = await asyncio.wait(set(self._tasks), timeout=self.settings.drain_timeout_s)
        for task in pending:
            task.cancel()  # the handler naks its message on cancellation
        if pending:
            await asyncio.wait(pending, timeout=5.0)

