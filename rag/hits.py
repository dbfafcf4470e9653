"""What retrieval returns: a hit (a chunk with every score that placed it) and a citation of one.

Apart from ``rag.retrieve`` so that the event types (``rag.events``) can name them without importing the
retriever, which imports the index, which emits events: no import circle.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rag.chunking import Chunk


@dataclass(frozen=True)
class Hit:
    """A retrieved chunk with every score that decided its place.

    ``chunk`` is the passage the model reads (and the evaluation scores). With parent-child retrieval it is
    the parent, and ``child`` the small piece that matched the question (the best of that parent's pieces,
    whose scores these are): :attr:`matched` is what a hit table shows and a citation quotes.
    ``position`` is always the matched piece's row in the index (its vector).
    """

    chunk: Chunk
    position: int
    score: float
    rank: int = 0
    dense_score: float | None = None
    bm25_score: float | None = None
    fused_score: float | None = None
    dense_rank: int | None = None
    bm25_rank: int | None = None
    rerank_score: float | None = None
    child: Chunk | None = None

    @property
    def matched(self) -> Chunk:
        """The chunk the search matched: the child with parent-child retrieval, else the chunk itself."""
        return self.child or self.chunk

    @property
    def matched_span(self) -> tuple[int, int]:
        """(start, end) of the matched text inside ``chunk.text``: the span to highlight in the passage."""
        if self.child is None:
            return 0, len(self.chunk.text)
        start = self.chunk.text.find(self.child.text)
        return (start, start + len(self.child.text)) if start >= 0 else (0, len(self.chunk.text))

    def to_dict(self) -> dict[str, Any]:
        return {"rank": self.rank, "source": self.chunk.source, "page": self.chunk.page,
                "section": self.chunk.section, "score": self.score, "dense_score": self.dense_score,
                "bm25_score": self.bm25_score, "fused_score": self.fused_score, "dense_rank": self.dense_rank,
                "bm25_rank": self.bm25_rank, "rerank_score": self.rerank_score, "text": self.chunk.text,
                "matched_text": self.matched.text}


@dataclass(frozen=True)
class Citation:
    """``[number]`` in an answer, resolved to the hit it refers to."""

    number: int
    hit: Hit
