"""Footnote and citation markers: dropped, because a listener cannot follow them."""

from __future__ import annotations

import re

# One or more bracketed reference numbers glued to what they annotate: word[1], .[5], [12][13],
# [3, 4], [7-9]. A bracket after a space ("see [1]", a list's "[2] item") is text, not a marker;
# bracketed words ([SPEAKER0], [voice:alice], [sic]) never match.
_REFERENCES = r"\[\d{1,3}(?:\s?[,–-]\s?\d{1,3})*\]"  # [1], [3, 4], [7-9]
_BRACKETED = re.compile(rf"(?<=[^\s\[(])(?:{_REFERENCES})+")
# Superscript digits glued to a word or punctuation: "claim¹²" (but "m²" is a unit: kept).
_SUPERSCRIPT = re.compile(r"(?<=[^\s\d⁰¹²³⁴⁵⁶⁷⁸⁹])([⁰¹²³⁴⁵⁶⁷⁸⁹]+)")
_UNIT_BEFORE = re.compile(r"(?:^|[\s\d])(?:m|cm|mm|km|ft|in|mi|yd|m/s|s)$")
# A parenthesis holding nothing but a pointer to references: "(see [2])", "([3, 4])", "(cf. [5])",
# "(see also [1][2])", "(refs. [7-9])". It says nothing a listener can use: dropped with the space
# before it. A bracket that carries words ("(see Smith [3])") is left alone.
# (The pattern starts with its literal parenthesis, which the regex engine scans for quickly; the
# space before an aside goes in a second, plain replace.)
_CITATION_ASIDE = re.compile(
    rf"\((?:(?:see(?: also)?|cf\.|compare|refs?\.)\s+)?(?:{_REFERENCES}\s?)+\)", re.I)
_GONE = "\x00"


def drop_markers(text: str) -> str:
    if "(" in text and "[" in text and _GONE not in text:
        text = _CITATION_ASIDE.sub(_GONE, text)
        text = text.replace(" " + _GONE, "").replace(_GONE, "")
    text = _BRACKETED.sub("", text)

    def superscript(match: re.Match) -> str:
        before = text[max(0, match.start() - 6) : match.start()]
        return match.group(0) if _UNIT_BEFORE.search(before) else ""

    return _SUPERSCRIPT.sub(superscript, text)
