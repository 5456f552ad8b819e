"""The sim engine's state and statistics: its config, counters, slots and token engine."""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from pipeline.engines.sim.capacity import SlotPool, TokenEngine
from pipeline.engines.sim.config import SimConfig


# --- state and statistics ----------------------------------------------------


@dataclass
class _Counters:
    calls: int = 0
    calls_by_path: dict[str, int] = field(default_factory=dict)
    completed: int = 0
    errors: int = 0
    aborted: int = 0
    peak_concurrent: int = 0
    audio_s_total: float = 0.0
    audio_tokens_total: int = 0
    calls_by_text: dict[str, int] = field(default_factory=dict)


class _SimState:
    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.counters = _Counters()
        self.concurrent = 0
        self.slots = SlotPool(lambda: self.config.slots)
        self.engine = TokenEngine(lambda: self.config)
        self.started_at = int(time.time())
        self.in_flight: set[asyncio.Future] = set()

    def abort_all(self) -> None:
        """Cancel every call in flight (they answer 503), so shutdown needn't wait on hangs."""
        for work in list(self.in_flight):
            work.cancel()

    def reset(self) -> None:
        self.counters = _Counters(peak_concurrent=self.concurrent)
        self.slots.peak_active = self.slots.active

    def stats(self) -> dict[str, Any]:
        c = self.counters
        return {
            **{k: v for k, v in asdict(c).items() if k != "calls_by_text"},
            "concurrent": self.concurrent,
            "active": self.slots.active,
            "peak_active": self.slots.peak_active,
            "queued": self.slots.queued,
            "calls_by_text": dict(c.calls_by_text),
            "ideal_audio_s_per_s": self.config.ideal_audio_s_per_s,
            "config": self.config.model_dump(mode="json"),
        }
