"""The answers the gateway gives on purpose when it cannot return audio.

Each carries its HTTP status and a one-line `detail`; the app turns them into
`{"detail": ..., **extra}` JSON (the original proxy's error shape). Nothing else in the gateway
picks a status code for a failure.
"""

from __future__ import annotations


class GatewayError(Exception):
    status = 500

    def __init__(self, detail: str, **extra: object):
        super().__init__(detail)
        self.detail = detail
        self.extra = extra


class BadInput(GatewayError):
    """The request is well-formed JSON but cannot be spoken (blank text, bad reference audio)."""

    status = 400


class NotFound(GatewayError):
    """A named thing (a voice) does not exist; `extra` lists what does."""

    status = 404


class Conflict(GatewayError):
    """The request contradicts what exists (a job id already used with another chapter count)."""

    status = 409


class TooLarge(GatewayError):
    """Over a configured limit: text length, batch length, reference size or duration, body."""

    status = 413


class GenerationFailed(GatewayError):
    """A worker reported the chunk as failed (the model server refused it or kept failing)."""

    status = 502


class Unavailable(GatewayError):
    """The bus or the store is not reachable right now."""

    status = 503


class NoAnswer(GatewayError):
    """No outcome event arrived within `gateway_request_timeout_s`."""

    status = 504


class ClientGone(Exception):
    """The client closed its connection before its answer was ready: the work for it was stopped and
    nobody is left to answer (the middleware records status 499)."""


class StreamCut(Exception):
    """A streamed answer must end without its final chunk (a chunk failed after the audio began):
    the middleware closes the connection, so the client sees an incomplete body, not a short file."""
