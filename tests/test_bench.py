"""`tts-pipeline bench` against real servers: the stand-in, the gateway, the bus with a worker.

The CLI runs in a thread (`asyncio.run` of its own) so that the in-process worker keeps running
on the test's loop; capsys sees what it prints.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from pipeline.cli import main as cli
from pipeline.bench.load import TEXTS, BenchOptions, Sample
from pipeline.bench.run import percentile, read_texts, run_bench, steady_audio_s_per_s
from pipeline.bench.gpu import summarise_gpu_log
from pipeline.bench.lab import settings_env
from pipeline.stack.ports import free_port
from pipeline.contracts.errors import StartupError
from tests.conftest import sim_stats
from tests.gateway_fixtures import gateway, wait_for_health  # noqa: F401 (fixture)
from tests.waiting import until

WORDS_PER_S = 2.5  # the stand-in's speaking rate


def expected_audio_s(requests: int, texts=TEXTS) -> float:
    """What the stand-in speaks for the bench's cycling texts (words / 2.5 s, at least 0.5 s)."""
    return sum(max(0.5, len(texts[i % len(texts)].split()) / WORDS_PER_S) for i in range(requests))


async def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = await asyncio.to_thread(cli.main, ["bench", *argv])
    out, err = capsys.readouterr()
    return code, out, err


async def wait_for_heartbeat(settings) -> None:
    """The bus target refuses to run until a worker's heartbeat reports a healthy model server."""
    await until(lambda: run_bench(settings, BenchOptions(target="bus", requests=1, concurrent=1, timeout_s=10)),
                "a worker's heartbeat reports a healthy model server", retry_on=(StartupError,))


def nvidia_smi_line(at: float, memory_mb: int, util_pct: int) -> str:
    stamp = datetime.fromtimestamp(at).strftime("%Y/%m/%d %H:%M:%S.%f")[:-3]
    return f"{stamp}, NVIDIA GeForce RTX 4090, {memory_mb}, 24564, {util_pct}, 40, 61\n"


# ------------------------------------------------------------------------------ the three targets


async def test_backend_target_sends_the_load_with_a_semaphore(sims, capsys):
    sim = sims(slots=32, latency_s=0.05)
    code, out, _ = await run_cli(capsys, "--target", "backend", "--url", sim.url, "-n", "20", "-c", "5", "--json")
    result = json.loads(out)
    assert code == 0
    assert (result["successful"], result["failed"], result["target"]) == (20, 0, "backend")
    stats = sim_stats(sim)
    assert stats["calls"] == 20 and stats["peak_concurrent"] == 5  # the semaphore, exactly
    assert result["audio_s"] == pytest.approx(expected_audio_s(20), abs=0.05)
    assert result["audio_s"] == pytest.approx(stats["audio_s_total"], abs=0.05)
    assert result["audio_tokens_per_s"] == pytest.approx(25 * result["audio_s_per_s"], rel=1e-3)
    assert result["requests_per_s"] == pytest.approx(20 / result["total_time_s"], rel=1e-3)
    latency = result["latency_s"]
    assert 0.05 <= latency["min"] <= latency["p50"] <= latency["p95"] <= latency["max"]
    assert result["server_stats"]["calls"] == 20  # the stand-in's /sim/stats


async def test_gateway_target_reports_the_original_summary(sims, harness, gateway, capsys):
    sim = sims(slots=32)
    h = await harness(backend_urls=[sim.url], heartbeat_s=0.2)
    await h.start_worker(max_in_flight=8)
    gw = gateway(h.settings)
    async with httpx.AsyncClient(base_url=gw.url, timeout=10, trust_env=False) as client:
        await wait_for_health(client, "ok")
    code, out, _ = await run_cli(capsys, "--url", gw.url, "-n", "20", "-c", "5")
    assert code == 0, out
    for line in ("Successful: 20/20 (100.0%)", "Failed:     0", "Total time:", "Requests/s:", "Latency (s): avg",
                 "p95", "s of audio per second", "audio tokens/s", "Server stats:", "successful_requests: 20"):
        assert line in out, (line, out)
    assert sim_stats(sim)["calls"] == 20  # every request synthesised: none came from the cache
    # --allow-cache sends the original bodies: the same texts again are all cache hits.
    code, out, err = await run_cli(capsys, "--url", gw.url, "-n", "8", "-c", "4", "--allow-cache")
    assert code == 0, (out, err)
    code, out, err = await run_cli(capsys, "--url", gw.url, "-n", "8", "-c", "4", "--allow-cache", "--json")
    assert out, err
    result = json.loads(out)
    assert (code, result["successful"], result["cache_hits"]) == (0, 8, 8)
    assert result["audio_s"] == pytest.approx(expected_audio_s(8), abs=0.5)  # trimmed edges: a little less


async def test_bus_target_publishes_and_waits_for_every_event(sims, harness, capsys, monkeypatch):
    sim = sims(slots=32, latency_s=0.05)
    h = await harness(backend_urls=[sim.url], heartbeat_s=0.2)
    await h.start_worker(max_in_flight=32)
    await wait_for_heartbeat(h.settings)
    calls_before = sim_stats(sim)["calls"]
    for name, value in settings_env(h.settings).items():  # the CLI reads TTS_* like any command
        if name.startswith("TTS_"):
            monkeypatch.setenv(name, value)
    code, out, _ = await run_cli(capsys, "--target", "bus", "-n", "20", "-c", "5", "--json")
    summary = json.loads(out)
    assert code == 0
    assert (summary["successful"], summary["failed"], summary["cache_hits"]) == (20, 0, 0)
    stats = sim_stats(sim)
    assert stats["calls"] - calls_before == 20
    assert stats["peak_concurrent"] <= 5  # -c bounds what is outstanding on the bus too
    assert summary["audio_s"] == pytest.approx(expected_audio_s(20), abs=1.0)
    assert summary["server_stats"]["workers_alive"] == 1
    assert summary["server_stats"]["backends"] == [sim.url]  # heartbeat counters lag by up to heartbeat_s
    code, _, err = await run_cli(capsys, "--target", "bus", "--url", "http://x", "-n", "1")
    assert code == 1 and "uses TTS_NATS_URL" in err


# ------------------------------------------------------------------------------ failures


async def test_failing_model_server_is_reported_not_a_crash(sims, harness, capsys):
    sim = sims(error_rate=1.0)
    code, out, _ = await run_cli(capsys, "--target", "backend", "--url", sim.url, "-n", "20", "-c", "5", "--json")
    result = json.loads(out)
    assert code == 2  # ran, some requests failed
    assert (result["successful"], result["failed"]) == (20 - 20, 20)
    assert result["latency_s"] is None and result["audio_s"] == 0
    assert len(result["errors"]) == 5 and "HTTP 503" in result["errors"][0]
    # Through the bus: the worker gives up after max_deliver and says so in a failed event.
    h = await harness(backend_urls=[sim.url], heartbeat_s=0.2, max_deliver=1)
    await h.start_worker()
    # Once the first heartbeat says healthy (the stand-in's /health is fine), the run goes ahead.
    result = await until(lambda: run_bench(h.settings, BenchOptions(target="bus", requests=10, concurrent=5,
                                                                    timeout_s=20)),
                         "the bus target starts", retry_on=(StartupError,))
    summary = result.summary()
    assert (summary["successful"], summary["failed"]) == (0, 10)
    assert "max_deliver" in summary["errors"][0] or "permanent" in summary["errors"][0]


async def test_unhealthy_targets_abort_with_one_line(sims, harness, gateway, capsys):
    dead = f"http://127.0.0.1:{free_port()}"
    code, out, err = await run_cli(capsys, "--target", "backend", "--url", dead, "-n", "5")
    assert code == 1 and out == ""
    assert err.startswith(f"tts-pipeline: model server at {dead} is not healthy") and err.count("\n") == 1
    # A gateway with no live worker: vllm_healthy is false, as the original checked.
    h = await harness(backend_urls=[sims().url], heartbeat_s=0.2)
    gw = gateway(h.settings)
    code, out, err = await run_cli(capsys, "--url", gw.url, "-n", "5")
    assert code == 1 and out == ""
    assert "is not healthy: vllm_healthy is false" in err and err.count("\n") == 1
    with pytest.raises(StartupError, match="no synth worker is running"):
        await run_bench(h.settings, BenchOptions(target="bus", requests=5))


# ------------------------------------------------------------------------------ texts and GPU log


async def test_texts_file_and_gpu_log_over_the_run_window(sims, capsys, tmp_path: Path):
    sim = sims(slots=32, latency_s=0.1)
    texts = tmp_path / "texts.txt"
    texts.write_text("One two three four five.\n\n   \nSix seven eight nine ten eleven twelve thirteen fourteen fifteen.\n")
    assert read_texts(str(texts)) == ("One two three four five.", "Six seven eight nine ten eleven twelve thirteen fourteen fifteen.")
    log = tmp_path / "gpu_monitor.log"
    # An hour-old sample that must stay out of the run's window, then a monitor writing as it runs.
    log.write_text(nvidia_smi_line(time.time() - 3600, 23000, 100))
    stop = threading.Event()

    def monitor() -> None:
        step = 0
        while not stop.is_set():
            with log.open("a") as f:
                f.write(nvidia_smi_line(time.time(), 17000 + step, 50 + step % 50))
            step += 1
            time.sleep(0.02)

    writer = threading.Thread(target=monitor)
    writer.start()
    try:
        code, out, _ = await run_cli(capsys, "--target", "backend", "--url", sim.url, "-n", "12", "-c", "4",
                                     "--texts", str(texts), "--gpu-log", str(log), "--json")
    finally:
        stop.set()
        writer.join()
    result = json.loads(out)
    assert code == 0 and result["successful"] == 12
    assert result["audio_s"] == pytest.approx(expected_audio_s(12, read_texts(str(texts))), abs=0.05)
    gpu = result["gpu"]
    start_s, end_s = result["started_at_s"], result["started_at_s"] + result["total_time_s"]
    # The JSON rounds the run's start and length (to 1 ms and 0.1 ms), so a sample within a
    # millisecond of either edge may fall on either side: the count lies between the windows
    # 2 ms narrower and 2 ms wider (a sample is written every 20 ms).
    inner = summarise_gpu_log(log, start_s + 0.002, end_s - 0.002)
    outer = summarise_gpu_log(log, start_s - 0.002, end_s + 0.002)
    assert gpu["window"] == "run" and gpu["samples"] >= 5
    assert inner["samples"] <= gpu["samples"] <= outer["samples"] < outer["samples_in_file"]
    [card] = gpu["gpus"]
    assert card["gpu_name"] == "NVIDIA GeForce RTX 4090" and card["memory_total_mb"] == 24564
    assert 17000 <= card["memory_used_mb_peak"] < 23000  # the old sample is not in the window
    assert 50 <= card["gpu_util_pct_mean"] <= card["gpu_util_pct_peak"] < 100
    code, out, _ = await run_cli(capsys, "--target", "backend", "--url", sim.url, "-n", "2", "--gpu-log", str(log))
    assert "GPU log" in out and "NVIDIA GeForce RTX 4090: memory peak" in out


def test_gpu_log_summary_skips_junk_and_falls_back_to_the_file(tmp_path: Path):
    log = tmp_path / "gpu.csv"
    base = datetime(2025, 1, 15, 10, 0, 0).timestamp()
    log.write_text(
        "timestamp, name, memory.used [MiB], memory.total [MiB], utilization.gpu [%], utilization.memory [%], temperature.gpu\n"
        + nvidia_smi_line(base, 1000, 10)
        + nvidia_smi_line(base + 5, 3000, 90)
        + "2025/01/15 10:00:10.000, NVIDIA GeForce RTX 4090, 2000, 24564, [N/A], 40, 61\n"
        + "2025/01/15 10:00:15.000, NVIDIA GeForce RTX 4090, 2500, 245"  # torn last line
    )
    inside = summarise_gpu_log(log, base + 1, base + 11)
    assert (inside["window"], inside["samples"], inside["skipped_lines"]) == ("run", 2, 2)
    [card] = inside["gpus"]
    assert card["memory_used_mb_peak"] == 3000 and card["memory_used_mb_mean"] == 2500
    assert card["gpu_util_pct_mean"] == 90 and card["gpu_util_pct_peak"] == 90  # [N/A] is no sample
    outside = summarise_gpu_log(log, base + 3600, base + 3700)
    assert (outside["window"], outside["samples"]) == ("file", 3)


def test_percentiles_interpolate_like_numpy():
    values = [1.0, 2.0, 3.0, 4.0]
    assert percentile(values, 0.5) == 2.5
    assert percentile(values, 0.95) == pytest.approx(3.85)
    assert percentile([7.0], 0.95) == 7.0


def test_steady_rate_leaves_out_the_first_and_last_batch():
    # Two slots: a slow start (ramp-up), steady completions of 4 s each every second, a slow end.
    times = [5.0, 5.5, 6.0, 7.0, 8.0, 9.0, 10.0, 20.0]
    samples = [Sample(i, True, 1.0, audio_s=4.0, done_s=t) for i, t in enumerate(times)]
    # From the 2nd completion (5.5 s) to the last one that leaves 2 in flight (9 s): 4 x 4 s in 3.5 s.
    assert steady_audio_s_per_s(samples, 2) == pytest.approx(16 / 3.5)
    assert steady_audio_s_per_s(samples[:3], 2) is None  # too short to have a steady part
    samples[3].ok = False  # a failure delivers no audio and is no completion
    assert steady_audio_s_per_s(samples, 2) == pytest.approx(12 / 3.5)
