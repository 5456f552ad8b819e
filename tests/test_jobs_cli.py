"""Books through the command line and the embedded stack; crashes in the middle of a job."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
from pathlib import Path

import soundfile as sf

from pipeline import bus
from pipeline.jobs import state as jobs
from tests.conftest import sim_stats
from tests.test_cli import CLI, cli_here, env_for, run_cli
from tests.test_jobs import chapter_text

MARKDOWN = "\n\n".join(f"# Chapter {n}\n\n{chapter_text(i, 5)}" for i, n in enumerate(("One", "Two", "Three")))


def write_epub(path: Path) -> list[str]:
    from ebooklib import epub

    book = epub.EpubBook()
    book.set_identifier("test-book")
    book.set_title("A Test Book")
    book.set_language("en")
    titles = ["The Harbour", "The Storm", "The Morning"]
    items = []
    for i, title in enumerate(titles):
        item = epub.EpubHtml(title=title, file_name=f"ch{i}.xhtml", lang="en")
        item.content = f"<html><body><h1>{title}</h1><p>{chapter_text(i, 4)}</p></body></html>"
        book.add_item(item)
        items.append(item)
    book.toc = items
    book.add_item(epub.EpubNcx())
    book.add_item(epub.EpubNav())
    book.spine = ["nav", *items]
    epub.write_epub(str(path), book)
    return titles


async def run_async(args, env, timeout_s=120):
    return await asyncio.to_thread(run_cli, args, env, timeout_s)


async def test_markdown_and_epub_books_through_submit_status_fetch(sims, harness, tmp_path, capsys, monkeypatch):
    sim = sims(slots=64)
    h = await harness(backend_urls=[sim.url], max_in_flight=16)
    await h.start_worker()
    await h.start_ingest()
    await h.start_assembler()
    env = env_for(h.settings)
    book_md = tmp_path / "book.md"
    book_md.write_text(MARKDOWN)
    book_epub = tmp_path / "book.epub"
    titles = write_epub(book_epub)

    async def as_subprocess(*argv: str) -> tuple[int, str, str]:
        result = await run_async(list(argv), env)
        return result.returncode, result.stdout, result.stderr

    async def in_process(*argv: str) -> tuple[int, str, str]:
        return await asyncio.to_thread(cli_here, capsys, monkeypatch, h.settings, *argv)

    # The Markdown book through the installed command; the EPUB through the same `main()` in this
    # process (a subprocess costs seconds of imports each).
    for run, path, job_id, fmt, expected in [
        (as_subprocess, book_md, "md-book", "flac", ["chapter-one", "chapter-two", "chapter-three"]),
        (in_process, book_epub, "epub-book", "mp3", [t.lower().replace(" ", "-") for t in titles]),
    ]:
        code, out_text, err = await run("submit", str(path), "--job-id", job_id, "--format", fmt)
        assert code == 0, err[-2000:]
        assert f"job {job_id} done" in out_text
        code, out_text, err = await run("status", job_id)
        assert code == 0 and "done" in out_text
        out = tmp_path / job_id
        code, out_text, err = await run("fetch", job_id, "--out", str(out))
        assert code == 0, err
        audio = sorted(p.name for p in out.iterdir() if p.suffix == f".{fmt}")
        assert audio == [f"{i:03d}-{slug}.{fmt}" for i, slug in enumerate(expected)]
        manifest = json.loads((out / "manifest.json").read_text())
        for entry, name in zip(manifest["chapters"], audio):
            info = sf.info(str(out / name))
            assert info.samplerate == 24000
            assert abs(info.duration - entry["duration_s"]) < 0.1  # mp3 frames pad a little
            assert (out / name.replace(f".{fmt}", ".vtt")).read_text().startswith("WEBVTT")


async def test_bad_book_inputs_fail_with_one_line(harness, tmp_path, capsys, monkeypatch):
    h = await harness()
    garbage = tmp_path / "garbage.txt"
    garbage.write_bytes(bytes(range(256)) * 50)
    broken = tmp_path / "broken.epub"
    broken.write_bytes(b"PK\x03\x04 not really a zip")
    empty = tmp_path / "empty.md"
    empty.write_text("#  \n\n   \n")
    for path in (garbage, broken, empty, tmp_path / "missing.txt", tmp_path / "book.pdf"):
        if path.suffix == ".pdf":
            path.write_bytes(b"%PDF-1.4")
        # In this process (a subprocess per case costs seconds of imports; test_cli runs the real one).
        code, out, err = await asyncio.to_thread(cli_here, capsys, monkeypatch, h.settings, "submit", str(path),
                                                 "--no-wait")
        lines = [line for line in err.splitlines() if line.strip()]
        assert code != 0 and len(lines) == 1 and "Traceback" not in err, (path, err)


async def test_killing_worker_and_assembler_mid_job_loses_nothing(sims, harness):
    sim = sims(latency_s=0.3, slots=256)
    h = await harness(backend_urls=[sim.url], max_in_flight=8, ack_wait_s=3)
    env = env_for(h.settings, TTS_MAX_IN_FLIGHT="8", TTS_ACK_WAIT_S="3")
    await h.start_ingest()

    def start(kind: str) -> subprocess.Popen:
        return subprocess.Popen(CLI + ["worker", kind], env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    texts = [chapter_text(i, 15) + f" This is chapter {i}." for i in range(4)]
    from tests.test_jobs import JobEvents, submit_chapters

    synth, assemble = start("synth"), start("assemble")
    try:
        async with JobEvents(h, "crashy") as watch, h.waiter("crashy") as chunks:
            await submit_chapters(h, "crashy", texts)
            await chunks.wait_count(8, timeout_s=60)
            synth.send_signal(signal.SIGKILL)
            assemble.send_signal(signal.SIGKILL)
            synth.wait(10)
            assemble.wait(10)
            killed_at = len(chunks.order)
            synth, assemble = start("synth"), start("assemble")
            await asyncio.wait_for(watch.done.wait(), 120)
    finally:
        for proc in (synth, assemble):
            proc.send_signal(signal.SIGTERM)
            await asyncio.to_thread(proc.wait, 30)
    kv = await bus.jobs_kv(h.js, h.names)
    job = await jobs.read(kv, jobs.job_key("crashy"), jobs.JobState)
    assert job.complete and job.manifest_key
    manifest = json.loads(await h.store.get(job.manifest_key))
    distinct = {c["audio_key"] for e in manifest["chapters"] for c in e["chunks"]}
    stats = sim_stats(sim)
    # Only calls in flight at the kill (at most max_in_flight) may have been made twice.
    assert len(distinct) <= stats["calls"] <= len(distinct) + 8, (stats["calls"], len(distinct), killed_at)
    twice = [n for n in stats["calls_by_text"].values() if n > 1]
    assert len(twice) <= 8


async def test_jobs_lists_every_job_and_cancel_stops_one(harness, tmp_path, capsys, monkeypatch):
    h = await harness()  # no worker: the jobs stay queued
    run = lambda *argv: asyncio.to_thread(cli_here, capsys, monkeypatch, h.settings, *argv)  # noqa: E731
    assert await run("jobs") == (0, "no jobs\n", "")
    book = tmp_path / "book.md"
    book.write_text(MARKDOWN)
    for job_id in ("older-book", "newer-book"):
        code, out, err = await run("submit", str(book), "--no-wait", "--job-id", job_id)
        assert code == 0, err
    code, out, _ = await run("jobs")
    rows = [line.split() for line in out.splitlines()[1:]]
    assert code == 0 and [r[0] for r in rows] == ["newer-book", "older-book"]  # newest first
    assert all(r[1] == "running" and r[2] == "0/3" for r in rows), out

    code, out, _ = await run("cancel", "older-book")
    assert code == 0 and "older-book cancelled" in out and "retry older-book" in out
    code, out, _ = await run("jobs", "--json")
    listed = {j["job_id"]: j["status"] for j in json.loads(out)["jobs"]}
    assert listed == {"newer-book": "running", "older-book": "cancelled"}
    state = await jobs.read(await bus.jobs_kv(h.js, h.names), jobs.job_key("older-book"), jobs.JobState)
    assert state.cancelled_at is not None
    code, out, _ = await run("jobs", "--limit", "1")
    assert out.splitlines()[1].startswith("newer-book") and "1 older jobs" in out

    # Mistakes: one line, non-zero.
    for argv, needle in ((("cancel", "no-such-job"), "no job 'no-such-job'"),
                         (("jobs", "--limit", "0"), "--limit must be at least 1")):
        code, out, err = await run(*argv)
        assert code == 1 and err.count("\n") == 1 and needle in err, (argv, err)
    # retry resumes the cancelled job
    code, out, _ = await run("retry", "older-book")
    assert code == 0
    code, out, _ = await run("jobs", "--json")
    assert {j["job_id"]: j["status"] for j in json.loads(out)["jobs"]}["older-book"] == "running"
