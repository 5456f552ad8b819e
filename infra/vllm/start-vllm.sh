#!/usr/bin/env bash
# Start the Higgs Audio v2 vLLM server in Docker and the GPU monitor; return once /health answers.
#
#   ./start-vllm.sh
#   GPU_MEMORY_UTILIZATION=0.75 ./start-vllm.sh      # less GPU memory (out-of-memory errors)
#   PORT=8001 MAX_MODEL_LEN=4096 ./start-vllm.sh
#
# Variables (defaults of the original setup):
#   PORT=8000  GPU_MEMORY_UTILIZATION=0.85  MAX_MODEL_LEN=8192
# and: SERVED_MODEL_NAME (higgs-audio-v2, what TTS_MODEL must say), HIGGS_MODEL, VLLM_IMAGE,
# VLLM_CONTAINER, HF_CACHE, HF_TOKEN, VOICE_PRESETS_DIR, HEALTH_TIMEOUT_S, GPU_MONITOR_LOG,
# GPU_MONITOR_INTERVAL_S. Point the pipeline at it with TTS_BACKEND_URLS=http://HOST:$PORT.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PORT="${PORT:-8000}"
GPU_MEMORY_UTILIZATION="${GPU_MEMORY_UTILIZATION:-0.85}"
MAX_MODEL_LEN="${MAX_MODEL_LEN:-8192}"
SERVED_MODEL_NAME="${SERVED_MODEL_NAME:-higgs-audio-v2}"
HIGGS_MODEL="${HIGGS_MODEL:-bosonai/higgs-audio-v2-generation-3B-base}"
IMAGE="${VLLM_IMAGE:-bosonai/higgs-audio-vllm:latest}"
CONTAINER="${VLLM_CONTAINER:-higgs-audio-vllm}"
HF_CACHE="${HF_CACHE:-$HOME/.cache/huggingface}"
VOICE_PRESETS_DIR="${VOICE_PRESETS_DIR:-$HERE/voice_presets}"
# The first start downloads ~10 GB of weights before loading them.
HEALTH_TIMEOUT_S="${HEALTH_TIMEOUT_S:-1800}"
HEALTH_POLL_S="${HEALTH_POLL_S:-5}"
GPU_MONITOR_LOG="${GPU_MONITOR_LOG:-$HERE/gpu_monitor.log}"
MONITOR_PID_FILE="$HERE/gpu_monitor.pid"
HEALTH_URL="http://127.0.0.1:${PORT}/health"

fail() {
    echo "start-vllm: $*" >&2
    exit 1
}

container_running() {
    [[ "$(docker inspect --format '{{.State.Running}}' "$CONTAINER" 2> /dev/null || true)" == "true" ]]
}

healthy() {
    # --noproxy: a proxy from the environment must not answer for localhost.
    curl --silent --fail --noproxy '*' --max-time 5 --output /dev/null "$HEALTH_URL"
}

echo "=== Starting Higgs Audio v2 vLLM ==="
echo "port:                   $PORT"
echo "GPU memory utilization: $GPU_MEMORY_UTILIZATION"
echo "max model length:       $MAX_MODEL_LEN"
echo "served model name:      $SERVED_MODEL_NAME"

command -v docker > /dev/null || fail "docker not found: run ./setup.sh first"
if container_running; then
    fail "container $CONTAINER is already running: ./stop-vllm.sh first"
fi
# A stopped container of an earlier run keeps the name taken.
docker rm "$CONTAINER" > /dev/null 2>&1 || true

mkdir -p "$HF_CACHE"
run_args=(
    --detach --name "$CONTAINER"
    --gpus all --ipc=host
    --publish "${PORT}:${PORT}"
    --volume "${HF_CACHE}:/root/.cache/huggingface"
)
if [[ -n "${HF_TOKEN:-}" ]]; then
    run_args+=(--env HF_TOKEN)
fi
server_args=(
    --served-model-name "$SERVED_MODEL_NAME"
    --model "$HIGGS_MODEL"
    --audio-tokenizer-type bosonai/higgs-audio-v2-tokenizer
    --limit-mm-per-prompt audio=50
    --max-model-len "$MAX_MODEL_LEN"
    --gpu-memory-utilization "$GPU_MEMORY_UTILIZATION"
    --port "$PORT"
    --disable-mm-preprocessor-cache
)
# Custom voices replace the image's presets; without a config.json the image's own are used.
if [[ -f "$VOICE_PRESETS_DIR/config.json" ]]; then
    run_args+=(--volume "${VOICE_PRESETS_DIR}:/voice_presets:ro")
    server_args+=(--voice-presets-dir /voice_presets)
    echo "voice presets:          $VOICE_PRESETS_DIR"
fi

docker run "${run_args[@]}" "$IMAGE" "${server_args[@]}" > /dev/null
echo "container $CONTAINER started"

if [[ -f "$MONITOR_PID_FILE" ]] && kill -0 "$(cat "$MONITOR_PID_FILE")" 2> /dev/null; then
    echo "GPU monitor already running (pid $(cat "$MONITOR_PID_FILE"))"
else
    nohup "$HERE/monitor_gpu.sh" "$GPU_MONITOR_LOG" > /dev/null 2>&1 &
    echo "$!" > "$MONITOR_PID_FILE"
    echo "GPU monitor: $GPU_MONITOR_LOG (pid $!)"
fi

echo "waiting for $HEALTH_URL (up to ${HEALTH_TIMEOUT_S} s; the first start downloads the model)"
deadline=$((SECONDS + HEALTH_TIMEOUT_S))
until healthy; do
    if ! container_running; then
        echo "start-vllm: container $CONTAINER stopped; its last log lines:" >&2
        docker logs --tail 50 "$CONTAINER" >&2 || true
        fail "vLLM did not start (see README.md, Troubleshooting); ./stop-vllm.sh cleans up"
    fi
    if ((SECONDS >= deadline)); then
        fail "no answer from $HEALTH_URL after ${HEALTH_TIMEOUT_S} s: docker logs $CONTAINER"
    fi
    sleep "$HEALTH_POLL_S"
done
echo "vLLM is ready at http://127.0.0.1:${PORT} (model $SERVED_MODEL_NAME)"
