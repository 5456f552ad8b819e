"""Reference audio for voice cloning: check it, store it once, refer to it by key.

The bus carries keys, never audio; the worker loads the WAV from the store. Keys are
content-addressed (`references/<sha256>.wav` of the normalised WAV), so the same voice sent a
thousand times is stored once.
"""

from __future__ import annotations

import base64
import binascii
import struct

from pipeline.audio.checks import pcm16_to_wav, repair_wav
from pipeline.contracts.errors import AudioInvalid
from pipeline.contracts.messages import Reference
from pipeline.contracts.subjects import REFERENCE_KEY
from pipeline.store import Store, sha256_hex

from http_gateway.errors import BadInput, TooLarge

FIELD = "reference_audio_base64"


def decode_reference(data_b64: str, max_bytes: int, max_s: float) -> bytes:
    """A well-formed 16-bit WAV from the request field, or `BadInput`/`TooLarge` saying why.

    Whitespace (line-wrapped `base64` output) and a `data:audio/wav;base64,` prefix are allowed.
    """
    text = data_b64.strip()
    if text.startswith("data:") and "," in text:
        text = text.split(",", 1)[1]
    text = "".join(text.split())
    # Base64 is 4/3 of the bytes: refuse an oversize reference before decoding it.
    if len(text) // 4 * 3 > max_bytes + 2:
        raise TooLarge(f"{FIELD} is about {len(text) // 4 * 3} bytes; the limit is {max_bytes} bytes")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BadInput(f"{FIELD} is not valid base64") from None
    if len(raw) > max_bytes:
        raise TooLarge(f"{FIELD} is {len(raw)} bytes; the limit is {max_bytes} bytes")
    if not raw:
        raise BadInput(f"{FIELD} is empty")
    try:
        wav = repair_wav(raw)
    except (AudioInvalid, ValueError, IndexError, struct.error) as exc:  # truncated headers
        raise BadInput(f"{FIELD} is not a decodable WAV: {exc}") from None
    frames = len(wav.pcm) // wav.fmt.block_align
    if frames == 0:
        raise BadInput(f"{FIELD} is not a decodable WAV: it holds no audio")
    duration_s = frames / wav.fmt.sample_rate_hz
    if duration_s > max_s:
        raise TooLarge(f"{FIELD} is {duration_s:.1f} s long; the limit is {max_s:g} s")
    return pcm16_to_wav(wav.pcm, wav.fmt.sample_rate_hz, wav.fmt.channels)


async def store_reference(store: Store, wav: bytes, transcript: str | None) -> Reference:
    """Upload `wav` unless it is there already; the `Reference` a `SynthRequest` carries."""
    digest = sha256_hex(wav)
    key = REFERENCE_KEY.format(digest=digest)
    if not await store.exists(key):
        await store.put(key, wav, "audio/wav")
    return Reference(audio_key=key, transcript=transcript or "", audio_sha256=digest)
