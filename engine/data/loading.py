"""Reading a dataset file into raw rows, whatever its extension or encoding claims.

Users rename files, export CSVs from Excel in cp1252 or UTF-16, and upload READMEs by mistake. So
the content decides, not the name: bytes are sniffed (Parquet magic, BOMs, binary formats), text
is decoded with a fallback guess, and JSON vs JSON Lines is decided by parsing. Anything that is not
a dataset is refused with a message that says what the file actually is.

Files of :data:`ARROW_MIN_BYTES` or more are first offered to ``large_files``, which keeps their rows in
memory-mapped Arrow instead of Python objects; what it declines is read whole here, like any small file,
so the validation report never depends on which reader read the file.
"""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path
from typing import Any

from core.text import bom_encoding, guess_encoding, reported_name
from engine.data.csv_rows import (
    is_blank,
    note_overlong,
    read_header,
    record_of,
    rows_with_lines,
    sniff_delimiter,
    table_kind,
)
from engine.data.errors import DatasetError
from engine.data.large_files import load_large_file
from engine.data.schema import FileInfo, LoadedData
from engine.data.sniff import (
    SUPPORTED,
    SUPPORTED_WORDS,
    fingerprint_file,
    json_lines_renamed,
    parquet_renamed,
    refuse_binary,
    refuse_non_datasets,
)

__all__ = ["ARROW_MIN_BYTES", "SUPPORTED", "BadLine", "fingerprint_file", "load_dataset_file"]

# From this size on a file is offered to the Arrow-backed reader; below it, reading it whole is cheap.
ARROW_MIN_BYTES = 32 << 20
# Wrapper keys people put around a list of rows: {"data": [...]}.
_WRAPPER_KEYS = ("data", "rows", "examples", "records", "train", "items", "conversations", "samples")


def load_dataset_file(path: str | Path) -> LoadedData:
    """Read ``path`` into raw records (dicts), or raise :class:`DatasetError` saying why not."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(
            f"The file '{path.name}' does not exist or is not a file.",
            code="not_found",
            fix="Check the path, or upload the file again.",
        )
    if path.stat().st_size >= ARROW_MIN_BYTES:
        loaded = load_large_file(path)
        if loaded is not None:
            return loaded
    return _load_whole(path, path.read_bytes())


def _load_whole(path: Path, data: bytes) -> LoadedData:
    """The file's bytes, sniffed, decoded and parsed in memory."""
    name, ext = path.name, path.suffix.lower()
    info_args = {"path": path, "size_bytes": len(data), "sha256": fingerprint_file(path)}
    if not data:
        raise _empty(name, "The file is empty (0 bytes).")
    if data.startswith(b"PAR1"):
        loaded = _load_parquet(data, name, FileInfo(kind="parquet", encoding="binary", **info_args))
        if ext != ".parquet":
            loaded.warnings.append(parquet_renamed(name, ext))
        return loaded
    if ext == ".parquet":
        raise DatasetError(
            "The file is named .parquet but is not a Parquet file (it lacks the 'PAR1' signature).",
            where=name,
            code="wrong_extension",
            fix="Export it again as Parquet, or give it its real extension.",
        )
    refuse_binary(data, name)
    text, encoding, warnings = _decode(data, name)
    refuse_non_datasets(text, ext, name)
    if not text.strip():
        raise _empty(name, "The file contains only whitespace: there are no rows to train on.")
    loaded = _load_text_family(text, ext, name, FileInfo(kind="", encoding=encoding, **info_args))
    loaded.warnings[:0] = warnings
    return loaded


def _empty(name: str, problem: str) -> DatasetError:
    """An empty or whitespace-only file: one fix for both."""
    return DatasetError(
        problem, where=name, code="empty", fix="Export the data again and check the file has rows in it."
    )


def _load_text_family(text: str, ext: str, name: str, info: FileInfo) -> LoadedData:
    """JSON (array, object or lines) when the text starts like JSON, whatever the name; else CSV or plain text."""
    stripped = text.lstrip()
    if stripped[:1] in ("[", "{"):
        loaded = _load_json_family(text, ext, name, info)
        if ext in (".txt", ".csv", ".tsv"):
            loaded.warnings.append(f"'{name}' contains JSON although its name ends in '{ext}'; it was read as JSON.")
        return loaded
    if ext in (".json", ".jsonl", ".ndjson"):
        snippet = stripped.splitlines()[0][:60]
        raise DatasetError(
            f"The file is named {ext} but does not contain JSON: it starts with '{snippet}'.",
            where=name,
            code="wrong_extension",
            fix="If it is a table, save it as .csv; if it is running text, save it as .txt; "
            "otherwise export valid JSON.",
        )
    if ext in (".csv", ".tsv"):
        return _load_csv(text, ext, name, info)
    return _load_text(text, info)


def _decode(data: bytes, name: str) -> tuple[str, str, list[str]]:
    """Decode strictly (core.text's BOM table and guess); refuse what cannot be read, warn when a guess was needed.

    Unlike document ingestion, a training file is never read with replacement characters after a BOM or as
    UTF-8: a wrong character would be learned, so such a file is refused with the position of the bad byte.
    """
    bom = bom_encoding(data)
    if bom:
        codec, size = bom
        try:
            return data[size:].decode(codec), reported_name(codec), []
        except UnicodeDecodeError as exc:
            raise _undecodable(name, reported_name(codec), exc.start + size) from None
    try:
        return data.decode("utf-8"), "utf-8", []
    except UnicodeDecodeError as exc:
        first_error = exc.start
    encoding = guess_encoding(data)
    if encoding is None:
        raise _undecodable(name, "utf-8", first_error)
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError:
        text = data.decode(encoding, errors="replace")
    if "\x00" in text:
        raise DatasetError(
            "The file looks binary (it contains NUL bytes) and is not a readable text dataset.",
            where=name,
            code="not_a_dataset",
            fix=f"Export your examples as {SUPPORTED_WORDS}.",
        )
    line = data[:first_error].count(b"\n") + 1
    warning = (
        f"'{name}' is not UTF-8 (first non-UTF-8 byte on line {line}); it was read as {encoding}. "
        "Check accented letters in the preview; if they look wrong, save the file as UTF-8 and upload it again."
    )
    return text, encoding, [warning]


def _undecodable(name: str, encoding: str, position: int) -> DatasetError:
    """A byte the codec cannot read: its position helps find it in an editor."""
    return DatasetError(
        f"The text cannot be decoded as {encoding} (bad byte at position {position}).",
        where=name,
        code="encoding",
        fix="Open the file in a text editor or spreadsheet and save it again as UTF-8.",
    )


def _load_parquet(data: bytes, name: str, info: FileInfo) -> LoadedData:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(io.BytesIO(data))
    except Exception as exc:  # pyarrow raises several unrelated types for corrupt files
        raise DatasetError(
            f"The Parquet file cannot be read ({exc}).",
            where=name,
            code="corrupt",
            fix="Export it again; the file may be truncated.",
        ) from None
    records = table.to_pylist()
    if not records:
        raise DatasetError("The Parquet file has no rows.", where=name, code="empty", fix="Export the data again.")
    return LoadedData(records=records, info=info, lines=[None] * len(records))


def _load_json_family(text: str, ext: str, name: str, info: FileInfo) -> LoadedData:
    """A JSON array/object, or JSON Lines; decided by parsing, not by the extension."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        if text.lstrip().startswith("[") or (exc.msg != "Extra data" and ext not in (".jsonl", ".ndjson")):
            line_text = text.splitlines()[exc.lineno - 1] if exc.lineno <= len(text.splitlines()) else ""
            raise DatasetError(
                f"The JSON is invalid at line {exc.lineno}, column {exc.colno}: {exc.msg}. "
                f"That line reads: '{line_text.strip()[:80]}'.",
                where=name,
                code="invalid_json",
                fix="Fix that spot (often a missing comma, quote or bracket) or export the file again.",
            ) from None
        return _load_jsonl(text, name, info, ext)
    info = FileInfo(**{**info.__dict__, "kind": "json"})
    warnings: list[str] = []
    if ext in (".jsonl", ".ndjson"):
        warnings.append(f"'{name}' is a single JSON document although its name ends in '{ext}'; it was read as JSON.")
    if isinstance(value, dict):
        value, note = _unwrap_object(value, name)
        warnings.append(note)
    if not isinstance(value, list):
        raise DatasetError(
            f"The JSON holds a single {type(value).__name__}, not a list of rows.",
            where=name,
            code="not_a_dataset",
            fix="Put one object per example in a JSON list: [{...}, {...}].",
        )
    if not value:
        raise DatasetError(
            "The JSON list is empty: there are no rows.",
            where=name,
            code="empty",
            fix="Export the data again and check the file has rows in it.",
        )
    return LoadedData(records=value, info=info, lines=[None] * len(value), warnings=warnings)


def _unwrap_object(value: dict[str, Any], name: str) -> tuple[list[Any], str]:
    """A top-level object is either a wrapper around the rows ({"data": [...]}) or not a dataset."""
    if value and all(isinstance(v, dict) for v in value.values()):
        keys = {k for v in value.values() for k in v}
        if keys & {"file_name", "hf_hub_url", "ms_hub_url", "script_url", "formatting", "columns"}:
            raise DatasetError(
                "This is a dataset catalogue (like LLaMA-Factory's dataset_info.json): it describes other dataset "
                "files and their columns, it is not itself a dataset.",
                where=name,
                code="not_a_dataset",
                fix="Upload one of the data files it lists (its 'file_name' entries).",
            )
    lists = [k for k, v in value.items() if isinstance(v, list) and v and all(isinstance(r, dict) for r in v)]
    preferred = [k for k in lists if k.lower() in _WRAPPER_KEYS]
    if (len(value) == 1 and lists) or (len(lists) == 1 and preferred):
        key = (preferred or lists)[0]
        return value[key], f"'{name}' is one JSON object; the rows were read from its '{key}' list."
    if "messages" in value or "conversations" in value or "instruction" in value:
        raise DatasetError(
            "The file holds a single example (one JSON object), not a list of rows.",
            where=name,
            code="single_object",
            fix="Wrap it in a list ([ {...} ]) or save one object per line as JSON Lines (.jsonl), "
            "and add more examples.",
        )
    raise DatasetError(
        f"The file holds a single JSON object (keys: {', '.join(list(value)[:8])}), not a list of rows.",
        where=name,
        code="single_object",
        fix="Save the examples as a JSON list ([{...}, {...}]) or as JSON Lines (one object per line).",
    )


class BadLine(dict):
    """Placeholder record for a JSON Lines line that did not parse; becomes a row error downstream."""

    def __init__(self, message: str):
        super().__init__()
        self.message = message


def _load_jsonl(text: str, name: str, info: FileInfo, ext: str) -> LoadedData:
    """One object per line; a few bad lines become row errors, a file mostly made of them is refused."""
    records: list[Any] = []
    lines: list[int | None] = []
    bad: list[tuple[int, str]] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as exc:
            message = f"line {number} is not valid JSON ({exc.msg} at column {exc.colno})"
            bad.append((number, message))
            value = BadLine(message)
        if not isinstance(value, dict):
            message = f"line {number} is a JSON {type(value).__name__}, not an object with fields"
            bad.append((number, message))
            value = BadLine(message)
        records.append(value)
        lines.append(number)
    if len(bad) == len(records) or (bad and bad[0][0] == 1 and len(bad) > len(records) // 2):
        raise DatasetError(
            f"The file is not valid JSON Lines: {bad[0][1]}"
            + (f" (and {len(bad) - 1} more bad lines)" if len(bad) > 1 else "")
            + ".",
            where=name,
            code="invalid_json",
            fix='Each line must be one complete JSON object, e.g. {"text": "..."}. Fix that line or export again.',
        )
    warnings = []
    if bad:
        listed = ", ".join(str(n) for n, _ in bad[:10])
        warnings.append(
            f"{len(bad)} line(s) of '{name}' are not valid JSON and are skipped: line {listed}. {bad[0][1]}."
        )
    if ext == ".json":
        warnings.append(json_lines_renamed(name))
    return LoadedData(
        records=records, info=FileInfo(**{**info.__dict__, "kind": "jsonl"}), lines=lines, warnings=warnings
    )


def _load_csv(text: str, ext: str, name: str, info: FileInfo) -> LoadedData:
    """A table with a header row; blank rows are skipped and every record keeps the line it starts on."""
    body = text.lstrip("\ufeff")
    delimiter = sniff_delimiter(body.split("\n", 1)[0], ext)
    reader = csv.reader(io.StringIO(body, newline=""), delimiter=delimiter)
    header = read_header(reader, name)
    records: list[Any] = []
    lines: list[int | None] = []
    warnings: list[str] = []
    for cells, line in rows_with_lines(reader, name):
        if is_blank(cells):
            continue
        note_overlong(cells, header, line, name, warnings)
        records.append(record_of(cells, header))
        lines.append(line)
    if not records:
        raise DatasetError(
            "The CSV has a header but no data rows.", where=name, code="empty", fix="Add rows under the header."
        )
    kind = table_kind(delimiter)
    return LoadedData(records=records, info=FileInfo(**{**info.__dict__, "kind": kind}), lines=lines, warnings=warnings)


def _load_text(text: str, info: FileInfo) -> LoadedData:
    """Plain text: paragraphs separated by blank lines are documents; without blank lines, each line is one."""
    text = text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    lines_of_text = text.split("\n")
    records: list[Any] = []
    lines: list[int | None] = []
    if re.search(r"\n[ \t]*\n", text.strip()):
        block: list[str] = []
        block_start = 1
        for number, line in enumerate([*lines_of_text, ""], start=1):
            if line.strip():
                if not block:
                    block_start = number
                block.append(line)
            elif block:
                records.append({"text": "\n".join(block)})
                lines.append(block_start)
                block = []
    else:
        for number, line in enumerate(lines_of_text, start=1):
            if line.strip():
                records.append({"text": line})
                lines.append(number)
    return LoadedData(records=records, info=FileInfo(**{**info.__dict__, "kind": "txt"}), lines=lines)
