"""Operational routes: `/health` (always 200), `/ready`, `/stats`, `/metrics`."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from http_gateway.metrics import CONTENT_TYPE
from http_gateway.service import Gateway

router = APIRouter()


def _gateway(request: Request) -> Gateway:
    return request.app.state.gateway


@router.get("/health")
async def health(request: Request) -> dict:
    """The original shape. `ok` when the bus is connected and a live worker reports a healthy
    model server; backend health comes from worker heartbeats, never from calling a server."""
    gateway = _gateway(request)
    view = await gateway.observer.backends()
    ok = gateway.link.bus_up and view.healthy
    return {
        "status": "ok" if ok else "degraded",
        "vllm_backend": ",".join(view.urls),
        "vllm_healthy": view.healthy,
        "model": gateway.settings.model,
        "stats": gateway.stats.health_view(),
        "bus": gateway.link.bus_up,
        "workers_alive": view.workers_alive,
        "backends": [{"url": url, "healthy": healthy} for url, healthy in sorted(view.per_backend.items())],
    }


@router.get("/ready")
async def ready(request: Request) -> JSONResponse:
    """200 once the bus is connected and the store answers; 503 until then."""
    parts = await _gateway(request).link.readiness()
    is_ready = all(parts.values())
    return JSONResponse({"ready": is_ready, **parts}, status_code=200 if is_ready else 503)


@router.get("/stats")
async def stats(request: Request) -> dict:
    """The original counters plus what the bus knows."""
    gateway = _gateway(request)
    view = await gateway.observer.backends()
    return {
        **gateway.stats.stats_view(),
        "queue_depth": await gateway.observer.queue_depth(),
        "workers_alive": view.workers_alive,
        "cache_hits": gateway.stats.cache_hits,
    }


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    gateway = _gateway(request)
    view = await gateway.observer.backends()
    gateway.metrics.set_bus_view(await gateway.observer.queue_depth(), await gateway.observer.heartbeats(),
                                 view.per_backend)
    return Response(gateway.metrics.render(), media_type=CONTENT_TYPE)
