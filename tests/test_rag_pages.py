"""A citation shows its page: the collection keeps each PDF it was built from, and rag.pages renders the cited page
with the quote highlighted; anything without a kept PDF (old collections, other kinds of file) shows text only.

Real files from ../shared/testdata: the two-page DPR paper (multi-column-2p.pdf, the quote on page 2, left column)
and fake-text.txt, indexed once with the bundled embedder; tests that change or damage the collection work on a
copy of it.
"""

from __future__ import annotations

import hashlib
import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.quotas import folder_bytes
from rag.index import ORIGINALS_DIR, RagIndex, original_file
from rag.ingest import load_file
from rag.pages import DEFAULT_WIDTH_PX, locate, render_page
from rag.pipeline import PipelineSpec
from ui.rag_citations import page_html, page_image

DOCS = Path(__file__).resolve().parents[1].parent / "shared" / "testdata" / "docs" / "unstructured"
PAPER, TEXT = DOCS / "multi-column-2p.pdf", DOCS / "fake-text.txt"
QUOTE = "It not only outperforms BM25 by a large margin (65.2% vs. 42.9% in Top-5 accuracy)"
SHA = hashlib.sha256(PAPER.read_bytes()).hexdigest() if PAPER.is_file() else ""

pytestmark = pytest.mark.skipif(not (PAPER.is_file() and TEXT.is_file()), reason=f"shared test data missing at {DOCS}")


@pytest.fixture(scope="module")
def collection(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The paper and a text file in one collection (large chunks: few to embed)."""
    path = tmp_path_factory.mktemp("pages") / "paper"
    index = RagIndex.create(path, PipelineSpec().with_params("split", chunk_size=2000, chunk_overlap=0))
    list(index.add_files([PAPER, TEXT]))
    return path


@pytest.fixture
def copy(collection: Path, tmp_path: Path) -> Path:
    """A copy of the collection this test may change."""
    shutil.copytree(collection, tmp_path / "paper")
    return tmp_path / "paper"


def _image(png: bytes | None) -> np.ndarray:
    assert png is not None
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=int)


def test_the_pdf_is_kept_once_by_content_hash_and_other_files_are_not(collection: Path):
    assert load_file(PAPER).original == PAPER and load_file(TEXT).original is None
    kept = sorted(collection.glob(f"v*/{ORIGINALS_DIR}/*"))
    assert [p.name for p in kept] == [f"{SHA}.pdf"]
    assert kept[0].read_bytes() == PAPER.read_bytes()
    assert original_file(collection, SHA) == kept[0]


def test_the_cited_page_is_rendered_with_the_quote_highlighted(collection: Path):
    marked = _image(render_page(collection, PAPER.name, 2, quote=QUOTE))
    plain = _image(render_page(collection, PAPER.name, 2))
    height, width, _ = marked.shape
    assert width == DEFAULT_WIDTH_PX and abs(height / width - 841.89 / 595.276) < 0.01  # A4, upright
    changed = np.abs(marked - plain).sum(axis=2) > 0
    ys, xs = np.nonzero(changed)
    assert 0 < changed.sum() < 0.05 * changed.size  # a sentence's lines, not the page
    assert xs.max() < width / 2 and height * 0.3 < ys.mean() < height * 0.6  # in the left column, mid-page
    before, after = plain[changed].mean(axis=0), marked[changed].mean(axis=0)
    assert after[2] < before[2] - 40 and abs(after[0] - before[0]) < 25  # yellow: blue taken away, red kept
    # A quote the page does not hold: the same page, unmarked.
    assert np.array_equal(_image(render_page(collection, PAPER.name, 2, quote="Nothing like this is written.")),
                          plain)


def test_the_quote_is_found_across_line_breaks_hyphens_and_a_broken_middle():
    page = list(enumerate("the representations could be subop\ufffe\r\ntimal.\r\nIn this paper, we address"))
    span = locate(page, "the representations could be subop- timal.")
    assert span is not None and span[0] == 0 and "".join(c for _, c in page[span[0]:span[1]]).endswith("timal.")
    assert locate(page, "Words this page does not hold at all.") is None and locate(page, "") is None

    head = "The first half of a long sentence, which is long enough to be looked up by itself, "
    tail = "and its second half, which is also quite long enough to be looked up by itself."
    text = head + "[12]\r\n" + tail + " Then the next sentence."
    chars = list(enumerate(text))
    assert locate(chars, head + tail) == (0, len(head) + 6 + len(tail))  # a footnote mark in the middle
    start, end = locate(chars, head + "then words the page does not hold, however long they are.")
    assert start == 0 and 60 < end <= len(head)  # only its start is on the page: that is marked


def test_other_files_old_collections_and_gone_files_show_text_only(copy: Path):
    assert render_page(copy, TEXT.name, 1) is None and render_page(copy, TEXT.name, None) is None
    assert render_page(copy, PAPER.name, 3) is None and render_page(copy, "gone.pdf", 1) is None
    index = RagIndex.open(copy)
    ref = {"source": PAPER.name, "page": 2, "section": None, "location": f"{PAPER.name}, p. 2", "quote": QUOTE}
    assert page_image(copy, index.files[PAPER.name], ref).size[0] == DEFAULT_WIDTH_PX
    for folder in copy.glob(f"v*/{ORIGINALS_DIR}"):  # as built before originals were kept
        shutil.rmtree(folder)
    reopened = RagIndex.open(copy)
    assert render_page(copy, PAPER.name, 2, quote=QUOTE) is None
    assert page_image(copy, reopened.files[PAPER.name], ref) is None
    assert "<mark>It not only outperforms BM25" in page_html("paper", reopened.documents[PAPER.name], ref)


def test_a_new_version_links_the_kept_pdf_and_drops_it_with_the_file(copy: Path):
    index = RagIndex.open(copy)
    list(index.remove([TEXT.name]))  # a new version: the paper's original is linked, not copied
    kept = sorted(copy.glob(f"v*/{ORIGINALS_DIR}/{SHA}.pdf"))
    assert len(kept) == 2 and kept[0].stat().st_ino == kept[1].stat().st_ino
    assert folder_bytes(copy) < sum(p.stat().st_size for p in copy.rglob("*") if p.is_file())  # counted once
    list(index.remove([PAPER.name]))
    assert not (copy / f"v{index.version:06d}" / ORIGINALS_DIR).exists()
    assert render_page(copy, PAPER.name, 2) is None  # the current version no longer holds it
