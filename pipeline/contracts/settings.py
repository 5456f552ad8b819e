"""One settings object for every process, read from `TTS_*` environment variables.

Built once at the entry point (CLI, worker, gateway) and passed down; nothing reads the
environment at import time. Tests build their own `Settings(...)`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# Default addresses of `tts-pipeline up`: every other command finds the embedded stack with no
# configuration. The gateway keeps the original proxy's port.
DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
DEFAULT_S3_ENDPOINT_URL = "http://127.0.0.1:8333"
DEFAULT_BACKEND_URL = "http://127.0.0.1:8000"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TTS_", extra="ignore", frozen=True)

    # --- bus ---
    nats_url: str = DEFAULT_NATS_URL
    nats_connect_timeout_s: float = 2.0
    # Credentials: user/password, a `.creds` file (JWT + nkey) or an nkey seed file. Never logged.
    nats_user: str = ""
    nats_password: str = Field(default="", repr=False)
    nats_creds_file: str = ""
    nats_nkey_seed_file: str = ""
    # Replicas of every stream and KV bucket: 1 on one server, 3 on a 3-node cluster (R3).
    stream_replicas: int = Field(default=1, ge=1, le=5)
    # A suffix on every stream, consumer and KV name so that several pipelines (or tests) share
    # one server without seeing each other's work. Empty in production.
    namespace: str = ""

    # --- object store ---
    s3_endpoint_url: str = DEFAULT_S3_ENDPOINT_URL
    s3_bucket: str = "tts"
    s3_access_key: str = "tts-pipeline"
    s3_secret_key: str = Field(default="tts-pipeline-secret", repr=False)
    s3_region: str = "us-east-1"
    s3_max_threads: int = Field(default=16, ge=1, le=256)
    s3_timeout_s: float = 30.0
    s3_prefix: str = ""
    # A worker keeps freshly synthesised audio and retries storing it in place this long while
    # the store is away (and pauses pulling until the bucket answers again).
    store_retry_s: float = Field(default=60.0, ge=0)

    # --- model servers ---
    backend_urls: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: [DEFAULT_BACKEND_URL],
        validation_alias=AliasChoices("TTS_BACKEND_URLS", "VLLM_URL", "backend_urls"),
    )
    model: str = "higgs-audio-v2"
    backend_timeout_s: float = 120.0
    backend_connect_timeout_s: float = 5.0
    # A model server that refused connections is skipped for this long before being tried again.
    backend_eject_s: float = 5.0
    # Consecutive failed calls (timeouts, 5xx) that eject a server; a refused connection ejects at once.
    backend_eject_after: int = Field(default=3, ge=1)

    # --- synth worker ---
    max_in_flight: int = Field(default=32, ge=1, le=4096)
    # Messages a worker may hold beyond `max_in_flight` while their audio is checked, stored and
    # reported: the model-call slots are refilled as soon as an answer arrives, even when a whole
    # batch answers at once.
    finishing_slots: int = Field(default=32, ge=0, le=4096)
    # Bulk messages a worker holds beyond its free call slots; when a slot frees, the one with the
    # longest text starts (at once, without asking NATS), so a job's last calls end together
    # instead of one long straggler keeping the batch part-empty. 0 = start in arrival order.
    bulk_lookahead: int = Field(default=0, ge=0, le=1024)
    # Share of `max_in_flight` that bulk work leaves free while interactive requests are arriving
    # (one started in the last `interactive_hold_s`): they find a call slot at once and a batch
    # that is not full. With no interactive traffic bulk uses every slot.
    # Treat `max_in_flight` as a ceiling and find the number of calls that keeps the model
    # servers' batch full by measuring throughput and call time (pipeline/synthesis/adaptive.py).
    adaptive_in_flight: bool = False
    adaptive_window_s: float = Field(default=5.0, gt=0)
    interactive_reserve: float = Field(default=0.25, ge=0.0, le=0.9)
    interactive_hold_s: float = Field(default=30.0, ge=0.0)
    ack_wait_s: float = Field(default=60.0, gt=0)
    max_deliver: int = Field(default=5, ge=1)
    retry_base_delay_s: float = Field(default=0.5, ge=0)
    retry_max_delay_s: float = Field(default=30.0, ge=0)
    # A request older than this (since first published) is dead-lettered instead of retried or
    # started: nobody is waiting for it any more. 0 = no age limit.
    max_message_age_s: float = Field(default=0.0, ge=0)
    # How long one idle poll of the bulk queue waits; bounds interactive latency on an idle worker.
    poll_s: float = Field(default=0.2, gt=0)
    drain_timeout_s: float = 30.0
    heartbeat_s: float = Field(default=5.0, gt=0)
    # Prometheus metrics of a `worker synth` process on this port; 0 = none.
    worker_metrics_port: int = Field(default=0, ge=0, le=65535)
    worker_metrics_host: str = "127.0.0.1"
    worker_name: str = ""

    # --- audio checks ---
    sample_rate_hz: int = 24000
    words_per_s: float = 2.5
    min_duration_ratio: float = 0.3
    max_duration_ratio: float = 3.0
    # Silence kept around the speech when a chunk is trimmed; more silence than
    # max_edge_silence_s at either end of an answer is a runaway generation.
    trim_pad_s: float = Field(default=0.1, ge=0)
    max_edge_silence_s: float = Field(default=2.0, gt=0)
    # ASR quality gate (`asr` needs the `verify` extra): a WER above verify_max_wer gets a new
    # take with a new seed, up to verify_max_attempts takes, then the chunk fails.
    verify: Literal["off", "asr"] = "off"
    verify_model: str = ""  # a faster-whisper model dir or name; "" = the bundled tiny.en
    verify_max_wer: float = Field(default=0.25, ge=0)
    verify_max_attempts: int = Field(default=3, ge=1)
    verify_threads: int = Field(default=0, ge=0)  # 0 = every core

    # --- voices and the local engine ---
    voice_presets_dir: str = "voice_presets"
    voice_cache_s: float = Field(default=30.0, ge=0)
    # Normalise each chunk's text for listening (numbers, currency, footnote markers, ...) before
    # it reaches the model (pipeline/text/spoken.py); a request's `normalize` overrides it.
    spoken_form: bool = True
    # What `up`/`demo` start when no backend URL is configured (piper needs the `local` extra).
    local_engine: Literal["piper", "sim"] = "piper"
    engine_threads: int = Field(default=0, ge=0)  # Piper synthesis pool; 0 = one per core

    # --- jobs: chunking (pipeline/text/split.py); ~40 words = ~16 s of speech at 2.5 words/s ---
    chunk_max_words: int = Field(default=50, ge=1, le=1000)
    chunk_target_words: int = Field(default=40, ge=1, le=1000)
    # Binds only on very long words (URLs, no-space scripts): those are cut inside the word.
    chunk_max_chars: int = Field(default=400, ge=1, le=10000)

    # --- jobs: assembly of chapters ---
    # Silence between two chunks of a chapter; each chunk edge fades over `crossfade_s`.
    pause_s: float = Field(default=0.35, ge=0, le=5)
    crossfade_s: float = Field(default=0.01, ge=0, le=0.5)
    # Every chunk's speech is brought to this integrated loudness before joining (±12 dB at most).
    target_lufs: float = Field(default=-20.0, ge=-40, le=-5)
    max_gain_db: float = Field(default=12.0, ge=0, le=30)
    # Chapters assembled at once by one assembler process.
    assemble_concurrency: int = Field(default=2, ge=1, le=64)
    # Job progress events at most this often per job (chapter and job outcomes are never held back).
    progress_interval_s: float = Field(default=0.5, ge=0)

    # --- retention ---
    events_max_age_s: float = 7 * 24 * 3600
    dedup_window_s: float = 120.0

    # --- gateway ---
    gateway_host: str = "127.0.0.1"
    gateway_port: int = 8888
    # Bearer token for every route but /health, /ready, /metrics and the docs; empty = no auth.
    gateway_api_key: str = Field(default="", repr=False)
    # How long an HTTP request waits for its outcome event before answering 504.
    gateway_request_timeout_s: float = Field(default=120.0, gt=0)
    # A text longer than one chunk is split and its chunks spoken in parallel; 10,000 characters
    # (~11 min of speech, a ~32 MB WAV held in memory while joined) keeps one answer a sensible
    # size. Longer texts belong to the jobs API (durable, resumable, fetched by chapter).
    gateway_max_text_chars: int = Field(default=10_000, ge=1, le=100_000)
    gateway_max_batch: int = Field(default=64, ge=1)
    gateway_max_reference_bytes: int = Field(default=10 * 1024 * 1024, ge=1)
    gateway_max_reference_s: float = Field(default=60.0, gt=0)
    # Checked before parsing; must leave room for a maximal reference as base64 (4/3 of it).
    gateway_max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    # A comment line on every open `/jobs/{id}/events` stream this often, so that proxies and
    # clients with read timeouts keep an idle stream open.
    gateway_sse_heartbeat_s: float = Field(default=15.0, gt=0)

    # --- logging ---
    log_level: str = "info"
    log_json: bool = False

    @field_validator("backend_urls", mode="before")
    @classmethod
    def _split_urls(cls, value: object) -> object:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",")]
        if isinstance(value, (list, tuple)):
            urls = [str(u).strip().rstrip("/") for u in value if str(u).strip()]
            if not urls:
                raise ValueError("at least one backend URL is required")
            return urls
        return value

    @field_validator("namespace")
    @classmethod
    def _check_namespace(cls, value: str) -> str:
        if value and not value.replace("_", "").replace("-", "").isalnum():
            raise ValueError("namespace may hold letters, digits, '-' and '_' only")
        return value
