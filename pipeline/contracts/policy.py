"""Delivery policies as small units: how long to wait before a retry, and when to stop."""

from __future__ import annotations

import random
from dataclasses import dataclass


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


def failure_reason(delivery_reason: str, error: BaseException) -> str:
    """The reason a chunk that ran out of deliveries is reported with: the last error's own
    (`error.reason`, e.g. "truncated") when it names one, else how delivery ended."""
    own = getattr(error, "reason", None)
    if delivery_reason == "max_deliver" and isinstance(own, str) and own:
        return own
    return delivery_reason


@dataclass(frozen=True)
class Verdict:
    """What to do with a message whose handling failed with a retryable error."""

    retry: bool
    delay_s: float = 0.0
    reason: str = ""  # when not retrying: "max_deliver" or "max_age"


@dataclass(frozen=True)
class DeliveryPolicy:
    """The three rules every consumer applies the same way: a growing, jittered delay between
    attempts; at most `max_deliver` attempts; and no retry that would end after `max_age_s`
    (0 = no age limit) counted from when the message was first published."""

    max_deliver: int
    base_delay_s: float
    max_delay_s: float
    max_age_s: float = 0.0

    @classmethod
    def from_settings(cls, settings) -> "DeliveryPolicy":
        return cls(settings.max_deliver, settings.retry_base_delay_s, settings.retry_max_delay_s,
                   settings.max_message_age_s)

    def too_old(self, age_s: float) -> bool:
        return self.max_age_s > 0 and age_s > self.max_age_s

    def after_failure(self, attempt: int, age_s: float, rng: random.Random | None = None) -> Verdict:
        if is_last_attempt(attempt, self.max_deliver):
            return Verdict(False, reason="max_deliver")
        delay_s = backoff_s(attempt, self.base_delay_s, self.max_delay_s, rng)
        if self.too_old(age_s + delay_s):
            return Verdict(False, reason="max_age")
        return Verdict(True, delay_s=delay_s)
