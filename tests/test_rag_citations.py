"""Citations name file, page and the quoted span; the page view marks that span on the right page, escaped.

Real text: the two-page DPR paper in the shared test data (multi-column-2p.pdf), read by rag.ingest; the answer
is written by hand (the thing under test is what happens to it, not the model).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from rag.answer import answer, citation_quotes, citing_text
from rag.chunking import Chunk, split_document
from rag.embedders import BUNDLED, get_embedder
from rag.events import AnswerEvent
from rag.hits import Citation, Hit
from rag.index import RagIndex
from rag.ingest import LoadedDocument, Section, load_file
from rag.pipeline import PipelineSpec
from rag.quotes import best_quote, find_span, page_sections, sentences
from rag.stages import SplitSettings
from ui.rag_citations import cited_list, page_html, page_refs

DOCS = Path(__file__).resolve().parents[1].parent / "shared" / "testdata" / "docs" / "unstructured"
PAPER = DOCS / "multi-column-2p.pdf"
ANSWER = ("DPR beats BM25 by a large margin in top-5 accuracy [1]. "
          "The retriever is trained on pairs of questions and passages [2].")

pytestmark = pytest.mark.skipif(not PAPER.is_file(), reason=f"shared test data missing at {PAPER}")


@pytest.fixture(scope="module")
def paper() -> LoadedDocument:
    doc = load_file(PAPER)
    assert isinstance(doc, LoadedDocument) and [s.page for s in doc.sections] == [1, 2]
    return doc


def _chunk_with(doc: LoadedDocument, words: str) -> Chunk:
    return next(c for c in split_document(doc, SplitSettings()) if words in " ".join(c.text.split()))


def test_the_quote_is_the_chunk_sentence_that_backs_the_citing_sentence(paper):
    chunk = _chunk_with(paper, "outperforms BM25")
    assert chunk.page == 2
    claim = citing_text(ANSWER, 1)
    assert claim == "DPR beats BM25 by a large margin in top-5 accuracy [1]."
    quote = best_quote(chunk.text, claim)
    # "vs." inside the sentence does not end it
    assert quote.startswith("It not only outperforms BM25 by a large margin (65.2% vs. 42.9% in Top-5 accuracy)")
    other = best_quote(chunk.text, "Natural Questions end-to-end QA accuracy ORQA")
    assert other != quote or "ORQA" in quote
    assert best_quote(chunk.text, "") == sentences(chunk.text)[0]  # nothing to match: the first sentence
    long = best_quote(chunk.text, claim, max_chars=40)
    assert len(long) <= 42 and long.endswith(" …")


def test_citations_list_file_page_and_quote_and_the_page_view_marks_it(paper):
    first, second = _chunk_with(paper, "outperforms BM25"), _chunk_with(paper, "Dense Passage Retrieval for")
    hits = [Hit(first, 0, 0.9, 1), Hit(second, 1, 0.5, 2)]
    citations = [Citation(1, hits[0]), Citation(2, hits[1])]
    quotes = citation_quotes(ANSWER, citations)
    listed = cited_list(AnswerEvent(ANSWER, citations, [], quotes))
    plain = listed.replace("\\", "")
    assert "[1] multi-column-2p.pdf, p. 2 — “It not only outperforms BM25" in plain
    assert "[2] multi-column-2p.pdf, p. 1 — “" in plain

    ref = page_refs(hits, quotes, "who wins?")[0]
    view = page_html("paper", paper.sections, ref)
    assert "<h4>multi-column-2p.pdf, p. 2</h4>" in view
    marked = re.search(r"<mark>(.*?)</mark>", view, re.S).group(1)
    assert " ".join(marked.split()).startswith("It not only outperforms BM25 by a large margin")
    page2 = " ".join(paper.sections[1].text.split())
    assert " ".join(marked.split()) in page2  # the marked words are page 2's own
    assert "Dense Passage Retrieval for Open-Domain" not in view  # page 1's title is not on page 2


def test_page_choice_for_paged_and_unpaged_files_and_a_gone_file():
    sheets = [Section("Team Blues", "cups.xlsx", None, "sheet A"), Section("Team Flyers", "cups.xlsx", None, "sheet B")]
    assert [s.text for s in page_sections(sheets, None, "sheet B")] == ["Team Flyers"]
    assert [s.text for s in page_sections(sheets, None, "Intro")] == ["Team Blues", "Team Flyers"]  # no such: all
    assert page_html("c", None, {"source": "gone.pdf", "page": 1}).startswith("<p>⚠️ <b>gone.pdf</b> is no longer")


def test_document_text_cannot_inject_html_and_a_long_page_is_shown_around_its_quote():
    evil = "<img src=x onerror=alert(1)> Water & ice. The <b>bottles</b> were 200. " + "Filler words here. " * 1500
    sections = [Section(evil, "<script>.txt")]
    view = page_html("c", sections, {"source": "<script>.txt", "page": None, "section": None,
                                     "location": "<script>.txt", "quote": "The <b>bottles</b> were 200."})
    assert "<img" not in view and "<script>" not in view and "<b>bottles" not in view
    assert "&lt;img src=x onerror=alert(1)&gt;" in view and "Water &amp; ice." in view
    assert "<mark>The &lt;b&gt;bottles&lt;/b&gt; were 200.</mark>" in view
    assert len(view) < 14_000 and view.rstrip("</div>").endswith(" …")
    assert find_span("a  b\nc", "b c") == (3, 6) and find_span("abc", "") is None


def test_an_answer_carries_each_citations_quote(tmp_path):
    get_embedder(BUNDLED)
    memo = DOCS / "fake-memo.pdf"  # one short chunk: the embedding is quick
    shutil.copy(memo, tmp_path / memo.name)
    index = RagIndex.create(tmp_path / "idx", PipelineSpec())
    list(index.add_files([tmp_path / memo.name]))
    events = list(answer(index, "How many bottles of water were delivered?",
                         lambda prompt: iter(["20,000 bottles of water were delivered [1]; 3 trucks [2]."])))
    final = events[-1]
    assert isinstance(final, AnswerEvent) and [c.number for c in final.citations] == [1]
    assert final.invalid_citations == [2]
    assert final.quotes == {1: "There were 20,000 bottles of water, 10,000 blankets, and 200 laptops delivered on "
                               "January 23, 2023."}


def test_the_chunk_table_shows_ocr_confidence_for_ocr_pages_only():
    from ui.rag_tab import CHUNK_HEADERS, ocr_label

    sections = [Section("Scanned words", "scan.pdf", 1, ocr_confidence=0.934), Section("Typed words", "scan.pdf", 2)]
    assert CHUNK_HEADERS[-1] == "OCR confidence"
    assert ocr_label(Chunk("Scanned words", "scan.pdf", 0, page=1), sections) == "OCR 0.93"
    assert ocr_label(Chunk("Typed words", "scan.pdf", 1, page=2), sections) == ""
    assert ocr_label(Chunk("Typed words", "notes.txt", 0)) == ""
