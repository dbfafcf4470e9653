"""The Data tab for a newcomer: kept datasets, the max-length line, the language check, the readable preview.

Real files from ../shared/testdata (identity.json is LLaMA-Factory's identity set: mostly Chinese rows), the
bundled SmolLM2 tokenizer, the visitor's real workspace folders.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from engine import data
from engine.config import TrainConfig
from engine.data.language import check_language, language_warning, model_languages
from engine.data.length_check import count_cut, cut_line
from engine.models import BUNDLED_ID
from engine.workspace import Workspace
from tests.conftest import FT_DATA

IDENTITY = FT_DATA / "identity.json"
ALPACA = FT_DATA / "alpaca_en_demo.json"


def test_kept_datasets_save_list_load_delete_and_stay_per_visitor(tmp_path: Path, monkeypatch) -> None:
    import engine.workspace as workspace

    alice, bob = Workspace("alice", tmp_path), Workspace("bob", tmp_path)
    first = alice.save_dataset(ALPACA, format="alpaca", rows=999)
    second = alice.save_dataset(IDENTITY)
    assert Path(first.path).read_bytes() == ALPACA.read_bytes() and first.rows == 999 and first.format == "alpaca"
    assert [r.id for r in alice.list_datasets()] == [second.id, first.id]
    assert alice.last_dataset().id == second.id
    again = alice.save_dataset(ALPACA)  # the same file again: kept once, its record kept, now the last one
    assert again.id == first.id and again.rows == 999 and len(alice.list_datasets()) == 2
    assert alice.update_dataset(second.id, format="alpaca", rows=91).label().startswith("identity.json (91 rows")
    assert alice.last_dataset().id == second.id
    assert bob.list_datasets() == [] and bob.last_dataset() is None
    with pytest.raises(KeyError):
        bob.dataset(first.id)  # another visitor's id reads as missing
    with pytest.raises(KeyError):
        alice.dataset("../bob")
    queued = alice.store().submit(TrainConfig(), first.path, owner="alice", start=False)
    with pytest.raises(ValueError, match="still using this dataset"):
        alice.delete_dataset(first.id)  # the queued run reads the file when it starts
    alice.store().cancel(queued.id)
    alice.delete_dataset(first.id)
    assert [r.id for r in alice.list_datasets()] == [second.id] and not Path(first.path).exists()
    monkeypatch.setattr(workspace, "MAX_SAVED_DATASETS", 1)
    with pytest.raises(ValueError, match="delete one"):
        alice.save_dataset(ALPACA)
    assert alice.save_dataset(IDENTITY).id == second.id  # a file already kept is never refused


def test_cut_count_on_a_real_file_matches_validation(tokenizer: Any) -> None:
    prepared = data.prepare(IDENTITY, None)
    report = data.validate(prepared, tokenizer, 48, "assistant")
    lengths = report.token_lengths
    assert len(lengths) == report.n_examples == 91
    n_cut = count_cut(lengths, 48)
    assert 0 < n_cut < 91 and n_cut == report.token_stats.n_truncated
    assert cut_line(lengths, 48).startswith(f"⚠️ {n_cut} of 91 examples are longer than 48 tokens and will be cut")
    assert count_cut(lengths, max(lengths)) == 0
    longest = max(lengths)
    assert cut_line(lengths, longest) == f"All 91 examples fit in max length {longest} tokens: nothing is cut."


def test_language_check_warns_for_data_the_model_was_not_trained_on() -> None:
    identity = data.prepare(IDENTITY, None).examples
    check = check_language(identity, BUNDLED_ID)
    assert check.counts.get("zh", 0) > 60 and check.foreign > 60
    warning = language_warning(identity, BUNDLED_ID)
    assert "SmolLM2" in warning and "Chinese" in warning and "Train tab" in warning
    assert language_warning(identity, "Qwen/Qwen2.5-0.5B-Instruct") == ""  # multilingual: nothing to say
    english = data.prepare(ALPACA, None).examples
    assert language_warning(english, BUNDLED_ID) == ""
    assert model_languages("some-org/unknown-model") is None


def test_preview_is_readable_by_default_and_exact_behind_the_toggle(tokenizer: Any) -> None:
    from ui.data_tab import DEMO_DATASET, analyse_file

    out = analyse_file(DEMO_DATASET, None, BUNDLED_ID, 256, "assistant", 0.1, 42)
    names = ["dataset", "examples", "status", "sft", *["m"] * (len(out) - 12), "report", "issues", "pairs",
             "histogram", "index", "exact", "info", "readable"]
    got = dict(zip(names, out, strict=True))
    readable = "".join(t for t, _ in got["readable"])
    learned = "".join(t for t, label in got["readable"] if label == "learned")
    first = got["examples"][0]
    assert readable.startswith("You: ") and "\n\nAssistant: " in readable and "<|im_start|>" not in readable
    assert learned.strip() == first.messages[-1].content.strip()
    exact = "".join(t for t, _ in got["exact"])
    assert exact.startswith("<|im_start|>user\n") and "named SmolLM" not in exact
    assert got["dataset"]["length_line"].startswith("All ") and got["dataset"]["language_warning"] == ""


def test_a_reload_loads_the_last_kept_dataset_again(tmp_path: Path, tokenizer: Any) -> None:
    """What the page-load event does: the last dataset of this visitor, with its mapping, into the shared state."""
    from ui.data_tab import load_saved, remember

    ws = Workspace("carol", tmp_path)
    kept = ws.save_dataset(IDENTITY)
    outputs = load_saved(ws, kept.id, list(range(20)), (BUNDLED_ID, 128, "assistant", 0.1, 42))
    state, saved = outputs[0], outputs[-1]
    assert state["dataset_id"] == kept.id and state["path"] == kept.path and state["format"] == "alpaca"
    assert saved.value == kept.id and saved.choices[0][1] == kept.id
    remember(ws, state)
    assert ws.dataset(kept.id).rows == 91 and ws.dataset(kept.id).format == "alpaca"
    gone = load_saved(ws, "0123456789ab", list(range(20)), (BUNDLED_ID, 128, "assistant", 0.1, 42))
    assert "not in your workspace" in gone[2] and str(tmp_path) not in gone[2]
