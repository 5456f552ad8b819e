"""`tts-pipeline spoken FILE|-`: a text's chunks in the spoken form, before paying for a book.

The chunks are cut exactly as a job cuts them (`split_speakers`: by speaker tag, then `split_text`
with the chunk settings; `--dialogue` as a job's dialogue mode), each with its speaker, and each is
printed as the synth worker would send it to the model (`pipeline/text/spoken`). A missing or
unreadable file is one line on stderr and exit status 2.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pipeline.contracts.settings import Settings
from pipeline.text.books import read_book
from pipeline.text.chapters import BookError
from pipeline.text.speakers import split_speakers
from pipeline.text.spoken import spoken

BOOK_SUFFIXES = (".txt", ".md", ".markdown", ".epub")


def _chapters(file: str) -> list[tuple[str, str]]:
    """(title, text) pairs: a book's chapters, or the whole text of stdin or another file."""
    if file == "-":
        return [("", sys.stdin.read())]
    path = Path(file)
    if path.suffix.lower() in BOOK_SUFFIXES:
        return [(c.title, c.text) for c in read_book(path)]
    return [("", path.read_text(encoding="utf-8"))]


def run(settings: Settings, file: str, written: bool = False, out=None, dialogue: bool = False) -> int:
    out = out or sys.stdout
    try:
        chapters = _chapters(file)
    except (BookError, OSError, UnicodeDecodeError) as exc:
        print(f"tts-pipeline spoken: cannot read {file}: {exc}", file=sys.stderr)
        return 2
    number = 0
    for index, (title, text) in enumerate(chapters):
        if len(chapters) > 1:
            print(f"# chapter {index}" + (f": {title}" if title else ""), file=out)
        for chunk in split_speakers(text, dialogue, max_words=settings.chunk_max_words,
                                    target_words=settings.chunk_target_words, max_chars=settings.chunk_max_chars):
            number += 1
            who = f"{chunk.speaker}: " if chunk.speaker else ""
            if written:
                print(f"{number:>4}  written: {who}{chunk.text}", file=out)
                print(f"{'':>4}  spoken:  {who}{spoken(chunk.text)}", file=out)
            else:
                print(f"{number:>4}  {who}{spoken(chunk.text)}", file=out)
    return 0
