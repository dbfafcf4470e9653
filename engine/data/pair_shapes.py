"""Which preference shape a file has — DPO/ORPO pairs or KTO feedback — decided from the columns of its first rows.

Why a detector of its own: preference files come in many shapes that reuse SFT column names (``prompt``,
``instruction``, ``messages``...), and an SFT reader that does not know them learns the wrong thing (a
ranking list ``[chosen, rejected]`` joined into one answer). The SFT detector (``detection``) asks this one
first and refuses pairs; ``preference`` reads them. Shapes, with their ``source`` names:

* ``trl``: ``prompt``/``chosen``/``rejected`` strings; ``trl_conversational``: ``prompt`` is a list of messages
  and ``chosen``/``rejected`` lists with one assistant message;
* ``trl_implicit_prompt`` (UltraFeedback binarized): ``chosen``/``rejected`` are whole conversations sharing
  the prompt; ``transcripts``: the same under ``chosen_messages``/``rejected_messages`` (LLaMA-Factory v1);
* ``llamafactory_alpaca``: alpaca columns with ``chosen``/``rejected``, or with ``output = [chosen, rejected]``;
  ``llamafactory_sharegpt``: ``conversations`` (or OpenAI ``messages``) plus ``chosen``/``rejected`` messages;
* ``hh``: Anthropic HH, ``chosen``/``rejected`` only, each a "\\n\\nHuman: ...\\n\\nAssistant: ..." dialogue;
* ``kto_prompt_completion`` / ``kto_messages``: one answer per row and a good/bad ``label`` (or ``kto_tag``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from engine.data.columns import LABEL_COLUMNS, MESSAGE_COLUMNS, as_bool, maybe_json
from engine.data.schema import ColumnMapping

PAIR_COLUMNS = (("chosen", "rejected"), ("chosen_messages", "rejected_messages"))
PROMPT_COLUMNS = ("prompt", "instruction", "question")
HH_MARK = "Human:"
_USER_ROLES = ("user", "human", "system")


@dataclass(frozen=True)
class PairShape:
    """A detected preference shape: ``kind`` is "pairs" or "feedback", ``mapping`` the columns it reads."""

    kind: str
    source: str
    mapping: ColumnMapping
    explanation: str


def detect_preference(rows: Sequence[dict[str, Any]], mapping: ColumnMapping | None = None) -> PairShape | None:
    """The preference shape of these (sampled) rows, or None when they are not preference data.

    An explicit SFT format in ``mapping`` means the user chose SFT: no shape. A mapped ``response`` column is
    the SFT route for pair files (``response=chosen``), so with one only a ranking list (which SFT can never
    learn as one answer) or a KTO answer column is recognised.
    """
    mapping = mapping or ColumnMapping()
    if mapping.format != "auto":
        return None
    columns = Counter(k for r in rows for k in r)
    pair = None if mapping.response else pair_columns(columns, mapping)
    if pair:
        return _pair_shape(rows, columns, mapping, *pair)
    return _ranking_shape(rows, columns, mapping) or _feedback_shape(rows, columns, mapping)


def pair_columns(columns: Counter[str] | set[str], mapping: ColumnMapping) -> tuple[str, str] | None:
    """The (chosen, rejected) columns: the mapped ones, else the first known pair present in the file."""
    if mapping.chosen or mapping.rejected:
        chosen, rejected = mapping.chosen or "chosen", mapping.rejected or "rejected"
        return (chosen, rejected) if chosen in columns and rejected in columns else None
    return next(((c, r) for c, r in PAIR_COLUMNS if c in columns and r in columns), None)


def is_transcript(value: Any) -> bool:
    """A list of message objects with a user or system turn: a whole conversation, not one reply."""
    return (isinstance(value, list) and bool(value) and all(isinstance(m, dict) for m in value)
            and any(str(m.get("role", m.get("from", ""))).strip().lower() in _USER_ROLES for m in value))


def is_answer_list(value: Any) -> bool:
    """A list of plain texts where one answer belongs: LLaMA-Factory's ranking ``output = [chosen, rejected]``."""
    return isinstance(value, list) and bool(value) and all(isinstance(v, str) for v in value)


def _first(rows: Sequence[dict[str, Any]], column: str | None) -> Any:
    """The first filled value of a column (JSON text decoded), for deciding what the column holds."""
    for r in rows:
        value = maybe_json(r.get(column)) if column else None
        if value not in (None, "", []):
            return value
    return None


def _common_columns(columns: Counter[str], mapping: ColumnMapping) -> dict[str, str | None]:
    """System, tools, history and query columns: mapped, else the usual names when present."""
    def pick(mapped: str | None, *names: str) -> str | None:
        return mapped or next((n for n in names if n in columns), None)

    return {"system": pick(mapping.system, "system"), "tools": pick(mapping.tools, "tools", "functions"),
            "history": pick(mapping.history, "history"), "query": pick(mapping.query, "input")}


def _pair_shape(rows: Sequence[dict[str, Any]], columns: Counter[str], mapping: ColumnMapping, chosen: str,
                rejected: str) -> PairShape:
    """Which pair shape, from what the chosen column holds and which prompt columns exist."""
    common = _common_columns(columns, mapping)
    both = f"'{chosen}' the better answer and '{rejected}' the worse one"
    if is_transcript(_first(rows, chosen)):
        return _transcript_shape(columns, common, chosen, rejected)
    messages = mapping.messages or next((c for c in MESSAGE_COLUMNS if c in columns), None)
    if messages:
        turns = _first(rows, messages)
        keys = "from/value" if isinstance(turns, list) and isinstance(turns[0], dict) and "from" in turns[0] \
            else "role/content"
        cols = ColumnMapping(messages=messages, system=common["system"], tools=common["tools"], chosen=chosen,
                             rejected=rejected)
        return PairShape("pairs", "llamafactory_sharegpt", cols, f"Preference pairs (LLaMA-Factory ShareGPT "
                         f"ranking): '{messages}' holds the conversation so far ({keys}), {both}.")
    prompt = mapping.prompt or next((c for c in PROMPT_COLUMNS if c in columns), None)
    if prompt:
        return _prompt_shape(rows, common, prompt, chosen, rejected)
    cols = ColumnMapping(chosen=chosen, rejected=rejected)
    sample = _first(rows, chosen)
    if isinstance(sample, str) and HH_MARK in sample:
        return PairShape("pairs", "hh", cols, f"Preference pairs in Anthropic HH style: '{chosen}' and '{rejected}' "
                         "are whole dialogues (\"Human: ... Assistant: ...\") that share everything but the final "
                         "Assistant reply, which is the better (chosen) or worse (rejected) answer.")
    return PairShape("pairs", "no_prompt", cols, f"Preference pairs: '{chosen}' (better) and '{rejected}' (worse) "
                     "answers, but no prompt column was found.")


def _transcript_shape(columns: Counter[str], common: dict[str, str | None], chosen: str,
                      rejected: str) -> PairShape:
    """Whole conversations under both columns: the prompt is the part they share."""
    cols = ColumnMapping(system=common["system"], tools=common["tools"], chosen=chosen, rejected=rejected)
    if chosen.endswith("_messages"):
        return PairShape("pairs", "transcripts", cols, f"Preference pairs as full transcripts: '{chosen}' and "
                         f"'{rejected}' each hold the whole conversation; the turns they share are the prompt and "
                         "their final assistant replies are the better (chosen) and worse (rejected) answers.")
    ignored = [c for c in ("prompt", "messages") if c in columns]
    note = f" The {' and '.join(repr(c) for c in ignored)} column(s) repeat the prompt and are not needed." \
        if ignored else ""
    return PairShape("pairs", "trl_implicit_prompt", cols, f"Preference pairs with an implicit prompt (as "
                     f"UltraFeedback binarized): '{chosen}' and '{rejected}' are whole conversations that share the "
                     f"prompt; the last assistant turn of each is the better / worse answer.{note}")


def _prompt_shape(rows: Sequence[dict[str, Any]], common: dict[str, str | None], prompt: str, chosen: str,
                  rejected: str) -> PairShape:
    """A prompt column with one answer per side: TRL standard/conversational or LLaMA-Factory alpaca."""
    both = f"'{chosen}' the better answer and '{rejected}' the worse one"
    alpaca = prompt == "instruction" or bool(common["query"] or common["history"])
    cols = ColumnMapping(prompt=prompt, query=common["query"] if alpaca else None, system=common["system"],
                         history=common["history"] if alpaca else None, tools=common["tools"], chosen=chosen,
                         rejected=rejected)
    if alpaca:
        return PairShape("pairs", "llamafactory_alpaca", cols,
                         f"Preference pairs (LLaMA-Factory alpaca ranking): {_alpaca_words(prompt, common)}, {both}.")
    if isinstance(_first(rows, prompt), list):
        return PairShape("pairs", "trl_conversational", cols, f"Preference pairs (TRL conversational): '{prompt}' "
                         f"is the list of prompt turns, {both}.")
    return PairShape("pairs", "trl", cols, f"Preference pairs (TRL standard): '{prompt}' is the user's prompt, {both}.")


def _alpaca_words(prompt: str, common: dict[str, str | None]) -> str:
    """How the alpaca columns make the prompt, in words."""
    return (f"'{prompt}' is the user's request"
            + (f", '{common['query']}' extra context appended on a new line" if common["query"] else "")
            + (f", '{common['history']}' earlier turns" if common["history"] else "")
            + (f", '{common['system']}' the system prompt" if common["system"] else ""))


def _ranking_shape(rows: Sequence[dict[str, Any]], columns: Counter[str], mapping: ColumnMapping) -> PairShape | None:
    """Alpaca rows whose ``output`` is a list of answers (LLaMA-Factory ranking): [chosen, rejected]."""
    prompt, output = mapping.prompt or "instruction", mapping.response or "output"
    if prompt not in columns or output not in columns:
        return None
    if not any(is_answer_list(r.get(output)) for r in rows):  # a real list: text reading like one stays text
        return None
    common = _common_columns(columns, mapping)
    cols = ColumnMapping(prompt=prompt, query=common["query"], system=common["system"], history=common["history"],
                         tools=common["tools"], response=output)
    return PairShape("pairs", "llamafactory_alpaca", cols, f"Preference pairs (LLaMA-Factory alpaca ranking): "
                     f"{_alpaca_words(prompt, common)}, and '{output}' holds two answers [chosen, rejected], the "
                     "better one first.")


def _feedback_shape(rows: Sequence[dict[str, Any]], columns: Counter[str], mapping: ColumnMapping) -> PairShape | None:
    """One answer per row with a good/bad label (KTO): prompt/completion columns or a conversation."""
    label = mapping.label or next((c for c in LABEL_COLUMNS if c in columns), None)
    if not label or label not in columns:
        return None
    values = [r[label] for r in rows if label in r]
    if not mapping.label and 2 * sum(as_bool(v) is not None for v in values) < len(values):
        return None  # mostly not true/false: some other kind of label (a class, a score)
    marks = f"'{label}' marks it good (true) or bad (false)"
    prompt, completion = mapping.prompt or "prompt", mapping.response or "completion"
    common = _common_columns(columns, mapping)
    if prompt in columns and completion in columns:
        cols = ColumnMapping(prompt=prompt, response=completion, system=common["system"], tools=common["tools"],
                             label=label)
        return PairShape("feedback", "kto_prompt_completion", cols, f"Feedback data for KTO (TRL unpaired "
                         f"preference): '{prompt}' is the prompt, '{completion}' the answer and {marks}.")
    messages = mapping.messages or next((c for c in MESSAGE_COLUMNS if c in columns), None)
    if not messages:
        return None
    cols = ColumnMapping(messages=messages, system=common["system"], tools=common["tools"], label=label)
    return PairShape("feedback", "kto_messages", cols, f"Feedback data for KTO: '{messages}' holds the conversation, "
                     f"its last assistant turn is the answer and {marks}.")
