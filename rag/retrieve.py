"""Hybrid retrieval: dense (FAISS) + BM25 fused by reciprocal rank, then the user's post-steps in order.

Every hit carries its dense, BM25 and fused scores (and ranks) so hit testing can show *why* a chunk
came up. Post-retrieval steps (threshold, dedupe, MMR, rerank) run in the order of the pipeline
spec, each only if enabled, and each leaves a line in ``RetrievalResult.log``. With parent-child retrieval the
index holds small pieces (children) and the ``parent_child`` step turns them into their parents, the passages the
model reads: where it stands in the order decides which steps see pieces and which see parents.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

# Its module calls itself internal: the version is pinned in requirements.txt and tests/test_rag_index.py checks it.
from langchain_core.vectorstores.utils import maximal_marginal_relevance

from rag.hits import Hit
from rag.pipeline import PipelineSpec
from rag.stages import DedupeSettings, MMRSettings, ParentChildSettings, RerankSettings, ThresholdSettings

if TYPE_CHECKING:
    from rag.index import RagIndex


@dataclass
class RetrievalResult:
    query: str
    hits: list[Hit]
    candidates: list[Hit]
    log: list[str] = field(default_factory=list)
    seconds: float = 0.0


def search(index: RagIndex, query: str, spec: PipelineSpec | None = None, top_k: int | None = None) -> RetrievalResult:
    """Retrieve the ``top_k`` best chunks for ``query`` under ``spec`` (default: the index's own)."""
    start = time.perf_counter()
    spec = spec or index.spec
    settings = spec.retrieve
    top_k = top_k or settings.top_k
    query = query.strip()
    if not query or not index.chunks:
        return RetrievalResult(query, [], [], ["empty question" if not query else "the index is empty"])
    steps = spec.enabled_post_steps()
    needs_vector = settings.mode != "bm25" or any(s.name in ("threshold", "mmr") for s in steps)
    qvec = index.embedder.embed_query(query) if needs_vector else None
    candidates = _candidates(index, query, qvec, spec)
    log = [f"{settings.mode}: {len(candidates)} candidates"]
    hits = candidates
    for step in steps:
        before, step_start = len(hits), time.perf_counter()
        hits = POST_STEPS[step.name](hits, step.settings, index=index, query=query, qvec=qvec, top_k=top_k)
        log.append(f"{step.name}: {before} → {len(hits)} ({(time.perf_counter() - step_start) * 1000:.0f} ms)")
    if index.parents and not any(s.name == "parent_child" for s in steps):
        # An index built with parent-child always hands the model parents, whatever spec the caller passed.
        before = len(hits)
        hits = _parent_child(hits, None, index=index)
        log.append(f"parent_child: {before} → {len(hits)}")
    final = [replace(h, rank=r) for r, h in enumerate(hits[:top_k], start=1)]
    return RetrievalResult(query, final, candidates, log, time.perf_counter() - start)


def _candidates(index: RagIndex, query: str, qvec: np.ndarray | None, spec: PipelineSpec) -> list[Hit]:
    settings = spec.retrieve
    n = settings.candidates
    dense: dict[int, tuple[int, float]] = {}
    lexical: dict[int, tuple[int, float]] = {}
    if settings.mode in ("dense", "hybrid") and qvec is not None:
        ids, scores = index.dense_search(qvec, n)
        dense = {int(i): (r, float(s)) for r, (i, s) in enumerate(zip(ids, scores, strict=True), start=1)}
    if settings.mode in ("bm25", "hybrid"):
        ids, scores = index.bm25.search(query, n)
        lexical = {int(i): (r, float(s)) for r, (i, s) in enumerate(zip(ids, scores, strict=True), start=1)}
    positions = list(dict.fromkeys([*dense, *lexical]))
    # Cosine similarity for every candidate (BM25-only ones too) so threshold and MMR can use it.
    cosine = index.vectors[positions] @ qvec if qvec is not None and positions else None
    hits = []
    for j, pos in enumerate(positions):
        d_rank, d_score = dense.get(pos, (None, None))
        b_rank, b_score = lexical.get(pos, (None, None))
        fused = 0.0
        if d_rank is not None:
            fused += settings.dense_weight / (settings.rrf_k + d_rank)
        if b_rank is not None:
            fused += 1.0 / (settings.rrf_k + b_rank)
        dense_score = float(cosine[j]) if cosine is not None else d_score
        score = {"dense": dense_score, "bm25": b_score}.get(settings.mode, fused)
        hits.append(Hit(index.chunks[pos], pos, float(score if score is not None else 0.0), 0, dense_score,
                        b_score, fused, d_rank, b_rank))
    hits.sort(key=lambda h: (-h.score, h.position))
    return hits


# ---------------------------------------------------------------------- post-retrieval steps


def _threshold(hits: list[Hit], settings: ThresholdSettings, **_: Any) -> list[Hit]:
    return [h for h in hits if h.dense_score is None or h.dense_score >= settings.min_dense_score]


def _dedupe(hits: list[Hit], settings: DedupeSettings, *, index: RagIndex, **_: Any) -> list[Hit]:
    """Keep the best ``max_per_source`` chunks of each document and drop near-identical chunks.

    With parent-child, pieces of a parent already kept pass uncounted: they become that one parent later, so the
    limit counts parents (the passages the model reads), wherever the parent-child step stands.
    """
    kept: list[Hit] = []
    per_source: dict[str, int] = {}
    parents: set[tuple[str, int | None]] = set()
    for hit in hits:
        parent = (hit.matched.source, hit.matched.parent)
        if hit.matched.parent is not None and parent in parents:
            kept.append(hit)
            continue
        if settings.max_per_source and per_source.get(hit.chunk.source, 0) >= settings.max_per_source:
            continue
        if settings.near_duplicate < 1.0 and kept:
            sims = index.vectors[[k.position for k in kept]] @ index.vectors[hit.position]
            if float(sims.max()) >= settings.near_duplicate:
                continue
        kept.append(hit)
        parents.add(parent)
        per_source[hit.chunk.source] = per_source.get(hit.chunk.source, 0) + 1
    return kept


def _mmr(hits: list[Hit], settings: MMRSettings, *, index: RagIndex, qvec: np.ndarray | None, top_k: int,
         **_: Any) -> list[Hit]:
    """Maximal marginal relevance (langchain-core's): trade query similarity against similarity to chosen chunks.

    It picks ``top_k`` hits; they come first and the others follow in their order, so a later step (rerank)
    still sees every candidate. Its cosine equals our dot product: the index's vectors are normalised.
    """
    if qvec is None or len(hits) < 2:
        return hits
    vectors = index.vectors[[h.position for h in hits]]
    chosen = maximal_marginal_relevance(qvec, vectors, lambda_mult=settings.lambda_mult, k=max(top_k, 1))
    picked = set(chosen)
    return [hits[i] for i in chosen] + [h for i, h in enumerate(hits) if i not in picked]


def _parent_child(hits: list[Hit], settings: ParentChildSettings | None, *, index: RagIndex, **_: Any) -> list[Hit]:
    """Each matched piece becomes its parent; several pieces of one parent give one hit, at the place (and with
    the scores) of the best of them, which stays as the hit's ``child``. Hits of ordinary chunks pass as they are
    (``settings`` only shaped the pieces at indexing time)."""
    out: list[Hit] = []
    seen: set[tuple[str, int]] = set()
    for hit in hits:
        parent = index.parent_of(hit.matched)
        if parent is None:
            out.append(hit)
            continue
        key = (parent.source, parent.ordinal)
        if key not in seen:
            seen.add(key)
            out.append(replace(hit, chunk=parent, child=hit.matched))
    return out


def _rerank(hits: list[Hit], settings: RerankSettings, *, query: str, index: RagIndex | None = None,
            qvec: np.ndarray | None = None, **_: Any) -> list[Hit]:
    """Re-score the first ``top_n`` candidates with a reranker (``rag.rerankers``: the bundled sentence matcher
    offline, or a Hub cross-encoder downloaded once through the app's downloader) and order them by its score."""
    if not hits:
        return hits
    from rag.embedders import BUNDLED
    from rag.rerankers import get_reranker, rerank_scores

    head, tail = hits[: settings.top_n], hits[settings.top_n:]
    # The search already embedded the question with the bundled matcher's own model when the collection uses it.
    same_model = qvec is not None and index is not None and index.embedder_name == BUNDLED
    scores = rerank_scores(get_reranker(settings.model), query, head, query_vector=qvec if same_model else None)
    rescored = [replace(h, rerank_score=float(s), score=float(s)) for h, s in zip(head, scores, strict=True)]
    rescored.sort(key=lambda h: (-h.score, h.position))
    return rescored + tail


PostStepFn = Callable[..., list[Hit]]
POST_STEPS: dict[str, PostStepFn] = {"threshold": _threshold, "dedupe": _dedupe, "mmr": _mmr, "rerank": _rerank,
                                     "parent_child": _parent_child}
