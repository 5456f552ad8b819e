"""Sim engine: a stand-in for the Higgs Audio v2 vLLM server (`bosonai/higgs-audio-vllm`).

It speaks the real server's HTTP protocol (see shared/reference/higgs-vllm-api.md):
same paths, request fields, status codes, error bodies and audio quirks, so the
pipeline's engine client can be tested and benchmarked without a GPU. It is not
a mock of our code; nothing here knows about the pipeline.

What callers can rely on:

- Audio is a deterministic function of (text, seed, voice); see `simaudio`.
  Speech requests carry no seed (like the real API), so they use seed 0.
- Capacity: at most `slots` requests hold a slot at once, the rest wait FIFO.
  A slot is held for `latency_s`, then (if `tokens_per_s` > 0) for the
  continuous-batching step simulation in `TokenEngine`.
- Injected errors (`fail_first`, `error_rate`) answer at once, without a slot.
  Faults are drawn per call from an RNG seeded by (seed_for_faults, text,
  attempt number for that text), so a run is reproducible whatever the
  arrival order.
- A client that disconnects aborts its request and frees its slot, as vLLM does.
- Prompt tokens are estimated as 1.3 per word of message text plus 25 per
  second of reference audio, the second read off the base64 length assuming
  24 kHz mono PCM_16 (1 token per 2,560 base64 characters). Speech requests add
  `SPEECH_PRESET_PROMPT_TOKENS` for the preset's system turn and reference clip.
- Stand-in limits: chat `stream: true`, speech `mp3` and chat audio formats
  other than wav/pcm16 answer 400; speech streams only once generation is done.
- Control endpoints under /sim/: GET stats, POST reset, PATCH config.
"""
