"""One ASGI middleware for what every route shares, in this order:

1. `X-Request-Id`: the client's (when it is a sane token) or a new one, on every response.
2. Bearer-token auth when `gateway_api_key` is set (constant-time compare); `OPEN_PATHS` and the
   studio's static files stay open (the page asks for the key, then sends it on every call); a
   job's event stream, chapter audio, subtitles and manifest also take the key as `?key=` (a
   browser's EventSource, `<audio src>` and download links send no headers).
3. The body size limit, before anything parses the body: `Content-Length` first, then the bytes
   actually received (a chunked upload cannot sneak past it). The body is then replayed to the app.
4. Request metrics by route template and outcome.
"""

from __future__ import annotations

import hmac
import json
import re
import time
import uuid

from starlette.datastructures import Headers, MutableHeaders, QueryParams

from http_gateway.errors import ClientGone, StreamCut
from http_gateway.metrics import GatewayMetrics

OPEN_PATHS = frozenset({"/health", "/ready", "/metrics", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json",
                        "/", "/studio"})
OPEN_PREFIXES = ("/static/",)
# What a browser loads by URL (EventSource, <audio src>, a download link) cannot carry a header.
_KEY_IN_QUERY_PATH = re.compile(r"^/jobs/[^/]+/(?:events|manifest|chapters/[0-9]+(?:/subtitles)?)$")
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
CLIENT_GONE_STATUS = 499  # nginx's code for a client that closed before the answer; metrics only


def request_id_of(scope) -> str:
    """The id the middleware gave this request ("" outside it)."""
    return scope.get("state", {}).get("request_id", "")


class GatewayMiddleware:
    def __init__(self, app, *, api_key: str, max_body_bytes: int, metrics: GatewayMetrics,
                 route_paths: frozenset[str] = frozenset()):
        self.app = app
        # Requests refused before routing are labelled with their path when it is a route's.
        self.route_paths = route_paths
        self.api_key = api_key.encode()
        self.max_body_bytes = max_body_bytes
        self.metrics = metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        given = headers.get("x-request-id", "")
        request_id = given if _REQUEST_ID_RE.match(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        status = 500

        async def send_with_id(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)["X-Request-Id"] = request_id
            await send(message)

        try:
            if self.api_key and not _open(scope["path"]) and not self._authorized(headers, scope):
                await _reject(send_with_id, 401, "Missing or invalid bearer token", {"WWW-Authenticate": "Bearer"})
                return
            if scope["method"] in _BODY_METHODS:
                body, error = await self._read_body(headers, receive)
                if error:
                    await _reject(send_with_id, 413, error)
                    return
                if body is None:  # the client went away mid-body: nobody to answer, not a server error
                    status = CLIENT_GONE_STATUS
                    return
                receive = _replay(body, receive)
            try:
                await self.app(scope, receive, send_with_id)
            except StreamCut:  # logged and counted where it happened; returning unfinished closes it
                return
            except ClientGone:
                status = CLIENT_GONE_STATUS
                return
        finally:
            route = getattr(scope.get("route"), "path", None)
            if route is None:
                route = scope["path"] if scope["path"] in self.route_paths else "unmatched"
            self.metrics.observe_request(route, status, time.perf_counter() - started)

    def _authorized(self, headers: Headers, scope) -> bool:
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self.api_key):
            return True
        if scope["method"] == "GET" and _KEY_IN_QUERY_PATH.match(scope["path"]):
            given = QueryParams(scope.get("query_string", b"").decode("latin-1")).get("key", "")
            return bool(given) and hmac.compare_digest(given.encode(), self.api_key)
        return False

    async def _read_body(self, headers: Headers, receive) -> tuple[bytes | None, str]:
        limit = self.max_body_bytes
        too_large = f"Request body is larger than the limit of {limit} bytes"
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return None, too_large
        parts: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None, ""
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return None, too_large
            parts.append(chunk)
            if not message.get("more_body", False):
                return b"".join(parts), ""


def _open(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


def _replay(body: bytes, receive):
    sent = False

    async def replayed():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # after the body: only a disconnect can come

    return replayed


async def _reject(send, status: int, detail: str, extra_headers: dict[str, str] | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in (extra_headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
