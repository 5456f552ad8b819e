"""One simulated generation: fault draws (errors, hangs, short headers, empty, runaway and
truncated audio), a slot held while 'generating', the audio."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.engines.serving import RequestError, token_limit
from pipeline.engines.sim import audio as simaudio
from pipeline.engines.sim.state import _SimState, text_key


# --- requests ----------------------------------------------------------------


@dataclass
class _Audio:
    samples: Any  # int16 ndarray, or None when the empty-audio fault hit
    tokens: int
    finish_reason: str
    short_header: bool


def _token_limit(state: _SimState, prompt_tokens: int, max_tokens: int | None) -> int:
    return token_limit(state.config.max_model_len, prompt_tokens, max_tokens)


async def _generate(
    state: _SimState, *, text: str, seed: int, voice: str, temperature: float, token_limit: int,
    on_piece: Callable[[np.ndarray], Awaitable[None]] | None = None,
) -> _Audio:
    """Count the call, inject faults, hold a slot while 'generating', return the audio.

    `on_piece` (a stream) is given the audio in the real server's chunks (0.68 s, then 1 s
    each), each as soon as its tokens are generated; the samples and timing are the same."""
    config = state.config
    key = text_key(text)
    attempt = state.counters.calls_by_text.get(key, 0)
    state.counters.calls_by_text[key] = attempt + 1
    rng = random.Random(f"{config.seed_for_faults}:{key}:{attempt}")
    # Always draw every fault, in a fixed order, so knobs don't shift each other's draws.
    error, hang, short_header, empty, runaway, overrun = (rng.random() < rate for rate in (
        config.error_rate, config.hang_rate, config.short_header_rate,
        config.empty_audio_rate, config.runaway_rate, config.truncate_rate,
    ))
    if attempt < config.fail_first or error:
        raise RequestError(config.error_status, "Injected failure (sim engine)")

    await state.slots.acquire()
    try:
        if config.latency_s > 0:
            await asyncio.sleep(config.latency_s)
        if hang:
            await asyncio.sleep(config.hang_s)
        samples = simaudio.synthesize(
            text, seed=seed, voice=voice, words_per_s=config.words_per_s, temperature=temperature
        )
        if overrun:
            # The model never emits <|audio_eos|> and keeps speaking (here: the text again and
            # again) until max_tokens cuts it: speech up to the cap, no silence to give it away.
            samples = np.tile(samples, token_limit * simaudio.SAMPLES_PER_TOKEN // len(samples) + 1)
        tokens, finish_reason = simaudio.tokens_for_samples(len(samples)), "stop"
        if runaway or tokens > token_limit:
            # Runaway: the model never emits <|audio_eos|> and pads until max_tokens.
            n_samples = token_limit * simaudio.SAMPLES_PER_TOKEN
            samples = samples[:n_samples]
            if runaway:
                samples = np.pad(samples, (0, n_samples - len(samples)))
            tokens, finish_reason = token_limit, "length"
        if empty:
            samples, tokens = None, 1
        if on_piece is None or samples is None:
            await state.engine.generate(tokens)
        else:
            for piece in simaudio.speech_chunks(samples):
                await state.engine.generate(simaudio.tokens_for_samples(len(piece)))
                await on_piece(piece)
    finally:
        state.slots.release()

    counters = state.counters
    counters.audio_tokens_total += tokens
    if samples is not None:
        counters.audio_s_total += len(samples) / simaudio.SAMPLE_RATE_HZ
    return _Audio(samples, tokens, finish_reason, short_header)
