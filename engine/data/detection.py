"""Format detection: which shape a file has, decided from the columns of its first rows.

The order matters: media columns are refused first (text-only training), then preference pairs
(chosen/rejected) unless the user mapped a response column, then chat columns, alpaca,
prompt/completion and finally plain text. An explicit :class:`ColumnMapping` with a format skips
the guessing but still checks that the named columns exist.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from typing import Any

from engine.data.loading import BadLine
from engine.data.schema import ColumnMapping, Detection

_MEDIA_COLUMNS = ("images", "image", "videos", "video", "audios", "audio")
_MEDIA_PART_TYPES = {"image", "image_url", "input_image", "audio", "input_audio", "video", "video_url"}
_MESSAGE_COLUMNS = ("messages", "conversations", "conversation", "chat", "dialogue", "turns")
_PREFERENCE_PAIRS = (("chosen", "rejected"), ("chosen_messages", "rejected_messages"))
_LABEL_COLUMNS = ("label", "kto_tag")
_SAMPLE = 200

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
    rows = [r for r in records[:_SAMPLE] if isinstance(r, dict) and not isinstance(r, BadLine)]
    columns = Counter(k for r in rows for k in r)
    present = [c for c, _ in columns.most_common()]
    warnings: list[str] = []
    media = _media_refusal(rows, columns)
    if media:
        return _refused(
            "multimodal",
            mapping,
            media,
            "Remove the media columns and <image> markers to train on the text "
            "alone, or use a vision/audio model in another tool; Tune Studio trains text-only models.",
        )
    if mapping.format != "auto":
        return _explicit(mapping, present, columns, rows)
    preference = None if mapping.response else _preference_refusal(rows, columns)
    if preference:
        return _refused("preference", mapping, *preference)
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
    label, label_warnings = _label_column(rows, columns)
    return Detection(
        format=fmt, mapping=resolved, explanation=explanation, warnings=warnings + label_warnings, label_column=label
    )


def _refused(code: str, mapping: ColumnMapping, message: str, fix: str) -> Detection:
    return Detection(
        format="refused", mapping=mapping, explanation=message, refusal=message, refusal_code=code, refusal_fix=fix
    )


def _media_refusal(rows: list[dict[str, Any]], columns: Counter[str]) -> str | None:
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


def _preference_refusal(rows: list[dict[str, Any]], columns: Counter[str]) -> tuple[str, str] | None:
    for chosen, rejected in _PREFERENCE_PAIRS:
        if chosen in columns and rejected in columns:
            if chosen.endswith("_messages"):
                how = f"format=openai, messages={chosen}"
            elif any(c in columns for c in _MESSAGE_COLUMNS):
                msg_col = next(c for c in _MESSAGE_COLUMNS if c in columns)
                sample = next((r[msg_col] for r in rows if r.get(msg_col)), [])
                fmt = "sharegpt" if sample and isinstance(sample[0], dict) and "from" in sample[0] else "openai"
                how = f"format={fmt}, messages={msg_col}, response={chosen}"
            else:
                prompt = next((c for c in ("instruction", "prompt", "question") if c in columns), "<prompt column>")
                how = f"format=alpaca, prompt={prompt}, response={chosen}"
            message = (
                f"This is preference data (for DPO/ORPO/reward-model training): each row pairs a '{chosen}' "
                f"(better) and a '{rejected}' (worse) answer. Tune Studio does supervised fine-tuning, which learns "
                "one answer per prompt."
            )
            fix = (
                f"To fine-tune on the preferred answers, set the column mapping {how}; the '{rejected}' "
                "answers are then ignored."
            )
            return message, fix
    return None


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
    label, label_warnings = _label_column(rows, columns)
    explanation = f"Format {mapping.format} set by your column mapping ({used})."
    return Detection(
        format=mapping.format,
        mapping=resolved,
        explanation=explanation,
        warnings=warnings + label_warnings,
        label_column=label,
    )


def _label_column(rows: list[dict[str, Any]], columns: Counter[str]) -> tuple[str | None, list[str]]:
    """A boolean good/bad feedback column (KTO data), and the warning that explains it."""
    col = next((c for c in _LABEL_COLUMNS if c in columns), None)
    if col and all(_as_bool(r.get(col)) is not None for r in rows if col in r):
        return col, [
            f"The '{col}' column marks each answer as good (true) or bad (false), as in KTO feedback data. "
            "Rows labelled false are examples of bad answers and are left out unless keep_negative_feedback is on."
        ]
    return None, []


def _as_bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.strip().lower() in ("true", "1", "yes")
    return None


def _maybe_json(value: Any) -> Any:
    """CSV cells hold nested data as JSON text; decode it when it looks like a list or object."""
    if isinstance(value, str) and value.strip()[:1] in ("[", "{"):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value
