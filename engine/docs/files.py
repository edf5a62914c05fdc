"""The files of a collection, read as text with their structure, and every way a file can be
hostile bounded: what cannot be read safely is skipped with a one-line reason, never indexed
half-way and never allowed to take the machine's memory.

- Size: a file over MAX_FILE_BYTES is skipped (a 2 GB PDF would hold the index for hours).
- DOCX is a zip: its members' declared sizes and compression ratio are checked before any parser
  opens it (a zip bomb named .docx).
- Text that is not text (NUL bytes, not UTF-8) is skipped, whatever its name says.
- Folders are walked without following symbolic links (no loops; a folder the user names may itself
  be a link); a linked file is read once, by its real path; unreadable folders and files that
  vanish mid-walk are reasons, not errors.
- PDF: pypdf, page by page (citations name the page), at most MAX_PAGES pages.
- HTML and DOCX: markitdown, into Markdown (headings kept for the chunker).
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

MAX_FILE_BYTES = 64 << 20
MAX_UNZIPPED_BYTES = 256 << 20  # a DOCX's members together
MAX_ZIP_RATIO = 100  # uncompressed / compressed: ordinary documents are under 10, bombs are thousands
MAX_ZIP_MEMBERS = 10_000
MAX_PAGES = 5_000
MAX_TEXT_CHARS = 20_000_000  # of text from one file, after conversion
TEXT = {".txt", ".text", ".md", ".markdown", ".rst", ".csv", ".log"}
HTML = {".html", ".htm"}
KINDS = TEXT | HTML | {".pdf", ".docx"}


class Unreadable(Exception):
    """Why a file is skipped, in one line."""


@dataclass(frozen=True)
class Section:
    """Text of a file in Markdown (headings as ``#`` lines), with the page it is on (PDF)."""

    text: str
    page: int | None = None


@dataclass(frozen=True)
class Skipped:
    path: Path
    reason: str


def walk(roots: list[Path]) -> Iterator[Path | Skipped]:
    """The documents under ``roots`` (files or folders), each once, by its real path."""
    seen: set[Path] = set()

    def one(path: Path) -> Path | Skipped | None:
        try:
            real = path.resolve(strict=True)
        except (OSError, RuntimeError) as exc:  # a dangling link, a link loop, a file gone
            return Skipped(path, f"cannot be resolved ({type(exc).__name__})")
        if real in seen or real.suffix.lower() not in KINDS:
            return None
        seen.add(real)
        return real if real.is_file() else None

    for root in roots:
        if root.is_dir():  # a folder the user named, through a link or not: links inside are not followed
            problems: list[OSError] = []
            for folder, dirs, names in os.walk(root.resolve(), onerror=problems.append, followlinks=False):
                dirs.sort()
                for name in sorted(names):
                    found = one(Path(folder) / name)
                    if found is not None:
                        yield found
            for problem in problems:  # an unreadable folder: said, the rest indexed
                yield Skipped(Path(problem.filename or root), f"cannot be listed ({problem.strerror})")
        elif root.exists() or root.is_symlink():
            found = one(root)
            if found is not None:
                yield found
            elif root.suffix.lower() not in KINDS and root.is_file():
                yield Skipped(root, f"not a kind of document indexed here ({', '.join(sorted(KINDS))})")
        else:
            yield Skipped(root, "does not exist")


def read(path: Path) -> list[Section]:
    """The file's text, in sections; ``Unreadable`` says why not."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise Unreadable(f"cannot be read ({exc.strerror or type(exc).__name__})") from None
    if size > MAX_FILE_BYTES:
        raise Unreadable(f"{size >> 20} MB is over the {MAX_FILE_BYTES >> 20} MB a document may have")
    suffix = path.suffix.lower()
    try:
        if suffix in TEXT:
            sections = [Section(_text(path.read_bytes()))]
        elif suffix == ".pdf":
            sections = _pdf(path)
        else:
            if suffix == ".docx":
                _check_zip(path)
            sections = [Section(_markdown(path))]
    except Unreadable:
        raise
    except OSError as exc:  # vanished, permissions changed mid-index
        raise Unreadable(f"cannot be read ({exc.strerror or type(exc).__name__})") from None
    except Exception as exc:  # noqa: BLE001 - a parser's failure on a hostile file is a reason, not a crash
        raise Unreadable(f"could not be parsed ({type(exc).__name__}: {str(exc)[:120]})") from None
    if sum(len(s.text) for s in sections) > MAX_TEXT_CHARS:
        raise Unreadable(f"holds over {MAX_TEXT_CHARS:,} characters of text")
    if not any(s.text.strip() for s in sections):
        raise Unreadable("has no text (a scanned PDF needs OCR first)")
    return sections


def _text(data: bytes) -> str:
    if b"\0" in data[:8192]:
        raise Unreadable("is binary, not text (NUL bytes), whatever its name says")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise Unreadable("is not UTF-8 text") from None


def _check_zip(path: Path) -> None:
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except zipfile.BadZipFile:
        raise Unreadable("is not a DOCX (not a zip archive)") from None
    if len(members) > MAX_ZIP_MEMBERS:
        raise Unreadable(f"holds {len(members)} archive members; a document has far fewer")
    unzipped = sum(m.file_size for m in members)
    packed = sum(m.compress_size for m in members) or 1
    if unzipped > MAX_UNZIPPED_BYTES or unzipped / packed > MAX_ZIP_RATIO:
        raise Unreadable(f"would unpack to {unzipped >> 20} MB from {packed >> 10} KB (a zip bomb?)")


def _markdown(path: Path) -> str:
    from markitdown import MarkItDown

    return str(MarkItDown(enable_plugins=False).convert(path).markdown or "")


def _pdf(path: Path) -> list[Section]:
    from pypdf import PdfReader

    reader = PdfReader(path)
    if len(reader.pages) > MAX_PAGES:
        raise Unreadable(f"has {len(reader.pages)} pages, over the {MAX_PAGES} a document may have")
    return [Section(page.extract_text() or "", number) for number, page in enumerate(reader.pages, 1)]
