"""Citations in the RAG tab: the cited list under an answer, and the page a passage came from.

An answer's citations read "[1] handbook.pdf, p. 3 — “quoted span”" (the span: ``rag.answer.citation_quotes``).
Each passage given to the model keeps a small reference (file, page, section, quote) in a per-visitor state;
selecting its row opens the page view: for a PDF whose original the collection kept, the rendered page with the
quote highlighted (``rag.pages``), and always, under it, the text of that page (or sheet, slide, section) as the
collection stored it, with the quoted span marked: the text is what screen readers and copy-paste use, and all
there is for other kinds of file and for collections built before originals were kept. Document text is escaped:
nothing in a file can inject HTML.
"""

from __future__ import annotations

import base64
import html
import io
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rag.answer import citing_text
from rag.quotes import best_quote, find_span, page_sections
from ui.common import literal_markdown

if TYPE_CHECKING:
    from rag.events import AnswerEvent
    from rag.hits import Hit
    from rag.index import FileRecord
    from rag.ingest import Section

MAX_PAGE_CHARS = 12_000  # a longer page (a whole text file) is shown around the quote
QUOTE_CHARS_IN_LIST = 200
PAGE_HINT = "Select a row of *Sources given to the model* to see the page it came from, its quote marked."


def _short(quote: str, n: int = QUOTE_CHARS_IN_LIST) -> str:
    return quote if len(quote) <= n else quote[:n].rsplit(" ", 1)[0] + " …"


def citation_line(number: int, location: str, quote: str) -> str:
    """``[1] handbook.pdf, p. 3 — “quoted span”`` as literal Markdown (document text never renders as markup)."""
    line = f"[{number}] {location}"
    if quote:
        line += f" — “{_short(quote)}”"
    return literal_markdown(line)


def quote_for(answer_text: str, number: int, passage: str) -> str:
    """The span of ``passage`` that backs the answer's sentence(s) citing ``[number]``, short enough for a list
    (Chat and Compare, which keep an answer's passages as text)."""
    return _short(best_quote(passage, citing_text(answer_text, number)))


def cited_list(event: AnswerEvent) -> str:
    """The answer's citations, one line each, with the quoted span of each."""
    lines = [f"- {citation_line(c.number, c.hit.chunk.location, event.quotes.get(c.number, ''))}"
             for c in event.citations]
    return "**Sources cited:**\n" + "\n".join(lines)


def page_refs(hits: list[Hit], quotes: dict[int, str] | None = None, question: str = "") -> list[dict[str, Any]]:
    """What the page view needs of each passage, in row order: its place and the span to mark (a cited
    passage's quote; else the sentence closest to the question)."""
    quotes = quotes or {}
    return [{"source": h.chunk.source, "page": h.chunk.page, "section": h.chunk.section,
             "location": h.chunk.location, "quote": quotes.get(n) or best_quote(h.chunk.text, question)}
            for n, h in enumerate(hits, start=1)]


def _window(text: str, span: tuple[int, int] | None) -> tuple[str, tuple[int, int] | None]:
    """At most :data:`MAX_PAGE_CHARS` of ``text``, around the span when there is one; the span moved to match."""
    if len(text) <= MAX_PAGE_CHARS:
        return text, span
    center = (span[0] + span[1]) // 2 if span else 0
    start = max(0, min(center - MAX_PAGE_CHARS // 2, len(text) - MAX_PAGE_CHARS))
    end = start + MAX_PAGE_CHARS
    head, tail = ("… " if start else ""), (" …" if end < len(text) else "")
    moved = (span[0] - start + len(head), span[1] - start + len(head)) if span else None
    return head + text[start:end] + tail, moved


def page_html(collection: str, sections: list[Section] | None, ref: dict[str, Any]) -> str:
    """The page of one passage, from ``sections`` (what the collection stored of its file): the file and page in
    the header, the page's text with the quote in ``<mark>``."""
    source = str(ref.get("source") or "")
    if not sections:
        return (f"<p>⚠️ <b>{html.escape(source)}</b> is no longer in the collection <b>{html.escape(collection)}"
                "</b>: ask again to see the passages it holds now.</p>")
    found = page_sections(sections, ref.get("page"), ref.get("section"))
    text = "\n\n".join(s.text for s in found)
    quote = str(ref.get("quote") or "")
    text, span = _window(text, find_span(text, quote))
    if span:
        body = (html.escape(text[:span[0]]) + "<mark>" + html.escape(text[span[0]:span[1]]) + "</mark>"
                + html.escape(text[span[1]:]))
    else:
        body = html.escape(text)
    note = "" if span or not quote else "<p><i>The quoted sentence could not be placed on this page.</i></p>"
    return (f"<div id='rag-page-card'><h4>{html.escape(str(ref.get('location') or source))}</h4>{note}"
            f"<div style='white-space: pre-wrap'>{body}</div></div>")


def page_caption(ref: dict[str, Any]) -> str:
    """"handbook.pdf, p. 3": the image's label (the passage's location, as the citation list names it)."""
    return str(ref.get("location") or ref.get("source") or "")


def page_alt_text(ref: dict[str, Any]) -> str:
    """What a screen reader says for the page image: where it is from, and that the same text follows as text."""
    marked = " with the quoted sentence highlighted in yellow" if ref.get("quote") else ""
    return f"Image of {page_caption(ref)}{marked}. The page's text follows, its quote marked."


def page_image(collection_path: str | Path, record: FileRecord | None, ref: dict[str, Any]) -> Any | None:
    """The rendered page of one passage as a PIL image, its quote highlighted; None when there is none to show
    (not a PDF, a file the collection no longer holds, a collection built before originals were kept).

    ``record`` is the file as the caller's copy of the collection holds it, so the image is of the same content
    as the text shown under it."""
    png = page_png(collection_path, record, ref)
    if png is None:
        return None
    from PIL import Image

    return Image.open(io.BytesIO(png))


def page_png(collection_path: str | Path, record: FileRecord | None, ref: dict[str, Any]) -> bytes | None:
    """:func:`rag.pages.render_page` for one passage; None, logged, if rendering fails in a way it did not foresee:
    the image is an addition, and the text view under it must show whatever happens to it."""
    if record is None:
        return None
    from rag.pages import render_page  # here: Chat and Compare import this module and never render a page

    try:
        return render_page(collection_path, record.source, ref.get("page"), quote=str(ref.get("quote") or ""),
                           sha256=record.sha256)
    except Exception:
        logging.getLogger("tune_studio.ui").warning("Rendering page %s of %s failed", ref.get("page"),
                                                    record.source, exc_info=True)
        return None


def png_data_url(png: bytes | None) -> str:
    """PNG bytes as a ``data:`` URL (what an API client can decode or put in an ``<img>``); "" for none."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii") if png else ""
