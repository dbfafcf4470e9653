"""The first-run guide follows the visitor's real workspace: what is done is ticked and skipped."""

from __future__ import annotations

from pathlib import Path

from engine.config import TrainConfig
from engine.workspace import Workspace
from services.guide import STEP_IDS, mark_visited, progress_of

DEMO = Path(__file__).resolve().parents[1] / "ui" / "demo_data" / "tune_studio_faq.json"


def step_index(step: str) -> int:
    return STEP_IDS.index(step)


def test_an_empty_workspace_starts_at_the_data_step_with_nothing_ticked(tmp_path: Path) -> None:
    progress = progress_of(Workspace("alice", root=tmp_path))
    assert progress.current() == 0
    assert progress.checklist().count("○") == len(STEP_IDS) and "✓" not in progress.checklist()


def test_a_loaded_dataset_then_a_queued_run_move_the_guide_on_to_the_documents(tmp_path: Path) -> None:
    ws = Workspace("alice", root=tmp_path)
    assert progress_of(ws, loaded=True).current() == step_index("train")  # held by the page, not yet saved
    ws.save_dataset(DEMO)  # saved in the workspace: survives a reload
    assert progress_of(ws).current() == step_index("train")
    job = ws.store().submit(TrainConfig(), ws.last_dataset().path, owner="alice", start=False)
    progress = progress_of(ws)
    assert progress.state("train") == "working" and progress.current() == step_index("docs")
    assert "⏳ Train" in progress.checklist() and "✓ Data" in progress.checklist()
    ws.store().cancel(job.id)  # a stopped run is not a trained model: training is to do again
    assert progress_of(ws).state("train") == "todo" and progress_of(ws).current() == step_index("train")


def test_visits_are_kept_per_visitor_and_a_collection_counts_as_documents(tmp_path: Path) -> None:
    alice, bob = Workspace("alice", root=tmp_path), Workspace("bob", root=tmp_path)
    mark_visited(alice, "ask")
    mark_visited(alice, "ask")  # twice is once
    assert progress_of(alice).state("ask") == "done" and progress_of(bob).state("ask") == "todo"
    (alice.index_path("demo-docs") / "manifest.json").parent.mkdir(parents=True)
    (alice.index_path("demo-docs") / "manifest.json").write_text("{}")
    assert progress_of(alice).state("docs") == "done" and progress_of(alice).collection == "demo-docs"
    assert progress_of(bob).state("docs") == "todo"
