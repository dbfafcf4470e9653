"""OCR of scanned PDF pages and images (issue #13), on real shared files with the real engine (Tesseract).

Files: docs/ocrmypdf/c02-22.pdf (one scanned book page, no text layer), docs/ocrmypdf/multipage.pdf (six pages:
page 4 has a text layer, the others are scans), docs/unstructured-images/DA-1p.png (a page of text) and
example.jpg (a photo of a flower: no text). The words checked were read off the page images by a person.
"""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import pytest

from rag.ingest import LoadedDocument, Refusal, RefusalReason, load_bytes, load_file
from rag.ocr import parse_tsv
from rag.stages import LoadSettings

DOCS = Path(__file__).resolve().parents[1].parent / "shared" / "testdata" / "docs"
SCAN = DOCS / "ocrmypdf" / "c02-22.pdf"
MULTIPAGE = DOCS / "ocrmypdf" / "multipage.pdf"
IMAGES = DOCS / "unstructured-images"
# Words printed on c02-22.pdf's page (Huckleberry Finn, chapter II), as a reader sees them.
SCAN_WORDS = ("tip-toeing", "scrouched", "watson", "kitchen", "branches", "shoulders", "funeral", "listening")

# Skipped on a developer's machine without Tesseract, never in CI (make test installs it): there these tests must run.
pytestmark = pytest.mark.skipif(shutil.which("tesseract") is None and not os.environ.get("CI"),
                                reason="tesseract-ocr is not installed (make ocr installs it)")


def test_ocr_reads_a_scanned_pdf_into_its_words():
    doc = load_file(SCAN)
    assert isinstance(doc, LoadedDocument), doc
    [section] = doc.sections
    assert section.page == 1 and 0.5 < section.ocr_confidence <= 1
    text = section.text.lower()
    assert [w for w in SCAN_WORDS if w not in text] == []
    assert doc.notes == []


def test_text_layer_pages_skip_ocr_and_the_page_limit_is_reported_not_fatal():
    pages: list[tuple] = []
    doc = load_file(MULTIPAGE, load=LoadSettings(ocr_max_pages=1), on_page=lambda *p: pages.append(p))
    assert isinstance(doc, LoadedDocument), doc
    assert [(p[0], p[1], p[2]) for p in pages] == [(1, 6, "ocr"), (4, 6, "text")]
    by_page = {s.page: s for s in doc.sections}
    assert sorted(by_page) == [1, 4]
    assert by_page[4].ocr_confidence is None  # its own text layer
    assert by_page[1].ocr_confidence == pages[0][3] and "scrouched" in by_page[1].text.lower()
    [note] = doc.notes
    assert note.startswith("pages 2-3, 5-6 (4 scanned page(s)) not read")
    assert "'OCR: most pages per file'" in note and "Load files card" in note


def test_a_page_ocr_cannot_read_is_noted_and_the_rest_of_the_file_kept():
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter()
    writer.add_page(PdfReader(MULTIPAGE).pages[3])  # text layer
    writer.add_page(PdfReader(SCAN).pages[0])  # scanned, its image stream cut to 64 bytes below
    image = next(iter(writer.pages[1]["/Resources"]["/XObject"].values())).get_object()
    image._data = image._data[:64]
    out = io.BytesIO()
    writer.write(out)
    doc = load_bytes(out.getvalue(), "two-pages.pdf")
    assert isinstance(doc, LoadedDocument), doc
    assert [s.page for s in doc.sections] == [1]
    assert doc.notes == ["page 2 could not be read: OCR found no text on it (a blank or picture-only page?)."]


def test_images_are_read_by_ocr_and_a_photo_without_text_is_refused():
    doc = load_file(IMAGES / "DA-1p.png")
    assert isinstance(doc, LoadedDocument), doc
    [section] = doc.sections
    assert section.page == 1 and section.ocr_confidence > 0.5
    assert all(w in section.text for w in ("Abomination", "maleficar", "chantry", "Arcane Horror"))
    photo = load_file(IMAGES / "example.jpg")
    assert isinstance(photo, Refusal) and photo.reason is RefusalReason.NO_TEXT_LAYER
    assert photo.message.startswith("'example.jpg': OCR (text recognition) found no text in this image")


def test_ocr_off_refuses_images_and_scans_naming_the_setting():
    off = LoadSettings(ocr=False)
    for path in (SCAN, IMAGES / "example.jpg"):
        refusal = load_file(path, load=off)
        assert isinstance(refusal, Refusal) and refusal.reason is RefusalReason.NO_TEXT_LAYER
        assert "'Read scans with OCR'" in refusal.message and str(path.parent) not in refusal.message


def test_tesseract_tsv_becomes_lines_paragraphs_and_a_mean_line_confidence():
    header = "level\tpage_num\tblock_num\tpar_num\tline_num\tword_num\tleft\ttop\twidth\theight\tconf\ttext"
    rows = ["5\t1\t1\t1\t1\t1\t0\t0\t1\t1\t90\tHello", "5\t1\t1\t1\t1\t2\t0\t0\t1\t1\t70\tworld",
            "4\t1\t1\t1\t2\t0\t0\t0\t1\t1\t-1\t", "5\t1\t1\t1\t2\t1\t0\t0\t1\t1\t60\tagain",
            "5\t1\t2\t1\t1\t1\t0\t0\t1\t1\t100\tNext"]
    result = parse_tsv("\n".join([header, *rows]))
    assert result.text == "Hello world\nagain\n\nNext"
    assert result.lines == 3 and result.confidence == pytest.approx((0.8 + 0.6 + 1.0) / 3, abs=1e-4)
    assert parse_tsv(header).confidence is None and parse_tsv(header).text == ""
