"""Book readers (pipeline/books.py): .txt, .md and .epub files into chapters. No servers."""

import random
import sys
import zipfile

import pytest
from ebooklib import epub
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.text.books import read_book, read_txt
from pipeline.text.chapters import BookError, Chapter, MissingExtra
from pipeline.text.epub import read_epub
from pipeline.text.markdown import read_markdown
from pipeline.contracts.errors import Permanent
from pipeline.text.split import split_text
from tests.conftest import growth_ratio


def titles(chapters: list[Chapter]) -> list[str]:
    return [c.title for c in chapters]


# --- plain text -----------------------------------------------------------------------------------

TXT_BOOK = """The Lighthouse Keeper
by A. Writer

Chapter 1

The lamp went out at nine.
It was lit again at ten.

CHAPTER IV. The Storm
Rain came from the west.

Chapter one of his life had been quiet, he thought.
The next line mentions Chapter 2 in passing.

Chapter Twenty-One: Arrival

They came by boat.
\fA page after a form feed, with no heading.

Chapter 22

Chapter 23

The last words.
"""


def test_txt_chapters_from_several_heading_styles(tmp_path):
    path = tmp_path / "book.txt"
    path.write_text(TXT_BOOK, encoding="utf-8")
    chapters = read_txt(path)
    assert [c.index for c in chapters] == list(range(6))
    # The preamble keeps its text untitled; "Chapter 22" has no text and is dropped.
    assert titles(chapters) == ["", "Chapter 1", "CHAPTER IV. The Storm",
                                "Chapter Twenty-One: Arrival", "", "Chapter 23"]
    assert chapters[0].text == "The Lighthouse Keeper\nby A. Writer"
    assert chapters[1].text == "The lamp went out at nine.\nIt was lit again at ten."
    # Prose that starts with "Chapter one" (lower-case continuation) is not a heading.
    assert chapters[2].text == ("Rain came from the west.\n\nChapter one of his life had been quiet, "
                                "he thought.\nThe next line mentions Chapter 2 in passing.")
    assert chapters[4].text == "A page after a form feed, with no heading."
    assert chapters[5].text == "The last words."
    # The same book given as text or bytes reads the same; a UTF-8 BOM is fine.
    assert read_txt(TXT_BOOK) == chapters
    assert read_txt(b"\xef\xbb\xbf" + TXT_BOOK.encode()) == chapters
    assert read_book(path) == chapters


def test_txt_without_headings_is_one_chapter():
    text = "It was a quiet night.\r\n\r\nNothing happened, and then nothing happened again.\r\n"
    assert read_txt(text) == [
        Chapter(0, "", "It was a quiet night.\n\nNothing happened, and then nothing happened again.")]
    assert read_txt("  \n\n ") == []


def test_binary_or_non_utf8_txt_is_a_book_error(tmp_path):
    garbage = tmp_path / "garbage.txt"
    garbage.write_bytes(random.Random(3).randbytes(4096))
    with pytest.raises(BookError, match="garbage.txt: not UTF-8 text") as caught:
        read_book(garbage)
    assert "\n" not in str(caught.value) and isinstance(caught.value, Permanent)
    zeros = tmp_path / "zeros.txt"
    zeros.write_bytes(b"Chapter 1\n\n" + b"\x00" * 500)
    with pytest.raises(BookError, match="zeros.txt: looks like binary data"):
        read_txt(zeros)
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("Café crème".encode("latin-1"))
    with pytest.raises(BookError, match="save it as UTF-8"):
        read_txt(latin1)
    with pytest.raises(BookError, match="cannot read"):
        read_txt(tmp_path / "missing.txt")


# --- Markdown -------------------------------------------------------------------------------------

MD_BOOK = """---
title: front matter is dropped
---
# The First Day

It was a **bright** and _windy_ morning. See [the map](https://example.com/map_(old)) ![a gull](gull.png).

- bread
- [x] cheese
1. first stop
2. second stop

```python
print("code blocks are not read aloud")
```

## Along the Shore

Text with `inline code`, <em>tags</em>, snake_case_names, 5 * 3 and \\*stars\\*.

> A quoted *line*.

| item | cost |
|------|------|
| tea  | 2    |

The Second Day
==============

Short day.[^1]

[^1]: A footnote, read as text.
[map]: https://example.com/unused

# Empty Chapter

# The Third Day

    indented code is dropped too

The end.
"""


def test_markdown_chapters_at_top_level_headings_as_plain_text(tmp_path):
    path = tmp_path / "book.md"
    path.write_text(MD_BOOK, encoding="utf-8")
    chapters = read_book(path)
    assert titles(chapters) == ["The First Day", "The Second Day", "The Third Day"]
    assert [c.index for c in chapters] == [0, 1, 2]
    assert chapters[0].text == (
        "It was a bright and windy morning. See the map.\n\n"
        "bread\ncheese\n1. first stop\n2. second stop\n\n"
        "Along the Shore\n\n"
        "Text with inline code, tags, snake_case_names, 5 * 3 and *stars*.\n\n"
        "A quoted line.\n\nitem, cost\ntea, 2")
    assert chapters[1].text == "Short day.\n\nA footnote, read as text."
    assert chapters[2].text == "The end."
    assert read_markdown(MD_BOOK) == chapters
    # Every chapter splits into chunks.
    assert all(split_text(c.text) for c in chapters)


def test_markdown_with_stray_syntax_reads_in_linear_time():
    line = "a *b _c [d ![e `f <!-- g **h ~~i <j " * 3000  # 100 kB of unclosed syntax
    ratio = growth_ratio(read_markdown, f"# Title\n\n{line[:len(line) // 10]}", f"# Title\n\n{line}")
    print(f"reading 100 kB of stray syntax takes {ratio:.1f} times as long as 10 kB")
    assert ratio < 50  # linear: 8-30 measured here (caches); quadratic would be about 100
    (chapter,) = read_markdown(f"# Title\n\n{line}")
    assert chapter.text.split()[:3] == ["a", "*b", "_c"]


def test_markdown_uses_second_level_headings_when_first_level_is_missing_or_the_title():
    no_h1 = "Intro line.\n\n## One\n\nFirst.\n\n## Two\n\nSecond.\n\n### Part\n\nMore."
    assert [(c.title, c.text) for c in read_markdown(no_h1)] == [
        ("", "Intro line."), ("One", "First."), ("Two", "Second.\n\nPart\n\nMore.")]
    book_title = "# My Book\n\nBy Someone.\n\n## One\n\nFirst.\n\n## Two\n\nSecond."
    assert [(c.title, c.text) for c in read_markdown(book_title)] == [
        ("My Book", "By Someone."), ("One", "First."), ("Two", "Second.")]
    assert read_markdown("No headings at *all*.") == [Chapter(0, "", "No headings at all.")]
    # A fence that is never closed is text, not the start of a code block eating the book.
    assert read_markdown("# A\n\n```\nstill read\n\n# B\n\nEnd.")[1] == Chapter(1, "B", "End.")


# Lines of plain prose, blank lines and headings in any order: every prose word comes out, in order.
PROSE = st.lists(st.sampled_from(["alpha beta.", "gamma, delta", "Epsilon zeta!", "eta", ""]),
                 max_size=6).map("\n".join)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["", "# Head", "## Sub", "### Low", "Chapter 9", "\f"]),
                          PROSE), max_size=8))
def test_no_prose_is_lost(parts):
    def words(chapters: list[Chapter]) -> list[str]:
        return " ".join(c.text for c in chapters).split()

    # In Markdown "#" lines are headings ("Chapter 9" is prose, a form feed a blank): heading
    # words may come out as titles or as text, the prose is all there, in order.
    markdown = "\n\n".join(f"{head}\n\n{body}" for head, body in parts)
    prose = [body if head.startswith(("#", "\f")) else f"{head} {body}" for head, body in parts]
    assert [w for w in words(read_markdown(markdown)) if w not in ("Head", "Sub", "Low")] == \
        " ".join(prose).split()
    # In plain text, "Chapter 9" and form feeds start chapters; "# Head" lines are prose.
    text = "\n\n".join(f"{head}\n\n{body}" for head, body in parts)
    spoken = [body if head in ("Chapter 9", "\f") else f"{head} {body}" for head, body in parts]
    assert words(read_txt(text)) == " ".join(spoken).split()


# --- EPUB -----------------------------------------------------------------------------------------


def html(body: str) -> str:
    return f"<html><head><title>x</title><style>p {{}}</style></head><body>{body}</body></html>"


def build_epub(path, *, nav: bool = True) -> None:
    book = epub.EpubBook()
    book.set_identifier("test-book")
    book.set_title("Test Book")
    book.set_language("en")
    docs = {}
    for name, content in [
        ("cover", "<p><img src='cover.png' alt='cover'/></p>"),
        ("one", "<h1>Departure</h1><p>They left at <b>dawn</b>.</p><p>It rained<br/>all day.</p>"),
        ("notes", "<h1>Notes</h1><p>Non-linear notes are skipped.</p>"),
        ("two", "<h2>Chapter Two</h2><p>The sea<a epub:type='noteref' href='#n1'>1</a> was calm."
                "</p><script>alert(1)</script><aside epub:type='footnote'>A note.</aside>"),
        ("two-b", "<p>The second file of chapter two.</p>"),
        ("three", "<section><h1>Arrival</h1><p>They   arrived\n  at last &amp; slept.</p></section>"),
        ("appendix", "<h1>Appendix</h1><p>Not in the table of contents.</p>"),
    ]:
        doc = epub.EpubHtml(title=name, file_name=f"text/{name}.xhtml", lang="en")
        doc.content = html(content)
        book.add_item(doc)
        docs[name] = doc
    book.toc = [
        epub.Link("text/one.xhtml", "Chapter One: Departure", "one"),
        (epub.Section("Part Two", href="text/two.xhtml"),
         [epub.Link("text/two.xhtml#middle", "The Middle", "two")]),
        epub.Link("text/three.xhtml", "Arrival", "three"),
    ]
    book.add_item(epub.EpubNcx())
    spine = [docs["cover"], docs["one"], (docs["notes"], "no"), docs["two"], docs["two-b"],
             docs["three"], docs["appendix"]]
    if nav:
        book.add_item(epub.EpubNav())
        spine.insert(0, "nav")
    book.spine = spine
    epub.write_epub(str(path), book)


@pytest.mark.parametrize("nav", [True, False], ids=["epub3-nav", "epub2-ncx"])
def test_epub_chapters_in_spine_order_with_toc_titles(tmp_path, nav):
    path = tmp_path / "book.epub"
    build_epub(path, nav=nav)
    chapters = read_book(path)
    assert [c.index for c in chapters] == [0, 1, 2, 3]
    assert titles(chapters) == ["Chapter One: Departure", "Part Two", "Arrival", "Appendix"]
    # The heading is kept when the title differs from it, dropped when it repeats it.
    assert chapters[0].text == "Departure\n\nThey left at dawn.\n\nIt rained\nall day."
    assert chapters[1].text == ("Chapter Two\n\nThe sea was calm.\n\n"
                                "The second file of chapter two.")
    assert chapters[2].text == "They arrived at last & slept."
    assert chapters[3].text == "Not in the table of contents."
    assert read_epub(path) == chapters


def test_broken_epubs_are_book_errors(tmp_path):
    noise = tmp_path / "noise.epub"
    noise.write_bytes(random.Random(5).randbytes(2048))
    with pytest.raises(BookError, match="noise.epub: not a readable EPUB"):
        read_book(noise)
    no_container = tmp_path / "nocontainer.epub"
    with zipfile.ZipFile(no_container, "w") as zf:
        zf.writestr("mimetype", "application/epub+zip")
        zf.writestr("OEBPS/one.xhtml", html("<p>orphan</p>"))
    with pytest.raises(BookError, match="nocontainer.epub: not a readable EPUB") as caught:
        read_epub(no_container)
    assert "\n" not in str(caught.value)
    with pytest.raises(BookError, match="no such file"):
        read_epub(tmp_path / "missing.epub")


def test_epub_without_the_extra_names_the_extra(tmp_path, monkeypatch):
    path = tmp_path / "book.epub"
    build_epub(path)
    monkeypatch.setitem(sys.modules, "ebooklib", None)  # what an install without the extra sees
    with pytest.raises(MissingExtra, match=r"tts-pipeline\[epub\]"):
        read_book(path)


def test_read_book_rejects_other_formats_and_empty_books(tmp_path):
    pdf = tmp_path / "book.pdf"
    pdf.write_bytes(b"%PDF-1.7")
    with pytest.raises(BookError, match="unsupported book format '.pdf'"):
        read_book(pdf)
    empty = tmp_path / "empty.md"
    empty.write_text("# Only a heading\n\n```\ncode\n```\n")
    with pytest.raises(BookError, match="empty.md: the book holds no text"):
        read_book(empty)
