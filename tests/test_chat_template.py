"""No system prompt unless the conversation has one: the same rendering in the preview, training and answers.

Uses the bundled SmolLM2 tokenizer (its template injects "You are a helpful AI assistant named SmolLM...")
and Qwen2.5's template text (which injects "You are Qwen, created by Alibaba Cloud...").
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from core.chat_template import has_wrapper, injected_block, without_default_system
from engine.data import encode_example, render_preview
from engine.data.schema import Example, Message
from engine.infer import ChatModel

SMOLLM_DEFAULT = "named SmolLM"
#: Qwen2.5-Instruct's chat template without its tools branch (the part that injects its default system prompt).
QWEN25 = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if (message.role == 'user') or (message.role == 'system' and not loop.first) or "
    "(message.role == 'assistant') %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


@pytest.fixture(scope="module")
def raw_tokenizer() -> Any:
    """The bundled tokenizer as transformers loads it, with its original template."""
    from transformers import AutoTokenizer

    from engine.models import bundled_model_dir

    return AutoTokenizer.from_pretrained(str(bundled_model_dir()), local_files_only=True)


def _chat(*turns: tuple[str, str]) -> Example:
    return Example(messages=tuple(Message(role, content) for role, content in turns), row=1)


def _msgs(ex: Example) -> list[dict[str, str]]:
    return [{"role": m.role, "content": m.content} for m in ex.messages]


def test_preview_training_and_inference_agree_without_injected_prompt(tokenizer: Any,
                                                                       raw_tokenizer: Any) -> None:
    ex = _chat(("user", "What is LoRA?"), ("assistant", "A small add-on to a model."))
    assert SMOLLM_DEFAULT in raw_tokenizer.apply_chat_template(_msgs(ex), tokenize=False)  # what we remove
    preview = render_preview(tokenizer, ex, max_length=512).text
    trained = tokenizer.decode(encode_example(tokenizer, ex, max_length=512).input_ids)
    prompt_ids = ChatModel.prompt_ids(SimpleNamespace(tokenizer=tokenizer), _msgs(ex)[:1])["input_ids"][0]
    prompt = tokenizer.decode(prompt_ids)
    assert SMOLLM_DEFAULT not in preview + trained + prompt
    assert preview == trained == "<|im_start|>user\nWhat is LoRA?<|im_end|>\n<|im_start|>assistant\n" \
        "A small add-on to a model.<|im_end|>\n"
    assert trained.startswith(prompt) and prompt.endswith("<|im_start|>assistant\n")


def test_a_system_message_is_kept(tokenizer: Any, raw_tokenizer: Any) -> None:
    ex = _chat(("system", "Answer in French."), ("user", "Hi"), ("assistant", "Bonjour"))
    trained = tokenizer.decode(encode_example(tokenizer, ex, max_length=512).input_ids)
    assert trained.startswith("<|im_start|>system\nAnswer in French.<|im_end|>\n")
    assert trained == raw_tokenizer.apply_chat_template(_msgs(ex), tokenize=False)


def test_saved_tokenizer_carries_the_template(tokenizer: Any, tmp_path: Path) -> None:
    """What an adapter or a merged model is saved with renders the same way once loaded elsewhere."""
    from transformers import AutoTokenizer

    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(str(tmp_path), local_files_only=True)
    assert has_wrapper(reloaded.chat_template)
    msgs = [{"role": "user", "content": "Hello!"}]
    assert reloaded.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == \
        "<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n"
    assert without_default_system(reloaded) is None  # already wrapped: not wrapped twice


def test_qwen_template_loses_its_default_and_keeps_the_rest(raw_tokenizer: Any) -> None:
    tok = _with_template(raw_tokenizer, QWEN25)
    assert injected_block(tok) == ("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a "
                                   "helpful assistant.<|im_end|>\n",
                                   "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.")
    assert without_default_system(tok) == "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
    user = [{"role": "user", "content": "Hi"}]
    assert tok.apply_chat_template(user, tokenize=False, add_generation_prompt=True) == \
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    system = [{"role": "system", "content": "Be brief."}, *user]
    assert tok.apply_chat_template(system, tokenize=False) == \
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"


@pytest.mark.parametrize("template", [
    # injects nothing: left exactly as it is
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}",
    # refuses every probe: kept, never broken
    "{{ raise_exception('only alternating user/assistant roles') }}",
])
def test_templates_without_injection_are_unchanged(raw_tokenizer: Any, template: str) -> None:
    tok = _with_template(raw_tokenizer, template)
    assert without_default_system(tok) is None
    assert tok.chat_template == template


def _with_template(raw_tokenizer: Any, template: str) -> Any:
    import copy

    tok = copy.deepcopy(raw_tokenizer)
    tok.chat_template = template
    return tok
