"""Preference data (DPO/ORPO pairs, KTO feedback): detection of every shape, row issues, the SFT path's refusal
and ``sft_on_chosen``, and tokens that match the SFT encoding exactly."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from engine.data import (
    ColumnMapping,
    DatasetError,
    Example,
    Message,
    chosen_examples,
    encode_example,
    encode_pair,
    encode_pairs,
    feedback_from_pairs,
    preference_kind,
    prepare,
    prepare_preferences,
    preview_pair,
    training_preferences,
    validate_preferences,
)
from tests.conftest import FT_DATA


def _user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def _bot(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


def _jsonl(tmp_path: Path, name: str, rows: list[Any], blank_after_first: bool = False) -> Path:
    """Rows as JSON Lines; a blank line after the first row makes file lines differ from row numbers."""
    lines = [json.dumps(r) for r in rows]
    if blank_after_first:
        lines.insert(1, "")
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _errors(prepared: Any) -> dict[int, str]:
    return {i.row: i.kind for i in prepared.issues if i.severity == "error"}


# ------------------------------------------------------------------------------------ the shared files


def test_llamafactory_sharegpt_pairs() -> None:
    prepared = prepare_preferences(FT_DATA / "dpo_en_demo.json")
    raw = json.loads((FT_DATA / "dpo_en_demo.json").read_text(encoding="utf-8"))
    assert preference_kind(FT_DATA / "dpo_en_demo.json") == "pairs"
    assert (prepared.kind, prepared.source, prepared.n_examples, prepared.issues) == (
        "pairs", "llamafactory_sharegpt", 300, [])
    assert "'conversations'" in prepared.explanation and "'chosen'" in prepared.explanation
    first = prepared.pairs[0]
    assert first.chosen == Message("assistant", raw[0]["chosen"]["value"])
    assert first.rejected == Message("assistant", raw[0]["rejected"]["value"])
    assert all(p.prompt[-1].role == "user" for p in prepared.pairs)
    with_system = next(p for p, r in zip(prepared.pairs, raw, strict=True) if r["conversations"][0]["from"] == "system")
    assert with_system.prompt[0].role == "system"


def test_kto_messages_feedback() -> None:
    prepared = prepare_preferences(FT_DATA / "kto_en_demo.json")
    assert preference_kind(FT_DATA / "kto_en_demo.json") == "feedback"
    assert (prepared.kind, prepared.source, prepared.n_examples) == ("feedback", "kto_messages", 300)
    good = [f for f in prepared.feedback if f.desirable]
    assert (len(good), prepared.n_examples - len(good)) == (150, 150)
    assert all(f.completion.role == "assistant" and f.prompt[-1].role == "user" for f in prepared.feedback)
    assert len(chosen_examples(prepared)) == 150  # SFT on feedback data learns the good answers
    # The SFT path keeps its behaviour: the answers labelled false are left out, with a warning.
    sft = prepare(FT_DATA / "kto_en_demo.json")
    assert len(sft.examples) == 150 and any("bad answers" in w for w in sft.warnings)


def test_v1_transcripts_share_the_prompt() -> None:
    prepared = prepare_preferences(FT_DATA / "v1_dpo_demo.jsonl")
    assert (prepared.kind, prepared.source, prepared.n_examples, prepared.issues) == ("pairs", "transcripts", 10, [])
    for pair in prepared.pairs:
        assert [m.role for m in pair.prompt] == ["system", "user"]
        assert pair.chosen.role == pair.rejected.role == "assistant"
        assert pair.chosen.content != pair.rejected.content
    raw = json.loads((FT_DATA / "v1_dpo_demo.jsonl").read_text(encoding="utf-8").splitlines()[0])
    assert prepared.pairs[0].chosen.content == raw["chosen_messages"][-1]["content"][0]["value"]


def test_sft_refuses_pairs_and_can_learn_the_chosen_answers() -> None:
    for name in ("dpo_en_demo.json", "v1_dpo_demo.jsonl"):
        with pytest.raises(DatasetError) as info:
            prepare(FT_DATA / name)
        assert info.value.code == "preference" and "DPO or ORPO" in str(info.value)
        assert info.value.where == name and "Train on the chosen answers" in info.value.fix
    sft = prepare(FT_DATA / "dpo_en_demo.json", sft_on_chosen=True)
    pairs = prepare_preferences(FT_DATA / "dpo_en_demo.json").pairs
    assert len(sft.examples) == 300
    assert [ex.messages[-1] for ex in sft.examples] == [p.chosen for p in pairs]
    assert any("rejected answers" in w and "ignored" in w for w in sft.warnings)
    # The explicit mapping route is still SFT on the mapped column.
    mapped = prepare(FT_DATA / "dpo_en_demo.json", ColumnMapping(response="chosen"))
    assert mapped.format == "sharegpt" and len(mapped.examples) == 300


def test_other_files_are_not_preference_data() -> None:
    assert preference_kind(FT_DATA / "alpaca_en_demo.json") is None
    assert preference_kind(FT_DATA / "mllm_demo.json") is None
    with pytest.raises(DatasetError) as info:
        prepare_preferences(FT_DATA / "alpaca_en_demo.json")
    assert info.value.code == "not_preference" and "SFT" in info.value.fix
    with pytest.raises(DatasetError) as info:
        prepare_preferences(FT_DATA / "mllm_demo.json")
    assert info.value.code == "multimodal"


# ------------------------------------------------------------------------------------ small inline files


PROMPT_SHAPES = {
    "trl": [{"prompt": "Capital of France?", "chosen": "Paris.", "rejected": "Lyon."},
            {"prompt": "2+2?", "chosen": "4", "rejected": "5"}],
    "trl_conversational": [{"prompt": [_user("Capital of France?")], "chosen": [_bot("Paris.")],
                            "rejected": [_bot("Lyon.")]},
                           {"prompt": [_user("2+2?")], "chosen": [_bot("4")], "rejected": [_bot("5")]}],
    "trl_implicit_prompt": [{"prompt": "Capital of France?", "messages": [_user("Capital of France?"), _bot("Paris.")],
                             "chosen": [_user("Capital of France?"), _bot("Paris.")],
                             "rejected": [_user("Capital of France?"), _bot("Lyon.")],
                             "score_chosen": 9.0, "score_rejected": 2.0},
                            {"prompt": "2+2?", "messages": [], "chosen": [_user("2+2?"), _bot("4")],
                             "rejected": [_user("2+2?"), _bot("5")], "score_chosen": 8.0, "score_rejected": 1.0}],
    "llamafactory_sharegpt": [{"messages": [_user("Capital of France?")], "chosen": _bot("Paris."),
                               "rejected": _bot("Lyon.")},
                              {"messages": [_user("2+2?")], "chosen": _bot("4"), "rejected": _bot("5")}],
    "hh": [{"chosen": "\n\nHuman: Capital of France?\n\nAssistant: Paris.",
            "rejected": "\n\nHuman: Capital of France?\n\nAssistant: Lyon."},
           {"chosen": "\n\nHuman: 2+2?\n\nAssistant: 4", "rejected": "\n\nHuman: 2+2?\n\nAssistant: 5"}],
}


@pytest.mark.parametrize("source", list(PROMPT_SHAPES))
def test_pair_shapes_read_the_same_pair(tmp_path: Path, source: str) -> None:
    path = _jsonl(tmp_path, f"{source}.jsonl", PROMPT_SHAPES[source])
    assert preference_kind(PROMPT_SHAPES[source]) == "pairs"  # records work as well as a path
    prepared = prepare_preferences(path)
    assert (prepared.source, prepared.n_examples, prepared.issues) == (source, 2, [])
    first = prepared.pairs[0]
    assert first.prompt == (Message("user", "Capital of France?"),)
    assert (first.chosen, first.rejected) == (Message("assistant", "Paris."), Message("assistant", "Lyon."))
    with pytest.raises(DatasetError) as info:
        prepare(path)
    assert info.value.code == "preference"


def test_alpaca_pairs_with_system_history_and_input(tmp_path: Path) -> None:
    rows = [{"instruction": "Greet", "input": "Ada", "system": "Be kind.", "history": [["Hey", "Hello"]],
             "chosen": "Hello Ada!", "rejected": "No."},
            {"instruction": "Part", "input": "", "system": "", "history": [], "chosen": "Bye!", "rejected": "Go."}]
    prepared = prepare_preferences(_jsonl(tmp_path, "alpaca_pairs.jsonl", rows))
    assert prepared.source == "llamafactory_alpaca" and prepared.n_examples == 2
    assert prepared.pairs[0].prompt == (Message("system", "Be kind."), Message("user", "Hey"),
                                        Message("assistant", "Hello"), Message("user", "Greet\nAda"))


RANKING = [
    {"instruction": "Say hi", "input": "", "output": ["Hello!", "Go away."]},
    {"instruction": "Count", "input": "", "output": ["1 2 3", "1 3 2", "3 2 1"]},
    {"instruction": "Same", "input": "", "output": ["Yes.", "Yes."]},
    {"instruction": "One", "input": "", "output": ["Only one"]},
    {"instruction": "Say bye", "input": "", "output": ["Goodbye!", "Whatever."]},
]


def test_alpaca_ranking_rows_with_wrong_lengths_and_identical_answers(tmp_path: Path) -> None:
    path = _jsonl(tmp_path, "ranking.jsonl", RANKING, blank_after_first=True)
    prepared = prepare_preferences(path)
    assert (prepared.source, [p.row for p in prepared.pairs]) == ("llamafactory_alpaca", [1, 5])
    assert _errors(prepared) == {2: "ranking", 3: "identical", 4: "ranking"}
    by_row = {i.row: i for i in prepared.issues}
    assert "exactly two answers [chosen, rejected]" in by_row[2].message and "has 3" in by_row[2].message
    assert "has 1" in by_row[4].message and "teaches nothing" in by_row[3].message
    assert by_row[2].line == 3 and by_row[2].where == "row 2 (line 3 of the file)"


def test_a_ranking_list_is_never_joined_into_one_answer(tmp_path: Path) -> None:
    path = tmp_path / "hi.json"
    path.write_text(json.dumps([{"instruction": "Say hi", "input": "", "output": ["Hello!", "Go away."]},
                                {"instruction": "Say bye", "input": "", "output": ["Bye!", "Get lost."]}]))
    with pytest.raises(DatasetError) as info:
        prepare(path)
    assert info.value.code == "preference"
    sft = prepare(path, sft_on_chosen=True)
    texts = [m.content for ex in sft.examples for m in ex.messages]
    assert [ex.messages[-1].content for ex in sft.examples] == ["Hello!", "Bye!"]
    assert not any("Go away." in t or "Get lost." in t for t in texts)
    # Forcing the SFT alpaca reader makes the list a row error, never "Hello!\nGo away.".
    with pytest.raises(DatasetError) as info:
        prepare(path, ColumnMapping(format="alpaca"))
    assert info.value.code == "ranking"


@pytest.mark.parametrize("name", ["dpo_en_demo.json", "kto_en_demo.json", "v1_dpo_demo.jsonl", "ranking"])
def test_the_detected_mapping_applied_again_reads_the_same(tmp_path: Path, name: str) -> None:
    """The Data tab shows the detected columns in its mapping form; applying them unchanged changes nothing."""
    path = _jsonl(tmp_path, "ranking.jsonl", RANKING) if name == "ranking" else FT_DATA / name
    detected = prepare_preferences(path)
    again = prepare_preferences(path, detected.mapping)
    assert (again.source, again.n_examples, again.issues) == (detected.source, detected.n_examples, detected.issues)
    assert preference_kind(path, detected.mapping) == detected.kind


def test_transcripts_must_share_everything_but_the_last_reply(tmp_path: Path) -> None:
    ask = [_user("Hi"), _bot("Hello"), _user("Name a colour")]
    rows = [{"chosen_messages": [*ask, _bot("Blue.")], "rejected_messages": [*ask, _bot("No.")]},
            {"chosen_messages": [_user("A"), _bot("B")], "rejected_messages": [_user("C"), _bot("D")]},
            {"chosen_messages": [_user("Hi"), _bot("Yo"), _user("x"), _bot("y")],
             "rejected_messages": [_user("Hi"), _bot("Hey"), _user("x"), _bot("z")]},
            {"chosen_messages": [*ask], "rejected_messages": [*ask, _bot("No.")]}]
    prepared = prepare_preferences(_jsonl(tmp_path, "transcripts.jsonl", rows))
    assert prepared.source == "transcripts" and prepared.pairs[0].prompt == tuple(
        Message(m["role"], m["content"]) for m in ask)
    assert _errors(prepared) == {2: "no_shared_prompt", 3: "transcripts_differ", 4: "roles"}
    assert "turn 2" in next(i.message for i in prepared.issues if i.row == 3)


def test_pairs_whose_answers_are_not_assistant_replies(tmp_path: Path) -> None:
    rows = [{"prompt": [_user("Q")], "chosen": [_bot("A")], "rejected": [_bot("B")]},
            {"prompt": [_user("Q")], "chosen": [_user("again?"), _bot("A")], "rejected": [_bot("B")]},
            {"prompt": [_user("Q")], "chosen": [_bot("A")], "rejected": [_bot("")]},
            {"prompt": [_user("Q"), _bot("A")], "chosen": [_bot("B")], "rejected": [_bot("C")]}]
    prepared = prepare_preferences(_jsonl(tmp_path, "roles.jsonl", rows))
    assert _errors(prepared) == {2: "roles", 3: "empty_field", 4: "roles"}
    assert "one assistant reply" in next(i.message for i in prepared.issues if i.row == 2)


def test_kto_prompt_completion_labels(tmp_path: Path) -> None:
    rows = [{"prompt": "Hi", "completion": "Hello!", "label": True},
            {"prompt": "Hi", "completion": "Go away.", "label": "no"},
            {"prompt": [_user("Q")], "completion": [_bot("A")], "label": 1},
            {"prompt": "Q", "completion": "A", "label": "maybe"},
            {"prompt": "Q", "completion": "A"}]
    prepared = prepare_preferences(_jsonl(tmp_path, "kto.jsonl", rows))
    assert (prepared.kind, prepared.source) == ("feedback", "kto_prompt_completion")
    assert [(f.row, f.desirable) for f in prepared.feedback] == [(1, True), (2, False), (3, True)]
    assert _errors(prepared) == {4: "bad_label", 5: "missing_label"}
    assert "'maybe'" in next(i.message for i in prepared.issues if i.row == 4)
    tagged = [{"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}], "kto_tag": t}
              for t in (True, False)]
    assert prepare_preferences(_jsonl(tmp_path, "kto_tag.jsonl", tagged)).source == "kto_messages"


def test_feedback_from_pairs_and_chosen_examples(tmp_path: Path) -> None:
    prepared = prepare_preferences(_jsonl(tmp_path, "trl.jsonl", PROMPT_SHAPES["trl"]))
    feedback = feedback_from_pairs(prepared.pairs)
    assert [(f.row, f.completion.content, f.desirable) for f in feedback] == [
        (1, "Paris.", True), (1, "Lyon.", False), (2, "4", True), (2, "5", False)]
    assert chosen_examples(prepared)[0] == Example(1, (Message("user", "Capital of France?"),
                                                       Message("assistant", "Paris.")))


# ------------------------------------------------------------------------------------ tokens


def test_pair_tokens_are_the_sft_tokens(tokenizer: Any) -> None:
    prepared = prepare_preferences(FT_DATA / "v1_dpo_demo.jsonl")
    pair = prepared.pairs[0]
    full = encode_pair(tokenizer, pair, 4096)
    for answer, ids in ((pair.chosen, full.chosen_ids), (pair.rejected, full.rejected_ids)):
        sft = encode_example(tokenizer, Example(pair.row, (*pair.prompt, answer)), 4096)
        assert full.prompt_ids + ids == sft.input_ids
        assert sft.assistant_masks[: len(full.prompt_ids)] == [0] * len(full.prompt_ids)  # no reply in the prompt
        assert sft.assistant_masks[len(full.prompt_ids)] == 1  # the reply starts right after it
    assert tokenizer.decode(full.chosen_ids).rstrip().endswith("<|im_end|>")  # learned to stop, as in SFT
    assert (full.prompt_cut, full.chosen_cut, full.rejected_cut) == (0, 0, 0)
    assert encode_pairs(tokenizer, prepared.pairs[:3], 4096)[0] == full


def test_max_length_keeps_the_end_of_the_prompt(tokenizer: Any) -> None:
    pair = prepare_preferences(FT_DATA / "v1_dpo_demo.jsonl").pairs[0]
    full = encode_pair(tokenizer, pair, 4096)
    cut = encode_pair(tokenizer, pair, 64)
    assert len(cut.prompt_ids) == 32 and cut.prompt_ids == full.prompt_ids[-32:]  # kept: the question at the end
    assert cut.prompt_cut == full.full_prompt - 32 and cut.full_prompt == len(full.prompt_ids)
    assert cut.chosen_ids == full.chosen_ids[: len(cut.chosen_ids)]
    assert len(cut.prompt_ids) + max(len(cut.chosen_ids), len(cut.rejected_ids)) <= 64
    assert cut.chosen_cut == len(full.chosen_ids) - len(cut.chosen_ids)
    preview = preview_pair(tokenizer, pair, 64)
    assert preview.cut_note.startswith(f"Max length 64 cuts {cut.prompt_cut} tokens from the start of the prompt")
    assert preview.prompt_text.endswith("English:<|im_end|>\n<|im_start|>assistant\n")
    assert (preview.prompt_tokens, preview.chosen_tokens) == (32, len(cut.chosen_ids))


def test_validation_counts_labels_and_cuts(tokenizer: Any, tmp_path: Path) -> None:
    kto = prepare_preferences(FT_DATA / "kto_en_demo.json")
    report = validate_preferences(kto, tokenizer, 256)
    assert (report.kind, report.n_rows, report.n_examples) == ("feedback", 300, 300)
    assert (report.n_desirable, report.n_undesirable) == (150, 150)
    assert report.n_cut > 0 and report.counts_by_kind()["truncated"] == report.n_cut
    assert report.prompt_tokens.mean > 0 and report.answer_tokens.p90 <= report.answer_tokens.max
    pairs = prepare_preferences(_jsonl(tmp_path, "ranking.jsonl", RANKING))
    checked = validate_preferences(pairs, tokenizer, 512)
    assert (checked.n_examples, checked.n_error_rows, checked.n_cut) == (2, 3, 0)
    assert [p.row for p in training_preferences(pairs, checked)] == [1, 5]
    assert len(checked.token_lengths) == 2
    preview = preview_pair(tokenizer, kto.feedback[1], 512)
    assert preview.label == ("good" if kto.feedback[1].desirable else "bad") and preview.rejected_text == ""


def test_inspect_summarises_pairs_instead_of_refusing(tokenizer: Any) -> None:
    from engine.data import inspect_report

    report = inspect_report(FT_DATA / "v1_dpo_demo.jsonl", tokenizer, max_length=128)
    assert report["ok"] and not report["refused"] and report["kind"] == "pairs"
    assert report["format"] == "transcripts" and report["usable_examples"] == 10
    assert report["cut_by_max_length"] == 10 and "dpo" in report["methods"]
    assert report["preview"]["chosen_text"] and report["preview"]["rejected_text"]
