"""Real browser, the RAG tab's simple mode: drop a readable and an unreadable file, Build, and see the
per-file refusal, the files and the chunks, with the pipeline cards out of the way under "Advanced"."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.ui_harness import REPO, browser_page, require_browser, running_app, screenshot

DOCS = REPO.parent / "shared" / "testdata" / "docs" / "unstructured-email"
APP = REPO / "tests" / "apps" / "rag_only.py"

pytestmark = [pytest.mark.browser, pytest.mark.slow,
              pytest.mark.skipif(not DOCS.is_dir(), reason=f"shared test data missing at {DOCS}")]

_TEXT = "document.querySelector('{0}') ? document.querySelector('{0}').innerText : ''"


def _text(page, selector: str) -> str:
    return page.evaluate(f"() => {_TEXT.format(selector)}")


def test_simple_mode_drop_build_refuses_one_file_and_fills_the_tables(tmp_path: Path):
    require_browser()
    exe = tmp_path / "setup.exe"
    exe.write_bytes(b"MZ\x90\x00 not a document")
    with running_app(APP, home=tmp_path / "home", log_name="rag-newcomer-app") as url, browser_page(url) as page:
        page.locator("#rag-build").wait_for(state="visible")
        assert page.locator("#rag-demo-docs").is_visible() and page.locator("#rag-advanced").first.is_visible()
        assert not page.locator("#rag-step-mmr").first.is_visible()  # the pipeline cards wait under "Advanced"

        page.locator("#rag-upload input[type=file]").set_input_files([str(DOCS / "fake-email.eml"), str(exe)])
        page.wait_for_function(f"({_TEXT.format('#rag-build-log')}).includes('left out')")
        assert "1 file(s) ready" in _text(page, "#rag-build-log")  # said at the drop, before any build
        page.locator("#rag-build").click()
        page.wait_for_function(f"({_TEXT.format('#rag-build-log')}).includes('Done')", timeout=120_000)
        log = _text(page, "#rag-build-log")
        assert "setup.exe: this kind of file (.exe) cannot be read" in log and "fake-email.eml" in log
        assert str(tmp_path) not in log and "/tmp/" not in _text(page, "#rag-status")
        page.wait_for_function(f"({_TEXT.format('#rag-preview-table')}).includes('Roses are red')")
        assert "fake-email.eml" in _text(page, "#rag-files") and "setup.exe" not in _text(page, "#rag-files")
        assert "setup" not in _text(page, "#rag-upload")  # the drop box is emptied after the build
        # Headers keep whole words: none is squeezed into a letter-per-line column.
        heights = page.evaluate("Array.from(document.querySelectorAll('#rag-preview-table th'))"
                                ".map(e => e.getBoundingClientRect().height)")
        assert heights and max(heights) < 80, heights
        screenshot(page, "rag-newcomer-built")
        assert not page.errors, page.errors
