#!/usr/bin/env bash
# First-time set-up of a GPU host for the Higgs Audio v2 vLLM server: checks the NVIDIA driver,
# Docker and the NVIDIA container toolkit, pulls the image and creates the voice presets folder.
#
#   ./setup.sh                 then ./start-vllm.sh
#
# Variables: VLLM_IMAGE (default bosonai/higgs-audio-vllm:latest), VOICE_PRESETS_DIR.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
IMAGE="${VLLM_IMAGE:-bosonai/higgs-audio-vllm:latest}"
VOICE_PRESETS_DIR="${VOICE_PRESETS_DIR:-$HERE/voice_presets}"
# The model needs ~17-18 GB of GPU memory while generating (see README.md).
MIN_FREE_MB=20000

fail() {
    echo "setup: $*" >&2
    exit 1
}

echo "=== Higgs Audio v2 vLLM: set-up ==="

command -v nvidia-smi > /dev/null || fail "nvidia-smi not found: install the NVIDIA driver first"
command -v docker > /dev/null || fail "docker not found: install Docker Engine first"
docker info > /dev/null 2>&1 || fail "cannot talk to the Docker daemon (is it running? is this user in the docker group?)"

echo "GPUs:"
nvidia-smi --query-gpu=index,name,memory.total,memory.used --format=csv,noheader
free_mb="$(nvidia-smi --query-gpu=memory.free --format=csv,noheader,nounits | head -n 1 | tr -d ' ')"
if [[ "$free_mb" =~ ^[0-9]+$ ]] && ((free_mb < MIN_FREE_MB)); then
    echo "warning: GPU 0 has ${free_mb} MB free; the model needs about ${MIN_FREE_MB} MB" >&2
fi

# --gpus needs the NVIDIA container toolkit; its runtime shows up in `docker info`.
if ! docker info --format '{{json .Runtimes}}' 2> /dev/null | grep -q nvidia; then
    echo "warning: no 'nvidia' runtime in 'docker info': install the NVIDIA container toolkit" >&2
    echo "         if 'docker run --gpus all ...' fails" >&2
fi

echo "Pulling $IMAGE (several GB) ..."
docker pull "$IMAGE"

mkdir -p "$VOICE_PRESETS_DIR"
chmod +x "$HERE"/*.sh

echo
echo "Done. Next:"
echo "  $HERE/start-vllm.sh        # PORT, GPU_MEMORY_UTILIZATION, MAX_MODEL_LEN change the defaults"
echo "  tail -f $HERE/gpu_monitor.log"
echo "  $HERE/stop-vllm.sh"
