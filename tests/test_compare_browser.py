"""Real browser: ask base and RAG side by side, run a small question set, vote blind, export the report (and
the preference-pairs line: base vs RAG votes give no pairs)."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import pytest

from tests.ui_harness import REPO, browser_page, require_browser, running_app, screenshot, set_number

SQUAD = REPO.parent / "shared" / "testdata" / "rag" / "squad_small" / "derived"
APP = REPO / "tests" / "apps" / "compare_only.py"

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _text(page, elem_id: str) -> str:
    return page.locator(f"#{elem_id}").inner_text()


def test_side_by_side_then_blind_vote_and_export(tmp_path: Path):
    require_browser()
    from engine.workspace import LOCAL_OWNER, Workspace
    from services.compare import build_corpus_index

    home = tmp_path / "home"
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("\n".join((SQUAD / "corpus.jsonl").read_text().splitlines()[:10]) + "\n")
    workspace = Workspace(LOCAL_OWNER, home)  # no sign-in configured: everyone is the local owner
    build_corpus_index(corpus, workspace.index_path("squad"))  # what the RAG tab would have built
    rows = [json.loads(line) for line in (SQUAD / "questions.jsonl").read_text().splitlines()[:2]]
    qfile = tmp_path / "questions.jsonl"
    qfile.write_text("\n".join(json.dumps(r) for r in rows) + "\n")

    with running_app(APP, home=home, log_name="compare-browser-app") as url, browser_page(url) as page:
        page.locator("#compare-collection input").click()
        page.get_by_role("option", name="squad").click()
        page.get_by_text("Generation settings (shared by every answer)").click()
        set_number(page, "compare-gen-max_new_tokens", 12)

        page.locator("#compare-question textarea").fill("In what country is Normandy located?")
        page.locator("#compare-ask").click()
        for arm in ("base", "rag"):
            page.wait_for_function(f"document.querySelector('#compare-stats-{arm}').innerText.includes('tokens/s')",
                                   timeout=240_000)
            assert "first token" in _text(page, f"compare-stats-{arm}")
            assert _text(page, f"compare-answer-{arm}").strip()
        assert "Normans#" in _text(page, "compare-chunks-rag")  # the RAG pane shows the cited/retrieved chunks
        # Under each answer, what produced it: read from the model, named in plain words.
        assert "Answered by: base SmolLM2-135M-Instruct · no adapter" in _text(page, "compare-stats-base")
        assert "no adapter · collection squad v2" in _text(page, "compare-stats-rag")  # created, then filled
        assert not page.locator("#compare-pane-ft").is_visible()  # arms not chosen stay hidden
        screenshot(page, "compare-1-side-by-side")

        page.locator("#compare-questions input[type=file]").set_input_files(str(qfile))
        page.wait_for_function("document.querySelector('#compare-questions').innerText.includes('questions')")
        page.locator("#compare-run-set").click()
        page.wait_for_function("document.querySelector('#compare-status').innerText.includes('Done')",
                               timeout=300_000)
        assert "Found the source" in _text(page, "compare-summary")

        page.locator("#compare-blind-start").click()
        page.wait_for_function("document.querySelector('#compare-blind-question').innerText.includes('1 of 2')")
        shown = _text(page, "compare-blind-a") + _text(page, "compare-blind-b")
        assert "Base model" not in shown and "RAG" not in shown  # blind: no arm names
        screenshot(page, "compare-2-blind")
        page.locator("#compare-vote-a").click()
        page.wait_for_function("document.querySelector('#compare-blind-question').innerText.includes('2 of 2')")
        page.locator("#compare-vote-tie").click()
        page.wait_for_function("document.querySelector('#compare-blind-question').innerText.includes('All questions')")
        wins = _text(page, "compare-wins")
        assert "Base model" in wins and "RAG (base + index)" in wins
        # No fine-tuned run was compared, so there is nothing for the votes to improve: the button says why.
        assert page.locator("#compare-improve").is_disabled()
        assert "no fine-tuned run" in _text(page, "compare-improve-status")

        page.locator("#compare-export").click()
        # the file list shows names as "stem" + ".ext" on separate lines
        page.wait_for_function("document.querySelector('#compare-exports').innerText.includes('comparison') && "
                               "document.querySelector('#compare-exports').innerText.includes('html')")
        # Base vs RAG answers saw different prompts: no preference pairs, and the line under the export says why.
        page.wait_for_function("document.querySelector('#compare-pairs-note').innerText.includes('No preference')")
        note = _text(page, "compare-pairs-note")
        assert "No preference pairs from 2 vote(s)" in note and "1 tie(s)" in note
        assert "1 vote(s) compared a RAG answer with a non-RAG one: the two saw different prompts" in note
        screenshot(page, "compare-3-voted")
        assert not page.errors, page.errors

    # The exported HTML report: self-contained, stamped with the configuration, holding answers and votes.
    pages = list(workspace.reports.glob("*/comparison.html"))
    assert len(pages) == 1
    report_html = html.unescape(pages[0].read_text())
    assert "<script" not in report_html and not re.search(r"(src|href)=", report_html)
    for needle in ("SmolLM2", '"max_new_tokens": 12', "Pipeline spec", "In what country is Normandy located?",
                   "A is better", "Tie", "RAG (base + index)", "retrieved: Normans#"):
        assert needle in report_html, needle
    data = json.loads(pages[0].with_suffix(".json").read_text())
    assert [v["choice"] for v in data["votes"]] == ["A", "tie"] and all(v["time"] for v in data["votes"])
    assert not list(pages[0].parent.glob("*.jsonl"))  # no pairs, so no empty pairs file
    assert data["config"]["pipeline"]["stages"]
    made_by = data["questions"][0]["answers"]["rag"]["provenance"]  # the export carries the provenance columns
    assert made_by["collection"] == "squad" and made_by["adapter"] is None and made_by["base_revision"]
