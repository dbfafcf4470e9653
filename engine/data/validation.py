"""Checks before any training, the train/validation split, and the `inspect` summary.

Validation tokenises every example with the same rendering the trainer uses (batched, so 1000 rows take
about a second on CPU) and reports, per row, what will go wrong: truncation that cuts an answer, rows with
nothing left to learn, duplicates; plus token-length percentiles for choosing the maximum length.
"""

from __future__ import annotations

import dataclasses
import math
import random
from pathlib import Path
from typing import Any

from engine.data.encoding import clip_for_stats, preview_from_tokens, tokenize_for_stats
from engine.data.errors import DatasetError, Issue
from engine.data.preference import prepare
from engine.data.schema import ColumnMapping, Example, PreparedData, TokenStats, ValidationReport
from engine.data.stats import TOO_LONG_FIX, fill_stats, too_long
from engine.limits import Limits, limits

_FEW_EXAMPLES = 20


def validate(prepared: PreparedData, tokenizer: Any, max_length: int, train_on: str = "assistant",
             lim: Limits | None = None) -> ValidationReport:
    """Row-level issues (from loading and from tokenisation), token statistics and duplicates.

    Bounded work per row, whatever the file holds: a row longer than ``max_row_chars`` (``lim``, default the
    server's limits) is an error and is not tokenised, and chat rows are tokenised only as far as
    ``max_length`` can keep (:func:`clip_for_stats`), so one 20 MB row costs neither minutes nor gigabytes.
    """
    lim = lim or limits()
    issues = list(prepared.issues)
    line = prepared.line_of
    fitting: list[Example] = []
    for ex in prepared.examples:
        refusal = too_long(ex, lim)
        if refusal:
            issues.append(Issue(ex.row, "error", "too_long", refusal, TOO_LONG_FIX, "", line(ex.row)))
        else:
            fitting.append(ex)
    lengths: list[int] = []
    stats = TokenStats()
    usable: list[Example] = []
    for ex, (tok, clipped) in zip(fitting, _tokenize_bounded(tokenizer, fitting, max_length, train_on), strict=True):
        if isinstance(tok, DatasetError):
            issues.append(Issue(ex.row, "error", tok.code, tok.problem, tok.fix, "", line(ex.row)))
            continue
        found = _count(ex, tok, clipped, max_length, stats, lengths)
        if found:
            issues.append(Issue(ex.row, found[0], "truncated", found[1], found[2], "", line(ex.row)))
        if not found or found[0] != "error":
            usable.append(ex)
    n_duplicates = _duplicates(usable, issues, line)
    fill_stats(stats, lengths)
    issues.sort(key=lambda i: (i.row, i.severity != "error"))
    warnings = list(prepared.warnings) + _file_warnings(len(usable), stats, n_duplicates, max_length)
    error_rows = {i.row for i in issues if i.severity == "error" and i.row}
    warning_rows = {i.row for i in issues if i.severity == "warning" and i.row} - error_rows
    return ValidationReport(
        format=prepared.format, max_length=max_length, n_rows=prepared.n_rows, n_examples=len(usable),
        n_error_rows=len(error_rows), n_warning_rows=len(warning_rows), n_duplicates=n_duplicates,
        token_stats=stats, issues=issues, warnings=warnings, token_lengths=lengths,
    )


def _tokenize_bounded(tokenizer: Any, examples: list[Example], max_length: int,
                      train_on: str) -> list[tuple[Any, bool]]:
    """Per example: (tokens or DatasetError, whether the count is only a lower bound).

    Clipped rows are tokenised from their clipped text; the rare one that then does not even reach past
    ``max_length`` (more than 8 characters per token) is counted whole instead, so no count is ever wrong.
    """
    clipped = [clip_for_stats(ex, max_length) for ex in examples]
    out = [(tok, cut) for tok, (_, cut) in
           zip(tokenize_for_stats(tokenizer, [ex for ex, _ in clipped], train_on), clipped, strict=True)]
    redo = [i for i, (tok, cut) in enumerate(out)
            if cut and not isinstance(tok, DatasetError) and len(tok.ids) <= max_length]
    if redo:
        for i, tok in zip(redo, tokenize_for_stats(tokenizer, [examples[i] for i in redo], train_on), strict=True):
            out[i] = (tok, False)
    return out


def _count(ex: Example, tok: Any, clipped: bool, max_length: int, stats: TokenStats,
           lengths: list[int]) -> tuple[str, str, str] | None:
    """Add one row to the statistics; (severity, message, fix) when truncation matters for it."""
    n = len(tok.ids)
    lengths.append(n)
    stats.total_tokens += n
    if ex.is_text:
        stats.n_windows += math.ceil(n / max_length)
        stats.trained_tokens += n
        return None
    stats.n_windows += 1
    kept = sum(tok.mask[:max_length])
    stats.trained_tokens += kept
    if n <= max_length:
        return None
    stats.n_truncated += 1
    stats.n_counted_in_part += clipped
    size = f"at least {n} tokens (it is too long to count in full)" if clipped else f"{n} tokens"
    if kept == 0:
        return ("error", f"The row has {size} and the answer starts after the first {max_length}, so nothing "
                "would be learned from it.", "Raise the maximum length or shorten the prompt.")
    lost = sum(tok.mask[max_length:])
    if clipped:
        what = f"at least {lost} tokens of the assistant's reply" if lost else "only prompt tokens"
        message = f"The row has {size}; it will be cut at the maximum length {max_length} ({what} are lost)."
    else:
        what = f"{lost} tokens of the assistant's reply" if lost else "only prompt tokens"
        message = (f"The row has {n} tokens; at the maximum length {max_length} the last {n - max_length} "
                   f"are cut off ({what}).")
    return "warning", message, "Raise the maximum length, or shorten or split this example."


def _duplicates(examples: list[Example], issues: list[Issue], line: Any) -> int:
    first: dict[Any, int] = {}
    n = 0
    for ex in examples:
        key = ex.key()
        if key in first:
            n += 1
            issues.append(
                Issue(
                    ex.row,
                    "warning",
                    "duplicate",
                    f"This row is a duplicate of row {first[key]}.",
                    "Delete repeated rows; duplicates make the model memorise them.",
                    "",
                    line(ex.row),
                )
            )
        else:
            first[key] = ex.row
    return n


def _file_warnings(n_examples: int, stats: TokenStats, n_duplicates: int, max_length: int) -> list[str]:
    out = []
    if 0 < n_examples < _FEW_EXAMPLES:
        out.append(
            f"Only {n_examples} usable examples: the model may just memorise them. A few hundred varied "
            "examples work much better."
        )
    if stats.n_truncated:
        longest = f"at least {stats.max}" if stats.n_counted_in_part else str(stats.max)
        out.append(
            f"{stats.n_truncated} example(s) are longer than the maximum length {max_length} and will be cut; "
            f"90% of examples fit in {stats.p90} tokens, the longest has {longest}."
        )
    if n_duplicates:
        out.append(f"{n_duplicates} row(s) repeat an earlier row exactly.")
    return out


def training_examples(prepared: PreparedData, report: ValidationReport) -> list[Example]:
    """The examples to train on: those without an error in the validation report."""
    bad = {i.row for i in report.issues if i.severity == "error"}
    return [ex for ex in prepared.examples if ex.row not in bad]


def split_train_validation(
    examples: list[Example], val_fraction: float, seed: int = 42
) -> tuple[list[Example], list[Example]]:
    """Deterministic split; identical examples always land on the same side (no leak into evaluation)."""
    if val_fraction <= 0 or len(examples) < 2:
        return list(examples), []
    groups: dict[Any, list[Example]] = {}
    for ex in examples:
        groups.setdefault(ex.key(), []).append(ex)
    keys = list(groups)
    random.Random(seed).shuffle(keys)
    target = min(len(examples) - 1, max(1, round(len(examples) * val_fraction)))
    val_keys: set[Any] = set()
    count = 0
    for key in keys:
        if count >= target or len(val_keys) >= len(keys) - 1:
            break
        val_keys.add(key)
        count += len(groups[key])
    train = [ex for ex in examples if ex.key() not in val_keys]
    val = [ex for ex in examples if ex.key() in val_keys]
    return train, val


def inspect_report(
    path: str | Path,
    tokenizer: Any,
    max_length: int = 2048,
    mapping: ColumnMapping | None = None,
    train_on: str = "assistant",
    n_issues: int = 10,
    **options: Any,
) -> dict[str, Any]:
    """JSON-serialisable summary for ``python -m engine inspect --data FILE``; learned text is wrapped in «»."""
    try:
        prepared = prepare(path, mapping, **options)
    except DatasetError as err:
        if err.code == "preference":  # pairs: say what DPO/ORPO would train on instead of only refusing
            return preference_inspect_report(path, tokenizer, max_length, mapping, n_issues)
        return {"file": str(path), "ok": False, "refused": True, "code": err.code, "error": str(err)}
    report = validate(prepared, tokenizer, max_length, train_on)
    usable = training_examples(prepared, report)
    preview = None
    if usable:
        tok = tokenize_for_stats(tokenizer, usable[:1], train_on)[0]
        p = preview_from_tokens(tok, max_length, usable[0].row)
        preview = {
            "row": p.row,
            "tokens": p.n_tokens,
            "trained_tokens": p.n_trained_tokens,
            "truncated": p.truncated,
            "text": p.marked(),
        }
    return {
        "file": str(path),
        "ok": report.ok,
        "refused": False,
        "sha256": prepared.info.sha256,
        "file_type": prepared.info.kind,
        "encoding": prepared.info.encoding,
        "format": prepared.format,
        "explanation": prepared.detection.explanation,
        "mapping": prepared.detection.mapping.explicit(),
        "warnings": report.warnings,
        "rows": report.n_rows,
        "usable_examples": report.n_examples,
        "rows_with_errors": report.n_error_rows,
        "rows_with_warnings": report.n_warning_rows,
        "duplicates": report.n_duplicates,
        "issue_counts": report.counts_by_kind(),
        "issues": [i.to_dict() for i in report.issues[:n_issues]],
        "token_stats": dataclasses.asdict(report.token_stats),
        "max_length": max_length,
        "train_on": train_on,
        "preview": preview,
    }


def preference_inspect_report(path: str | Path, tokenizer: Any, max_length: int, mapping: ColumnMapping | None,
                              n_issues: int = 10) -> dict[str, Any]:
    """``inspect`` for preference pairs: the shape found, counts, issues and the first pair as the model sees it."""
    from engine.data.preference import prepare_preferences, preview_pair, training_preferences, validate_preferences

    prepared = prepare_preferences(path, mapping)
    report = validate_preferences(prepared, tokenizer, max_length)
    usable = training_preferences(prepared, report)
    return {
        "file": str(path), "ok": report.ok, "refused": False, "kind": prepared.kind, "format": prepared.source,
        "explanation": prepared.explanation, "methods": ["dpo", "orpo", "kto"] if prepared.kind == "pairs" else ["kto"],
        "warnings": [*prepared.warnings, *report.warnings], "rows": report.n_rows, "usable_examples": report.n_examples,
        "rows_with_errors": report.n_error_rows, "cut_by_max_length": report.n_cut,
        "issues": [i.to_dict() for i in report.issues[:n_issues]], "max_length": max_length,
        "preview": dataclasses.asdict(preview_pair(tokenizer, usable[0], max_length)) if usable else None,
    }
