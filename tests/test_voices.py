"""Voice presets: the folder, `voices sync` to the bucket, and resolution of request voices."""

from __future__ import annotations

import io
import json
import wave
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from pipeline.audio.checks import decode_wav, resample
from pipeline.client import publish_synth
from pipeline.engines.sim import audio as simaudio
from pipeline.contracts.messages import ChunkDone, SynthRequest
from pipeline.store import sha256_hex
from pipeline.synthesis.voices import PresetError, VoiceBook, read_folder, sync_presets
from tests.conftest import sim_stats
from tests.test_cli import env_for, run_cli

SCENE = "Audio is recorded in a small wooden cabin."


def make_folder(root: Path) -> Path:
    """Two presets: `narrator` (44.1 kHz stereo, with a scene prompt) and `plain` (24 kHz mono)."""
    folder = root / "voice_presets"
    folder.mkdir()
    voice = np.array(simaudio.synthesize("this is how the narrator sounds in the cabin", seed=3))
    stereo = np.stack([resample(voice, 24000, 44100)] * 2, axis=1)
    sf.write(folder / "narrator.wav", stereo, 44100, subtype="PCM_16")
    (folder / "narrator.txt").write_text("This is how the narrator\nsounds in the cabin.\n")
    (folder / "narrator.json").write_text(json.dumps({"system_prompt": SCENE}))
    sf.write(folder / "plain.wav", voice[:24000], 24000, subtype="PCM_16")
    (folder / "plain.txt").write_text("Plain.")
    return folder


def test_read_folder_finds_presets_and_names_broken_entries(tmp_path):
    folder = make_folder(tmp_path)
    presets = read_folder(folder)
    assert [(p.name, p.transcript, p.system_prompt) for p in presets] == [
        ("narrator", "This is how the narrator sounds in the cabin.", SCENE), ("plain", "Plain.", None),
    ]
    (folder / "plain.txt").unlink()
    with pytest.raises(PresetError, match="plain.wav: needs a transcript in plain.txt"):
        read_folder(folder)
    (folder / "plain.txt").write_text("Plain.")
    (folder / "bad name.wav").write_bytes(b"")
    with pytest.raises(PresetError, match="bad name.wav"):
        read_folder(folder)
    with pytest.raises(PresetError, match="does not exist"):
        read_folder(tmp_path / "nowhere")


async def test_sync_uploads_canonical_audio_and_its_description(harness, tmp_path):
    h = await harness()
    synced = await sync_presets(h.store, make_folder(tmp_path))
    assert [p.name for p in synced] == ["narrator", "plain"]
    narrator = synced[0]
    data = await h.store.get("voices/narrator.wav")
    with wave.open(io.BytesIO(data)) as reader:
        assert (reader.getframerate(), reader.getnchannels(), reader.getsampwidth()) == (24000, 1, 2)
    samples, _ = decode_wav(data)
    assert samples.size / 24000 == pytest.approx(narrator.duration_s, abs=0.01)
    meta = json.loads(await h.store.get("voices/narrator.json"))
    assert meta["transcript"] == "This is how the narrator sounds in the cabin."
    assert meta["system_prompt"] == SCENE and meta["audio_key"] == "voices/narrator.wav"
    assert meta["audio_sha256"] == sha256_hex(data)
    assert json.loads(await h.store.get("voices/plain.json"))["system_prompt"] is None


async def test_voice_book_turns_presets_into_references_and_passes_other_names(harness, tmp_path):
    h = await harness()
    book = VoiceBook(h.store, cache_s=60)
    before = SynthRequest(job_id="v", chunk_id="0", text="Hello.", voice="narrator")
    assert await book.resolve(before) == before  # nothing synced yet
    (narrator, _) = await sync_presets(h.store, make_folder(tmp_path))

    resolved = await VoiceBook(h.store).resolve(before)
    assert resolved.voice is None and resolved.system_prompt == SCENE
    assert resolved.reference.audio_key == "voices/narrator.wav"
    assert resolved.reference.audio_sha256 == narrator.audio_sha256
    assert resolved.reference.transcript == narrator.transcript
    assert resolved.audio_digest("m") != before.audio_digest("m")

    own_scene = before.model_copy(update={"system_prompt": "Outdoors."})
    assert (await VoiceBook(h.store).resolve(own_scene)).system_prompt == "Outdoors."
    builtin = SynthRequest(job_id="v", chunk_id="1", text="Hello.", voice="belinda")
    assert await VoiceBook(h.store).resolve(builtin) == builtin
    # The first book cached "no such preset" and keeps saying so until its cache runs out.
    assert await book.resolve(before) == before
    assert (await VoiceBook(h.store, cache_s=0).resolve(before)).reference is not None


async def test_preset_voices_go_to_chat_with_their_reference_and_builtins_to_speech(sims, harness, tmp_path):
    sim = sims()
    h = await harness(backend_urls=[sim.url])
    await sync_presets(h.store, make_folder(tmp_path))
    reqs = [
        SynthRequest(job_id="voices", chunk_id="preset", text="A synced preset voice speaks here.", voice="narrator"),
        SynthRequest(job_id="voices", chunk_id="builtin", text="A built-in voice speaks here.", voice="belinda"),
    ]
    async with h.waiter("voices") as waiter:
        await h.start_worker()
        for req in reqs:
            await publish_synth(h.js, h.names, req, "bulk")
        outcomes = await waiter.wait_count(2, timeout_s=60)
    assert all(isinstance(o, ChunkDone) for o in outcomes), outcomes
    assert sim_stats(sim)["calls_by_path"] == {"/v1/chat/completions": 1, "/v1/audio/speech": 1}


def test_cli_voices_sync(make_settings, tmp_path):
    settings = make_settings()
    folder = make_folder(tmp_path)
    result = run_cli(["voices", "sync", "--dir", str(folder)], env_for(settings))
    assert result.returncode == 0, result.stderr
    assert "narrator" in result.stdout and "2 presets synced" in result.stdout
    (folder / "plain.txt").unlink()
    broken = run_cli(["voices", "sync", "--dir", str(folder)], env_for(settings))
    assert broken.returncode == 1 and "plain.txt" in broken.stderr and "Traceback" not in broken.stderr
