"""Ingestion over real third-party documents: every file is indexed or refused with a specific message."""

from __future__ import annotations

from pathlib import Path

import pytest

from rag.ingest import LoadedDocument, Refusal, RefusalReason, iter_files, load_bytes, load_file
from rag.stages import LoadSettings

TESTDATA = Path(__file__).resolve().parents[1].parent / "shared" / "testdata"
DOCS = TESTDATA / "docs" / "unstructured"


EXPECTED_REFUSALS = {
    "password.pdf": RefusalReason.ENCRYPTED,
    "loremipsum-flat.pdf": RefusalReason.NO_TEXT_LAYER,
    "single_table.pdf": RefusalReason.NO_TEXT_LAYER,
    "table-multi-row-column-cells.pdf": RefusalReason.NO_TEXT_LAYER,
    "empty.txt": RefusalReason.EMPTY,
    "fake-text-all-whitespace.txt": RefusalReason.EMPTY,
}


@pytest.fixture(scope="module")
def loaded() -> dict[str, LoadedDocument | Refusal]:
    # OCR off: the scans are refused, naming the setting that reads them (tests/test_rag_ocr.py reads them).
    off = LoadSettings(ocr=False)
    return {path.name: load_file(path, load=off) for path in iter_files(DOCS)}


def test_every_file_is_loaded_or_refused_with_a_message(loaded):
    assert len(loaded) >= 50
    for name, result in loaded.items():
        assert isinstance(result, (LoadedDocument, Refusal)), name
        if isinstance(result, Refusal):
            assert name in result.message, f"refusal for {name} must name the file: {result.message}"
            assert len(result.message) > 40
        else:
            assert result.n_chars > 0 and all(s.source == name for s in result.sections)


def test_specific_refusals(loaded):
    refused = {n: r.reason for n, r in loaded.items() if isinstance(r, Refusal)}
    assert refused == EXPECTED_REFUSALS
    assert "password" in loaded["password.pdf"].message.lower()
    assert "ocr" in loaded["loremipsum-flat.pdf"].message.lower()


def test_encrypted_pdf_opens_with_its_password():
    doc = load_file(DOCS / "password.pdf", pdf_password="password")
    assert isinstance(doc, LoadedDocument) and doc.n_chars > 0


def test_copy_protected_pdf_with_empty_password_is_read(loaded):
    doc = loaded["copy-protected.pdf"]
    assert isinstance(doc, LoadedDocument)
    assert "LayoutParser" in doc.sections[0].text


def test_pdf_pages_are_kept_and_empty_pages_skipped(loaded):
    doc = loaded["layout-parser-paper-with-empty-pages.pdf"]
    assert [s.page for s in doc.sections] == [1, 4]
    assert [s.page for s in loaded["multi-column.pdf"].sections] == list(range(1, 14))


@pytest.mark.parametrize("name", ["fake-text-utf-16.txt", "fake-text-utf-32.txt"])
def test_utf16_and_utf32_text(loaded, name):
    assert loaded[name].sections[0].text == loaded["fake-text.txt"].sections[0].text
    expected = "utf-16" if "16" in name else "utf-32"
    assert loaded[name].encoding.startswith(expected)


def test_cp1252_html_and_non_utf8_markdown(loaded):
    html = loaded["fake-html-cp1252.html"]
    assert html.encoding == "cp1252"
    assert "Die schöne Frau" in html.sections[0].text and "15,50 €" in html.sections[0].text
    assert loaded["umlauts-non-utf8.md"].sections[0].text == loaded["umlauts-utf8.md"].sections[0].text


def test_utf16_html_matches_utf8_html(loaded):
    assert (loaded["example-steelJIS-datasheet-utf-16.html"].sections[0].text
            == loaded["example-steelJIS-datasheet.html"].sections[0].text)


def test_html_scripts_are_not_text(loaded):
    text = loaded["example-with-scripts.html"].sections[0].text
    assert "function(" not in text and "Russian Offensive Campaign" in text


def test_office_formats_keep_location(loaded):
    pptx = loaded["fake-power-point-table.pptx"]
    assert pptx.sections[0].page == 1 and "Green" in pptx.sections[0].text
    xlsx = loaded["stanley-cups.xlsx"]
    assert all(s.section.startswith("sheet ") for s in xlsx.sections)
    assert "Blues" in " ".join(s.text for s in xlsx.sections)
    csv_text = loaded["stanley-cups.csv"].sections[0].text
    assert "Stanley Cups" in csv_text and "Blues" in csv_text
    handbook = loaded["handbook-1p.docx"]
    assert any(s.section for s in handbook.sections)
    assert "Column 1" in loaded["fake-doc.rtf"].sections[0].text
    assert "Lorem ipsum" in loaded["fake.odt"].sections[0].text
    epub = loaded["winter-sports.epub"]
    assert len(epub.sections) > 3 and all(s.section.startswith("chapter") for s in epub.sections)


def test_broken_and_unsupported_bytes_are_refused_not_raised():
    truncated = (DOCS / "fake-memo.pdf").read_bytes()[:200]
    result = load_bytes(truncated, "memo-truncated.pdf")
    assert isinstance(result, Refusal) and result.reason in (RefusalReason.BROKEN, RefusalReason.NO_TEXT_LAYER)
    assert "memo-truncated.pdf" in result.message
    docx_not_zip = load_bytes(b"this is not a zip archive", "report.docx")
    assert isinstance(docx_not_zip, Refusal) and docx_not_zip.reason is RefusalReason.BROKEN
    legacy = load_bytes(b"\xd0\xcf\x11\xe0 old word file", "old.doc")
    assert legacy.reason is RefusalReason.UNSUPPORTED and ".docx" in legacy.message
    too_big = load_file(DOCS / "norwich-city.txt", max_mb=0.01)
    assert too_big.reason is RefusalReason.TOO_LARGE
