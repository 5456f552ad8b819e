"""What every book reader returns (`Chapter`) and raises (`BookError`), and the helpers they share:
loading a text source and numbering the non-empty chapters."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from pipeline.contracts.errors import Permanent

Source = str | bytes | os.PathLike
# Control characters other than whitespace: more than 1% of them (or any NUL) means binary data.
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f-\x9f]")


class BookError(Permanent):
    """The book cannot be read: not text, not a valid EPUB, an unsupported format. One line."""


class MissingExtra(BookError):
    """A reader needs an optional dependency that is not installed."""


@dataclass(frozen=True, slots=True)
class Chapter:
    index: int
    title: str
    text: str


def _chapters(parts: list[tuple[str, str]]) -> list[Chapter]:
    """Number the non-empty (title, text) parts contiguously."""
    out: list[Chapter] = []
    for title, text in parts:
        text = re.sub(r"\n[ \t]*(?:\n[ \t]*)+", "\n\n", text.strip())
        if text:
            out.append(Chapter(index=len(out), title=" ".join(title.split()), text=text))
    return out


def _load_text(source: Source) -> tuple[str, str]:
    """(text, name for messages) from a path, raw bytes or text; rejects binary or non-UTF-8."""
    if isinstance(source, str):
        text, name = source, "text"
    else:
        if isinstance(source, bytes):
            data, name = source, "text"
        else:
            path = Path(source)
            name = path.name
            try:
                data = path.read_bytes()
            except OSError as exc:
                raise BookError(f"{name}: cannot read the file ({exc.strerror or exc})") from None
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise BookError(f"{name}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset "
                            f"{exc.start}); save it as UTF-8") from None
    if "\x00" in text or len(_CONTROL.findall(text)) > len(text) // 100:
        raise BookError(f"{name}: looks like binary data, not text")
    return text.replace("\r\n", "\n").replace("\r", "\n"), name
