"""Split documents into chunks that respect headings and sentences.

Markdown headings and HTML ``<h1>``-``<h6>`` start sections; a section becomes one chunk
if it fits, otherwise it is cut between paragraphs, then between sentences, never inside a
sentence unless one sentence alone is longer than the chunk size. Each chunk carries the
heading path of its section, so a chunk is understandable on its own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from html.parser import HTMLParser

SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(\[])")
MD_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")


@dataclass(frozen=True)
class Section:
    heading: str
    body: str


@dataclass(frozen=True)
class Chunk:
    ordinal: int
    heading: str
    text: str


def markdown_sections(text: str) -> list[Section]:
    sections: list[Section] = []
    path: list[str] = []
    lines: list[str] = []

    def close() -> None:
        body = "\n".join(lines).strip()
        if body:
            sections.append(Section(" > ".join(path), body))
        lines.clear()

    for line in text.splitlines():
        match = MD_HEADING.match(line)
        if match:
            close()
            level = len(match.group(1))
            del path[level - 1 :]
            path.append(match.group(2).strip())
        else:
            lines.append(line)
    close()
    return sections


class _HtmlToSections(HTMLParser):
    SKIP = frozenset({"head", "title", "script", "style", "noscript", "template"})
    BLOCK = frozenset({"p", "div", "li", "br", "tr", "section", "article", "pre", "blockquote"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skipping = 0
        self._heading_level = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.SKIP:
            self._skipping += 1
        elif re.fullmatch(r"h[1-6]", tag):
            self._heading_level = int(tag[1])
            self.parts.append("\n\n" + "#" * self._heading_level + " ")
        elif tag in self.BLOCK:
            self.parts.append("\n\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIP and self._skipping:
            self._skipping -= 1
        elif re.fullmatch(r"h[1-6]", tag):
            self._heading_level = 0
            self.parts.append("\n\n")

    def handle_data(self, data: str) -> None:
        if not self._skipping:
            self.parts.append(data if not self._heading_level else data.replace("\n", " "))


def html_to_markdown(html: str) -> str:
    parser = _HtmlToSections()
    parser.feed(html)
    parser.close()
    text = "".join(parser.parts)
    return re.sub(r"\n{3,}", "\n\n", re.sub(r"[ \t]+", " ", text)).strip()


def _pieces(body: str, size: int) -> list[str]:
    """Paragraphs, then sentences, then hard cuts, each no longer than size."""
    pieces: list[str] = []
    for paragraph in re.split(r"\n\s*\n", body):
        paragraph = paragraph.strip()
        if not paragraph:
            continue
        if len(paragraph) <= size:
            pieces.append(paragraph)
            continue
        for sentence in SENTENCE_END.split(paragraph):
            while len(sentence) > size:
                cut = sentence.rfind(" ", 0, size)
                cut = cut if cut > size // 2 else size
                pieces.append(sentence[:cut].strip())
                sentence = sentence[cut:].strip()
            if sentence:
                pieces.append(sentence)
    return pieces


def chunk_sections(sections: list[Section], *, size: int) -> list[Chunk]:
    chunks: list[Chunk] = []
    for section in sections:
        current = ""
        for piece in _pieces(section.body, size):
            joiner = "\n\n" if "\n" in piece or current.endswith("\n") else " "
            if current and len(current) + len(joiner) + len(piece) > size:
                chunks.append(Chunk(len(chunks), section.heading, current))
                current = piece
            else:
                current = f"{current}{joiner}{piece}" if current else piece
        if current:
            chunks.append(Chunk(len(chunks), section.heading, current))
    return chunks


def chunk_document(text: str, *, kind: str, size: int) -> list[Chunk]:
    """kind: 'markdown', 'html' or 'text'."""
    if kind == "html":
        text = html_to_markdown(text)
    sections = markdown_sections(text) if kind in {"markdown", "html"} else [Section("", text)]
    return chunk_sections(sections, size=size)


def document_title(text: str, *, kind: str, fallback: str) -> str:
    if kind == "html":
        match = re.search(r"<title[^>]*>(.*?)</title>", text, re.I | re.S)
        if match and match.group(1).strip():
            return match.group(1).strip()[:500]
        text = html_to_markdown(text)
    for line in text.splitlines():
        match = MD_HEADING.match(line)
        if match:
            return match.group(2).strip()[:500]
    return fallback[:500]
