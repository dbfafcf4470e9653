"""Turning an :class:`Example` into the exact tokens the trainer sees, and which of them are learned.

One code path serves the trainer, the validator and the preview: :func:`_render` applies the model's own
chat template and records the character spans of the assistant replies; :func:`_tokenize` maps those spans
onto tokens with the tokenizer's offset mapping. No ``{% generation %}`` tags are needed: the start of each
reply is where ``apply_chat_template(messages[:i], add_generation_prompt=True)`` ends, and its end is where
``apply_chat_template(messages[:i + 1])`` ends, minus trailing whitespace, so the end-of-turn token
(``<|im_end|>``, ``<|eot_id|>``, ``<end_of_turn>``...) is learned and the model learns to stop. When a template
renders history differently from the last turn (prefixes do not line up), the reply text is located in the
full rendering instead, followed by any end-of-turn token.

How tools and roles reach templates that lack them (probed once per tokenizer, see :class:`TemplatePlan`):

* tool list: passed as ``tools=`` when the template renders it; otherwise (SmolLM2, Gemma...) written into
  the system message with the instruction to answer with ``<tool_call>{json}</tool_call>``;
* ``tool`` turns (tool results): kept as role ``tool`` when the template accepts it (SmolLM2 renders any role
  as ``<|im_start|>tool``; Qwen wraps it in ``<tool_response>``); otherwise sent as a user turn that starts
  with ``Tool result:``;
* system turns: merged into the first user turn when the template refuses a system role (Gemma 2).

Plain text (continued pre-training) is the text plus the EOS token, every token learned, split into windows of
``max_length`` tokens so nothing is cut off.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from engine.data.errors import DatasetError
from engine.data.schema import EncodedExample, Example, Message, PreviewExample

TRAIN_ON = ("assistant", "all")
_END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "<|endoftext|>", "</s>", "<|eom_id|>")
_PROBE = "zq_probe_marker"
_BATCH = 256
#: Characters per message tokenised for validation, per token of max length (see :func:`clip_for_stats`).
CHARS_PER_TOKEN_BOUND = 8


@dataclass(frozen=True)
class TemplatePlan:
    """What a chat template can render; decides how tools, tool results and system turns are written."""

    system_ok: bool
    tool_role_ok: bool
    native_tools: bool


_PLANS: dict[tuple[int, str], TemplatePlan] = {}


def _apply(tokenizer: Any, messages: list[dict[str, str]], tools: list[Any] | None, generation: bool = False) -> str:
    kwargs: dict[str, Any] = {"tokenize": False, "add_generation_prompt": generation}
    if tools:
        kwargs["tools"] = tools
    return tokenizer.apply_chat_template(messages, **kwargs)


def _try(tokenizer: Any, messages: list[dict[str, str]], tools: list[Any] | None = None) -> str | None:
    try:
        return _apply(tokenizer, messages, tools)
    except Exception:  # templates raise jinja TemplateError or plain exceptions for unsupported input
        return None


def template_plan(tokenizer: Any) -> TemplatePlan:
    """Probe the chat template once with tiny conversations (cached per tokenizer and template)."""
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        raise DatasetError(
            "This model's tokenizer has no chat template, so chat examples cannot be formatted for it.",
            code="no_chat_template",
            fix="Pick an instruct/chat model, or train on plain text.",
        )
    key = (id(tokenizer), str(template))
    if key not in _PLANS:
        user = {"role": "user", "content": "hi"}
        system = _try(tokenizer, [{"role": "system", "content": _PROBE}, user])
        tool = _try(
            tokenizer,
            [
                user,
                {"role": "assistant", "content": "a"},
                {"role": "tool", "content": _PROBE},
                {"role": "assistant", "content": "b"},
            ],
        )
        probe_tool = {
            "type": "function",
            "function": {"name": _PROBE, "description": "probe", "parameters": {"type": "object", "properties": {}}},
        }
        tools = _try(tokenizer, [user, {"role": "assistant", "content": "a"}], [probe_tool])
        _PLANS[key] = TemplatePlan(
            system_ok=bool(system and _PROBE in system),
            tool_role_ok=bool(tool and _PROBE in tool),
            native_tools=bool(tools and _PROBE in tools),
        )
    return _PLANS[key]


def _openai_tools(tools_json: str) -> list[dict[str, Any]]:
    """Tool specs in the OpenAI shape ({"type": "function", "function": {...}}) that templates expect."""
    parsed = json.loads(tools_json)
    items = parsed if isinstance(parsed, list) else [parsed]
    return [t if isinstance(t, dict) and "function" in t else {"type": "function", "function": t} for t in items]


def tools_system_text(tools: list[dict[str, Any]]) -> str:
    """The tool list written into the system message for templates without native tool support."""
    lines = "\n".join(json.dumps(t.get("function", t), ensure_ascii=False) for t in tools)
    return (
        "You can call the following tools. To call one, reply with <tool_call>\n"
        '{"name": <tool name>, "arguments": <arguments object>}\n</tool_call>\n'
        f"<tools>\n{lines}\n</tools>"
    )


def template_messages(tokenizer: Any, example: Example) -> tuple[list[dict[str, str]], list[dict[str, Any]] | None]:
    """The example as the messages (and tools) handed to ``apply_chat_template`` for this tokenizer."""
    plan = template_plan(tokenizer)
    msgs = [{"role": m.role, "content": m.content} for m in example.messages]
    tools = _openai_tools(example.tools) if example.tools else None
    if tools and not plan.native_tools:
        text = tools_system_text(tools)
        if msgs and msgs[0]["role"] == "system":
            msgs[0] = {"role": "system", "content": msgs[0]["content"] + "\n\n" + text}
        else:
            msgs.insert(0, {"role": "system", "content": text})
        tools = None
    if not plan.tool_role_ok:
        msgs = [
            {"role": "user", "content": "Tool result:\n" + m["content"]} if m["role"] == "tool" else m for m in msgs
        ]
    if not plan.system_ok and msgs and msgs[0]["role"] == "system" and len(msgs) > 1:
        first = msgs[1]
        msgs = [{"role": first["role"], "content": msgs[0]["content"] + "\n\n" + first["content"]}, *msgs[2:]]
    merged: list[dict[str, str]] = []
    for m in msgs:  # merging only matters after tool -> user rewriting (two results in a row)
        if merged and m["role"] == merged[-1]["role"] == "user" and not plan.tool_role_ok:
            merged[-1] = {"role": "user", "content": merged[-1]["content"] + "\n\n" + m["content"]}
        else:
            merged.append(m)
    return merged, tools


@dataclass
class Rendered:
    """The full text fed to the tokenizer and the character spans that are learned."""

    text: str
    spans: list[tuple[int, int]]
    is_text: bool = False


def render(tokenizer: Any, example: Example, train_on: str = "assistant") -> Rendered:
    """Apply the chat template and find the learned spans (see the module docstring)."""
    if train_on not in TRAIN_ON:
        raise ValueError(f"train_on must be one of {TRAIN_ON}, not {train_on!r}.")
    if example.is_text:
        text = (example.text or "") + (tokenizer.eos_token or "")
        return Rendered(text, [(0, len(text))], is_text=True)
    msgs, tools = template_messages(tokenizer, example)
    full = _apply(tokenizer, msgs, tools)
    if train_on == "all":
        return Rendered(full, [(0, len(full))])
    spans: list[tuple[int, int]] = []
    cursor = 0
    for i, m in enumerate(msgs):
        if m["role"] != "assistant":
            continue
        span = _span_by_prefix(tokenizer, msgs, tools, i, full) or _span_by_search(
            tokenizer, full, m["content"], cursor
        )
        if span is None:
            raise DatasetError(
                f"The chat template's output does not contain assistant turn {i + 1} as written.",
                code="template",
                fix="Report this with the row: the model's chat template rewrites replies.",
            )
        spans.append(span)
        cursor = span[1]
    return Rendered(full, spans)


def _span_by_prefix(
    tokenizer: Any, msgs: list[dict[str, str]], tools: list[Any] | None, i: int, full: str
) -> tuple[int, int] | None:
    prefix = _apply(tokenizer, msgs[:i], tools, generation=True)
    upto = _apply(tokenizer, msgs[: i + 1], tools)
    if not (full.startswith(prefix) and full.startswith(upto) and len(upto) > len(prefix)):
        return None
    end = len(upto.rstrip())
    return (len(prefix), end) if end > len(prefix) else None


def _span_by_search(tokenizer: Any, full: str, content: str, cursor: int) -> tuple[int, int] | None:
    needle = content.strip()
    start = full.find(needle, cursor)
    if start < 0 or not needle:
        return None
    end = start + len(needle)
    rest = full[end:]
    stripped = rest.lstrip(" \n")
    for marker in (tokenizer.eos_token, *_END_OF_TURN):
        if marker and stripped.startswith(marker):
            end += len(rest) - len(stripped) + len(marker)
            break
    return start, end


def _offsets(tokenizer: Any, texts: list[str]) -> list[tuple[list[int], list[tuple[int, int]]]]:
    """Token ids and character offsets; slow tokenizers get offsets from piecewise decoding."""
    try:
        enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
        return [
            (list(ids), [tuple(o) for o in offs])
            for ids, offs in zip(enc["input_ids"], enc["offset_mapping"], strict=True)
        ]
    except (NotImplementedError, ValueError, TypeError):
        out = []
        for text in texts:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            offs, pos = [], 0
            for k in range(len(ids)):
                end = len(tokenizer.decode(ids[: k + 1]))
                offs.append((pos, max(pos, end)))
                pos = max(pos, end)
            out.append((ids, offs))
        return out


def _mask(offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> list[int]:
    mask = []
    j = 0
    for s, e in offsets:
        e = max(e, s + 1)
        while j < len(spans) and spans[j][1] <= s:
            j += 1
        mask.append(1 if j < len(spans) and spans[j][0] < e and s < spans[j][1] else 0)
    return mask


@dataclass
class _Tokenized:
    rendered: Rendered
    ids: list[int]
    offsets: list[tuple[int, int]]
    mask: list[int]


def _tokenize(tokenizer: Any, rendered: list[Rendered]) -> list[_Tokenized]:
    out = []
    for start in range(0, len(rendered), _BATCH):
        chunk = rendered[start : start + _BATCH]
        for r, (ids, offs) in zip(chunk, _offsets(tokenizer, [r.text for r in chunk]), strict=True):
            out.append(_Tokenized(r, ids, offs, _mask(offs, r.spans)))
    return out


def _windows(tok: _Tokenized, max_length: int, row: int) -> list[EncodedExample]:
    """Plain text: consecutive windows of max_length tokens, all learned."""
    n = len(tok.ids)
    return [
        EncodedExample(tok.ids[s : s + max_length], tok.mask[s : s + max_length], False, row, k, n)
        for k, s in enumerate(range(0, n, max_length))
    ]


def _truncate(tok: _Tokenized, max_length: int, row: int) -> EncodedExample:
    n = len(tok.ids)
    return EncodedExample(tok.ids[:max_length], tok.mask[:max_length], n > max_length, row, 0, n)


def encode_example(tokenizer: Any, example: Example, max_length: int, train_on: str = "assistant") -> EncodedExample:
    """Tokens and loss mask of one example, cut at ``max_length`` (plain text: its first window).

    For training use :func:`encode_examples`, which splits plain text into windows instead of cutting it.
    """
    tok = _tokenize(tokenizer, [render(tokenizer, example, train_on)])[0]
    return _truncate(tok, max_length, example.row)


def encode_examples(
    tokenizer: Any,
    examples: list[Example],
    max_length: int,
    train_on: str = "assistant",
    drop_untrainable: bool = True,
) -> list[EncodedExample]:
    """What the trainer trains on: chats truncated at ``max_length``, plain text split into windows.

    Rows with no learned token left after truncation are dropped when ``drop_untrainable`` (they would only
    waste compute). Feed ``[e.to_trainer_row() for e in result]`` to TRL's SFTTrainer as a pre-tokenised dataset.
    """
    out = []
    for ex, tok in zip(
        examples, _tokenize(tokenizer, [render(tokenizer, ex, train_on) for ex in examples]), strict=True
    ):
        encoded = _windows(tok, max_length, ex.row) if ex.is_text else [_truncate(tok, max_length, ex.row)]
        out += [e for e in encoded if e.n_trained or not drop_untrainable]
    return out


def tokenize_for_stats(tokenizer: Any, examples: list[Example], train_on: str = "assistant") -> list[Any]:
    """Per example: (full token count, learned token count, learned count within max_length later) or an error.

    Used by validation; same rendering and tokenisation as training.
    """
    rendered: list[Rendered | DatasetError] = []
    for ex in examples:
        try:
            rendered.append(render(tokenizer, ex, train_on))
        except DatasetError as err:
            rendered.append(err)
        except Exception as err:  # a template raising on this row's content
            rendered.append(DatasetError(f"The chat template cannot format this row ({err}).", code="template"))
    ok = [r for r in rendered if isinstance(r, Rendered)]
    toks = iter(_tokenize(tokenizer, ok))
    return [r if isinstance(r, DatasetError) else next(toks) for r in rendered]


def row_chars(example: Example) -> int:
    """Characters of text in one example (messages, tool list, plain text): what ``max_row_chars`` bounds."""
    return len(example.text or "") + len(example.tools or "") + sum(len(m.content) for m in example.messages)


def clip_for_stats(example: Example, max_length: int) -> tuple[Example, bool]:
    """The example with each message cut to ``CHARS_PER_TOKEN_BOUND × max_length`` characters.

    Why: validation only needs the first ``max_length`` tokens exactly (what training keeps) and to know
    whether a row goes past them. A token spans far fewer than 8 characters in practice, so a message cut
    there still reaches past the cut-off, and tokenising it costs what ``max_length`` costs instead of
    what a 20 MB row would. Plain text is never clipped: it is trained in windows, all of it. Returns
    whether anything was cut (then the row's token count is only a lower bound).
    """
    if example.is_text:
        return example, False
    keep = CHARS_PER_TOKEN_BOUND * max(1, max_length)
    if all(len(m.content) <= keep for m in example.messages):
        return example, False
    messages = tuple(Message(m.role, m.content[:keep]) for m in example.messages)
    return dataclasses.replace(example, messages=messages), True


def render_preview(tokenizer: Any, example: Example, max_length: int, train_on: str = "assistant") -> PreviewExample:
    """The text exactly as the model sees it (after truncation; plain text: its first window).

    ``segments`` split it into learned / not-learned parts for highlighting.
    """
    tok = _tokenize(tokenizer, [render(tokenizer, example, train_on)])[0]
    return preview_from_tokens(tok, max_length, example.row)


def preview_from_tokens(tok: _Tokenized, max_length: int, row: int) -> PreviewExample:
    n = len(tok.ids)
    keep = min(n, max_length)
    text = tok.rendered.text
    cut = tok.offsets[keep - 1][1] if keep and keep < n else len(text)
    segments: list[tuple[str, bool]] = []
    seg_start = 0
    for k in range(1, keep):
        if tok.mask[k] != tok.mask[k - 1]:
            boundary = tok.offsets[k][0]
            segments.append((text[seg_start:boundary], bool(tok.mask[k - 1])))
            seg_start = boundary
    if keep:
        segments.append((text[seg_start:cut], bool(tok.mask[keep - 1])))
    segments = [(t, trained) for t, trained in segments if t]
    return PreviewExample(
        row=row,
        text=text[:cut],
        segments=segments,
        n_tokens=keep,
        n_trained_tokens=sum(tok.mask[:keep]),
        truncated=n > max_length and not tok.rendered.is_text,
        full_length=n,
    )
