"""The three things `tts-pipeline bench` can load: a model server, the gateway, the bus.

Each target checks its health in `open()` (raising a one-line `StartupError` when it is not
healthy, before any load), answers `call(i)` with a `Sample` (never raises for a failed request:
the failure is the sample's `error`), reports its own counters in `stats()`, and closes.
"""

from __future__ import annotations

import asyncio
import base64
import random
import time
import uuid

import httpx

from pipeline.audio.checks import decode_wav, repair_wav, to_mono_int16
from pipeline.bench.load import DEFAULT_URL, TEMPERATURE, BenchOptions, Sample
from pipeline.contracts.errors import StartupError
from pipeline.contracts.messages import ChunkDone, ChunkFailed, Sampling, SynthRequest, WorkerHeartbeat
from pipeline.contracts.settings import Settings

HEALTH_TIMEOUT_S = 5.0
# Answers of the stand-in's stats that would flood the summary.
_STATS_DROPPED = ("calls_by_text", "calls_log", "config")


def open_target(settings: Settings, options: BenchOptions):
    if options.target == "backend":
        return BackendTarget(settings, options)
    if options.target == "gateway":
        return GatewayTarget(options)
    if options.url:
        raise StartupError("the bus target uses TTS_NATS_URL (and the other TTS_* settings), not --url")
    return BusTarget(settings, options)


def _error_text(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}: {response.text[:200]}"
    if isinstance(body, dict):
        detail = body.get("detail") or body.get("message") or body.get("error") or body
        return f"HTTP {response.status_code}: {str(detail)[:200]}"
    return f"HTTP {response.status_code}: {str(body)[:200]}"


def _client(url: str, options: BenchOptions) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=options.concurrent + 4, max_keepalive_connections=options.concurrent + 4)
    return httpx.AsyncClient(base_url=url, timeout=options.timeout_s, limits=limits, trust_env=False)


async def _get_json(client: httpx.AsyncClient, path: str) -> dict | None:
    try:
        response = await client.get(path, timeout=HEALTH_TIMEOUT_S)
        body = response.json() if response.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        return None
    return body if isinstance(body, dict) else None


class BackendTarget:
    """Chat completions straight to one model server, as the worker would send them."""

    def __init__(self, settings: Settings, options: BenchOptions):
        from pipeline.backend import HiggsClient

        self.options = options
        self.url = (options.url or settings.backend_urls[0]).rstrip("/")
        # Only to build the exact payload the worker sends (stops, top_k, bounded max_tokens).
        self._payloads = HiggsClient(settings.model_copy(update={"backend_urls": [self.url], "max_in_flight": 1}))
        self._http = _client(self.url, options)
        self.notes = ["direct chat completions, one semaphore (the original approach)"]

    async def open(self) -> None:
        try:
            response = await self._http.get("/health", timeout=HEALTH_TIMEOUT_S)
        except httpx.HTTPError as exc:
            await self.close()
            raise StartupError(f"model server at {self.url} is not healthy: {type(exc).__name__}: {exc}") from None
        if response.status_code != 200:
            await self.close()
            raise StartupError(f"model server at {self.url} is not healthy: GET /health answered {response.status_code}")

    async def call(self, index: int) -> Sample:
        text, prompt = self.options.workload(index)
        request = SynthRequest(job_id="bench", chunk_id=str(index), text=text, system_prompt=prompt,
                               sampling=Sampling(temperature=TEMPERATURE))
        t0 = time.perf_counter()
        try:
            response = await self._http.post("/v1/chat/completions", json=self._payloads.chat_payload(request, None))
            if response.status_code != 200:
                return Sample(index, False, time.perf_counter() - t0, error=_error_text(response))
            data = response.json()["choices"][0]["message"]["audio"]["data"]
            latency_s = time.perf_counter() - t0
            wav = repair_wav(base64.b64decode(data))
        except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError) as exc:
            return Sample(index, False, time.perf_counter() - t0, error=f"{type(exc).__name__}: {exc}"[:300])
        return Sample(index, True, latency_s, audio_s=to_mono_int16(wav).size / wav.fmt.sample_rate_hz)

    async def stats(self) -> dict | None:
        """The server's /stats, or the stand-in's /sim/stats; None when it has neither."""
        for path in ("/stats", "/sim/stats"):
            body = await _get_json(self._http, path)
            if body is not None:
                return {k: v for k, v in body.items() if k not in _STATS_DROPPED}
        return None

    async def close(self) -> None:
        await self._http.aclose()
        await self._payloads.aclose()


class GatewayTarget:
    """`POST /generate` to the gateway, the original proxy's contract."""

    def __init__(self, options: BenchOptions):
        self.options = options
        self.url = (options.url or DEFAULT_URL).rstrip("/")
        self._http = _client(self.url, options)
        self._rng = random.Random()
        self.notes = (["fresh synthesis: temperature 0.5 + <1e-4 per request (the gateway API has no take field)"]
                      if options.fresh else ["--allow-cache: repeated texts may come from the cache"])

    async def open(self) -> None:
        try:
            response = await self._http.get("/health", timeout=HEALTH_TIMEOUT_S)
            body = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            await self.close()
            raise StartupError(f"gateway at {self.url} is not healthy: {type(exc).__name__}: {exc}") from None
        if response.status_code != 200 or not isinstance(body, dict) or not body.get("vllm_healthy", False):
            status = body.get("status") if isinstance(body, dict) else response.status_code
            await self.close()
            raise StartupError(f"gateway at {self.url} is not healthy: vllm_healthy is false (status {status})")

    async def call(self, index: int) -> Sample:
        text, prompt = self.options.workload(index)
        temperature = TEMPERATURE + self._rng.random() * 1e-4 if self.options.fresh else TEMPERATURE
        body: dict = {"text": text, "temperature": temperature}
        if prompt is not None:
            body["system_prompt"] = prompt
        t0 = time.perf_counter()
        try:
            response = await self._http.post("/generate", json=body)
            latency_s = time.perf_counter() - t0
            if response.status_code != 200:
                return Sample(index, False, latency_s, error=_error_text(response))
            samples, rate_hz = decode_wav(response.content)
        except (httpx.HTTPError, ValueError) as exc:
            return Sample(index, False, time.perf_counter() - t0, error=f"{type(exc).__name__}: {exc}"[:300])
        server_s = response.headers.get("X-Generation-Time")
        return Sample(index, True, latency_s, audio_s=samples.shape[0] / rate_hz,
                      server_s=float(server_s) if server_s else None, cached=response.headers.get("X-Cache") == "hit")

    async def stats(self) -> dict | None:
        return await _get_json(self._http, "/stats")

    async def close(self) -> None:
        await self._http.aclose()


class BusTarget:
    """`SynthRequest`s published to `tts.synth.<priority>`, each waited for on its chunk event."""

    def __init__(self, settings: Settings, options: BenchOptions):
        from pipeline.contracts.subjects import Names

        self.settings = settings
        self.options = options
        self.names = Names(settings.namespace)
        self.url = settings.nats_url
        self.job_id = f"bench-{uuid.uuid4().hex[:12]}"
        self.notes = [f"{options.priority} requests on the bus as job {self.job_id}"
                      + ("; every request a fresh take" if options.fresh else "")]
        self._nc = None
        self._sub = None
        self._waiting: dict[str, asyncio.Future] = {}

    async def open(self) -> None:
        from pipeline import bus

        self._nc = await bus.connect(self.settings, name="tts-bench")  # StartupError when NATS is away
        try:
            beats = await self._heartbeats()
            if not any(b.healthy for beat in beats for b in beat.backends):
                what = "no synth worker is running" if not beats else "no live synth worker reports a healthy model server"
                raise StartupError(f"bus at {self.url} is not healthy: {what} (tts_workers heartbeats)")
            self._sub = await self._nc.subscribe(self.names.chunk_events(self.job_id), cb=self._on_event)
        except BaseException:
            await self.close()
            raise

    async def _heartbeats(self) -> list[WorkerHeartbeat]:
        js = self._nc.jetstream()
        try:
            kv = await js.key_value(self.names.workers_kv)
            keys = await kv.keys()
        except Exception:  # no bucket, or no keys: nobody has ever beaten here
            return []
        beats = []
        for key in keys:
            try:
                beats.append(WorkerHeartbeat.from_bytes((await kv.get(key)).value))
            except Exception:  # a key that expired between keys() and get()
                continue
        return beats

    async def _on_event(self, msg) -> None:
        outcome = ChunkDone.from_bytes(msg.data) if ".chunk.done." in msg.subject else ChunkFailed.from_bytes(msg.data)
        waiting = self._waiting.get(outcome.chunk_id)
        if waiting is not None and not waiting.done():
            waiting.set_result(outcome)

    async def call(self, index: int) -> Sample:
        from pipeline.client import publish_synth

        text, prompt = self.options.workload(index)
        chunk_id = str(index)
        request = SynthRequest(job_id=self.job_id, chunk_id=chunk_id, text=text, system_prompt=prompt,
                               sampling=Sampling(temperature=TEMPERATURE),
                               take=f"{self.job_id}-{index}" if self.options.fresh else None)
        waiting = self._waiting[chunk_id] = asyncio.get_running_loop().create_future()
        t0 = time.perf_counter()
        try:
            await publish_synth(self._nc.jetstream(), self.names, request, self.options.priority)
            outcome = await asyncio.wait_for(waiting, self.options.timeout_s)
        except asyncio.TimeoutError:
            return Sample(index, False, time.perf_counter() - t0, error=f"no outcome within {self.options.timeout_s:.0f} s")
        except Exception as exc:  # NATS refused the publish
            return Sample(index, False, time.perf_counter() - t0, error=f"{type(exc).__name__}: {exc}"[:300])
        finally:
            self._waiting.pop(chunk_id, None)
        latency_s = time.perf_counter() - t0
        if isinstance(outcome, ChunkFailed):
            return Sample(index, False, latency_s, error=f"{outcome.reason}: {outcome.error}"[:300])
        return Sample(index, True, latency_s, audio_s=outcome.duration_s, server_s=outcome.timings.synth_s or None,
                      cached=outcome.cached)

    async def stats(self) -> dict | None:
        """The live workers' counters, summed, from their heartbeats."""
        beats = await self._heartbeats()
        if not beats:
            return None
        total = {"workers_alive": len(beats)}
        for name in ("synthesized", "cached", "failed", "retried", "max_in_flight", "peak_in_flight"):
            total[name] = sum(getattr(b, name) for b in beats)
        total["backends"] = sorted({b.url for beat in beats for b in beat.backends})
        return total

    async def close(self) -> None:
        if self._nc is None:
            return
        if self._sub is not None:
            try:
                await self._sub.unsubscribe()
            except Exception:  # the connection may be gone already
                pass
        try:
            await self._nc.drain()
        except Exception:
            pass
        self._nc = None
