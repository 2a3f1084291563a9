"""Finding and reading files: every bad-input class is rejected by name."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shared.kb.documents import (
    DocumentSource,
    RejectedDocument,
    Rejection,
    discover,
    read_document,
)
from tests.kb.conftest import write_docs

LIMIT = 10_000


def rejection(path: Path) -> Rejection:
    with pytest.raises(RejectedDocument) as caught:
        read_document(DocumentSource(str(path), path), max_bytes=LIMIT)
    return caught.value.reason


def test_folders_yield_supported_files_once_and_skip_hidden_and_other_types(
    tmp_path: Path,
) -> None:
    write_docs(
        tmp_path,
        {
            "a.md": "# A",
            "sub/b.html": "<p>b</p>",
            "sub/c.txt": "c",
            "logo.png": b"\x89PNG",
            "x.pdf": b"%PDF",
            ".git/config.md": "hidden",
            ".notes.md": "hidden",
        },
    )
    found = discover([tmp_path, tmp_path / "a.md", tmp_path / "nope.md", tmp_path / "x.pdf"])
    assert [s.source for s in found.sources] == [
        os.path.normpath(tmp_path / "a.md"),
        os.path.normpath(tmp_path / "sub/b.html"),
        os.path.normpath(tmp_path / "sub/c.txt"),
    ]
    assert [(Path(r.source).name, r.reason) for r in found.skipped] == [
        ("logo.png", Rejection.UNSUPPORTED),
        ("x.pdf", Rejection.UNSUPPORTED),
    ]
    assert [(Path(r.source).name, r.reason) for r in found.rejected] == [
        ("nope.md", Rejection.MISSING),
        ("x.pdf", Rejection.UNSUPPORTED),
    ]


def test_each_bad_file_class_is_named(tmp_path: Path) -> None:
    docs = write_docs(
        tmp_path,
        {
            "binary.md": b"PK\x03\x04\x00\x00binary",
            "empty.md": "  \n\t\n",
            "large.md": "x" * (LIMIT + 1),
            "latin1.txt": "caf\xe9 cr\xe8me".encode("latin-1"),
            "utf16.txt": "hello".encode("utf-16"),
        },
    )
    (docs / "dangling.md").symlink_to(docs / "gone.md")
    os.mkfifo(docs / "pipe.md")
    assert rejection(docs / "binary.md") is Rejection.BINARY
    assert rejection(docs / "empty.md") is Rejection.EMPTY
    assert rejection(docs / "large.md") is Rejection.TOO_LARGE
    assert rejection(docs / "latin1.txt") is Rejection.NOT_UTF8
    assert rejection(docs / "utf16.txt") is Rejection.NOT_UTF8
    assert rejection(docs / "dangling.md") is Rejection.UNREADABLE
    assert rejection(docs / "pipe.md") is Rejection.UNREADABLE  # never blocks on a FIFO


def test_rejections_say_what_is_wrong_and_the_limit(tmp_path: Path) -> None:
    docs = write_docs(tmp_path, {"large.md": "x" * (LIMIT + 5), "latin1.txt": b"ok \xe9"})
    with pytest.raises(RejectedDocument, match=rf"{LIMIT + 5} bytes; the limit is {LIMIT}"):
        read_document(DocumentSource("large.md", docs / "large.md"), max_bytes=LIMIT)
    with pytest.raises(RejectedDocument, match=r"invalid byte 0xe9 at offset 3"):
        read_document(DocumentSource("latin1.txt", docs / "latin1.txt"), max_bytes=LIMIT)


def test_a_nul_byte_anywhere_in_the_file_rejects_it_as_binary(tmp_path: Path) -> None:
    # Postgres refuses NUL in text: one that slipped through would fail the whole write group.
    late = "# Notes\n\n" + "plain text. " * 800 + "\x00 and more text"
    assert late.index("\x00") > 8192
    docs = write_docs(tmp_path, {"late-nul.md": late, "last-byte.txt": "ok" * 4500 + "\x00"})
    assert rejection(docs / "late-nul.md") is Rejection.BINARY
    assert rejection(docs / "last-byte.txt") is Rejection.BINARY
    with pytest.raises(RejectedDocument, match=r"NUL byte at offset 9000\b"):
        read_document(DocumentSource("last-byte.txt", docs / "last-byte.txt"), max_bytes=LIMIT)


def test_a_utf8_file_with_a_byte_order_mark_reads_as_text(tmp_path: Path) -> None:
    docs = write_docs(tmp_path, {"bom.md": "\ufeff# Title\n\nBody.".encode()})
    loaded = read_document(DocumentSource("bom.md", docs / "bom.md"), max_bytes=LIMIT)
    assert loaded.text.startswith("# Title") and loaded.kind == "markdown"
