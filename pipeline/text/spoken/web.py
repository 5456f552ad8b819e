"""URLs, e-mail addresses and symbols standing alone, in a form that reads aloud."""

from __future__ import annotations

import re

_TRAILING = ".,;:!?)]}'\"”’"
_URL = re.compile(
    r"(?<![\w@/.])(?:https?://\S+|www\.\S+|[a-z0-9][a-z0-9-]*(?:\.[a-z0-9-]+)*\.(?:com|org|net|edu|gov|io|dev|co\.uk|org\.uk|ac\.uk)(?:/\S*)?)(?![\w@])",
    re.IGNORECASE,
)
_EMAIL = re.compile(r"(?<![\w.+-])[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_SEPARATORS = {".": "dot", "/": "slash", "-": "dash", "_": "underscore", "@": "at", ":": "colon",
               "?": "question mark", "=": "equals", "&": "and", "#": "hash", "~": "tilde", "+": "plus",
               "%": "percent"}
_PIECE = re.compile("([" + re.escape("".join(_SEPARATORS)) + "])")

# Symbols with spaces on both sides (or at an end): "salt & pepper", "2 + 2 = 4", "yes / no".
_ALONE = re.compile(r"(?:(?<=\s)|^)([&+=/@%×~])(?=\s|$)")
_ALONE_WORDS = {"&": "and", "+": "plus", "=": "equals", "/": "or", "@": "at", "%": "percent", "×": "times",
                "~": "about"}
_LETTERS_AMP = re.compile(r"\b([A-Z]{1,3})&([A-Z]{1,3})\b")  # R&D, AT&T, B&B
_WORD_SLASH = re.compile(r"\b([a-zA-Z]{2,})/([a-zA-Z]{2,})\b(?!/)")  # and/or, he/she
_NUMBER_SIGN = re.compile(r"(?<![\w&])#(?=\d)")


def _read(address: str) -> str:
    pieces = [_SEPARATORS.get(p, p) for p in _PIECE.split(address) if p]
    return " ".join(pieces)


def _split_trailing(found: str) -> tuple[str, str]:
    core = found.rstrip(_TRAILING)
    return core, found[len(core):]


def urls_and_emails(text: str) -> str:
    def email(match: re.Match) -> str:
        core, tail = _split_trailing(match.group(0))
        return _read(core) + tail

    def url(match: re.Match) -> str:
        core, tail = _split_trailing(match.group(0))
        core = re.sub(r"^https?://", "", core, flags=re.IGNORECASE).rstrip("/")
        if core.lower().startswith("www."):
            core = "w w w." + core[4:]
        return _read(core) + tail

    return _URL.sub(url, _EMAIL.sub(email, text))


def symbols(text: str) -> str:
    text = _LETTERS_AMP.sub(r"\1 and \2", text)
    text = _WORD_SLASH.sub(lambda m: f"{m.group(1)} {'' if m.group(1).lower() == 'and' else 'or '}{m.group(2)}", text)
    text = _NUMBER_SIGN.sub("number ", text)
    return _ALONE.sub(lambda m: _ALONE_WORDS[m.group(1)], text)
