"""Markdown books: chapters at the top heading level, block and inline syntax turned into plain text."""

from __future__ import annotations

import html
import re

from pipeline.text.chapters import Chapter, Source, _chapters, _load_text

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
