"""Every name on the bus and every object-key template, in one place.

Nothing else in the code base spells a subject, stream, consumer, KV bucket or key layout.
A `Names` carries an optional namespace so that several pipelines (and every test) can share one
NATS server and one bucket without seeing each other's work; production uses the empty namespace
and gets exactly the names of DESIGN.md (`TTS_SYNTH`, `tts.synth.bulk`, ...).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

PRIORITY_INTERACTIVE = "interactive"
PRIORITY_BULK = "bulk"
PRIORITIES = (PRIORITY_INTERACTIVE, PRIORITY_BULK)

# A job id becomes one subject token and part of object keys.
TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
INVALID_JOB = "_invalid"


def check_token(value: str, what: str = "id") -> str:
    if not TOKEN_RE.match(value):
        raise ValueError(f"{what} must be 1-64 characters of letters, digits, '-' or '_'")
    return value


@dataclass(frozen=True)
class Names:
    namespace: str = ""

    # --- roots ---
    @property
    def root(self) -> str:
        return f"tts_{self.namespace}" if self.namespace else "tts"

    def _stream(self, base: str) -> str:
        return f"{base}_{self.namespace.upper()}" if self.namespace else base

    # --- streams ---
    @property
    def chapters_stream(self) -> str:
        return self._stream("TTS_CHAPTERS")

    @property
    def synth_stream(self) -> str:
        return self._stream("TTS_SYNTH")

    @property
    def events_stream(self) -> str:
        return self._stream("TTS_EVENTS")

    @property
    def dlq_stream(self) -> str:
        return self._stream("TTS_DLQ")

    # --- subjects ---
    @property
    def chapters_all(self) -> str:
        return f"{self.root}.chapters.>"

    @property
    def chapters_submit(self) -> str:
        return f"{self.root}.chapters.submit"

    @property
    def synth_all(self) -> str:
        return f"{self.root}.synth.>"

    def synth(self, priority: str) -> str:
        if priority not in PRIORITIES:
            raise ValueError(f"unknown priority {priority!r}")
        return f"{self.root}.synth.{priority}"

    @property
    def events_all(self) -> str:
        return f"{self.root}.events.>"

    def chunk_done(self, job_id: str) -> str:
        return f"{self.root}.events.chunk.done.{job_id}"

    def chunk_failed(self, job_id: str) -> str:
        return f"{self.root}.events.chunk.failed.{job_id}"

    def chunk_events(self, job_id: str = "*") -> str:
        """Both outcomes of one job's chunks (or of every job with the default wildcard)."""
        return f"{self.root}.events.chunk.*.{job_id}"

    def chapter_done(self, job_id: str) -> str:
        return f"{self.root}.events.chapter.done.{job_id}"

    def chapter_failed(self, job_id: str) -> str:
        return f"{self.root}.events.chapter.failed.{job_id}"

    def job_progress(self, job_id: str) -> str:
        return f"{self.root}.events.job.progress.{job_id}"

    def job_done(self, job_id: str) -> str:
        return f"{self.root}.events.job.done.{job_id}"

    def job_events(self, job_id: str) -> str:
        """Every event of one job: chunk, chapter and job outcomes and progress."""
        return f"{self.root}.events.*.*.{job_id}"

    @property
    def chunk_events_all(self) -> str:
        """Chunk outcomes of every job (the assembler's filter)."""
        return f"{self.root}.events.chunk.*.*"

    def audio_reply(self, instance: str) -> str:
        """Core-NATS subject (in no stream) where one gateway process receives `AudioReply`s."""
        return f"{self.reply_prefix}{check_token(instance, 'instance')}"

    def request_cancel(self, request_id: str) -> str:
        """Core-NATS subject (in no stream) that the gateway instance running long request
        `request_id` listens on while it runs: `DELETE /requests/{id}` on any instance reaches it,
        and with nobody listening the server answers "no responders" at once. A request id is the
        client's `X-Request-Id` (any text), so the token is a digest of it."""
        return f"{self.root}.gateway.cancel.{hashlib.sha1(request_id.encode()).hexdigest()[:20]}"

    @property
    def reply_prefix(self) -> str:
        return f"{self.root}.reply.audio."

    @property
    def dlq_all(self) -> str:
        return f"{self.root}.dlq.>"

    def dlq(self, source_subject: str) -> str:
        """Dead letters keep the name of the subject they came from, after the root."""
        tail = source_subject.removeprefix(f"{self.root}.")
        return f"{self.root}.dlq.{tail}"

    # --- consumers (durable, pull) ---
    ingest_consumer = "ingest"
    assemble_consumer = "assemble"

    def synth_consumer(self, priority: str) -> str:
        self.synth(priority)
        return f"synth-{priority}"

    # --- key-value buckets ---
    @property
    def jobs_kv(self) -> str:
        return f"tts_jobs_{self.namespace}" if self.namespace else "tts_jobs"

    @property
    def workers_kv(self) -> str:
        return f"tts_workers_{self.namespace}" if self.namespace else "tts_workers"


# --- object keys (relative to the store's prefix) ---
AUDIO_KEY = "audio/{digest}.wav"
VOICE_AUDIO_KEY = "voices/{name}.wav"
VOICE_META_KEY = "voices/{name}.json"
REFERENCE_KEY = "references/{digest}.wav"
CHAPTER_KEY = "jobs/{job_id}/{index:03d}-{slug}.{fmt}"
MANIFEST_KEY = "jobs/{job_id}/manifest.json"
PLAN_KEY = "jobs/{job_id}/plan/{chapter:04d}.json"
TIMING_KEY = "jobs/{job_id}/plan/{chapter:04d}.timing.json"
SUBTITLES_KEY = "jobs/{job_id}/{index:03d}-{slug}.vtt"

# --- message ids for JetStream de-duplication ---


def synth_msg_id(job_id: str, chunk_id: str) -> str:
    return f"synth:{job_id}:{chunk_id}"


def chapter_msg_id(job_id: str, chapter: int) -> str:
    """The de-duplication id of a `ChapterSubmit` (CLI, gateway and `nats pub` examples alike)."""
    return f"chapter:{job_id}:{chapter}"


def event_msg_id(kind: str, job_id: str, chunk_id: str) -> str:
    return f"{kind}:{job_id}:{chunk_id}"
