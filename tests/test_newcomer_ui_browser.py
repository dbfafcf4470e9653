"""Real browser: opening Compare, Chat or Share lists a collection built after the page loaded (no Refresh), empty
tables stay hidden, the small-model note is shown, and Share explains why this computer has no public link."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.ui_harness import REPO, browser_page, require_browser, running_app, screenshot

SQUAD = REPO.parent / "shared" / "testdata" / "rag" / "squad_small" / "derived"
APP = REPO / "tests" / "apps" / "newcomer_ui_app.py"

pytestmark = [pytest.mark.browser]


def _text(page, elem_id: str) -> str:
    return page.locator(f"#{elem_id}").inner_text()


def test_opening_a_tab_lists_what_was_built_since_the_page_loaded(tmp_path: Path) -> None:
    require_browser()
    from engine.workspace import LOCAL_OWNER, Workspace
    from services.compare import build_corpus_index

    home = tmp_path / "home"
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("\n".join((SQUAD / "corpus.jsonl").read_text().splitlines()[:3]) + "\n")
    with running_app(APP, home=home, log_name="newcomer-ui-app") as url, browser_page(url) as page:
        page.get_by_role("tab", name="Compare").click()
        page.wait_for_function("document.querySelector('#compare-model-note').innerText.includes('135M')")
        for hidden in ("compare-summary", "compare-table", "compare-wins", "compare-chunks-rag"):
            assert not page.locator(f"#{hidden}").is_visible(), hidden  # no empty tables before anything ran
        assert page.locator("#compare-collection input").input_value() == ""

        build_corpus_index(corpus, Workspace(LOCAL_OWNER, home).index_path("squad"))  # as the RAG tab would
        page.get_by_role("tab", name="Chat").click()
        page.locator("#chat-collection input").click()
        page.get_by_role("option", name="squad").wait_for(timeout=15_000)  # listed without pressing Refresh
        page.keyboard.press("Escape")
        assert "135M" in _text(page, "chat-model-note") and not page.locator("#chat-sources").is_visible()

        page.locator("#to-compare").click()  # a button switching tabs (the guide) refreshes too, and picks it
        page.wait_for_function("document.querySelector('#compare-collection input').value === 'squad'",
                               timeout=15_000)
        screenshot(page, "newcomer-compare-fresh-lists")
        page.get_by_role("tab", name="Share").click()
        page.wait_for_function("document.querySelector('#share-link').innerText.includes('not reachable')")
        assert "Push the demo Space" in _text(page, "share-steps")
        screenshot(page, "newcomer-share")
        assert not page.errors, page.errors
