"""A citation's page as an image: the kept original PDF's page, rendered, with the quoted span highlighted.

Why: the page view's stored text proves the words are in the file, but a reader checking a citation trusts the
page itself (its layout, tables, figures, the column the sentence stands in). The index keeps each PDF it was
built from (``rag.index``, ``originals/<sha256>.pdf``); this module renders one page of it with pypdfium2 (already
the OCR's renderer) and marks the quote with a translucent yellow box, as a highlighter would.

Where the quote is: pypdfium2's text page gives every character of the page with its box. Both the page's
characters and the quote are compared without whitespace, hyphens and case (the stored text came from another
extractor, pypdf, which breaks lines and hyphenates differently), after NFKC (ligatures such as "ﬁ"). When the
whole quote is not found (it crosses a column or an equation), its first and last ~60 characters are looked up
and the span between them marked, else the first characters alone, else its longest sentence; when nothing is
found the page is shown without a mark. Returns PNG bytes, or None when there is no page to show: not a PDF
(HTML, DOCX, text…), a collection built before originals were kept, or a file too large to keep.

Pure library code: no Gradio; the UI decides how to show the bytes.
"""

from __future__ import annotations

import io
import re
import unicodedata
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rag.index import IndexError_, keeps_original, original_file, read_manifest
from rag.ocr import PDFIUM_LOCK

DEFAULT_WIDTH_PX = 1000
MAX_WIDTH_PX = 2000
#: At most this many pixels in one image (a tall or huge page is shrunk to fit): about 12 MB decoded, a few
#: hundred KB as PNG; a page view must never take a server's memory.
MAX_PIXELS = 4_000_000
HIGHLIGHT_RGBA = (255, 214, 0, 110)  # translucent yellow: the words stay readable under it
HIGHLIGHT_PAD_PX = 2
#: Characters of the quote's start and end looked up when the whole quote is not found on the page.
EDGE_CHARS = 60
#: Hyphens differ by extractor (pypdf keeps a line-end "-", PDFium marks it U+FFFE or U+0002): never compared.
_IGNORED = frozenset("-\u00ad\u2010\u2011\x02\ufffe")
_SENTENCE = re.compile(r"(?<=[.!?])\s+")

Box = tuple[float, float, float, float]  # left, top, right, bottom in pixels


def render_page(collection_path: str | Path, source: str, page: int | None, *, quote: str | None = None,
                width_px: int = DEFAULT_WIDTH_PX, sha256: str | None = None) -> bytes | None:
    """Page ``page`` (1-based) of ``source`` in the collection at ``collection_path`` as PNG bytes, ``quote``
    highlighted where it is found; None when no image can be shown (see the module's note).

    ``sha256`` names the file's content as the caller's copy of the collection holds it (its text is what the
    page view shows beside the image); without it, the collection's current version decides.
    """
    if not keeps_original(source) or not page or int(page) < 1:
        return None
    sha = sha256 or _current_sha256(Path(collection_path), source)
    original = original_file(collection_path, sha) if sha else None
    if original is None:
        return None
    rendered = _render(original, int(page) - 1, width_px, quote or "")
    if rendered is None:
        return None
    image, boxes = rendered
    return _png(_highlight(image, boxes))


def _current_sha256(path: Path, source: str) -> str | None:
    """The content hash of ``source`` in the collection's current version (None when it holds no such file)."""
    try:
        files = read_manifest(path).get("files") or []
    except IndexError_:
        return None
    return next((str(f.get("sha256")) for f in files if isinstance(f, dict) and f.get("source") == source), None)


def render_scale(width_pt: float, height_pt: float, width_px: int) -> float:
    """PDF points to pixels: the page ``width_px`` wide (at most :data:`MAX_WIDTH_PX`), within :data:`MAX_PIXELS`."""
    width_px = max(100, min(MAX_WIDTH_PX, int(width_px)))
    scale = width_px / max(width_pt, 1.0)
    area = max(width_pt * height_pt, 1.0) * scale * scale
    if area > MAX_PIXELS:
        scale *= (MAX_PIXELS / area) ** 0.5
    return scale


def _render(pdf_path: Path, index: int, width_px: int, quote: str) -> tuple[Any, list[Box]] | None:
    """Page ``index`` (0-based) as an RGB PIL image and the pixel boxes of ``quote`` on it; None when the file
    cannot be opened (removed meanwhile, damaged, needs a password) or has no such page."""
    import pypdfium2 as pdfium

    with PDFIUM_LOCK:
        try:
            pdf = pdfium.PdfDocument(pdf_path)
        except (pdfium.PdfiumError, OSError):
            return None
        try:
            if not 0 <= index < len(pdf):
                return None
            page = pdf[index]
            width, height = page.get_size()
            bitmap = page.render(scale=render_scale(width, height, width_px))
            boxes = _quote_boxes(page, bitmap, quote) if quote.strip() else []
            return bitmap.to_pil().convert("RGB"), boxes
        except (pdfium.PdfiumError, ValueError):
            return None
        finally:
            pdf.close()


def _quote_boxes(page: Any, bitmap: Any, quote: str) -> list[Box]:
    """The pixel boxes (one per line of text) of where ``quote`` stands on ``page``; [] when it is not found."""
    textpage = page.get_textpage()
    try:
        span = locate(_page_chars(textpage), quote)
        if span is None:
            return []
        start, end = span
        convert = bitmap.get_posconv(page)
        return [_to_pixels(convert, textpage.get_rect(i)) for i in range(textpage.count_rects(start, end - start))]
    finally:
        textpage.close()


def _page_chars(textpage: Any) -> list[tuple[int, str]]:
    """Every character of the page with its index in PDFium's character list (the index its boxes use)."""
    import pypdfium2.raw as pdfium_c

    chars = []
    for i in range(textpage.count_chars()):
        code = pdfium_c.FPDFText_GetUnicode(textpage.raw, i)
        if code:
            chars.append((i, chr(code)))
    return chars


def _to_pixels(convert: Any, rect: tuple[float, float, float, float]) -> Box:
    """A rectangle in PDF points (left, bottom, right, top) as pixels of the rendered image (rotation applied)."""
    left, bottom, right, top = rect
    x0, y0 = convert.to_bitmap(left, top)
    x1, y1 = convert.to_bitmap(right, bottom)
    return min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)


def _normalised(chars: Iterable[tuple[int, str]]) -> tuple[str, list[int]]:
    """The characters compared (NFKC, case-folded, no whitespace or hyphens), each with the index it came from."""
    out: list[str] = []
    where: list[int] = []
    for index, char in chars:
        for c in unicodedata.normalize("NFKC", char).casefold():
            if not c.isspace() and c not in _IGNORED:
                out.append(c)
                where.append(index)
    return "".join(out), where


def _find(haystack: str, needle: str, start: int = 0) -> int:
    return haystack.find(needle, start) if needle else -1


def locate(chars: list[tuple[int, str]], quote: str) -> tuple[int, int] | None:
    """Where ``quote`` stands among the page's ``(index, character)`` pairs, as a character index range
    ``[start, end)``; None when neither the quote, its edges nor its longest sentence is found."""
    text, where = _normalised(chars)
    quote = quote.removesuffix(" …").removesuffix("…")
    wanted, _ = _normalised(enumerate(quote))
    if not text or not wanted:
        return None
    found = _find(text, wanted)
    if found >= 0:
        return where[found], where[found + len(wanted) - 1] + 1
    head, tail = wanted[:EDGE_CHARS], wanted[-EDGE_CHARS:]
    first = _find(text, head)
    if first >= 0:
        last = _find(text, tail, first + 1)
        if last >= 0 and last - first <= 2 * len(wanted):
            return where[first], where[last + len(tail) - 1] + 1
        return where[first], where[first + len(head) - 1] + 1
    longest, _ = _normalised(enumerate(max(_SENTENCE.split(quote), key=len)))
    found = _find(text, longest) if len(longest) >= 12 else -1
    return (where[found], where[found + len(longest) - 1] + 1) if found >= 0 else None


def _highlight(image: Any, boxes: list[Box]) -> Any:
    """``image`` with a translucent yellow rectangle over each box (the page's words stay readable)."""
    if not boxes:
        return image
    from PIL import Image, ImageDraw

    overlay = Image.new("RGBA", image.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    for left, top, right, bottom in boxes:
        draw.rectangle((left - HIGHLIGHT_PAD_PX, top - HIGHLIGHT_PAD_PX, right + HIGHLIGHT_PAD_PX,
                        bottom + HIGHLIGHT_PAD_PX), fill=HIGHLIGHT_RGBA)
    return Image.alpha_composite(image.convert("RGBA"), overlay).convert("RGB")


def _png(image: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()
