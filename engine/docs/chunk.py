"""Chunks cut on a document's structure: a heading starts a new chunk, paragraphs are packed up to
TARGET_CHARS, a paragraph longer than that is cut at sentence (then word) boundaries, and each
chunk repeats the end of the one before (OVERLAP_CHARS) so a passage cut in two is still found
whole in one of them. A PDF's pages are chunked one by one, so each chunk cites one page.

About 1000 characters is 200-250 tokens: inside all-MiniLM-L6-v2's 256-token window, so nothing of
a chunk is cut off before it is embedded, and five chunks make a short context for the answer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from autoglm.engine.docs.files import Section

TARGET_CHARS = 1000
OVERLAP_CHARS = 150
_HEADING = re.compile(r"^#{1,6}\s+(.*\S)\s*$")
_SENTENCE = re.compile(r"(?<=[.!?])\s+")


@dataclass(frozen=True)
class Chunk:
    text: str
    heading: str = ""  # the nearest heading above it ("" before the first)
    page: int | None = None


def chunk(sections: list[Section]) -> list[Chunk]:
    out: list[Chunk] = []
    heading = ""  # a PDF page that goes on under the last page's heading keeps it
    for section in sections:
        blocks = _blocks(section.text, heading)
        for under, block in blocks:
            out += [Chunk(text, under, section.page) for text in _pack(block)]
        heading = blocks[-1][0] if blocks else heading
    return out


def _blocks(text: str, heading: str) -> list[tuple[str, list[str]]]:
    """(heading path, its paragraphs) in order; the path joins the headings above ("Trip > Budget"),
    so a passage under a sub-heading still carries the document's subject."""
    blocks: list[tuple[str, list[str]]] = [(heading, [])]
    paragraph: list[str] = []
    path: list[tuple[int, str]] = []  # (level, title) of the headings above

    def close() -> None:
        if paragraph:
            blocks[-1][1].append(" ".join(line.strip() for line in paragraph))
            paragraph.clear()

    for line in text.splitlines():
        match = _HEADING.match(line)
        if match:
            close()
            level = len(line) - len(line.lstrip("#"))
            path = [(lv, t) for lv, t in path if lv < level] + [(level, match.group(1).strip("#* "))]
            blocks.append((" > ".join(t for _, t in path), []))
        elif line.strip():
            paragraph.append(line)
        else:
            close()
    close()
    return [(h, ps) for h, ps in blocks if ps]


def _pieces(paragraph: str) -> list[str]:
    """A paragraph in pieces no longer than TARGET_CHARS: sentences, then words if one is longer."""
    if len(paragraph) <= TARGET_CHARS:
        return [paragraph]
    pieces: list[str] = []
    for sentence in _SENTENCE.split(paragraph):
        while len(sentence) > TARGET_CHARS:
            cut = sentence.rfind(" ", 0, TARGET_CHARS)
            cut = cut if cut > TARGET_CHARS // 2 else TARGET_CHARS
            pieces.append(sentence[:cut])
            sentence = sentence[cut:].lstrip()
        if sentence:
            pieces.append(sentence)
    return pieces


def _pack(paragraphs: list[str]) -> list[str]:
    chunks: list[str] = []
    current = ""
    for piece in (p for paragraph in paragraphs for p in _pieces(paragraph)):
        if current and len(current) + 1 + len(piece) > TARGET_CHARS:
            chunks.append(current)
            tail = current[-OVERLAP_CHARS:]
            tail = tail[tail.find(" ") + 1:] if " " in tail else tail  # from a word's start
            current = tail
        current = f"{current}\n{piece}" if current else piece
    if current:
        chunks.append(current)
    return chunks
