"""Speakers and casts on real servers: the gateway, jobs and ingest with the stand-in, whose
`calls_log` records which voice (speech endpoint) or reference (chat endpoint) and seed each call used."""

from __future__ import annotations

import asyncio
import hashlib
import json
from contextlib import aclosing

import httpx
import numpy as np
import soundfile as sf

from pipeline import bus
from pipeline.client import publish_synth
from pipeline.contracts.messages import ChapterFailed, ChapterSubmit, ChunkDone, DeadLetter, SynthRequest
from pipeline.jobs.api import read_job
from pipeline.jobs.cast import heartbeat_voices
from pipeline.jobs.state import job_seed
from pipeline.synthesis.voices import sync_presets
from pipeline.text.cast import speaker_seed
from tests.conftest import sim_stats
from pipeline.audio.checks import decode_wav
from pipeline.audio.pitch import median_f0
from pipeline.audio.wer import word_error_rate
from tests.gateway_fixtures import gateway, wait_for_health  # noqa: F401 (fixture)
from tests.test_cli import cli_here
from tests.test_local_pipeline import piper, transcriber  # noqa: F401 (fixtures)
from tests.waiting import queue_empty, until

SCRIPT = ("[SPEAKER0] Did you hear the storm last night? The whole house shook.\n"
          "[SPEAKER1] I slept right through it, as always.\n"
          "[SPEAKER0] Lucky you. The old oak by the gate came down.\n"
          "[SPEAKER1] Then we have firewood for the winter.")
TURNS = [("SPEAKER0", "Did you hear the storm last night? The whole house shook."),
         ("SPEAKER1", "I slept right through it, as always."),
         ("SPEAKER0", "Lucky you. The old oak by the gate came down."),
         ("SPEAKER1", "Then we have firewood for the winter.")]


def key_of(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def calls_by_key(sim) -> dict[str, list[dict]]:
    calls: dict[str, list[dict]] = {}
    for call in sim_stats(sim)["calls_log"]:
        calls.setdefault(call["text"], []).append(call)
    return calls


async def job_manifest(client, h, body: dict, timeout_s: float = 120) -> dict:
    """`POST /jobs` with `body`, wait until the job is done (failing at once if it fails), and
    return its manifest."""
    r = await client.post("/jobs", json=body)
    assert r.status_code == 202, r.text
    job_id = body["job_id"]

    async def finished() -> dict | None:
        state = (await client.get(f"/jobs/{job_id}")).json()
        assert state["status"] != "failed", state
        return state if state["status"] == "done" else None

    await until(finished, f"job {job_id} is done", timeout_s)
    return json.loads(await h.store.get(f"jobs/{job_id}/manifest.json"))


async def start(harness, gateway, sim, jobs: bool = False, voice: str = "en_man"):
    h = await harness(backend_urls=[sim.url], heartbeat_s=0.2)
    await h.start_worker(max_in_flight=16)
    if jobs:
        await h.start_ingest()
        await h.start_assembler()
    gw = gateway(h.settings)
    client = httpx.AsyncClient(base_url=gw.url, timeout=60, trust_env=False)
    await wait_for_health(client, "ok")

    async def voices_known() -> bool:  # the workers' heartbeats carry the model server's presets
        return voice in (await client.get("/v1/audio/voices")).json()["voices"]

    await until(voices_known, "the gateway lists the model server's voices")
    return h, gw, client


async def test_a_two_speaker_script_speaks_each_turn_with_its_speakers_voice(sims, harness, gateway):
    sim = sims(slots=32)
    h, gw, client = await start(harness, gateway, sim)
    async with aclosing(client):
        r = await client.post("/generate", json={"text": SCRIPT, "cast": {"SPEAKER0": "en_woman", "SPEAKER1": "en_man"}})
        assert r.status_code == 200, r.text
        assert int(r.headers["X-Chunks"]) == len(TURNS)
        calls = calls_by_key(sim)
        # Every turn reached the model once, without its tag, with its speaker's voice.
        assert sorted(calls) == sorted(key_of(text) for _, text in TURNS)
        voice = {"SPEAKER0": "en_woman", "SPEAKER1": "en_man"}
        for speaker, text in TURNS:
            assert [(c["endpoint"], c["voice"]) for c in calls[key_of(text)]] == [("speech", voice[speaker])], text
        # The same through the OpenAI route, with a [voice:name] tag naming a voice directly.
        r = await client.post("/v1/audio/speech", json={
            "model": "tts-1", "voice": "alloy", "response_format": "wav",
            "input": "The narrator speaks first. [voice:belinda] And Belinda answers.", "narrator": "vex"})
        assert r.status_code == 200, r.text
        calls = calls_by_key(sim)
        assert [c["voice"] for c in calls[key_of("The narrator speaks first.")]] == ["vex"]
        assert [c["voice"] for c in calls[key_of("And Belinda answers.")]] == ["belinda"]


async def test_an_unknown_voice_or_a_speaker_without_one_is_refused_before_anything_is_queued(
        sims, harness, gateway):
    sim = sims(slots=32)
    h, gw, client = await start(harness, gateway, sim)
    async with aclosing(client):
        r = await client.post("/generate", json={"text": SCRIPT, "cast": {"SPEAKER0": "en_woman", "SPEAKER1": "ghost"}})
        assert r.status_code == 404 and "'ghost'" in r.json()["detail"], r.text
        r = await client.post("/generate", json={"text": "[voice:nobody] Hello there."})
        assert r.status_code == 404 and "'nobody'" in r.json()["detail"], r.text
        r = await client.post("/generate", json={"text": SCRIPT, "cast": {"SPEAKER0": "en_woman"}})
        assert r.status_code == 400 and "[SPEAKER1]" in r.json()["detail"], r.text
        r = await client.post("/jobs", json={"job_id": "castless", "chapters": [{"text": SCRIPT}],
                                             "cast": {"SPEAKER0": "en_woman", "SPEAKER1": "en_man"},
                                             "narrator": "ghost"})
        assert r.status_code == 404 and "'ghost'" in r.json()["detail"], r.text
        r = await client.post("/jobs", json={"job_id": "castless", "dialogue": True,
                                             "chapters": [{"text": '"Hello," she said.'}]})
        assert r.status_code == 400 and "dialogue" in r.json()["detail"], r.text
        assert (await client.get("/jobs/castless")).status_code == 404  # nothing registered
        assert sim_stats(sim)["calls"] == 0 and await queue_empty(h)


def chapter(n: int) -> str:
    return (f"Chapter {n} began on a grey morning.\n\n"
            f"[voice:alice] Where is the map, Bob? I left it here in chapter {n}.\n\n"
            f"[voice:bob] I have not seen it since chapter {n - 1 if n else 'nine'}.\n\n"
            f"[voice:carol] You two always lose everything by chapter {n + 1}.\n\n"
            "They searched the house until the light was gone.")


async def test_a_three_character_job_keeps_each_voice_and_seed_and_names_the_speakers(
        sims, harness, gateway, tmp_path):
    sim = sims(slots=32)
    h, gw, client = await start(harness, gateway, sim, jobs=True)
    # alice is a cloned voice (a synced preset: the chat endpoint with its reference and a seed);
    # bob and carol are the model server's built-ins (the speech endpoint, by name).
    t = np.arange(int(2.0 * 24000)) / 24000
    sf.write(tmp_path / "alice_ref.wav", (0.3 * np.sin(2 * np.pi * 220 * t) * 32767).astype(np.int16), 24000)
    (tmp_path / "alice_ref.txt").write_text("A reference voice for Alice.")
    [preset] = await sync_presets(h.store, tmp_path)
    cast = {"alice": "alice_ref", "bob": "en_man", "carol": "belinda"}
    async with aclosing(client):
        manifest = await job_manifest(client, h, {"job_id": "castbook", "cast": cast, "narrator": "en_woman",
                                                  "chapters": [{"title": "One", "text": chapter(1)},
                                                               {"title": "Two", "text": chapter(2)}]})
    assert manifest["cast"] == cast and manifest["narrator"] == "en_woman"
    calls = calls_by_key(sim)
    seed = job_seed("castbook")
    expected_voice = {None: "en_woman", **cast}
    by_speaker: dict[str | None, set] = {}
    for entry in manifest["chapters"]:
        speakers = [c["speaker"] for c in entry["chunks"]]
        assert speakers == [None, "alice", "bob", "carol", None], speakers
        assert [c["voice"] for c in entry["chunks"]] == [expected_voice[s] for s in speakers]
        assert not any("[voice:" in c["text"] for c in entry["chunks"])
        vtt = (await h.store.get(entry["subtitles_key"])).decode()
        for name in ("alice", "bob", "carol"):
            assert f"<v {name}>" in vtt, vtt
        for chunk in entry["chunks"]:
            [call] = calls[key_of(chunk["spoken"])]  # each chunk's one model call, tag-free, as read
            by_speaker.setdefault(chunk["speaker"], set()).add(
                (call["endpoint"], call["voice"], call["reference_sha256"], call["seed"]))
    # The same voice, reference and seed for a character in both chapters.
    assert by_speaker["alice"] == {("chat", None, preset.audio_sha256, speaker_seed(seed, "alice"))}
    assert by_speaker["bob"] == {("speech", "en_man", None, None)}
    assert by_speaker["carol"] == {("speech", "belinda", None, None)}
    assert by_speaker[None] == {("speech", "en_woman", None, None)}


async def test_a_chapter_on_the_bus_with_an_unknown_voice_fails_with_a_dead_letter(sims, harness):
    sim = sims(slots=8)
    h = await harness(backend_urls=[sim.url], heartbeat_s=0.2)
    await h.start_worker()
    await h.start_ingest()
    # Ingest knows the model servers' voices from the workers' heartbeats.
    await until(lambda: heartbeat_voices(h.js, h.names), "a worker heartbeat with voices")
    failed: list[ChapterFailed] = []

    async def on_failed(msg) -> None:
        failed.append(ChapterFailed.from_bytes(msg.data))

    sub = await h.nc.subscribe(h.names.chapter_failed("ghostbook"), cb=on_failed)
    submit = ChapterSubmit(job_id="ghostbook", chapter=0, total_chapters=1, title="Ghost",
                           text="[voice:alice] Boo.", cast={"alice": "ghost"})
    await bus.publish_json(h.js, h.names.chapters_submit, submit.to_bytes(), "chapter:ghostbook:0")
    await until(lambda: failed, "chapter.failed for ghostbook", 60)
    await sub.unsubscribe()
    assert failed[0].reason == "unknown_voice" and "'ghost'" in failed[0].error
    info = await h.js.stream_info(h.names.dlq_stream)
    letter = DeadLetter.from_bytes((await h.js.get_msg(h.names.dlq_stream, info.state.last_seq)).data)
    assert letter.reason == "unknown_voice" and letter.job_id == "ghostbook" and "'ghost'" in letter.error
    assert sim_stats(sim)["calls"] == 0 and await queue_empty(h)


async def test_the_tags_are_not_spoken_on_the_piper_engine(harness, gateway, piper, transcriber):
    """A two-speaker script in real speech: the recogniser hears the turns and never the tags
    (the speakers' pitch is compared in the job test below)."""
    h, gw, client = await start(harness, gateway, piper)
    async with aclosing(client):
        r = await client.post("/generate", json={"text": SCRIPT, "cast": {"SPEAKER0": "en_woman", "SPEAKER1": "en_man"}},
                              timeout=240)
    assert r.status_code == 200, r.text
    assert int(r.headers["X-Chunks"]) == len(TURNS)
    samples, rate = decode_wav(r.content)
    heard = transcriber.transcribe_blocking(samples, rate)
    spoken = " ".join(text for _, text in TURNS)
    print(f"heard: {heard}")
    assert word_error_rate(spoken, heard) <= 0.25, heard
    assert "speaker" not in heard.lower() and "voice" not in heard.lower(), heard


async def test_submit_refuses_an_unknown_cast_voice_in_one_line_and_queues_nothing(sims, harness, tmp_path, capsys,
                                                                                    monkeypatch):
    sim = sims(slots=8)
    h = await harness(backend_urls=[sim.url], heartbeat_s=0.2)
    await h.start_worker()
    await until(lambda: heartbeat_voices(h.js, h.names), "a worker heartbeat with voices")
    book = tmp_path / "play.txt"
    book.write_text(SCRIPT)
    run = lambda *argv: asyncio.to_thread(cli_here, capsys, monkeypatch, h.settings, *argv)  # noqa: E731
    cases = [
        (["--cast", "SPEAKER0=en_woman,SPEAKER1=ghost"], ("cannot submit", "'ghost'")),
        (["--cast", "SPEAKER0=en_woman"], ("cannot submit", "[SPEAKER1]")),
        (["--cast", "SPEAKER0=en_woman,SPEAKER1=en_man", "--narrator", "nobody"], ("'nobody'",)),
        (["--cast", "SPEAKER0"], ("cast",)),
    ]
    for args, needles in cases:  # in this process: a subprocess per case costs seconds of imports
        code, out, err = await run("submit", str(book), "--no-wait", "--job-id", "play", *args)
        lines = err.splitlines()
        assert code == 1 and len(lines) == 1 and all(n in lines[0] for n in needles), (args, err)
    kv = await bus.jobs_kv(h.js, h.names)
    assert await read_job(kv, "play") is None
    assert (await h.js.stream_info(h.names.chapters_stream)).state.messages == 0
    # The same cast with known voices is accepted.
    code, out, err = await run("submit", str(book), "--no-wait", "--job-id", "play", "--cast",
                               "SPEAKER0=en_woman,SPEAKER1=en_man")
    assert code == 0, err


async def test_dialogue_mode_speaks_quotes_with_the_dialogue_voice(sims, harness, gateway):
    sim = sims(slots=32)
    h, gw, client = await start(harness, gateway, sim, jobs=True)
    text = ("\u201cIs the storm coming?\u201d asked his daughter. He didn\u2019t answer at once.\n\n"
            '"Soon," he said at last. [voice:chadwick] "Not tonight," said the keeper\u2019s friend.')
    async with aclosing(client):
        manifest = await job_manifest(client, h, {"job_id": "talkbook", "dialogue": True, "narrator": "en_woman",
                                                  "cast": {"dialogue": "en_man"}, "chapters": [{"text": text}]})
    chunks = [(c["speaker"], c["voice"], c["text"]) for c in manifest["chapters"][0]["chunks"]]
    assert chunks == [
        ("dialogue", "en_man", "\u201cIs the storm coming?\u201d"),
        (None, "en_woman", "asked his daughter. He didn\u2019t answer at once."),
        ("dialogue", "en_man", '"Soon,"'), (None, "en_woman", "he said at last."),
        ("chadwick", "chadwick", '"Not tonight," said the keeper\u2019s friend.'),  # the tag wins
    ]
    calls = calls_by_key(sim)
    for speaker, voice, chunk_text in chunks:
        assert [c["voice"] for c in calls[key_of(chunk_text)]] == [voice]


async def test_the_chunk_done_event_names_the_speaker_and_the_voice(sims, harness, tmp_path):
    sim = sims(slots=8)
    h = await harness(backend_urls=[sim.url])
    t = np.arange(24000) / 24000
    sf.write(tmp_path / "alice_ref.wav", (0.3 * np.sin(2 * np.pi * 220 * t) * 32767).astype(np.int16), 24000)
    (tmp_path / "alice_ref.txt").write_text("A reference voice for Alice.")
    await sync_presets(h.store, tmp_path)
    requests = [SynthRequest(job_id="record", chunk_id="a", text="Alice speaks.", voice="alice_ref", speaker="alice"),
                SynthRequest(job_id="record", chunk_id="b", text="Bob speaks.", voice="en_man", speaker="bob"),
                SynthRequest(job_id="record", chunk_id="n", text="Nobody in particular speaks.")]
    async with h.waiter("record") as waiter:
        await h.start_worker()
        for request in requests:
            await publish_synth(h.js, h.names, request, "bulk")
        outcomes = {o.chunk_id: o for o in await waiter.wait_count(3, timeout_s=60)}
    assert all(isinstance(o, ChunkDone) for o in outcomes.values()), outcomes
    assert [(outcomes[c].speaker, outcomes[c].voice) for c in "abn"] == [("alice", "alice_ref"), ("bob", "en_man"),
                                                                          (None, None)]


async def test_a_three_character_chapter_on_the_piper_engine_has_three_measurably_different_voices(
        harness, gateway, piper):
    """The CPU engine's voices (pitch variants of its one Piper voice, `docs/voices.md`): each
    character's chunks, read back from the store, have the median pitch of that character's voice,
    and the three voices are apart by a clear margin."""
    h, gw, client = await start(harness, gateway, piper, jobs=True)
    cast = {"alice": "en_woman", "bob": "chadwick"}  # joe_higher, joe_deep; the narrator en_man is joe
    text = ("The rain had not stopped for three days when the letter came.\n\n"
            "[voice:alice] Open it, please. I cannot bear to wait another minute.\n\n"
            "[voice:bob] Patience. Letters like this one are read slowly and only once.\n\n"
            "He broke the seal and read it aloud by the window.")
    async with aclosing(client):
        manifest = await job_manifest(client, h, {"job_id": "pitchbook", "cast": cast, "narrator": "en_man",
                                                  "chapters": [{"title": "One", "text": text}]}, 240)
    [entry] = manifest["chapters"]
    pitches: dict[str | None, list[float]] = {}
    for chunk in entry["chunks"]:
        samples, rate = decode_wav(await h.store.get(chunk["audio_key"]))
        f0 = median_f0(samples, rate)
        assert f0 is not None, chunk
        pitches.setdefault(chunk["speaker"], []).append(f0)
    median = {speaker: float(np.median(values)) for speaker, values in pitches.items()}
    print(f"median F0 by speaker: {median}")
    assert set(median) == {None, "alice", "bob"}
    # joe_deep < joe < joe_higher: factors 0.8 / 1.0 / 1.6 of the bundled voice (docs/voices.md).
    assert median["bob"] * 1.1 < median[None] and median[None] * 1.25 < median["alice"], median
