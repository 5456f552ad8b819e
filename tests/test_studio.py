"""The studio page in a real browser (Debian's chromium through Playwright) against the real
stack: NATS, SeaweedFS, ingest, synth workers, the assembler, the gateway and the stand-in."""

from __future__ import annotations

import asyncio
import hashlib
import json

import httpx
import numpy as np
import soundfile as sf

from pipeline.engines.sim import audio as simaudio

from tests.gateway_fixtures import gateway, wait_for_health  # noqa: F401 (fixtures)
from tests.studio_fixtures import WAIT_MS, browser, screenshot  # noqa: F401 (fixtures)
from tests.waiting import queue_empty, until

BOOK = "\n\n".join(
    f"# {title}\n\n" + " ".join(f"{title} sentence number {i} is spoken by the studio test." for i in range(n))
    for title, n in (("The Harbour", 6), ("The Lighthouse", 5), ("The Storm", 7)))
LONG_BOOK = "\n\n".join(
    f"# Part {p}\n\n" + " ".join(f"Part {p} line {i} keeps the stand-in busy for a while." for i in range(40))
    for p in range(3))


async def start_stack(sims, harness, gateway, *, workers: int = 1, api_key: str = "", max_in_flight: int = 4,  # noqa: F811
                      **sim_knobs):
    sim = sims(slots=64, **sim_knobs)
    h = await harness(backend_urls=[sim.url], max_in_flight=max_in_flight, heartbeat_s=0.5, gateway_api_key=api_key)
    started = [await h.start_worker(worker_name=f"studio-worker-{i}") for i in range(workers)]
    await h.start_ingest()
    await h.start_assembler()
    gw = gateway(h.settings)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    client = httpx.AsyncClient(base_url=gw.url, timeout=30, trust_env=False, headers=headers)
    await until(lambda: _ready(client), "the gateway is ready")
    await wait_for_health(client, "ok")
    return sim, h, started, gw, client


async def _ready(client) -> bool:
    return (await client.get("/ready")).status_code == 200


async def open_page(browser, url: str, view: str = "speak"):  # noqa: F811
    page = await browser.new_page(viewport={"width": 1000, "height": 900})
    page.set_default_timeout(WAIT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.goto(f"{url}/studio#{view}")
    return page, errors


async def upload(page, name: str, data: bytes, mime: str = "text/markdown") -> None:
    await page.set_input_files("#book-file", files=[{"name": name, "mimeType": mime, "buffer": data}])
    await page.click("#submit-button")


def rows(page):
    return page.locator("tr.chapter")


async def pause_worker(h, sim, client, job_id: str, other_calls: int = 0) -> int:
    """Stop the harness's worker, wait until it has drained and the assembler has recorded every
    chunk it spoke (one stand-in call each, past `other_calls`): the job then stays where it is.
    Returns the job's chunks done."""
    worker, task = h._workers[0][:2]
    worker.stop()
    await asyncio.wait_for(task, 60)
    calls = sim_calls(sim) - other_calls

    async def recorded() -> int | None:
        done = (await client.get(f"/jobs/{job_id}")).json()["chunks_done"]
        return done if done == calls else None

    return await until(recorded, "the assembler has recorded the paused worker's chunks")


def speed_up(sim) -> None:
    httpx.patch(f"{sim.url}/sim/config", json={"latency_s": 0.0}, timeout=10, trust_env=False).raise_for_status()


def sim_calls(sim) -> int:
    return httpx.get(f"{sim.url}/sim/stats", timeout=10).json()["calls"]


async def test_speak_plays_a_sentence(sims, harness, gateway, browser, screenshot):  # noqa: F811
    sim, h, _, gw, client = await start_stack(sims, harness, gateway)
    page, errors = await open_page(browser, gw.url)
    await page.wait_for_function("document.querySelectorAll('#speak-voice option').length > 1")
    await page.fill("#speak-text", "The studio speaks this sentence.")
    await page.click("#speak-button")
    await page.wait_for_function("() => { const a = document.querySelector('#speak-audio');"
                                 " return a.src && a.duration > 0 && isFinite(a.duration); }")
    await page.evaluate("document.querySelector('#speak-audio').play()")  # it plays (a rejected promise throws)
    assert await page.get_attribute("#speak-audio", "aria-label") == "Spoken text"
    assert await page.is_visible("#speak-download")
    await screenshot(page, "speak")
    assert not errors
    await client.aclose()


async def test_speak_plays_a_long_answer_as_it_arrives(sims, harness, gateway, browser):  # noqa: F811
    """A text of several chunks, spoken one at a time: the page plays the streamed WAV's first piece
    before the rest has arrived, then keeps the whole answer as a WAV in the audio element."""
    sim, h, _, gw, client = await start_stack(sims, harness, gateway, max_in_flight=1, latency_s=0.3)
    page, errors = await open_page(browser, gw.url)
    await page.wait_for_function("document.querySelectorAll('#speak-voice option').length > 1")
    text = " ".join(f"Sentence number {i} of the streamed answer is read by the studio." for i in range(6))
    await page.fill("#speak-text", text)
    assert await page.is_checked("#speak-stream")
    await page.click("#speak-button")
    await page.wait_for_function("document.querySelector('#speak-status').dataset.totalBytes !== undefined")
    status = await page.evaluate("({...document.querySelector('#speak-status').dataset})")
    assert int(status["pieces"]) > 1, status
    assert int(status["firstPieceAtBytes"]) < int(status["totalBytes"]), status
    await page.wait_for_function("() => { const a = document.querySelector('#speak-audio');"
                                 " return a.src && a.duration > 0 && isFinite(a.duration); }")
    duration = await page.evaluate("document.querySelector('#speak-audio').duration")
    assert abs(duration - (int(status["totalBytes"]) - 44) / 2 / 24000) < 0.05, (duration, status)
    assert not errors
    await client.aclose()


async def test_book_rows_go_live_to_done_survive_a_reload_and_play(sims, harness, gateway, browser,  # noqa: F811
                                                                   screenshot):
    # One call at a time, a second each: the page sees the first chunk long before the last.
    sim, h, _, gw, client = await start_stack(sims, harness, gateway, max_in_flight=1, latency_s=1.0)
    page, errors = await open_page(browser, gw.url, "books")
    await page.set_input_files("#book-file", files=[{"name": "harbour.md", "mimeType": "text/markdown",
                                                     "buffer": BOOK.encode()}])
    await page.click("#preview-button")
    await page.wait_for_function("document.querySelector('#preview-audio').duration > 0")
    preview_calls = sim_calls(sim)
    await page.fill("#book-title", "Harbour Tales")
    await page.click("#submit-button")
    await page.wait_for_function("document.querySelectorAll('tr.chapter').length === 3")
    job_id = await page.get_attribute("article.job", "data-job")
    # Mid-job (the worker paused after a chunk): a reload shows the same job, the same three rows,
    # the same progress; then the job goes on from there.
    await page.wait_for_function("[...document.querySelectorAll('tr.chapter .chunks')]"
                                 ".some(td => /^ [1-9]/.test(td.textContent))")
    done = await pause_worker(h, sim, client, job_id, preview_calls)
    assert 0 < done < 7
    await page.wait_for_function(f"document.querySelector('article.job .muted').textContent.includes(' {done}/7 chunks')")
    await screenshot(page, "books-running")
    await page.reload()
    await page.wait_for_function("document.querySelectorAll('tr.chapter').length === 3")
    assert await page.locator("article.job").count() == 1
    assert f" {done}/7 chunks" in await page.text_content("article.job .muted")
    speed_up(sim)
    await h.start_worker(worker_name="studio-worker-again", max_in_flight=8)
    await page.wait_for_function("[...document.querySelectorAll('tr.chapter')].every(r => r.dataset.status === 'done')")
    assert await rows(page).count() == 3 and await page.locator("article.job").count() == 1
    assert await page.text_content(".job-status") == "done"
    assert "Harbour Tales" in await page.text_content("article.job h4")
    durations = await page.eval_on_selector_all("tr.chapter audio", "els => els.map(a => a.duration)")
    assert len(durations) == 3
    await page.wait_for_function("[...document.querySelectorAll('tr.chapter audio')].every(a => a.duration > 0)")
    await page.evaluate("document.querySelector('tr.chapter audio').play()")
    labels = await page.eval_on_selector_all("tr.chapter audio", "els => els.map(a => a.getAttribute('aria-label'))")
    assert labels[1] == "Chapter 2: The Lighthouse"
    async with page.expect_download() as info:
        await page.locator("tr.chapter a.download").nth(2).click()
    download = await info.value
    saved = await download.path()
    chapter = (await client.get(f"/jobs/{job_id}/chapters/2")).content
    assert open(saved, "rb").read() == chapter and chapter[:4] == b"RIFF"
    async with page.expect_download() as info:
        await page.click("a.manifest")
    assert b'"chapters"' in open(await (await info.value).path(), "rb").read()
    await screenshot(page, "books")
    await page.set_viewport_size({"width": 390, "height": 844})  # a phone
    assert await page.evaluate("document.documentElement.scrollWidth") <= 390
    await screenshot(page, "books-phone")
    assert not errors
    await client.aclose()


async def test_cancel_stops_model_calls_and_retry_finishes(sims, harness, gateway, browser):  # noqa: F811
    sim, h, _, gw, client = await start_stack(sims, harness, gateway, max_in_flight=1, latency_s=0.3)
    page, errors = await open_page(browser, gw.url, "books")
    await upload(page, "long.md", LONG_BOOK.encode())
    await page.wait_for_function("[...document.querySelectorAll('tr.chapter .chunks')]"
                                 ".some(td => /^ [1-9]/.test(td.textContent))")
    job_id = await page.get_attribute("article.job", "data-job")
    await pause_worker(h, sim, client, job_id)  # the rest of the job waits on the queue
    calls = sim_calls(sim)
    speed_up(sim)
    await page.click("button.cancel")
    await page.wait_for_function("document.querySelector('.job-status').textContent === 'cancelled'")
    # A worker now takes every queued chunk of the job off the queue without a model call.
    worker = await h.start_worker(worker_name="studio-worker-after-cancel", max_in_flight=8)
    await until(lambda: queue_empty(h), "the synth queue is drained")
    status = (await client.get(f"/jobs/{job_id}")).json()
    assert status["status"] == "cancelled" and status["cancelled_at"]
    assert sim_calls(sim) == calls
    assert worker.stats.cancelled > 0 and worker.stats.synthesized == 0
    assert status["chunks_done"] < status["chunks_total"]
    listed = (await client.get("/jobs")).json()
    assert [(j["job_id"], j["status"]) for j in listed["jobs"]] == [(job_id, "cancelled")]
    # Retry resumes it: every chunk not done is spoken, and the job finishes.
    await page.click("button.retry")
    await page.wait_for_function("document.querySelector('.job-status').textContent === 'done'")
    assert (await client.get(f"/jobs/{job_id}")).json()["status"] == "done"
    assert worker.stats.synthesized == status["chunks_total"] - status["chunks_done"]
    assert not errors
    await client.aclose()


async def test_bad_uploads_show_a_message_and_make_no_job(sims, harness, gateway, browser):  # noqa: F811
    sim, h, _, gw, client = await start_stack(sims, harness, gateway)
    page, errors = await open_page(browser, gw.url, "books")
    cases = [("broken.epub", b"PK\x03\x04 this is not a zip archive", "application/epub+zip", "broken.epub"),
             ("empty.md", b"", "text/markdown", "empty"),
             ("zeros.txt", bytes(20 * 1024 * 1024), "text/plain", "larger than the limit")]  # over the 16 MiB default
    for name, data, mime, words in cases:
        await page.evaluate("document.querySelector('#alert').hidden = true")
        await upload(page, name, data, mime)
        await page.wait_for_selector("#alert:not([hidden])")
        message = await page.text_content("#alert")
        assert words in message, (name, message)
    assert (await client.get("/jobs")).json()["total"] == 0
    assert await page.locator("article.job").count() == 0
    # An unknown voice is named on the page too, and still no job.
    await page.evaluate("const o = new Option('no-such-voice', 'no-such-voice');"
                        "document.querySelector('#book-voice').append(o); o.selected = true;")
    await upload(page, "fine.md", BOOK.encode())
    await page.wait_for_function("document.querySelector('#alert').textContent.includes('no-such-voice')")
    assert (await client.get("/jobs")).json()["total"] == 0
    assert not errors
    await client.aclose()


async def test_system_view_shows_a_worker_going_away(sims, harness, gateway, browser, screenshot):  # noqa: F811
    sim, h, workers, gw, client = await start_stack(sims, harness, gateway, workers=2)
    page, errors = await open_page(browser, gw.url, "system")
    await page.wait_for_function("document.querySelector('#sys-summary').textContent.startsWith('2 workers alive')")
    assert await page.locator("tr.worker").count() == 2
    assert "healthy" in await page.text_content("tr.worker")
    await client.post("/generate", json={"text": "Something for the chart."})
    await page.wait_for_function("Number(document.querySelector('#sys-chart').dataset.total) > 0")
    await screenshot(page, "system")
    workers[1].stop()
    await page.wait_for_function("document.querySelector('#sys-summary').textContent.startsWith('1 worker alive')",
                                 timeout=WAIT_MS)
    assert await page.locator("tr.worker").count() == 1
    assert not errors
    await client.aclose()


async def test_with_an_api_key_the_page_asks_for_it_and_shows_no_data(sims, harness, gateway, browser):  # noqa: F811
    sim, h, _, gw, client = await start_stack(sims, harness, gateway, api_key="s3cret-key")
    await client.post("/jobs", json={"job_id": "secret-book", "chapters": [{"title": "Hidden", "text": "Private."}]})
    page, errors = await open_page(browser, gw.url, "books")
    await page.wait_for_selector("#key-form:not([hidden])")
    assert "API key" in await page.text_content("#alert")
    assert await page.locator("article.job").count() == 0
    assert await page.locator("#book-voice option").count() <= 1
    await page.fill("#key-input", "s3cret-key")
    await page.click("#key-form button")
    await page.wait_for_selector("article.job[data-job='secret-book']")
    await page.wait_for_function("document.querySelectorAll('#book-voice option').length > 1")
    assert await page.is_hidden("#key-form")
    assert not errors
    await client.aclose()


CAST_BOOK = ("# The Visit\n\nThe door opened slowly.\n\n"
             "[voice:host] Come in, come in. The kettle is on.\n\n"
             "They sat by the fire until it was late.")


async def test_a_clip_added_on_the_page_voices_a_character_of_an_uploaded_book(  # noqa: F811
        sims, harness, gateway, browser, tmp_path):
    """Speak view: add a voice from a clip (the voice library); Books view: a tagged book with a
    cast naming it. The stand-in's record shows the character's chunk cloned from that clip and the
    narration in the narrator's built-in voice."""
    sim, h, _, gw, client = await start_stack(sims, harness, gateway)
    page, errors = await open_page(browser, gw.url)
    clip = tmp_path / "host.wav"
    text = "this is how the host sounds when he welcomes a guest into the house on a cold night"
    sf.write(clip, np.array(simaudio.synthesize(text, seed=3)), 24000, subtype="PCM_16")
    await page.click("summary:has-text('Add a voice from a clip')")
    await page.fill("#clip-name", "host_clip")
    await page.fill("#clip-transcript", text)
    await page.set_input_files("#clip-file", str(clip))
    await page.click("#clip-form button[type=submit]")
    await page.wait_for_function("[...document.querySelectorAll('#book-voice optgroup[label=Library] option')]"
                                 ".some(o => o.value === 'host_clip')")
    stored = json.loads(await h.store.get("voices/host_clip.json"))
    assert stored["source"] == "library"

    await page.click("#nav-books")
    await page.set_input_files("#book-file", files=[{"name": "visit.md", "mimeType": "text/markdown",
                                                     "buffer": CAST_BOOK.encode()}])
    await page.click("summary:has-text('Cast')")
    await page.fill("#book-cast", "host=host_clip")
    await page.fill("#book-narrator", "en_woman")
    await page.click("#submit-button")
    await page.wait_for_function("document.querySelector('article.job .job-status.status-done') !== null")
    job_id = await page.get_attribute("article.job", "data-job")
    manifest = json.loads(await h.store.get(f"jobs/{job_id}/manifest.json"))
    assert manifest["cast"] == {"host": "host_clip"} and manifest["narrator"] == "en_woman"
    log = httpx.get(f"{sim.url}/sim/stats", timeout=10, trust_env=False).json()["calls_log"]
    by_text = {call["text"]: call for call in log}
    for chunk in manifest["chapters"][0]["chunks"]:
        call = by_text[hashlib.sha1(chunk["spoken"].encode()).hexdigest()[:12]]
        if chunk["speaker"] == "host":
            assert call["endpoint"] == "chat" and call["reference_sha256"] == stored["audio_sha256"], call
        else:
            assert call["endpoint"] == "speech" and call["voice"] == "en_woman", call
    assert {c["speaker"] for c in manifest["chapters"][0]["chunks"]} == {None, "host"}
    assert not errors
    await client.aclose()
