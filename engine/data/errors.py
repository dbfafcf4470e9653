"""Errors and per-row problems, worded for someone who has never seen a stack trace.

Every refusal is a :class:`DatasetError` that says what is wrong, where (file, row, field) and how
to fix it. Row-level problems that do not stop the whole file are :class:`Issue` objects, collected
and shown in the validation report.
"""

from __future__ import annotations

from dataclasses import dataclass


class DatasetError(ValueError):
    """The file cannot be used as it is.

    ``code`` is a short machine-readable kind (``"empty"``, ``"invalid_json"``, ``"multimodal"``,
    ``"preference"``, ``"not_a_dataset"``...) so tests and the UI can branch on it without parsing
    the sentence; ``str(error)`` is the full plain-language message.
    """

    def __init__(self, problem: str, *, fix: str = "", where: str = "", code: str = "invalid"):
        self.problem = problem
        self.fix = fix
        self.where = where
        self.code = code
        parts = [f"{where}: {problem}" if where else problem]
        if fix:
            parts.append(f"How to fix: {fix}")
        super().__init__(" ".join(parts))


@dataclass(frozen=True)
class Issue:
    """One problem found in one row (``row`` is 1-based, as a person counts; 0 = the whole file).

    ``severity`` is ``"error"`` (the row is left out of training) or ``"warning"`` (the row is kept).
    ``kind`` groups issues for summaries (``"empty_field"``, ``"roles"``, ``"truncated"``...).
    """

    row: int
    severity: str
    kind: str
    message: str
    fix: str = ""
    field: str = ""
    line: int | None = None

    @property
    def where(self) -> str:
        if self.row == 0:
            return "whole file"
        text = f"row {self.row}"
        if self.line is not None and self.line != self.row:
            text += f" (line {self.line} of the file)"
        return text

    def to_dict(self) -> dict[str, object]:
        return {
            "row": self.row,
            "where": self.where,
            "severity": self.severity,
            "kind": self.kind,
            "field": self.field,
            "message": self.message,
            "fix": self.fix,
        }
