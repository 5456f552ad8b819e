"""The load of `tts-pipeline bench`: the original benchmark's texts, scene prompts and temperature,
the run's options, and one request's outcome (`Sample`)."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_URL = "http://localhost:8888"  # the original proxy's port, now the gateway's
TEMPERATURE = 0.5  # what the original benchmark sent

# Eight texts from a few words to a long sentence (~0.8 s to ~15 s of speech at 2.5 words/s).
TEXTS = (
    "Good evening.",
    "The kettle clicked off just as the phone began to ring.",
    "Please leave your umbrella by the door.",
    "Every morning the ferry crosses the bay twice, once with passengers and once with the post.",
    "She counted the steps to the lighthouse and got a different number each time.",
    "Is this seat taken?",
    "The orchestra tuned for a long minute, and then the hall went so quiet that you could hear the "
    "rain against the high windows and someone unwrapping a sweet in the back row.",
    "Thank you for calling; all of our operators are busy, so your call will be answered in turn.",
)
# Scene prompts in the Higgs chat format; None = the pipeline's default quiet-room prompt.
_SCENE = "Generate audio following instruction.\n\n<|scene_desc_start|>\n{}\n<|scene_desc_end|>"
PROMPTS = (
    None,
    _SCENE.format("The speaker sounds cheerful and bright, smiling while talking."),
    _SCENE.format("The speaker sounds sad and tired, speaking slowly and softly."),
    _SCENE.format("The speaker is a dramatic stage narrator with a deep, theatrical voice."),
)


@dataclass(frozen=True)
class BenchOptions:
    requests: int = 10
    concurrent: int = 5
    target: str = "gateway"
    url: str | None = None  # None: the gateway's default, or the first TTS_BACKEND_URLS for `backend`
    texts: tuple[str, ...] = TEXTS
    prompts: tuple[str | None, ...] = PROMPTS
    priority: str = "bulk"  # bus target only
    timeout_s: float = 120.0
    fresh: bool = True
    gpu_log: str | None = None

    def workload(self, index: int) -> tuple[str, str | None]:
        """(text, scene prompt) of request `index`: texts cycle, the prompt moves on each round."""
        return self.texts[index % len(self.texts)], self.prompts[(index // len(self.texts)) % len(self.prompts)]


@dataclass
class Sample:
    """One request's outcome. `latency_s` is the client's round trip (publish to event on the bus)."""

    index: int
    ok: bool
    latency_s: float
    audio_s: float = 0.0
    server_s: float | None = None  # X-Generation-Time, or the worker's model-call time
    cached: bool = False
    error: str | None = None
    done_s: float = 0.0  # when it finished, seconds after the run started
