"""Prometheus metrics of one gateway process, in a registry of its own (no global state).

Request metrics are recorded as requests finish; the bus gauges (queue depth, workers, the
workers' own counters from their heartbeats) are refreshed just before each scrape.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from pipeline.contracts.messages import WorkerHeartbeat

CONTENT_TYPE = CONTENT_TYPE_LATEST
LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

_OUTCOMES = {200: "ok", 400: "bad_request", 401: "unauthorized", 404: "not_found", 409: "conflict", 413: "too_large",
             422: "invalid", 499: "client_gone", 502: "failed", 503: "unavailable", 504: "timeout"}


def outcome_of(status: int) -> str:
    if 200 <= status < 300:
        return "ok"
    return _OUTCOMES.get(status, "client_error" if status < 500 else "error")


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("tts_gateway_requests", "HTTP requests by route and outcome",
                                ["route", "outcome"], registry=r)
        self.latency = Histogram("tts_gateway_request_duration_seconds", "HTTP request latency by route",
                                 ["route"], buckets=LATENCY_BUCKETS_S, registry=r)
        self.in_flight = Gauge("tts_gateway_in_flight", "syntheses waiting on the bus", registry=r)
        self.syntheses = Counter("tts_gateway_syntheses", "syntheses by outcome (done, failed, timeout, unavailable)",
                                 ["outcome"], registry=r)
        self.audio_source = Counter("tts_gateway_audio_source",
                                    "answered syntheses by where the audio came from: reply (straight from the "
                                    "worker, on NATS) or store (cached, or too large for one message)",
                                    ["source"], registry=r)
        self.cache_hits = Counter("tts_gateway_cache_hits", "syntheses answered from stored audio", registry=r)
        self.long_requests = Counter("tts_gateway_long_requests", "requests split into several chunks, by mode "
                                     "(whole: one joined answer; stream: audio sent as chunks finish)",
                                     ["mode"], registry=r)
        self.chunks_withdrawn = Counter("tts_gateway_chunks_withdrawn",
                                        "chunk messages deleted from the work queue because their request "
                                        "ended early (client gone, DELETE, a failed chunk)", registry=r)
        self.streams_cut = Counter("tts_gateway_streams_cut", "streamed answers ended early by a failed or "
                                   "missing chunk after the audio had started", registry=r)
        self.jobs_submitted = Counter("tts_gateway_jobs_submitted", "jobs accepted by POST /jobs", registry=r)
        self.job_chapters_submitted = Counter("tts_gateway_job_chapters_submitted",
                                              "chapters published by POST /jobs", registry=r)
        self.event_streams = Gauge("tts_gateway_event_streams", "open GET /jobs/{id}/events streams", registry=r)
        self.queue_depth = Gauge("tts_queue_depth", "synth messages pending or in progress per consumer",
                                 ["consumer"], registry=r)
        self.workers_alive = Gauge("tts_workers_alive", "workers with a live heartbeat", registry=r)
        self.backend_healthy = Gauge("tts_backend_healthy", "1 when some live worker reports the backend healthy",
                                     ["backend"], registry=r)
        self.worker_in_flight = Gauge("tts_worker_in_flight", "calls in flight per worker (heartbeat)",
                                      ["worker"], registry=r)
        self.worker_counts = Gauge("tts_worker_chunks", "chunks per worker and result since its start (heartbeat)",
                                   ["worker", "result"], registry=r)

    def observe_request(self, route: str, status: int, elapsed_s: float) -> None:
        self.requests.labels(route=route, outcome=outcome_of(status)).inc()
        self.latency.labels(route=route).observe(elapsed_s)

    def set_bus_view(self, depth: dict[str, int], beats: list[WorkerHeartbeat], backends: dict[str, bool]) -> None:
        for consumer, value in depth.items():
            self.queue_depth.labels(consumer=consumer).set(value)
        self.workers_alive.set(len(beats))
        # Workers and backends come and go: drop series of those no longer reported.
        self.backend_healthy.clear()
        for url, healthy in backends.items():
            self.backend_healthy.labels(backend=url).set(int(healthy))
        self.worker_in_flight.clear()
        self.worker_counts.clear()
        for beat in beats:
            self.worker_in_flight.labels(worker=beat.worker).set(beat.in_flight)
            for result in ("synthesized", "cached", "failed", "retried"):
                self.worker_counts.labels(worker=beat.worker, result=result).set(getattr(beat, result))

    def render(self) -> bytes:
        return generate_latest(self.registry)
