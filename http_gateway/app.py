"""`create_app(settings)`: the gateway as an ASGI app, its state inside the app.

The lifespan connects NATS (with the one outcome subscription) and the store; if either is not
there yet the app still starts, answers 503 and keeps trying. Every failure becomes JSON with a
`detail`; nothing answers a traceback.
"""

from __future__ import annotations

import contextlib

import structlog
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from pipeline.contracts.settings import Settings

from http_gateway import job_admin, jobs, ops, routes, studio, voices
from http_gateway.errors import GatewayError
from http_gateway.middleware import GatewayMiddleware, request_id_of
from http_gateway.service import Gateway

log = structlog.get_logger("http_gateway.app")

DESCRIPTION = """\
Text to speech over the pipeline's bus. `POST /generate` keeps the original proxy's contract;
`POST /v1/audio/speech` is OpenAI-compatible; `POST /jobs` takes whole books as chapters, with
`GET /jobs/{id}` and a progress stream; `POST /jobs/upload` takes a book file. The studio page is at `/`. Every request becomes a synth request on NATS
JetStream; workers call the model servers and store the audio.
"""


def _paths(*routers) -> frozenset[str]:
    # Read from each router: newer FastAPI lists an included router as one opaque entry.
    return frozenset(path for r in routers for route in r.routes if (path := getattr(route, "path", None)))


def create_app(settings: Settings) -> FastAPI:
    gateway = Gateway(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        await gateway.start()
        # The studio's delivered-audio chart counts from the gateway's start (or, with the bus
        # away at the start, from the first time it is asked once the bus is up).
        app.state.audio_meter = studio.AudioMeter()
        await app.state.audio_meter.ensure(gateway)
        try:
            yield
        finally:
            await gateway.close()

    app = FastAPI(title="TTS pipeline gateway", description=DESCRIPTION, version="1", lifespan=lifespan)
    app.state.gateway = gateway
    app.include_router(routes.router)
    app.include_router(ops.router)
    app.include_router(job_admin.router)  # before jobs: `/jobs/upload` is not a `/jobs/{id}`
    app.include_router(jobs.router)
    app.include_router(voices.router)
    app.include_router(studio.router)
    app.mount(studio.STATIC_PREFIX, studio.static, name="static")
    app.add_middleware(
        GatewayMiddleware, api_key=settings.gateway_api_key, max_body_bytes=settings.gateway_max_body_bytes,
        metrics=gateway.metrics, route_paths=_paths(app, routes.router, ops.router, job_admin.router, jobs.router,
                                                    voices.router, studio.router),
    )

    @app.exception_handler(GatewayError)
    async def gateway_error(request: Request, exc: GatewayError) -> JSONResponse:
        return JSONResponse({"detail": exc.detail, **exc.extra}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's 422 shape, without echoing the input (it may be megabytes of base64 audio).
        errors = [{k: v for k, v in error.items() if k != "input"} for error in exc.errors()]
        return JSONResponse({"detail": jsonable_encoder(errors)}, status_code=422)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        request_id = request_id_of(request.scope)
        log.error("gateway.unexpected", request_id=request_id, path=request.url.path,
                  error=f"{type(exc).__name__}: {exc}"[:300])
        return JSONResponse({"detail": "Internal error", "request_id": request_id}, status_code=500,
                            headers={"X-Request-Id": request_id})

    return app
