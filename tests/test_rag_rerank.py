"""The rerank step: a Hub cross-encoder downloaded once with progress, re-ordering candidates by its own scores.

The "Hub" is tests/hub_server.py, serving a tiny random-weight cross-encoder (BERT, one output) under the default
reranker's id: the real download path, the real sentence-transformers CrossEncoder and the real step; random
weights are enough for mechanics (the order must be the model's own, whatever it is). Real SQuAD-small paragraphs
and a real question from ../shared/testdata/rag/squad_small/derived/ (unmodified).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rag.chunking import Chunk
from rag.hits import Hit
from rag.rerankers import DEFAULT_RERANKER, RerankerUnavailableError, get_reranker, rerank_scores
from rag.retrieve import POST_STEPS
from rag.stages import RerankSettings

SQUAD = Path(__file__).resolve().parents[2] / "shared" / "testdata" / "rag" / "squad_small" / "derived"


def _rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (SQUAD / name).read_text(encoding="utf-8").splitlines() if line.strip()]


def _tiny_cross_encoder(folder: Path) -> dict[str, Path]:
    """A 2-layer BERT with one output and the bundled MiniLM's tokenizer, saved as a Hub repo's files."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from rag.embedders import bundled_model_dir

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(str(bundled_model_dir()))
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=128, num_labels=1)
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return {p.name: p for p in folder.iterdir() if p.is_file()}


def _candidates() -> tuple[str, list[str], list[Hit]]:
    corpus = {row["doc_id"]: row["text"] for row in _rows("corpus.jsonl")}
    question = next(q for q in _rows("questions.jsonl") if q["qid"] == "56ddde6b9a695914005b9628")
    ids = ["Computational_complexity_theory#0", "Computational_complexity_theory#12", "Normans#5", "Normans#9",
           question["gold_doc_id"]]
    hits = [Hit(Chunk(corpus[d], d, 0), i, 1.0 - i / 10) for i, d in enumerate(ids)]
    return question["question"], ids, hits


def test_the_hub_reranker_downloads_with_progress_and_orders_by_its_own_scores(fake_hub, monkeypatch, tmp_path):
    from rag import rerankers
    from services.hub import connect_downloads

    monkeypatch.setattr(rerankers, "_CACHE", {})
    monkeypatch.setattr("rag.embedders._downloader", None)
    fake_hub.add_repo(DEFAULT_RERANKER, _tiny_cross_encoder(tmp_path / "tiny-reranker"))
    connect_downloads()
    assert RerankSettings().model == DEFAULT_RERANKER
    progress: list = []
    model = get_reranker(DEFAULT_RERANKER, on_progress=progress.append)
    assert progress and progress[-1].done == progress[-1].total > 0 and progress[-1].repo_id == DEFAULT_RERANKER

    query, ids, hits = _candidates()
    out = POST_STEPS["rerank"](hits, RerankSettings(top_n=4), query=query)

    scores = rerank_scores(model, query, [h.chunk.text for h in hits[:4]])
    expected = [ids[i] for i in sorted(range(4), key=lambda i: -scores[i])]
    assert [h.chunk.source for h in out[:4]] == expected  # the model's own order of the top_n
    assert [h.rerank_score for h in out[:4]] == pytest.approx(sorted(scores.tolist(), reverse=True), abs=1e-5)
    assert out[4].chunk.source == ids[4] and out[4].rerank_score is None  # beyond top_n: kept, in its place
    assert [h.chunk.source for h in out[:4]] != ids[:4]  # not the order the candidates came in


def test_without_the_hub_the_reranker_says_how_to_leave_it_out(monkeypatch):
    from rag import rerankers

    monkeypatch.setattr(rerankers, "_CACHE", {})
    monkeypatch.setattr("rag.embedders._downloader", None)
    with pytest.raises(RerankerUnavailableError, match="drop it on the line so that it moves into the palette"):
        get_reranker(DEFAULT_RERANKER)
