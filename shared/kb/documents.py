"""Finding and reading the files a user hands to ``kb ingest``.

Every file that cannot be ingested is rejected with a named reason, and the rest of the
batch goes on: a missing path, an unsupported type, an unreadable or binary file, a file
over the size limit, text that is not UTF-8, an empty document.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

KINDS = {
    ".md": "markdown",
    ".markdown": "markdown",
    ".txt": "text",
    ".text": "text",
    ".html": "html",
    ".htm": "html",
}


class Rejection(StrEnum):
    MISSING = "missing"
    UNSUPPORTED = "unsupported type"
    UNREADABLE = "unreadable"
    BINARY = "binary"
    TOO_LARGE = "too large"
    NOT_UTF8 = "not UTF-8"
    EMPTY = "empty"


class RejectedDocument(ValueError):
    """A document that cannot be ingested, and why."""

    def __init__(self, reason: Rejection, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(detail)


@dataclass(frozen=True)
class DocumentSource:
    source: str  # the normalised absolute path; the document's identity within the tenant
    path: Path

    @property
    def kind(self) -> str:
        return KINDS[self.path.suffix.lower()]


@dataclass(frozen=True)
class Rejected:
    source: str
    reason: Rejection
    detail: str

    def describe(self) -> str:
        return f"{self.source} [{self.reason.value}]: {self.detail}"


@dataclass(frozen=True)
class LoadedDocument:
    source: str
    kind: str
    text: str


def _supported(path: Path) -> bool:
    return path.suffix.lower() in KINDS


def _unsupported(path: Path) -> Rejected:
    return Rejected(
        str(path),
        Rejection.UNSUPPORTED,
        f"file type {path.suffix or '(none)'!r} is not ingested; "
        f"supported: {', '.join(sorted(KINDS))}",
    )


def _folder_files(folder: Path) -> Iterator[Path]:
    """Files under a folder, sorted, without hidden files and folders (.git, .DS_Store)."""
    for child in sorted(folder.rglob("*")):
        hidden = any(part.startswith(".") for part in child.relative_to(folder).parts)
        if not hidden and (child.is_file() or child.is_symlink()):
            yield child


@dataclass
class Discovery:
    sources: list[DocumentSource] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)  # named by the user, not ingestible
    skipped: list[Rejected] = field(default_factory=list)  # other file types found in folders


def source_name(path: Path | str) -> str:
    """A document's identity within its tenant: its absolute path, normalised (without ./,
    .. or //), so the same file named relatively and absolutely is one document. Symbolic
    links are not followed: a link is a document of its own name."""
    return os.path.normpath(os.path.abspath(path))


def discover(paths: Iterable[Path]) -> Discovery:
    """The supported files under the given files and folders (each once), and what was
    left out."""
    found = Discovery()
    seen: set[str] = set()

    def add(path: Path) -> None:
        if source_name(path) not in seen:
            seen.add(source_name(path))
            found.sources.append(DocumentSource(source_name(path), path))

    for path in paths:
        if path.is_dir():
            for child in _folder_files(path):
                if _supported(child):
                    add(child)
                else:
                    found.skipped.append(_unsupported(child))
        elif not path.exists() and not path.is_symlink():
            found.rejected.append(Rejected(str(path), Rejection.MISSING, "does not exist"))
        elif _supported(path):
            add(path)
        else:
            found.rejected.append(_unsupported(path))
    return found


def _read_bytes(path: Path, *, max_bytes: int) -> bytes:
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise RejectedDocument(Rejection.UNREADABLE, "is not a regular file")
        if info.st_size > max_bytes:
            raise RejectedDocument(
                Rejection.TOO_LARGE,
                f"is {info.st_size} bytes; the limit is {max_bytes} (CHORDLINE_KB_MAX_FILE_BYTES)",
            )
        with path.open("rb") as handle:
            raw = handle.read(max_bytes + 1)
    except OSError as exc:
        raise RejectedDocument(
            Rejection.UNREADABLE, f"cannot be read: {exc.strerror or exc}"
        ) from exc
    if len(raw) > max_bytes:  # it grew after stat()
        raise RejectedDocument(
            Rejection.TOO_LARGE, f"is over {max_bytes} bytes (CHORDLINE_KB_MAX_FILE_BYTES)"
        )
    return raw


def _decode(raw: bytes) -> str:
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise RejectedDocument(Rejection.NOT_UTF8, "is UTF-16 (byte-order mark); save it as UTF-8")
    nul = raw.find(b"\x00")  # anywhere: Postgres refuses NUL in text, failing the write group
    if nul >= 0:
        raise RejectedDocument(Rejection.BINARY, f"looks binary (a NUL byte at offset {nul})")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise RejectedDocument(
            Rejection.NOT_UTF8,
            f"is not UTF-8 (invalid byte 0x{raw[exc.start]:02x} at offset {exc.start})",
        ) from exc


def read_document(source: DocumentSource, *, max_bytes: int) -> LoadedDocument:
    """The document's text, or RejectedDocument naming what is wrong with the file."""
    text = _decode(_read_bytes(source.path, max_bytes=max_bytes))
    if not text.strip():
        raise RejectedDocument(Rejection.EMPTY, "is empty")
    return LoadedDocument(source.source, source.kind, text)
