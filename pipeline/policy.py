"""Delivery policies as small units: how long to wait before a retry, and when to stop."""

from __future__ import annotations

import random


def backoff_s(attempt: int, base_s: float, cap_s: float, rng: random.Random | None = None) -> float:
    """Delay before delivery `attempt + 1`: exponential in `attempt` (1-based), capped, with
    jitter in [50 %, 100 %] so that a burst of failures does not come back as one burst."""
    if attempt < 1:
        attempt = 1
    ceiling = min(cap_s, base_s * (2 ** (attempt - 1)))
    rng = rng or random
    return ceiling * (0.5 + 0.5 * rng.random())


def is_last_attempt(attempt: int, max_deliver: int) -> bool:
    """JetStream stops redelivering after `max_deliver` deliveries; the last one must decide."""
    return attempt >= max_deliver
