"""The quoted span of a citation, and where it stands on its page.

A citation names a chunk; the reader wants the words of it that back the answer. :func:`best_quote` picks the
chunk sentence that shares the most words with the answer sentence(s) citing it (``rag.answer`` picks those);
:func:`page_sections` finds the page (or sheet, slide, section) a chunk came from among the document's stored
sections, and :func:`find_span` where the quote stands in that page's text. Pure functions: the UI only renders.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from rag.gold import content_words

if TYPE_CHECKING:
    from rag.ingest import Section

MAX_QUOTE_CHARS = 300
_SENTENCE_END = re.compile(r"(?<=[.!?。！？])\s+|\n\s*\n|(?<=:)[ \t]*\n\s*")  # a colon ends a line: a salutation
_ABBREVIATION = re.compile(r"(?:\b(?:vs|e\.g|i\.e|al|etc|cf|fig|figs|eq|no|dr|mr|mrs|ms|st|approx|resp)|\b[A-Z])\.$",
                           re.IGNORECASE)
_CITE_MARK = re.compile(r"\[[\d\s,;\-–and]+\]")


def sentences(text: str) -> list[str]:
    """``text`` cut into sentences (and paragraphs), each with its whitespace collapsed; empty ones dropped.

    A stop after an abbreviation ("vs.", "e.g.", "et al.", an initial) does not end a sentence."""
    out: list[str] = []
    for part in _SENTENCE_END.split(text or ""):
        part = " ".join(part.split())
        if part and out and _ABBREVIATION.search(out[-1]):
            out[-1] += " " + part
        elif part:
            out.append(part)
    return out


def _meaningful_words(text: str) -> set[str]:
    """``rag.gold``'s content words of ``text``, citation marks ("[1]") left out."""
    return set(content_words(_CITE_MARK.sub(" ", text or "")))


def best_quote(passage: str, claim: str, max_chars: int = MAX_QUOTE_CHARS) -> str:
    """The sentence of ``passage`` sharing the most content words with ``claim`` (the first one on a tie of
    zero); a sentence longer than ``max_chars`` is cut at a word boundary and ends with "…"."""
    found = sentences(passage)
    if not found:
        return ""
    wanted = _meaningful_words(claim)
    best = max(found, key=lambda s: (len(_meaningful_words(s) & wanted), -found.index(s)))
    if len(best) <= max_chars:
        return best
    return best[:max_chars].rsplit(" ", 1)[0] + " …"


def page_sections(sections: Sequence[Section], page: int | None, section: str | None) -> list[Section]:
    """The stored sections of the chunk's page: same page number for paged files; else the same section (sheet,
    slide, heading), or every section of the file when none is named or none matches (a markdown split names
    headings that the stored sections do not)."""
    if page is not None:
        return [s for s in sections if s.page == page]
    named = [s for s in sections if s.page is None and s.section == section]
    return named or [s for s in sections if s.page is None] or list(sections)


def find_span(text: str, quote: str) -> tuple[int, int] | None:
    """Where ``quote`` stands in ``text`` (any run of whitespace matching any other), or None: unlike
    ``rag.gold.find_phrase`` the span keeps the quote's punctuation, so the page marks the whole sentence.

    A quote cut with " …" is looked up without its ellipsis."""
    words = quote.removesuffix(" …").split()
    if not words:
        return None
    match = re.search(r"\s+".join(re.escape(w) for w in words), text)
    return (match.start(), match.end()) if match else None
