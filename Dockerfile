# syntax=docker/dockerfile:1
# One image for every role of the pipeline; the role is the command:
#   docker run IMAGE worker synth | worker ingest | worker assemble | gateway | engine --kind sim
# Build from the repository root:
#   docker build -t tts-pipeline .                         # GPU hosts (model served by vLLM)
#   docker build -t tts-pipeline:local --build-arg EXTRAS=local .   # + the CPU engine (Piper)
# EXTRAS is a comma-separated list of the project's optional extras. `local` pulls in piper-tts
# (GPL-3.0): images built with it must be distributed under GPL terms; the default image is not.

ARG PYTHON_IMAGE=python:3.11-slim

# --- build: the project's wheel, then a venv with it and its dependencies -------------------
FROM ${PYTHON_IMAGE} AS build
ARG EXTRAS=""
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# Only what the wheel is built from: edits to tests, docs or infra do not invalidate this layer.
COPY pyproject.toml README.md ./
COPY pipeline ./pipeline
COPY http_gateway ./http_gateway
RUN python -m pip wheel --no-deps --wheel-dir /wheels . \
 && python -m venv /opt/venv \
 && wheel="$(ls /wheels/tts_pipeline-*.whl)" \
 && if [ -n "$EXTRAS" ]; then spec="${wheel}[${EXTRAS}]"; else spec="$wheel"; fi \
 && /opt/venv/bin/pip install "$spec" \
 && /opt/venv/bin/tts-pipeline --help > /dev/null

# --- runtime: the venv and the health check, run as an unprivileged user -------------------
FROM ${PYTHON_IMAGE} AS runtime
ARG UID=10001
RUN groupadd --system --gid "$UID" tts \
 && useradd --system --uid "$UID" --gid tts --home-dir /home/tts --create-home --shell /usr/sbin/nologin tts
COPY --from=build /opt/venv /opt/venv
COPY infra/docker/healthcheck.py /opt/tts/healthcheck.py
# In a container the gateway and engine must listen beyond loopback; logs go out as JSON lines.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TTS_GATEWAY_HOST=0.0.0.0 \
    TTS_LOG_JSON=true
USER tts
WORKDIR /home/tts
EXPOSE 8888 8000
# One check for every role: healthcheck.py reads the role from PID 1's command line (gateway and
# engine: GET /health; synth worker: live heartbeat in the tts_workers KV; other workers: NATS).
# compose.yaml and the Kubernetes probes name the check explicitly per service.
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
    CMD ["python", "/opt/tts/healthcheck.py"]
ENTRYPOINT ["tts-pipeline"]
CMD ["worker", "synth"]
