"""What counts as a retrieval hit, defined once for the RAG evaluation and the Experiment.

A question's gold is the document it came from and a *quote* (the passage words that answer it),
not a chunk number: chunk numbers change whenever the collection is re-chunked (another size,
overlap windows, parent-child chunks), while the quote stays in the text. So a chunk is a passage
hit when it is from the same source (and page, when both know one) and holds the quote — verbatim
after normalising, or most of the quote's words when a chunk boundary cut it in two.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from rag.chunking import Chunk

LEVELS = ("document", "passage")

_STOPWORD_TEXT = """
a about above after again against all am an and any are as at be because been before being below between both but
by can could did do does doing down during each few for from further had has have having he her here hers herself
him himself his how i if in into is it its itself just me more most my myself no nor not now of off on once only or
other our ours ourselves out over own same she should so some such than that the their theirs them themselves then
there these they this those through to too under until up very was we were what when where which while who whom why
will with would you your yours yourself yourselves s t
"""
STOPWORDS = frozenset(_STOPWORD_TEXT.split())
"""Words every passage has: they say nothing about which passage a quote or an answer came from."""

_SENTENCE_END = re.compile(r"(?<=[.!?。！？])\s+|\n+")


def chunk_id(chunk: Chunk) -> str:
    """``source#ordinal``: the chunk's number in its document's reading order (0-based), unique in an index.

    Informational only: the number changes when the collection is re-chunked, which is why gold is a quote.
    """
    return f"{chunk.source}#{chunk.ordinal}"


@dataclass(frozen=True)
class Gold:
    """Where a question's answer lives: its document, the passage words, and (when known) the page.

    ``chunk_id`` is the chunk the question was made from, kept to show the user; matching never uses it.
    """

    source: str
    quote: str
    page: int | None = None
    chunk_id: str | None = None


def normalise_with_offsets(text: str) -> tuple[str, list[int]]:
    """Lowercased text with punctuation turned into spaces and whitespace squeezed, plus each kept
    character's position in ``text`` (so a match in the normalised text maps back to the original)."""
    out: list[str] = []
    where: list[int] = []
    for position, char in enumerate(text):
        if char.isalnum():
            out.append(char.lower())
            where.append(position)
        elif out and out[-1] != " ":
            out.append(" ")
            where.append(position)
    if out and out[-1] == " ":
        out.pop()
        where.pop()
    return "".join(out), where


def normalise(text: str) -> str:
    """Lowercase, punctuation dropped, whitespace squeezed: two texts that differ only in those compare equal."""
    return normalise_with_offsets(text)[0]


def words(text: str) -> list[str]:
    """The normalised word tokens of ``text``."""
    return normalise(text).split()


def content_words(text: str) -> list[str]:
    """The word tokens that are not stopwords (the ones that tell passages apart)."""
    return [w for w in words(text) if w not in STOPWORDS]


def contains_phrase(haystack: str, needle: str) -> bool:
    """True when the normalised ``needle`` occurs in the normalised ``haystack`` on word boundaries."""
    phrase = normalise(needle)
    return bool(phrase) and f" {phrase} " in f" {normalise(haystack)} "


def find_phrase(text: str, phrase: str) -> tuple[int, int] | None:
    """(start, end) in ``text`` of the first place the normalised ``phrase`` occurs on word boundaries.

    Why offsets: a quote stored for the user should be the passage's own words, punctuation included.
    """
    needle = normalise(phrase)
    if not needle:
        return None
    norm, where = normalise_with_offsets(text)
    at = f" {norm} ".find(f" {needle} ")
    if at < 0:
        return None
    return where[at], where[at + len(needle) - 1] + 1


def word_overlap(quote: str, text: str) -> float:
    """Share of the quote's words found in ``text``, counting repeats (multiset overlap).

    Stopwords are left out when the quote has other words: every chunk holds "the" and "of", and counting
    them would make a chunk that shares only those look like half of the quote.
    """
    tokens = content_words(quote) or words(quote)
    if not tokens:
        return 0.0
    found = Counter(tokens) & Counter(words(text))
    return sum(found.values()) / len(tokens)


def matches(chunk: Chunk, gold: Gold, min_overlap: float = 0.5) -> bool:
    """Is ``chunk`` the gold passage? Same source, same page when both know one, and the quote inside it.

    "Inside" is the normalised quote verbatim, or at least ``min_overlap`` of its words: a quote cut by a
    chunk boundary still matches the chunks holding enough of it. An empty quote never matches a passage
    (such gold is document-level only).
    """
    if chunk.source != gold.source or not gold.quote.strip():
        return False
    if chunk.page is not None and gold.page is not None and chunk.page != gold.page:
        return False
    return contains_phrase(chunk.text, gold.quote) or word_overlap(gold.quote, chunk.text) >= min_overlap


def is_hit(chunk: Chunk, gold: Gold, level: str) -> bool:
    """A hit at ``level``: "document" (same source) or "passage" (:func:`matches`)."""
    if level == "document":
        return chunk.source == gold.source
    if level == "passage":
        return matches(chunk, gold)
    raise ValueError(f"Unknown hit level {level!r}; use one of {', '.join(LEVELS)}.")


def hit_rank(ranked_chunks: Sequence[Chunk], gold: Gold, level: str) -> int | None:
    """1-based rank of the first chunk that is a hit at ``level``; None when no retrieved chunk is."""
    return next((rank for rank, chunk in enumerate(ranked_chunks, start=1) if is_hit(chunk, gold, level)), None)


def retrieval_metrics(ranks: Sequence[int | None], ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """hit_at_k for each k and MRR at the largest k (a rank past it counts 0), over one rank per question.

    Raises ValueError for no questions: a score of 0 would read as "retrieval failed" instead of "no data".
    """
    if not ranks:
        raise ValueError("No questions to score.")
    n = len(ranks)
    cutoff = max(ks)
    out = {f"hit_at_{k}": sum(r is not None and r <= k for r in ranks) / n for k in ks}
    out[f"mrr_at_{cutoff}"] = sum(1.0 / r for r in ranks if r is not None and r <= cutoff) / n
    return out


def gold_chunk_ids(chunks: Sequence[Chunk], gold: Gold) -> list[str]:
    """Ids of the chunks (of an index) that match ``gold``: empty means the question set no longer fits it."""
    return [chunk_id(c) for c in chunks if matches(c, gold)]


def sentences(text: str) -> list[tuple[int, int]]:
    """(start, end) of each sentence of ``text`` (split after . ! ? and at line breaks), stripped."""
    spans, start = [], 0
    for boundary in [*_SENTENCE_END.finditer(text), None]:
        end = boundary.start() if boundary else len(text)
        piece = text[start:end]
        if piece.strip():
            lead = len(piece) - len(piece.lstrip())
            spans.append((start + lead, start + len(piece.rstrip())))
        start = boundary.end() if boundary else len(text)
    return spans
