"""Reading CSV/TSV rows the way the validation report describes them: header checks, rows, their lines.

Both readers use these (the whole-file one builds its records from them, the Arrow-backed one checks pandas'
rows against them), so a CSV gets the same header refusals, skipped blank rows, line numbers and
"extra cells" warnings whatever its size.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from typing import Any

from engine.data.errors import DatasetError

_CANDIDATE_DELIMITERS = (",", ";", "\t", "|")
_MAX_OVERLONG_WARNINGS = 3


def sniff_delimiter(first_line: str, ext: str) -> str:
    """The delimiter of a table: tab for .tsv, else the candidate the header line uses most (comma if none)."""
    if ext == ".tsv":
        return "\t"
    delimiter = max(_CANDIDATE_DELIMITERS, key=first_line.count)
    return delimiter if first_line.count(delimiter) else ","


def table_kind(delimiter: str) -> str:
    """``FileInfo.kind`` of a table read with ``delimiter``."""
    return "tsv" if delimiter == "\t" else "csv"


def read_header(reader: Any, name: str) -> list[str]:
    """The stripped column names; a header that is missing, empty or repeats a name is refused."""
    try:
        header = next(reader)
    except (StopIteration, csv.Error) as exc:
        raise DatasetError(
            f"The CSV header cannot be read ({exc}).",
            where=name,
            code="invalid_csv",
            fix="Export the table again as CSV with a header row.",
        ) from None
    header = [h.strip() for h in header]
    if not any(header):
        raise DatasetError(
            "The first line of the CSV (the header) is empty.",
            where=name,
            code="invalid_csv",
            fix="Put the column names (e.g. instruction,output) on the first line.",
        )
    dupes = sorted({h for h in header if h and header.count(h) > 1})
    if dupes:
        raise DatasetError(
            f"The CSV header repeats the column name(s) {', '.join(dupes)}.",
            where=name,
            code="invalid_csv",
            fix="Give every column a unique name.",
        )
    return header


def rows_with_lines(reader: Any, name: str) -> Iterator[tuple[list[str], int]]:
    """Every row after the header (blank ones too) with the line it starts on; a malformed CSV is refused."""
    start = reader.line_num + 1
    try:
        for cells in reader:
            yield cells, start
            start = reader.line_num + 1
    except csv.Error as exc:
        raise DatasetError(
            f"The CSV is malformed near line {reader.line_num}: {exc}.",
            where=name,
            code="invalid_csv",
            fix='Look for an unclosed quote (") on that line, or export the table again.',
        ) from None


def is_blank(cells: list[str]) -> bool:
    """A row with no text in any cell: spreadsheets export these; they are skipped, not reported."""
    return not any(c.strip() for c in cells)


def note_overlong(cells: list[str], header: list[str], line: int, name: str, warnings: list[str]) -> None:
    """Warn (for the first few rows only) about cells beyond the header, which are ignored."""
    if len(cells) > len(header) and len(warnings) < _MAX_OVERLONG_WARNINGS:
        warnings.append(
            f"Line {line} of '{name}' has {len(cells)} cells but the header has {len(header)}; "
            "extra cells are ignored."
        )


def record_of(cells: list[str], header: list[str]) -> dict[str, str | None]:
    """A row as a dict by column name; missing cells are None, unnamed columns and extra cells are left out."""
    return {h: (cells[i] if i < len(cells) else None) for i, h in enumerate(header) if h}
