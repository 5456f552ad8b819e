"""The original proxy's request counters (`/stats`, `/health`'s `stats`), kept per process.

One "request" is one synthesis: a `/generate` call, one item of a batch, one `/v1/audio/speech`
call; requests refused before they reach the bus (bad input, limits) are not counted, as the
original counted only what it sent to the model server.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class RequestStats:
    total_requests: int = 0
    successful_requests: int = 0
    failed_requests: int = 0
    total_generation_time: float = 0.0
    concurrent_requests: int = 0
    peak_concurrent: int = 0
    cache_hits: int = 0

    def begin(self) -> None:
        self.total_requests += 1
        self.concurrent_requests += 1
        self.peak_concurrent = max(self.peak_concurrent, self.concurrent_requests)

    def end(self, ok: bool, generation_s: float = 0.0, cached: bool = False) -> None:
        self.concurrent_requests -= 1
        if ok:
            self.successful_requests += 1
            self.total_generation_time += generation_s
            self.cache_hits += int(cached)
        else:
            self.failed_requests += 1

    @property
    def avg_generation_time(self) -> float:
        return self.total_generation_time / self.successful_requests if self.successful_requests else 0.0

    def health_view(self) -> dict:
        return {
            "total_requests": self.total_requests,
            "successful_requests": self.successful_requests,
            "failed_requests": self.failed_requests,
            "concurrent_requests": self.concurrent_requests,
            "peak_concurrent": self.peak_concurrent,
        }

    def stats_view(self) -> dict:
        return {
            **self.health_view(),
            "total_generation_time": round(self.total_generation_time, 3),
            "avg_generation_time": round(self.avg_generation_time, 3),
        }
