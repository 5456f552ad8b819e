"""The studio: a web page at `/` and `/studio` (Jinja2 template + static files, no build step, no
CDN), and `GET /studio/system`, the JSON its System view draws.

The page only calls the gateway's public routes (`/v1/audio/speech`, `/v1/audio/voices`,
`/jobs...`, `/health`); the one route of its own is the system summary, which adds what no other
route has: the DLQ depth and the audio delivered per second over the last minutes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import deque
from pathlib import Path

import structlog
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from http_gateway.service import Gateway

log = structlog.get_logger("http_gateway.studio")

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=str(HERE / "templates"))
static = StaticFiles(directory=str(HERE / "static"))
STATIC_PREFIX = "/static"

router = APIRouter()

BUCKET_S = 10
WINDOW_S = 600  # ten minutes of 10 s buckets


class AudioMeter:
    """Seconds of audio delivered (every `ChunkDone` on the bus, jobs and speech alike) per
    10-second bucket over the last ten minutes. Subscribes at the gateway's start, and again on
    use after the bus came back (a new connection)."""

    def __init__(self) -> None:
        self.buckets: deque[list[float]] = deque(maxlen=WINDOW_S // BUCKET_S)  # [bucket start, audio s]
        self._sub = None
        self._nc = None
        self._lock = asyncio.Lock()

    async def ensure(self, gateway: Gateway) -> None:
        """Subscribe once per bus connection (the link makes a new one after losing it)."""
        nc = gateway.link.nc
        if not gateway.link.bus_up or (self._sub is not None and self._nc is nc):
            return
        async with self._lock:
            if self._sub is None or self._nc is not nc:
                with contextlib.suppress(Exception):
                    self._sub = await nc.subscribe(gateway.names.chunk_done("*"), cb=self._on_msg)
                    self._nc = nc

    async def _on_msg(self, msg) -> None:
        try:
            duration = float(json.loads(msg.data).get("duration_s") or 0.0)
        except (ValueError, TypeError, AttributeError):
            return
        self.add(duration)

    def add(self, audio_s: float, now: float | None = None) -> None:
        start = (now if now is not None else time.time()) // BUCKET_S * BUCKET_S
        if self.buckets and self.buckets[-1][0] == start:
            self.buckets[-1][1] += audio_s
        else:
            self.buckets.append([start, audio_s])

    def series(self, now: float | None = None) -> list[dict]:
        """One point per bucket of the window (oldest first): its start and audio s per s."""
        now = now if now is not None else time.time()
        last = now // BUCKET_S * BUCKET_S
        seen = {start: audio for start, audio in self.buckets}
        count = WINDOW_S // BUCKET_S
        return [{"t": start, "audio_s_per_s": round(seen.get(start, 0.0) / BUCKET_S, 3)}
                for start in (last - BUCKET_S * (count - 1 - i) for i in range(count))]


def _gateway(request: Request) -> Gateway:
    return request.app.state.gateway


def _meter(request: Request) -> AudioMeter:
    state = request.app.state
    if getattr(state, "audio_meter", None) is None:
        state.audio_meter = AudioMeter()
    return state.audio_meter


async def _dlq_depth(gateway: Gateway) -> int | None:
    with contextlib.suppress(Exception):
        info = await asyncio.wait_for(gateway.link.js.stream_info(gateway.names.dlq_stream), 5)
        return info.state.messages
    return None


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
@router.get("/studio", response_class=HTMLResponse, include_in_schema=False)
async def page(request: Request) -> HTMLResponse:
    meter = _meter(request)
    await meter.ensure(_gateway(request))
    return templates.TemplateResponse(request, "studio.html", {"static": STATIC_PREFIX})


@router.get("/studio/system")
async def system(request: Request) -> dict:
    """Workers alive (from heartbeats) with their model servers' health, queue depths
    (interactive, bulk, DLQ) and delivered audio s/s over the last ten minutes."""
    gateway = _gateway(request)
    meter = _meter(request)
    await meter.ensure(gateway)
    beats = await gateway.observer.heartbeats()
    depth = await gateway.observer.queue_depth()
    return {
        "bus": gateway.link.bus_up,
        "heartbeat_s": gateway.settings.heartbeat_s,
        "workers": [{"worker": b.worker, "in_flight": b.in_flight, "max_in_flight": b.max_in_flight,
                     "synthesized": b.synthesized, "failed": b.failed,
                     "backends": [{"url": s.url, "healthy": s.healthy} for s in b.backends]}
                    for b in sorted(beats, key=lambda b: b.worker)],
        "queues": {**depth, "dlq": await _dlq_depth(gateway)},
        "audio_rate": meter.series(),
        "bucket_s": BUCKET_S,
    }
