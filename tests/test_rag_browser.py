"""Real browser: upload files, build the index, reorder a post-retrieval step, ask, see citations."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.ui_harness import REPO, browser_page, require_browser, running_app, screenshot

DOCS = REPO.parent / "shared" / "testdata" / "docs" / "unstructured"
APP = REPO / "tests" / "apps" / "rag_only.py"

pytestmark = [pytest.mark.browser, pytest.mark.slow,
              pytest.mark.skipif(not DOCS.is_dir(), reason=f"shared test data missing at {DOCS}")]


def _post_order(page) -> list[str]:
    """The post-retrieval cards in document order, by our own elem_ids (never Gradio's internal classes).

    gr.Group repeats its elem_id on an inner element: the first element of each name is the card."""
    return page.evaluate("[...new Set(Array.from(document.querySelectorAll('#rag-post-steps [id^=\"rag-step-\"]'))"
                         ".map(e => e.id.slice(9)))]")


def test_build_reorder_ask_and_see_citations(tmp_path: Path):
    require_browser()
    files = [str(DOCS / n) for n in ("fake-memo.pdf", "book-war-and-peace-1p.txt", "password.pdf")]
    with running_app(APP, home=tmp_path / "home", log_name="rag-browser-app") as url, browser_page(url) as page:
        page.locator("#rag-open").click()
        page.wait_for_function("document.querySelector('#rag-status').innerText.includes('New collection')")

        page.locator("#rag-upload input[type=file]").set_input_files(files)
        # the file list shows names as "stem" + ".ext" on separate lines
        page.wait_for_function("['fake-memo', 'book-war-and-peace-1p', 'password'].every("
                               "n => document.querySelector('#rag-upload').innerText.includes(n))")
        page.locator("#rag-preview").click()
        page.wait_for_function("document.querySelector('#rag-preview-text').innerText.includes('chunks from 2 file')")
        page.locator("#rag-build").click()
        page.wait_for_function("document.querySelector('#rag-build-log').innerText.includes('Done')",
                               timeout=240_000)
        log = page.locator("#rag-build-log").inner_text()
        assert "password.pdf" in log and "password-protected" in log
        assert "fake-memo.pdf" in log
        screenshot(page, "rag-1-built")

        page.locator("#rag-question textarea").fill("How many bottles of water were there?")
        page.locator("#rag-search").click()
        page.wait_for_function("document.querySelector('#rag-hits').innerText.includes('book-war-and-peace')")

        # Drop "threshold" from the palette (below the divider) on the divider: gr.Draggable swaps the two, so the
        # step crosses into the pipeline. Apply: it now runs, and the passages whose meaning is far from the question
        # (the novel's, cosine < 0.2) leave the hit table.
        page.get_by_text("Advanced: the pipeline step by step").click()  # the cards live under "Advanced"
        page.locator("#rag-step-threshold [data-testid=drag-handle]").wait_for(state="visible")
        before = _post_order(page)
        assert before[:3] == ["dedupe", "rerank", "unused"] and before.index("threshold") > before.index("unused")
        page.locator("#rag-step-threshold [data-testid=drag-handle]").drag_to(page.locator("#rag-step-unused").first)
        after = _post_order(page)
        assert after[:4] == ["dedupe", "rerank", "threshold", "unused"], after  # in, after rerank; nothing else moved
        page.locator("#rag-apply").click()
        page.wait_for_function(f"document.querySelector('#rag-order textarea, #rag-order input').value"
                               f" === {json.dumps(','.join(after))}")
        screenshot(page, "rag-2-step-dragged-in")
        # The checks follow the form before Apply: keyword-only search makes the threshold card explain itself;
        # back to hybrid, the warning goes (nothing applied meanwhile).
        for mode, shown in (("bm25", "true"), ("hybrid", "false")):
            page.locator("#rag-retrieve-mode input").click()
            page.get_by_role("option", name=mode, exact=True).click()
            page.wait_for_function("document.querySelector('#rag-check-threshold').innerText"
                                   f".includes('keyword only') === {shown}", timeout=30_000)
        page.locator("#rag-search").click()
        page.wait_for_function("(t => t.includes('fake-memo.pdf') && !t.includes('book-war-and-peace'))"
                               "(document.querySelector('#rag-hits').innerText)")
        page.locator("#rag-ask").click()
        page.wait_for_function("document.querySelector('#rag-answer').innerText.includes('Sources cited') || "
                               "document.querySelector('#rag-answer').innerText.includes('cites no passage')",
                               timeout=300_000)
        sources = page.locator("#rag-sources").inner_text()
        assert "[1]" in sources and "fake-memo.pdf" in sources
        # The table's DOM is Gradio's business; its text lists passage [1] before [2].
        first_row = sources.split("[1]", 1)[1].split("[2]", 1)[0]
        assert "fake-memo.pdf" in first_row and "p. 1" in first_row, sources
        made_by = page.locator("#rag-answer").inner_text()
        assert "Answered by: base SmolLM2-135M-Instruct · no adapter · collection " in made_by, made_by
        screenshot(page, "rag-3-answer")
        assert not page.errors, page.errors


def test_a_reload_mid_build_follows_the_build_again_and_cancel_leaves_the_collection_unchanged(tmp_path: Path):
    """The build runs as a job, not in the page: a reload finds it again, and Cancel stops it before it saves."""
    require_browser()
    from rag.index import RagIndex

    wiki = REPO.parent / "shared" / "testdata" / "ft" / "llama_factory" / "wiki_demo.txt"  # 1 MB: a long build
    home = tmp_path / "home"
    with running_app(APP, home=home, log_name="rag-reload-app") as url, browser_page(url) as page:
        page.locator("#rag-open").click()
        page.wait_for_function("document.querySelector('#rag-status').innerText.includes('New collection')")
        page.locator("#rag-upload input[type=file]").set_input_files([str(wiki)])
        page.wait_for_function("document.querySelector('#rag-upload').innerText.includes('wiki_demo')")
        page.locator("#rag-confirm-build input[type=checkbox]").check()
        page.locator("#rag-build").click()
        page.wait_for_function("document.querySelector('#rag-build-log').innerText.includes('Embedding')",
                               timeout=240_000)
        page.reload()
        page.wait_for_selector(".gradio-container", state="visible")
        page.wait_for_function("document.querySelector('#rag-build-log').innerText.includes('Embedding')",
                               timeout=60_000)
        screenshot(page, "rag-4-reloaded-mid-build")
        page.locator("#rag-cancel").click()
        page.wait_for_function("document.querySelector('#rag-build-log').innerText.includes('Cancelled')",
                               timeout=240_000)
        screenshot(page, "rag-5-cancelled")
        assert not page.errors, page.errors
    index = RagIndex.open(home / "workspaces" / "local" / "indexes" / "my-documents")
    assert index.version == 1 and index.files == {}  # as "Open collection" created it
