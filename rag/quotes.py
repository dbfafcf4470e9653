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

if TYPE_CHECKING:
    from rag.ingest import Section

MAX_QUOTE_CHARS = 300
_SENTENCE_END = re.compile(r"(?<=[.!?。！？])\s+|\n\s*\n|(?<=:)[ \t]*\n\s*")  # a colon ends a line: a salutation
_ABBREVIATION = re.compile(r"(?:\b(?:vs|e\.g|i\.e|al|etc|cf|fig|figs|eq|no|dr|mr|mrs|ms|st|approx|resp)|\b[A-Z])\.$",
                           re.IGNORECASE)
_WORD = re.compile(r"\w+", re.UNICODE)
_CITE_MARK = re.compile(r"\[[\d\s,;\-–and]+\]")
_STOP_WORDS = ("a an and are as at be been but by can could did do does for from had has have he her his how i if in "
               "into is it its may more most no not of on or our she so such than that the their them then there "
               "these they this to was we were what when where which who why will with would you your")
_STOP = frozenset(_STOP_WORDS.split())


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


def content_words(text: str) -> set[str]:
    """Lower-cased words of ``text`` that carry meaning (short function words and citation numbers left out)."""
    words = (w.lower() for w in _WORD.findall(_CITE_MARK.sub(" ", text or "")))
    return {w for w in words if w not in _STOP and (len(w) > 1 or w.isdigit())}


def best_quote(passage: str, claim: str, max_chars: int = MAX_QUOTE_CHARS) -> str:
    """The sentence of ``passage`` sharing the most content words with ``claim`` (the first one on a tie of
    zero); a sentence longer than ``max_chars`` is cut at a word boundary and ends with "…"."""
    found = sentences(passage)
    if not found:
        return ""
    wanted = content_words(claim)
    best = max(found, key=lambda s: (len(content_words(s) & wanted), -found.index(s)))
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
    """Where ``quote`` stands in ``text`` (any run of whitespace matching any other), or None.

    A quote cut with " …" is looked up without its ellipsis."""
    words = quote.removesuffix(" …").split()
    if not words:
        return None
    match = re.search(r"\s+".join(re.escape(w) for w in words), text)
    return (match.start(), match.end()) if match else None
