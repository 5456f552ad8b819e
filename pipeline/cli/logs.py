"""structlog set-up: one line per event, to stderr, at the configured level."""

from __future__ import annotations

import logging
import sys

import structlog


class _StderrLogger:
    def msg(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    log = debug = info = warn = warning = error = critical = exception = fatal = msg


def configure(level: str = "info", json: bool = False) -> None:
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        numeric = logging.INFO
    renderer = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        # The stream is looked up at each line, not bound once: a process (or a test) that swaps
        # sys.stderr later must not leave the logger writing to a closed file.
        logger_factory=lambda *args: _StderrLogger(),
        cache_logger_on_first_use=False,
    )
    # Libraries that log through the standard module: quiet unless something is wrong.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
