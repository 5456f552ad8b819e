"""Word error rate between the text we asked for and what a recogniser heard.

Both sides are normalised the same way before counting, so that spelling differences which
sound the same are not errors: lower case; numbers spelled out (`num2words`: "42" -> "forty two",
"3rd" -> "third", "1999" -> "nineteen ninety nine", "3.5" -> "three point five", "$5" -> "five
dollars", "10%" -> "ten percent", "7:05" -> "seven oh five"); "&" -> "and"; punctuation,
apostrophes and hyphens dropped.

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
_CURRENCY = {"$": "dollars", "£": "pounds", "€": "euros"}
_WORD_RE = re.compile(r"[a-z0-9]+")
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
    return _WORD_RE.findall(text)


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


def word_error_rate(reference: str, hypothesis: str) -> float:
    """Errors per reference word after normalising both texts; 0.0 for two empty texts."""
    ref, hyp = normalise(reference), normalise(hypothesis)
    if not ref:
        return 0.0 if not hyp else 1.0
    return edit_distance(ref, hyp) / len(ref)
