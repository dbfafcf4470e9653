"""What a file is, decided before any parsing: refusals of files that are not datasets, and their fingerprint.

Both readers (the whole-file one in ``loading`` and the Arrow-backed one in ``large_files``) refuse the same
files with the same words, so the refusals and the notes about misnamed files are defined here once.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from engine.data.errors import DatasetError

SUPPORTED = (".json", ".jsonl", ".ndjson", ".csv", ".tsv", ".txt", ".parquet")
SUPPORTED_WORDS = "JSON (.json), JSON Lines (.jsonl), CSV (.csv/.tsv), Parquet (.parquet) or plain text (.txt)"
_BINARY_MAGIC = {
    b"%PDF": "a PDF document",
    b"PK\x03\x04": "a ZIP archive (also what .xlsx/.docx files are)",
    b"\x89PNG": "a PNG image",
    b"\xff\xd8\xff": "a JPEG image",
    b"GIF8": "a GIF image",
    b"\x1f\x8b": "a gzip-compressed file",
    b"SQLite format 3": "an SQLite database",
    b"\xd0\xcf\x11\xe0": "an old Microsoft Office file (.xls/.doc)",
}
_LICENCE_MARKERS = ("apache license", "permission is hereby granted", "gnu general public license", "mit license")
# Extensions a licence text is never refused under: a dataset may well quote one.
_DATA_EXTENSIONS = (".json", ".jsonl", ".csv", ".tsv", ".parquet")


def fingerprint_file(path: str | Path) -> str:
    """sha256 of the file's bytes, recorded with a run so its data can be identified later."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def refuse_binary(head: bytes, name: str) -> None:
    """Refuse PDFs, archives, images and databases by their magic bytes (only the first bytes are needed)."""
    for magic, what in _BINARY_MAGIC.items():
        if head.startswith(magic):
            raise DatasetError(
                f"This is {what}, not a dataset.",
                where=name,
                code="not_a_dataset",
                fix=f"Export your examples as {SUPPORTED_WORDS}.",
            )


def refuse_non_datasets(text: str, ext: str, name: str) -> None:
    """Files that are text but clearly not training data: docs, configs, licences."""
    head = text[:3000].lower()
    if any(marker in head for marker in _LICENCE_MARKERS) and ext not in _DATA_EXTENSIONS:
        raise DatasetError(
            "This is a software licence text, not a dataset.",
            where=name,
            code="not_a_dataset",
            fix=f"Upload the data file itself: {SUPPORTED_WORDS}.",
        )
    if ext in (".md", ".markdown", ".rst"):
        raise DatasetError(
            "This is a documentation page (Markdown/reStructuredText), not a dataset.",
            where=name,
            code="not_a_dataset",
            fix="Upload the data file it describes. To train on its prose as plain text, save it as .txt.",
        )
    if ext in (".yaml", ".yml", ".toml", ".ini", ".cfg"):
        _refuse_config(text, ext, name)
    if ext not in SUPPORTED and ext:
        raise DatasetError(
            f"Files ending in '{ext}' are not supported.",
            where=name,
            code="unsupported_type",
            fix=f"Export your examples as {SUPPORTED_WORDS}.",
        )


def _refuse_config(text: str, ext: str, name: str) -> None:
    """A config file often names the data file the user meant to upload; say which."""
    refs = sorted(set(re.findall(r"[\w./-]+\.(?:jsonl?|csv|parquet|txt)\b", text)))[:5]
    hint = f" It refers to {', '.join(refs)}." if refs else ""
    raise DatasetError(
        f"This is a configuration file ({ext}), not a dataset.{hint}",
        where=name,
        code="not_a_dataset",
        fix="Upload the data file itself (JSON, JSON Lines, CSV, Parquet or plain text).",
    )


def parquet_renamed(name: str, ext: str) -> str:
    """The note for a Parquet file whose name claims something else."""
    return f"'{name}' is a Parquet file although its name ends in '{ext}'; it was read as Parquet."


def json_lines_renamed(name: str) -> str:
    """The note for a JSON Lines file named .json."""
    return (
        f"'{name}' is JSON Lines (one object per line) although its name ends in .json; it was read as JSON Lines."
    )
