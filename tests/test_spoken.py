"""The spoken form (pipeline/text/spoken): one table per rule family, properties over generated
text, and `tts-pipeline spoken`. Pure functions: no servers."""

from __future__ import annotations

import io
import re
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.cli.main import main
from pipeline.contracts.messages import SynthRequest
from pipeline.text.spoken import RULES, as_spoken, spoken
from pipeline.text.spoken.abbreviations import AFTER_NAMES, FIXED_WORDS, NUMBERED

MARKERS = [
    ("footnote[1] and another[12]", "footnote and another"),
    ("A claim.[5] Then more.", "A claim. Then more."),
    ("as shown[12][13] here", "as shown here"),
    ("end of a sentence[3].", "end of a sentence."),
    ("the study[1, 2] found", "the study found"),
    ("results[4-6] vary", "results vary"),
    ("a claim¹² here", "a claim here"),
    ("a claim.³ Next", "a claim. Next"),
    ("“Quoted”[7] words", "“Quoted” words"),
    ("area 5 m² of land", "area five square metres of land"),  # a unit's square, no marker
    ("[citation needed] stays", "[citation needed] stays"),
    ("see [1] for details", "see [one] for details"),  # after a space: a reference read out, not dropped
]

NUMBERS = [
    ("The price is 42 dollars", "The price is forty-two dollars"),
    ("1,000,000 people", "one million people"),
    ("3.14 is pi", "three point one four is pi"),
    ("It fell to -5 degrees", "It fell to minus five degrees"),
    ("a -3.5 change", "a minus three point five change"),
    ("the 1st, 2nd, 3rd, 21st and 103rd", "the first, second, third, twenty-first and one hundred third"),
    ("pages 3-5 and 10–12", "pages three to five and ten to twelve"),
    ("50% and 3.5 %", "fifty percent and three point five percent"),
    ("5 km and 1 km and 5km", "five kilometres and one kilometre and five kilometres"),
    ("20°C and 98.6°F", "twenty degrees Celsius and ninety-eight point six degrees Fahrenheit"),
    ("3 kg of flour, 1 kg of salt", "three kilograms of flour, one kilogram of salt"),
    ("1/2 cup, 3/4 mile, 2/3 done", "one half cup, three quarters mile, two thirds done"),
    ("1,234 and 1,2,3", "one thousand two hundred thirty-four and one,two,three"),
    ("won 10-5", "won 10-5"),  # a falling pair is a score, not a range: left as written
    ("call 555-1234", "call 555-1234"),  # a phone number: left as written
]

CURRENCY = [
    ("It cost £8.00.", "It cost eight pounds."),
    ("$1.50", "one dollar and fifty cents"),
    ("$1 and $0.01", "one dollar and one cent"),
    ("€3.20 and €1", "three euros and twenty cents and one euro"),
    ("¥500", "five hundred yen"),
    ("-$5.50", "minus five dollars and fifty cents"),
    ("−£20", "minus twenty pounds"),
    ("£3.05", "three pounds and five pence"),
    ("£0.01", "one penny"),
    ("$2.5 million", "two point five million dollars"),
    ("$3bn and £10k", "three billion dollars and ten thousand pounds"),
    ("$1,234.56", "one thousand two hundred thirty-four dollars and fifty-six cents"),
    ("from $5-10", "from five dollars to ten"),
]

DATES_TIMES = [
    ("in 1999 we", "in nineteen ninety-nine we"),
    ("It was 1999.", "It was nineteen ninety-nine."),
    ("the '80s and the ’90s", "the eighties and the nineties"),
    ("the 1970s and 1900s and 2000s", "the nineteen seventies and nineteen hundreds and two thousands"),
    ("1905, 2024, 2000, 2007", "nineteen oh five, twenty twenty-four, two thousand, two thousand seven"),
    ("1990-1995", "nineteen ninety to nineteen ninety-five"),
    ("1500 soldiers came", "one thousand five hundred soldiers came"),  # a count, not a year
    ("in 300 BC", "in three hundred B C"),
    ("On 2024-03-05 we met.", "On March fifth, twenty twenty-four we met."),
    ("March 5, 2024", "March fifth, twenty twenty-four"),
    ("on 5 March 2024 at noon", "on the fifth of March twenty twenty-four at noon"),
    ("Jan. 1st", "January first"),
    ("on 3/5/2024", "on March fifth, twenty twenty-four"),
    ("at 5 p.m. Then we left.", "at five P M. Then we left."),
    ("at 5 p.m. sharp", "at five P M sharp"),
    ("at 17:30 and 09:05", "at seventeen thirty and nine oh five"),
    ("12:00 and 17:00", "twelve o'clock and seventeen hundred"),
    ("10 am and 11PM", "ten A M and eleven P M"),
    ("2024-13-45 stays", "2024-13-45 stays"),  # no such date: as written
]

ABBREVIATIONS = [
    ("Dr. Smith arrived.", "Doctor Smith arrived."),
    ("Elm St. was quiet.", "Elm Street was quiet."),
    ("He lived on Elm St. near St. Paul's.", "He lived on Elm Street near Saint Paul's."),
    ("Visit St. Paul's today.", "Visit Saint Paul's today."),
    ("Mulholland Dr. at night", "Mulholland Drive at night"),
    ("Mr. and Mrs. Smith met Prof. Jones.", "Mister and Missus Smith met Professor Jones."),
    ("Gen. Lee and Sgt. Pepper", "General Lee and Sergeant Pepper"),
    ("Mr Smith and Dr Jones", "Mister Smith and Doctor Jones"),
    ("the U.S. and the U.K.", "the U S and the U K."),  # the last period also ends the text
    ("in the U.S. Then", "in the U S. Then"),
    ("fruit, e.g. apples, i.e. red ones", "fruit, for example apples, that is red ones"),
    ("apples, pears, etc. Then more.", "apples, pears, et cetera. Then more."),
    ("Smith vs. Jones", "Smith versus Jones"),
    ("No. 5 on p. 12", "number five on page twelve"),
    ("John Smith, Jr. spoke", "John Smith, Junior spoke"),
]

WEB_SYMBOLS = [
    ("See https://example.com/about-us for more.", "See example dot com slash about dash us for more."),
    ("Visit www.example.org today.", "Visit w w w dot example dot org today."),
    ("Go to example.com.", "Go to example dot com."),
    ("Mail j.smith@example.org.", "Mail j dot smith at example dot org."),
    ("info@my-site.co.uk", "info at my dash site dot co dot uk"),
    ("salt & pepper", "salt and pepper"),
    ("2 + 2 = 4", "two plus two equals four"),
    ("yes / no", "yes or no"),
    ("and/or he/she", "and or he or she"),
    ("R&D and AT&T", "R and D and A T and T"),
    ("ranked #1", "ranked number one"),
    ("50 % off", "fifty percent off"),
]

CAPS = [
    ('The FBI said "STOP RIGHT THERE!"', 'The F B I said "stop right there!"'),
    ('"GET OUT!" she screamed.', '"Get out!" she screamed.'),
    ("The BBC and the CIA", "The B B C and the C I A"),
    ("a DNA test in the USA", "a D N A test in the U S A"),
    ('"Call the FBI," he said.', '"Call the F B I," he said.'),  # a real acronym inside quotes
    ("NASA agreed", "NASA agreed"),  # said as a word
    ("WARNING: the ice is thin", "Warning: the ice is thin"),
    ("THE END", "The end"),
    ("World War II and Henry VIII", "World War II and Henry VIII"),
    ("I said OK", "I said OK"),
    ("the FBI's files", "the F B I's files"),
]

TAGS_AND_NO_OP = [
    ("[SPEAKER0] Hello there.", "[SPEAKER0] Hello there."),
    ("[SPEAKER1] It cost $5.", "[SPEAKER1] It cost five dollars."),
    ("[SPEAKER9] Dr. Who[2]", "[SPEAKER9] Doctor Who"),
    ("[voice:alice] Dr. Smith[1] said hi.", "[voice:alice] Doctor Smith said hi."),
    ("Hello [voice:bob] friend.", "Hello [voice:bob] friend."),
    ("[voice:alice2] 42 things", "[voice:alice2] forty-two things"),
    ("[SPEAKER0] line one\n[SPEAKER1] line two", "[SPEAKER0] line one\n[SPEAKER1] line two"),
    ("Plain words, nothing to change.", "Plain words, nothing to change."),
    ("She said: \"Not today!\" — and left…", "She said: \"Not today!\" — and left…"),
    ("Über café naïve façade", "Über café naïve façade"),
    ("[1] the first item", "[one] the first item"),  # a bracket after a space is no marker
    ("the cost rose (see [2]). Then", "the cost rose. Then"),  # a parenthesis that only points: dropped
    ("as argued ([3, 4]) and (cf. [5]) or (See also [1][2]).", "as argued and or."),
    ("(see Smith [3]) stays", "(see Smith [three]) stays"),  # words inside: not only a pointer
    ("¹² alone", "¹² alone"),  # superscripts glued to nothing
]


def _cases(table):
    return pytest.mark.parametrize("written,expected", table, ids=[w[:40] for w, _ in table])


@_cases(MARKERS)
def test_markers(written, expected):
    assert spoken(written) == expected


@_cases(NUMBERS)
def test_numbers(written, expected):
    assert spoken(written) == expected


@_cases(CURRENCY)
def test_currency(written, expected):
    assert spoken(written) == expected


@_cases(DATES_TIMES)
def test_years_dates_and_times(written, expected):
    assert spoken(written) == expected


@_cases(ABBREVIATIONS)
def test_abbreviations(written, expected):
    assert spoken(written) == expected


@_cases(WEB_SYMBOLS)
def test_urls_emails_and_symbols(written, expected):
    assert spoken(written) == expected


@_cases(CAPS)
def test_capitals(written, expected):
    assert spoken(written) == expected


@_cases(TAGS_AND_NO_OP)
def test_tags_stay_and_other_text_is_untouched(written, expected):
    assert spoken(written) == expected


def test_every_table_has_ten_cases_and_every_rule_a_description():
    for table in (MARKERS, NUMBERS, CURRENCY, DATES_TIMES, ABBREVIATIONS, WEB_SYMBOLS, CAPS, TAGS_AND_NO_OP):
        assert len(table) >= 10
    assert len({r.name for r in RULES}) == len(RULES) and all(r.what for r in RULES)


def test_other_languages_are_left_as_written():
    assert spoken("Es kostet 5 €[1].", lang="de") == "Es kostet 5 €[1]."


def test_the_spoken_form_is_stable():
    for table in (MARKERS, NUMBERS, CURRENCY, DATES_TIMES, ABBREVIATIONS, WEB_SYMBOLS, TAGS_AND_NO_OP):
        for _, expected in table:
            if not re.search(r"\d|\[1\]", expected):
                assert spoken(expected) == expected, expected


def test_as_spoken_follows_the_request_then_the_default():
    request = SynthRequest(job_id="j", chunk_id="c", text="It cost £8.00.")
    assert as_spoken(request, True).text == "It cost eight pounds."
    assert as_spoken(request, False) is request
    assert as_spoken(request.model_copy(update={"normalize": False}), True).text == "It cost £8.00."
    assert as_spoken(request.model_copy(update={"normalize": True}), False).text == "It cost eight pounds."
    plain = SynthRequest(job_id="j", chunk_id="c", text="Nothing to change.")
    assert as_spoken(plain, True) is plain
    # Two spellings that sound the same name the same audio.
    a = as_spoken(request, True).audio_digest("m")
    b = as_spoken(request.model_copy(update={"text": "It cost eight pounds."}), True).audio_digest("m")
    assert a == b


# ---------------------------------------------------------------------------- properties

# Words no rule reads: lowercase letters, minus the abbreviations a trailing period would make
# ("etc.", "no." before a number, "vs.").
_SKIP = FIXED_WORDS | {a.rstrip(".").lower() for a in NUMBERED} | {a.lower() for a in AFTER_NAMES}
plain_word = st.from_regex(r"[a-z]{1,10}", fullmatch=True).filter(lambda w: w not in _SKIP)
marker = st.sampled_from(["[1]", "[12]", "[3][4]", "[5, 6]", "[7-9]", "¹", "²³"])
punctuation = st.sampled_from(["", "", "", ",", ".", ";", ":", "!", "?"])


@st.composite
def marked_text(draw):
    """Plain words, each with optional punctuation and an optional marker glued on."""
    pieces, words = [], []
    for _ in range(draw(st.integers(1, 30))):
        word = draw(plain_word)
        words.append(word)
        before_marker, after_marker = draw(st.sampled_from([("", draw(punctuation)), (draw(punctuation), "")]))
        glued = draw(marker) if draw(st.booleans()) else ""
        pieces.append(word + before_marker + glued + after_marker)
    return " ".join(pieces), words


@settings(max_examples=300, deadline=None)
@given(case=marked_text())
def test_no_word_is_dropped_but_the_markers(case):
    text, words = case
    assert re.findall(r"[a-z]+", spoken(text)) == words


capitalised = st.from_regex(r"[A-Z][a-z]{1,8}", fullmatch=True).filter(lambda w: w.lower() not in _SKIP)
plain_token = st.one_of(plain_word, capitalised, st.sampled_from(["I", "a", "café", "naïve", "—", "…", "'tis"]))


@settings(max_examples=300, deadline=None)
@given(tokens=st.lists(st.tuples(plain_token, punctuation), min_size=1, max_size=40),
       quoted=st.booleans())
def test_text_without_digits_symbols_or_abbreviations_comes_back_unchanged(tokens, quoted):
    text = " ".join(word + mark for word, mark in tokens)
    if quoted:
        text = f'"{text}" he said.'
    assert spoken(text) == text


# ---------------------------------------------------------------------------- the command

CLI = [sys.executable, "-m", "pipeline.cli", "spoken"]


def test_the_command_prints_each_chunk_in_the_spoken_form(tmp_path):
    book = tmp_path / "book.txt"
    sentence = "Dr. Smith paid £8.00 for footnote[1] number 42. "
    book.write_text(sentence * 30)
    env = {"TTS_CHUNK_MAX_WORDS": "20", "TTS_CHUNK_TARGET_WORDS": "15", "PATH": "/usr/bin:/bin"}
    out = subprocess.run(CLI + [str(book)], capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) > 5 and [int(line.split()[0]) for line in lines] == list(range(1, len(lines) + 1))
    assert all(len(line.split()) - 1 <= 20 * 3 for line in lines)
    assert "Doctor Smith paid eight pounds for footnote number forty-two." in out.stdout
    assert "[1]" not in out.stdout and "£" not in out.stdout



def test_the_command_reads_standard_input(capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("It cost $5."))
    code = main(["spoken", "--written", "-"])  # in this process: the command above ran as a subprocess
    out = capsys.readouterr()
    assert code == 0, out.err
    assert out.out.splitlines() == ["   1  written: It cost $5.", "      spoken:  It cost five dollars."]


def test_the_command_reads_markdown_chapters(tmp_path, capsys):
    book = tmp_path / "book.md"
    book.write_text("# One\n\nIn 1999 it rained.\n\n# Two\n\nThe '80s were loud.\n")
    code = main(["spoken", str(book)])  # in this process: the command above ran as a subprocess
    out = capsys.readouterr()
    assert code == 0, out.err
    assert out.out.splitlines() == ["# chapter 0: One", "   1  In nineteen ninety-nine it rained.",
                                       "# chapter 1: Two", "   2  The eighties were loud."]


def test_a_missing_file_is_one_line_and_exit_2(tmp_path, capsys):
    code = main(["spoken", str(tmp_path / "nope.txt")])
    out = capsys.readouterr()
    assert code == 2 and out.out == ""
    assert len(out.err.strip().splitlines()) == 1 and "nope.txt" in out.err


_tricky = st.text(alphabet=st.sampled_from(list("aZ09 .,-–/:'\"“”[]()$£€¥%&+=@#°²¹¼APMSt\n")), max_size=80)


@settings(max_examples=400, deadline=None)
@given(text=st.one_of(st.text(max_size=200), _tricky))
def test_no_rule_raises_and_nothing_is_lost_to_blankness(text):
    # `spoken` keeps the text when a rule fails; each rule must not fail in the first place.
    for rule in RULES:
        rule.apply(text)
    out = spoken(text)
    assert bool(out.strip()) == bool(text.strip())


def test_long_numbers_are_read_digit_by_digit_or_left():
    names = "zero one two three four five six seven eight nine".split()
    assert spoken("id 1234567890123456789") == "id " + " ".join(names[int(d)] for d in "1234567890123456789")
    assert spoken("1" * 100) == "1" * 100


def test_submit_no_normalize_reaches_every_chapter():
    from pipeline.cli.main import build_parser
    from pipeline.jobs.api import build_submits
    from pipeline.text.chapters import Chapter

    assert build_parser().parse_args(["submit", "book.txt", "--no-normalize"]).no_normalize is True
    assert build_parser().parse_args(["submit", "book.txt"]).no_normalize is False
    chapters = [Chapter(0, "One", "It cost $5."), Chapter(1, "Two", "In 1999.")]
    assert [s.normalize for s in build_submits(chapters, "j", normalize=False)] == [False, False]
    assert [s.normalize for s in build_submits(chapters, "j")] == [None, None]
