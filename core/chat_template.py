"""Chat templates without a system prompt nobody asked for.

Some chat templates write a default system turn when a conversation has none: SmolLM2's says "You are a
helpful AI assistant named SmolLM, trained by Hugging Face", Qwen2.5's "You are Qwen, created by Alibaba
Cloud...". A newcomer never wrote that text, yet it would be trained on and answered with. Tune Studio renders
conversations exactly as written: a system turn appears only when the data (or the user) has one.

How: :func:`without_default_system` renders ``[user]`` and ``[system: probe, user]`` with the tokenizer's own
template. When the first contains a system block the second has with the probe in it, that block is the
injected one; the template is replaced by a wrapper that renders the original into a ``{% set %}`` block and
removes that exact block once when ``messages[0].role != 'system'``. The wrapper is checked on probe
conversations before it is kept; anything unexpected keeps the original template. The tokenizer saved with an
adapter or a merged model carries the wrapped template, so a published model renders the same way.

This is the one place that decides it; ``engine.models.load_tokenizer`` calls it for every tokenizer loaded.
"""

from __future__ import annotations

import json
import re
from typing import Any

PROBE = "zq_system_probe_7"
_USER = {"role": "user", "content": "zq_user_probe_3"}
_MARK = "{#- tune-studio: default system prompt removed -#}"
_GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")


def _render(tokenizer: Any, messages: list[dict[str, str]], generation: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)


def _common_affixes(a: str, b: str) -> tuple[int, int]:
    """Lengths of the common prefix and of the common suffix of two strings (not overlapping)."""
    p = 0
    while p < min(len(a), len(b)) and a[p] == b[p]:
        p += 1
    s = 0
    while s < min(len(a), len(b)) - p and a[-1 - s] == b[-1 - s]:
        s += 1
    return p, s


def injected_block(tokenizer: Any) -> tuple[str, str] | None:
    """(the system block the template adds to a conversation without one, its text), or None if it adds none."""
    plain = _render(tokenizer, [_USER])
    with_system = _render(tokenizer, [{"role": "system", "content": PROBE}, _USER])
    if PROBE not in with_system:
        return None  # the template drops or refuses system turns: nothing to compare against
    p, s = _common_affixes(plain, with_system)
    block, probe_block = plain[p:len(plain) - s], with_system[p:len(with_system) - s]
    if not block or PROBE not in probe_block:
        return None
    before, _, after = probe_block.partition(PROBE)
    if not (block.startswith(before) and block.endswith(after)) or len(block) <= len(before) + len(after):
        return None
    text = block[len(before):len(block) - len(after)]
    if not text.strip():
        return None
    return _whole_turn(tokenizer, plain, p + len(before), text, with_system) or text, text


def _whole_turn(tokenizer: Any, plain: str, start: int, text: str, with_system: str) -> str | None:
    """The injected text with its turn's header and end marker, when they can be told from the template.

    The header is the generation prompt with ``assistant`` read as ``system`` (ChatML: ``<|im_start|>system``
    and a new line); the end is what follows the probe when a system turn is rendered alone (ChatML:
    ``<|im_end|>`` and a new line). None: they cannot be told, and only the text is removed.
    """
    generation = _render(tokenizer, [_USER], True)
    bare = _render(tokenizer, [_USER])
    if not generation.startswith(bare) or "assistant" not in generation[len(bare):]:
        return None
    header = generation[len(bare):].replace("assistant", "system", 1)
    alone = _render(tokenizer, [{"role": "system", "content": PROBE}])
    if not with_system.startswith(alone):
        return None
    closer = alone.partition(PROBE)[2]
    end = start + len(text)
    if plain[max(0, start - len(header)):start] != header or plain[end:end + len(closer)] != closer:
        return None
    return plain[start - len(header):end + len(closer)]


def _literal(text: str) -> str:
    """A Jinja string literal for ``text`` (Jinja decodes backslash escapes as Python's unicode-escape does)."""
    return json.dumps(text, ensure_ascii=False)


def wrapped_template(template: str, block: str) -> str:
    """The original template, rendered into a block, with ``block`` removed once when there is no system turn."""
    return (f"{_MARK}{{%- set __ts_rendered -%}}{template}{{%- endset -%}}"
            "{%- if messages and messages[0]['role'] != 'system' -%}"
            f"{{{{- __ts_rendered | replace({_literal(block)}, '', 1) -}}}}"
            "{%- else -%}{{- __ts_rendered -}}{%- endif -%}")


def _probes() -> list[tuple[list[dict[str, str]], bool]]:
    sys_msg = {"role": "system", "content": PROBE}
    reply = {"role": "assistant", "content": "zq_reply_probe_5"}
    return [([_USER], False), ([_USER], True), ([_USER, reply], False), ([_USER, reply, _USER], True),
            ([sys_msg, _USER], False), ([sys_msg, _USER, reply], False), ([sys_msg, _USER], True)]


def _wrapper_agrees(tokenizer: Any, original: str, wrapped: str, block: str, text: str) -> bool:
    """The wrapped template renders every probe as the original minus the injected block, and nothing else."""
    for messages, generation in _probes():
        tokenizer.chat_template = original
        expected = _render(tokenizer, messages, generation)
        if messages[0]["role"] != "system":
            expected = expected.replace(block, "", 1)
        tokenizer.chat_template = wrapped
        got = _render(tokenizer, messages, generation)
        if got != expected or (messages[0]["role"] != "system" and text in got):
            return False
    return True


def without_default_system(tokenizer: Any) -> str | None:
    """Make ``tokenizer`` render no system turn unless the conversation has one; returns the removed text.

    Templates that add nothing, templates that are not plain strings, templates with ``{% generation %}``
    markers (their character positions would move), and any template for which the probes fail are left
    exactly as they were (returns None).
    """
    original = getattr(tokenizer, "chat_template", None)
    if not isinstance(original, str) or _MARK in original or _GENERATION_TAG.search(original):
        return None
    try:
        found = injected_block(tokenizer)
        if found is None:
            return None
        block, text = found
        wrapped = wrapped_template(original, block)
        if _wrapper_agrees(tokenizer, original, wrapped, block, text):
            tokenizer.chat_template = wrapped
            return text
    except Exception:  # a template raising on the probes: keep it as it is
        pass
    tokenizer.chat_template = original
    return None


def has_wrapper(template: Any) -> bool:
    """Whether a chat template was already rewritten by :func:`without_default_system`."""
    return isinstance(template, str) and _MARK in template
