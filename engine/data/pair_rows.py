"""One preference row -> :class:`PreferencePair` or :class:`FeedbackExample`, for each shape of ``pair_shapes``.

Why a module of its own: every shape ends in the same three parts (prompt turns, chosen reply, rejected reply),
but finds them differently: separate columns, a ranking list, two transcripts that share a prefix, or HH
dialogue strings. Turns and texts are read with the SFT normaliser's helpers (``formats``), so roles, typed
content parts and tool calls mean the same in both paths. Problems raise :class:`RowError`; :func:`check_item`
adds the checks every shape shares (a prompt ending with the user, answers that differ).
"""

from __future__ import annotations

import re
from typing import Any

from engine.data.columns import as_bool, maybe_json
from engine.data.formats import (
    RowError,
    _history,
    _messages,
    _required,
    _system,
    _text,
    _tools,
    check_conversation,
    require_fields,
)
from engine.data.pair_shapes import PairShape, is_answer_list
from engine.data.schema import ColumnMapping, Example, FeedbackExample, Message, PreferencePair

Finding = tuple[str, str, str, str, str]  # (severity, kind, message, fix, field)
_HH_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):[ \t]?")
_SHARED_FIX = "Both transcripts must repeat the same prompt turns and differ only in the final assistant reply."


def parse_pair(record: Any, shape: PairShape, row: int) -> PreferencePair:
    """The pair in one row of a file of this shape; raises :class:`RowError` for a row that cannot be used."""
    record = require_fields(record)
    cols = shape.mapping
    if shape.source in ("transcripts", "trl_implicit_prompt"):
        prompt, chosen, rejected = split_transcripts(
            _with_system(record, cols, _messages(record.get(cols.chosen), cols.chosen or "chosen")),
            _with_system(record, cols, _messages(record.get(cols.rejected), cols.rejected or "rejected")), cols)
    elif shape.source == "hh":
        prompt, chosen, rejected = split_transcripts(hh_turns(record, cols.chosen or "chosen"),
                                                     hh_turns(record, cols.rejected or "rejected"), cols)
    elif cols.response:  # LLaMA-Factory ranking: output = [chosen, rejected]
        prompt = prompt_turns(record, cols)
        chosen, rejected = _ranking(record, cols.response)
    else:
        prompt = prompt_turns(record, cols)
        chosen, rejected = reply(record, cols.chosen or "chosen"), reply(record, cols.rejected or "rejected")
    return PreferencePair(row, tuple(prompt), chosen, rejected, _tools(record, cols))


def parse_feedback(record: Any, shape: PairShape, row: int) -> FeedbackExample:
    """The labelled answer in one row of a KTO file; raises :class:`RowError` for a row that cannot be used."""
    record = require_fields(record)
    cols = shape.mapping
    desirable = _label(record, cols.label or "label")
    if shape.source == "kto_messages":
        field = cols.messages or "messages"
        turns = _with_system(record, cols, _messages(record.get(field), field))
        if not turns or turns[-1].role != "assistant":
            raise RowError("roles", "The conversation does not end with an assistant turn, so there is no answer to "
                           "mark good or bad.", "End each conversation with the assistant's answer.", field)
        prompt, completion = turns[:-1], turns[-1]
    else:
        prompt, completion = prompt_turns(record, cols), reply(record, cols.response or "completion")
    return FeedbackExample(row, tuple(prompt), completion, desirable, _tools(record, cols))


def check_item(item: PreferencePair | FeedbackExample) -> list[Finding]:
    """What every shape must satisfy: a prompt that ends with the user (or a tool), turns in order, answers
    that differ (an identical pair teaches nothing), and readable text."""
    if not item.prompt:
        return [("error", "no_prompt", "The prompt is empty: there is nothing for the answers to answer.",
                 "Add the user's message before the answers.", "")]
    last = item.prompt[-1]
    if last.role not in ("user", "tool"):
        return [("error", "roles", f"The prompt ends with a turn by the {last.role}; the answers must reply to a user "
                 "(or tool) turn.", "End the prompt with the user's message; the replies go in the answer columns.",
                 "")]
    answers = (item.chosen, item.rejected) if isinstance(item, PreferencePair) else (item.completion,)
    _, found = check_conversation(Example(item.row, (*item.prompt, answers[0]), item.tools))
    findings: list[Finding] = [(sev, kind, msg, fix, "") for sev, kind, msg, fix in found]
    if isinstance(item, PreferencePair) and item.chosen.content.strip() == item.rejected.content.strip():
        findings.append(("error", "identical", "The chosen and rejected answers are identical, so the pair teaches "
                         "nothing.", "Replace the rejected answer with a worse one, or delete the row.", ""))
    texts = [m.content for m in (*item.prompt, *answers)]
    if any("\ufffd" in t for t in texts):
        findings.append(("warning", "undecodable", "The text contains undecodable characters (�).",
                         "Save the file as UTF-8 and upload it again.", ""))
    return findings


def prompt_turns(record: dict[str, Any], cols: ColumnMapping) -> list[Message]:
    """The prompt of a row: a conversation column, a list of messages, or alpaca-style text columns."""
    if cols.messages:
        return _with_system(record, cols, _messages(record.get(cols.messages), cols.messages))
    value = maybe_json(record.get(cols.prompt)) if cols.prompt else None
    if isinstance(value, list):
        return _with_system(record, cols, _messages(value, cols.prompt or "prompt"))
    prompt = _required(record, cols.prompt, "prompt")
    query = _text(record.get(cols.query), cols.query) if cols.query else None
    if query and query.strip():
        prompt = f"{prompt}\n{query}"
    return _system(record, cols) + _history(record, cols) + [Message("user", prompt)]


def _with_system(record: dict[str, Any], cols: ColumnMapping, turns: list[Message]) -> list[Message]:
    """The system column's prompt before the turns, unless the turns already start with one."""
    return turns if turns and turns[0].role == "system" else _system(record, cols) + turns


def reply(record: dict[str, Any], column: str) -> Message:
    """One answer cell: text, one assistant message, a list holding one, or typed content parts.

    A list of plain texts is several answers where one belongs: an error, never joined into one answer.
    """
    raw = record.get(column)
    if raw is None:
        raise RowError("missing_field", f"The answer '{column}' is missing.", f"Fill in '{column}' for this row.",
                       column)
    if is_answer_list(raw):
        raise RowError("ranking", f"'{column}' holds a list of {len(raw)} texts where one answer belongs.",
                       "Put one answer in each of the chosen and rejected columns.", column)
    value = maybe_json(raw)  # CSV cells hold message objects as JSON text
    if isinstance(value, dict) and ("role" in value or "from" in value):
        value = [value]
    if isinstance(value, list) and value and all(isinstance(v, dict) and ("role" in v or "from" in v) for v in value):
        turns = _messages(value, column)
        if len(turns) != 1 or turns[0].role != "assistant":
            roles = ", ".join(m.role for m in turns)
            raise RowError("roles", f"'{column}' should hold one assistant reply, but it holds {len(turns)} turn(s) "
                           f"({roles}).", f"Put only the assistant's answer in '{column}'; the earlier turns belong "
                           "in the prompt.", column)
        message = turns[0]
    else:
        message = Message("assistant", _text(raw, column) or "")
    if not message.content.strip():
        raise RowError("empty_field", f"The answer '{column}' is empty.", f"Fill in '{column}' or delete the row.",
                       column)
    return message


def _ranking(record: dict[str, Any], column: str) -> tuple[Message, Message]:
    """LLaMA-Factory's ranking cell ``[chosen, rejected]``: exactly two answers, the better first."""
    value = maybe_json(record.get(column))
    answers = value if isinstance(value, list) else [] if value in (None, "") else [value]
    if len(answers) != 2:
        raise RowError("ranking", f"A ranking row needs exactly two answers [chosen, rejected]; this row's "
                       f"'{column}' has {len(answers)}.", f'Write \'{column}\' as ["better answer", "worse answer"], '
                       "or delete the row.", column)
    chosen, rejected = (Message("assistant", _text(a, column) or "") for a in answers)
    for message, side in ((chosen, "chosen (first)"), (rejected, "rejected (second)")):
        if not message.content.strip():
            raise RowError("empty_field", f"The {side} answer in '{column}' is empty.",
                           "Fill in both answers or delete the row.", column)
    return chosen, rejected


def split_transcripts(chosen: list[Message], rejected: list[Message],
                      cols: ColumnMapping) -> tuple[list[Message], Message, Message]:
    """Two whole conversations -> (the turns they share, chosen reply, rejected reply).

    Both must end with an assistant reply and agree on every turn before it: a pair compares two answers to
    the same prompt, so transcripts that differ earlier compare two different conversations.
    """
    c_col, r_col = cols.chosen or "chosen", cols.rejected or "rejected"
    for turns, col in ((chosen, c_col), (rejected, r_col)):
        if not turns:
            raise RowError("empty_field", f"'{col}' holds no turns.", "Fill in the conversation or delete the row.",
                           col)
        if turns[-1].role != "assistant":
            raise RowError("roles", f"The last turn of '{col}' is a {turns[-1].role} turn, not the assistant's reply.",
                           "End each transcript with the assistant's answer.", col)
    prompt, other = chosen[:-1], rejected[:-1]
    if prompt != other:
        k = next((i for i, (a, b) in enumerate(zip(prompt, other, strict=False)) if a != b), min(len(prompt),
                                                                                                  len(other)))
        if k == 0:
            raise RowError("no_shared_prompt", f"'{c_col}' and '{r_col}' share no prompt: their first turns differ.",
                           _SHARED_FIX, c_col)
        raise RowError("transcripts_differ", f"'{c_col}' and '{r_col}' differ at turn {k + 1}, before the final "
                       "reply; a pair must share everything but the last answer.", _SHARED_FIX, c_col)
    if not prompt:
        raise RowError("no_prompt", f"'{c_col}' and '{r_col}' hold only the final reply: there is no prompt "
                       "before it.", "Include the user's turn(s) before the reply in both transcripts.", c_col)
    return prompt, chosen[-1], rejected[-1]


def hh_turns(record: dict[str, Any], column: str) -> list[Message]:
    """An Anthropic HH dialogue string ("\\n\\nHuman: ...\\n\\nAssistant: ...") as turns."""
    text = _required(record, column, "answer")
    pieces = _HH_TURN.split(text)
    if len(pieces) < 3 or pieces[0].strip():
        raise RowError("hh", f"'{column}' is not a dialogue of \"Human:\" and \"Assistant:\" turns.",
                       'Write each side as "\\n\\nHuman: question\\n\\nAssistant: answer".', column)
    return [Message("user" if who == "Human" else "assistant", content.strip())
            for who, content in zip(pieces[1::2], pieces[2::2], strict=True)]


def _label(record: dict[str, Any], column: str) -> bool:
    """A KTO label: true/false (also 1/0, yes/no); anything else is a row error."""
    value = record.get(column)
    if value is None or value == "":
        raise RowError("missing_label", f"The good/bad label '{column}' is missing.",
                       f"Set '{column}' to true (a good answer) or false (a bad answer).", column)
    desirable = as_bool(value)
    if desirable is None:
        raise RowError("bad_label", f"The good/bad label '{column}' is {str(value)[:40]!r}; it must be true or false "
                       "(1/0 and yes/no work too).", f"Set '{column}' to true (a good answer) or false (a bad "
                       "answer).", column)
    return desirable
