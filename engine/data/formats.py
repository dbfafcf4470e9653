"""Normalisation of raw rows into :class:`Example` (detection itself lives in ``detection``).

Supported shapes (LLaMA-Factory's descriptions of them are the reference):

* ``alpaca``: ``instruction`` + optional ``input`` (appended on a new line) -> user turn, ``output`` -> assistant;
  optional ``system`` and ``history`` (a list of ``[prompt, answer]`` pairs placed before).
* ``sharegpt``: ``conversations`` = list of ``{"from", "value"}``; optional ``system`` and ``tools`` columns.
* ``openai``: ``messages`` = list of ``{"role", "content"}``; content is a string or typed parts.
* ``prompt_completion``: ``prompt`` + ``completion`` (strings, or lists of messages as in TRL).
* ``text``: one ``text`` column, continued pre-training.

Preference data (chosen/rejected pairs, KTO feedback) is read by ``preference`` from the same helpers. An answer
cell holding a list of answers is a row error here, never one answer made of them joined.

Tool use is normalised to four roles. ShareGPT ``function_call`` turns and typed ``tool_call`` parts become
assistant turns whose text is ``<tool_call>\\n{json}\\n</tool_call>`` (the Hermes/Qwen convention, so the call
is learned as ordinary assistant text and works with any chat template); ``observation``/``function``/``tool``
turns become role ``tool`` (how the template shows them is decided at encoding time); typed ``reasoning``
parts become ``<think>\\n...\\n</think>`` before the answer. The tool list stays a JSON string on the example.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

from engine.data.columns import as_bool as _as_bool
from engine.data.columns import maybe_json as _maybe_json
from engine.data.detection import _MEDIA_PART_TYPES
from engine.data.errors import DatasetError, Issue
from engine.data.loading import BadLine
from engine.data.schema import ColumnMapping, DataOptions, Detection, Example, LoadedData, Message, PreparedData

ROLE_ALIASES = {
    "system": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "bot": "assistant",
    "model": "assistant",
    "chatgpt": "assistant",
    "function_call": "assistant",
    "tool": "tool",
    "observation": "tool",
    "function": "tool",
    "ipython": "tool",
}
_TOOL_CALL_ROLES = {"function_call"}
_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][\w]*)\s*\}\}")


class RowError(Exception):
    """Raised inside a normaliser; becomes an error :class:`Issue` for that row."""

    def __init__(self, kind: str, message: str, fix: str = "", field: str = ""):
        super().__init__(message)
        self.kind, self.message, self.fix, self.field = kind, message, fix, field


# ----------------------------------------------------------------------------------------- normalising


def _text(value: Any, field: str) -> str | None:
    """Turn a cell into text: strings, numbers, a message object, or a list of typed parts."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, dict):
        for key in ("content", "value", "text"):
            if key in value:
                return _text(value[key], field)
    if isinstance(value, list):
        return _parts_text(value, field)
    raise RowError(
        "bad_type",
        f"The field '{field}' holds a {type(value).__name__} where text was expected.",
        "Make it a string.",
        field,
    )


def _parts_text(parts: list[Any], field: str) -> str:
    """Typed content parts -> one string (reasoning in <think>, tool calls in <tool_call>)."""
    thoughts, texts = [], []
    for part in parts:
        if isinstance(part, str):
            texts.append(part)
            continue
        if not isinstance(part, dict):
            raise RowError("bad_type", f"A part of '{field}' is a {type(part).__name__}, not text.", field=field)
        kind = part.get("type", "text")
        value = part.get("value", part.get("text", part.get(kind)))
        if kind in _MEDIA_PART_TYPES:
            raise RowError(
                "multimodal",
                f"'{field}' contains a {kind} part; images, audio and video are not supported.",
                "Remove media parts; Tune Studio trains text-only models.",
                field,
            )
        if not isinstance(value, str):
            value = json.dumps(value, ensure_ascii=False) if value is not None else ""
        if kind in ("reasoning", "thinking"):
            thoughts.append(value)
        elif kind in ("tool_call", "function_call"):
            texts.append(_tool_call_text(value))
        elif kind == "text":
            texts.append(value)
        else:
            raise RowError(
                "unknown_part",
                f"'{field}' contains a part of unknown type '{kind}'.",
                "Use parts of type text, reasoning or tool_call.",
                field,
            )
    body = "\n".join(texts)
    if thoughts:
        return "<think>\n" + "\n".join(thoughts) + "\n</think>\n\n" + body
    return body


def _tool_call_text(value: str) -> str:
    return f"<tool_call>\n{value.strip()}\n</tool_call>"


def _messages(value: Any, field: str) -> list[Message]:
    value = _maybe_json(value)
    if value is None:
        raise RowError(
            "missing_field", f"The field '{field}' is missing.", f"Add the list of turns in '{field}'.", field
        )
    if not isinstance(value, list):
        raise RowError("bad_type", f"'{field}' should be a list of turns but is a {type(value).__name__}.", field=field)
    out = []
    for turn_no, turn in enumerate(value, start=1):
        if not isinstance(turn, dict):
            raise RowError(
                "bad_type", f"Turn {turn_no} of '{field}' is not an object with role and content.", field=field
            )
        raw_role = turn.get("role", turn.get("from"))
        if raw_role is None:
            raise RowError(
                "missing_field",
                f"Turn {turn_no} of '{field}' has no 'role' (or 'from').",
                "Give every turn a role: user, assistant or system.",
                field,
            )
        role = ROLE_ALIASES.get(str(raw_role).strip().lower())
        if role is None:
            raise RowError(
                "unknown_role",
                f"Turn {turn_no} has the unknown role '{raw_role}'.",
                "Use user/human, assistant/gpt, system, or tool/observation/function_call.",
                field,
            )
        content = _text(turn.get("content", turn.get("value")), field)
        if content is None:
            raise RowError("missing_field", f"Turn {turn_no} ({raw_role}) has no content.", "Add its text.", field)
        if str(raw_role).strip().lower() in _TOOL_CALL_ROLES:
            content = _tool_call_text(content)
        out.append(Message(role, content))
    return out


def _required(record: dict[str, Any], column: str | None, what: str) -> str:
    value = _text(record.get(column), column or what) if column else None
    if value is None:
        raise RowError(
            "missing_field",
            f"The {what} field '{column}' is missing.",
            f"Fill in '{column}' for this row.",
            column or "",
        )
    if not value.strip():
        raise RowError(
            "empty_field",
            f"The {what} field '{column}' is empty.",
            f"Fill in '{column}' or delete the row.",
            column or "",
        )
    return value


def _system(record: dict[str, Any], mapping: ColumnMapping) -> list[Message]:
    value = _text(record.get(mapping.system), mapping.system) if mapping.system else None
    return [Message("system", value)] if value and value.strip() else []


def _tools(record: dict[str, Any], mapping: ColumnMapping) -> str | None:
    value = record.get(mapping.tools) if mapping.tools else None
    if value is None or value == "" or value == []:
        return None
    parsed = _maybe_json(value)
    if isinstance(parsed, str):
        raise RowError(
            "bad_tools",
            f"The tools field '{mapping.tools}' is not valid JSON.",
            "Write the tools as a JSON list of function descriptions.",
            mapping.tools,
        )
    if parsed in ([], {}):
        return None
    return json.dumps(parsed, ensure_ascii=False)


def _response_messages(record: dict[str, Any], column: str) -> list[Message]:
    """A response cell: text, one message object ({from, value}) or a list of messages.

    A list of plain texts is several answers (LLaMA-Factory's ranking ``[chosen, rejected]``), never one:
    joining them would teach the model to say the rejected answer too, so the row is an error. (Text that
    merely reads like a JSON list, such as an answer about lists, stays text.)
    """
    raw = record.get(column)
    value = _maybe_json(raw)
    if isinstance(value, list) and value and all(isinstance(v, dict) and ("role" in v or "from" in v) for v in value):
        return _messages(value, column)
    if isinstance(raw, list) and raw and all(isinstance(v, str) for v in raw):
        raise RowError(
            "ranking",
            f"The answer field '{column}' holds a list of {len(raw)} answers; SFT learns one answer per row. "
            "A list [chosen, rejected] is preference (ranking) data.",
            "For ranking data choose DPO or ORPO in the Train tab, or turn on 'Train on the chosen answers'; "
            "otherwise write one answer per row.",
            column,
        )
    return [Message("assistant", _required(record, column, "response"))]


def require_fields(record: Any) -> dict[str, Any]:
    """The row as an object with fields; a JSON line that did not parse or a bare value is a :class:`RowError`."""
    if isinstance(record, BadLine):
        raise RowError(
            "invalid_json", record.message[0].upper() + record.message[1:] + ".", "Fix the JSON on that line."
        )
    if not isinstance(record, dict):
        raise RowError("bad_type", f"The row is a {type(record).__name__}, not an object with fields.")
    return record


def normalise_record(record: Any, fmt: str, mapping: ColumnMapping, row: int) -> Example:
    """One raw row -> :class:`Example`; raises :class:`RowError` for a row that cannot be used."""
    record = require_fields(record)
    if fmt == "text":
        return Example(row=row, text=_required(record, mapping.text, "text"))
    if fmt in ("sharegpt", "openai"):
        messages = _system(record, mapping) + _messages(record.get(mapping.messages), mapping.messages or "messages")
        if mapping.response:
            messages += _response_messages(record, mapping.response)
    elif fmt == "alpaca":
        prompt = _required(record, mapping.prompt, "instruction")
        query = _text(record.get(mapping.query), mapping.query) if mapping.query else None
        if query and query.strip():
            prompt = f"{prompt}\n{query}"
        messages = _system(record, mapping) + _history(record, mapping)
        messages += [Message("user", prompt), *_response_messages(record, mapping.response or "output")]
    elif fmt == "prompt_completion":
        prompt_value = _maybe_json(record.get(mapping.prompt))
        if isinstance(prompt_value, list):
            prompt_msgs = _messages(prompt_value, mapping.prompt or "prompt")
        else:
            prompt_msgs = [Message("user", _required(record, mapping.prompt, "prompt"))]
        messages = _system(record, mapping) + prompt_msgs + _response_messages(record, mapping.response or "completion")
    else:
        raise RowError("unknown_format", f"Unknown format '{fmt}'.")
    return Example(row=row, messages=tuple(messages), tools=_tools(record, mapping))


def _history(record: dict[str, Any], mapping: ColumnMapping) -> list[Message]:
    value = _maybe_json(record.get(mapping.history)) if mapping.history else None
    if not value:
        return []
    out = []
    for i, pair in enumerate(value if isinstance(value, list) else [None], start=1):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
            raise RowError(
                "bad_history",
                f"History entry {i} is not a [prompt, answer] pair.",
                'Write history as [["question", "answer"], ...].',
                mapping.history or "history",
            )
        out += [Message("user", _text(pair[0], "history") or ""), Message("assistant", _text(pair[1], "history") or "")]
    return out


# ----------------------------------------------------------------------------------------- conversation checks


Finding = tuple[str, str, str, str]  # (severity, kind, message, fix)
_FIX_ROLES = "Make user and assistant turns alternate (merge consecutive turns from the same speaker)."
# Which role may follow which: an assistant turn may call tools, and tool results go back to the assistant.
_NEXT_ROLES = {"user": {"assistant"}, "assistant": {"user", "tool"}, "tool": {"assistant", "tool"}}


def check_conversation(example: Example) -> tuple[Example, list[Finding]]:
    """Check turn order; return the (possibly trimmed) example and (severity, kind, message, fix) findings.

    Rules: an optional system turn first; then user and assistant alternate, where an assistant turn may be
    followed by tool results and tool results by the assistant. Trailing turns after the last assistant reply
    are dropped (there is nothing to learn from them).
    """
    if example.is_text:
        return example, []
    msgs = list(example.messages)
    errors = _turn_errors(msgs) or _order_errors(msgs)
    if errors:
        return example, errors
    return _without_trailing_turns(example, msgs)


def _error(kind: str, message: str, fix: str) -> list[Finding]:
    """One error finding: the row is left out of training."""
    return [("error", kind, message, fix)]


def _turn_errors(msgs: list[Message]) -> list[Finding]:
    """The first turn that is wrong on its own: a system message after the start, or an empty turn."""
    for i, m in enumerate(msgs):
        if m.role == "system" and i > 0:
            return _error("roles", f"Turn {i + 1} is a system message; only the first turn may be one.",
                          "Move the system prompt to the start or delete it.")
        if not m.content.strip() and m.role != "system":
            return _error("empty_field", f"Turn {i + 1} ({m.role}) is empty.",
                          "Fill in the text of that turn or delete the row.")
    return []


def _order_errors(msgs: list[Message]) -> list[Finding]:
    """What is wrong with the order of the turns after the system prompt (the first problem only)."""
    body = [m for m in msgs if m.role != "system"]
    if not any(m.role == "assistant" for m in body):
        return _error("no_assistant", "The conversation has no assistant turn, so there is nothing to learn.",
                      "Add the answer the model should give (role assistant/gpt).")
    if body and body[0].role != "user":
        return _error("roles", f"The conversation starts with a {body[0].role} turn instead of the user.",
                      "Start each conversation with the user's message.")
    offset = len(msgs) - len(body)
    for i in range(1, len(body)):
        prev, cur = body[i - 1].role, body[i].role
        if cur not in _NEXT_ROLES[prev]:
            return _error("roles", f"Roles do not alternate: turn {i + offset} is {prev} and turn {i + offset + 1} "
                          f"is {cur}.", _FIX_ROLES)
    return []


def _without_trailing_turns(example: Example, msgs: list[Message]) -> tuple[Example, list[Finding]]:
    """Drop the turns after the last assistant reply, with a warning saying how many."""
    last = max(i for i, m in enumerate(msgs) if m.role == "assistant")
    if last == len(msgs) - 1:
        return example, []
    finding = ("warning", "trailing_turn",
               f"The last {len(msgs) - 1 - last} turn(s) come after the final assistant reply and are ignored.",
               "End each conversation with the assistant's answer.")
    return Example(row=example.row, messages=tuple(msgs[: last + 1]), tools=example.tools), [finding]


# ----------------------------------------------------------------------------------------- placeholders


def find_placeholders(examples: list[Example]) -> Counter[str]:
    """How many examples use each ``{{name}}`` placeholder."""
    counts: Counter[str] = Counter()
    for ex in examples:
        texts = [ex.text] if ex.is_text else [m.content for m in ex.messages]
        counts.update({name for t in texts if t for name in _PLACEHOLDER.findall(t)})
    return counts


def fill_placeholders(examples: list[Example], values: dict[str, str]) -> list[Example]:
    """Replace ``{{name}}`` placeholders (as in LLaMA-Factory's identity.json) with the given values.

    Unknown placeholders are left as they are, so :func:`find_placeholders` can still report them.
    """
    if not values:
        return examples

    def sub(text: str) -> str:
        return _PLACEHOLDER.sub(lambda m: str(values.get(m.group(1), m.group(0))), text)

    out = []
    for ex in examples:
        if ex.is_text:
            out.append(Example(row=ex.row, text=sub(ex.text or "")))
        else:
            out.append(
                Example(
                    row=ex.row, messages=tuple(Message(m.role, sub(m.content)) for m in ex.messages), tools=ex.tools
                )
            )
    return out


# ----------------------------------------------------------------------------------------- prepare


_PLAIN_TEXT_EXPLANATION = (
    "Plain text file for continued pre-training: paragraphs separated by blank lines (or, without blank "
    "lines, single lines) are documents; every token is learned and long documents are split into windows "
    "of the maximum length (not cut off)."
)


def prepare_sft(loaded: LoadedData, records: Sequence[Any], detection: Detection,
                opts: DataOptions) -> PreparedData:
    """Normalise and check the rows of a loaded file whose format is decided: the examples SFT trains on.

    The public entry is ``engine.data.prepare`` (``preference.prepare``), which loads the file, detects the
    format and sends pair files to the chosen answers when ``sft_on_chosen`` is on. Rows that cannot be used
    are left out and listed in ``issues``; the whole file is refused with a :class:`DatasetError` when its
    format is refused or no row is usable.
    """
    name = loaded.info.path.name
    if detection.refusal:
        raise DatasetError(detection.refusal, fix=detection.refusal_fix, where=name, code=detection.refusal_code)
    if detection.format == "text" and loaded.info.kind == "txt":
        detection.explanation = _PLAIN_TEXT_EXPLANATION
    examples, issues, n_negative = _examples_and_issues(records, loaded, detection, opts)
    warnings = loaded.warnings + detection.warnings
    if n_negative:
        warnings.append(f"{n_negative} row(s) labelled false (bad answers) were left out.")
    examples = fill_placeholders(examples, opts.placeholders)
    unfilled = unfilled_placeholders_warning(examples)
    if unfilled:
        warnings.append(unfilled)
    if not examples:
        raise _no_rows(name, len(records), issues, n_negative)
    return PreparedData(
        examples=examples,
        detection=detection,
        info=loaded.info,
        n_rows=len(records),
        issues=issues,
        warnings=warnings,
        lines=loaded.lines,
    )


def rows_of(records: Sequence[Any]) -> Sequence[Any]:
    """Records as rows with fields: a JSON list of plain strings is a ``text`` column.

    A large file's Arrow-backed records are already dicts and stay lazy; copying them into a list here would
    bring back the memory that reading them lazily saved.
    """
    if isinstance(records, list):
        return [{"text": r} if isinstance(r, str) else r for r in records]
    return records


def _examples_and_issues(records: Sequence[Any], loaded: LoadedData, detection: Detection,
                         opts: DataOptions) -> tuple[list[Example], list[Issue], int]:
    """Every row normalised and checked: the usable examples, the issues, and how many rows were labelled bad.

    A row's line in the file is looked up only when the row has an issue (for a large file that lookup is
    the only place lines are needed).
    """
    issues: list[Issue] = []
    examples: list[Example] = []
    n_negative = 0
    for row, record in enumerate(records, start=1):
        if _labelled_bad(record, detection.label_column, opts):
            n_negative += 1
            continue
        example, findings = _checked_example(record, row, detection)
        if findings:
            line = loaded.line_of(row)
            issues += [Issue(row, sev, kind, msg, fix, fld, line) for sev, kind, msg, fix, fld in findings]
        if example is not None:
            examples.append(example)
    return examples, issues, n_negative


def _labelled_bad(record: Any, label_column: str | None, opts: DataOptions) -> bool:
    """A KTO-style row whose feedback label is false: an example of a bad answer, left out unless asked."""
    return (bool(label_column) and isinstance(record, dict) and _as_bool(record.get(label_column)) is False
            and not opts.keep_negative_feedback)


def _checked_example(record: Any, row: int, detection: Detection) -> tuple[Example | None, list[tuple[str, ...]]]:
    """The row as an example (None when an error leaves it out) and its (severity, kind, message, fix, field)s."""
    try:
        example = normalise_record(record, detection.format, detection.mapping, row)
    except RowError as err:
        return None, [("error", err.kind, err.message, err.fix, err.field)]
    example, found = check_conversation(example)
    findings: list[tuple[str, ...]] = [(sev, kind, msg, fix, "") for sev, kind, msg, fix in found]
    if any(sev == "error" for sev, *_ in found):
        return None, findings
    if "\ufffd" in (example.text or "") + "".join(m.content for m in example.messages):
        findings.append(("warning", "undecodable", "The text contains undecodable characters (�).",
                         "Save the file as UTF-8 and upload it again.", ""))
    return example, findings


def unfilled_placeholders_warning(examples: list[Example]) -> str | None:
    """The warning for ``{{name}}`` placeholders left in the examples: the model would learn them literally."""
    unfilled = find_placeholders(examples)
    if not unfilled:
        return None
    names = ", ".join("{{" + n + "}}" for n in sorted(unfilled))
    example_values = ", ".join(f"'{n}': '...'" for n in sorted(unfilled))
    n_rows_with = sum(1 for ex in examples if find_placeholders([ex]))
    return (
        f"{n_rows_with} row(s) contain unfilled placeholders {names}; the model would learn "
        f"them literally. Fill them with placeholders={{{example_values}}}."
    )


def _no_rows(name: str, n_rows: int, issues: list[Issue], n_negative: int) -> DatasetError:
    errors = [i for i in issues if i.severity == "error"]
    if not errors:
        return DatasetError(
            f"None of the {n_rows} rows is usable ({n_negative} labelled as bad answers).",
            where=name,
            code="no_valid_rows",
            fix="Add rows labelled as good answers, or tick 'Keep negative feedback' in the Data tab's options.",
        )
    kind, count = Counter(i.kind for i in errors).most_common(1)[0]
    first = next(i for i in errors if i.kind == kind)
    return DatasetError(
        f"None of the {n_rows} rows can be used. The most common problem ({count} rows), first at {first.where}: "
        f"{first.message}",
        where=name,
        code=kind,
        fix=first.fix or "Fix the rows listed in the validation report.",
    )
