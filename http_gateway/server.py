"""Running the gateway under uvicorn (`tts-pipeline gateway`, or inside another asyncio program)."""

from __future__ import annotations

import uvicorn

from pipeline.contracts.settings import Settings

from http_gateway.app import create_app


def uvicorn_server(settings: Settings, host: str | None = None, port: int | None = None) -> uvicorn.Server:
    """A configured server; `await server.serve()` runs it until `server.should_exit = True`."""
    config = uvicorn.Config(
        create_app(settings),
        host=host or settings.gateway_host,
        port=settings.gateway_port if port is None else port,
        log_level=settings.log_level.lower(),
        access_log=False,
        # Requests wait on the bus up to the request timeout; keep-alive for clients that pool.
        timeout_keep_alive=30,
        timeout_graceful_shutdown=5,
    )
    return uvicorn.Server(config)


async def run_gateway(settings: Settings, host: str | None = None, port: int | None = None) -> None:
    """Serve until SIGINT/SIGTERM (uvicorn's own handlers)."""
    await uvicorn_server(settings, host, port).serve()
