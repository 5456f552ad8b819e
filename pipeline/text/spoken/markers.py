"""Footnote and citation markers: dropped, because a listener cannot follow them."""

from __future__ import annotations

import re

# One or more bracketed reference numbers glued to what they annotate: word[1], .[5], [12][13],
# [3, 4], [7-9]. A bracket after a space ("see [1]", a list's "[2] item") is text, not a marker;
# bracketed words ([SPEAKER0], [voice:alice], [sic]) never match.
_BRACKETED = re.compile(r"(?<=[^\s\[(])(?:\[\d{1,3}(?:\s?[,–-]\s?\d{1,3})*\])+")
# Superscript digits glued to a word or punctuation: "claim¹²" (but "m²" is a unit: kept).
_SUPERSCRIPT = re.compile(r"(?<=[^\s\d⁰¹²³⁴⁵⁶⁷⁸⁹])([⁰¹²³⁴⁵⁶⁷⁸⁹]+)")
_UNIT_BEFORE = re.compile(r"(?:^|[\s\d])(?:m|cm|mm|km|ft|in|mi|yd|m/s|s)$")


def drop_markers(text: str) -> str:
    text = _BRACKETED.sub("", text)

    def superscript(match: re.Match) -> str:
        before = text[max(0, match.start() - 6) : match.start()]
        return match.group(0) if _UNIT_BEFORE.search(before) else ""

    return _SUPERSCRIPT.sub(superscript, text)
