"""Real browser, the whole Experiment on the real app: documents -> generated questions (plus a few written by
hand in the table) -> leak-free split -> one fine-tuning step and four answering approaches -> the verdict,
which survives a reload. Tiny settings: the verdict must honestly be "too few questions to tell"."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from tests.ui_harness import REPO, browser_page, require_browser, running_app, screenshot, set_number

SQUAD = REPO.parent / "shared" / "testdata" / "rag" / "squad_small" / "derived"
NAME = "squad-experiment"
MIN_PAIRS = 4
TABLE = "#experiment-questions"

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _build_collection(home: Path) -> list[dict[str, Any]]:
    """The first 6 SQuAD documents as the collection "squad6"; returns SQuAD's own questions about them."""
    from engine.workspace import Workspace
    from services.compare import build_corpus_index

    home.mkdir(parents=True, exist_ok=True)
    lines = (SQUAD / "corpus.jsonl").read_text().splitlines()[:6]
    corpus = home / "squad6-corpus.jsonl"
    corpus.write_text("\n".join(lines) + "\n")
    build_corpus_index(corpus, Workspace("local", root=home).index_path("squad6"))
    docs = {json.loads(line)["doc_id"] for line in lines}
    rows = [json.loads(line) for line in (SQUAD / "questions.jsonl").read_text().splitlines()]
    return [r for r in rows if r.get("gold_doc_id") in docs and r.get("answers")]


def _text(page: Any, elem_id: str) -> str:
    return page.locator(f"#{elem_id}").inner_text()


def _wait_text(page: Any, elem_id: str, needles: tuple[str, ...], timeout_s: float) -> str:
    """Wait until the element's text holds one of ``needles``; returns that text (fails with what it showed)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = _text(page, elem_id)
        if any(n in text for n in needles):
            return text
        page.wait_for_timeout(1000)
    raise AssertionError(f"#{elem_id} never showed {needles}: {_text(page, elem_id)!r}")


def _type_cell(page: Any, row: int, col: int, text: str) -> None:
    """Edit one cell of the review table as a person does: double-click, type, Enter."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

    cell = page.locator(f"{TABLE} [data-testid=cell-{row}-{col}]")
    editor = cell.locator("textarea, input").first
    for attempt in range(3):  # under load the table can re-render between the Enter of the last cell and this click
        cell.dblclick()
        try:
            editor.wait_for(timeout=20_000)
            break
        except PlaywrightTimeoutError:
            if attempt == 2:
                raise
    editor.fill(text)
    editor.press("Enter")
    page.wait_for_function(f"document.querySelector('{TABLE} [data-testid=cell-{row}-{col}]').innerText"
                           f".includes({json.dumps(text[:20])})")


def _add_rows_by_hand(page: Any, start: int, squad: list[dict[str, Any]], count: int) -> None:
    """Add ``count`` rows with SQuAD's question, answer (also the quote: it is a span of the text) and document."""
    for offset, row in enumerate(squad[:count]):
        page.locator("#experiment-add-row").click()
        index = start + offset
        page.locator(f"{TABLE} [data-testid=cell-{index}-1]").wait_for()
        _type_cell(page, index, 1, row["question"])
        _type_cell(page, index, 2, row["answers"][0])
        _type_cell(page, index, 3, row["gold_doc_id"])
        _type_cell(page, index, 5, row["answers"][0])


def test_experiment_from_documents_to_a_verdict_that_survives_a_reload(tmp_path: Path) -> None:
    require_browser()
    from engine.workspace import Workspace
    from services.experiment import Experiment
    from services.experiment_report import ARM_NAMES

    home = tmp_path / "home"
    squad = _build_collection(home)
    exp = Experiment(Workspace("local", root=home).experiment_path(NAME))
    with running_app(REPO / "app.py", home=home, log_name="experiment-browser-app") as url, \
            browser_page(url) as page:
        page.get_by_role("tab", name="Experiment").click()
        # 1 · documents and model (the bundled model is the default)
        page.locator("#experiment-name input").fill(NAME)
        page.locator("#experiment-collection input").click()
        page.get_by_role("option", name="squad6").click()
        assert "SmolLM2" in page.locator("#experiment-model input").input_value()
        page.locator("#experiment-open").click()
        _wait_text(page, "experiment-status", ("Created",), 60)
        assert not page.locator(TABLE).is_visible()  # no questions yet: no table
        screenshot(page, "experiment-1-created")

        # 2 · generate, then review: the bundled model keeps about a third of its tries, so top up by hand
        # One pair, at most 3 passages tried (~12 s each on a busy core). Seed 4 tries first the passage the bundled
        # model made a kept pair from (Normans#3, tried 6th at seed 0 with 2 pairs asked), so the kept-pair path
        # below is exercised from one passage; a machine where greedy decoding differs still passes the other way.
        set_number(page, "experiment-qgen-questions", 1)
        page.locator("#experiment-qgen-advanced").get_by_text("Advanced").first.click()
        set_number(page, "experiment-qgen-seed", 4)
        page.locator("#experiment-generate").click()
        progress = _wait_text(page, "experiment-gen-progress", ("Done", "Stopped"), 900)  # 7 min seen at load 6
        kept = len(exp.questions())
        screenshot(page, "experiment-2-generated")
        assert kept or "Nothing usable" in progress, progress
        if kept:
            assert "pairs kept" in progress  # the job's own count, and why others were dropped
            assert page.locator(TABLE).is_visible()
        added = max(0, MIN_PAIRS - kept)
        _add_rows_by_hand(page, kept, squad, added)
        page.locator("#experiment-save").click()
        _wait_text(page, "experiment-questions-note", ("Saved",), 60)
        pairs = exp.questions()
        assert len(pairs) == kept + added >= MIN_PAIRS
        assert sum(p.origin == "user" for p in pairs) == added
        assert all(p.source and p.quote for p in pairs if p.origin == "user")
        screenshot(page, "experiment-3-reviewed")

        # 3 · split half and half
        set_number(page, "experiment-split-test_share", 0.5)
        page.locator("#experiment-split-button").click()
        summary = _wait_text(page, "experiment-split-summary", ("to test",), 120)
        assert "too few for a confident verdict" in summary  # the too-small warning
        split = exp.split()
        assert split is not None and split.test_ids and split.train_ids
        assert page.locator("#experiment-dropped").is_visible() == bool(split.dropped)
        screenshot(page, "experiment-4-split")

        # 4 · run: one step, short answers, one passage, with the judge
        set_number(page, "experiment-run-max_steps", 1)
        set_number(page, "experiment-run-answer_tokens", 8)
        set_number(page, "experiment-run-top_k", 1)
        assert page.locator("#experiment-run-judge input[type=checkbox]").is_checked()
        # The judge runs on every answer, with room for its verdict line ("Verdict: CORRECT", 5 tokens, and a little
        # preamble) instead of 48 tokens 8 times; what the 135M model grades (near chance) is not checked here.
        page.locator("#experiment-judge-prompts").get_by_text("The judge: how it scores").click()
        page.locator("#experiment-judge-advanced").get_by_text("Advanced").first.click()
        set_number(page, "experiment-judge-max_new_tokens", 16)
        page.locator("#experiment-run-button").click()
        _wait_text(page, "experiment-run-progress", ("Fine-tuning",), 60)
        screenshot(page, "experiment-5-running")
        verdict = _wait_text(page, "experiment-verdict", ("Too few questions to tell", "Stopped"), 1200)
        assert "Too few questions to tell" in verdict, (verdict, _text(page, "experiment-run-progress"))
        report = json.loads((exp.folder / "report.json").read_text())
        assert report["judge"]["settings"]["max_new_tokens"] == 16  # the run used the form's judge settings

        # 5 · the verdict, its tables and the downloads
        table = _text(page, "experiment-summary")
        assert all(name in table for name in ARM_NAMES.values()), table
        assert page.locator("#experiment-comparisons").is_visible()
        retrieval = _text(page, "experiment-retrieval")
        assert "Document" in retrieval and "Passage" in retrieval, retrieval
        assert "MRR@10" in _text(page, "experiment-retrieval-note")
        assert "Fine-tuning or RAG?" in _text(page, "experiment-key")
        files = _text(page, "experiment-report-files")
        assert all(ext in files for ext in ("html", "csv", "json")), files
        assert all((exp.folder / f"report.{ext}").is_file() for ext in ("html", "csv", "json"))
        shutil.copy(exp.folder / "report.json", REPO / "test-artifacts" / "experiment-report.json")  # to read later
        screenshot(page, "experiment-6-verdict")

        # Blind votes: two anonymous answers to a test question; a vote is kept and the next pair shown.
        page.locator("#experiment-votes").get_by_text("Check the judge yourself").click()
        first = _wait_text(page, "experiment-vote-question", ("Question:",), 30)
        page.locator("#experiment-vote-A").click()
        page.wait_for_function("(q) => !document.querySelector('#experiment-vote-question').innerText.includes(q)",
                               arg=first.split("Question:")[-1].strip()[:30], timeout=30_000)
        assert len((exp.folder / "votes.jsonl").read_text().splitlines()) == 1
        screenshot(page, "experiment-6b-votes")

        # A reload loses nothing: the latest experiment comes back with its verdict.
        page.reload()
        page.wait_for_selector(".gradio-container", state="visible")
        page.get_by_role("tab", name="Experiment").click()
        _wait_text(page, "experiment-verdict", ("Too few questions to tell",), 60)
        assert page.locator(TABLE).is_visible()
        assert NAME in _text(page, "experiment-status")
        screenshot(page, "experiment-7-reloaded")
        assert not page.errors, page.errors
