#!/usr/bin/env bash
# Append one CSV line per GPU every GPU_MONITOR_INTERVAL_S seconds (default 5) until stopped:
#
#   timestamp, gpu_name, memory_used_mb, memory_total_mb, gpu_util_pct, mem_util_pct, temp_c
#
#   ./monitor_gpu.sh [LOG]          LOG defaults to gpu_monitor.log next to this script
#   tail -f gpu_monitor.log
#   awk -F', ' '{print $3}' gpu_monitor.log | sort -n | tail -1     # peak memory used (MB)
#
# start-vllm.sh runs it in the background; stop-vllm.sh stops it.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
LOG="${1:-${GPU_MONITOR_LOG:-$HERE/gpu_monitor.log}}"
INTERVAL_S="${GPU_MONITOR_INTERVAL_S:-5}"
FIELDS="timestamp,name,memory.used,memory.total,utilization.gpu,utilization.memory,temperature.gpu"

command -v nvidia-smi > /dev/null || {
    echo "monitor_gpu: nvidia-smi not found" >&2
    exit 1
}
# exec: the pid start-vllm.sh records is nvidia-smi's own, which stop-vllm.sh checks and stops.
exec nvidia-smi --query-gpu="$FIELDS" --format=csv,noheader,nounits --loop="$INTERVAL_S" >> "$LOG"
