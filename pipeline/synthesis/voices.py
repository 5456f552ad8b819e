"""Voice presets: a folder of reference voices, synced to the bucket, usable by name.

Folder layout (`TTS_VOICE_PRESETS_DIR`, default `voice_presets/`), one preset per name:

    <name>.wav    reference speech (any rate or channel count soundfile reads; ~5-15 s is best)
    <name>.txt    its transcript
    <name>.json   optional: {"system_prompt": "..."}: a scene prompt used with this voice

`sync_presets` uploads each as `voices/<name>.wav` (canonical 24 kHz mono 16-bit) and
`voices/<name>.json` (`VoicePreset`, source "preset"), through `pipeline/voicelib.py`, the same
record and the same writes as a voice uploaded to the gateway (`POST /v1/audio/voices`). A request's voice name then resolves (`VoiceBook.resolve`):

- a synced preset becomes a reference: the worker sends the preset's audio and transcript to the
  chat endpoint (voice cloning) and its scene prompt unless the request has its own;
- any other name (the Higgs image's built-ins `belinda`, `en_man`, ... or a model server's own
  presets) passes through unchanged to the speech endpoint.

A synced preset wins over a built-in of the same name. Lookups are cached for `voice_cache_s`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import structlog

from pipeline.contracts.messages import SynthRequest
from pipeline.contracts.subjects import check_token
from pipeline.store import Store, open_store
from pipeline.voicelib import (  # noqa: F401 (VoicePreset, canonical_reference: re-exported)
    PresetError, VoicePreset, canonical_reference, read_voice, store_voice,
)

log = structlog.get_logger("pipeline.voices")


@dataclass(frozen=True)
class LocalPreset:
    name: str
    wav_path: Path
    transcript: str
    system_prompt: str | None


def read_folder(folder: Path) -> list[LocalPreset]:
    """Every preset in `folder`, sorted by name. Raises `PresetError` for a broken entry
    (bad name, missing or empty transcript, unreadable JSON)."""
    if not folder.is_dir():
        raise PresetError(f"voice preset folder {folder} does not exist")
    presets = []
    for wav_path in sorted(folder.glob("*.wav")):
        name = wav_path.stem
        try:
            check_token(name, "voice preset name")
        except ValueError as exc:
            raise PresetError(f"{wav_path.name}: {exc}") from None
        txt = wav_path.with_suffix(".txt")
        if not txt.is_file() or not txt.read_text(encoding="utf-8").strip():
            raise PresetError(f"{wav_path.name}: needs a transcript in {txt.name}")
        system_prompt = None
        meta_path = wav_path.with_suffix(".json")
        if meta_path.is_file():
            try:
                meta = json.loads(meta_path.read_text(encoding="utf-8"))
            except ValueError as exc:
                raise PresetError(f"{meta_path.name}: not JSON: {exc}") from None
            if not isinstance(meta, dict) or not isinstance(meta.get("system_prompt", ""), str):
                raise PresetError(f'{meta_path.name}: expected {{"system_prompt": "..."}}')
            system_prompt = meta.get("system_prompt") or None
        presets.append(LocalPreset(name, wav_path, " ".join(txt.read_text(encoding="utf-8").split()), system_prompt))
    return presets


async def sync_presets(store: Store, folder: Path, sample_rate_hz: int = 24000) -> list[VoicePreset]:
    """Upload every preset of `folder` to `voices/` (audio first, so a visible JSON always has
    its audio). Re-running it is harmless; it overwrites presets of the same name."""
    synced = []
    for local in read_folder(folder):
        try:
            wav, duration_s = canonical_reference(local.wav_path.read_bytes(), sample_rate_hz)
        except PresetError as exc:
            raise PresetError(f"{local.wav_path.name}: {exc}") from None
        preset = await store_voice(store, local.name, wav, local.transcript, local.system_prompt, duration_s,
                                   "preset")
        log.info("voices.synced", voice=local.name, duration_s=preset.duration_s)
        synced.append(preset)
    return synced


class VoiceBook:
    """Resolves request voice names against the presets in the store (cached, both ways)."""

    def __init__(self, store: Store, cache_s: float = 30.0):
        self.store = store
        self.cache_s = cache_s
        self._cache: dict[str, tuple[float, VoicePreset | None]] = {}

    async def lookup(self, name: str) -> VoicePreset | None:
        """The synced preset called `name`, or None when there is none."""
        now = time.monotonic()
        hit = self._cache.get(name)
        if hit is not None and now - hit[0] < self.cache_s:
            return hit[1]
        preset = await read_voice(self.store, name)
        self._cache[name] = (now, preset)
        return preset

    async def resolve(self, request: SynthRequest) -> SynthRequest:
        """`request` with a synced preset voice turned into a reference; otherwise unchanged."""
        if not request.voice:
            return request
        preset = await self.lookup(request.voice)
        if preset is None:
            return request
        system_prompt = request.system_prompt if request.system_prompt is not None else preset.system_prompt
        return request.model_copy(update={
            "voice": None, "reference": preset.reference(), "system_prompt": system_prompt,
        })


async def sync_folder(settings, folder: str) -> int:
    """`tts-pipeline voices sync`: upload `folder`, print one line per preset; exit status."""
    store = await open_store(settings)
    try:
        synced = await sync_presets(store, Path(folder), settings.sample_rate_hz)
    finally:
        store.close()
    for preset in synced:
        scene = "  (scene prompt)" if preset.system_prompt else ""
        print(f"  {preset.name:<20} {preset.duration_s:5.1f} s  s3://{settings.s3_bucket}/{preset.audio_key}{scene}")
    print(f"voices: {len(synced)} preset{'s' if len(synced) != 1 else ''} synced from {folder}")
    return 0

