"""Files the app hands to people: archives that are never half-written, CSV cells a spreadsheet will not run.

Why here: every zip the app serves (adapter, merged model, demo Space) and every CSV it exports (the
comparison report) goes through these two helpers, so the rules hold everywhere:

* an archive is written under a temporary name and renamed when complete, so an interrupted zip is
  never mistaken for a finished one (the app re-serves a zip that exists);
* a CSV cell that starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return is prefixed with
  ``'`` so Excel, LibreOffice and Google Sheets show it as text instead of running it as a formula
  (CSV injection; answers and questions come from models and uploaded files).
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

#: First characters that make a spreadsheet treat a cell as a formula (OWASP "CSV injection").
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> Any:
    """A value that is safe in a CSV opened by a spreadsheet: formula-like text gets a leading ``'``.

    Numbers stay numbers (a negative score is data, not a formula); only text is neutralised.
    """
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def csv_text(rows: Iterable[Iterable[Any]]) -> str:
    """CSV text of ``rows`` (the header is a row too), every cell passed through :func:`csv_cell`."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    for row in rows:
        writer.writerow([csv_cell(cell) for cell in row])
    return buffer.getvalue()


#: A partial archive older than this was left by a process that was killed mid-write; it is deleted.
STALE_PARTIAL_S = 3600


def _remove_stale_partials(archive: Path) -> None:
    """Delete what killed writers of ``archive`` left behind (a fresh partial may be another writer's)."""
    cutoff = time.time() - STALE_PARTIAL_S
    for partial in archive.parent.glob(f".{archive.stem}.*.partial.zip"):
        try:
            if partial.stat().st_mtime < cutoff:
                partial.unlink()
        except OSError:
            continue


def write_archive(folder: str | Path, archive: str | Path) -> Path:
    """Zip ``folder``'s contents into ``archive`` (a ``.zip`` path) atomically.

    The zip is built under a hidden temporary name in the same folder and renamed into place only when
    complete; a failure removes the partial file. ``os.replace`` is atomic on one file system, so a
    reader sees either no archive or a whole one.
    """
    archive = Path(archive)
    archive.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(archive)
    partial_stem = archive.with_name(f".{archive.stem}.{uuid.uuid4().hex[:8]}.partial")
    partial = partial_stem.with_name(partial_stem.name + ".zip")  # what make_archive writes
    try:
        shutil.make_archive(str(partial_stem), "zip", root_dir=str(folder))
        os.replace(partial, archive)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return archive
