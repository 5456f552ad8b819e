"""Settings, names, messages, delivery policy and request shaping: pure logic."""

import random

import pytest
from pydantic import ValidationError

from pipeline.backend import HiggsClient, STOP_STRINGS, max_tokens_for
from pipeline.contracts.messages import DEFAULT_SCENE_PROMPT, AudioReply, ChunkDone, ChunkTimings, Reference, Sampling, SynthRequest
from pipeline.contracts.policy import backoff_s, is_last_attempt
from pipeline.contracts.settings import Settings
from pipeline.contracts.subjects import Names


def test_backend_urls_accept_commas_and_the_seed_alias(monkeypatch):
    monkeypatch.setenv("TTS_BACKEND_URLS", "http://a:8000/, http://b:8000")
    assert Settings().backend_urls == ["http://a:8000", "http://b:8000"]
    monkeypatch.delenv("TTS_BACKEND_URLS")
    monkeypatch.setenv("VLLM_URL", "http://gpu:8000")
    assert Settings().backend_urls == ["http://gpu:8000"]


def test_settings_reject_nonsense(monkeypatch):
    monkeypatch.setenv("TTS_MAX_IN_FLIGHT", "0")
    with pytest.raises(ValidationError):
        Settings()


def test_names_default_to_design_and_namespace_isolates():
    plain = Names()
    assert plain.synth_stream == "TTS_SYNTH"
    assert plain.synth("bulk") == "tts.synth.bulk"
    assert plain.chunk_done("j1") == "tts.events.chunk.done.j1"
    assert plain.dlq("tts.synth.bulk") == "tts.dlq.synth.bulk"
    assert plain.jobs_kv == "tts_jobs"
    ns = Names("t1")
    assert ns.synth_stream == "TTS_SYNTH_T1" and ns.synth("interactive") == "tts_t1.synth.interactive"
    with pytest.raises(ValueError):
        plain.synth("urgent")


def test_audio_digest_covers_what_determines_audio():
    base = SynthRequest(job_id="j", chunk_id="1", text="Hello there.")
    same_text_other_chunk = SynthRequest(job_id="k", chunk_id="9", text="Hello there.")
    assert base.audio_digest("m") == same_text_other_chunk.audio_digest("m")
    variants = [
        base.model_copy(update={"text": "Hello there!"}),
        base.model_copy(update={"voice": "belinda"}),
        base.model_copy(update={"system_prompt": "x"}),
        base.model_copy(update={"sampling": Sampling(seed=7)}),
        base.model_copy(update={"sampling": Sampling(top_k=10)}),
        base.model_copy(update={"take": "2"}),
    ]
    digests = {v.audio_digest("m") for v in variants} | {base.audio_digest("m"), base.audio_digest("other-model")}
    assert len(digests) == len(variants) + 2


@pytest.mark.parametrize(
    "fields",
    [
        {"text": "   "},
        {"job_id": "a.b"},
        {"job_id": "x" * 65},
        {"voice": "../etc/passwd"},
        {"unknown": 1},
    ],
)
def test_bad_requests_are_refused(fields):
    with pytest.raises(ValidationError):
        SynthRequest(**{"job_id": "j", "chunk_id": "1", "text": "hi", **fields})


def test_voice_and_reference_are_exclusive():
    ref = Reference(audio_key="references/x.wav", audio_sha256="0" * 64)
    with pytest.raises(ValidationError):
        SynthRequest(job_id="j", chunk_id="1", text="hi", voice="belinda", reference=ref)


def test_backoff_grows_caps_and_jitters():
    rng = random.Random(1)
    delays = [backoff_s(a, 0.5, 8.0, rng) for a in range(1, 9)]
    for attempt, delay in enumerate(delays, start=1):
        ceiling = min(8.0, 0.5 * 2 ** (attempt - 1))
        assert ceiling * 0.5 <= delay <= ceiling
    assert max(delays) <= 8.0 and delays[-1] >= 4.0
    assert len({round(backoff_s(3, 1, 10, rng), 6) for _ in range(20)}) > 10
    assert is_last_attempt(5, 5) and not is_last_attempt(4, 5)


def test_max_tokens_bounded_by_text_and_request():
    short = max_tokens_for("Hello world.", 2048)
    long = max_tokens_for(" ".join(["word"] * 200), 2048)
    assert 128 <= short < 400
    assert short < long <= 2048
    assert max_tokens_for(" ".join(["word"] * 200), 300) == 300


def test_chat_payload_sends_top_k_top_level_and_stops():
    client = HiggsClient(Settings(backend_urls=["http://127.0.0.1:9"]))
    ref = Reference(audio_key="references/x.wav", audio_sha256="0" * 64)
    payload = client.chat_payload(
        SynthRequest(job_id="j", chunk_id="1", text="Hi there.", reference=ref, sampling=Sampling(top_k=17, seed=3)),
        reference_b64="UklGRg==",
    )
    assert payload["top_k"] == 17 and "extra_body" not in payload
    assert payload["stop"] == STOP_STRINGS and payload["seed"] == 3
    assert payload["max_tokens"] <= 2048
    roles = [m["role"] for m in payload["messages"]]
    assert roles == ["system", "user", "assistant", "user"]
    assert payload["messages"][0]["content"] == DEFAULT_SCENE_PROMPT
    assert payload["messages"][1]["content"] == "Please speak naturally."
    assert payload["messages"][2]["content"][0]["input_audio"]["data"] == "UklGRg=="


async def test_backend_ejection_and_restore(sims):
    """Real HTTP to a stand-in: failures eject a server, a passing probe restores it."""
    from pipeline.contracts.errors import BackendRetryable

    sim = sims(error_rate=1.0, error_status=503)
    settings = Settings(backend_urls=[sim.url], backend_eject_after=2, backend_eject_s=60)
    async with HiggsClient(settings) as client:
        request = SynthRequest(job_id="j", chunk_id="1", text="Hello there.")
        for _ in range(2):
            assert not client.all_down()
            with pytest.raises(BackendRetryable):
                await client.synthesize(request)
        assert client.all_down()
        assert (await client.health()) == {sim.url: True}  # /health answers: back in service
        assert not client.all_down()

    refused = Settings(backend_urls=["http://127.0.0.1:9"], backend_eject_s=60)
    async with HiggsClient(refused) as client:
        with pytest.raises(BackendRetryable):
            await client.synthesize(SynthRequest(job_id="j", chunk_id="1", text="Hello there."))
        assert client.all_down()  # a refused connection ejects at once


def test_delivery_policy_limits_attempts_and_age():
    from pipeline.contracts.policy import DeliveryPolicy

    rng = random.Random(7)
    policy = DeliveryPolicy(max_deliver=3, base_delay_s=1.0, max_delay_s=10.0, max_age_s=60.0)
    first = policy.after_failure(1, age_s=0.0, rng=rng)
    assert first.retry and 0.5 <= first.delay_s <= 1.0
    assert policy.after_failure(3, age_s=0.0, rng=rng).reason == "max_deliver"
    assert policy.after_failure(2, age_s=59.5, rng=rng).reason == "max_age"  # the retry would end too late
    assert policy.too_old(61.0) and not policy.too_old(59.0)
    unlimited = DeliveryPolicy(max_deliver=5, base_delay_s=1.0, max_delay_s=10.0)
    assert unlimited.after_failure(2, age_s=10**6, rng=rng).retry and not unlimited.too_old(10**9)


def test_audio_reply_round_trip_and_damage():
    done = ChunkDone(job_id="gw-1", chunk_id="c1", key="audio/x.wav", duration_s=1.5, sample_rate_hz=24000,
                     bytes=72044, cached=False, attempt=1, worker="w", timings=ChunkTimings(synth_s=0.2))
    wav = bytes(range(256)) * 10
    data = AudioReply.encode(done, wav)
    assert len(data) == AudioReply.size(done, len(wav))
    assert AudioReply.decode(data) == (done, wav)
    with pytest.raises(ValueError, match="cut short"):
        AudioReply.decode(data[:20])
    with pytest.raises(ValueError, match="shorter than its header"):
        AudioReply.decode(b"\x00")
    with pytest.raises(ValidationError):
        AudioReply.decode(len(b"{}").to_bytes(4, "big") + b"{}" + wav)


@pytest.mark.parametrize("subject", ["a b", "tts.reply.*", "tts.>", "", ".x", "x..y"])
def test_reply_to_must_be_a_plain_subject(subject):
    with pytest.raises(ValidationError):
        SynthRequest(job_id="j", chunk_id="c", text="hi", reply_to=subject)


async def test_an_answer_whose_audio_is_not_base64_is_invalid_audio():
    """A model server answering 200 with audio data that is not base64 (here: a stray `*`)
    raises `AudioInvalid` naming it, not a crash or a silently mangled WAV."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from pipeline.contracts.errors import AudioInvalid

    class Answer(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's naming
            self.rfile.read(int(self.headers["Content-Length"]))
            body = json.dumps({"choices": [{"finish_reason": "stop", "message": {
                "role": "assistant", "audio": {"id": "a", "data": "UklG*RkFB"}}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        settings = Settings(backend_urls=[f"http://127.0.0.1:{server.server_address[1]}"])
        async with HiggsClient(settings) as client:
            with pytest.raises(AudioInvalid, match="not valid base64"):
                await client.synthesize(SynthRequest(job_id="j", chunk_id="1", text="Hello there."))
    finally:
        server.shutdown()
        server.server_close()


def test_speech_audio_as_long_as_its_token_cap_allows_stopped_on_the_cap():
    """The speech endpoint has no finish_reason: audio reaching `max_tokens / 25` s, within two
    codec frames, is taken as stopped on the cap (truncated); anything shorter is not."""
    from pipeline.backend import reaches_token_cap

    assert reaches_token_cap(250 * 960, 24000, max_tokens=250)  # exactly 10 s: the cap
    assert reaches_token_cap(248 * 960, 24000, max_tokens=250)  # two frames short
    assert not reaches_token_cap(247 * 960, 24000, max_tokens=250)
    assert not reaches_token_cap(4 * 24000, 24000, max_tokens=250)  # a sentence that ended
    assert reaches_token_cap(10 * 22050, 22050, max_tokens=250)  # in seconds, whatever the rate


async def test_the_client_marks_speech_cut_at_max_tokens_as_truncated(sims):
    from pipeline.backend import max_tokens_for

    text = "A short sentence that never seems to end."
    request = SynthRequest(job_id="j", chunk_id="1", text=text, voice="belinda")
    for knobs, truncated in (({}, False), ({"truncate_rate": 1.0}, True)):
        settings = Settings(backend_urls=[sims(**knobs).url])
        async with HiggsClient(settings) as client:
            answer = await client.synthesize(request)
        assert answer.endpoint == "speech" and (answer.truncation is not None) == truncated
    assert f"max_tokens ({max_tokens_for(text, 2048)})" in answer.truncation


def test_a_chunk_out_of_deliveries_fails_with_its_errors_own_reason():
    from pipeline.contracts.errors import AudioInvalid, AudioTruncated
    from pipeline.contracts.policy import failure_reason

    assert failure_reason("max_deliver", AudioTruncated("cut")) == "truncated"
    assert failure_reason("max_deliver", AudioInvalid("too long")) == "max_deliver"
    assert failure_reason("max_age", AudioTruncated("cut")) == "max_age"
