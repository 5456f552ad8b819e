"""Adaptive in-flight: find how many calls keep the model servers' batch full, by measuring.

`TTS_ADAPTIVE_IN_FLIGHT=true` makes `TTS_MAX_IN_FLIGHT` a ceiling: the worker starts at a
quarter of it and climbs. Every `adaptive_window_s` it compares the audio seconds delivered per
second with the previous window: while a step raised throughput the limit keeps moving that
way; when throughput falls it turns round; when throughput stays flat but the model's time per
audio second climbs (requests queue inside the server instead of joining its batch) it steps
down, and keeps stepping down while that time keeps falling. After a long flat stretch it probes
one step up (a server may have been added). Steps are an eighth of the limit. Windows in which
the worker never used its whole limit (not enough work queued) leave it alone. A continuous-
batching server rewards a larger batch until its slots are full and only adds latency after
that, so the limit settles around the servers' slots without being told them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

GAIN = 0.03  # a change in throughput smaller than this is noise
LATENCY_RISE = 0.06  # time per audio second this much above the last window's: queueing
PROBE_AFTER = 6  # flat windows before trying one step up again


@dataclass
class Window:
    audio_s: float = 0.0
    call_s: float = 0.0
    calls: int = 0
    saturated: bool = False


@dataclass
class AdaptiveLimit:
    ceiling: int
    window_s: float
    floor: int = 1
    limit: int = 0
    history: list[int] = field(default_factory=list)
    _window: Window = field(default_factory=Window)
    _started: float | None = None
    _last_throughput: float | None = None
    _last_cost: float | None = None
    _direction: int = 1
    _flat: int = 0

    def __post_init__(self) -> None:
        if not self.limit:
            self.limit = max(self.floor, math.ceil(self.ceiling / 4))
        self.history.append(self.limit)

    @property
    def step(self) -> int:
        return max(1, self.limit // 8)

    def used(self, calling: int) -> None:
        """The worker has `calling` calls running now."""
        if calling >= self.limit:
            self._window.saturated = True

    def record(self, audio_s: float, call_s: float) -> None:
        """A call finished: `audio_s` of audio in `call_s` seconds."""
        self._window.audio_s += audio_s
        self._window.call_s += call_s
        self._window.calls += 1

    def tick(self, now: float) -> int:
        """Close the window when it is due; returns the (possibly new) limit."""
        if self._started is None:
            self._started = now
            return self.limit
        elapsed = now - self._started
        if elapsed < self.window_s:
            return self.limit
        window, self._window, self._started = self._window, Window(), now
        if not window.saturated or window.calls == 0 or window.audio_s <= 0:
            self._last_throughput = self._last_cost = None  # not comparable with what follows
            return self.limit
        throughput = window.audio_s / elapsed
        cost = window.call_s / window.audio_s  # model seconds per audio second (per call)
        last, last_cost = self._last_throughput, self._last_cost
        self._last_throughput, self._last_cost = throughput, cost
        if last is None or last_cost is None:
            move = self._direction
        elif throughput > last * (1 + GAIN):
            move = self._direction  # the last step helped: go on
        elif throughput < last * (1 - GAIN):
            move = -self._direction  # it hurt: go back
        elif cost > last_cost * (1 + LATENCY_RISE):
            move = -1  # same throughput, longer calls: requests wait inside the server
        elif cost < last_cost * (1 - LATENCY_RISE) and self._direction < 0:
            move = -1  # same throughput, shorter calls: still shedding a queue, go on
        else:
            move = 0
        # A long flat stretch: probe upwards once in a while (a server may have been added).
        self._flat = self._flat + 1 if move == 0 else 0
        if self._flat >= PROBE_AFTER:
            move, self._flat = 1, 0
        if move:
            self._direction = move
            self.limit = min(self.ceiling, max(self.floor, self.limit + move * self.step))
        self.history.append(self.limit)
        return self.limit
