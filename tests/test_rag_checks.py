"""The pipeline's self-checks: each self-defeating choice is explained at its stage; the default has none."""

from __future__ import annotations

from rag.checks import check_pipeline, problems_by_stage
from rag.pipeline import PipelineSpec


def test_the_default_pipeline_has_nothing_to_say() -> None:
    assert check_pipeline(PipelineSpec()) == []


def test_threshold_with_keyword_only_search_is_explained_on_the_threshold_card() -> None:
    spec = PipelineSpec().with_enabled("threshold", True).with_params("retrieve", mode="bm25")
    assert "keyword" in problems_by_stage(spec)["threshold"][0]
    assert "threshold" not in problems_by_stage(spec.with_params("retrieve", mode="hybrid"))


def test_mmr_after_the_reranker_is_explained_and_the_other_order_is_fine() -> None:
    spec = PipelineSpec().with_enabled("mmr", True).with_enabled("rerank", True)
    names = [s.name for s in spec.post]
    after = spec.with_order([n for n in names if n != "mmr"] + ["mmr"])
    before = spec.with_order(["mmr"] + [n for n in names if n != "mmr"])
    assert "Drag it above" in problems_by_stage(after)["mmr"][0]
    assert "mmr" not in problems_by_stage(before)


def test_a_reranker_scoring_fewer_than_the_prompt_takes_names_the_number_to_set() -> None:
    spec = PipelineSpec().with_enabled("rerank", True).with_params("rerank", top_n=3).with_params("retrieve", top_k=8)
    assert "at least 8" in problems_by_stage(spec)["rerank"][0]


def test_chunks_longer_than_the_embedder_reads_and_a_context_too_small_for_top_k() -> None:
    spec = PipelineSpec().with_params("split", chunk_size=3000, chunk_overlap=100)
    by_stage = problems_by_stage(spec)
    assert "256 tokens" in by_stage["split"][0]
    assert "about 2 fit" in by_stage["prompt"][0]  # 5 chunks of 3000 in 6000 characters
