"""Reading a book file into chapters of plain, speakable text: .txt, .md/.markdown and .epub.

What callers can rely on:

- Every reader returns `Chapter`s in reading order with `index` 0, 1, 2, ... and no gaps. A
  chapter whose text is empty (a heading followed directly by the next heading, a cover page,
  a part divider with no prose) is dropped, and the following chapters are renumbered.
- `Chapter.text` is plain text: paragraphs separated by a blank line, list items and `<br>` lines
  on their own line, never empty, no surrounding whitespace. Chapter headings are not repeated in
  the text; they are in `Chapter.title` (whitespace collapsed, may be "" when the source has no
  heading for that part, e.g. the text before the first "Chapter 1", or a file with no headings).
- Every problem with the input is a `BookError` (a `Permanent` error) with a one-line message
  naming the file and what is wrong; `MissingExtra` (a `BookError`) when reading EPUB without the
  optional `epub` extra installed. `read_book` also raises `BookError` for a book with no text.
- `read_txt` and `read_markdown` take a path (`pathlib.Path` or any `os.PathLike`), the file's raw
  `bytes`, or the text itself as `str`. `read_epub` and `read_book` take a path.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from pipeline.text.chapters import BookError, Chapter, Source, _chapters, _load_text
from pipeline.text.epub import read_epub
from pipeline.text.markdown import read_markdown


def read_book(path: str | os.PathLike) -> list[Chapter]:
    """Read a book, choosing the reader from the file's suffix (.txt, .md, .markdown, .epub)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".txt":
        chapters = read_txt(path)
    elif suffix in (".md", ".markdown"):
        chapters = read_markdown(path)
    elif suffix == ".epub":
        chapters = read_epub(path)
    else:
        raise BookError(f"{path.name}: unsupported book format {suffix or '(no suffix)'!r}; "
                        "use .txt, .md, .markdown or .epub")
    if not chapters:
        raise BookError(f"{path.name}: the book holds no text")
    return chapters


# --- plain text -------------------------------------------------------------------------------

_NUMBER_WORD = (
    r"(?:one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|thirteen|fourteen|"
    r"fifteen|sixteen|seventeen|eighteen|nineteen|twenty|thirty|forty|fifty|sixty|seventy|"
    r"eighty|ninety|hundred)"
)
# "Chapter 3", "CHAPTER IV.", "Chapter Twenty-One: The Storm", "Prologue". Roman numerals must be
# upper case, so "Chapter did..." is prose. A heading line must start a paragraph (see read_txt).
_TXT_HEADING = re.compile(
    rf"""[ \t]*(?:
        (?:chapter|chap\.)[ \t]+(?:\d+|(?-i:[IVXLCDM]+)|{_NUMBER_WORD}(?:[ \t-]+{_NUMBER_WORD})*)
        | prologue | epilogue )
    (?:[ \t]*[.:—–-][ \t]*(?P<sep>.*) | [ \t]+(?P<rest>.*) | [ \t]*)$""",
    re.IGNORECASE | re.VERBOSE,
)


def _is_txt_heading(line: str) -> bool:
    if len(line.strip()) > 80:
        return False
    match = _TXT_HEADING.fullmatch(line)
    # "Chapter one of his life began..." is prose: a title after a bare space must not start in
    # lower case.
    return bool(match) and not (match["rest"] or " ")[0].islower()


def read_txt(source: Source) -> list[Chapter]:
    """Chapters of a plain-text book.

    A new chapter starts at a form feed and at a heading line ("Chapter 7", "CHAPTER IV.",
    "Chapter One: Arrival", "Prologue") that begins a paragraph (first line, or after a blank
    line); the heading line is the title. Text before the first heading is a chapter titled "".
    No headings and no form feeds: the whole text is one chapter titled "".
    """
    text, _ = _load_text(source)
    parts: list[tuple[str, str]] = []
    for page in text.split("\f"):
        title, body = "", []
        after_blank = True
        for line in page.split("\n"):
            if after_blank and _is_txt_heading(line):
                parts.append((title, "\n".join(body)))
                title, body = line.strip(), []
            else:
                body.append(line)
            after_blank = not line.strip()
        parts.append((title, "\n".join(body)))
    return _chapters(parts)
