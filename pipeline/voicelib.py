"""The voice library: stored reference voices (`voices/<name>.wav` + `voices/<name>.json`).

One record and one way to store it, shared by the folder sync (`synthesis/voices.py`,
`tts-pipeline voices sync`, source "preset") and the gateway's upload (`POST /v1/audio/voices`,
source "library"); no HTTP here, so the CLI can reuse it.

- `check_clip` decides whether an uploaded clip can be a reference voice and says why not
  (`ClipError.reason`: `not_audio`, `too_short`, `too_long`, `silent`, `clipped`,
  `transcript_mismatch`, `no_transcript`); `check_name` refuses a name that is not a token or
  that is a model server's built-in voice (a stored voice of that name would hide it).
- `store_voice` writes the audio first and the JSON last: the JSON is what makes a voice exist, so
  a reader never sees a voice without its audio. When the JSON cannot be written the audio is
  deleted again: nothing half-stored. `delete_voice` removes the JSON first for the same reason.
"""

from __future__ import annotations

import asyncio
import io
from typing import Literal

import numpy as np
import soundfile as sf
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipeline.audio.checks import encode_wav, resample
from pipeline.contracts.errors import Permanent
from pipeline.contracts.messages import HIGGS_PRESET_VOICES, Reference
from pipeline.contracts.subjects import TOKEN_RE, VOICE_AUDIO_KEY, VOICE_META_KEY, check_token
from pipeline.store import Store, sha256_hex

VoiceSource = Literal["preset", "library"]

PRESET_MAX_S = 60.0  # the folder sync's own bound (a local folder is trusted more than an upload)
CLIP_MIN_S = 3.0
CLIP_MAX_S = 30.0
# Silent: the loudest 50 ms stretch stays below this level (about -50 dBFS RMS).
SILENT_RMS = 32768 * 10 ** (-50 / 20)
SILENT_WINDOW_S = 0.05
# Clipped: more than this share of samples at (or within 1 step of) full scale.
CLIPPED_LEVEL = 32766
CLIPPED_SHARE = 0.001
# Transcript plausibility: words per second of clip (speech runs ~2-4; the bounds leave room
# for pauses and for fast talkers).
WORDS_PER_S_MIN = 0.5
WORDS_PER_S_MAX = 6.0

_PREFIX = VOICE_META_KEY.split("{", 1)[0]
_SUFFIX = VOICE_META_KEY.rsplit("}", 1)[1]


class VoicePreset(BaseModel):
    """What `voices/<name>.json` holds. Objects written before `source` existed read as "preset"."""

    model_config = ConfigDict(frozen=True, extra="ignore")
    name: str
    transcript: str
    system_prompt: str | None = None
    audio_key: str
    audio_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    duration_s: float
    source: VoiceSource = "preset"

    def reference(self) -> Reference:
        return Reference(audio_key=self.audio_key, transcript=self.transcript, audio_sha256=self.audio_sha256)


class PresetError(Permanent):
    """A voice that cannot be used or stored; the message names the problem."""


class ClipError(PresetError):
    """An uploaded clip refused; `reason` is a short code, the message a sentence."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def decode_mono(data: bytes) -> tuple[np.ndarray, int]:
    """Any audio file soundfile reads -> (int16 mono samples, rate). `ClipError("not_audio")` else."""
    try:
        samples, rate = sf.read(io.BytesIO(data), dtype="int16", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise ClipError("not_audio", f"not an audio file soundfile can read ({exc})") from None
    if samples.shape[1] > 1:
        return samples.astype(np.int32).mean(axis=1).astype(np.int16), rate
    return samples[:, 0], rate


def canonical_reference(data: bytes, sample_rate_hz: int, max_s: float = PRESET_MAX_S) -> tuple[bytes, float]:
    """Any audio file soundfile reads -> (mono 16-bit WAV at `sample_rate_hz`, duration in s)."""
    mono, rate = decode_mono(data)
    if mono.size == 0:
        raise PresetError("the audio is empty")
    duration_s = mono.size / rate
    if duration_s > max_s:
        raise PresetError(f"the audio lasts {duration_s:.0f} s; a reference voice needs at most {max_s:.0f} s")
    return encode_wav(resample(mono, rate, sample_rate_hz), sample_rate_hz), duration_s


def check_clip(data: bytes, transcript: str, sample_rate_hz: int = 24000) -> tuple[bytes, float]:
    """An uploaded clip -> (canonical WAV, duration s), or `ClipError` with the first problem found."""
    words = len(transcript.split())
    if words == 0:
        raise ClipError("no_transcript", "the transcript is empty: give the words spoken in the clip")
    mono, rate = decode_mono(data)
    duration_s = mono.size / rate if rate else 0.0
    if duration_s < CLIP_MIN_S:
        raise ClipError("too_short", f"the clip lasts {duration_s:.1f} s; a voice needs {CLIP_MIN_S:.0f}-{CLIP_MAX_S:.0f} s")
    if duration_s > CLIP_MAX_S:
        raise ClipError("too_long", f"the clip lasts {duration_s:.1f} s; a voice needs {CLIP_MIN_S:.0f}-{CLIP_MAX_S:.0f} s")
    window = max(1, int(rate * SILENT_WINDOW_S))
    usable = mono[: mono.size // window * window].astype(np.float64).reshape(-1, window)
    loudest = float(np.sqrt((usable ** 2).mean(axis=1)).max())
    if loudest < SILENT_RMS:
        raise ClipError("silent", f"the clip is silent (loudest 50 ms at {_dbfs(loudest):.0f} dBFS; "
                                  f"speech needs more than {_dbfs(SILENT_RMS):.0f})")
    share = float(np.count_nonzero(np.abs(mono.astype(np.int32)) >= CLIPPED_LEVEL)) / mono.size
    if share > CLIPPED_SHARE:
        raise ClipError("clipped", f"the clip is clipped: {share:.1%} of its samples are at full scale "
                                   f"(at most {CLIPPED_SHARE:.1%}); record it with less gain")
    rate_wps = words / duration_s
    if not WORDS_PER_S_MIN <= rate_wps <= WORDS_PER_S_MAX:
        raise ClipError("transcript_mismatch",
                        f"the transcript has {words} words for {duration_s:.1f} s of audio ({rate_wps:.1f} words/s); "
                        f"a transcript of the clip has {WORDS_PER_S_MIN}-{WORDS_PER_S_MAX:.0f} words/s")
    return encode_wav(resample(mono, rate, sample_rate_hz), sample_rate_hz), duration_s


def _dbfs(rms: float) -> float:
    return 20 * np.log10(max(rms, 1e-9) / 32768)


def check_name(name: str) -> str:
    """A name an upload may use: a token, not a built-in voice of the Higgs image."""
    try:
        check_token(name, "voice name")
    except ValueError as exc:
        raise PresetError(str(exc)) from None
    if name in HIGGS_PRESET_VOICES:
        raise PresetError(f"'{name}' is a built-in voice of the model server; choose another name")
    return name


def meta_key(name: str) -> str:
    return VOICE_META_KEY.format(name=name)


async def store_voice(store: Store, name: str, wav: bytes, transcript: str, system_prompt: str | None,
                      duration_s: float, source: VoiceSource) -> VoicePreset:
    """Store a canonical WAV and its record: audio first, JSON last; the audio is deleted again
    when the JSON cannot be written."""
    preset = VoicePreset(
        name=name, transcript=" ".join(transcript.split()), system_prompt=system_prompt or None,
        audio_key=VOICE_AUDIO_KEY.format(name=name), audio_sha256=sha256_hex(wav),
        duration_s=round(duration_s, 3), source=source,
    )
    await store.put(preset.audio_key, wav, "audio/wav")
    try:
        await store.put(meta_key(name), preset.model_dump_json().encode(), "application/json")
    except BaseException:
        await asyncio.shield(_forget(store, preset.audio_key))
        raise
    return preset


async def _forget(store: Store, key: str) -> None:
    try:
        await store.delete(key)
    except Exception:  # the store is away: the orphan audio is invisible without its JSON
        pass


async def read_voice(store: Store, name: str) -> VoicePreset | None:
    """The stored voice `name`, or None. `PresetError` when its JSON is malformed."""
    key = meta_key(name)
    if await store.head(key) is None:
        return None
    try:
        return VoicePreset.model_validate_json(await store.get(key))
    except ValidationError as exc:
        raise PresetError(f"voice {key} is malformed: {exc.errors()[0].get('msg')}") from None


async def stored_names(store: Store) -> set[str]:
    """Names of the stored voices (their `voices/<name>.json` keys; nothing read)."""
    return {n for key in await store.list_keys(_PREFIX) if (n := name_of(key))}


async def list_voices(store: Store) -> list[VoicePreset]:
    """Every stored voice, sorted by name (a malformed or vanishing one is left out)."""
    names = sorted(await stored_names(store))

    async def one(name: str) -> VoicePreset | None:
        try:
            return await read_voice(store, name)
        except Exception:  # deleted between the listing and the read, or malformed
            return None

    return [v for v in await asyncio.gather(*(one(n) for n in names)) if v is not None]


def name_of(key: str) -> str | None:
    """`voices/<name>.json` -> name; None for any other key."""
    if not key.startswith(_PREFIX) or not key.endswith(_SUFFIX):
        return None
    name = key[len(_PREFIX): -len(_SUFFIX)]
    return name if TOKEN_RE.match(name) else None


async def delete_voice(store: Store, name: str) -> bool:
    """Remove a stored voice (its JSON first: it stops existing at once); False when there is none."""
    if await store.head(meta_key(name)) is None:
        return False
    await store.delete(meta_key(name))
    await store.delete(VOICE_AUDIO_KEY.format(name=name))
    return True
