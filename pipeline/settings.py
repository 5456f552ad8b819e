"""One settings object for every process, read from `TTS_*` environment variables.

Built once at the entry point (CLI, worker, gateway) and passed down; nothing reads the
environment at import time. Tests build their own `Settings(...)`.
"""

from __future__ import annotations

from typing import Annotated

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

    # --- synth worker ---
    max_in_flight: int = Field(default=32, ge=1, le=4096)
    ack_wait_s: float = Field(default=60.0, gt=0)
    max_deliver: int = Field(default=5, ge=1)
    retry_base_delay_s: float = Field(default=0.5, ge=0)
    retry_max_delay_s: float = Field(default=30.0, ge=0)
    # How long one idle poll of the bulk queue waits; bounds interactive latency on an idle worker.
    poll_s: float = Field(default=0.2, gt=0)
    drain_timeout_s: float = 30.0
    heartbeat_s: float = Field(default=5.0, gt=0)
    worker_name: str = ""

    # --- audio checks ---
    sample_rate_hz: int = 24000
    words_per_s: float = 2.5
    min_duration_ratio: float = 0.3
    max_duration_ratio: float = 3.0

    # --- retention ---
    events_max_age_s: float = 7 * 24 * 3600
    dedup_window_s: float = 120.0

    # --- gateway ---
    gateway_host: str = "127.0.0.1"
    gateway_port: int = 8888

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
