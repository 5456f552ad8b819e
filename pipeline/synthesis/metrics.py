"""Prometheus metrics of a synth worker on its own port (`TTS_WORKER_METRICS_PORT`, 0 = off).

The counters are read from the worker's own stats at scrape time, so the hot path pays nothing
for them; only the per-call latency histogram is observed by the worker.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

SYNTH_SECONDS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120)


class _WorkerCollector:
    def __init__(self, worker):
        self._worker = worker

    def collect(self):
        w = self._worker
        stats = w.stats
        labels = ["worker"]
        outcomes = CounterMetricFamily("tts_worker_chunks", "Chunks handled by outcome", labels=labels + ["outcome"])
        for outcome, value in (("synthesized", stats.synthesized), ("cached", stats.cached),
                               ("failed", stats.failed), ("retried", stats.retried)):
            outcomes.add_metric([w.name, outcome], value)
        yield outcomes
        in_flight = GaugeMetricFamily("tts_worker_in_flight", "Messages being worked on", labels=labels)
        in_flight.add_metric([w.name], stats.in_flight)
        yield in_flight
        limit = GaugeMetricFamily("tts_worker_max_in_flight", "Model-call slots of this worker (the adaptive limit when on)", labels=labels)
        limit.add_metric([w.name], w.call_limit)
        yield limit
        backend_up = GaugeMetricFamily("tts_worker_backend_healthy", "1 when the model server is in service",
                                       labels=labels + ["backend"])
        backend_calls = GaugeMetricFamily("tts_worker_backend_in_flight", "Calls in flight per model server",
                                          labels=labels + ["backend"])
        for backend in w.client.snapshot():
            backend_up.add_metric([w.name, backend["url"]], 1.0 if backend["healthy"] else 0.0)
            backend_calls.add_metric([w.name, backend["url"]], backend["in_flight"])
        yield backend_up
        yield backend_calls


class WorkerMetrics:
    """Registry, latency histogram and (optionally) the HTTP endpoint of one worker."""

    def __init__(self, worker):
        self.registry = CollectorRegistry()
        self.registry.register(_WorkerCollector(worker))
        self.synth_seconds = Histogram("tts_worker_synth_seconds", "Model-server call time per chunk",
                                       buckets=SYNTH_SECONDS_BUCKETS, registry=self.registry)

    def serve(self, host: str, port: int) -> None:
        start_http_server(port, addr=host, registry=self.registry)
