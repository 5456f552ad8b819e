"""Transcoding the stored 24 kHz 16-bit WAV for `/v1/audio/speech` (soundfile/libsndfile).

MP3 needs libsndfile >= 1.1 built with LAME/mpg123 (the soundfile wheels ship one); without it
the route answers 400 naming the formats that work.
"""

from __future__ import annotations

import io

import soundfile as sf

from http_gateway.errors import BadInput

MEDIA_TYPES = {"wav": "audio/wav", "flac": "audio/flac", "mp3": "audio/mpeg", "pcm": "audio/pcm"}
_SF_FORMATS = {"flac": ("FLAC", "PCM_16"), "mp3": ("MP3", "MPEG_LAYER_III")}


def mp3_supported() -> bool:
    return "MP3" in sf.available_formats()


def check_format(fmt: str) -> None:
    """`BadInput` naming the formats that work when `fmt` cannot be produced here."""
    if fmt not in MEDIA_TYPES:
        raise BadInput(f"response_format '{fmt}' is not supported; use one of {', '.join(MEDIA_TYPES)}")
    if fmt == "mp3" and not mp3_supported():
        raise BadInput("response_format mp3 is not available on this server (libsndfile without MP3); "
                       "use wav, flac or pcm")


def transcode(wav: bytes, fmt: str) -> bytes:
    """`wav` re-encoded as `fmt` (one of MEDIA_TYPES). `pcm` is raw little-endian int16."""
    check_format(fmt)
    if fmt == "wav":
        return wav
    samples, rate = sf.read(io.BytesIO(wav), dtype="int16")
    if fmt == "pcm":
        return samples.astype("<i2").tobytes()
    container, subtype = _SF_FORMATS[fmt]
    out = io.BytesIO()
    sf.write(out, samples, rate, format=container, subtype=subtype)
    return out.getvalue()
