"""Helpers of the fault suite: servers a test may kill, worker processes, and exact counting.

Counting never trusts a live subscription (it misses what is published while NATS is away):
outcomes are read back from the `TTS_EVENTS` stream, dead letters from `TTS_DLQ`, audio from
the bucket listing. Each case records what it counted with `report()`: one JSON file per case
under `FAULT_REPORT_DIR` (default /tmp/tts-faults), also printed (visible with `pytest -s`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import nats
import pytest
from nats.js.errors import NotFoundError

from pipeline import bus
from pipeline.cli import logs
from pipeline.stack.ports import find_binary, free_ports
from pipeline.stack.seaweed import S3Server
from pipeline.stack.servers import NatsServer
from pipeline.contracts.messages import ChunkDone, ChunkFailed, DeadLetter, SynthRequest, WorkerHeartbeat
from pipeline.store import open_store
from pipeline.contracts.settings import Settings
from pipeline.store import audio_key
from pipeline.contracts.subjects import Names, synth_msg_id
from pipeline.text.spoken import as_spoken
from tests.conftest import BUCKET

CLI = [sys.executable, "-m", "pipeline.cli"]
# The production delivery policy (Settings defaults): the conftest's settings retry 10x faster,
# which would spend a message's deliveries within a second of any outage.
PRODUCTION_RETRY = {"retry_base_delay_s": 0.5, "retry_max_delay_s": 30.0, "max_deliver": 5}
REPORT_DIR = Path(os.environ.get("FAULT_REPORT_DIR", "/tmp/tts-faults"))
WORDS = "amber birch cedar delta ember fjord granite harbor indigo juniper kestrel lantern meadow".split()


def report(case: str, **counts) -> dict:
    """Record what a case counted (JSON file + one printed line) and return it."""
    REPORT_DIR.mkdir(parents=True, exist_ok=True)
    record = {"case": case, **counts}
    (REPORT_DIR / f"{case}.json").write_text(json.dumps(record, indent=1, sort_keys=True))
    print(f"FAULTS {json.dumps(record, sort_keys=True)}")
    return record


def unique_text(job: str, i: int) -> str:
    """Distinct, speakable texts (distinct audio keys, distinct fault draws in the stand-in)."""
    n = 4 + i % 9
    return f"{job} item {i}: " + " ".join(WORDS[(i * 7 + k) % len(WORDS)] for k in range(n)) + "."


def make_requests(job: str, count: int) -> list[SynthRequest]:
    return [SynthRequest(job_id=job, chunk_id=str(i), index=i, text=unique_text(job, i)) for i in range(count)]


@pytest.fixture(autouse=True)
def logs_to_this_test() -> None:
    """structlog bound to this test's stderr. An earlier test may have left it bound to a stream
    that is closed now (capsys around `cli.main`); logging then raises, and an exception raised in
    nats-py's error callback stops the observer's reconnect after a server restart."""
    logs.configure("warning")


# ----------------------------------------------------------------------------- processes


def settings_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment that makes `tts-pipeline` build exactly `settings` (plus `extra`)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TTS_") and k != "VLLM_URL"}
    for name, value in settings.model_dump().items():
        if isinstance(value, (list, tuple)):
            value = ",".join(str(v) for v in value)
        elif isinstance(value, bool):
            value = "true" if value else "false"
        env[f"TTS_{name.upper()}"] = str(value)
    env.update(extra)
    return env


class WorkerProcs:
    """`tts-pipeline worker KIND` processes; every one is gone after `stop_all()`."""

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def start(self, kind: str, settings: Settings, name: str, **extra_env: str) -> subprocess.Popen:
        env = settings_env(settings, TTS_WORKER_NAME=name, **extra_env)
        log_path = self.log_dir / f"{name}.log"
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(CLI + ["worker", kind], env=env, stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=subprocess.STDOUT)
        self.procs.append((name, proc))
        return proc

    @staticmethod
    def kill(proc: subprocess.Popen) -> None:
        """SIGKILL, as a crash or the OOM killer would."""
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def logs(self, lines: int = 30) -> str:
        parts = []
        for name, _ in self.procs:
            text = (self.log_dir / f"{name}.log").read_text(errors="replace").splitlines()
            parts.append(f"--- {name}\n" + "\n".join(text[-lines:]))
        return "\n".join(parts)

    def stop_all(self, timeout_s: float = 30) -> list[int]:
        """SIGTERM each live worker (they drain), SIGKILL what is still there after `timeout_s`."""
        codes = []
        for _, proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for _, proc in self.procs:
            try:
                codes.append(proc.wait(timeout_s))
            except subprocess.TimeoutExpired:
                proc.kill()
                codes.append(proc.wait())
        return codes


@pytest.fixture
def worker_procs(tmp_path) -> Iterator[WorkerProcs]:
    procs = WorkerProcs(tmp_path)
    yield procs
    procs.stop_all()


# ------------------------------------------------------------------------------- servers


@pytest.fixture
def private_nats(tmp_path) -> Iterator[NatsServer]:
    """A nats-server of this test alone: it may be killed and restarted (same port, same store)."""
    server = NatsServer(tmp_path / "nats-private").start()
    yield server
    server.stop()


@pytest.fixture
def private_s3(tmp_path) -> Iterator[S3Server]:
    """A weed S3 of this test alone, with the test bucket: it may be stopped and restarted."""
    server = S3Server(tmp_path / "s3p", bucket=BUCKET).start()
    yield server
    server.stop()


class NatsCluster:
    """Three nats-server nodes with JetStream clustered on loopback (R3 streams possible)."""

    def __init__(self, data_dir: Path):
        self.data_dir = data_dir
        ports = free_ports(9)
        self.client_ports, self.monitor_ports, self.route_ports = ports[0:3], ports[3:6], ports[6:9]
        self.procs: dict[str, subprocess.Popen] = {}

    @property
    def urls(self) -> list[str]:
        return [f"nats://127.0.0.1:{p}" for p in self.client_ports]

    def node_url(self, name: str) -> str:
        return self.urls[int(name.rsplit("-", 1)[1]) - 1]

    def _config(self, i: int) -> str:
        routes = "\n".join(f"    nats-route://127.0.0.1:{p}" for p in self.route_ports)
        store = json.dumps(str(self.data_dir / f"node-{i + 1}"))
        return (f"server_name: node-{i + 1}\nlisten: 127.0.0.1:{self.client_ports[i]}\n"
                f"http: 127.0.0.1:{self.monitor_ports[i]}\n"
                f"jetstream {{\n  store_dir: {store}\n}}\n"
                f"cluster {{\n  name: faults\n  listen: 127.0.0.1:{self.route_ports[i]}\n"
                f"  routes: [\n{routes}\n  ]\n}}\n")

    def launch(self, i: int) -> None:
        """Start node `i` (0-based) without waiting for anything."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        conf = self.data_dir / f"node-{i + 1}.conf"
        conf.write_text(self._config(i))
        with open(self.data_dir / f"node-{i + 1}.log", "ab") as log:
            self.procs[f"node-{i + 1}"] = subprocess.Popen([find_binary("nats-server"), "-c", str(conf)], stdout=log,
                                                           stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                                           start_new_session=True)

    def start(self, timeout_s: float = 60) -> "NatsCluster":
        """Every node not running yet; returns once all three see a meta leader."""
        for i in range(3):
            if f"node-{i + 1}" not in self.procs:
                self.launch(i)
        deadline = time.monotonic() + timeout_s
        while not all(self._has_meta_leader(port) for port in self.monitor_ports):
            if time.monotonic() > deadline or any(p.poll() is not None for p in self.procs.values()):
                self.stop()
                raise RuntimeError("NATS cluster did not form:\n" + self.logs())
            time.sleep(0.1)
        return self

    @staticmethod
    def _has_meta_leader(port: int) -> bool:
        try:
            info = httpx.get(f"http://127.0.0.1:{port}/jsz", timeout=1, trust_env=False).json()
        except (httpx.HTTPError, ValueError):
            return False
        meta = info.get("meta_cluster") or {}
        return bool(meta.get("leader")) and meta.get("cluster_size") == 3

    def kill(self, name: str) -> None:
        proc = self.procs[name]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)

    def logs(self, chars: int = 1500) -> str:
        return "\n".join(f"--- {n}\n" + (self.data_dir / f"{n}.log").read_text(errors="replace")[-chars:]
                         for n in self.procs)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@pytest.fixture
def nats_cluster(tmp_path) -> Iterator[NatsCluster]:
    cluster = NatsCluster(tmp_path / "cluster").start()
    yield cluster
    cluster.stop()


# ------------------------------------------------------------------------------ counting


class Observer:
    """The test's own connection: publishes work and counts outcomes from what is stored."""

    def __init__(self, settings: Settings, nc, store):
        self.settings = settings
        self.names = Names(settings.namespace)
        self.nc = nc
        self.js = nc.jetstream(timeout=10)
        self.store = store

    @classmethod
    async def open(cls, settings: Settings, servers: list[str] | None = None) -> "Observer":
        if servers is None:
            nc = await bus.connect(settings, name="fault-observer")
        else:
            nc = await nats.connect(servers=servers, name="fault-observer", max_reconnect_attempts=-1,
                                    reconnect_time_wait=0.2)
        store = await open_store(settings)
        observer = cls(settings, nc, store)
        await retry(lambda: bus.ensure_streams(observer.js, settings, observer.names), "create streams")
        return observer

    async def close(self) -> None:
        self.store.close()
        with contextlib.suppress(Exception):
            await self.nc.close()

    async def publish(self, requests: list[SynthRequest], priority: str = "bulk") -> tuple[int, int]:
        """Publish with de-duplication ids; returns (accepted, dropped as duplicates)."""
        subject = self.names.synth(priority)
        results = await asyncio.gather(*(
            bus.publish_json(self.js, subject, r.to_bytes(), synth_msg_id(r.job_id, r.chunk_id)) for r in requests))
        return sum(results), len(results) - sum(results)

    async def read(self, stream: str, subject: str) -> list:
        """Every message of `stream` on `subject` (wildcards allowed), oldest first."""
        found, seq = [], 1
        while True:
            try:
                msg = await self.js.get_msg(stream, seq=seq, subject=subject, next=True)
            except NotFoundError:
                return found
            found.append(msg)
            seq = msg.seq + 1

    async def outcomes(self, job: str) -> tuple[dict[str, ChunkDone], dict[str, ChunkFailed]]:
        """Each chunk's done and failed events from TTS_EVENTS (one per chunk: dedup ids)."""
        done: dict[str, ChunkDone] = {}
        failed: dict[str, ChunkFailed] = {}
        for msg in await self.read(self.names.events_stream, self.names.chunk_events(job)):
            if ".chunk.done." in msg.subject:
                event = ChunkDone.from_bytes(msg.data)
                assert event.chunk_id not in done, f"two done events for chunk {event.chunk_id}"
                done[event.chunk_id] = event
            else:
                event = ChunkFailed.from_bytes(msg.data)
                assert event.chunk_id not in failed, f"two failed events for chunk {event.chunk_id}"
                failed[event.chunk_id] = event
        return done, failed

    async def outcome_count(self, job: str) -> int:
        info = await self.js.stream_info(self.names.events_stream, subjects_filter=self.names.chunk_events(job))
        return sum((info.state.subjects or {}).values()) if info.state.messages else 0

    async def wait_outcomes(self, job: str, count: int, timeout_s: float, procs: WorkerProcs | None = None) -> None:
        """Until `job` has `count` outcome events stored (NATS may be away meanwhile)."""
        deadline = time.monotonic() + timeout_s
        seen = 0
        while True:
            with contextlib.suppress(Exception):  # the server is being killed or elected
                seen = await self.outcome_count(job)
            if seen >= count:
                return
            if time.monotonic() > deadline:
                logs = procs.logs() if procs else ""
                raise AssertionError(f"{seen}/{count} outcomes of {job} after {timeout_s:.0f} s\n{logs}")
            await asyncio.sleep(0.2)

    async def dead_letters(self) -> list[DeadLetter]:
        return [DeadLetter.from_bytes(m.data) for m in await self.read(self.names.dlq_stream, self.names.dlq_all)]

    async def queue_depth(self) -> int:
        return (await self.js.stream_info(self.names.synth_stream)).state.messages

    async def wait_queue_empty(self, timeout_s: float = 60) -> int:
        deadline = time.monotonic() + timeout_s
        while (depth := await self.queue_depth()) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        return depth

    async def stored_audio(self) -> set[str]:
        return set(await self.store.list_keys("audio/"))

    def expected_keys(self, requests: list[SynthRequest]) -> dict[str, str]:
        """chunk id -> the audio key its request must end at (keyed on the spoken form, as the worker does)."""
        return {r.chunk_id: audio_key(as_spoken(r, self.settings.spoken_form).audio_digest(self.settings.model))
                for r in requests}

    async def heartbeat(self, worker: str) -> WorkerHeartbeat | None:
        kv = await bus.workers_kv(self.js, self.names)
        with contextlib.suppress(Exception):
            return WorkerHeartbeat.from_bytes((await kv.get(worker)).value)
        return None

    async def wait_heartbeat(self, worker: str, timeout_s: float = 60, procs: WorkerProcs | None = None) -> None:
        """Until `worker` is up (its first heartbeat is in `tts_workers`)."""
        deadline = time.monotonic() + timeout_s
        while await self.heartbeat(worker) is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"no heartbeat from {worker} after {timeout_s:.0f} s\n"
                                     + (procs.logs() if procs else ""))
            await asyncio.sleep(0.1)


async def assert_no_loss(observer, job: str, requests, case: str, **figures) -> dict:
    """Counts after a batch, recorded (`report`) before they are checked: every chunk stored,
    one done event each, nothing failed or dead-lettered, the work queue empty."""
    expected = observer.expected_keys(requests)
    done, failed = await observer.outcomes(job)
    stored = await observer.stored_audio()
    letters = await observer.dead_letters()
    depth = await observer.wait_queue_empty()
    counts = {
        "published": len(requests),
        "done": len(done),
        "failed": len(failed),
        "stored": len(set(expected.values()) & stored),
        "missing": len(set(expected.values()) - stored),
        "dead_lettered": len(letters),
        "left_in_queue": depth,
    }
    report(case, **counts, **figures)
    if failed:
        sample = next(iter(failed.values()))
        print(f"FAULTS {case}: first failure {sample.reason}: {sample.error[:200]}")
    assert counts["missing"] == 0, sorted(set(expected.values()) - stored)[:5]
    assert counts["stored"] == len(requests) == len(stored)
    assert sorted(done, key=int) == [r.chunk_id for r in requests]
    assert all(done[c].key == k for c, k in expected.items())
    assert failed == {} and letters == [], (list(failed.values())[:3], letters[:3])
    assert depth == 0
    return counts


async def retry(make_call, what: str, timeout_s: float = 15.0):
    """Right after an election or a restart the server answers 'no leader' for a moment."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return await make_call()
        except Exception as exc:
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: {type(exc).__name__}: {exc}") from exc
            await asyncio.sleep(0.2)


@pytest.fixture
async def observers() -> Iterator:
    """Factory: `await observers(settings)` (or `servers=[...]` for a cluster); closed afterwards."""
    opened: list[Observer] = []

    async def open_one(settings: Settings, servers: list[str] | None = None) -> Observer:
        observer = await Observer.open(settings, servers)
        opened.append(observer)
        return observer

    yield open_one
    for observer in opened:
        await observer.close()


def sim_stats(sim) -> dict:
    return httpx.get(f"{sim.url}/sim/stats", timeout=10, trust_env=False).json()
