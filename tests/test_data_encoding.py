"""Encoding, loss masks, preview and validation on the real SmolLM2 tokenizer."""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

import pytest

from engine.data import (
    Example,
    Message,
    encode_example,
    encode_examples,
    inspect_report,
    prepare,
    render_preview,
    template_plan,
    validate,
)
from tests.conftest import FT_DATA as LLAMA_FACTORY

EOT = "<|im_end|>"


def _chat(*turns: tuple[str, str], tools: str | None = None) -> Example:
    return Example(row=1, messages=tuple(Message(r, c) for r, c in turns), tools=tools)


def _trained_text(tokenizer: Any, enc: Any) -> list[str]:
    """Decode each run of consecutive trained tokens."""
    runs, current = [], []
    for tid, m in zip(enc.input_ids, enc.assistant_masks, strict=True):
        if m:
            current.append(tid)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return [tokenizer.decode(r) for r in runs]


def test_mask_covers_exactly_the_replies_and_their_end_of_turn(tokenizer: Any) -> None:
    ex = _chat(
        ("system", "Be brief."),
        ("user", "Hi there"),
        ("assistant", "Hello! How can I help?"),
        ("user", "Name a colour."),
        ("assistant", "Blue."),
    )
    enc = encode_example(tokenizer, ex, max_length=512)
    full = tokenizer.apply_chat_template([{"role": m.role, "content": m.content} for m in ex.messages], tokenize=False)
    assert tokenizer.decode(enc.input_ids) == full
    assert _trained_text(tokenizer, enc) == ["Hello! How can I help?" + EOT, "Blue." + EOT]
    assert not enc.truncated and len(enc.input_ids) == len(enc.assistant_masks) == enc.full_length
    assert enc.to_trainer_row() == {"input_ids": enc.input_ids, "assistant_masks": enc.assistant_masks}


def test_no_injected_system_prompt_and_train_on_all(tokenizer: Any) -> None:
    ex = _chat(("user", "2+2?"), ("assistant", "4"))
    enc = encode_example(tokenizer, ex, max_length=512)
    assert "named SmolLM" not in tokenizer.decode(enc.input_ids)  # no injected system prompt (core.chat_template)
    assert _trained_text(tokenizer, enc) == ["4" + EOT]
    everything = encode_example(tokenizer, ex, max_length=512, train_on="all")
    assert everything.input_ids == enc.input_ids and all(everything.assistant_masks)
    with pytest.raises(ValueError, match="train_on"):
        encode_example(tokenizer, ex, max_length=512, train_on="prompt")


def test_truncation_flag_and_preview_segments(tokenizer: Any) -> None:
    ex = _chat(("user", "Tell me a story."), ("assistant", "Once upon a time " * 40))
    enc = encode_example(tokenizer, ex, max_length=64)
    assert enc.truncated and len(enc.input_ids) == 64 and enc.full_length > 64
    preview = render_preview(tokenizer, ex, max_length=64)
    assert preview.truncated and preview.n_tokens == 64
    assert "".join(t for t, _ in preview.segments) == preview.text == tokenizer.decode(enc.input_ids)
    full = render_preview(tokenizer, ex, max_length=4096)
    assert not full.truncated and [t for t, trained in full.segments if trained] == ["Once upon a time " * 40 + EOT]
    assert full.marked().count("«") == 1 and full.n_trained_tokens == sum(
        encode_example(tokenizer, ex, 4096).assistant_masks
    )


def test_plain_text_is_windowed_not_truncated(tokenizer: Any) -> None:
    ex = Example(row=3, text="The quick brown fox jumps over the lazy dog. " * 20)
    whole = encode_example(tokenizer, ex, max_length=100_000)
    windows = encode_examples(tokenizer, [ex], max_length=32)
    assert [w.window for w in windows] == list(range(len(windows))) and len(windows) > 3
    assert all(len(w.input_ids) <= 32 and all(w.assistant_masks) and not w.truncated for w in windows)
    assert [t for w in windows for t in w.input_ids] == whole.input_ids
    assert whole.input_ids[-1] == tokenizer.eos_token_id and all(w.row == 3 for w in windows)


def test_tool_calls_render_through_the_system_message(tokenizer: Any) -> None:
    plan = template_plan(tokenizer)
    assert plan.system_ok and plan.tool_role_ok and not plan.native_tools  # SmolLM2 ignores tools=
    ex = prepare(LLAMA_FACTORY / "glaive_toolcall_en_demo.json").examples[0]
    preview = render_preview(tokenizer, ex, max_length=4096)
    assert preview.text.startswith("<|im_start|>system\nYou can call the following tools.")
    assert '"name": "search_recipes"' in preview.text and "<|im_start|>tool\n" in preview.text
    trained = [t for t, tr in preview.segments if tr]
    assert trained[1].startswith("<tool_call>\n{") and trained[1].endswith("</tool_call>" + EOT)
    assert not any("recipes" in t and '"instructions"' in t for t in trained)  # the tool result is not learned


def test_templates_without_system_or_tool_roles(tokenizer: Any) -> None:
    """A Gemma-like template that raises on system and tool roles: system merges into the user turn."""
    strict = copy.deepcopy(tokenizer)
    strict.chat_template = (
        "{% for m in messages %}{% if m['role'] not in ['user', 'assistant'] %}"
        "{{ raise_exception('Only user and assistant roles are supported') }}{% endif %}"
        "{{ '<start_of_turn>' + ('model' if m['role'] == 'assistant' else 'user') + '\n' + m['content'] + "
        "'<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
    )
    plan = template_plan(strict)
    assert not plan.system_ok and not plan.tool_role_ok
    ex = _chat(
        ("system", "Sys"),
        ("user", "Q"),
        ("assistant", "<tool_call>\n{}\n</tool_call>"),
        ("tool", "42"),
        ("assistant", "It is 42."),
    )
    preview = render_preview(strict, ex, max_length=512)
    assert preview.text.startswith("<start_of_turn>user\nSys\n\nQ<end_of_turn>")
    assert "<start_of_turn>user\nTool result:\n42<end_of_turn>" in preview.text
    assert [t for t, tr in preview.segments if tr] == [
        "<tool_call>\n{}\n</tool_call><end_of_turn>",
        "It is 42.<end_of_turn>",
    ]


def test_validate_alpaca_is_fast_and_reports_lengths(tokenizer: Any) -> None:
    prepared = prepare(LLAMA_FACTORY / "alpaca_en_demo.json")
    start = time.perf_counter()
    report = validate(prepared, tokenizer, max_length=256)
    assert time.perf_counter() - start < 15
    stats = report.token_stats
    assert stats.count == 999 and stats.min <= stats.p50 <= stats.p90 <= stats.p99 <= stats.max
    assert stats.n_truncated == sum(1 for i in report.issues if i.kind == "truncated") > 0
    assert report.n_examples + report.n_error_rows == 999 and report.ok
    assert all(i.row >= 1 for i in report.issues)


def test_validate_flags_duplicates_and_untrainable_rows(tokenizer: Any, tmp_path: Path) -> None:
    rows = [
        {"instruction": "Say hi", "output": "Hi!"},
        {"instruction": "Say hi", "output": "Hi!"},
        {"instruction": "long " * 300, "output": "ok"},
    ]
    path = tmp_path / "d.json"
    path.write_text(json.dumps(rows))
    report = validate(prepare(path), tokenizer, max_length=128)
    kinds = {(i.row, i.kind, i.severity) for i in report.issues}
    assert (2, "duplicate", "warning") in kinds and (3, "truncated", "error") in kinds
    assert report.n_duplicates == 1 and report.n_examples == 2
    assert "duplicate of row 1" in next(i.message for i in report.issues if i.kind == "duplicate")


@pytest.mark.parametrize("name", ["identity.json", "reason_tool_use_demo_50.jsonl", "wiki_demo.txt", "mllm_demo.json"])
def test_inspect_report_is_json(tokenizer: Any, name: str) -> None:
    report = inspect_report(LLAMA_FACTORY / name, tokenizer, max_length=512)
    json.dumps(report)
    if name == "mllm_demo.json":
        assert report["refused"] and report["code"] == "multimodal"
        return
    assert report["ok"] and "«" in report["preview"]["text"]
    assert report["token_stats"]["count"] >= report["usable_examples"] > 0
