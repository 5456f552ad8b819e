"""A benchmark lab: the embedded stack, stand-ins and pipeline processes, and what they cost.

A `Child` runs `python -m pipeline.cli ARGS` in its own session with the environment of a
`Settings` (so a worker started here is configured exactly as one started by hand), and reads its
CPU time and peak resident memory from /proc (Linux): CPU counts every thread of the process.
A `Lab` holds one run's stand-ins and children on a `DevStack`; `EngineWatch` samples the
stand-ins' `/sim/stats` while a load runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx

from pipeline import bus
from pipeline.contracts.messages import WorkerHeartbeat
from pipeline.contracts.settings import Settings
from pipeline.contracts.subjects import Names
from pipeline.stack.devstack import DevStack
from pipeline.stack.ports import free_port

SLOTS = 32
ENGINE_READY_TIMEOUT_S = 30.0

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def settings_env(settings: Settings, **extra: object) -> dict[str, str]:
    """The environment that makes a child build `settings` (the fields benchmarks change), plus
    `extra` as TTS_<NAME> variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TTS_") and k != "VLLM_URL"}
    fields = ("nats_url", "s3_endpoint_url", "s3_bucket", "s3_access_key", "s3_secret_key", "s3_prefix", "namespace",
              "max_in_flight", "finishing_slots", "bulk_lookahead", "interactive_reserve", "interactive_hold_s", "poll_s",
              "heartbeat_s", "log_level", "model")
    for name in fields:
        env[f"TTS_{name.upper()}"] = str(getattr(settings, name))
    env["TTS_BACKEND_URLS"] = ",".join(settings.backend_urls)
    for name, value in extra.items():
        env[f"TTS_{name.upper()}"] = str(value)
    return env


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of process `pid` (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS  # utime, stime (fields 14 and 15)


def peak_rss_mb(pid: int) -> float:
    """Peak resident set size (VmHWM) of process `pid`, MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Child:
    """`python -m pipeline.cli *args` as a child process; output goes to `log_path`."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path):
        self.args, self.env, self.log_path = args, env, log_path
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Child":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", *self.args], env=self.env,
                                         stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def cpu_s(self) -> float:
        return cpu_s(self.pid)

    def peak_rss_mb(self) -> float:
        return peak_rss_mb(self.pid)

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"{' '.join(self.args)} exited with {self.proc.returncode}; see {self.log_path}")

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM (a worker drains), then SIGKILL after `timeout_s`."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def stop_all(children: list[Child]) -> None:
    """Stop every child, SIGTERM to all first so they drain in parallel."""
    for child in children:
        if child.proc is not None and child.proc.poll() is None:
            child.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 20.0
    for child in children:
        if child.proc is None:
            continue
        try:
            child.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.proc.kill()
            child.proc.wait()


@dataclass(frozen=True)
class Engine:
    """A stand-in process: its base URL and the child running it."""

    url: str
    child: Child


def load_avg() -> float:
    """The 1-minute load average (the machine is shared: report it next to every figure)."""
    return os.getloadavg()[0]


class Lab:
    """One run's stack, stand-ins and child processes (logs under `root`); `close()` stops all."""

    def __init__(self, root: Path, stack: DevStack):
        self.root, self.stack = root, stack
        self.bucket = stack.s3.bucket or "tts"
        self.engines: list[Child] = []
        self.children: list[Child] = []

    def settings(self, backend_urls: list[str], **overrides) -> Settings:
        """Settings on the lab's stack in a namespace (and key prefix) of their own."""
        namespace = uuid.uuid4().hex[:8]
        values = dict(nats_url=self.stack.nats.url, s3_endpoint_url=self.stack.s3.endpoint_url, s3_bucket=self.bucket,
                      s3_access_key=self.stack.s3.access_key, s3_secret_key=self.stack.s3.secret_key,
                      namespace=namespace, s3_prefix=namespace, backend_urls=backend_urls, heartbeat_s=0.5,
                      poll_s=0.05, log_level="warning")
        values.update(overrides)
        return Settings(**values)

    def engine(self, slots: int = SLOTS, tokens_per_s: float = 0.0, latency_s: float = 0.0) -> "Engine":
        """A stand-in in a process of its own (`tts-pipeline engine --kind sim`), healthy."""
        port = free_port()
        child = Child(["engine", "--kind", "sim", "--host", "127.0.0.1", "--port", str(port), "--slots", str(slots),
                       "--tokens-per-s", str(tokens_per_s), "--latency-s", str(latency_s)],
                      dict(os.environ), self.root / f"engine-{port}.log").start()
        self.engines.append(child)
        engine = Engine(f"http://127.0.0.1:{port}", child)
        deadline = time.monotonic() + ENGINE_READY_TIMEOUT_S
        while True:
            child.check_alive()
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{engine.url}/health", timeout=1.0, trust_env=False).status_code == 200:
                    return engine
            if time.monotonic() > deadline:
                raise RuntimeError(f"stand-in on {engine.url} not ready; see {child.log_path}")
            time.sleep(0.1)

    def child(self, args: list[str], settings: Settings, **extra: object) -> Child:
        child = Child(args, settings_env(settings, **extra), self.root / f"{args[0]}-{args[-1]}-{len(self.children)}.log")
        self.children.append(child.start())
        return child

    def workers(self, settings: Settings, count: int = 1, **extra: object) -> list[Child]:
        """`count` synth worker processes (`tts-pipeline worker synth`) with `settings`."""
        # Names never repeat within a lab, so a stopped worker's heartbeat is never counted as new.
        return [self.child(["worker", "synth"], settings, worker_name=f"w{len(self.children)}-{settings.namespace}",
                           drain_timeout_s=2, **extra) for _ in range(count)]

    def release(self, children: list[Child]) -> None:
        stop_all(children)
        self.children = [c for c in self.children if c not in children]

    def close(self) -> None:
        stop_all(self.children)
        stop_all(self.engines)


async def wait_ready(settings: Settings, workers: int, timeout_s: float = 60.0) -> None:
    """Until `workers` heartbeats report a healthy model server (the bench target's own check)."""
    names = Names(settings.namespace)
    nc = await bus.connect(settings, "bench-wait")
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                kv = await nc.jetstream().key_value(names.workers_kv)
                healthy = 0
                for key in await kv.keys():
                    beat = WorkerHeartbeat.from_bytes((await kv.get(key)).value)
                    healthy += any(b.healthy for b in beat.backends)
                if healthy >= workers:
                    return
            await asyncio.sleep(0.2)
        raise RuntimeError(f"{workers} workers not ready after {timeout_s:.0f} s")
    finally:
        await nc.close()


async def wait_engine(engine: Engine, condition, timeout_s: float) -> bool:
    """Until `condition(the stand-in's /sim/stats)` holds; False after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(timeout=5, trust_env=False) as client:
        while time.monotonic() < deadline:
            if condition((await client.get(f"{engine.url}/sim/stats")).json()):
                return True
            await asyncio.sleep(0.1)
    return False


async def wait_gateway(url: str, timeout_s: float = 60.0) -> None:
    """Until the gateway at `url` reports a healthy model server (from a worker's heartbeat)."""
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(timeout=2, trust_env=False) as client:
        while time.monotonic() < deadline:
            try:
                if (await client.get(f"{url}/health")).json().get("vllm_healthy"):
                    return
            except (httpx.HTTPError, ValueError):
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError(f"gateway {url} not healthy after {timeout_s:.0f} s")


class EngineWatch:
    """Samples the stand-ins' /sim/stats while a load runs: audio produced and batch occupancy."""

    def __init__(self, engines: list[Engine], interval_s: float = 0.1):
        self.engines, self.interval_s = engines, interval_s
        self.active: list[int] = []
        self._task: asyncio.Task | None = None

    async def _stats(self, client: httpx.AsyncClient) -> list[dict]:
        return [(await client.get(f"{e.url}/sim/stats")).json() for e in self.engines]

    async def __aenter__(self) -> "EngineWatch":
        self._client = httpx.AsyncClient(timeout=10, trust_env=False)
        first = await self._stats(self._client)
        self.audio_s_before = sum(s["audio_s_total"] for s in first)
        self.ideal_audio_s_per_s = sum(s["ideal_audio_s_per_s"] or 0 for s in first)
        self._task = asyncio.create_task(self._sample())
        return self

    async def _sample(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            with contextlib.suppress(httpx.HTTPError):
                self.active.append(sum(s["active"] for s in await self._stats(self._client)))

    async def __aexit__(self, *exc: object) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self.audio_s = sum(s["audio_s_total"] for s in await self._stats(self._client)) - self.audio_s_before
        await self._client.aclose()

    def occupancy(self, slots: int) -> float:
        """Mean share of the slots generating, over the samples where anything was."""
        busy = [a for a in self.active if a > 0]
        return statistics.fmean(busy) / slots if busy else 0.0
