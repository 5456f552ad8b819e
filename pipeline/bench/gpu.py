"""Summaries of the GPU monitor's CSV (`infra/vllm/monitor_gpu.sh`, the original setup's format).

One line per GPU per interval, no header, no units:

    timestamp, gpu_name, memory_used_mb, memory_total_mb, gpu_util_pct, mem_util_pct, temp_c
    2025/01/15 10:23:45.123, NVIDIA GeForce RTX 4090, 17210, 24564, 97, 61, 66

What callers can rely on: `read_gpu_log` never raises on a malformed line (it is skipped and
counted); `summarise_gpu_log` keeps the samples inside [start, end] (epoch seconds; nvidia-smi
writes local time) and falls back to the whole file, saying so, when none fall inside.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

COLUMNS = ("timestamp", "gpu_name", "memory_used_mb", "memory_total_mb", "gpu_util_pct", "mem_util_pct", "temp_c")
# nvidia-smi's own format first; ISO and epoch seconds for logs written by other tools.
_TIME_FORMATS = ("%Y/%m/%d %H:%M:%S.%f", "%Y/%m/%d %H:%M:%S", "%Y-%m-%d %H:%M:%S.%f", "%Y-%m-%d %H:%M:%S")


@dataclass(frozen=True)
class GpuSample:
    at_s: float  # epoch seconds
    gpu_name: str
    memory_used_mb: float | None
    memory_total_mb: float | None
    gpu_util_pct: float | None
    mem_util_pct: float | None
    temp_c: float | None


def parse_time_s(text: str) -> float | None:
    """Epoch seconds of a monitor timestamp (local time, as nvidia-smi writes it), or None."""
    text = text.strip()
    for fmt in _TIME_FORMATS:
        try:
            return datetime.strptime(text, fmt).timestamp()
        except ValueError:
            continue
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return None


def _number(text: str) -> float | None:
    """A value, or None for nvidia-smi's `[N/A]`, `[Not Supported]` and the like."""
    try:
        return float(text.strip().split()[0])
    except (ValueError, IndexError):
        return None


def read_gpu_log(path: str | Path) -> tuple[list[GpuSample], int]:
    """(samples, skipped lines) of a monitor CSV; a header or a torn last line is skipped."""
    samples: list[GpuSample] = []
    skipped = 0
    for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        parts = [p.strip() for p in line.split(",")]
        at_s = parse_time_s(parts[0]) if parts else None
        if len(parts) != len(COLUMNS) or at_s is None:
            skipped += 1
            continue
        samples.append(GpuSample(at_s, parts[1], *(_number(p) for p in parts[2:])))
    return samples, skipped


def _stats(values: list[float | None]) -> tuple[float | None, float | None]:
    known = [v for v in values if v is not None]
    return (statistics.fmean(known), max(known)) if known else (None, None)


def summarise_gpu_log(path: str | Path, start_s: float, end_s: float) -> dict:
    """Per GPU name: samples, peak and mean memory used, memory total, mean and peak utilisation,
    mean memory-controller utilisation, peak temperature; over the run's window when it holds
    samples (`window: "run"`), else over the whole file (`window: "file"`)."""
    samples, skipped = read_gpu_log(path)
    in_run = [s for s in samples if start_s <= s.at_s <= end_s]
    chosen, window = (in_run, "run") if in_run else (samples, "file")
    gpus: dict[str, list[GpuSample]] = {}
    for sample in chosen:
        gpus.setdefault(sample.gpu_name, []).append(sample)
    summary = []
    for name, rows in gpus.items():
        mem_mean, mem_peak = _stats([r.memory_used_mb for r in rows])
        util_mean, util_peak = _stats([r.gpu_util_pct for r in rows])
        mem_util_mean, _ = _stats([r.mem_util_pct for r in rows])
        _, temp_peak = _stats([r.temp_c for r in rows])
        _, total = _stats([r.memory_total_mb for r in rows])
        summary.append({
            "gpu_name": name, "samples": len(rows),
            "memory_used_mb_peak": mem_peak, "memory_used_mb_mean": _round(mem_mean), "memory_total_mb": total,
            "gpu_util_pct_mean": _round(util_mean), "gpu_util_pct_peak": util_peak,
            "mem_util_pct_mean": _round(mem_util_mean), "temp_c_peak": temp_peak,
        })
    return {"path": str(path), "window": window, "samples": len(chosen), "samples_in_file": len(samples),
            "skipped_lines": skipped, "gpus": summary}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def format_gpu_summary(summary: dict) -> list[str]:
    """Lines for people, one per GPU."""
    where = "in the run" if summary["window"] == "run" else "in the file (none fell inside the run)"
    lines = [f"GPU log {summary['path']}: {summary['samples']} samples {where}"]
    if not summary["gpus"]:
        lines.append("  no readable samples")

    def show(value: float | None, fmt: str = "{:,.0f}") -> str:
        return "n/a" if value is None else fmt.format(value)

    for gpu in summary["gpus"]:
        lines.append(
            f"  {gpu['gpu_name']}: memory peak {show(gpu['memory_used_mb_peak'])} / "
            f"{show(gpu['memory_total_mb'])} MB, mean {show(gpu['memory_used_mb_mean'])} MB; "
            f"util mean {show(gpu['gpu_util_pct_mean'])}%, peak {show(gpu['gpu_util_pct_peak'])}%; "
            f"mem util mean {show(gpu['mem_util_pct_mean'])}%; temp peak {show(gpu['temp_c_peak'])} C"
        )
    return lines
