"""The spoken form: a chunk's text as it should be read aloud.

`spoken(text)` rewrites what a TTS model reads wrongly or should not read at all (footnote
markers, numbers, amounts, dates, abbreviations, addresses, acronyms) and leaves everything else
exactly as written. Rules run in the order of `RULES`, each a small function of a string; a rule
that finds nothing returns its input unchanged. Speaker tags (`[SPEAKER0]`) and inline voice tags
(`[voice:alice]`), and any other bracket holding letters, pass through untouched: the rules only
see the text between them. Number words come from inflect (MIT); see docs/spoken.md.

The written text stays the record (events, manifest, subtitles); the synth worker sends the spoken
form to the model and keys the audio on it (`as_spoken`).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable
from typing import NamedTuple

from pipeline.contracts.messages import SynthRequest
from pipeline.text.spoken import abbreviations, caps, dates, markers, numbers, web


class Rule(NamedTuple):
    name: str
    apply: Callable[[str], str]
    what: str


# Order matters where one rule's input is another's: dates before ranges (2024-03-05 is no range),
# ranges before times and amounts ("5-6 p.m.", "$5-10"), titles before numbers ("No. 5").
RULES: tuple[Rule, ...] = (
    Rule("markers", markers.drop_markers, "footnote[1], [12][13], .[5], (see [2]), superscript digits: dropped"),
    Rule("web", web.urls_and_emails, "URLs and e-mail addresses: 'example dot com slash page'"),
    Rule("dates", dates.dates, "2024-03-05, March 5, 2024, 5 March, 3/5/2024: 'March fifth, twenty twenty-four'"),
    Rule("ranges", numbers.ranges, "3-5, 1990–1995: 'three to five'"),
    Rule("times", dates.times, "5 p.m., 17:30, 09:05: 'five P M', 'seventeen thirty', 'nine oh five'"),
    Rule("abbreviations", abbreviations.expand, "Dr. St. Mr. Prof. e.g. i.e. etc. U.S. No. 5 p. 12"),
    Rule("symbols", web.symbols, "& + = / % @ standing alone, R&D, and/or, #1"),
    Rule("currency", numbers.currency, "$, £, €, ¥ with cents or pence, negative amounts, $2.5m"),
    Rule("decades", dates.decades, "the '80s, 1970s: 'the eighties', 'nineteen seventies'"),
    Rule("years", dates.years, "1999, 1905, 2024 BC: 'nineteen ninety-nine'"),
    Rule("units", numbers.units, "50%, 5 km, 20°C, 3 kg: 'fifty percent', 'five kilometres'"),
    Rule("ordinals", numbers.ordinals, "1st, 22nd, 103rd: 'first', 'twenty-second'"),
    Rule("fractions", numbers.fractions, "1/2, 3/4, 2/3: 'one half', 'three quarters'"),
    Rule("numbers", numbers.plain, "42, 1,234, 3.14, -5: words"),
    Rule("caps", caps.caps, "FBI -> 'F B I'; \"STOP!\" -> 'Stop!'; NASA kept"),
)

# Passed through untouched: speaker tags, voice tags, any bracket with letters in it.
_PROTECTED = re.compile(r"\[[^\[\]\n]*[A-Za-z][^\[\]\n]*\]")


def _free(text: str) -> str:
    for rule in RULES:
        # A rule that fails leaves the text as it was: a chunk is better read as written than lost
        # (tests/test_spoken.py checks that no rule raises on arbitrary text).
        with contextlib.suppress(Exception):
            text = rule.apply(text)
    return text


def spoken(text: str, lang: str = "en") -> str:
    """The spoken form of `text`. English rules only: another `lang` returns the text as it is.
    Never returns an empty string for a text with words in it: a text made only of markers comes
    back as written."""
    if not lang.lower().startswith("en"):
        return text
    pieces, last = [], 0
    for tag in _PROTECTED.finditer(text):
        pieces += [_free(text[last:tag.start()]), tag.group(0)]
        last = tag.end()
    pieces.append(_free(text[last:]))
    result = "".join(pieces)
    return result if result.strip() else text


def as_spoken(request: SynthRequest, default: bool) -> SynthRequest:
    """The request as sent to the model: its text in the spoken form when `request.normalize`
    (None means `default`, the worker's TTS_SPOKEN_FORM) says so, else the request as it is.
    The synth worker and the jobs' planner both call this, so their audio keys agree."""
    wanted = default if request.normalize is None else request.normalize
    if not wanted:
        return request
    text = spoken(request.text)
    return request if text == request.text else request.model_copy(update={"text": text})
