"""Speaker markup and casts (pipeline/text/speakers.py, pipeline/text/cast.py): no servers."""

from __future__ import annotations

import pytest

from http_gateway.longform import FIRST_MAX_WORDS, chunk_requests, plan_turns
from pipeline.assemble import Cue, webvtt
from pipeline.contracts.messages import ChapterSubmit, Sampling, SynthRequest
from pipeline.contracts.settings import Settings
from pipeline.jobs.api import JobInputError, parse_cast
from pipeline.jobs.cast import chunk_voicing
from pipeline.jobs.state import ChapterPlan, PlannedChunk
from pipeline.text.cast import Cast, CastError, UnknownVoice, speaker_seed
from pipeline.text.speakers import (
    DIALOGUE, Segment, has_markup, segments, speakers_in, split_speakers, spoken_text,
)
from pipeline.text.split import split_text

SCRIPT = "[SPEAKER0] Did you hear the storm last night?\n[SPEAKER1] I slept right through it.\n[SPEAKER0] Lucky you."


def voiced(text: str, dialogue: bool = False) -> list[tuple[str | None, str]]:
    return [(c.speaker, c.text) for c in split_speakers(text, dialogue)]


def test_higgs_speaker_lines_become_turns_in_order_without_their_tags():
    assert voiced(SCRIPT) == [("SPEAKER0", "Did you hear the storm last night?"),
                              ("SPEAKER1", "I slept right through it."), ("SPEAKER0", "Lucky you.")]
    assert speakers_in(SCRIPT) == ["SPEAKER0", "SPEAKER1"]
    assert has_markup(SCRIPT) and not has_markup("No tags [here] at all.")


def test_inline_voice_tags_last_until_the_next_tag_or_the_paragraph_end():
    text = ("The door opened. [voice:alice]Who is there? [voice:bob] Only me. Sorry.\n"
            "Still Bob on this line.\n\nThe narrator again. [voice:alice] Me again.")
    assert voiced(text) == [(None, "The door opened."), ("alice", "Who is there?"),
                            ("bob", "Only me. Sorry. Still Bob on this line."),
                            (None, "The narrator again."), ("alice", "Me again.")]


def test_unknown_tag_syntax_is_plain_text():
    for text in ("[SPEAKER12] twelve", "a [SPEAKER1] inside a line", "[voice:] nobody", "[note] aside",
                 "[voice:two words] x", "[speaker0] lower case"):
        assert voiced(text) == [(None, " ".join(text.split()))], text
        assert not has_markup(text)


def test_untagged_text_splits_exactly_as_before():
    text = ("The lighthouse keeper climbed the stairs. " * 30 + "\n\n" + "He counted every step. " * 20)
    plain = split_text(text)
    chunks = split_speakers(text)
    assert [(c.text, c.start, c.end, c.index) for c in chunks] == [(c.text, c.start, c.end, c.index) for c in plain]
    assert {c.speaker for c in chunks} == {None}
    assert split_speakers("   \n\n ") == [] and split_speakers("[voice:bob]  ") == []


def test_chunks_never_mix_speakers_and_positions_index_the_spoken_text():
    long_turn = " ".join(f"Sentence number {i} is spoken by the second speaker." for i in range(20))
    text = f"[SPEAKER0] Short opener.\n[SPEAKER1] {long_turn}\n[SPEAKER0] Closing line."
    chunks = split_speakers(text, max_words=30, target_words=20)
    assert [c.index for c in chunks] == list(range(len(chunks)))
    assert [c.speaker for c in chunks][0] == "SPEAKER0" and chunks[-1].speaker == "SPEAKER0"
    assert sum(c.speaker == "SPEAKER1" for c in chunks) >= 3
    spoken = spoken_text(segments(text))
    assert "[SPEAKER" not in spoken
    for c in chunks:
        assert spoken[c.start:c.end] == c.text and c.words <= 30
    assert " ".join(c.text for c in chunks) == spoken
    # Each speaker's chunks hold only that speaker's words.
    assert " ".join(c.text for c in chunks if c.speaker == "SPEAKER1") == " ".join(long_turn.split())


def test_dialogue_mode_gives_quoted_speech_to_the_dialogue_voice():
    text = ('"Is the storm coming?" asked his daughter. He nodded. “Soon,” he said, ‘before dark.’\n\n'
            "It’s the dogs’ dinner, isn’t it? Nobody’s quoting here.")
    assert voiced(text, dialogue=True) == [
        (DIALOGUE, '"Is the storm coming?"'), (None, "asked his daughter. He nodded."), (DIALOGUE, "“Soon,”"),
        (None, "he said,"), (DIALOGUE, "‘before dark.’"),
        (None, "It’s the dogs’ dinner, isn’t it? Nobody’s quoting here."),
    ]
    plain = voiced(text)  # without dialogue mode: all narration (a chunk per paragraph)
    assert {s for s, _ in plain} == {None} and " ".join(t for _, t in plain) == " ".join(text.split())


def test_dialogue_quotes_keep_apostrophes_inside_and_unclosed_quotes_are_narration():
    assert voiced("‘It’s late,’ she said.", dialogue=True) == [(DIALOGUE, "‘It’s late,’"), (None, "she said.")]
    # A quote left open at the paragraph's end is not speech (the heuristic does not guess).
    text = "“Wait for me, he called.\n\nShe did not."
    assert voiced(text, dialogue=True) == [(None, "“Wait for me, he called."), (None, "She did not.")]
    assert voiced('He is 6" tall and "done".', dialogue=True) == [(None, 'He is 6" tall and'), (DIALOGUE, '"done"'),
                                                                  (None, ".")]


def test_explicit_tags_win_over_dialogue_quotes():
    text = '[voice:alice] "Mine," she said.\nThe narrator: "quoted".'
    assert voiced(text, dialogue=True) == [("alice", '"Mine," she said. The narrator: "quoted".')]
    assert segments("[SPEAKER3] x") == [Segment("SPEAKER3", " x")]


def test_cast_resolution_and_checks():
    cast = Cast.of({"SPEAKER0": "en_woman", "alice": "belinda", DIALOGUE: "chadwick"}, narrator="en_man")
    assert cast.voice_for(None) == "en_man"
    assert cast.voice_for("SPEAKER0") == "en_woman" and cast.voice_for("alice") == "belinda"
    assert cast.voice_for("vex") == "vex"  # a [voice:name] that is no cast key names the voice itself
    assert Cast().voice_for(None) is None  # no narrator: the request's own voice
    with pytest.raises(CastError, match=r"\[SPEAKER1\].*no voice"):
        cast.voice_for("SPEAKER1")
    with pytest.raises(CastError, match="dialogue voice"):
        Cast().voice_for(DIALOGUE)
    known = {"en_woman", "belinda", "chadwick", "en_man", "vex"}
    assert cast.check(["SPEAKER0", "vex"], known) == ["en_woman", "vex", "en_man", "belinda", "chadwick"]
    with pytest.raises(UnknownVoice, match="'nobody'"):
        cast.check(["nobody"], known)
    with pytest.raises(UnknownVoice, match="'ghost'"):
        Cast.of({"bob": "ghost"}).check([], known)  # an unknown voice in the cast, even unused


def test_a_speakers_seed_depends_on_the_job_seed_and_the_speaker_only():
    assert speaker_seed(1234, None) == 1234
    assert speaker_seed(1234, "alice") == speaker_seed(1234, "alice") != speaker_seed(1234, "bob")
    assert speaker_seed(1234, "alice") != speaker_seed(99, "alice")
    submit = ChapterSubmit(job_id="book", chapter=0, total_chapters=1, text="[voice:alice] Hi.",
                           cast={"alice": "belinda"}, narrator="en_man")
    chunk = split_speakers(submit.text)[0]
    assert chunk_voicing(submit, 1234, chunk) == {"speaker": "alice", "voice": "belinda",
                                                  "seed": speaker_seed(1234, "alice")}


def test_a_plan_gives_each_chunk_its_speakers_voice_and_seed():
    plan = ChapterPlan(job_id="book", chapter=0, title="", format="wav", voice="en_man", sampling=Sampling(seed=7),
                       chunks=[], cast={"alice": "belinda"})
    plain = PlannedChunk(index=0, chunk_id="c0000-00000", start=0, end=2, text="Hi", key="")
    alice = plain.model_copy(update={"index": 1, "speaker": "alice", "voice": "belinda", "seed": 99})
    assert (plan.request(plain).voice, plan.request(plain).sampling.seed, plan.request(plain).speaker) == ("en_man", 7, None)
    request = plan.request(alice)
    assert (request.voice, request.sampling.seed, request.speaker) == ("belinda", 99, "alice")
    assert plan.voice_of(alice) == "belinda" and plan.voice_of(plain) == "en_man"


def test_the_gateway_plans_one_request_per_turn_with_the_casts_voice():
    settings = Settings()
    assert plan_turns("No tags here.", settings) is None
    opener = " ".join(["word"] * 30) + "."
    turns = plan_turns(f"[SPEAKER0] {opener}\n[voice:bob] Bye.", settings)
    assert turns[0][0] == "SPEAKER0" and len(turns[0][1].split()) <= FIRST_MAX_WORDS  # the first kept short
    assert turns[-1] == ("bob", "Bye.") and {s for s, _ in turns[:-1]} == {"SPEAKER0"}
    whole = SynthRequest(job_id="gw", chunk_id="x", text="[voice:bob] Hi.", voice="en_man", sampling=Sampling())
    one = chunk_requests(whole, ["Hi."], "k", ["bob"], Cast())
    assert len(one) == 1 and (one[0].text, one[0].voice, one[0].speaker) == ("Hi.", "bob", "bob")
    two = chunk_requests(whole, ["A.", "B.", "C."], "k", [None, "SPEAKER0", "SPEAKER0"],
                         Cast.of({"SPEAKER0": "belinda"}))
    assert [r.voice for r in two] == ["en_man", "belinda", "belinda"]
    assert two[1].sampling.seed == two[2].sampling.seed != two[0].sampling.seed


def test_vtt_cues_carry_the_speaker():
    cues = [Cue(0, "c0", 0.0, 1.0, "Plain narration.", 0, 16), Cue(1, "c1", 1.5, 2.0, "Hi <you>", 17, 25, "alice")]
    vtt = webvtt(cues)
    assert "\nPlain narration.\n" in vtt and "\n<v alice>Hi &lt;you&gt;\n" in vtt


def test_cli_cast_pairs_and_files(tmp_path):
    assert parse_cast("alice=en_woman, SPEAKER1=en_man") == {"alice": "en_woman", "SPEAKER1": "en_man"}
    assert parse_cast(None) is None
    path = tmp_path / "cast.json"
    path.write_text('{"bob": "vex"}')
    assert parse_cast(str(path)) == {"bob": "vex"}
    for bad in ("alice=", "missing.json", "=x"):
        with pytest.raises(JobInputError, match="cast"):
            parse_cast(bad)
