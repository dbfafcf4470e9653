"""The pipeline checks itself: choices that work against each other, explained at the stage where they are made.

A spec that passes :meth:`rag.pipeline.PipelineSpec` validation can still be self-defeating: a similarity threshold
with keyword-only search (there is no similarity to compare), variety (MMR) placed after the reranker (it undoes the
reranker's order), a reranker that re-scores fewer chunks than the prompt takes, chunks longer than the embedder
reads. These are not errors — the pipeline runs — so they are advice shown on the card concerned (and printed by
the CLI), each naming what to change.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from rag.pipeline import PipelineSpec

#: Characters per token of English text for the bundled tokenizers, rounded down (a chunk of N characters is about
#: N/4 tokens); used only to warn, never to cut.
CHARS_PER_TOKEN = 4


@dataclass(frozen=True)
class PipelineProblem:
    """One piece of advice: the stage it belongs to (the card that shows it) and what to change."""

    stage: str
    message: str


def _order(spec: PipelineSpec) -> list[str]:
    return [s.name for s in spec.enabled_post_steps()]


def _threshold_without_meaning(spec: PipelineSpec) -> PipelineProblem | None:
    if "threshold" in _order(spec) and spec.retrieve.mode == "bm25":
        return PipelineProblem("threshold", "Minimum similarity compares meaning scores, but the search is keyword "
                               "only (bm25), so it keeps every passage. Set the search to hybrid or dense, or "
                               "untick this step.")
    return None


def _mmr_after_rerank(spec: PipelineSpec) -> PipelineProblem | None:
    order = _order(spec)
    if "mmr" in order and "rerank" in order and order.index("mmr") > order.index("rerank"):
        return PipelineProblem("mmr", "Variety (MMR) runs after the reranker and re-orders by meaning similarity, "
                               "undoing the reranker's order. Drag it above the reranker.")
    return None


def _rerank_too_few(spec: PipelineSpec) -> PipelineProblem | None:
    if "rerank" not in _order(spec):
        return None
    top_n, top_k = spec["rerank"].top_n, spec.retrieve.top_k
    if top_n < top_k:
        return PipelineProblem("rerank", f"The reranker re-scores {top_n} passages but the prompt takes {top_k}: "
                               f"the last {top_k - top_n} keep the search's order. Raise 'top_n' to at least "
                               f"{top_k}.")
    return None


def _chunks_longer_than_embedder(spec: PipelineSpec) -> PipelineProblem | None:
    from rag.embedders import REGISTRY

    info = REGISTRY.get(spec.embed.model)
    if info is None or _has_children(spec):  # with parent-child the small pieces are what gets embedded
        return None
    split = spec.split
    tokens = split.chunk_size if split.method == "token" else split.chunk_size // CHARS_PER_TOKEN
    if tokens > info.max_seq_length:
        unit = "tokens" if split.method == "token" else "characters"
        return PipelineProblem("split", f"Chunks of {split.chunk_size} {unit} are longer than the embedder reads "
                               f"({info.max_seq_length} tokens, about {info.max_seq_length * CHARS_PER_TOKEN} "
                               "characters): the meaning search ignores their end. Lower 'chunk_size', or turn on "
                               "parent-child (search small pieces, read the whole chunk).")
    return None


def _has_children(spec: PipelineSpec) -> bool:
    return spec.child_split() is not None


def _children_not_smaller(spec: PipelineSpec) -> PipelineProblem | None:
    if not _has_children(spec):
        return None
    child, parent = spec.child_split().child_size, spec.split.chunk_size
    if spec.split.method != "token" and child * 2 > parent:
        return PipelineProblem("parent_child", f"Pieces of {child} characters in chunks of {parent}: a chunk holds "
                               "fewer than two pieces, so searching pieces changes little. Lower 'child_size' or "
                               "raise the split stage's 'chunk_size' (the parent's size).")
    return None


def _context_too_small(spec: PipelineSpec) -> PipelineProblem | None:
    if spec.split.method == "token":
        return None
    budget, wanted = spec.stages["prompt"].max_context_chars, spec.retrieve.top_k * spec.split.chunk_size
    if wanted > budget:
        fits = max(1, budget // max(1, spec.split.chunk_size))
        return PipelineProblem("prompt", f"The prompt holds {budget} characters of passages, but {spec.retrieve.top_k}"
                               f" chunks of {spec.split.chunk_size} need about {wanted}: about {fits} fit and the "
                               "rest are cut. Raise 'max_context_chars' (if the model's window allows), lower "
                               "'top_k' or the chunk size.")
    return None


CHECKS: tuple[Callable[[PipelineSpec], PipelineProblem | None], ...] = (
    _threshold_without_meaning, _mmr_after_rerank, _rerank_too_few, _chunks_longer_than_embedder,
    _children_not_smaller, _context_too_small,
)


def check_pipeline(spec: PipelineSpec) -> list[PipelineProblem]:
    """Every piece of advice for ``spec``, in pipeline order of the checks."""
    return [problem for check in CHECKS if (problem := check(spec)) is not None]


def problems_by_stage(spec: PipelineSpec) -> dict[str, list[str]]:
    """The advice grouped by the card that shows it."""
    grouped: dict[str, list[str]] = {}
    for problem in check_pipeline(spec):
        grouped.setdefault(problem.stage, []).append(problem.message)
    return grouped
