"""The Higgs Audio v2 vLLM client (reference/higgs-vllm-api.md) over httpx.

- Chat completions (non-streaming) for the default scene prompt and for voice cloning, with
  `top_k` top-level (the seed proxy hid it in a literal `extra_body` key, so it never applied),
  the three stop strings sent explicitly, and `max_tokens` bounded from the text's length so a
  runaway generation cannot fill thousands of tokens of silence.
- `/v1/audio/speech` with `pcm` for named preset voices (its `wav` is glued files); we write the
  header ourselves.
- Several model servers: each call goes to the healthy one with the fewest calls in flight; a
  server that refuses connections is skipped for `backend_eject_s`.
- httpx errors and HTTP statuses become `BackendRetryable` / `BackendPermanent` here only.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import structlog

from pipeline.audio.checks import RepairedWav, pcm16_to_wav, repair_wav
from pipeline.contracts.errors import AudioInvalid, BackendPermanent, BackendRetryable
from pipeline.contracts.messages import AUDIO_TOKENS_PER_S, DEFAULT_REFERENCE_TEXT, SynthRequest
from pipeline.contracts.settings import Settings

log = structlog.get_logger("pipeline.backend")

STOP_STRINGS = ["<|eot_id|>", "<|end_of_text|>", "<|audio_eos|>"]
HIGGS_SAMPLE_RATE_HZ = 24000
# Headroom over the expected speaking time before we call a generation runaway.
MAX_TOKENS_SPEECH_FACTOR = 2.5
MAX_TOKENS_FLOOR = 128


def max_tokens_for(text: str, requested: int, words_per_s: float = 2.5) -> int:
    """Audio-token budget for `text`: ~25 tokens per second of expected speech, with headroom,
    never above what the caller asked for."""
    words = max(1, len(text.split()))
    # Long words and numbers take longer than their word count says: count characters too.
    expected_s = max(words / words_per_s, len(text) / 15.0)
    bound = math.ceil(AUDIO_TOKENS_PER_S * (expected_s * MAX_TOKENS_SPEECH_FACTOR + 2.0))
    return max(min(MAX_TOKENS_FLOOR, requested), min(requested, bound))


# Speech audio this close to the cap's duration stopped on the cap (the endpoint has no finish_reason).
CAP_TOLERANCE_TOKENS = 2


def reaches_token_cap(n_samples: int, sample_rate_hz: int, max_tokens: int) -> bool:
    """True when audio of `n_samples` is as long as `max_tokens` audio tokens allow (25 a second),
    within `CAP_TOLERANCE_TOKENS` frames: the generation stopped on its cap, not at the text's end."""
    return n_samples * AUDIO_TOKENS_PER_S >= (max_tokens - CAP_TOLERANCE_TOKENS) * sample_rate_hz


@dataclass
class BackendAnswer:
    wav: RepairedWav
    url: str
    endpoint: str
    elapsed_s: float
    finish_reason: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    # Set when the generation stopped on its token cap: what says so (never the whole text's speech).
    truncation: str | None = None


# httpcore scans every pooled connection (a getpeername + poll each) for every request, so one
# pool of 40 connections cost ~10 ms of CPU per call at 32 in flight (profiled). Pools of this
# many connections, used least-busy first, keep that scan short.
CONNECTIONS_PER_POOL = 8


@dataclass
class _Server:
    url: str
    pools: list[httpx.AsyncClient]
    pool_load: list[int] = field(default_factory=list)
    in_flight: int = 0
    ejected_until: float = 0.0
    consecutive_failures: int = 0
    calls: int = 0

    def __post_init__(self) -> None:
        self.pool_load = [0] * len(self.pools)

    @property
    def client(self) -> httpx.AsyncClient:
        """A pool for one call-free request (health probes): the least busy one."""
        return self.pools[self.pool_load.index(min(self.pool_load))]

    async def post(self, path: str, payload: dict) -> httpx.Response:
        index = self.pool_load.index(min(self.pool_load))
        self.pool_load[index] += 1
        try:
            return await self.pools[index].post(path, json=payload)
        finally:
            self.pool_load[index] -= 1


def _error_message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:300] or response.reason_phrase
    if isinstance(body, dict):
        if isinstance(body.get("message"), str):
            return body["message"]
        if isinstance(body.get("detail"), str):
            return body["detail"]
        if isinstance(body.get("error"), str):
            return body["error"]
    return str(body)[:300]


def _raise_for_status(response: httpx.Response, url: str) -> None:
    if response.status_code < 400:
        return
    message = f"model server {url} answered {response.status_code}: {_error_message(response)}"
    if response.status_code in (408, 409, 425, 429) or response.status_code >= 500:
        raise BackendRetryable(message)
    raise BackendPermanent(message)


class HiggsClient:
    """One client for all configured model servers. Use as an async context manager."""

    def __init__(self, settings: Settings, reference_loader=None):
        self.settings = settings
        # Reference audio lives in the store; the worker passes a loader `async (key) -> bytes`.
        self._load_reference = reference_loader
        timeout = httpx.Timeout(settings.backend_timeout_s, connect=settings.backend_connect_timeout_s)
        n_pools = max(1, math.ceil(settings.max_in_flight / CONNECTIONS_PER_POOL))
        # +2 per pool: health probes and a call finishing while the next starts never wait.
        limits = httpx.Limits(max_connections=CONNECTIONS_PER_POOL + 2, max_keepalive_connections=CONNECTIONS_PER_POOL + 2)
        self._servers = [
            _Server(url=url, pools=[httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) for _ in range(n_pools)])
            for url in settings.backend_urls
        ]
        self._tie = itertools.count()

    async def __aenter__(self) -> "HiggsClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        for server in self._servers:
            for pool in server.pools:
                await pool.aclose()

    @property
    def urls(self) -> list[str]:
        return [s.url for s in self._servers]

    def snapshot(self) -> list[dict]:
        now = time.monotonic()
        return [
            {"url": s.url, "in_flight": s.in_flight, "healthy": s.ejected_until <= now, "calls": s.calls}
            for s in self._servers
        ]

    def _pick(self) -> _Server:
        now = time.monotonic()
        healthy = [s for s in self._servers if s.ejected_until <= now] or self._servers
        low = min(s.in_flight for s in healthy)
        candidates = [s for s in healthy if s.in_flight == low]
        return candidates[next(self._tie) % len(candidates)]

    def all_down(self) -> bool:
        """True while every server is ejected: pulling work now would only burn attempts."""
        now = time.monotonic()
        return all(s.ejected_until > now for s in self._servers)

    def _eject(self, server: _Server, why: str) -> None:
        if server.ejected_until <= time.monotonic():
            log.warning("backend.ejected", url=server.url, why=why, for_s=self.settings.backend_eject_s)
        server.ejected_until = time.monotonic() + self.settings.backend_eject_s

    def _failed(self, server: _Server, why: str, unreachable: bool) -> None:
        server.consecutive_failures += 1
        if unreachable or server.consecutive_failures >= self.settings.backend_eject_after:
            self._eject(server, why)

    async def health(self) -> dict[str, bool]:
        """Probe `/health` of every server. A failed probe ejects the server; a passing probe
        brings an ejected one back at once (its failure count starts afresh)."""
        result = {}
        for server in self._servers:
            try:
                response = await server.client.get("/health", timeout=self.settings.backend_connect_timeout_s)
                ok = response.status_code == 200
            except httpx.HTTPError:
                ok = False
            result[server.url] = ok
            if ok and server.ejected_until > time.monotonic():
                log.info("backend.restored", url=server.url)
                server.ejected_until = 0.0
                server.consecutive_failures = 0
            elif not ok:
                self._eject(server, "health probe failed")
        return result

    async def voices(self) -> dict[str, list[str]]:
        """Preset voice names each reachable server offers (`GET /v1/audio/voices`)."""
        result: dict[str, list[str]] = {}
        for server in self._servers:
            try:
                response = await server.client.get("/v1/audio/voices", timeout=self.settings.backend_connect_timeout_s)
                names = response.json() if response.status_code == 200 else []
                if isinstance(names, dict):  # some servers wrap the list
                    names = names.get("voices", [])
                result[server.url] = [str(n) for n in names if isinstance(n, str)]
            except (httpx.HTTPError, ValueError):
                result[server.url] = []
        return result

    async def synthesize(self, request: SynthRequest, answered: Callable[[], None] | None = None) -> BackendAnswer:
        """Audio for one request, from the least-loaded healthy server. `answered`, when given,
        is called the moment the server's answer has arrived, before it is decoded.

        Raises `BackendRetryable` (connect/timeout/429/5xx), `BackendPermanent` (other 4xx),
        or `AudioInvalid` (an answer without usable audio). An answer that stopped on its
        `max_tokens` (chat: `finish_reason` "length"; speech, which has no finish_reason: audio
        as long as the cap allows) comes back with `truncation` set: the caller must not use it.
        """
        server = self._pick()
        server.in_flight += 1
        server.calls += 1
        started = time.perf_counter()
        try:
            if request.voice and request.reference is None:
                answer = await self._speech(server, request, answered)
            else:
                answer = await self._chat(server, request, answered)
        except httpx.TimeoutException as exc:
            self._failed(server, "timeout", unreachable=isinstance(exc, httpx.ConnectTimeout))
            raise BackendRetryable(f"model server {server.url} timed out: {type(exc).__name__}") from exc
        except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
            self._failed(server, type(exc).__name__, unreachable=isinstance(exc, httpx.ConnectError))
            raise BackendRetryable(f"model server {server.url} unreachable: {type(exc).__name__}: {exc}") from exc
        except httpx.HTTPError as exc:
            self._failed(server, type(exc).__name__, unreachable=False)
            raise BackendRetryable(f"model server {server.url}: {type(exc).__name__}: {exc}") from exc
        except BackendRetryable as exc:  # 429 / 5xx
            self._failed(server, str(exc)[:80], unreachable=False)
            raise
        finally:
            server.in_flight -= 1
        server.consecutive_failures = 0
        answer.elapsed_s = time.perf_counter() - started
        return answer

    def chat_payload(self, request: SynthRequest, reference_b64: str | None) -> dict:
        messages: list[dict] = [{"role": "system", "content": request.scene_prompt()}]
        if request.reference is not None:
            messages.append({"role": "user", "content": request.reference.transcript or DEFAULT_REFERENCE_TEXT})
            messages.append({
                "role": "assistant",
                "content": [{"type": "input_audio", "input_audio": {"data": reference_b64, "format": "wav"}}],
            })
        messages.append({"role": "user", "content": request.text})
        sampling = request.sampling
        payload = {
            "model": request.model or self.settings.model,
            "messages": messages,
            "modalities": ["text", "audio"],
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "top_k": sampling.top_k,
            "max_tokens": max_tokens_for(request.text, sampling.max_tokens, self.settings.words_per_s),
            "stop": STOP_STRINGS,
            "stream": False,
        }
        if sampling.seed is not None:
            payload["seed"] = sampling.seed
        return payload

    async def _chat(self, server: _Server, request: SynthRequest, answered: Callable[[], None] | None) -> BackendAnswer:
        reference_b64 = None
        if request.reference is not None:
            if self._load_reference is None:
                raise BackendPermanent("request has a reference voice but no store to load it from")
            reference_b64 = base64.b64encode(await self._load_reference(request.reference.audio_key)).decode()
        payload = self.chat_payload(request, reference_b64)
        response = await server.post("/v1/chat/completions", payload)
        if answered is not None:
            answered()
        _raise_for_status(response, server.url)
        try:
            body = response.json()
            choice = body["choices"][0]
            audio = (choice.get("message") or {}).get("audio") or {}
            data_b64 = audio.get("data")
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            raise AudioInvalid(f"model server {server.url} sent an unreadable chat answer: {type(exc).__name__}") from None
        finish_reason = choice.get("finish_reason")
        if not data_b64:
            raise AudioInvalid(f"no audio in the answer of {server.url} (finish_reason={finish_reason})")
        try:
            # strict_mode: the same validation as b64decode(validate=True), in C (no regex pass).
            raw = binascii.a2b_base64(data_b64, strict_mode=True)
        except ValueError:
            raise AudioInvalid(f"audio from {server.url} is not valid base64") from None
        return BackendAnswer(
            wav=repair_wav(raw), url=server.url, endpoint="chat", elapsed_s=0.0,
            finish_reason=finish_reason, headers=dict(response.headers),
            truncation=(f"audio truncated: {server.url} stopped at max_tokens ({payload['max_tokens']}) "
                        "(finish_reason=length)") if finish_reason == "length" else None,
        )

    async def _speech(self, server: _Server, request: SynthRequest, answered: Callable[[], None] | None) -> BackendAnswer:
        sampling = request.sampling
        payload = {
            "model": request.model or self.settings.model,
            "input": request.text,
            "voice": request.voice,
            "response_format": "pcm",
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "top_k": sampling.top_k,
            "max_tokens": max_tokens_for(request.text, sampling.max_tokens, self.settings.words_per_s),
        }
        response = await server.post("/v1/audio/speech", payload)
        if answered is not None:
            answered()
        _raise_for_status(response, server.url)
        pcm = response.content
        # Errors after streaming started arrive inside a 200 body as JSON text (quirk §3.10).
        if pcm[:1] in (b"{", b'"') and b"error" in pcm[:200].lower():
            raise BackendRetryable(f"model server {server.url} failed mid-stream: {pcm[:200].decode(errors='replace')}")
        if not pcm:
            raise AudioInvalid(f"no audio in the answer of {server.url}")
        truncation = None
        if reaches_token_cap(len(pcm) // 2, HIGGS_SAMPLE_RATE_HZ, payload["max_tokens"]):
            truncation = (f"audio truncated: {server.url} sent {len(pcm) // 2 / HIGGS_SAMPLE_RATE_HZ:.2f} s, "
                          f"all that max_tokens ({payload['max_tokens']}) allows")
        return BackendAnswer(
            wav=repair_wav(pcm16_to_wav(pcm, HIGGS_SAMPLE_RATE_HZ)), url=server.url, endpoint="speech",
            elapsed_s=0.0, headers=dict(response.headers), truncation=truncation,
        )
