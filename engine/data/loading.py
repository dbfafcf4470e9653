"""Reading a dataset file into raw rows, whatever its extension or encoding claims.

Users rename files, export CSVs from Excel in cp1252 or UTF-16, and upload READMEs by mistake. So
the content decides, not the name: bytes are sniffed (Parquet magic, BOMs, binary formats), text
is decoded with a fallback guess, and JSON vs JSON Lines is decided by parsing. Anything that is not
a dataset is refused with a message that says what the file actually is.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from pathlib import Path
from typing import Any

from engine.data.errors import DatasetError
from engine.data.schema import FileInfo, LoadedData

SUPPORTED = (".json", ".jsonl", ".ndjson", ".csv", ".tsv", ".txt", ".parquet")
_SUPPORTED_WORDS = "JSON (.json), JSON Lines (.jsonl), CSV (.csv/.tsv), Parquet (.parquet) or plain text (.txt)"
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
_BOMS = (
    (b"\xef\xbb\xbf", "utf-8-sig"),
    (b"\xff\xfe\x00\x00", "utf-32"),
    (b"\x00\x00\xfe\xff", "utf-32"),
    (b"\xff\xfe", "utf-16"),
    (b"\xfe\xff", "utf-16"),
)
_LICENCE_MARKERS = ("apache license", "permission is hereby granted", "gnu general public license", "mit license")
# Wrapper keys people put around a list of rows: {"data": [...]}.
_WRAPPER_KEYS = ("data", "rows", "examples", "records", "train", "items", "conversations", "samples")


def fingerprint_file(path: str | Path) -> str:
    """sha256 of the file's bytes, recorded with a run so its data can be identified later."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_dataset_file(path: str | Path) -> LoadedData:
    """Read ``path`` into raw records (dicts), or raise :class:`DatasetError` saying why not."""
    path = Path(path)
    name = path.name
    if not path.is_file():
        raise DatasetError(
            f"The file '{name}' does not exist or is not a file.",
            code="not_found",
            fix="Check the path, or upload the file again.",
        )
    data = path.read_bytes()
    ext = path.suffix.lower()
    info_args = {"path": path, "size_bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    if not data:
        raise DatasetError(
            "The file is empty (0 bytes).",
            where=name,
            code="empty",
            fix="Export the data again and check the file has rows in it.",
        )
    if data.startswith(b"PAR1"):
        loaded = _load_parquet(data, name, FileInfo(kind="parquet", encoding="binary", **info_args))
        if ext != ".parquet":
            loaded.warnings.append(
                f"'{name}' is a Parquet file although its name ends in '{ext}'; it was read as Parquet."
            )
        return loaded
    if ext == ".parquet":
        raise DatasetError(
            "The file is named .parquet but is not a Parquet file (it lacks the 'PAR1' signature).",
            where=name,
            code="wrong_extension",
            fix="Export it again as Parquet, or give it its real extension.",
        )
    _refuse_binary(data, name)
    text, encoding, warnings = _decode(data, name)
    _refuse_non_datasets(text, ext, name)
    if not text.strip():
        raise DatasetError(
            "The file contains only whitespace: there are no rows to train on.",
            where=name,
            code="empty",
            fix="Export the data again and check the file has rows in it.",
        )
    info = FileInfo(kind="", encoding=encoding, **info_args)
    stripped = text.lstrip()
    if stripped[:1] in ("[", "{"):
        loaded = _load_json_family(text, ext, name, info)
        if ext in (".txt", ".csv", ".tsv"):
            loaded.warnings.append(f"'{name}' contains JSON although its name ends in '{ext}'; it was read as JSON.")
    elif ext in (".json", ".jsonl", ".ndjson"):
        snippet = stripped.splitlines()[0][:60]
        raise DatasetError(
            f"The file is named {ext} but does not contain JSON: it starts with '{snippet}'.",
            where=name,
            code="wrong_extension",
            fix="If it is a table, save it as .csv; if it is running text, save it as .txt; "
            "otherwise export valid JSON.",
        )
    elif ext in (".csv", ".tsv"):
        loaded = _load_csv(text, ext, name, info)
    else:
        loaded = _load_text(text, info)
    loaded.warnings[:0] = warnings
    return loaded


def _refuse_binary(data: bytes, name: str) -> None:
    for magic, what in _BINARY_MAGIC.items():
        if data.startswith(magic):
            raise DatasetError(
                f"This is {what}, not a dataset.",
                where=name,
                code="not_a_dataset",
                fix=f"Export your examples as {_SUPPORTED_WORDS}.",
            )


def _decode(data: bytes, name: str) -> tuple[str, str, list[str]]:
    """Decode bytes: BOM first, then strict UTF-8, then charset detection (cp1252, UTF-16 without BOM...)."""
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            try:
                return data.decode(encoding), encoding, []
            except UnicodeDecodeError as exc:
                raise _undecodable(name, encoding, exc) from None
    try:
        return data.decode("utf-8"), "utf-8", []
    except UnicodeDecodeError as exc:
        first_error = exc
    from charset_normalizer import from_bytes

    best = from_bytes(data[: 1 << 20]).best()
    if best is None or best.encoding is None:
        raise _undecodable(name, "utf-8", first_error)
    encoding = _prefer_cp1252(data, best.encoding)
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError:
        text = data.decode(encoding, errors="replace")
    if "\x00" in text:
        raise DatasetError(
            "The file looks binary (it contains NUL bytes) and is not a readable text dataset.",
            where=name,
            code="not_a_dataset",
            fix=f"Export your examples as {_SUPPORTED_WORDS}.",
        )
    line = data[: first_error.start].count(b"\n") + 1
    warning = (
        f"'{name}' is not UTF-8 (first non-UTF-8 byte on line {line}); it was read as {encoding}. "
        "Check accented letters in the preview; if they look wrong, save the file as UTF-8 and upload it again."
    )
    return text, encoding, [warning]


# Latin single-byte code pages that short samples are often mistaken for; cp1252 (Excel on Windows) is far likelier.
_LATIN_LOOKALIKES = {"cp1250", "iso8859_2", "latin_1", "iso8859_15", "cp1257", "iso8859_9", "cp1254", "mac_latin2"}


def _prefer_cp1252(data: bytes, guess: str) -> str:
    if guess.lower() in _LATIN_LOOKALIKES:
        try:
            data.decode("cp1252")
            return "cp1252"
        except UnicodeDecodeError:
            return guess
    return guess


def _undecodable(name: str, encoding: str, exc: UnicodeDecodeError) -> DatasetError:
    return DatasetError(
        f"The text cannot be decoded as {encoding} (bad byte at position {exc.start}).",
        where=name,
        code="encoding",
        fix="Open the file in a text editor or spreadsheet and save it again as UTF-8.",
    )


def _refuse_non_datasets(text: str, ext: str, name: str) -> None:
    """Files that are text but clearly not training data: docs, configs, licences."""
    head = text[:3000].lower()
    if any(marker in head for marker in _LICENCE_MARKERS) and ext not in (
        ".json",
        ".jsonl",
        ".csv",
        ".tsv",
        ".parquet",
    ):
        raise DatasetError(
            "This is a software licence text, not a dataset.",
            where=name,
            code="not_a_dataset",
            fix=f"Upload the data file itself: {_SUPPORTED_WORDS}.",
        )
    if ext in (".md", ".markdown", ".rst"):
        raise DatasetError(
            "This is a documentation page (Markdown/reStructuredText), not a dataset.",
            where=name,
            code="not_a_dataset",
            fix="Upload the data file it describes. To train on its prose as plain text, save it as .txt.",
        )
    if ext in (".yaml", ".yml", ".toml", ".ini", ".cfg"):
        refs = sorted(set(re.findall(r"[\w./-]+\.(?:jsonl?|csv|parquet|txt)\b", text)))[:5]
        hint = f" It refers to {', '.join(refs)}." if refs else ""
        raise DatasetError(
            f"This is a configuration file ({ext}), not a dataset.{hint}",
            where=name,
            code="not_a_dataset",
            fix="Upload the data file itself (JSON, JSON Lines, CSV, Parquet or plain text).",
        )
    if ext not in SUPPORTED and ext:
        raise DatasetError(
            f"Files ending in '{ext}' are not supported.",
            where=name,
            code="unsupported_type",
            fix=f"Export your examples as {_SUPPORTED_WORDS}.",
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
    warnings = []
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
        warnings.append(
            f"'{name}' is JSON Lines (one object per line) although its name ends in .json; it was read as JSON Lines."
        )
    return LoadedData(
        records=records, info=FileInfo(**{**info.__dict__, "kind": "jsonl"}), lines=lines, warnings=warnings
    )


def _load_csv(text: str, ext: str, name: str, info: FileInfo) -> LoadedData:
    first_line = text.lstrip("\ufeff").split("\n", 1)[0]
    if ext == ".tsv":
        delimiter = "\t"
    else:
        delimiter = max((",", ";", "\t", "|"), key=first_line.count)
        if first_line.count(delimiter) == 0:
            delimiter = ","
    reader = csv.reader(io.StringIO(text.lstrip("\ufeff"), newline=""), delimiter=delimiter)
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
    records: list[Any] = []
    lines: list[int | None] = []
    warnings: list[str] = []
    start = reader.line_num + 1
    try:
        for cells in reader:
            if any(c.strip() for c in cells):
                if len(cells) > len(header) and len(warnings) < 3:
                    warnings.append(
                        f"Line {start} of '{name}' has {len(cells)} cells but the header has {len(header)}; "
                        "extra cells are ignored."
                    )
                record = {h: (cells[i] if i < len(cells) else None) for i, h in enumerate(header) if h}
                records.append(record)
                lines.append(start)
            start = reader.line_num + 1
    except csv.Error as exc:
        raise DatasetError(
            f"The CSV is malformed near line {reader.line_num}: {exc}.",
            where=name,
            code="invalid_csv",
            fix='Look for an unclosed quote (") on that line, or export the table again.',
        ) from None
    if not records:
        raise DatasetError(
            "The CSV has a header but no data rows.", where=name, code="empty", fix="Add rows under the header."
        )
    kind = "tsv" if delimiter == "\t" else "csv"
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
