"""Long text in the gateway: split into chunks, spoken in parallel on the bus, joined or streamed.

A text that fits in one chunk goes on the bus exactly as written (one `SynthRequest`, as always).
A longer one is cut with the jobs' splitter (`pipeline.text.split`), on sentence boundaries, the
first chunk kept short (`FIRST_MAX_WORDS`: a few seconds of speech, so the first audio comes fast).
Every chunk carries the request's voice or reference, scene prompt and sampling, and one seed:
the caller's, or one derived from the request's content, so the voice stays the same across
chunks and the same paragraph asked twice is the same set of cached chunks.

The pieces are joined with the chapter assembler's rules (`pipeline.assemble.shape_chunk`:
loudness matched to `target_lufs`, edges faded over `crossfade_s`, `pause_s` of silence between
two chunks), either into one WAV or as a stream of PCM/WAV/MP3 bytes in order.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import struct

import numpy as np
import soundfile as sf

from pipeline.assemble import measure_lufs, shape_chunk
from pipeline.audio.wavio import decode_wav
from pipeline.contracts.messages import SynthRequest
from pipeline.contracts.settings import Settings
from pipeline.text.cast import Cast, speaker_seed
from pipeline.text.speakers import has_markup, split_speakers
from pipeline.text.split import normalise, split_text

FIRST_MAX_WORDS = 12  # the first chunk: about 5 s of speech
FIRST_TARGET_WORDS = 8
UNKNOWN_SIZE = 0xFFFFFFFF  # a streamed WAV's RIFF and data sizes: "unknown, read to the end"
STREAM_FORMATS = ("pcm", "wav", "mp3")
# libsndfile: 0 = the highest bitrate, 1 = the lowest; 0.5 at 24 kHz mono is 80 kbit/s constant.
MP3_COMPRESSION = 0.5


def plan_texts(text: str, settings: Settings) -> list[str]:
    """The chunk texts of `text` in order: `[text]` itself when it fits in one chunk."""
    budget = (settings.chunk_max_words, settings.chunk_target_words, settings.chunk_max_chars)
    if len(split_text(text, *budget)) <= 1:
        return [text]
    flat = normalise(text)
    first = split_text(flat, min(FIRST_MAX_WORDS, budget[0]), min(FIRST_TARGET_WORDS, budget[1]), budget[2])[0]
    return [first.text] + [chunk.text for chunk in split_text(flat[first.end:], *budget)]


def plan_turns(text: str, settings: Settings) -> list[tuple[str | None, str]] | None:
    """(speaker, text) of each chunk of a text with speaker tags, in order (no chunk mixes two
    speakers, the first is kept short as in `plan_texts`); None for a text without tags."""
    if not has_markup(text):
        return None
    budget = (settings.chunk_max_words, settings.chunk_target_words, settings.chunk_max_chars)
    chunks = split_speakers(text, False, *budget)
    turns = [(c.speaker, c.text) for c in chunks]
    if len(chunks) > 1 and chunks[0].words > min(FIRST_MAX_WORDS, budget[0]):
        head = chunks[0]
        first = split_text(head.text, min(FIRST_MAX_WORDS, budget[0]), min(FIRST_TARGET_WORDS, budget[1]), budget[2])[0]
        rest = [(head.speaker, c.text) for c in split_text(head.text[first.end:], *budget)]
        turns = [(head.speaker, first.text), *rest, *turns[1:]]
    return turns


def derived_seed(request: SynthRequest) -> int:
    """A seed from what determines the voice of `request` and its whole text (not the chunk):
    every chunk of one request gets the same, and the same request gets it again."""
    identity = request.model_dump(mode="json", include={"text", "voice", "reference", "system_prompt", "model",
                                                        "sampling"})
    raw = json.dumps(identity, sort_keys=True, separators=(",", ":")).encode()
    return int.from_bytes(hashlib.sha256(raw).digest()[:4], "big") & 0x7FFFFFFF


def chunk_requests(whole: SynthRequest, texts: list[str], request_key: str,
                   speakers: list[str | None] | None = None, cast: Cast | None = None) -> list[SynthRequest]:
    """One request per chunk text, index-tagged, all with the seed of the whole; a text of one
    chunk is the request itself, unchanged (its cache key is what it always was).

    With `speakers` (a text with speaker tags: one per text), each chunk is spoken by its
    speaker's voice from `cast` (the narrator's, or the request's own, for None) with a seed
    derived from the whole's and the speaker (`pipeline.text.cast.speaker_seed`)."""
    if len(texts) == 1 and speakers is None:
        return [whole]
    cast = cast or Cast()
    seed = whole.sampling.seed if whole.sampling.seed is not None else derived_seed(whole)
    requests = []
    for i, text in enumerate(texts):
        speaker = speakers[i] if speakers is not None else None
        voice = cast.voice_for(speaker) if speakers is not None else None
        update = {"text": text, "chunk_id": f"{request_key}-{i}", "index": i, "speaker": speaker,
                  "sampling": whole.sampling.model_copy(update={"seed": speaker_seed(seed, speaker)})}
        if voice:
            update.update(voice=voice, reference=None)
        requests.append(whole.model_copy(update=update))
    return requests


class Joiner:
    """Turns each chunk's stored WAV into the int16 PCM of the joined audio, in order."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.rate = settings.sample_rate_hz
        self.pause = bytes(2 * int(round(settings.pause_s * self.rate)))
        self.first = True
        self.samples = 0  # joined so far, pauses included

    def pcm(self, wav: bytes, loudness_lufs: float | None) -> bytes:
        """The next piece: a pause (unless it is the first) and the chunk, loudness-matched and faded."""
        samples, rate = decode_wav(wav)
        if rate != self.rate:
            raise ValueError(f"a chunk is {rate} Hz, expected {self.rate} Hz")
        if loudness_lufs is None:  # a fresh answer's reply comes before the worker measures it
            measured = measure_lufs(samples, rate)
            # Rounded as the worker stores it: fresh and cached answers are joined alike, to the bit.
            loudness_lufs = None if measured is None else round(measured, 2)
        shaped = shape_chunk(samples, rate, self.settings, loudness_lufs)
        pcm = np.clip(np.round(shaped * 32768.0), -32768, 32767).astype("<i2").tobytes()
        lead, self.first = (b"" if self.first else self.pause), False
        self.samples += (len(lead) + len(pcm)) // 2
        return lead + pcm


def wav_header(sample_rate_hz: int, data_bytes: int | None = None) -> bytes:
    """A 44-byte PCM16 mono WAV header; `None` writes the "unknown" size of a stream."""
    data = UNKNOWN_SIZE if data_bytes is None else data_bytes
    riff = UNKNOWN_SIZE if data_bytes is None else 36 + data_bytes
    return (b"RIFF" + struct.pack("<I", riff) + b"WAVEfmt " + struct.pack("<IHHIIHH", 16, 1, 1, sample_rate_hz,
                                                                           sample_rate_hz * 2, 2, 16)
            + b"data" + struct.pack("<I", data))


_MP3_KBPS = {  # Layer III bitrates by MPEG version bits: 3 = MPEG-1, 2 = MPEG-2, 0 = MPEG-2.5
    3: (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    2: (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
_MP3_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}


def mp3_frame_length(header: bytes) -> int | None:
    """Bytes of the Layer III frame whose 4-byte header is `header`; None if it is not one."""
    if len(header) < 4 or header[0] != 0xFF or header[1] & 0xE0 != 0xE0 or (header[1] >> 1) & 3 != 1:
        return None
    version, bitrate_index, rate_index = (header[1] >> 3) & 3, header[2] >> 4, (header[2] >> 2) & 3
    if version == 1 or bitrate_index in (0, 15) or rate_index == 3:
        return None
    kbps = _MP3_KBPS[3 if version == 3 else 2][bitrate_index]
    rate = _MP3_RATES[version][rate_index]
    return (144 if version == 3 else 72) * kbps * 1000 // rate + ((header[2] >> 1) & 1)


def mp3_frames(pcm: bytes, sample_rate_hz: int) -> bytes:
    """MPEG frames of one piece, to be sent after the pieces before it. The encoder opens a file
    with an info frame (Xing/Info: the file's frame count), which would make a reader stop after
    the first piece of the concatenation; it is dropped, so the pieces join into one stream."""
    out = io.BytesIO()
    sf.write(out, np.frombuffer(pcm, dtype="<i2"), sample_rate_hz, format="MP3", subtype="MPEG_LAYER_III",
             bitrate_mode="CONSTANT", compression_level=MP3_COMPRESSION)
    data = out.getvalue()
    length = mp3_frame_length(data[:4])
    if length is not None and (b"Xing" in data[4:48] or b"Info" in data[4:48]):
        data = data[length:]
    return data


def sse_event(payload: dict) -> bytes:
    """One Server-Sent Event in OpenAI's speech streaming shape (`data:` JSON with a `type`)."""
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n".encode()


def sse_delta(audio: bytes) -> bytes:
    return sse_event({"type": "speech.audio.delta", "audio": base64.b64encode(audio).decode()})
