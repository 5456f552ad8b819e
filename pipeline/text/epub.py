"""EPUB books (2 or 3): one chapter per linear spine document, titled from the table of contents."""

from __future__ import annotations

import os
import posixpath
import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

from pipeline.text.chapters import BookError, Chapter, MissingExtra, _chapters


def read_epub(path: str | os.PathLike) -> list[Chapter]:
    """Chapters of an EPUB (2 or 3) in spine order.

    Each linear spine document is a chapter, titled from the table of contents (EPUB 3 nav, or
    the NCX) or else from its first heading. Non-linear items and the navigation document are
    skipped. When the book has a table of contents, a document that is neither in it nor has a
    heading of its own continues the chapter before it (books split one chapter over several
    files). The document's leading heading is dropped from the text when it repeats the title.
    Footnote references and notes marked with epub:type, scripts, styles and images are dropped.
    Needs the optional `epub` extra (ebooklib, AGPL-3.0).
    """
    try:
        from ebooklib import epub
    except ImportError:
        raise MissingExtra("reading .epub files needs the optional extra: "
                           "pip install 'tts-pipeline[epub]'") from None
    path = Path(path)
    if not path.is_file():
        raise BookError(f"{path.name}: no such file")
    try:
        book = epub.read_epub(str(path), options={"ignore_ncx": True})
    except Exception as exc:  # zipfile, lxml, KeyError, EpubException...: the file is not an EPUB
        detail = " ".join(str(exc).split())[:120] or type(exc).__name__
        raise BookError(f"{path.name}: not a readable EPUB ({detail})") from None
    toc = _toc_titles(book.toc)
    parts: list[tuple[str, str]] = []
    for idref, linear in book.spine:
        item = book.get_item_with_id(idref)
        if (str(linear).lower() == "no" or not isinstance(item, epub.EpubHtml)
                or isinstance(item, epub.EpubNav)):
            continue
        name = posixpath.normpath(unquote(item.get_name()))
        blocks = _html_blocks(_decode(item.get_content() or b""))
        heading = next((text for is_heading, text in blocks if is_heading), "")
        title = toc.get(name) or toc.get(posixpath.basename(name)) or ""
        if toc and not title and not heading and parts:
            prev_title, prev_text = parts[-1]
            parts[-1] = (prev_title, prev_text + "\n\n" + "\n\n".join(t for _, t in blocks))
            continue
        title = title or heading
        if blocks and blocks[0][0] and _same(blocks[0][1], title):
            blocks = blocks[1:]
        parts.append((title, "\n\n".join(text for _, text in blocks)))
    return _chapters(parts)


def _same(a: str, b: str) -> bool:
    return " ".join(a.split()).casefold() == " ".join(b.split()).casefold()


def _toc_titles(toc: object) -> dict[str, str]:
    """Document name (and bare file name) → the first table-of-contents title pointing at it."""
    titles: dict[str, str] = {}

    def walk(entries: object) -> None:
        for entry in entries if isinstance(entries, (list, tuple)) else [entries]:
            if isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[1], (list, tuple)):
                walk(entry[0])
                walk(entry[1])
                continue
            href, title = getattr(entry, "href", None), getattr(entry, "title", None)
            if href and title:
                name = posixpath.normpath(unquote(href.split("#", 1)[0]))
                for key in (name, posixpath.basename(name)):
                    titles.setdefault(key, " ".join(title.split()))

    walk(toc)
    return titles


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        declared = re.search(rb"""encoding=["']([\w.-]+)["']""", data[:200])
        try:
            return data.decode(declared.group(1).decode() if declared else "cp1252", "replace")
        except LookupError:
            return data.decode("utf-8", "replace")


def _html_blocks(markup: str) -> list[tuple[bool, str]]:
    parser = _TextParser()
    parser.feed(markup)
    parser.close()
    parser.flush()
    return parser.blocks


class _TextParser(HTMLParser):
    """XHTML → (is_heading, text) paragraphs. Block elements end a paragraph, <br> a line."""

    BLOCKS = frozenset(
        "p div section article main header footer aside blockquote figure figcaption ul ol li dl "
        "dt dd table thead tbody tfoot tr caption pre hr address body html center".split()
    )
    HEADINGS = frozenset("h1 h2 h3 h4 h5 h6".split())
    SKIP = frozenset("head script style title svg math rt rp template nav".split())
    SKIP_TYPES = ("noteref", "footnote", "endnote", "rearnote")

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.blocks: list[tuple[bool, str]] = []
        self.buffer: list[str] = []
        self.heading = False
        self.pre = 0
        self.skip_tag = ""
        self.skip_depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self.skip_tag:
            self.skip_depth += tag == self.skip_tag
            return
        epub_type = dict(attrs).get("epub:type") or ""
        if tag in self.SKIP or any(kind in epub_type for kind in self.SKIP_TYPES):
            self.skip_tag, self.skip_depth = tag, 1
        elif tag == "br":
            self.buffer.append("\n")
        elif tag in ("td", "th"):
            self.buffer.append(" ")
        elif tag in self.HEADINGS or tag in self.BLOCKS:
            self.flush()
            self.heading = tag in self.HEADINGS
            self.pre += tag == "pre"

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "br" and not self.skip_tag:
            self.buffer.append("\n")
        elif tag in self.BLOCKS and not self.skip_tag:
            self.flush()

    def handle_endtag(self, tag: str) -> None:
        if self.skip_tag:
            if tag == self.skip_tag:
                self.skip_depth -= 1
                if not self.skip_depth:
                    self.skip_tag = ""
            return
        if tag in self.HEADINGS or tag in self.BLOCKS:
            self.flush()
            self.heading = False
            self.pre -= tag == "pre" and self.pre > 0

    def handle_data(self, data: str) -> None:
        if not self.skip_tag:
            # Outside <pre>, source line breaks are just spaces (HTML collapses whitespace).
            self.buffer.append(data if self.pre else re.sub(r"\s+", " ", data))

    def flush(self) -> None:
        lines = (" ".join(line.split()) for line in "".join(self.buffer).split("\n"))
        text = "\n".join(line for line in lines if line)
        if text:
            self.blocks.append((self.heading, text))
        self.buffer = []
