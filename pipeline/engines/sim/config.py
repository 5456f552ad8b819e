"""Every knob of the sim engine (`SimConfig`): capacity, speech, faults."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from pipeline.engines.sim import audio as simaudio

DEFAULT_VOICES = (
    "belinda", "broom_salesman", "chadwick", "en_man",
    "en_woman", "mabel", "vex", "zh_man_sichuan",
)


class SimConfig(BaseModel):
    """Every knob of the stand-in; each is also a `--kebab-case` CLI flag."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    slots: int = Field(32, ge=1, description="requests generating at once; more wait FIFO")
    tokens_per_s: float = Field(
        0.0, ge=0, description="per-stream audio tokens/s at batch 1 (25 = real time); 0 = instant"
    )
    batch_penalty: float = Field(
        0.02, ge=0, description="step time grows by this share per extra request"
    )
    latency_s: float = Field(0.0, ge=0, description="fixed extra time per call, holding a slot")
    model_name: str = Field("higgs-audio-v2", description="served model name")
    voices: tuple[str, ...] = Field(DEFAULT_VOICES, min_length=1, description="preset voice names")
    words_per_s: float = Field(2.5, gt=0, description="speaking rate of the generated audio")
    max_model_len: int = Field(8192, ge=1, description="context length in tokens")
    error_rate: float = Field(0.0, ge=0, le=1, description="share of calls answered error_status")
    error_status: int = Field(503, ge=400, le=599, description="status of injected errors")
    fail_first: int = Field(0, ge=0, description="first N calls per distinct text get error_status")
    hang_rate: float = Field(0.0, ge=0, le=1, description="share of calls that sleep hang_s first")
    hang_s: float = Field(3600.0, ge=0, description="how long a hanging call sleeps")
    glued_wav: bool = Field(
        False, description="chat answers carry glued WAVs (first header says 0.68 s)"
    )
    short_header_rate: float = Field(
        0.0, ge=0, le=1, description="share of chat WAVs whose header claims 0.68 s"
    )
    empty_audio_rate: float = Field(0.0, ge=0, le=1, description="share of answers without audio")
    runaway_rate: float = Field(
        0.0, ge=0, le=1, description="share of answers padded with silence up to max_tokens"
    )
    truncate_rate: float = Field(
        0.0, ge=0, le=1,
        description="share of answers that keep speaking until max_tokens cuts them (finish_reason length)",
    )
    seed_for_faults: int = Field(0, description="seed of the fault draws")

    @property
    def ideal_audio_s_per_s(self) -> float | None:
        """Audio seconds per second at a full batch; None when generation is instant."""
        if self.tokens_per_s <= 0:
            return None
        tokens_per_s = self.slots * self.tokens_per_s / (1 + self.batch_penalty * (self.slots - 1))
        return tokens_per_s / simaudio.AUDIO_TOKENS_PER_S
