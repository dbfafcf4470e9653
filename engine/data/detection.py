"""Format detection: which shape a file has, decided from the columns of its first rows.

The order matters: media columns are refused first (text-only training), then preference pairs (every shape
``pair_shapes`` knows: chosen/rejected columns, alpaca ranking lists, HH dialogues; with a mapped response
column only ranking lists, which no SFT format can learn), then chat columns, alpaca, prompt/completion and
finally plain text. KTO feedback data (an answer and a good/bad label per row) is not refused: SFT learns its
good answers. An explicit :class:`ColumnMapping` with a format skips the guessing (and the preference check)
but still checks that the named columns exist.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from engine.data.columns import LABEL_COLUMNS as _LABEL_COLUMNS
from engine.data.columns import MESSAGE_COLUMNS as _MESSAGE_COLUMNS
from engine.data.columns import as_bool as _as_bool
from engine.data.columns import maybe_json as _maybe_json
from engine.data.loading import BadLine
from engine.data.pair_shapes import PAIR_COLUMNS as _PREFERENCE_PAIRS
from engine.data.pair_shapes import PairShape, detect_preference
from engine.data.schema import ColumnMapping, Detection

_MEDIA_COLUMNS = ("images", "image", "videos", "video", "audios", "audio")
_MEDIA_PART_TYPES = {"image", "image_url", "input_image", "audio", "input_audio", "video", "video_url"}
_SAMPLE = 200
MEDIA_FIX = ("Remove the media columns and <image> markers to train on the text alone, or use a vision/audio model "
             "in another tool; Tune Studio trains text-only models.")

_DEFAULTS: dict[str, dict[str, str]] = {
    "alpaca": {"prompt": "instruction", "query": "input", "response": "output"},
    "sharegpt": {"messages": "conversations"},
    "openai": {"messages": "messages"},
    "prompt_completion": {"prompt": "prompt", "response": "completion"},
    "text": {"text": "text"},
}
_OPTIONAL = {"system": ("system",), "history": ("history",), "tools": ("tools", "functions")}
_PC_ALIASES = (("prompt", "completion"), ("question", "answer"), ("query", "response"), ("input", "output"))
_TEXT_ALIASES = ("text", "content", "document", "body")


# ----------------------------------------------------------------------------------------- detection


def detect_format(records: Sequence[Any], mapping: ColumnMapping | None = None) -> Detection:
    """Decide the format from the columns present (first rows sampled), or honour an explicit mapping.

    A refusal (multimodal, preference data, unknown columns) is returned in ``Detection.refusal``
    rather than raised, so a UI can show the explanation next to the columns it found.
    """
    mapping = mapping or ColumnMapping()
    rows = sample_rows(records)
    columns = Counter(k for r in rows for k in r)
    present = [c for c, _ in columns.most_common()]
    warnings: list[str] = []
    media = media_refusal(rows, columns)
    if media:
        return _refused("multimodal", mapping, media, MEDIA_FIX)
    if mapping.format != "auto":
        return _explicit(mapping, present, columns, rows)
    shape = detect_preference(rows, mapping)
    if shape and shape.kind == "pairs":
        return _refused("preference", mapping, *preference_refusal(shape))
    fmt, resolved, explanation = _auto(rows, columns, present, mapping)
    if fmt is None:
        return _refused(
            "unknown_format",
            mapping,
            f"The columns ({', '.join(present[:12]) or 'none'}) do not match a known format "
            "(alpaca, ShareGPT, OpenAI messages, prompt/completion or plain text).",
            "Set an explicit column mapping, e.g. format=alpaca, prompt=<question column>, response=<answer column>.",
        )
    resolved = _overlay(resolved, mapping)
    missing = [c for k, c in resolved.explicit().items() if c not in columns]
    if missing:
        return _refused(
            "missing_column",
            mapping,
            f"The mapped column '{missing[0]}' is not in the file.",
            f"Choose one of the columns: {', '.join(present)}.",
        )
    for pair in _PREFERENCE_PAIRS:
        if pair[1] in columns:
            warnings.append(
                f"The '{pair[1]}' column (rejected answers) is ignored: only the mapped response is learned."
            )
    label, label_warnings = _label_column(rows, columns, mapping)
    return Detection(
        format=fmt, mapping=resolved, explanation=explanation, warnings=warnings + label_warnings, label_column=label
    )


def sample_rows(records: Sequence[Any]) -> list[dict[str, Any]]:
    """The first rows that are objects with fields: what every detector decides from."""
    return [r for r in records[:_SAMPLE] if isinstance(r, dict) and not isinstance(r, BadLine)]


def _refused(code: str, mapping: ColumnMapping, message: str, fix: str) -> Detection:
    return Detection(
        format="refused", mapping=mapping, explanation=message, refusal=message, refusal_code=code, refusal_fix=fix
    )


def media_refusal(rows: list[dict[str, Any]], columns: Counter[str]) -> str | None:
    for col in _MEDIA_COLUMNS:
        filled = [r[col] for r in rows if r.get(col)]
        if filled:
            example = filled[0][0] if isinstance(filled[0], list) else filled[0]
            return (
                f"This is a multimodal dataset: {len(filled)} of the first {len(rows)} rows reference {col} in the "
                f"'{col}' column (e.g. '{str(example)[:60]}'). Tune Studio fine-tunes text-only models, so image, "
                "video and audio rows are refused."
            )
    for r in rows:
        for col in _MESSAGE_COLUMNS:
            for m in r.get(col) or []:
                content = m.get("content", m.get("value")) if isinstance(m, dict) else None
                if isinstance(content, list) and any(
                    isinstance(p, dict) and p.get("type") in _MEDIA_PART_TYPES for p in content
                ):
                    return (
                        "This is a multimodal dataset: messages contain image/audio/video parts. Tune Studio "
                        "fine-tunes text-only models, so those rows are refused."
                    )
    return None


def preference_refusal(shape: PairShape) -> tuple[str, str]:
    """Why SFT refuses a pair file and what to do instead: (message, fix).

    Why refuse instead of guessing: SFT learns one answer per prompt, and every silent choice (the chosen
    answer, both joined) would train on something the user did not ask for.
    """
    message = (f"This is preference data for DPO/ORPO. {shape.explanation} Supervised fine-tuning (SFT) learns one "
               "answer per prompt, so it cannot use the pairs as they are.")
    fix = ("Choose DPO or ORPO (or KTO) as the training method in the Train tab; or, to fine-tune with SFT on the "
           "preferred answers only, turn on 'Train on the chosen answers' (data option sft_on_chosen).")
    if shape.source == "no_prompt":
        fix = "Name the prompt column in the column mapping (prompt=<column>), then " + fix[0].lower() + fix[1:]
    return message, fix


def _message_keys(rows: list[dict[str, Any]], col: str) -> set[str]:
    keys: set[str] = set()
    for r in rows:
        value = _maybe_json(r.get(col))
        if isinstance(value, list):
            keys.update(k for m in value[:4] if isinstance(m, dict) for k in m)
    return keys


def _auto(
    rows: list[dict[str, Any]], columns: Counter[str], present: list[str], mapping: ColumnMapping
) -> tuple[str | None, ColumnMapping, str]:
    """Return (format, mapping, explanation) or (None, ..) when nothing matches."""
    has = columns.__contains__
    optional = {k: next((c for c in names if has(c)), None) for k, names in _OPTIONAL.items()}
    msg_col = mapping.messages or next((c for c in _MESSAGE_COLUMNS if has(c)), None)
    if msg_col:
        keys = _message_keys(rows, msg_col)
        fmt = "sharegpt" if {"from", "value"} <= keys else "openai" if {"role", "content"} <= keys else None
        if fmt:
            tools = (
                f" and a '{optional['tools']}' column (the tools the assistant may call)" if optional["tools"] else ""
            )
            what = "from/value" if fmt == "sharegpt" else "role/content"
            name = "ShareGPT" if fmt == "sharegpt" else "OpenAI messages"
            explanation = f"{name} format: the '{msg_col}' column holds the chat turns ({what}){tools}."
            fields = {"messages": msg_col, "system": optional["system"], "tools": optional["tools"]}
            return fmt, ColumnMapping(format=fmt, **fields), explanation
    if has("instruction") and (has("output") or mapping.response):
        explanation = (
            "Alpaca format: 'instruction' is the user's request"
            + (", 'input' extra context appended on a new line" if has("input") else "")
            + ", 'output' the answer to learn"
            + (", 'history' earlier turns" if optional["history"] else "")
            + (", 'system' the system prompt" if optional["system"] else "")
            + "."
        )
        return (
            "alpaca",
            ColumnMapping(
                format="alpaca",
                prompt="instruction",
                query="input" if has("input") else None,
                response="output" if has("output") else None,
                system=optional["system"],
                history=optional["history"],
            ),
            explanation,
        )
    for prompt, completion in _PC_ALIASES:
        if has(prompt) and has(completion):
            explanation = (
                f"Prompt/completion format: '{prompt}' is the user's turn, '{completion}' the answer to learn."
            )
            return (
                "prompt_completion",
                ColumnMapping(
                    format="prompt_completion", prompt=prompt, response=completion, system=optional["system"]
                ),
                explanation,
            )
    text_col = next((c for c in _TEXT_ALIASES if has(c)), None)
    if text_col and not any(has(c) for c, _ in _PREFERENCE_PAIRS):
        explanation = (
            f"Plain text: the '{text_col}' column is raw text for continued pre-training; every token is "
            "learned and long texts are split into windows of the maximum length (not cut off)."
        )
        return "text", ColumnMapping(format="text", text=text_col), explanation
    return None, mapping, ""


def _overlay(resolved: ColumnMapping, mapping: ColumnMapping) -> ColumnMapping:
    explicit = mapping.explicit()
    return resolved.replace(**explicit) if explicit else resolved


def _explicit(
    mapping: ColumnMapping, present: list[str], columns: Counter[str], rows: list[dict[str, Any]]
) -> Detection:
    fields = {**_DEFAULTS[mapping.format], **mapping.explicit()}
    resolved = ColumnMapping(format=mapping.format, **fields)
    missing = [(k, c) for k, c in resolved.explicit().items() if c not in columns and k not in ("query",)]
    if missing:
        key, col = missing[0]
        return _refused(
            "missing_column",
            mapping,
            f"The {key} column '{col}' of your column mapping is not in the file.",
            f"Choose one of the columns: {', '.join(present)}.",
        )
    if resolved.query and resolved.query not in columns:
        resolved = resolved.replace(query=None)
    used = ", ".join(f"{k}='{c}'" for k, c in resolved.explicit().items())
    warnings = [
        f"The '{pair[1]}' column is ignored: only the mapped response is learned."
        for pair in _PREFERENCE_PAIRS
        if pair[1] in columns
    ]
    label, label_warnings = _label_column(rows, columns, mapping)
    explanation = f"Format {mapping.format} set by your column mapping ({used})."
    return Detection(
        format=mapping.format,
        mapping=resolved,
        explanation=explanation,
        warnings=warnings + label_warnings,
        label_column=label,
    )


def _label_column(rows: list[dict[str, Any]], columns: Counter[str],
                  mapping: ColumnMapping) -> tuple[str | None, list[str]]:
    """A boolean good/bad feedback column (KTO data), and the warning that explains it."""
    col = mapping.label or next((c for c in _LABEL_COLUMNS if c in columns), None)
    if col and all(_as_bool(r.get(col)) is not None for r in rows if col in r):
        return col, [
            f"The '{col}' column marks each answer as good (true) or bad (false), as in KTO feedback data. "
            "Rows labelled false are examples of bad answers and are left out unless 'Keep negative feedback' is "
            "ticked."
        ]
    return None, []
