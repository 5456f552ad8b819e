"""The bus contract: every message on NATS, as frozen pydantic models with a schema version.

Messages carry object keys, never audio bytes (NATS payloads are capped at 1 MiB), with one
exception: the `AudioReply` a worker sends on core NATS to a waiting gateway (`reply_to`), which
carries a short answer's WAV so the interactive path needs no store round trip.
Handlers take and return these models, never dicts.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from pipeline.contracts.subjects import check_token

SCHEMA_VERSION = 1

# Without a system prompt the original proxy used this scene prompt (Higgs chat format).
DEFAULT_SCENE_PROMPT = (
    "Generate audio following instruction.\n\n"
    "<|scene_desc_start|>\nAudio is recorded from a quiet room.\n<|scene_desc_end|>"
)
DEFAULT_REFERENCE_TEXT = "Please speak naturally."
AUDIO_TOKENS_PER_S = 25  # Higgs Audio v2's codec: one audio token per 40 ms of speech
# Presets configured in the bosonai/higgs-audio-vllm image (reference/higgs-vllm-api.md §5).
HIGGS_PRESET_VOICES = ("belinda", "broom_salesman", "chadwick", "en_man", "en_woman", "mabel", "vex", "zh_man_sichuan")


# Ids that become subject tokens and parts of object keys; voice names that become file names.
Token = Annotated[str, AfterValidator(check_token)]
VoiceName = Annotated[str, Field(max_length=64), AfterValidator(lambda value: check_token(value, "voice"))]
# A speaker or character in a cast: "SPEAKER0", "narrator", "Alice"; printable, no brackets.
SpeakerName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[^\[\]\x00-\x1f]+$")]


class _Message(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    schema_version: int = SCHEMA_VERSION

    def to_bytes(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes):  # noqa: ANN206 - returns cls
        return cls.model_validate_json(data)


class Sampling(BaseModel):
    """What the model samples with. Part of the audio's identity (and so of its cache key)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=0.95, ge=0.0, le=1.0)
    top_k: int = Field(default=50, ge=1, le=1000)
    seed: int | None = None
    # Upper bound asked by the caller; the backend lowers it further from the text's length.
    max_tokens: int = Field(default=2048, ge=16, le=8192)


class Reference(BaseModel):
    """A voice to clone: WAV already uploaded to the store (key), plus its transcript."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    audio_key: str = Field(min_length=1, max_length=512)
    transcript: str = ""
    # Content hash of the reference audio; the key may be re-used, the hash may not.
    audio_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class SynthRequest(_Message):
    """One chunk of text to turn into one stored WAV.

    Identity: (`job_id`, `chunk_id`) names the work item (and its de-duplication id on publish);
    `audio_digest()` names the audio (same inputs -> same key -> one synthesis).
    """

    job_id: Token
    chunk_id: Token
    text: str = Field(min_length=1, max_length=20_000)
    voice: VoiceName | None = None
    reference: Reference | None = None
    system_prompt: str | None = Field(default=None, max_length=10_000)
    sampling: Sampling = Sampling()
    model: str | None = None
    # Set to anything new to get a fresh take instead of the cached audio for the same inputs.
    take: str | None = Field(default=None, max_length=64)
    # Free-form ids carried into the events (chapter index, gateway request id, ...).
    chapter: int | None = None
    index: int | None = None
    reply_tag: str | None = Field(default=None, max_length=128)
    # Core-NATS subject of a waiting gateway (`Names.audio_reply`): a fresh answer that fits in
    # one message is also sent there as an `AudioReply`, before it is stored.
    reply_to: str | None = Field(default=None, max_length=256, pattern=r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")
    # Who speaks this chunk (a speaker tag's or cast's name: "SPEAKER0", "alice", "narrator");
    # a record for events and manifests, the voice itself is `voice`/`reference`.
    speaker: SpeakerName | None = None
    # The spoken form (pipeline/text/spoken.py): None = the worker's TTS_SPOKEN_FORM, False = send
    # the text as written (callers who prepared it), True = normalise.
    normalize: bool | None = None

    @field_validator("text")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("text cannot be empty")
        return value

    @model_validator(mode="after")
    def _one_voice(self) -> "SynthRequest":
        if self.voice and self.reference:
            raise ValueError("give either a preset voice or a reference, not both")
        return self

    def scene_prompt(self) -> str:
        return self.system_prompt if self.system_prompt is not None else DEFAULT_SCENE_PROMPT

    def audio_digest(self, default_model: str) -> str:
        """Hash over everything that determines the audio."""
        identity = {
            "model": self.model or default_model,
            "voice": self.voice,
            "reference": self.reference.audio_sha256 if self.reference else None,
            "reference_text": self.reference.transcript if self.reference else None,
            "system": self.scene_prompt(),
            "text": self.text,
            "sampling": self.sampling.model_dump(),
            "take": self.take,
        }
        raw = json.dumps(identity, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(raw).hexdigest()


class ChunkTimings(BaseModel):
    model_config = ConfigDict(frozen=True)
    queued_s: float = 0.0
    synth_s: float = 0.0
    store_s: float = 0.0
    total_s: float = 0.0


class ChunkDone(_Message):
    kind: Literal["chunk.done"] = "chunk.done"
    job_id: str
    chunk_id: str
    key: str
    duration_s: float
    sample_rate_hz: int
    bytes: int
    cached: bool
    attempt: int
    backend: str | None = None
    worker: str
    timings: ChunkTimings
    chapter: int | None = None
    index: int | None = None
    reply_tag: str | None = None
    repaired: list[str] = Field(default_factory=list)
    # Integrated loudness of the stored (trimmed) speech, LUFS; None when too short to measure.
    loudness_lufs: float | None = None
    # Word error rate of the ASR gate's transcript (TTS_VERIFY=asr) and the takes it needed.
    wer: float | None = None
    takes: int | None = None
    # What the model server said about the answer (header X-Engine-Note), e.g. a reference
    # voice it could not clone.
    engine_note: str | None = None
    # Who spoke it and with which voice (preset/library/built-in name, or "reference").
    speaker: str | None = None
    voice: str | None = None
    # The text as sent to the model when the spoken form changed it (the written text is the record).
    spoken: str | None = None


class AudioReply:
    """A fresh answer sent straight to the gateway waiting on `SynthRequest.reply_to`:
    4-byte big-endian length of a `ChunkDone` (timings so far; nothing stored yet), the
    `ChunkDone` JSON, then the WAV. The done event still follows once the audio is stored."""

    HEADER = 4

    @staticmethod
    def encode(done: ChunkDone, wav: bytes) -> bytes:
        meta = done.to_bytes()
        return len(meta).to_bytes(AudioReply.HEADER, "big") + meta + wav

    @staticmethod
    def size(done: ChunkDone, wav_bytes: int) -> int:
        """Bytes of the message that carries `done` and a WAV of `wav_bytes`."""
        return AudioReply.HEADER + len(done.to_bytes()) + wav_bytes

    @staticmethod
    def decode(data: bytes) -> tuple[ChunkDone, bytes]:
        if len(data) < AudioReply.HEADER:
            raise ValueError("audio reply shorter than its header")
        n = int.from_bytes(data[:AudioReply.HEADER], "big")
        end = AudioReply.HEADER + n
        if end > len(data):
            raise ValueError("audio reply cut short")
        return ChunkDone.from_bytes(data[AudioReply.HEADER:end]), data[end:]


class ChunkFailed(_Message):
    kind: Literal["chunk.failed"] = "chunk.failed"
    job_id: str
    chunk_id: str
    reason: str
    error: str
    attempt: int
    worker: str
    chapter: int | None = None
    index: int | None = None
    reply_tag: str | None = None


class DeadLetter(_Message):
    """A request that failed permanently or ran out of deliveries, kept with the reason."""

    source_subject: str
    stream_seq: int | None = None
    reason: str
    error: str
    attempts: int
    job_id: str | None = None
    chunk_id: str | None = None
    # The original payload, as text when it decodes as UTF-8 (it always fits: NATS caps at 1 MiB).
    payload: str
    payload_encoding: Literal["utf-8", "base64"] = "utf-8"
    # A letter must fit in one NATS message (1 MiB): a larger payload keeps only its head.
    payload_truncated: bool = False
    payload_bytes: int | None = None

    @staticmethod
    def encode_payload(data: bytes, limit_bytes: int = 512 * 1024) -> dict:
        """The payload fields for `data`: text when it is UTF-8, else base64; cut to `limit_bytes`
        of the original (the letter then says so and cannot be replayed)."""
        truncated = len(data) > limit_bytes
        head = data[:limit_bytes]
        try:
            payload, encoding = head.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            payload, encoding = base64.b64encode(head).decode(), "base64"
        return {"payload": payload, "payload_encoding": encoding, "payload_truncated": truncated,
                "payload_bytes": len(data)}


class BackendStatus(BaseModel):
    model_config = ConfigDict(frozen=True)
    url: str
    healthy: bool
    in_flight: int
    calls: int
    voices: list[str] = Field(default_factory=list)


class WorkerHeartbeat(_Message):
    """A worker's state in the `tts_workers` KV bucket, refreshed every `heartbeat_s`."""

    kind: Literal["worker.heartbeat"] = "worker.heartbeat"
    worker: str
    max_in_flight: int
    in_flight: int
    peak_in_flight: int
    synthesized: int
    cached: int
    failed: int
    retried: int
    backends: list[BackendStatus]


# ----------------------------------------------------------------- audiobook and bulk jobs

AudioFormat = Literal["wav", "flac", "mp3"]


class ChapterSubmit(_Message):
    """One chapter of a job, published to `tts.chapters.submit`.

    Every chapter of a job names the same `total_chapters`, so the job knows when it is complete.
    Voice, reference, scene prompt, sampling and seed should be the same for every chapter of a job
    (voice consistency); the seed defaults to one derived from the job id.
    """

    job_id: Token
    chapter: int = Field(ge=0, le=9999)
    total_chapters: int = Field(ge=1, le=10000)
    title: str = Field(default="", max_length=500)
    text: str = Field(max_length=900_000)  # NATS caps a message at 1 MiB
    voice: VoiceName | None = None
    reference: Reference | None = None
    system_prompt: str | None = Field(default=None, max_length=10_000)
    sampling: Sampling = Sampling()
    format: AudioFormat = "wav"
    # Voices by speaker or character (`[SPEAKER0]`, `[voice:alice]`, "dialogue"), and the narrator's
    # (text outside any tag); every chapter of a job carries the same cast.
    cast: dict[SpeakerName, VoiceName] | None = None
    narrator: VoiceName | None = None
    # Quoted speech spoken by the cast's "dialogue" voice, narration by the narrator.
    dialogue: bool = False
    normalize: bool | None = None

    @model_validator(mode="after")
    def _consistent(self) -> "ChapterSubmit":
        if self.chapter >= self.total_chapters:
            raise ValueError(f"chapter {self.chapter} is outside 0..{self.total_chapters - 1}")
        if self.voice and self.reference:
            raise ValueError("give either a preset voice or a reference, not both")
        return self


class ChapterDone(_Message):
    kind: Literal["chapter.done"] = "chapter.done"
    job_id: str
    chapter: int
    title: str
    key: str
    format: AudioFormat
    duration_s: float
    chunks: int
    bytes: int


class ChapterFailed(_Message):
    kind: Literal["chapter.failed"] = "chapter.failed"
    job_id: str
    chapter: int
    reason: str
    error: str
    failed_chunks: list[str] = Field(default_factory=list)


class JobProgress(_Message):
    kind: Literal["job.progress"] = "job.progress"
    job_id: str
    chapters_total: int
    chapters_done: int
    chapters_failed: int
    chunks_total: int
    chunks_done: int
    chunks_failed: int
    audio_s_done: float


class JobDone(_Message):
    kind: Literal["job.done"] = "job.done"
    job_id: str
    manifest_key: str
    chapters: int
    chapters_failed: int
    duration_s: float
