"""Word error rate between the text we asked for and what a recogniser heard.

Both sides are normalised the same way before counting, so that spelling differences which
sound the same are not errors: lower case; numbers spelled out (`num2words`: "42" -> "forty two",
"3rd" -> "third", "1999" -> "nineteen ninety nine", "3.5" -> "three point five", "$5" -> "five
dollars", "10%" -> "ten percent", "7:05" -> "seven oh five"); "&" -> "and"; punctuation,
apostrophes and hyphens dropped; "Doctor"/"Dr.", "Mister"/"Mr.", "Missus"/"Mrs.",
"Professor"/"Prof." and "okay"/"OK" are the same word. A clock time of the reference ("6:15")
that the recogniser wrote "6.15" or "615" (as Whisper often does) counts as the same time, and a
whole number of the reference ("1887") the recogniser grouped otherwise ("1,887") as that number.

WER = (substitutions + deletions + insertions) / words of the reference, by word-level edit
distance. It can exceed 1.0 when the hypothesis has many extra words.
"""

from __future__ import annotations

import re
import unicodedata

from num2words import num2words

# A number as written in prose: optional currency sign, digits with thousands commas, decimals,
# an ordinal suffix or a percent sign.
_NUMBER_RE = re.compile(
    r"(?P<cur>[$£€])?(?P<num>\d{1,3}(?:,\d{3})+|\d+)(?P<dec>\.\d+)?(?P<ord>st|nd|rd|th)?(?P<pct>%)?",
    re.IGNORECASE,
)
_TIME_RE = re.compile(r"\b(\d{1,2}):(\d{2})\b")
# A whole number standing alone (not part of a decimal or a longer number), grouped or not.
_WHOLE_RE = re.compile(r"(?<![\d.,])(?:\d{1,3}(?:,\d{3})+|\d+)(?![\d.,]*\d)")
_CURRENCY = {"$": "dollars", "£": "pounds", "€": "euros"}
_WORD_RE = re.compile(r"[a-z0-9]+")
# Words a recogniser writes either way, reduced to one spelling: "Dr. Park" read "Doctor Park".
_SAME_WORD = {"doctor": "dr", "mister": "mr", "missus": "mrs", "professor": "prof", "okay": "ok"}
_CURRENCY_SCALE_RE = re.compile(r"\b(dollars|pounds|euros)\s+(thousand|million|billion|trillion)\b")


def _year_like(digits: str) -> bool:
    """Four digits that English reads as a year ("1999", "2024"), not as a cardinal."""
    return len(digits) == 4 and 1100 <= int(digits) <= 2099 and not digits.endswith("00")


def _spell(match: re.Match) -> str:
    digits = match["num"].replace(",", "")
    value = int(digits)
    if match["ord"]:
        words = num2words(value, to="ordinal")
    elif match["dec"]:
        words = num2words(value) + " point " + " ".join(num2words(int(d)) for d in match["dec"][1:])
    elif "," not in match["num"] and not match["cur"] and _year_like(digits):
        words = num2words(value, to="year")
    else:
        words = num2words(value)
    if match["cur"]:
        words += " " + _CURRENCY[match["cur"]]
    if match["pct"]:
        words += " percent"
    # American reading drops the "and" of "one hundred and five"; recognisers write digits anyway.
    return " " + " ".join(w for w in re.split(r"[\s,-]+", words) if w and w != "and") + " "


def _clock(match: re.Match) -> str:
    """A clock time as it is read: "6:15" -> "6 15", "7:05" -> "7 oh 5", "7:00" -> "7"."""
    hours, minutes = match[1], int(match[2])
    if minutes == 0:
        return hours
    return f"{hours} oh {minutes}" if minutes < 10 else f"{hours} {minutes}"


def normalise(text: str) -> list[str]:
    """The words of `text` after normalisation (see the module doc)."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = text.replace("&", " and ")
    text = re.sub(r"['\u2019]", "", text)  # don't -> dont on both sides
    text = _TIME_RE.sub(_clock, text)
    text = _NUMBER_RE.sub(_spell, text)
    # "$4.5 million" is read "four point five million dollars".
    text = _CURRENCY_SCALE_RE.sub(r"\2 \1", text)
    return [_SAME_WORD.get(word, word) for word in _WORD_RE.findall(text)]


def edit_distance(reference: list[str], hypothesis: list[str]) -> int:
    """Word-level Levenshtein distance (substitution, deletion, insertion each cost 1)."""
    previous = list(range(len(hypothesis) + 1))
    for i, ref_word in enumerate(reference, 1):
        current = [i] + [0] * len(hypothesis)
        for j, hyp_word in enumerate(hypothesis, 1):
            current[j] = min(
                previous[j] + 1,  # deletion
                current[j - 1] + 1,  # insertion
                previous[j - 1] + (ref_word != hyp_word),  # substitution or match
            )
        previous = current
    return previous[-1]


def _as_the_reference_writes(reference: str, hypothesis: str) -> str:
    """`hypothesis` with the reference's own clock times and whole numbers written its way.

    Whisper writes a spoken "six fifteen" as "6.15" or "615" as often as "6:15", and a spoken year
    "eighteen eighty seven" at times as "1,887": read as numbers they cost two to four errors
    ("six point one five", "one thousand eight hundred eighty seven") for a correct reading. Only
    what the reference itself holds is rewritten (a time to "6:15", a number to the reference's
    comma grouping), so any other number keeps its reading.
    """
    written = {m[0].replace(",", ""): m[0] for m in _WHOLE_RE.finditer(reference)}
    for hours, minutes in set(_TIME_RE.findall(reference)):
        dot = r"\." if hours + minutes in written else r"\.?"  # "615" stays 615 if the text has it
        hypothesis = re.sub(rf"(?<![\d.,]){hours}{dot}{minutes}(?![\d.,]*\d)", f"{hours}:{minutes}", hypothesis)
    return _WHOLE_RE.sub(lambda m: written.get(m[0].replace(",", ""), m[0]), hypothesis)


def word_error_rate(reference: str, hypothesis: str) -> float:
    """Errors per reference word after normalising both texts; 0.0 for two empty texts."""
    ref, hyp = normalise(reference), normalise(_as_the_reference_writes(reference, hypothesis))
    if not ref:
        return 0.0 if not hyp else 1.0
    return edit_distance(ref, hyp) / len(ref)
