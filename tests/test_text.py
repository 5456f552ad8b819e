"""Text splitting (pipeline/text.py): pure logic, no servers."""

import random
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.contracts.settings import Settings
from pipeline.text.split import Chunk, join_chunks, normalise, split_text
from tests.conftest import growth_ratio


def texts(chunks: list[Chunk]) -> list[str]:
    return [c.text for c in chunks]


def check_invariants(text: str, chunks: list[Chunk], max_words: int, max_chars: int) -> None:
    norm = normalise(text)
    assert join_chunks(chunks) == norm
    if all(len(word) <= max_chars for word in norm.split(" ")):
        assert " ".join(c.text for c in chunks) == norm
    if not norm:
        assert chunks == []
        return
    assert chunks[0].start == 0 and chunks[-1].end == len(norm)
    for i, chunk in enumerate(chunks):
        assert chunk.index == i
        assert chunk.text and chunk.text == chunk.text.strip()
        assert norm[chunk.start : chunk.end] == chunk.text
        assert len(chunk.text.split(" ")) == chunk.words <= max_words
        assert len(chunk.text) <= max_chars
        if i:
            gap = norm[chunks[i - 1].end : chunk.start]
            assert gap in ("", " ")
            if gap == "":  # only inside a word longer than the character budget
                left = norm.rfind(" ", 0, chunk.start) + 1
                right = norm.find(" ", chunk.start)
                assert (len(norm) if right < 0 else right) - left > max_chars


# --- the property: nothing lost, added or reordered, whatever the text --------------------------

PROSE_PIECES = [
    " ", "  ", "\n", "\n\n", "\t", "\f", "\u00a0", "\u3000", "\r\n",
    "word", "Mr.", "Dr.", "e.g.", "U.S.", "J.", "3.14", "1,000", "$4.50", "...", "…", "!", "?",
    ".", ",", ";", ":", "—", "–", "-", '"', "'", "“", "”", "(", ")", "and", "but", "Stop!",
    "she", "The", "é", "e\u0301", "q\u0301", "日本語の文章。", "x" * 45, "a-b/c_d" * 9,
]
prose = st.lists(st.sampled_from(PROSE_PIECES), max_size=120).map("".join)
long_words = st.text(alphabet="ab\u0301\u200d-/. ", max_size=1500)
whitespace = st.text(alphabet=" \t\n\r\f\v\u00a0\u2028\u2029\u3000\x1c", max_size=50)
any_text = st.one_of(st.text(max_size=400), prose, long_words, whitespace)


@st.composite
def budgets(draw):
    max_words = draw(st.integers(1, 60))
    return {
        "max_words": max_words,
        "target_words": draw(st.integers(1, 80)),  # above max_words: lowered to it
        "max_chars": draw(st.integers(1, 300)),
    }


@settings(max_examples=400, deadline=None)
@given(text=any_text, budget=budgets())
def test_chunks_rebuild_the_normalised_text_within_budget(text, budget):
    chunks = split_text(text, **budget)
    check_invariants(text, chunks, budget["max_words"], budget["max_chars"])


@settings(max_examples=200, deadline=None)
@given(text=any_text)
def test_default_budget_and_normalise_is_idempotent(text):
    norm = normalise(text)
    assert normalise(norm) == norm
    assert unicodedata.is_normalized("NFC", norm)
    assert "  " not in norm and norm == norm.strip()
    chunks = split_text(text)
    check_invariants(text, chunks, 50, 400)
    assert split_text(norm) == chunks or join_chunks(split_text(norm)) == norm


def test_normalise_collapses_whitespace_and_composes_only():
    assert normalise("  Caf\u0065\u0301\u00a0 au\tlait\n\n“Oui!”  ") == "Café au lait “Oui!”"
    assert normalise("ABC, def; GHI!") == "ABC, def; GHI!"  # no case or punctuation changes
    assert split_text("") == [] and split_text(" \n\t\u00a0\u3000 ") == []


def test_bad_budgets_are_refused_and_a_target_above_the_maximum_is_lowered():
    for budget in ({"max_words": 0}, {"target_words": 0}, {"max_chars": 0}):
        with pytest.raises(ValueError):
            split_text("Hello.", **budget)
    assert [c.words for c in split_text("Yes. " * 20, max_words=10, target_words=40)] == [10, 10]


def test_settings_feed_the_budget():
    s = Settings()
    assert (s.chunk_max_words, s.chunk_target_words, s.chunk_max_chars) == (50, 40, 400)
    chunks = split_text("One. " * 200, max_words=s.chunk_max_words,
                        target_words=s.chunk_target_words, max_chars=s.chunk_max_chars)
    assert max(c.words for c in chunks) <= 40


# --- where the cuts fall, on real prose ---------------------------------------------------------
# target_words=1 turns merging off, so every sentence (or piece) is its own chunk.


def sentences(text: str, max_words: int = 30) -> list[str]:
    return texts(split_text(text, max_words=max_words, target_words=1))


def test_dialogue_stays_with_its_speech_tag():
    assert sentences('"Stop!" she said. "Why?" asked Tom. "Go!" He ran.') == [
        '"Stop!" she said.', '"Why?" asked Tom.', '"Go!"', "He ran."]
    assert sentences("“Are you coming?” “No.” She left… and never came back. It rained.") == [
        "“Are you coming?”", "“No.”", "She left… and never came back.", "It rained."]
    # A lone closing quote stays with the sentence it closes.
    assert sentences('He said " Wait! " Then nothing.') == ['He said " Wait! "', "Then nothing."]


def test_abbreviations_and_initials_do_not_end_sentences():
    assert sentences("Mr. Smith met Dr. Jones on St. James St. yesterday. Mrs. Brown did not.") == [
        "Mr. Smith met Dr. Jones on St. James St. yesterday.", "Mrs. Brown did not."]
    assert sentences("J. R. R. Tolkien wrote it. C. S. Lewis read it.") == [
        "J. R. R. Tolkien wrote it.", "C. S. Lewis read it."]
    assert sentences("Fruit, e.g. apples, i.e. food, etc. are good. Eat them vs. sweets.") == [
        "Fruit, e.g. apples, i.e. food, etc. are good.", "Eat them vs. sweets."]
    assert sentences("He moved to the U.S. in 1990. See No. 5 and p. 12. Then stop.") == [
        "He moved to the U.S. in 1990.", "See No. 5 and p. 12.", "Then stop."]
    assert sentences("It ended, etc. The next day came.") == ["It ended, etc.", "The next day came."]


def test_numbers_are_never_cut():
    text = "Pi is 3.14159 today. It cost $4.50, or €1,000.25 at 10:30. The 2.5% rise was 1,000,000."
    assert sentences(text) == ["Pi is 3.14159 today.", "It cost $4.50, or €1,000.25 at 10:30.",
                               "The 2.5% rise was 1,000,000."]
    # Even at one word per chunk a number is one word.
    assert "$4.50," in texts(split_text(text, max_words=1, target_words=1))


def test_ellipses_parentheses_and_paragraphs():
    assert sentences("Wait... what happened? I don't know... Then it ended.") == [
        "Wait... what happened?", "I don't know...", "Then it ended."]
    assert sentences("He left (quietly, as always). Nobody saw (or cared!) at all.") == [
        "He left (quietly, as always).", "Nobody saw (or cared!) at all."]
    # A paragraph break ends a sentence even without punctuation (headings, list items).
    assert sentences("Chapter One\n\nIt was dark\n\n\fThe end") == [
        "Chapter One", "It was dark", "The end"]
    assert sentences("1. Buy milk\n2. Buy eggs") == ["1. Buy milk 2. Buy eggs"]  # "1." ends nothing
    # A line break is a better cut than an arbitrary word, a comma a better one still.
    lines = "aa bb cc dd\nee ff, gg hh ii jj\nkk ll mm nn"
    assert texts(split_text(lines, max_words=8, target_words=4)) == [
        "aa bb cc dd", "ee ff,", "gg hh ii jj", "kk ll mm nn"]


def test_short_sentences_merge_up_to_the_target_and_long_ones_stay_whole():
    chunks = split_text("Yes. " * 30, max_words=50, target_words=8)
    assert sorted(c.words for c in chunks) == [7, 7, 8, 8]  # 30 words, fewest groups, balanced
    sentence = " ".join(["word"] * 44) + "."
    assert texts(split_text(sentence + " Next.")) == [sentence, "Next."]  # 44 > target, <= max


def test_chunks_prefer_to_end_at_paragraphs():
    first = " ".join(["first"] * 19) + "."
    second = " ".join(["second"] * 9) + "."
    text = f"{first}\n\n{second} {second}"
    assert texts(split_text(text)) == [first, f"{second} {second}"]
    assert texts(split_text(text.replace("\n\n", " "))) == [f"{first} {second} {second}"]


def test_long_sentences_split_at_the_strongest_boundary():
    a, b = " ".join(["alpha"] * 20), " ".join(["beta"] * 20)
    assert texts(split_text(f"{a}, {b}; {a}.", max_words=45)) == [f"{a}, {b};", f"{a}."]
    # A comma before a conjunction beats a plain comma.
    text = "one two three, four five six seven, but eight nine ten eleven twelve."
    assert texts(split_text(text, max_words=10, target_words=10)) == [
        "one two three, four five six seven,", "but eight nine ten eleven twelve."]
    # Dashes are clause boundaries.
    assert texts(split_text(f"{a} — {b}", max_words=30)) == [f"{a} —", b]
    # A parenthesis opens a clause.
    text = "aa bb cc dd ee ff (gg hh ii jj) kk ll mm nn"
    assert texts(split_text(text, max_words=8, target_words=8))[0].endswith("ff")


def test_dialogue_is_cut_between_quote_and_tag_only_when_needed():
    text = '"' + " ".join(["stop"] * 20) + '!" she said loudly to everyone present.'
    assert len(split_text(text, max_words=30)) == 1
    assert texts(split_text(text, max_words=22))[0].endswith('stop!"')


def test_unpunctuated_run_of_2000_words():
    rng = random.Random(7)
    vocabulary = "river stone light window quietly over under green slow morning".split()
    plain = " ".join(rng.choice(vocabulary) for _ in range(2000))
    chunks = split_text(plain)
    assert " ".join(texts(chunks)) == plain
    assert all(c.words == 40 for c in chunks)  # balanced: 2000 = 50 x 40
    # With conjunctions in the run, the cuts fall before them.
    words = [rng.choice(vocabulary) if i % 15 else "and" for i in range(1, 2001)]
    chunks = split_text(" ".join(words))
    assert " ".join(texts(chunks)) == " ".join(words)
    assert all(c.text.startswith("and ") for c in chunks[1:])
    assert all(20 <= c.words <= 40 for c in chunks)


def test_a_200000_character_chapter_splits_in_linear_time():
    rng = random.Random(1)
    vocabulary = ("the a man woman walked into room and said hello but nobody answered "
                  "because it was late Mr. Smith 3.14 dollars").split()
    paragraphs, size = [], 0
    while size < 200_000:
        sentence_list = []
        for _ in range(rng.randint(2, 8)):
            words = " ".join(rng.choice(vocabulary) for _ in range(rng.randint(3, 60)))
            ending = rng.choice([".", "?", "!", ", he said.", ";"])
            sentence_list.append(words.capitalize() + ending)
        paragraphs.append(" ".join(sentence_list))
        size += len(paragraphs[-1]) + 2
    chapter = "\n\n".join(paragraphs)[:200_000]
    ratio = growth_ratio(split_text, chapter[:20_000], chapter)
    print(f"splitting 200,000 characters takes {ratio:.1f} times as long as 20,000")
    assert ratio < 50  # linear: 8-30 measured here (caches); quadratic would be about 100
    chunks = split_text(chapter)
    check_invariants(chapter, chunks, 50, 400)
    assert sum(c.words for c in chunks) / len(chunks) > 25  # merged, not one sentence per chunk


def test_degenerate_long_inputs_split_in_linear_time():
    # Up to 100,000 words (2.5x a real chapter's); anything quadratic would take minutes.
    for text in ("x" * 200_000, ". " * 100_000, "a " * 100_000, "Mr. " * 50_000, "\n\n" * 100_000):
        ratio = growth_ratio(split_text, text[:len(text) // 10], text)
        print(f"{text[:4]!r}...: {ratio:.1f} times as long for ten times the text")
        assert ratio < 50, text[:10]  # linear: 8-30 measured here (caches); quadratic: about 100
        assert join_chunks(split_text(text)) == normalise(text)


def test_words_longer_than_the_character_budget_are_cut_inside():
    word = "x" * 1000
    chunks = split_text(f"Before {word} after.", max_chars=400)
    assert join_chunks(chunks) == f"Before {word} after."
    assert all(len(c.text) <= 400 for c in chunks) and len(chunks) == 3
    # A URL is cut after a slash or dot where one is near the cut.
    url = "https://example.com/" + "/".join(["segment"] * 80)
    chunks = split_text(url, max_chars=200)
    assert join_chunks(chunks) == url
    assert all(c.text.endswith("/") for c in chunks[:-1])
    # An accent is never separated from its letter.
    accented = "q\u0301" * 400
    for chunk in split_text(accented, max_chars=401):
        assert unicodedata.category(chunk.text[0]) != "Mn"
