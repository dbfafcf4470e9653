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

    Leave a field empty to let detection fill it. ``format`` picks the SFT normaliser; the column names
    then override its defaults. A ``response`` column may hold plain text or one message object
    (``{"from": "gpt", "value": ...}``), which is how a preference file's ``chosen`` column can be learned
    with SFT. ``chosen``, ``rejected`` and ``label`` name the columns of preference data (DPO/ORPO pairs,
    KTO feedback) when they are not called that; ``format`` stays 'auto' for those.
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
    chosen: str | None = setting(None, "Preference data (DPO/ORPO): column with the better answer.")
    rejected: str | None = setting(None, "Preference data (DPO/ORPO): column with the worse answer.")
    label: str | None = setting(
        None, "Feedback data (KTO): column marking each answer good (true) or bad (false); LLaMA-Factory's kto_tag."
    )

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
    sft_on_chosen: bool = setting(
        False,
        "Preference data (chosen/rejected pairs) with SFT: learn the chosen answers and ignore the rejected ones. "
        "Off: SFT refuses pair files; choose DPO or ORPO (or KTO) as the training method instead.",
        label="Train on the chosen answers",
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


# ----------------------------------------------------------------------------------------- preference data


@dataclass(frozen=True)
class PreferencePair:
    """One DPO/ORPO pair: the same prompt answered well (``chosen``) and worse (``rejected``).

    ``prompt`` is an optional system turn, then user/assistant turns ending with a user (or tool) turn;
    ``chosen`` and ``rejected`` are assistant turns. ``row`` is the 1-based row of the source file.
    """

    row: int
    prompt: tuple[Message, ...]
    chosen: Message
    rejected: Message
    tools: str | None = None


@dataclass(frozen=True)
class FeedbackExample:
    """One KTO example: a prompt, one assistant answer and whether that answer is good (``desirable``)."""

    row: int
    prompt: tuple[Message, ...]
    completion: Message
    desirable: bool
    tools: str | None = None


@dataclass
class PreparedPreferences:
    """A preference file read and checked: pairs (``kind == "pairs"``) or labelled answers (``"feedback"``).

    ``source`` names the shape that was detected (``"trl"``, ``"llamafactory_sharegpt"``, ``"hh"``...) and
    ``explanation`` says in plain words which columns were used, as :attr:`Detection.explanation` does.
    """

    kind: str
    source: str
    explanation: str
    pairs: list[PreferencePair]
    feedback: list[FeedbackExample]
    info: FileInfo
    n_rows: int
    issues: list[Issue] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    lines: Sequence[int | None] = field(default_factory=list)
    mapping: ColumnMapping = field(default_factory=ColumnMapping)  # the columns used, for the mapping form

    @property
    def n_examples(self) -> int:
        return len(self.pairs) if self.kind == "pairs" else len(self.feedback)

    def line_of(self, row: int) -> int | None:
        """The line of the source file 1-based ``row`` starts on (see :meth:`LoadedData.line_of`)."""
        return _line_of(self.lines, row)


@dataclass
class EncodedPair:
    """A pair as token ids: ``prompt_ids + chosen_ids`` is exactly what SFT would encode for prompt + chosen.

    The ``*_cut`` fields count tokens removed to fit the maximum length (the prompt loses its start, the
    answers their end); the ``full_*`` fields are the counts before cutting.
    """

    row: int
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    prompt_cut: int = 0
    chosen_cut: int = 0
    rejected_cut: int = 0
    full_prompt: int = 0
    full_chosen: int = 0
    full_rejected: int = 0

    @property
    def cut(self) -> bool:
        return bool(self.prompt_cut or self.chosen_cut or self.rejected_cut)


@dataclass
class EncodedFeedback:
    """A KTO example as token ids, cut like :class:`EncodedPair`."""

    row: int
    prompt_ids: list[int]
    completion_ids: list[int]
    desirable: bool
    prompt_cut: int = 0
    completion_cut: int = 0
    full_prompt: int = 0
    full_completion: int = 0

    @property
    def cut(self) -> bool:
        return bool(self.prompt_cut or self.completion_cut)


@dataclass
class PairPreview:
    """A pair (or a KTO example) as the model sees it, after cutting to the maximum length.

    For a KTO example ``chosen_text`` is its answer, ``rejected_text`` is empty and ``label`` says
    "good" or "bad"; for a pair ``label`` is empty. ``cut_note`` says what the maximum length cuts ("" = nothing).
    """

    row: int
    prompt_text: str
    chosen_text: str
    rejected_text: str
    prompt_tokens: int
    chosen_tokens: int
    rejected_tokens: int
    cut_note: str
    label: str = ""


@dataclass
class PreferenceReport:
    """What :func:`engine.data.preference.validate_preferences` found, as :class:`ValidationReport` does for SFT.

    ``prompt_tokens`` / ``answer_tokens`` are token counts before cutting (answers: chosen and rejected both);
    ``token_lengths`` is, per usable example, prompt + its longest answer (for the Data tab's histogram).
    """

    kind: str
    max_length: int
    n_rows: int
    n_examples: int
    n_error_rows: int
    n_cut: int
    n_desirable: int
    n_undesirable: int
    prompt_tokens: TokenStats
    answer_tokens: TokenStats
    issues: list[Issue] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    token_lengths: list[int] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when at least one pair (or labelled answer) can be trained on."""
        return self.n_examples > 0

    def counts_by_kind(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for issue in self.issues:
            out[issue.kind] = out.get(issue.kind, 0) + 1
        return out
