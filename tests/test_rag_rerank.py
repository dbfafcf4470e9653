"""The rerank step: the bundled sentence matcher (offline, the real MiniLM and the shipped weights) and a Hub
cross-encoder downloaded once with progress, each re-ordering candidates by its own scores.

The "Hub" is tests/hub_server.py, serving a tiny random-weight cross-encoder (BERT, one output) under the default
reranker's id: the real download path, the real sentence-transformers CrossEncoder and the real step; random
weights are enough for mechanics (the order must be the model's own, whatever it is). Real SQuAD-small paragraphs
and a real question from ../shared/testdata/rag/squad_small/derived/ (unmodified).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from rag.chunking import Chunk
from rag.hits import Hit
from rag.rerankers import (
    AUTO_RERANKER,
    BUNDLED_RERANKER,
    DEFAULT_RERANKER,
    FEATURES,
    SPACE_RERANKER,
    RerankerUnavailableError,
    get_reranker,
    load_weights,
    matcher_features,
    rerank_scores,
    resolve_reranker,
)
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
    fake_hub.add_repo(SPACE_RERANKER, _tiny_cross_encoder(tmp_path / "tiny-reranker"))
    connect_downloads()
    progress: list = []
    model = get_reranker(SPACE_RERANKER, on_progress=progress.append)
    assert progress and progress[-1].done == progress[-1].total > 0 and progress[-1].repo_id == SPACE_RERANKER

    query, ids, hits = _candidates()
    out = POST_STEPS["rerank"](hits, RerankSettings(model=SPACE_RERANKER, top_n=4), query=query)

    scores = rerank_scores(model, query, hits[:4])
    expected = [ids[i] for i in sorted(range(4), key=lambda i: -scores[i])]
    assert [h.chunk.source for h in out[:4]] == expected  # the model's own order of the top_n
    assert [h.rerank_score for h in out[:4]] == pytest.approx(sorted(scores.tolist(), reverse=True), abs=1e-5)
    assert out[4].chunk.source == ids[4] and out[4].rerank_score is None  # beyond top_n: kept, in its place
    assert [h.chunk.source for h in out[:4]] != ids[:4]  # not the order the candidates came in


def test_without_the_hub_a_hub_reranker_names_the_offline_one_and_how_to_leave_it_out(monkeypatch):
    from rag import rerankers

    monkeypatch.setattr(rerankers, "_CACHE", {})
    monkeypatch.setattr("rag.embedders._downloader", None)
    with pytest.raises(RerankerUnavailableError, match="drop it on the line so that it moves into the palette") as e:
        get_reranker(SPACE_RERANKER)
    assert BUNDLED_RERANKER in str(e.value)


def test_auto_on_a_space_whose_hub_download_fails_reranks_with_the_bundled_matcher(monkeypatch):
    from rag import rerankers

    monkeypatch.setattr(rerankers, "_CACHE", {})
    monkeypatch.setattr("rag.embedders._downloader", None)
    monkeypatch.setenv("SPACE_ID", "ada/studio")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert resolve_reranker(AUTO_RERANKER) == SPACE_RERANKER
    assert isinstance(get_reranker(AUTO_RERANKER), rerankers.SentenceMatchReranker)


def test_auto_is_the_bundled_reranker_here_and_the_hub_cross_encoder_on_a_space():
    assert RerankSettings().model == DEFAULT_RERANKER == AUTO_RERANKER
    assert resolve_reranker(AUTO_RERANKER, {}) == BUNDLED_RERANKER
    assert resolve_reranker(AUTO_RERANKER, {"SPACE_ID": "ada/studio"}) == SPACE_RERANKER
    assert resolve_reranker(AUTO_RERANKER, {"SPACE_ID": "ada/studio", "HF_HUB_OFFLINE": "1"}) == BUNDLED_RERANKER
    assert resolve_reranker(SPACE_RERANKER, {}) == SPACE_RERANKER


def test_the_bundled_reranker_works_offline_and_puts_the_answering_passage_first(monkeypatch):
    """Offline (no downloader at all): the default step loads the bundled MiniLM and the shipped weights. The
    answering paragraph, handed in last of five, comes first; the order is the one its own scores give."""
    from rag import rerankers

    monkeypatch.setattr(rerankers, "_CACHE", {})
    monkeypatch.setattr("rag.embedders._downloader", None)
    query, ids, hits = _candidates()
    hits = [replace(h, bm25_score=b) for h, b in zip(hits, [9.0, 4.0, None, 2.0, 8.0], strict=True)]

    out = POST_STEPS["rerank"](hits, RerankSettings(), query=query)

    assert out[0].chunk.source == ids[4]  # the gold paragraph, handed in last
    model = get_reranker(DEFAULT_RERANKER)
    scores = rerank_scores(model, query, hits)
    assert [h.chunk.source for h in out] == [ids[i] for i in sorted(range(5), key=lambda i: -scores[i])]
    assert [h.rerank_score for h in out] == pytest.approx(sorted(scores.tolist(), reverse=True), abs=1e-5)
    weights = load_weights()
    assert len(weights) == len(FEATURES) and (weights > 0).all()  # both features count, in the right direction
    features = matcher_features(model.embedder.embed_query(query), model.sentence_vectors([h.chunk.text for h in hits]),
                                [h.bm25_score for h in hits])
    assert features[:, 1].tolist() == pytest.approx([1.0, 4 / 9, 0.0, 2 / 9, 8 / 9])  # keyword score / the best
    assert scores == pytest.approx(features @ weights, abs=1e-5)


def test_the_build_step_learns_weights_from_xquad_without_the_articles_we_report_on(tmp_path):
    """``python -m rag build-reranker`` on the first two articles (the real file, the real recipe): the weights
    file names its data and licence, both features count, and SQuAD-small's articles are never read."""
    from rag.build_reranker import REPORTED_ARTICLES, build, xquad_articles

    docs, _, questions = xquad_articles()
    assert len(docs) == 46 and len(questions) == 1164
    assert not {f"xquad:{t}" for t in REPORTED_ARTICLES} & {d.source for d in docs}

    out = tmp_path / "weights.json"
    result = build(out, limit=2)
    saved = json.loads(out.read_text(encoding="utf-8"))
    assert saved == result and saved["features"] == list(FEATURES)
    assert saved["trained_on"]["licence"] == "CC BY-SA 4.0" and saved["trained_on"]["articles"] == 2
    assert all(w > 0 for w in saved["weights"])
    reranked, own = saved["in_sample"]["reranked"], saved["in_sample"]["candidates_order"]
    # Two articles are nearly saturated (MRR@10 0.995 both ways here): no worse, within one question's rank.
    assert reranked["mrr_at_10"] >= own["mrr_at_10"] - 0.02
