"""Running the sim engine: under uvicorn in a background thread (`SimServer`) or in the
foreground (`serve`, `main`), with every `SimConfig` knob as a command-line flag."""

from __future__ import annotations

import argparse
from contextlib import suppress
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI

from pipeline.engines.serving import BackgroundServer
from pipeline.engines.sim.app import create_app
from pipeline.engines.sim.config import SimConfig
from pipeline.engines.sim.state import _SimState


# --- running it ----------------------------------------------------------------


class _Uvicorn(uvicorn.Server):
    """uvicorn that answers calls in flight with 503 when it shuts down.

    Plain uvicorn would wait on a hung call (hang_s) and then cancel it with a
    traceback; a real server going away drops or fails its calls too.
    """

    def __init__(self, app: FastAPI, **uvicorn_options) -> None:
        super().__init__(uvicorn.Config(
            app, log_level="warning", access_log=False, timeout_graceful_shutdown=1,
            **uvicorn_options,
        ))
        self._sim_state: _SimState = app.state.sim

    async def shutdown(self, sockets=None) -> None:
        self._sim_state.abort_all()
        await super().shutdown(sockets=sockets)


class SimServer(BackgroundServer):
    """The stand-in under uvicorn in a background thread, on 127.0.0.1.

    `start()` returns once /health answers; `url` is then set. `stop()` answers
    calls still generating (hangs included) with 503, then joins the thread.
    """

    def __init__(
        self, config: SimConfig | None = None, *, host: str = "127.0.0.1", port: int = 0,
        start_timeout_s: float = 10.0,
    ) -> None:
        self.config = config or SimConfig()
        super().__init__(create_app(self.config), host=host, port=port, start_timeout_s=start_timeout_s,
                         name="sim engine")

    def make_server(self) -> uvicorn.Server:
        return _Uvicorn(self.app)

    def stop(self, timeout_s: float = 5.0) -> None:
        super().stop(timeout_s)

    def stats(self) -> dict[str, Any]:
        """GET /sim/stats."""
        with httpx.Client(trust_env=False, timeout=5.0) as client:
            return client.get(f"{self.url}/sim/stats").raise_for_status().json()

    def __enter__(self) -> SimServer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add every `SimConfig` knob as --kebab-case, plus --host and --port."""
    for name, info in SimConfig.model_fields.items():
        flag = "--" + name.replace("_", "-")
        if info.annotation is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction,
                                default=info.default, help=info.description)
        elif name == "voices":
            parser.add_argument(flag, type=lambda s: tuple(v for v in s.split(",") if v),
                                default=info.default, help=info.description + " (comma-separated)")
        else:
            parser.add_argument(flag, type=info.annotation, default=info.default,
                                help=f"{info.description} (default: {info.default})")
    parser.add_argument("--host", default="127.0.0.1", help="bind address")
    parser.add_argument("--port", type=int, default=8000, help="bind port")


def config_from_args(args: argparse.Namespace) -> SimConfig:
    """Build a SimConfig from flags added by `add_arguments`; raises ValidationError."""
    return SimConfig(**{n: getattr(args, n) for n in SimConfig.model_fields if hasattr(args, n)})


def serve(config: SimConfig, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Run the stand-in in the foreground until SIGINT/SIGTERM; returns after a clean stop."""
    with suppress(KeyboardInterrupt):  # uvicorn re-raises the captured Ctrl-C on the way out
        _Uvicorn(create_app(config), host=host, port=port).run()


def main(argv: list[str] | None = None) -> None:
    """`python -m pipeline.engines.sim [flags]`: parse flags and serve in the foreground."""
    parser = argparse.ArgumentParser(description="Higgs Audio v2 vLLM stand-in (sim engine)")
    add_arguments(parser)
    args = parser.parse_args(argv)
    serve(config_from_args(args), args.host, args.port)
