"""The HTTP surface both local engines share with the Higgs Audio v2 vLLM image.

Request models, error bodies and prompt helpers of the subset of the protocol the worker uses
(reference/higgs-vllm-api.md §1), so the stand-in (`sim`) and the Piper engine answer the same
requests with the same statuses and bodies:

- POST bodies must be `application/json`, else 415 `{"detail": ...}` (FastAPI's shape, as vLLM);
- an unknown model is 404, a malformed body or an over-length prompt 400, all in vLLM's
  `{"object":"error","message","type","param":null,"code"}` body;
- sampling fields are checked with vLLM's rules and wording;
- `"stream": true` on chat completions answers Server-Sent Events as the Higgs server does
  (`chat_stream_response`): a first chunk with the role, `chat.completion.chunk` events whose
  `delta.audio.data` is base64 headerless PCM16 at 24 kHz mono, a last chunk with
  `finish_reason`, with `stream_options.include_usage` a chunk with `usage` and no choices, then
  `data: [DONE]`.

`BackgroundServer` runs any such app under uvicorn in a thread on 127.0.0.1 (tests, benchmarks).
"""

from __future__ import annotations

import base64
import json
import math
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import suppress
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Literal

import httpx
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import ClientDisconnect

OPENAI_VOICES = (
    "alloy", "ash", "ballad", "coral", "echo", "fable", "onyx", "nova", "sage", "shimmer", "verse",
)
CLIENT_GONE_STATUS = 499  # a caller that left before the answer; for counters only, nobody reads it
AUDIO_TOKENS_PER_S = 25  # one codec frame of Higgs Audio v2 = 40 ms
PROMPT_TOKENS_PER_WORD = 1.3
B64_CHARS_PER_AUDIO_TOKEN = 2560  # 24 kHz * 2 bytes / 25 tokens * 4/3 base64 overhead
SPEECH_PRESET_PROMPT_TOKENS = 300  # system turn + preset transcript + ~10 s reference clip


class RequestError(Exception):
    """A request the server refuses: becomes vLLM's error body with `status`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def error_response(status: int, message: str) -> JSONResponse:
    """vLLM's error body: {"object":"error","message","type","param":null,"code"}."""
    phrase = "".join(HTTPStatus(status).phrase.split())
    kind = phrase if phrase.endswith("Error") else phrase + "Error"
    body = {"object": "error", "message": message, "type": kind, "param": None, "code": status}
    return JSONResponse(body, status_code=status)


def response_for(exc: RequestError) -> JSONResponse:
    """The body the real server sends for `exc` (415 comes from FastAPI, not from vLLM)."""
    if exc.status == 415:
        return JSONResponse({"detail": exc.message}, status_code=415)
    if exc.status == CLIENT_GONE_STATUS:  # not an HTTP status vLLM knows; nobody reads the answer
        return Response(status_code=CLIENT_GONE_STATUS)
    return error_response(exc.status, exc.message)


class Sampling(BaseModel):
    model_config = ConfigDict(extra="allow")  # the real server logs and ignores extras

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    max_tokens: int | None = Field(None, ge=1)

    def check(self) -> None:
        # Same rules and wording as vLLM's SamplingParams.
        if self.temperature < 0:
            raise RequestError(400, f"temperature must be non-negative, got {self.temperature}.")
        if not 0 < self.top_p <= 1:
            raise RequestError(400, f"top_p must be in (0, 1], got {self.top_p}.")
        if self.top_k < -1:
            raise RequestError(
                400, f"top_k must be -1 (disable), or at least 1, got {self.top_k}."
            )


class ChatRequest(Sampling):
    model: str | None = None
    messages: list[dict[str, Any]] = Field(min_length=1)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    seed: int | None = None
    max_completion_tokens: int | None = Field(None, ge=1)
    audio: dict[str, Any] | None = None


class SpeechRequest(Sampling):
    model: str
    input: str
    voice: str
    top_p: float = 0.95
    top_k: int = 50
    response_format: Literal["wav", "mp3", "pcm"] = "pcm"


async def parse(request: Request, model_cls: type[BaseModel]):
    """The validated body, or `RequestError` 415 (not JSON) / 400 (invalid)."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "application/json":
        raise RequestError(415, "Unsupported Media Type: Only 'application/json' is allowed")
    try:
        parsed = model_cls.model_validate(json.loads(await request.body()))
    except (ValueError, ValidationError) as exc:
        raise RequestError(400, describe(exc)) from None
    except ClientDisconnect:  # the caller cancelled before its body arrived: no traceback, no work
        raise RequestError(CLIENT_GONE_STATUS, "The client left before its request body arrived.") from None
    parsed.check()
    return parsed


def describe(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
    return f"Invalid JSON body: {exc}"


def check_model(served: str, model: str | None) -> None:
    if model is not None and model != served:
        raise RequestError(404, f"The model `{model}` does not exist.")


def check_chat_audio(req: ChatRequest, formats: tuple[str, ...] = ("wav", "pcm16")) -> str:
    """The requested chat audio format (a stream's deltas are always PCM16); 400 for other
    formats or non-OpenAI voices."""
    audio_format = (req.audio or {}).get("format", "wav")
    if audio_format not in formats:
        raise RequestError(400, f"audio.format {audio_format!r} is not supported by this engine.")
    if (req.audio or {}).get("voice", "alloy") not in OPENAI_VOICES:
        raise RequestError(400, f"audio.voice: Input should be one of {', '.join(OPENAI_VOICES)}")
    return audio_format


@dataclass(frozen=True)
class StreamEnd:
    """The last item of a chat stream's audio: why generation stopped and what it cost."""

    finish_reason: str
    completion_tokens: int


def _sse(body: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


async def chat_stream_response(model: str, prompt_tokens: int, include_usage: bool,
                               items: AsyncIterator[bytes | StreamEnd],
                               headers: dict[str, str] | None = None) -> StreamingResponse:
    """SSE for a streamed chat completion from `items`: PCM16 (24 kHz mono) pieces, then one
    `StreamEnd`. Waits for the first item, so an error raised before any audio (a refused or
    failed call) still becomes an error status; `items` is closed when the client leaves."""
    try:
        first = await anext(items)
    except BaseException:
        await items.aclose()
        raise
    completion_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    audio_id = f"audio-{uuid.uuid4()}"

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        body: dict[str, Any] = {
            "id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        }
        if include_usage:
            body["usage"] = None
        return _sse(body)

    async def body() -> AsyncIterator[bytes]:
        try:
            yield chunk({"role": "assistant", "content": ""})
            item = first
            while not isinstance(item, StreamEnd):
                data = base64.b64encode(item).decode("ascii")
                yield chunk({"audio": {"id": audio_id, "data": data, "expires_at": 0, "transcript": ""}})
                item = await anext(items)
            yield chunk({}, item.finish_reason)
            if include_usage:
                yield _sse({"id": completion_id, "object": "chat.completion.chunk", "created": created,
                            "model": model, "choices": [], "usage": {
                                "prompt_tokens": prompt_tokens, "completion_tokens": item.completion_tokens,
                                "total_tokens": prompt_tokens + item.completion_tokens}})
            yield b"data: [DONE]\n\n"
        finally:
            await items.aclose()

    return StreamingResponse(body(), media_type="text/event-stream", headers=headers)


def include_usage(req: ChatRequest) -> bool:
    return bool((req.stream_options or {}).get("include_usage"))


def token_limit(max_model_len: int, prompt_tokens: int, max_tokens: int | None) -> int:
    """Audio tokens the call may generate; 400 with vLLM's wording when over length."""
    prefix = f"This model's maximum context length is {max_model_len} tokens. However, you requested"
    if max_tokens is None:
        if prompt_tokens >= max_model_len:
            raise RequestError(400, f"{prefix} {prompt_tokens} tokens in the messages, "
                                    "Please reduce the length of the messages.")
        return max_model_len - prompt_tokens
    if prompt_tokens + max_tokens > max_model_len:
        raise RequestError(400, f"{prefix} {prompt_tokens + max_tokens} tokens ({prompt_tokens} "
                                f"in the messages, {max_tokens} in the completion). Please reduce "
                                "the length of the messages or completion.")
    return max_tokens


def parts(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if isinstance(content, list):
        return [p for p in content if isinstance(p, dict)]
    return []


def text_of(content: Any) -> str:
    return " ".join(p.get("text") or "" for p in parts(content) if p.get("type") == "text")


def target_text(messages: list[dict[str, Any]]) -> str:
    """What to speak: the text of the last user turn (earlier ones are reference transcripts)."""
    users = [m for m in messages if m.get("role") == "user"]
    return text_of(users[-1].get("content")) if users else ""


def reference_audio(messages: list[dict[str, Any]]) -> str:
    """The base64 of every `input_audio` part (a voice to clone), joined."""
    return "".join(
        str((p.get("input_audio") or {}).get("data") or "")
        for m in messages for p in parts(m.get("content")) if p.get("type") == "input_audio"
    )


def estimate_prompt_tokens(messages: list[dict[str, Any]]) -> int:
    """Rough prompt size: 1.3 tokens a word plus 25 a second of reference audio."""
    words = sum(len(text_of(m.get("content")).split()) for m in messages)
    audio_chars = len(reference_audio(messages))
    audio_tokens = math.ceil(audio_chars / B64_CHARS_PER_AUDIO_TOKEN)
    return math.ceil(PROMPT_TOKENS_PER_WORD * words) + audio_tokens


def speech_prompt_tokens(text: str) -> int:
    return SPEECH_PRESET_PROMPT_TOKENS + math.ceil(PROMPT_TOKENS_PER_WORD * len(text.split()))


def models_body(name: str, created: int, max_model_len: int) -> dict[str, Any]:
    """`GET /v1/models` as vLLM answers it."""
    return {"object": "list", "data": [{
        "id": name, "object": "model", "created": created, "owned_by": "vllm",
        "root": name, "parent": None, "max_model_len": max_model_len, "permission": [],
    }]}


def empty_health() -> Response:
    return Response(status_code=200)


class BackgroundServer:
    """An ASGI app under uvicorn in a daemon thread on 127.0.0.1.

    `start()` binds a free port (or `port`), returns once /health answers 200 and sets `url`;
    `stop()` asks uvicorn to exit and joins the thread (forcing it after `timeout_s`).
    """

    def __init__(self, app: FastAPI, *, host: str = "127.0.0.1", port: int = 0,
                 start_timeout_s: float = 30.0, name: str = "engine") -> None:
        self.app, self.host, self.port = app, host, port
        self.start_timeout_s = start_timeout_s
        self.name = name
        self.url = ""
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def make_server(self) -> uvicorn.Server:
        """The uvicorn server to run; subclasses may return one with their own shutdown."""
        return uvicorn.Server(uvicorn.Config(
            self.app, log_level="warning", access_log=False, timeout_graceful_shutdown=2,
        ))

    def start(self) -> "BackgroundServer":
        # Binding here, not in uvicorn, gives a free port with no race.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        self.url = f"http://{self.host}:{self.port}"
        self._server = self.make_server()
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]},
                                        name=f"{self.name}-{self.port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + self.start_timeout_s
        with httpx.Client(trust_env=False, timeout=1.0) as client:
            while time.monotonic() < deadline and self._thread.is_alive():
                with suppress(httpx.HTTPError):
                    if client.get(f"{self.url}/health").status_code == 200:
                        return self
                time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"{self.name} did not become healthy at {self.url}")

    def stop(self, timeout_s: float = 10.0) -> None:
        if self._server is None or self._thread is None:
            return
        self._server.should_exit = True
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(timeout_s)
        self._server = self._thread = None

    def __enter__(self) -> "BackgroundServer":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()
