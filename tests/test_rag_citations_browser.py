"""Real browser: ask a collection of a two-page PDF, select a source row, and see that passage's page with its quote
marked: the rendered page image above (the collection keeps the PDF), the page's text below. The collection is
built in the test process first (the tab's build is covered by test_rag_browser.py), with a short answer length so
the bundled model answers quickly.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from tests.ui_harness import REPO, browser_page, require_browser, running_app, screenshot

PAPER = REPO.parent / "shared" / "testdata" / "docs" / "unstructured" / "multi-column-2p.pdf"
APP = REPO / "tests" / "apps" / "rag_only.py"

pytestmark = [pytest.mark.browser, pytest.mark.slow,
              pytest.mark.skipif(not PAPER.is_file(), reason=f"shared test data missing at {PAPER}")]


def _words(text: str) -> str:
    return " ".join(text.split())


def test_selecting_a_source_row_shows_its_page_with_the_quote_marked(tmp_path: Path):
    require_browser()
    from rag.index import RagIndex
    from rag.ingest import load_file
    from rag.pipeline import PipelineSpec

    home = tmp_path / "home"
    shutil.copy(PAPER, tmp_path / PAPER.name)
    index = RagIndex.create(home / "workspaces" / "local" / "indexes" / "paper",
                            PipelineSpec().with_params("generate", max_new_tokens=8))
    list(index.add_files([tmp_path / PAPER.name]))
    page_two = _words(load_file(PAPER).sections[1].text)
    with running_app(APP, home=home, log_name="rag-citations-app") as url, browser_page(url) as page:
        page.locator("#rag-collection input").fill("paper")
        page.locator("#rag-open").click()
        page.wait_for_function("document.querySelector('#rag-status').innerText.includes('paper')")
        page.locator("#rag-question textarea").fill("How much better than BM25 is DPR in top-5 accuracy?")
        page.locator("#rag-ask").click()
        page.wait_for_function("document.querySelector('#rag-answer').innerText.includes('Sources cited') || "
                               "document.querySelector('#rag-answer').innerText.includes('cites no passage')",
                               timeout=120_000)
        # A page-2 passage's "page / section" cell (an ARIA grid cell; Gradio also keeps a hidden sizing table).
        page.locator("#rag-sources").get_by_role("gridcell").filter(has_text=re.compile(r"^\s*p\. 2\s*$")).first.click()
        page.wait_for_function("document.querySelector('#rag-page-view mark') !== null")
        view = page.locator("#rag-page-view")
        assert view.locator("h4").inner_text() == "multi-column-2p.pdf, p. 2"
        marked = _words(view.locator("mark").inner_text())
        assert marked and marked in page_two
        assert "Dense Passage Retrieval for Open-Domain" not in view.inner_text()  # page 1's title
        image = page.locator("#rag-page-image")
        image.locator("img").wait_for(state="visible")
        assert "multi-column-2p.pdf, p. 2" in image.inner_text()  # the caption
        assert image.locator("img").evaluate("img => img.naturalWidth") > 500
        screenshot(page, "rag-citations-page-view")
        assert not page.errors, page.errors

        # The same page for a script: the file, page and quote as rag_ask lists a passage.
        from gradio_client import Client
        from gradio_client.exceptions import AppError

        client = Client(url, verbose=False)
        html = client.predict(collection="paper", source=PAPER.name, page=2, section="",
                              quote=view.locator("mark").inner_text(), api_name="/rag_show_page")
        assert "<h4>multi-column-2p.pdf, p. 2</h4>" in html and "<mark>" in html
        assert "Dense Passage Retrieval for Open-Domain" not in html
        png = client.predict(collection="paper", source=PAPER.name, page=2, quote="It not only outperforms BM25",
                             api_name="/rag_page_image")
        assert png.startswith("data:image/png;base64,iVBORw0KGgo")  # the PNG signature
        with pytest.raises(AppError, match="no-such") as refused:
            client.predict(collection="no-such", source=PAPER.name, page=2, api_name="/rag_show_page")
        assert str(home) not in str(refused.value)  # a missing collection is named, never its folder
