"""Loading, format detection, normalisation and refusals (no tokenizer needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.data import (
    ColumnMapping,
    DatasetError,
    Example,
    Message,
    fill_placeholders,
    fingerprint_file,
    load_dataset_file,
    prepare,
    split_train_validation,
)
from tests.conftest import FT_DATA as LLAMA_FACTORY

# Every file of the folder: the exact format it must be detected as, or the refusal code it must get.
EXPECTED = {
    "alpaca_en_demo.json": ("alpaca", 999),
    "identity.json": ("alpaca", 91),
    "glaive_toolcall_en_demo.json": ("sharegpt", 300),
    "kto_en_demo.json": ("openai", 150),  # the 150 rows labelled false are left out by default
    "v1_sft_demo.jsonl": ("openai", 500),
    "reason_tool_use_demo_50.jsonl": ("openai", 50),
    "c4_demo.jsonl": ("text", 300),
    "wiki_demo.txt": ("text", 30),
    "dpo_en_demo.json": ("refused:preference", "preference data"),
    "v1_dpo_demo.jsonl": ("refused:preference", "preference data"),
    "mllm_demo.json": ("refused:multimodal", "multimodal"),
    "README.md": ("refused:not_a_dataset", "documentation"),
    "dataset_info.json": ("refused:not_a_dataset", "catalogue"),
    "LICENSE.LLaMA-Factory-Apache-2.0": ("refused:not_a_dataset", "licence"),
    "v1_dpo_demo.yaml": ("refused:not_a_dataset", "configuration file"),
    "v1_sft_demo.yaml": ("refused:not_a_dataset", "configuration file"),
}



def _listing() -> list[str]:
    return sorted(p.name for p in LLAMA_FACTORY.iterdir()) if LLAMA_FACTORY.is_dir() else []


@pytest.mark.parametrize("name", _listing())
def test_every_shared_file_is_detected_or_refused(name: str) -> None:
    assert name in EXPECTED, f"{name} is new in shared/testdata: decide how it is handled and add it to EXPECTED"
    expected, detail = EXPECTED[name]
    if expected.startswith("refused:"):
        with pytest.raises(DatasetError) as info:
            prepare(LLAMA_FACTORY / name)
        assert info.value.code == expected.split(":", 1)[1]
        assert detail in str(info.value)
        assert "How to fix:" in str(info.value)
    else:
        prepared = prepare(LLAMA_FACTORY / name)
        assert prepared.format == expected
        assert len(prepared.examples) == detail
        assert not [i for i in prepared.issues if i.severity == "error"]
        assert prepared.detection.explanation


def test_preference_refusal_names_the_methods_and_the_mapping_still_works() -> None:
    with pytest.raises(DatasetError) as info:
        prepare(LLAMA_FACTORY / "dpo_en_demo.json")
    assert "DPO or ORPO" in info.value.fix and "Train on the chosen answers" in info.value.fix
    assert "'conversations'" in info.value.problem and "'chosen'" in info.value.problem
    mapping = ColumnMapping(format="sharegpt", messages="conversations", response="chosen")
    prepared = prepare(LLAMA_FACTORY / "dpo_en_demo.json", mapping)
    raw = json.loads((LLAMA_FACTORY / "dpo_en_demo.json").read_text())
    assert len(prepared.examples) == 300
    assert prepared.examples[0].messages[-1] == Message("assistant", raw[0]["chosen"]["value"])
    assert any("rejected" in w for w in prepared.warnings)
    # Only naming the response column is enough: the rest is detected.
    assert prepare(LLAMA_FACTORY / "dpo_en_demo.json", ColumnMapping(response="chosen")).format == "sharegpt"
    v1 = prepare(LLAMA_FACTORY / "v1_dpo_demo.jsonl", ColumnMapping(format="openai", messages="chosen_messages"))
    assert len(v1.examples) == 10 and v1.examples[0].messages[-1].role == "assistant"


def test_kto_labels_exclude_bad_answers_unless_asked() -> None:
    prepared = prepare(LLAMA_FACTORY / "kto_en_demo.json")
    assert any("bad answers" in w for w in prepared.warnings)
    kept = prepare(LLAMA_FACTORY / "kto_en_demo.json", keep_negative_feedback=True)
    assert len(kept.examples) == 300


def test_identity_placeholders_are_reported_and_can_be_filled() -> None:
    prepared = prepare(LLAMA_FACTORY / "identity.json")
    assert any("{{name}}" in w and "{{author}}" in w for w in prepared.warnings)
    filled = prepare(LLAMA_FACTORY / "identity.json", placeholders={"name": "Ada", "author": "ACME"})
    assert not any("placeholder" in w for w in filled.warnings)
    assert "Ada" in filled.examples[0].messages[-1].content
    assert all("{{" not in m.content for ex in filled.examples for m in ex.messages)
    ex = Example(row=1, messages=(Message("user", "hi {{x}}"),))
    assert fill_placeholders([ex], {"x": "y"})[0].messages[0].content == "hi y"


def test_tool_calls_are_assistant_turns_and_observations_tool_turns() -> None:
    prepared = prepare(LLAMA_FACTORY / "glaive_toolcall_en_demo.json")
    ex = prepared.examples[0]
    roles = [m.role for m in ex.messages]
    assert roles[:6] == ["user", "assistant", "user", "assistant", "tool", "assistant"]
    assert ex.messages[3].content.startswith("<tool_call>\n{") and ex.messages[3].content.endswith("</tool_call>")
    assert json.loads(ex.tools)[0]["name"] == "search_recipes"
    reason = prepare(LLAMA_FACTORY / "reason_tool_use_demo_50.jsonl").examples[1]
    assert reason.messages[2].content.startswith("<think>\n") and "<tool_call>" in reason.messages[2].content


def test_plain_text_file_and_fingerprint() -> None:
    loaded = load_dataset_file(LLAMA_FACTORY / "wiki_demo.txt")
    assert loaded.info.kind == "txt" and loaded.lines[:3] == [1, 2, 3]
    assert len(fingerprint_file(LLAMA_FACTORY / "wiki_demo.txt")) == 64
    assert fingerprint_file(LLAMA_FACTORY / "wiki_demo.txt") == loaded.info.sha256


# ------------------------------------------------------------------------------------ hand-made bad inputs


def _write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


def _refusal(path: Path, **kwargs) -> DatasetError:
    with pytest.raises(DatasetError) as info:
        prepare(path, **kwargs)
    return info.value


@pytest.mark.parametrize("content", ["", "   \n\n\t  \n"])
def test_empty_and_whitespace_files(tmp_path: Path, content: str) -> None:
    err = _refusal(_write(tmp_path, "data.jsonl", content))
    assert err.code == "empty"
    assert "empty" in str(err) or "whitespace" in str(err)


def test_invalid_json_names_line_and_column(tmp_path: Path) -> None:
    path = _write(
        tmp_path, "data.json", '[\n {"instruction": "a", "output": "b"},\n {"instruction": "c" "output": "d"}\n]'
    )
    err = _refusal(path)
    assert err.code == "invalid_json"
    assert "line 3" in str(err) and "column" in str(err)


def test_jsonl_with_one_broken_line_reports_that_line(tmp_path: Path) -> None:
    lines = [json.dumps({"instruction": f"q{i}", "output": f"a{i}"}) for i in range(5)]
    lines[2] = '{"instruction": "q2", "output": '
    prepared = prepare(_write(tmp_path, "data.jsonl", "\n".join(lines)))
    assert len(prepared.examples) == 4
    assert any("line 3" in w for w in prepared.warnings)
    (issue,) = prepared.issues
    assert issue.row == 3 and issue.severity == "error" and issue.kind == "invalid_json"


def test_jsonl_named_json_and_json_named_txt(tmp_path: Path) -> None:
    rows = [{"prompt": "p", "completion": "c"}, {"prompt": "p2", "completion": "c2"}]
    prepared = prepare(_write(tmp_path, "data.json", "\n".join(json.dumps(r) for r in rows)))
    assert prepared.format == "prompt_completion" and prepared.info.kind == "jsonl"
    assert any("JSON Lines" in w for w in prepared.warnings)
    renamed = prepare(_write(tmp_path, "data.txt", json.dumps(rows)))
    assert renamed.format == "prompt_completion" and any("read as JSON" in w for w in renamed.warnings)


def test_single_json_object_is_refused_and_wrapper_is_unwrapped(tmp_path: Path) -> None:
    err = _refusal(_write(tmp_path, "one.json", json.dumps({"instruction": "a", "output": "b"})))
    assert err.code == "single_object" and "single example" in str(err)
    wrapped = prepare(_write(tmp_path, "wrapped.json", json.dumps({"data": [{"instruction": "a", "output": "b"}]})))
    assert wrapped.format == "alpaca" and len(wrapped.examples) == 1


def test_wrong_extension_and_binary(tmp_path: Path) -> None:
    err = _refusal(_write(tmp_path, "data.json", "instruction,output\na,b\n"))
    assert err.code == "wrong_extension" and "does not contain JSON" in str(err)
    assert _refusal(_write(tmp_path, "data.csv", b"%PDF-1.4 ...")).code == "not_a_dataset"
    assert _refusal(_write(tmp_path, "data.xlsx", "a,b")).code == "unsupported_type"


def test_csv_with_missing_values_reports_rows_and_lines(tmp_path: Path) -> None:
    path = _write(tmp_path, "data.csv", 'instruction,output\nq1,a1\nq2,\n,a3\n"multi\nline",a4\nq5\n')
    prepared = prepare(path)
    assert prepared.format == "alpaca"
    assert [ex.row for ex in prepared.examples] == [1, 4]
    by_row = {i.row: i for i in prepared.issues}
    assert by_row[2].kind == "empty_field" and by_row[2].field == "output" and by_row[2].line == 3
    assert by_row[3].kind == "empty_field" and by_row[3].field == "instruction"
    assert by_row[5].kind == "missing_field" and "(line 7 of the file)" in by_row[5].where


@pytest.mark.parametrize(
    ("encoding", "bom"), [("utf-8", b"\xef\xbb\xbf"), ("utf-16", b""), ("cp1252", b""), ("utf-16-le", b"\xff\xfe")]
)
def test_csv_encodings(tmp_path: Path, encoding: str, bom: bytes) -> None:
    text = "instruction;output\nCafé crème?;Très bien, merci — à bientôt.\nÜber naïve façade;Ça va.\n"
    prepared = prepare(_write(tmp_path, "data.csv", bom + text.encode(encoding)))
    assert prepared.format == "alpaca"
    assert prepared.examples[0].messages[-2].content == "Café crème?"
    assert prepared.examples[1].messages[-1].content == "Ça va."
    if encoding == "cp1252":
        assert prepared.info.encoding.lower().replace("_", "") in ("cp1252", "windows1252")
        assert any("not UTF-8" in w for w in prepared.warnings)


def _chat_file(tmp_path: Path, conversations: list[list[tuple[str, str]]]) -> Path:
    rows = [{"messages": [{"role": r, "content": c} for r, c in conv]} for conv in conversations]
    return _write(tmp_path, "chat.jsonl", "\n".join(json.dumps(r) for r in rows))


def test_conversation_checks(tmp_path: Path) -> None:
    ok = [("system", "s"), ("user", "u"), ("assistant", "a")]
    path = _chat_file(
        tmp_path,
        [
            ok,
            [("user", "u"), ("user", "u2"), ("assistant", "a")],  # not alternating
            [("user", "u")],  # no assistant turn
            [("user", "u"), ("wizard", "x"), ("assistant", "a")],  # unknown role
            [("user", "u"), ("assistant", "a"), ("user", "dangling")],  # trailing turn: warning, trimmed
            [("user", "u"), ("assistant", "   ")],  # empty reply
            [("assistant", "hello"), ("user", "u"), ("assistant", "a")],  # starts with assistant
        ],
    )
    prepared = prepare(path)
    kinds = {i.row: (i.severity, i.kind) for i in prepared.issues}
    assert kinds == {
        2: ("error", "roles"),
        3: ("error", "no_assistant"),
        4: ("error", "unknown_role"),
        5: ("warning", "trailing_turn"),
        6: ("error", "empty_field"),
        7: ("error", "roles"),
    }
    assert "wizard" in next(i.message for i in prepared.issues if i.row == 4)
    assert [ex.row for ex in prepared.examples] == [1, 5]
    assert prepared.examples[1].messages[-1].content == "a"


def test_all_rows_bad_is_refused_with_the_common_problem(tmp_path: Path) -> None:
    err = _refusal(_chat_file(tmp_path, [[("user", "u")], [("user", "v")]]))
    assert err.code == "no_assistant" and "row 1" in str(err)


def test_explicit_mapping_overrides_detection(tmp_path: Path) -> None:
    rows = [{"frage": "Wie heißt du?", "antwort": "Ada.", "text": "ignored", "kontext": "Bitte kurz."}]
    path = _write(tmp_path, "de.json", json.dumps(rows))
    assert prepare(path).format == "text"  # auto detection sees only a 'text' column it knows
    mapping = ColumnMapping(format="alpaca", prompt="frage", query="kontext", response="antwort")
    prepared = prepare(path, mapping)
    assert prepared.format == "alpaca"
    assert prepared.examples[0].messages == (
        Message("user", "Wie heißt du?\nBitte kurz."),
        Message("assistant", "Ada."),
    )
    err = _refusal(path, mapping=ColumnMapping(format="alpaca", prompt="frage", response="answer"))
    assert err.code == "missing_column" and "'answer'" in str(err) and "frage" in str(err)


def test_alpaca_history_system_and_csv_json_cells(tmp_path: Path) -> None:
    rows = [{"instruction": "q2", "input": "", "output": "a2", "system": "be nice", "history": [["q1", "a1"]]}]
    ex = prepare(_write(tmp_path, "h.json", json.dumps(rows))).examples[0]
    assert [(m.role, m.content) for m in ex.messages] == [
        ("system", "be nice"),
        ("user", "q1"),
        ("assistant", "a1"),
        ("user", "q2"),
        ("assistant", "a2"),
    ]
    conv = json.dumps([{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]).replace('"', '""')
    csv_path = _write(tmp_path, "c.csv", f'conversations\n"{conv}"\n')
    prepared = prepare(csv_path)
    assert prepared.format == "sharegpt" and prepared.examples[0].messages[-1].content == "hello"


def test_parquet_and_multimodal_parts(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist([{"prompt": "p", "completion": "c"}, {"prompt": "p2", "completion": "c2"}])
    pq.write_table(table, tmp_path / "d.parquet")
    assert prepare(tmp_path / "d.parquet").format == "prompt_completion"
    (tmp_path / "d.parquet").rename(tmp_path / "d.json")
    renamed = prepare(tmp_path / "d.json")
    assert renamed.info.kind == "parquet" and any("Parquet" in w for w in renamed.warnings)
    parts = [
        {
            "messages": [
                {"role": "user", "content": [{"type": "image_url", "image_url": "x.png"}]},
                {"role": "assistant", "content": "a cat"},
            ]
        }
    ]
    assert _refusal(_write(tmp_path, "mm.json", json.dumps(parts))).code == "multimodal"


def test_split_is_deterministic_and_keeps_duplicates_together() -> None:
    examples = [Example(row=i, text=f"doc {i % 40}") for i in range(1, 101)]
    train, val = split_train_validation(examples, 0.2, seed=7)
    assert (train, val) == split_train_validation(examples, 0.2, seed=7)
    assert len(train) + len(val) == 100 and 15 <= len(val) <= 25
    assert not {ex.text for ex in train} & {ex.text for ex in val}
    assert split_train_validation(examples, 0.0, seed=7) == (examples, [])
