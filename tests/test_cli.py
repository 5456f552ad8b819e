"""The command line as a user runs it: real processes, real servers, real signals."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from pipeline.client import publish_synth
from pipeline.stack.ports import free_port
from pipeline.contracts.messages import ChunkDone
from tests.conftest import sim_stats
from tests.test_synth_pipeline import requests_for

CLI = [sys.executable, "-m", "pipeline.cli"]


def env_for(settings, **extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TTS_") and k != "VLLM_URL"}
    env.update({
        "TTS_NATS_URL": settings.nats_url, "TTS_S3_ENDPOINT_URL": settings.s3_endpoint_url,
        "TTS_S3_BUCKET": settings.s3_bucket, "TTS_S3_ACCESS_KEY": settings.s3_access_key,
        "TTS_S3_SECRET_KEY": settings.s3_secret_key, "TTS_NAMESPACE": settings.namespace,
        "TTS_S3_PREFIX": settings.s3_prefix, "TTS_BACKEND_URLS": ",".join(settings.backend_urls),
        "TTS_LOG_LEVEL": "warning", "TTS_POLL_S": "0.05",
    })
    env.update(extra)
    return env


def run_cli(args: list[str], env: dict[str, str], timeout_s: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(CLI + args, env=env, capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL)


def cli_here(capsys, monkeypatch, settings, *argv: str) -> tuple[int, str, str]:
    """`tts-pipeline ARGV` in this process (a subprocess costs seconds of imports), with the
    environment a user would set for `settings`; returns (exit code, stdout, stderr)."""
    from pipeline.cli.main import main

    for key in [k for k in os.environ if k.startswith("TTS_")]:
        monkeypatch.delenv(key)
    for key, value in env_for(settings).items():
        if key.startswith("TTS_"):
            monkeypatch.setenv(key, value)
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode != 0, f"exit 0; stdout: {result.stdout!r}; stderr: {result.stderr!r}"
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_unreachable_nats_is_one_line_and_nonzero(make_settings):
    port = free_port()
    # A short connect timeout (the default is 2 s): the message is what is tested.
    result = run_cli(["worker", "synth"], env_for(make_settings(nats_url=f"nats://127.0.0.1:{port}"),
                                                  TTS_NATS_CONNECT_TIMEOUT_S="0.5"))
    assert_one_line_error(result, "NATS", f"127.0.0.1:{port}")


def test_unreachable_s3_is_one_line_and_nonzero(make_settings):
    port = free_port()
    result = run_cli(["worker", "synth"], env_for(make_settings(s3_endpoint_url=f"http://127.0.0.1:{port}")))
    assert_one_line_error(result, "S3", f"127.0.0.1:{port}")


def test_wrong_s3_credentials_are_one_line_and_nonzero(make_settings):
    result = run_cli(["worker", "synth"], env_for(make_settings(s3_secret_key="not-the-secret")))
    assert_one_line_error(result, "S3")


def test_invalid_setting_is_one_line_and_nonzero(make_settings):
    result = run_cli(["worker", "synth"], env_for(make_settings(), TTS_MAX_IN_FLIGHT="lots"))
    assert_one_line_error(result, "TTS_MAX_IN_FLIGHT")


async def test_sigterm_drains_and_a_new_worker_finishes_the_batch(sims, harness):
    sim = sims(latency_s=0.3, slots=256)
    h = await harness(backend_urls=[sim.url], max_in_flight=8, ack_wait_s=5)
    reqs = requests_for("drain", 60)
    env = env_for(h.settings, TTS_MAX_IN_FLIGHT="8")
    async with h.waiter("drain") as waiter:
        await asyncio.gather(*(publish_synth(h.js, h.names, r, "bulk") for r in reqs))
        first = subprocess.Popen(CLI + ["worker", "synth"], env=env, stdin=subprocess.DEVNULL,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        await waiter.wait_count(10, timeout_s=60)
        first.send_signal(signal.SIGTERM)
        out, err = await asyncio.to_thread(first.communicate, timeout=30)
        assert first.returncode == 0, err
        done_by_first = len(waiter.order)
        assert done_by_first < 60, "the first worker should not have finished the batch"
        second = subprocess.Popen(CLI + ["worker", "synth"], env=env, stdin=subprocess.DEVNULL,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            outcomes = await waiter.wait_count(60, timeout_s=60)
        finally:
            second.send_signal(signal.SIGTERM)
            await asyncio.to_thread(second.wait, 30)
    assert all(isinstance(o, ChunkDone) for o in outcomes)
    assert sorted(int(o.chunk_id) for o in outcomes) == list(range(60))
    # Drain finished what was in flight: nothing was synthesised twice.
    assert sim_stats(sim)["calls"] == 60
    assert second.returncode == 0


def test_up_serves_say_and_stops_cleanly_on_ctrl_c(tmp_path: Path):
    nats_port, s3_port, engine_port = free_port(), free_port(grpc_offset=10_000, below=55_535), free_port()
    gateway_port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TTS_") and k != "VLLM_URL"}
    env.update({
        "TTS_NATS_URL": f"nats://127.0.0.1:{nats_port}", "TTS_S3_ENDPOINT_URL": f"http://127.0.0.1:{s3_port}",
        "TTS_LOG_LEVEL": "warning", "TTS_GATEWAY_PORT": str(gateway_port), "TTS_LOCAL_ENGINE": "sim",
    })
    up_env = env
    proc = subprocess.Popen(CLI + ["up", "--data-dir", str(tmp_path / "data"), "--engine-port", str(engine_port)],
                            env=up_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)
    try:
        banner = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            banner.append(line)
            if line.strip().startswith("data"):
                break
        text = "".join(banner)
        assert f"nats://127.0.0.1:{nats_port}" in text and f"http://127.0.0.1:{s3_port}" in text, text + proc.stderr.read() if proc.poll() is not None else text
        say_env = dict(env, TTS_BACKEND_URLS=f"http://127.0.0.1:{engine_port}")
        out = tmp_path / "hello.wav"
        result = run_cli(["say", "Hello from the embedded stack.", "--out", str(out)], say_env)
        assert result.returncode == 0, result.stderr
        assert out.stat().st_size > 10_000
        assert httpx.get(f"http://127.0.0.1:{engine_port}/health", timeout=5).status_code == 200
        # The gateway of `up` answers the original API through the same bus.
        response = httpx.post(f"http://127.0.0.1:{gateway_port}/generate", json={"text": "Through the gateway."},
                              timeout=60)
        assert response.status_code == 200 and response.headers["content-type"] == "audio/wav"
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert proc.returncode == 0, proc.stderr.read()
    leftovers = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True).stdout.strip()
    assert leftovers == "", f"processes left behind: {leftovers}"
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{engine_port}/health", timeout=2)


def test_demo_runs_the_main_job_and_prints_where_the_audio_landed(tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TTS_") and k != "VLLM_URL"}
    result = run_cli(["demo", "--out", str(tmp_path)], env, timeout_s=300)
    assert result.returncode == 0, result.stdout + result.stderr
    files = sorted(p.name for p in tmp_path.rglob("*") if p.is_file())
    assert files == ["000-the-pipeline.wav", "001-nothing-lost.wav", "manifest.json"], files
    assert "s3://" in result.stdout and str(tmp_path) in result.stdout


async def test_worker_serves_prometheus_metrics(sims, harness):
    sim = sims()
    h = await harness(backend_urls=[sim.url])
    port = free_port()
    proc = subprocess.Popen(CLI + ["worker", "synth"], env=env_for(h.settings, TTS_WORKER_METRICS_PORT=str(port)),
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        async with h.waiter("metrics") as waiter:
            await publish_synth(h.js, h.names, requests_for("metrics", 1)[0], "bulk")
            await waiter.wait_count(1, timeout_s=60)
        text = (await asyncio.to_thread(httpx.get, f"http://127.0.0.1:{port}/metrics", timeout=5)).text
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.to_thread(proc.wait, 30)
    import re

    assert re.search(r'tts_worker_chunks_total\{[^}]*outcome="synthesized"[^}]*\} 1\.0', text), text
    assert "tts_worker_synth_seconds_count 1.0" in text
    assert f'backend="{sim.url}"' in text
