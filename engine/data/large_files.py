"""Large dataset files as memory-mapped Arrow rows (``datasets``), instead of Python objects all held at once.

Read whole, a 40 MB JSON Lines file costs its bytes, its decoded text and a dict per row at the same time:
several times its size. Here ``datasets.load_dataset`` converts JSON Lines, CSV/TSV or Parquet to Arrow files
in a temporary folder under the data directory and maps them into memory; a row becomes a dict only while it
is looked at, and a record's line number is worked out only when somebody asks for it.

The validation report must not depend on the reader, so one streaming pass compares every Arrow row with the
row the whole-file reader would have made (parsed line by line with the same code, never all in memory). The
few rows where Arrow differs (an integer it widened to a float, a string it parsed as JSON, a key written as
null) keep the exact row; a file with many such rows, or one Arrow cannot read at all (a malformed line,
another encoding), is declined: :func:`load_large_file` returns None and ``loading`` reads it whole.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import json
import shutil
import tempfile
import warnings
import weakref
from array import array
from bisect import bisect_right
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.paths import subdir
from core.text import bom_encoding
from engine.data.csv_rows import (
    is_blank,
    note_overlong,
    read_header,
    record_of,
    rows_with_lines,
    sniff_delimiter,
    table_kind,
)
from engine.data.schema import FileInfo, LoadedData
from engine.data.sniff import (
    fingerprint_file,
    json_lines_renamed,
    parquet_renamed,
    refuse_binary,
    refuse_non_datasets,
)

SAMPLE_BYTES = 1 << 20  # what is read to decide the route, like core.text's guess sample
MAX_EXACT_ROWS = 10_000  # rows kept as exact Python dicts where Arrow differs; beyond that the file is read whole
_BATCH = 1000
# datasets parses JSON Lines this much at a time, and its first chunk also as Python objects (to spot fields of
# mixed types): 1 MiB keeps that transient small (its default of 10 MiB costs ~100 MiB at the peak).
_JSON_CHUNK_BYTES = 1 << 20
_JSON_NAMES = (".json", ".jsonl", ".ndjson")
_TABLE_NAMES = (".csv", ".tsv")
_BLANK = object()  # a CSV row the whole-file reader skips


class _Decline(Exception):
    """This file is read whole instead (``load_large_file`` returns None)."""


# ----------------------------------------------------------------------------------------- lazy sequences


class LineNumbers(Sequence[int | None]):
    """The line each record starts on, stored only where the step from one record to the next is not one line.

    A file with a handful of blank lines or multi-line cells needs a handful of entries, not one per row.
    With no line ever added (Parquet) every record's line is None.
    """

    def __init__(self) -> None:
        self._rows = array("q")
        self._offsets = array("q")
        self._count = 0

    def add(self, row: int, line: int | None) -> None:
        """Record that 1-based ``row`` (the next one) starts on ``line``."""
        self._count = row
        if line is not None and (not self._offsets or self._offsets[-1] != line - row):
            self._rows.append(row)
            self._offsets.append(line - row)

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self._count))]
        index = index + self._count if index < 0 else index
        if not 0 <= index < self._count:
            raise IndexError("line index out of range")
        if not self._rows:
            return None
        row = index + 1
        return row + self._offsets[bisect_right(self._rows, row) - 1]


class ArrowRecords(Sequence[Any]):
    """Rows of a memory-mapped Arrow dataset, read a batch at a time; never all held as Python objects at once.

    ``rows(start, stop)`` turns a slice of the dataset into records; ``exact`` replaces the records where
    Arrow's differs from the whole-file reader's. The temporary Arrow cache is removed with this object.
    """

    def __init__(self, count: int, rows: Callable[[int, int], list[Any]], exact: dict[int, Any], cache: Path):
        self._count = count
        self._rows = rows
        self._exact = exact
        weakref.finalize(self, shutil.rmtree, cache, True)

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            start, stop, step = index.indices(self._count)
            if step != 1:
                return [self[i] for i in range(start, stop, step)]
            return self._read(start, stop) if start < stop else []
        index = index + self._count if index < 0 else index
        if not 0 <= index < self._count:
            raise IndexError("record index out of range")
        return self._read(index, index + 1)[0]

    def __iter__(self) -> Iterator[Any]:
        for start in range(0, self._count, _BATCH):
            yield from self._read(start, min(start + _BATCH, self._count))

    def _read(self, start: int, stop: int) -> list[Any]:
        rows = self._rows(start, stop)
        if self._exact:
            rows = [self._exact.get(i, row) for i, row in enumerate(rows, start=start)]
        return rows


# ----------------------------------------------------------------------------------------- entry point


def load_large_file(path: Path) -> LoadedData | None:
    """Arrow-backed rows of a big JSON Lines, CSV/TSV or Parquet file, or None to read it whole.

    Refusals that need only the first bytes (a PDF named .csv, a licence named .ndjson) are raised here with
    the whole-file reader's words, so a large wrong file is refused without being read.
    """
    ext = path.suffix.lower()
    with open(path, "rb") as fh:
        sample = fh.read(SAMPLE_BYTES)
    try:
        if sample.startswith(b"PAR1"):
            return _load_parquet(path, ext)
        head = _text_head(sample, ext, path.name)
        if head is None:
            return None
        if ext in _JSON_NAMES and _starts_json_lines(head):
            return _load_json_lines(path, ext)
        if ext in _TABLE_NAMES and head.lstrip()[:1] not in ("[", "{") and "\n" in head:
            return _load_table(path, ext, sniff_delimiter(head.lstrip("\ufeff").split("\n", 1)[0], ext))
    except _Decline:
        return None
    return None


def _text_head(sample: bytes, ext: str, name: str) -> str | None:
    """The sample as text, when the file is UTF-8 (with or without BOM) and not refused; None to read it whole."""
    if ext not in _JSON_NAMES + _TABLE_NAMES:
        return None
    refuse_binary(sample, name)
    bom = bom_encoding(sample)
    if bom and bom[0] != "utf-8-sig":
        return None
    try:  # not final: the sample may end inside a character
        head = codecs.getincrementaldecoder("utf-8")().decode(sample[bom[1] if bom else 0 :], final=False)
    except UnicodeDecodeError:
        return None
    refuse_non_datasets(head[:3000], ext, name)
    return head if head.strip() else None


def _starts_json_lines(head: str) -> bool:
    """Whether the whole-file reader would read JSON Lines: a first line that is an object, and more after it."""
    first, newline, rest = head.lstrip().partition("\n")
    if not newline or not rest.strip() or not first.startswith("{"):
        return False
    try:
        return isinstance(json.loads(first), dict)
    except json.JSONDecodeError:
        return False


def _info(path: Path, kind: str, encoding: str = "utf-8") -> FileInfo:
    """What the report says about the file; the hash is streamed, as the file is never read whole."""
    return FileInfo(path=path, kind=kind, encoding=encoding, size_bytes=path.stat().st_size,
                    sha256=fingerprint_file(path))


# ----------------------------------------------------------------------------------------- per format


def _load_json_lines(path: Path, ext: str) -> LoadedData:
    """JSON Lines through datasets' JSON builder; every row checked against ``json.loads`` of its line."""
    dataset, cache = _arrow_dataset("json", path, parse_agent_traces=False, chunksize=_JSON_CHUNK_BYTES)
    with _removed_on_decline(cache):
        rows = _json_rows(dataset)
        check = _compare(_batches(rows, len(dataset)), _json_line_records(path))
        warnings = [json_lines_renamed(path.name)] if ext == ".json" else []
        records = ArrowRecords(len(dataset), rows, check.exact, cache)
    return LoadedData(records=records, info=_info(path, "jsonl"), lines=check.lines, warnings=warnings)


def _load_table(path: Path, ext: str, delimiter: str) -> LoadedData:
    """CSV/TSV through datasets' CSV builder (pandas), every cell read as text; rows checked against csv's."""
    with open(path, encoding="utf-8-sig", newline="") as fh:
        header = read_header(csv.reader(fh, delimiter=delimiter), path.name)
    columns = [f"c{i}" for i in range(len(header))]
    dataset, cache = _arrow_dataset(
        "csv", path, sep=delimiter, names=columns, header=0, usecols=list(range(len(columns))),
        features=_string_features(columns), keep_default_na=False, encoding="utf-8-sig",
    )
    with _removed_on_decline(cache):
        warnings: list[str] = []
        check = _compare(_batches(_table_rows(dataset, header), len(dataset)),
                         _csv_records(path, delimiter, warnings), blank=_blank_record)
        if check.skip:  # blank rows pandas kept; the whole-file reader leaves them out
            import numpy as np

            dataset = dataset.select(np.delete(np.arange(len(dataset)), check.skip))
        records = ArrowRecords(len(dataset), _table_rows(dataset, header), check.exact, cache)
    info = _info(path, table_kind(delimiter))
    return LoadedData(records=records, info=info, lines=check.lines, warnings=warnings)


def _load_parquet(path: Path, ext: str) -> LoadedData:
    """Parquet through datasets' Parquet builder; rows as ``pyarrow``'s ``to_pylist`` gives them, as when read whole."""
    dataset, cache = _arrow_dataset("parquet", path)
    with _removed_on_decline(cache):
        rows = _plain_rows(dataset.with_format("arrow"))
        check = _compare(_batches(rows, len(dataset)), _parquet_records(path))
        records = ArrowRecords(len(dataset), rows, check.exact, cache)
    warnings = [parquet_renamed(path.name, ext)] if ext != ".parquet" else []
    return LoadedData(records=records, info=_info(path, "parquet", "binary"), lines=check.lines, warnings=warnings)


# ----------------------------------------------------------------------------------------- datasets


@contextlib.contextmanager
def _quiet_datasets() -> Iterator[None]:
    """No progress bars, log lines or warnings while loading (a declined file is expected); restored after.

    Done here rather than on import, so that training's own ``datasets`` progress stays as the user set it.
    """
    import datasets

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bars_were_off, verbosity = datasets.are_progress_bars_disabled(), datasets.logging.get_verbosity()
        datasets.disable_progress_bars()
        datasets.logging.set_verbosity(datasets.logging.CRITICAL)
        try:
            yield
        finally:
            datasets.logging.set_verbosity(verbosity)
            if not bars_were_off:
                datasets.enable_progress_bars()


def _arrow_dataset(builder: str, path: Path, **options: Any) -> tuple[Any, Path]:
    """``datasets.load_dataset`` into a new temporary cache under the data directory (memory-mapped Arrow)."""
    cache = Path(tempfile.mkdtemp(prefix="arrow-", dir=subdir("tmp")))
    try:
        import datasets

        with _quiet_datasets():
            dataset = datasets.load_dataset(builder, data_files=str(path), split="train", cache_dir=str(cache),
                                            **options)
    except Exception:  # datasets, pyarrow and pandas raise many types for a file they cannot read
        shutil.rmtree(cache, ignore_errors=True)
        raise _Decline from None
    finally:  # the conversion's buffers are free now, but the allocator keeps them unless asked
        import pyarrow

        pyarrow.default_memory_pool().release_unused()
    if not len(dataset) or not dataset.column_names:
        shutil.rmtree(cache, ignore_errors=True)
        raise _Decline
    return dataset, cache


@contextlib.contextmanager
def _removed_on_decline(cache: Path) -> Iterator[None]:
    """Remove the temporary Arrow cache if the file is declined (or refused) while it is being checked."""
    try:
        yield
    except BaseException:
        shutil.rmtree(cache, ignore_errors=True)
        raise


def _string_features(columns: list[str]) -> Any:
    """Every CSV column as text, as the csv module reads it: no numbers, dates or NaN guessed by pandas."""
    import datasets

    return datasets.Features({c: datasets.Value("string") for c in columns})


def _json_rows(dataset: Any) -> Callable[[int, int], list[Any]]:
    """Rows of a JSON Lines dataset as dicts, without the keys Arrow added to rows that lacked them."""

    def rows(start: int, stop: int) -> list[Any]:
        batch = dataset[start:stop]
        return [_without_none(dict(zip(batch, values, strict=True))) for values in zip(*batch.values(), strict=True)]

    return rows


def _table_rows(dataset: Any, header: list[str]) -> Callable[[int, int], list[Any]]:
    """Rows of a CSV dataset as dicts under the file's (stripped) column names; unnamed columns left out."""
    named = [(f"c{i}", h) for i, h in enumerate(header) if h]

    def rows(start: int, stop: int) -> list[Any]:
        batch = dataset[start:stop]
        return [{h: batch[c][j] for c, h in named} for j in range(stop - start)]

    return rows


def _plain_rows(arrow_dataset: Any) -> Callable[[int, int], list[Any]]:
    """Rows straight from Arrow (``to_pylist``), without datasets' feature decoding: as ``pyarrow`` reads them."""

    def rows(start: int, stop: int) -> list[Any]:
        return arrow_dataset[start:stop].to_pylist()

    return rows


def _batches(rows: Callable[[int, int], list[Any]], count: int) -> Iterator[Any]:
    """Every row in order, converted a batch at a time."""
    for start in range(0, count, _BATCH):
        yield from rows(start, min(start + _BATCH, count))


def _without_none(value: Any) -> Any:
    """Arrow gives every row every key any row has (None where missing); the row as written has only its own."""
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_none(v) for v in value]
    return value


def _blank_record(record: dict[str, Any]) -> bool:
    """A CSV row with no text in any cell, as pandas returns the blank rows it keeps."""
    return not any(v and v.strip() for v in record.values())


# ----------------------------------------------------------------------------------------- the exact rows


def _json_line_records(path: Path) -> Iterator[tuple[Any, int]]:
    """(record, line) per non-blank line, parsed as the whole-file reader parses it; declines where it would differ.

    The whole-file reader splits with ``str.splitlines``, so a line holding another line break (U+2028, a lone
    CR...) would be numbered and parsed differently there: such a file is declined, as is one with a line that
    is not a JSON object (datasets would have refused it already) or that is not UTF-8.
    """
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise _Decline from None
            body = (text.removeprefix("\ufeff") if number == 1 else text).removesuffix("\n").removesuffix("\r")
            if body and body.splitlines() != [body]:
                raise _Decline
            if not body.strip():
                continue
            try:
                value = json.loads(body)
            except json.JSONDecodeError:
                raise _Decline from None
            if not isinstance(value, dict):
                raise _Decline
            yield value, number


def _csv_records(path: Path, delimiter: str, warnings: list[str]) -> Iterator[tuple[Any, int]]:
    """(record or _BLANK, line) per row after the header, exactly as the whole-file reader makes them."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            reader = csv.reader(fh, delimiter=delimiter)
            header = read_header(reader, path.name)
            for cells, line in rows_with_lines(reader, path.name):
                if is_blank(cells):
                    yield _BLANK, line
                    continue
                note_overlong(cells, header, line, path.name, warnings)
                yield record_of(cells, header), line
    except UnicodeDecodeError:
        raise _Decline from None


def _parquet_records(path: Path) -> Iterator[tuple[Any, None]]:
    """Rows as the whole-file reader makes them (``pyarrow`` ``to_pylist``), streamed by row group."""
    import pyarrow.parquet as pq

    for batch in pq.ParquetFile(path).iter_batches(batch_size=_BATCH):
        for record in batch.to_pylist():
            yield record, None


@dataclass
class _Comparison:
    lines: LineNumbers = field(default_factory=LineNumbers)
    exact: dict[int, Any] = field(default_factory=dict)  # record index -> the whole-file reader's record
    skip: list[int] = field(default_factory=list)  # Arrow rows that are blank CSV rows the whole-file reader skips


def _compare(arrow: Iterator[Any], exact: Iterator[tuple[Any, int | None]],
             blank: Callable[[Any], bool] | None = None) -> _Comparison:
    """Walk Arrow's rows and the exact records side by side; keep the exact record wherever the two differ.

    ``repr`` is the comparison because it sees what ``==`` forgives: 1 against 1.0 or True, and key order.
    A blank CSV row is matched with Arrow's current row only if that one is blank too (pandas skips some
    blank rows itself). A different number of rows, or too many differences, declines the file.
    """
    result = _Comparison()
    positions = enumerate(arrow)
    current = next(positions, None)
    for record, line in exact:
        if record is _BLANK:
            if current is not None and blank is not None and blank(current[1]):
                result.skip.append(current[0])
                current = next(positions, None)
            continue
        if current is None:
            raise _Decline
        index = current[0] - len(result.skip)
        result.lines.add(index + 1, line)
        if repr(current[1]) != repr(record):
            result.exact[index] = record
            if len(result.exact) > MAX_EXACT_ROWS:
                raise _Decline
        current = next(positions, None)
    if current is not None:
        raise _Decline
    return result
