"""Gateway fixtures: the gateway (and a recording proxy) under uvicorn on a real loopback port.

The gateway runs in its own thread and event loop, as it would in its own process, so tests talk
to it over HTTP exactly like `curl` or the `openai` SDK would. Import the fixtures into a test
module: `from tests.gateway_fixtures import gateway  # noqa: F401`.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import httpx
import pytest
import uvicorn
from starlette.requests import Request
from starlette.responses import Response

from http_gateway import create_app
from pipeline.contracts.settings import Settings
from tests.waiting import DEADLINE_S, until

START_TIMEOUT_S = 60.0


class ThreadedServer:
    """An ASGI app under uvicorn in a daemon thread, on a free port of 127.0.0.1."""

    def __init__(self, app, name: str):
        self.app = app
        self.name = name
        self.url = ""
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> "ThreadedServer":
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        config = uvicorn.Config(self.app, log_level="warning", access_log=False, timeout_graceful_shutdown=2)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]},
                                        name=self.name, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=15)
            assert not self._thread.is_alive(), f"{self.name} did not stop"


@pytest.fixture
def gateway() -> Iterator[Callable[[Settings], ThreadedServer]]:
    """Factory: `gateway(settings)` starts `create_app(settings)`; `.url` is its base URL."""
    started: list[ThreadedServer] = []

    def start(settings: Settings) -> ThreadedServer:
        server = ThreadedServer(create_app(settings), name="gateway").start()
        started.append(server)
        return server

    yield start
    for server in reversed(started):
        server.stop()


@dataclass
class RecordingProxy:
    """Forwards every request to `target` and keeps the JSON bodies of POSTs, in order: what the
    model server really received on the wire."""

    target: str
    posts: list[tuple[str, dict]] = field(default_factory=list)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        request = Request(scope, receive)
        body = await request.body()
        if request.method == "POST":
            self.posts.append((request.url.path, json.loads(body)))
        async with httpx.AsyncClient(base_url=self.target, timeout=30, trust_env=False) as client:
            answer = await client.request(request.method, request.url.path, content=body,
                                          headers={"content-type": request.headers.get("content-type", "")})
        await Response(answer.content, status_code=answer.status_code,
                       media_type=answer.headers.get("content-type"))(scope, receive, send)


@pytest.fixture
def recording_proxy() -> Iterator[Callable[[str], tuple[RecordingProxy, str]]]:
    """Factory: `proxy, url = recording_proxy(sim.url)`."""
    started: list[ThreadedServer] = []

    def start(target: str) -> tuple[RecordingProxy, str]:
        proxy = RecordingProxy(target)
        server = ThreadedServer(proxy, name="recording-proxy").start()
        started.append(server)
        return proxy, server.url

    yield start
    for server in started:
        server.stop()


async def wait_for_health(client: httpx.AsyncClient, status: str, timeout_s: float = DEADLINE_S) -> dict:
    """Poll `/health` until it reports `status`; the answer, or `NotYet` with the last one."""

    async def health() -> dict | None:
        body = (await client.get("/health")).json()
        return body if body["status"] == status else None

    return await until(health, f"/health reports {status!r}", timeout_s)
