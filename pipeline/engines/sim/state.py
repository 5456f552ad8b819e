"""The sim engine's state and statistics: its config, counters, slots and token engine."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any

from pipeline.engines.sim.capacity import SlotPool, TokenEngine
from pipeline.engines.sim.config import SimConfig


# --- state and statistics ----------------------------------------------------

CALL_LOG_SIZE = 2000  # the latest calls `/sim/stats` lists in `calls_log`


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
    # The latest calls, oldest first: which text, voice or reference and seed each one used.
    calls_log: deque = field(default_factory=lambda: deque(maxlen=CALL_LOG_SIZE))


def text_key(text: str) -> str:
    """How calls are keyed by text (`calls_by_text`, `calls_log`): sha1 of the text, 12 hex."""
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def reference_sha256(data_b64: str) -> str | None:
    """sha256 of the reference audio's bytes (what `Reference.audio_sha256` names); None: none."""
    if not data_b64:
        return None
    try:
        return hashlib.sha256(base64.b64decode(data_b64)).hexdigest()
    except (binascii.Error, ValueError):
        return hashlib.sha256(data_b64.encode()).hexdigest()


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

    def record(self, endpoint: str, text: str, voice: str | None, reference: str | None,
               seed: int | None) -> None:
        """Log one call: its text's key, its voice name (speech) or reference hash (chat), its seed."""
        self.counters.calls_log.append({"endpoint": endpoint, "text": text_key(text), "voice": voice,
                                        "reference_sha256": reference, "seed": seed})

    def reset(self) -> None:
        self.counters = _Counters(peak_concurrent=self.concurrent)
        self.slots.peak_active = self.slots.active

    def stats(self) -> dict[str, Any]:
        c = self.counters
        return {
            **{k: v for k, v in asdict(c).items() if k not in ("calls_by_text", "calls_log")},
            "concurrent": self.concurrent,
            "active": self.slots.active,
            "peak_active": self.slots.peak_active,
            "queued": self.slots.queued,
            "calls_by_text": dict(c.calls_by_text),
            "calls_log": list(c.calls_log),
            "ideal_audio_s_per_s": self.config.ideal_audio_s_per_s,
            "config": self.config.model_dump(mode="json"),
        }
