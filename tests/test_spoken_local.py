"""A short book through real speech (Piper) as a job: the manifest shows each chunk's spoken form,
and what a recogniser hears in the chapter has no footnote numbers."""

from __future__ import annotations

import re

from pipeline.audio.checks import decode_wav
from pipeline.audio.wer import word_error_rate
from pipeline.text.spoken import spoken
from tests.test_local_pipeline import piper, transcriber  # noqa: F401 (fixtures)
from tests.test_spoken_pipeline import run_job

BOOK = ("The keeper lit the lamp at dusk.[12] Dr. Hale watched the ships[3] from the tower until late. "
        "His daughter counted the gulls on the rocks below.[7] By morning the storm had passed.[9]")
# What the markers would be read as, had they been sent as written.
MARKER_WORDS = {"twelve", "three", "seven", "nine"}


async def test_a_book_through_piper_is_heard_without_its_footnote_numbers(harness, piper, transcriber):
    h = await harness(backend_urls=[piper.url], max_in_flight=4, chunk_max_words=20, chunk_target_words=14)
    await h.start_worker()
    await h.start_ingest()
    await h.start_assembler()
    manifest = await run_job(h, "footnotes", [BOOK])
    chapter = manifest["chapters"][0]
    chunks = chapter["chunks"]
    assert len(chunks) >= 2
    assert [c["spoken"] for c in chunks] == [spoken(c["text"]) for c in chunks]
    assert any("[12]" in c["text"] for c in chunks) and all("[" not in c["spoken"] for c in chunks)
    assert any("Doctor Hale" in c["spoken"] for c in chunks)
    samples, rate = decode_wav(await h.store.get(chapter["key"]))
    heard = transcriber.transcribe_blocking(samples, rate)
    words = set(re.findall(r"[a-z]+", heard.lower()))
    assert not re.search(r"\d", heard) and not words & MARKER_WORDS, heard
    assert word_error_rate(spoken(BOOK), heard) <= 0.25, heard
