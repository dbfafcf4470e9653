"""The shapes that flow through the dataset layer.

Every supported file format normalises to one internal form, :class:`Example`: either a chat
(``messages`` with roles ``system``/``user``/``assistant``/``tool``, plus an optional JSON tool list)
or a plain ``text`` for continued pre-training. Everything downstream (validation, preview, the
trainer) only ever sees that form, so a new input format is one normaliser, not a new code path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.settings import Settings, setting
from engine.data.errors import Issue

FORMATS = ("alpaca", "sharegpt", "openai", "prompt_completion", "text")
ROLES = ("system", "user", "assistant", "tool")


class ColumnMapping(Settings):
    """Which column holds what, when automatic detection guesses wrong (or refuses).

    Leave a field empty to let detection fill it. ``format`` picks the normaliser; the column names
    then override its defaults. A ``response`` column may hold plain text or one message object
    (``{"from": "gpt", "value": ...}``), which is how a preference file's ``chosen`` column is used
    as the answer.
    """

    format: str = setting("auto", "Dataset format; 'auto' detects it from the columns.", choices=("auto", *FORMATS))
    prompt: str | None = setting(
        None, "Column with the instruction / prompt (alpaca: instruction; prompt_completion: prompt)."
    )
    query: str | None = setting(None, "Optional column appended to the prompt on a new line (alpaca: input).")
    response: str | None = setting(
        None,
        "Column with the answer to learn (alpaca: output; prompt_completion: completion). "
        "Use 'chosen' for preference data.",
    )
    system: str | None = setting(None, "Optional column with a system prompt.")
    history: str | None = setting(None, "Optional column with earlier [prompt, answer] pairs (alpaca).")
    messages: str | None = setting(
        None, "Column with the list of chat turns (sharegpt: conversations; openai: messages)."
    )
    tools: str | None = setting(None, "Optional column with the JSON list of tools the assistant may call.")
    text: str | None = setting(None, "Column with raw text for continued pre-training.")

    def explicit(self) -> dict[str, str]:
        """The columns the user actually named (everything except 'auto'/empty)."""
        return {k: v for k, v in self.to_dict().items() if v and k != "format"}


class DataOptions(Settings):
    """How rows are filtered and cleaned before training (the knobs besides the column mapping)."""

    keep_negative_feedback: bool = setting(
        False,
        "Keep rows whose feedback label is false (KTO data). "
        "Off: those rows are examples of bad answers and are left out.",
        advanced=True,
    )
    placeholders: dict = setting(
        {},
        "Values for {{placeholders}} in the data, e.g. {'name': 'Ada', 'author': 'ACME'}.",
    )


@dataclass(frozen=True)
class Message:
    role: str
    content: str


@dataclass(frozen=True)
class Example:
    """One training example in the internal form. ``row`` is the 1-based row of the source file."""

    row: int
    messages: tuple[Message, ...] = ()
    tools: str | None = None
    text: str | None = None

    @property
    def is_text(self) -> bool:
        return self.text is not None

    def key(self) -> tuple[Any, ...]:
        """What two rows must share to count as duplicates."""
        if self.is_text:
            return ("text", self.text)
        return ("chat", self.tools, tuple((m.role, m.content) for m in self.messages))


@dataclass(frozen=True)
class FileInfo:
    path: Path
    kind: str  # json | jsonl | csv | tsv | parquet | txt
    encoding: str
    size_bytes: int
    sha256: str


@dataclass
class LoadedData:
    """Raw rows as read from the file, before any format is assumed.

    ``lines`` gives, per record, the line of the file it came from when that is meaningful
    (JSON Lines, CSV), so messages can point at the exact line. Both are lists for files read whole and
    lazy read-only sequences for large files (``large_files``), so treat them as sequences.
    """

    records: Sequence[Any]
    info: FileInfo
    lines: Sequence[int | None] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def line_of(self, row: int) -> int | None:
        """The line 1-based ``row`` starts on, or None where lines mean nothing (JSON arrays, Parquet)."""
        return _line_of(self.lines, row)


def _line_of(lines: Sequence[int | None], row: int) -> int | None:
    """``lines[row - 1]``, or None for a row before the first or after the last."""
    return lines[row - 1] if 0 < row <= len(lines) else None


@dataclass
class Detection:
    """What the detector decided and why, in words the user can check."""

    format: str
    mapping: ColumnMapping
    explanation: str
    warnings: list[str] = field(default_factory=list)
    refusal: str | None = None  # when set, prepare() raises DatasetError(refusal)
    refusal_code: str = ""
    refusal_fix: str = ""
    label_column: str | None = None  # boolean good/bad feedback column (KTO); false rows are left out by default


@dataclass
class PreparedData:
    examples: list[Example]
    detection: Detection
    info: FileInfo
    n_rows: int
    issues: list[Issue] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    lines: Sequence[int | None] = field(default_factory=list)

    @property
    def format(self) -> str:
        return self.detection.format

    def line_of(self, row: int) -> int | None:
        """The line of the source file 1-based ``row`` starts on (see :meth:`LoadedData.line_of`)."""
        return _line_of(self.lines, row)


@dataclass
class EncodedExample:
    """Token ids exactly as the trainer feeds them; ``assistant_masks[i] == 1`` means token i is learned."""

    input_ids: list[int]
    assistant_masks: list[int]
    truncated: bool
    row: int = 0
    window: int = 0
    full_length: int = 0  # tokens before truncation / windowing

    @property
    def n_trained(self) -> int:
        return sum(self.assistant_masks)

    def to_trainer_row(self) -> dict[str, list[int]]:
        """The columns TRL's SFTTrainer accepts for pre-tokenised data."""
        return {"input_ids": self.input_ids, "assistant_masks": self.assistant_masks}


@dataclass
class PreviewExample:
    """One example rendered as the model sees it; ``segments`` concatenate to ``text``."""

    row: int
    text: str
    segments: list[tuple[str, bool]]
    n_tokens: int
    n_trained_tokens: int
    truncated: bool
    full_length: int

    def marked(self, left: str = "«", right: str = "»") -> str:
        """The text with trained parts wrapped in markers, for terminals and logs."""
        return "".join(f"{left}{t}{right}" if trained else t for t, trained in self.segments)


@dataclass
class TokenStats:
    count: int = 0
    min: int = 0
    mean: float = 0.0
    p50: int = 0
    p90: int = 0
    p99: int = 0
    max: int = 0
    total_tokens: int = 0
    trained_tokens: int = 0
    n_truncated: int = 0
    n_windows: int = 0
    n_counted_in_part: int = 0  # rows too long to count in full: their lengths are lower bounds


@dataclass
class ValidationReport:
    format: str
    max_length: int
    n_rows: int
    n_examples: int
    n_error_rows: int
    n_warning_rows: int
    n_duplicates: int
    token_stats: TokenStats
    issues: list[Issue] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    token_lengths: list[int] = field(default_factory=list)  # one per example, for the Data tab's histogram

    @property
    def ok(self) -> bool:
        """True when at least one example can be trained on."""
        return self.n_examples > 0

    def counts_by_kind(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for issue in self.issues:
            out[issue.kind] = out.get(issue.kind, 0) + 1
        return out
