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

import html
import os
import posixpath
import re
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

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


# --- Markdown ---------------------------------------------------------------------------------

_MD_FENCE = re.compile(r" {0,3}(`{3,}|~{3,})")
_MD_ATX = re.compile(r" {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*")
_MD_SETEXT = re.compile(r" {0,3}(=+|-+)[ \t]*")
_MD_RULE = re.compile(r" {0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*")
_MD_BULLET = re.compile(r"[ \t]*[-*+][ \t]+(?:\[[ xX]\][ \t]+)?(.*)")
_MD_NUMBERED = re.compile(r"[ \t]*\d{1,9}[.)][ \t]")
_MD_REFDEF = re.compile(r" {0,3}\[[^\]^][^\]]*\]:[ \t]*\S.*")
_MD_FOOTDEF = re.compile(r" {0,3}\[\^[^\]]+\]:[ \t]*(.*)")
_MD_QUOTE = re.compile(r" {0,3}>[ ]?")
_MD_TABLE_RULE = re.compile(r"[ \t]*\|?(?:[ \t]*:?-+:?[ \t]*\|)+(?:[ \t]*:?-+:?[ \t]*)?\|?[ \t]*")
# Every span is bounded ({0,300} rather than *): unbounded spans make a long line full of stray
# brackets or asterisks take quadratic time (minutes for one 100 kB paragraph).
_MD_INLINE = [  # (pattern, replacement), applied in order
    # images: dropped, with the space before them
    (re.compile(r"[ \t]?!\[[^\]\n]{0,300}\](?:\((?:[^()\n]|\([^)\n]{0,300}\)){0,500}\)"
                r"|\[[^\]\n]{0,300}\])"), ""),
    (re.compile(r"\[\^[^\]\n]{1,100}\]"), ""),  # footnote references
    (re.compile(r"<((?:https?|ftp|mailto):[^>\s]{1,2000})>"), r"\1"),  # autolinks
    (re.compile(r"\[([^\]\n]{0,300})\]\((?:[^()\n]|\([^)\n]{0,300}\)){0,500}\)"), r"\1"),
    (re.compile(r"\[([^\]\n]{1,300})\]\[[^\]\n]{0,300}\]"), r"\1"),  # [text][ref]
    (re.compile(r"(`+)[ ]?(.{1,300}?)[ ]?\1"), r"\2"),  # inline code keeps its text
    (re.compile(r"</?[A-Za-z][A-Za-z0-9-]{0,50}(?:\s[^<>]{0,1000})?/?>"), ""),  # inline HTML
    (re.compile(r"(?<!\\)(\*\*|__)(?=\S)(.{1,300}?)(?<=[^\s\\])\1"), r"\2"),
    (re.compile(r"~~(?=\S)(.{1,300}?)(?<=\S)~~"), r"\1"),
    (re.compile(r"(?<![\w*\\])\*(?=[^\s*])(.{1,300}?)(?<=[^\s*\\])\*(?![\w*])"), r"\1"),
    (re.compile(r"(?<![\w\\])_(?=[^\s_])(.{1,300}?)(?<=[^\s_\\])_(?!\w)"), r"\1"),
    (re.compile(r"\\([!-/:-@\[-`{-~])"), r"\1"),  # backslash escapes
]
_MD_SPECIAL = re.compile(r"[*_`\[<!~\\&]")  # a line without these has no inline syntax


def _md_inline(text: str) -> str:
    if not _MD_SPECIAL.search(text):
        return text.strip()
    for pattern, replacement in _MD_INLINE:
        text = pattern.sub(replacement, text)
    return html.unescape(text).strip()


def _md_blocks(text: str) -> list[tuple[int, str]]:
    """The document as (heading level, text) lines; level 0 is a text line, "" a blank line."""
    text = re.sub(r"\A---\n.*?\n(?:---|\.\.\.)\n", "", text, flags=re.DOTALL)  # front matter
    text = _drop_html_comments(text)
    lines = text.split("\n")
    fenced = _fenced_lines(lines)
    out: list[tuple[int, str]] = []
    last = ""  # kind of the last non-blank line: text, list, heading, code, rule
    after_blank = True
    for number, line in enumerate(lines):
        if number in fenced:
            last, after_blank = "code", False
            continue
        if not line.strip():
            out.append((0, ""))
            after_blank = True
            continue
        indented = line.startswith(("    ", "\t"))
        kind = "text"
        if indented and (last == "code" or (after_blank and last != "list")):
            kind = "code"  # an indented code block, not a list item's continuation
        else:
            while quote := _MD_QUOTE.match(line):
                line = line[quote.end():]
            if heading := _MD_ATX.fullmatch(line):
                out.append((len(heading.group(1)), _md_inline(heading.group(2) or "")))
                kind = "heading"
            elif (setext := _MD_SETEXT.fullmatch(line)) and last == "text" and not after_blank:
                out.append((1 if setext.group(1)[0] == "=" else 2, out.pop()[1]))
                kind = "heading"
            elif any(p.fullmatch(line) for p in (_MD_RULE, _MD_REFDEF, _MD_TABLE_RULE)):
                kind = "rule"
            elif footnote := _MD_FOOTDEF.fullmatch(line):
                out.append((0, _md_inline(footnote.group(1))))
            elif bullet := _MD_BULLET.fullmatch(line):
                out.append((0, _md_inline(bullet.group(1))))
                kind = "list"
            else:
                if _MD_NUMBERED.match(line) or (last == "list" and indented):
                    kind = "list"  # ordered items keep their number: dropping it loses text
                stripped = line.strip()
                if stripped.startswith("|") and stripped.endswith("|") and len(stripped) > 1:
                    line = ", ".join(cell.strip() for cell in stripped.strip("|").split("|"))
                out.append((0, _md_inline(line)))
        last, after_blank = kind, False
    return out


def _fenced_lines(lines: list[str]) -> set[int]:
    """Numbers of the lines of fenced code blocks, fences included.

    A fence that is never closed is read as text: dropping the rest of a book for one stray
    ``` would lose far more than it saves.
    """
    fenced: set[int] = set()
    number = 0
    while number < len(lines):
        if opening := _MD_FENCE.match(lines[number]):
            fence = opening.group(1)
            closing = re.compile(rf" {{0,3}}{re.escape(fence[0])}{{{len(fence)},}}[ \t]*")
            end = next((k for k in range(number + 1, len(lines)) if closing.fullmatch(lines[k])),
                       None)
            if end is not None:
                fenced.update(range(number, end + 1))
                number = end
        number += 1
    return fenced


def _drop_html_comments(text: str) -> str:
    """Linear, where a regex would be quadratic on many unclosed `<!--`."""
    kept: list[str] = []
    pos = 0
    while (start := text.find("<!--", pos)) >= 0 and (end := text.find("-->", start + 4)) >= 0:
        kept.append(text[pos:start])
        pos = end + 3
    kept.append(text[pos:])
    return "".join(kept)


def read_markdown(source: Source) -> list[Chapter]:
    """Chapters of a Markdown book, converted to speakable plain text.

    Chapters start at the top-level headings: `#` (ATX or `===` setext), or `##` where the book
    has no `#`, or where it has a single `#` (the book's title) and several `##`. The heading's
    text is the title; text before the first chapter heading is a chapter titled by the higher
    heading above it (the book's title), else "". Lower headings stay in the text as their own
    paragraph. Emphasis, links (their text is kept), inline code marks and HTML tags are
    stripped; images, fenced and indented code blocks, reference definitions, rules and front
    matter are dropped; list items and table rows stay as lines (ordered items keep their
    number); block quotes keep their text.
    """
    text, _ = _load_text(source)
    blocks = _md_blocks(text)
    levels = [level for level, _ in blocks if level]
    if not levels:
        return _chapters([("", "\n".join(line for _, line in blocks))])
    top = min(levels)
    if levels.count(top) == 1 and levels.count(top + 1) >= 2:
        top += 1
    parts: list[tuple[str, str]] = []
    title, body = "", []
    for level, line in blocks:
        if level == top:
            parts.append((title, "\n".join(body)))
            title, body = line, []
        elif 0 < level < top and not title and not "".join(body).strip():
            title = line  # the book's title heading names the front matter
        elif level:
            body.extend(["", line, ""])  # a sub-heading is a paragraph of its own
        else:
            body.append(line)
    parts.append((title, "\n".join(body)))
    return _chapters(parts)


# --- EPUB -------------------------------------------------------------------------------------


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
