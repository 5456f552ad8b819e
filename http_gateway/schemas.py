"""Request bodies of the gateway's routes.

`GenerateRequest` is the original proxy's contract field for field (names, defaults, ranges: an
out-of-range value is a 422), plus `voice`. The ranges are the original's, narrower than the bus's
`Sampling` model, so they are checked here. Unknown fields are ignored, as the original did.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from pipeline.contracts.messages import Sampling
from pipeline.contracts.subjects import TOKEN_RE

# The OpenAI speech voices. They are not presets of ours: the speech route maps them to the
# default voice so that `openai` SDK code written for OpenAI works unchanged.
OPENAI_VOICES = frozenset({
    "alloy", "ash", "ballad", "cedar", "coral", "echo", "fable", "marin", "nova", "onyx", "sage",
    "shimmer", "verse",
})
# Boson's own benchmark asks for voice "default"; it means the same here.
DEFAULT_VOICE_ALIASES = OPENAI_VOICES | {"default"}


CAST_DESCRIPTION = ("voices by speaker or character: {\"SPEAKER0\": \"en_woman\", \"alice\": \"belinda\"} "
                    "for [SPEAKER0] lines and [voice:alice] tags (docs/voices.md)")


class CastFields(BaseModel):
    cast: dict[str, str] | None = Field(default=None, description=CAST_DESCRIPTION)
    narrator: str | None = Field(default=None, description="the voice of text outside any speaker tag")


class SamplingFields(BaseModel):
    temperature: float = Field(default=1.0, ge=0.1, le=1.5)
    top_p: float = Field(default=0.95, gt=0.0, le=1.0)  # vLLM: (0, 1]
    top_k: int = Field(default=50, ge=1, le=100)
    max_tokens: int = Field(default=2048, ge=256, le=8192)

    def sampling(self) -> Sampling:
        return Sampling(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k, max_tokens=self.max_tokens)


class GenerateRequest(SamplingFields, CastFields):
    text: str
    system_prompt: str | None = None
    reference_audio_base64: str | None = None
    reference_text: str | None = None
    voice: str | None = Field(default=None, description="a preset voice name (GET /v1/audio/voices)")
    stream: bool = Field(default=False, description="send the WAV as chunks finish (header sizes 'unknown')")
    normalize: bool | None = Field(default=None, description="false: send the text as written, without the "
                                   "spoken form (numbers, dates, abbreviations in words); default: the server's TTS_SPOKEN_FORM")


class SpeechRequest(SamplingFields, CastFields):
    """OpenAI's `POST /v1/audio/speech` body. `model`, `speed` and `instructions` are accepted
    and not used: the gateway serves its configured model at normal speed."""

    model: str = "higgs-audio-v2"
    input: str
    voice: str = "alloy"
    # OpenAI's default; wav, flac, mp3 or pcm, checked by the route (opus/aac: 400, not 422).
    response_format: str = "mp3"
    speed: float = Field(default=1.0, ge=0.25, le=4.0)
    instructions: str | None = None
    # Kokoro-FastAPI's field: audio sent as the text's chunks finish (pcm, wav or mp3).
    stream: bool = False
    # OpenAI's: "sse" streams `speech.audio.delta` events (implies streaming); "audio" the bytes.
    stream_format: str = "audio"
    normalize: bool | None = Field(default=None, description="false: send the text as written, without the "
                                   "spoken form (numbers, dates, abbreviations in words); default: the server's TTS_SPOKEN_FORM")


class JobChapter(BaseModel):
    title: str = Field(default="", max_length=500)
    # No max_length here: a chapter over the bus limit is a 413 (checked by the route), not a 422.
    text: str


class JobRequest(SamplingFields, CastFields):
    """`POST /jobs`: a book or any long text set, as chapters. Every chapter gets the same voice,
    format, scene prompt, sampling and seed (the seed defaults to one derived from the job id)."""

    job_id: str | None = Field(default=None, pattern=TOKEN_RE.pattern,
                               description="1-64 of A-Za-z0-9_-; default: from `title` plus random hex")
    title: str | None = Field(default=None, max_length=500, description="names the job id when none is given")
    chapters: list[JobChapter]
    voice: str | None = Field(default=None, description="a preset voice name (GET /v1/audio/voices)")
    system_prompt: str | None = Field(default=None, max_length=10_000)
    format: Literal["wav", "flac", "mp3"] = "wav"
    seed: int | None = None
    dialogue: bool = Field(default=False, description='quoted speech spoken by cast["dialogue"], the rest by the narrator')
    normalize: bool | None = Field(default=None, description="false: send the text as written, without the "
                                   "spoken form (numbers, dates, abbreviations in words); default: the server's TTS_SPOKEN_FORM")

    def sampling(self) -> Sampling:
        return super().sampling().model_copy(update={"seed": self.seed})
