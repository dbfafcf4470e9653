"""Where a visitor stands on the newcomer's path: data → training → documents → cited answer → compare → share.

Why a service: the first-run guide must follow the real state (a dataset already loaded, a run already
training, a collection already built) rather than its own clicks, and the same facts are cheap to read
from the visitor's workspace on every page load. The answer is plain data; ``ui/guide.py`` only shows it.
Steps whose result leaves no trace in the workspace (asking, comparing, sharing) count as done once the
visitor pressed their guide button in this page, which the UI passes in as ``visited``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

from core.files import locked, write_atomic
from engine.jobs import JobRecord
from engine.workspace import Workspace

State = Literal["done", "working", "todo"]

#: The guide's steps, in order: (id, short label for the step header, what the step shows and why).
STEPS: tuple[tuple[str, str, str], ...] = (
    ("data", "Data", "Examples of what you want the model to say. The demo dataset has questions and answers "
                     "about this app; the **Data** tab shows them exactly as the model will learn them."),
    ("train", "Train", "Fine-tuning teaches the model your examples. The *taste* preset runs a short training on "
                       "this computer (about two minutes) so you can see the loss fall and the answers change."),
    ("docs", "Documents", "RAG lets the model look things up instead of remembering them. Tune Studio splits "
                          "the demo documents into passages and indexes them; this runs beside the training."),
    ("ask", "Ask", "Ask a question over the documents: the answer cites the passages it used, and you can open "
                   "each one to check it."),
    ("compare", "Compare", "The same question to the base model, your fine-tuned model, RAG, and both together, "
                           "side by side: which approach actually helps on your questions?"),
    ("share", "Share", "Get a link to show your results, or publish a demo of your model in a few clicks."),
)
STEP_IDS: tuple[str, ...] = tuple(step for step, _, _ in STEPS)
VISIT_STEPS = ("ask", "compare", "share")  # done when their guide button was pressed (nothing is saved)


@dataclass(frozen=True)
class GuideProgress:
    """The facts the guide needs, read from one visitor's workspace."""

    has_data: bool
    run: JobRecord | None
    collection: str | None
    building: bool
    visited: frozenset[str] = frozenset()

    def state(self, step: str) -> State:
        """done / working (a job for it is queued or running) / todo."""
        if step == "data":
            return "done" if self.has_data or self.run is not None else "todo"
        if step == "train":
            if self.run is None or (self.run.finished and not self.run_done):
                return "todo"  # none yet, or it failed / was stopped: another run is the next thing to do
            return "done" if self.run_done else "working"
        if step == "docs":
            return "done" if self.collection else ("working" if self.building else "todo")
        return "done" if step in self.visited else "todo"

    @property
    def run_done(self) -> bool:
        return self.run is not None and self.run.status == "done"

    def current(self) -> int:
        """The first step not done yet (a step under way counts as started: the guide moves on past it,
        so the visitor builds documents while the model trains); the last step when all are done."""
        for index, step in enumerate(STEP_IDS):
            if self.state(step) == "todo":
                return index
        return len(STEP_IDS) - 1

    def checklist(self) -> str:
        """One line: ✓ done, ⏳ under way, ○ to do — so the whole path is visible at a glance."""
        marks = {"done": "✓", "working": "⏳", "todo": "○"}
        return " · ".join(f"{marks[self.state(step)]} {label}" for step, label, _ in STEPS)


def latest_train_run(ws: Workspace) -> JobRecord | None:
    """The visitor's newest training run (finished or not): the one the guide reports on."""
    runs = ws.runs()
    return max(runs, key=lambda job: job.created_at, default=None) if runs else None


def saved_datasets(ws: Workspace) -> bool:
    """Whether the visitor keeps a dataset ("Your datasets": uploads and the demo are kept there)."""
    return ws.last_dataset() is not None


GUIDE_FILE = "guide.json"


def visited_steps(ws: Workspace) -> frozenset[str]:
    """The visit-only steps this visitor has opened from the guide (kept, so a reload does not forget them)."""
    try:
        data = json.loads((ws.root / GUIDE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return frozenset()
    return frozenset(step for step in data.get("visited", []) if step in VISIT_STEPS)


def mark_visited(ws: Workspace, step: str) -> None:
    """Remember that the visitor opened a visit-only step (locked and swapped whole: two tabs may click)."""
    if step not in VISIT_STEPS:
        raise ValueError(f"Unknown guide step {step!r}.")
    with locked(ws.root):
        done = visited_steps(ws) | {step}
        write_atomic(ws.root / GUIDE_FILE, json.dumps({"visited": sorted(done)}))


def progress_of(ws: Workspace, *, loaded: bool = False) -> GuideProgress:
    """Read the facts from the workspace; ``loaded`` says the page already holds a dataset."""
    from services.index_jobs import index_jobs

    names = ws.index_names()
    return GuideProgress(has_data=loaded or saved_datasets(ws), run=latest_train_run(ws),
                         collection=names[-1] if names else None,
                         building=bool(index_jobs(ws, active_only=True)), visited=visited_steps(ws))
