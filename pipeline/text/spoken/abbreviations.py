"""Titles and abbreviations, by context where the same letters mean two things."""

from __future__ import annotations

import re

# Before a name only: "Dr. Watson", "Prof. Moriarty" (a period, or none for the common British forms).
TITLES = {
    "Mr": "Mister", "Mrs": "Missus", "Ms": "Miz", "Dr": "Doctor", "Prof": "Professor", "Gen": "General",
    "Sgt": "Sergeant", "Capt": "Captain", "Lt": "Lieutenant", "Col": "Colonel", "Maj": "Major",
    "Cpl": "Corporal", "Adm": "Admiral", "Cmdr": "Commander", "Rev": "Reverend", "Fr": "Father",
    "Gov": "Governor", "Sen": "Senator", "Rep": "Representative", "Pres": "President", "Hon": "Honourable",
    "St": "Saint", "Mt": "Mount", "Messrs": "Messieurs",
}
_UNDOTTED_TITLES = ("Mr", "Mrs", "Ms", "Dr", "St")
# After a name only: "Elm St.", "Baker Rd.", "John Smith Jr."
AFTER_NAMES = {"St": "Street", "Dr": "Drive", "Ave": "Avenue", "Rd": "Road", "Blvd": "Boulevard",
               "Ln": "Lane", "Jr": "Junior", "Sr": "Senior"}
# Anywhere (case as written).
FIXED = {
    "e.g.": "for example", "i.e.": "that is", "etc.": "et cetera", "vs.": "versus", "cf.": "compare",
    "approx.": "approximately", "a.k.a.": "also known as", "Inc.": "Incorporated", "Ltd.": "Limited",
    "Co.": "Company", "Corp.": "Corporation", "Bros.": "Brothers", "Dept.": "Department",
}
# Their period may also end the sentence ("apples, pears, etc. Then"); "e.g." and "vs." never do.
CAN_END_A_SENTENCE = frozenset({"etc.", "Inc.", "Ltd.", "Co.", "Corp.", "Bros.", "Dept."})
# Before a number only: "No. 5", "p. 12", "pp. 3 to 5", "Fig. 2".
NUMBERED = {"No.": "number", "no.": "number", "Nos.": "numbers", "p.": "page", "pp.": "pages", "Fig.": "figure",
            "fig.": "figure", "Vol.": "volume", "vol.": "volume", "Ch.": "chapter", "ch.": "chapter",
            "Sec.": "section", "sec.": "section", "Eq.": "equation", "Op.": "opus"}

_NAME = re.compile(r"[A-Z][a-z'’-]*[a-z]")
_WORDS = re.compile(r"(?<![\w.])(" + "|".join(sorted(set(TITLES) | set(AFTER_NAMES), key=len, reverse=True)) + r")(\.|\b)(?!['’]\w)")
_FIXED = re.compile(r"(?<![\w.])(" + "|".join(re.escape(a) for a in sorted(FIXED, key=len, reverse=True)) + r")(?=[\s,;:!?)\"”]|$)")
_NUMBERED = re.compile(r"(?<![\w.])(" + "|".join(re.escape(a) for a in NUMBERED) + r")\s?(?=\d)")
# U.S., U.K., U.S.A., J.R.R.: capital letters with periods, read letter by letter.
_INITIALISM = re.compile(r"(?<![\w.])((?:[A-Z]\.){2,})")
_SENTENCE_ENDED = re.compile(r"\s*[A-Z\"“]|\s*$")
_PREVIOUS = re.compile(r"(?:^|(\S+)\s+)(\S+)\s+$")
_NEXT = re.compile(r"\s+(\S+)")

FIXED_WORDS = frozenset(a.rstrip(".").lower() for a in FIXED) | frozenset(a.lower() for a in TITLES)


def _ended(text: str, end: int) -> bool:
    """The abbreviation's period also ended the sentence (end of text, or a capital follows)."""
    return bool(_SENTENCE_ENDED.match(text, end))


def _is_name(word: str | None) -> bool:
    return word is not None and _NAME.fullmatch(word.strip("\"“”().,;:!?")) is not None


def _context(text: str, start: int, end: int) -> tuple[bool, bool, bool]:
    """(a capitalised word comes before, it is a name rather than a sentence's first word, a name
    comes after): "Visit St. Paul's" is a saint, "Elm St. today" a street."""
    before = _PREVIOUS.search(text[max(0, start - 80):start])
    prev_capitalised = prev_is_name = False
    if before:
        earlier, prev = before.groups()
        prev_capitalised = _is_name(prev.rstrip(",")) and not prev.endswith((".", "!", "?", ";", ":"))
        starts_sentence = earlier is None or earlier.endswith((".", "!", "?", ":", "\"", "”"))
        prev_is_name = prev_capitalised and not starts_sentence
    after = _NEXT.match(text, end)
    return prev_capitalised, prev_is_name, after is not None and _is_name(after.group(1))


def _person(text: str, match: re.Match) -> str:
    word, dot = match.groups()
    prev_capitalised, prev_is_name, next_is_name = _context(text, match.start(), match.end())
    title, after_name = TITLES.get(word), AFTER_NAMES.get(word)
    keep_dot = "." if dot and _ended(text, match.end()) else ""
    if title and after_name:  # St., Dr.: Saint/Doctor before a name, Street/Drive after one
        if next_is_name and not prev_is_name:
            return title
        if prev_capitalised:
            return after_name + keep_dot
        return match.group(0)
    if title:
        if dot or (word in _UNDOTTED_TITLES and next_is_name):
            return title
        return match.group(0)
    if prev_capitalised and (dot or word in ("Jr", "Sr")):
        return after_name + keep_dot
    return match.group(0)


def expand(text: str) -> str:
    def fixed(match: re.Match) -> str:
        can_end = match.group(1) in CAN_END_A_SENTENCE
        return FIXED[match.group(1)] + ("." if can_end and _ended(text, match.end()) else "")

    text = _WORDS.sub(lambda m: _person(text, m), text)
    text = _FIXED.sub(fixed, text)
    text = _NUMBERED.sub(lambda m: NUMBERED[m.group(1)] + " ", text)

    def initialism(match: re.Match) -> str:
        letters = " ".join(match.group(1).replace(".", ""))
        return letters + ("." if _ended(text, match.end()) else "")

    return _INITIALISM.sub(initialism, text)
