#!/usr/bin/env bash
# Stop what start-vllm.sh started: the GPU monitor and the vLLM container.
#
#   ./stop-vllm.sh
#
# Variables: VLLM_CONTAINER (default higgs-audio-vllm), STOP_TIMEOUT_S (default 30).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CONTAINER="${VLLM_CONTAINER:-higgs-audio-vllm}"
STOP_TIMEOUT_S="${STOP_TIMEOUT_S:-30}"
MONITOR_PID_FILE="$HERE/gpu_monitor.pid"

if [[ -f "$MONITOR_PID_FILE" ]]; then
    pid="$(cat "$MONITOR_PID_FILE")"
    # Only our monitor: after a reboot the pid may belong to something else.
    if [[ "$pid" =~ ^[0-9]+$ ]] && [[ "$(ps -o comm= -p "$pid" 2> /dev/null || true)" == "nvidia-smi" ]]; then
        kill "$pid"
        echo "GPU monitor stopped (pid $pid)"
    fi
    rm -f "$MONITOR_PID_FILE"
fi

if [[ -n "$(docker ps --all --quiet --filter "name=^${CONTAINER}\$")" ]]; then
    docker stop --time "$STOP_TIMEOUT_S" "$CONTAINER" > /dev/null || true
    docker rm "$CONTAINER" > /dev/null
    echo "container $CONTAINER stopped and removed"
else
    echo "container $CONTAINER is not there"
fi
