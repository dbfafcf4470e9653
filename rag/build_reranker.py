"""``python -m rag build-reranker``: learn the bundled reranker's weights (a reproducible build step).

Data: XQuAD's English file (``rag/devsets/xquad/xquad.en.json``, Artetxe et al. 2019, CC BY-SA 4.0: 240
paragraphs of 48 Wikipedia articles from SQuAD v1.1's dev set, 1,190 crowd-written questions). The articles of
the sets we report on are left out (SQuAD-small's two, and any article whose title is one of the long-document
set's), so no question we evaluate on is learned from.

Recipe: the articles are indexed as whole documents with the default pipeline, rerank off; for each question the
top ``TOP_N`` candidates and their features (:func:`rag.rerankers.matcher_features`, the step's own code) are
collected; the weights minimise a listwise softmax loss (the candidates that hold the question's answer are the
targets) with plain gradient descent from zero: deterministic, seconds. A two-fold split by article reports the
held-out gain over the candidates' own order, which is written beside the weights.
"""

from __future__ import annotations

import json
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rag.gold import Gold, is_hit, retrieval_metrics
from rag.ingest import LoadedDocument, Section, file_sha256
from rag.rerankers import FEATURES, WEIGHTS_FILE, matcher_features

XQUAD = Path(__file__).resolve().parent / "devsets" / "xquad" / "xquad.en.json"
XQUAD_SHA256 = "e4c57d1c9143aaa1c5d265ba5987a65f4e69528d2a98f29d6e75019b10344f29"
REPORTED_ARTICLES = ("Normans", "Computational_complexity_theory")  # SQuAD-small's (and the long-docs set's)
TOP_N = 20
STEPS, LEARNING_RATE, L2 = 3000, 0.5, 1e-3


@dataclass(frozen=True)
class Candidates:
    """One question's candidates: features (TOP_N × features), which of them hold the answer, and its article."""

    features: np.ndarray
    relevant: np.ndarray
    article: str


def xquad_articles(path: Path = XQUAD, exclude: tuple[str, ...] = REPORTED_ARTICLES,
                   limit: int = 0) -> tuple[list[LoadedDocument], dict[str, str], list[dict[str, Any]]]:
    """XQuAD's articles as documents (paragraphs joined in order) and their questions, minus ``exclude``."""
    data = json.loads(path.read_text(encoding="utf-8"))["data"]
    from rag.devset import written_questions

    reported = set(exclude) | {q["gold_doc_id"] for q in written_questions()}
    docs, titles, questions = [], {}, []
    for article in data:
        if article["title"] in reported:
            continue
        doc_id = f"xquad:{article['title']}"
        text = "\n\n".join(p["context"] for p in article["paragraphs"])
        docs.append(LoadedDocument(doc_id, file_sha256(text.encode("utf-8")), [Section(text, doc_id)]))
        titles[doc_id] = article["title"].replace("_", " ")
        questions += [{"question": qa["question"], "answers": [a["text"] for a in qa["answers"]], "gold_doc_id": doc_id}
                      for p in article["paragraphs"] for qa in p["qas"]]
        if limit and len(docs) >= limit:
            break
    return docs, titles, questions


def collect(docs: list[LoadedDocument], titles: dict[str, str], questions: list[dict[str, Any]],
            folder: Path) -> list[Candidates]:
    """Index ``docs`` with the default pipeline and gather each question's candidates and features."""
    from rag.evaluate import build_index
    from rag.pipeline import PipelineSpec
    from rag.rerankers import SentenceMatchReranker
    from rag.retrieve import search

    spec = PipelineSpec().with_enabled("rerank", False)  # the candidates as the search orders them, before any rerank
    index, _ = build_index(docs, titles, spec, folder)
    matcher = SentenceMatchReranker(index.embedder, np.zeros(len(FEATURES)))
    out = []
    for q in questions:
        hits = search(index, q["question"], spec, top_k=TOP_N).hits[:TOP_N]
        gold = Gold(q["gold_doc_id"], q["answers"][0])
        features = matcher_features(index.embedder.embed_query(q["question"]),
                                    matcher.sentence_vectors([h.chunk.text for h in hits]),
                                    [h.bm25_score for h in hits])
        relevant = np.array([is_hit(h.chunk, gold, "passage") for h in hits], dtype=np.float32)
        out.append(Candidates(features, relevant, q["gold_doc_id"]))
    return out


def fit(data: list[Candidates]) -> np.ndarray:
    """Weights minimising the listwise softmax loss over questions with at least one relevant candidate."""
    usable = [c for c in data if c.relevant.sum() > 0]
    if not usable:
        raise ValueError("No question has its answer among its candidates: nothing to learn from.")
    n, k = len(usable), max(len(c.relevant) for c in usable)
    x = np.zeros((n, k, len(FEATURES)))
    mask, target = np.zeros((n, k)), np.zeros((n, k))
    for i, c in enumerate(usable):
        m = len(c.relevant)
        x[i, :m], mask[i, :m], target[i, :m] = c.features, 1, c.relevant / c.relevant.sum()
    w = np.zeros(len(FEATURES))
    for _ in range(STEPS):
        s = np.where(mask > 0, x @ w, -1e9)
        p = np.exp(s - s.max(axis=1, keepdims=True)) * mask
        p /= p.sum(axis=1, keepdims=True)
        w -= LEARNING_RATE * (np.einsum("nk,nkf->f", p - target, x) / n + L2 * w)
    return w


def passage_metrics(data: list[Candidates], weights: np.ndarray | None) -> dict[str, float]:
    """Passage-level hit@1/5/10 and MRR@10 with candidates ordered by ``weights`` (None: their own order)."""
    ranks = []
    for c in data:
        order = np.arange(len(c.relevant)) if weights is None else np.argsort(-(c.features @ weights), kind="stable")
        ranked = [bool(c.relevant[i]) for i in order]
        ranks.append(next((r for r, rel in enumerate(ranked, start=1) if rel), None))
    return {k: round(v, 4) for k, v in retrieval_metrics(ranks).items()}


def two_fold(data: list[Candidates]) -> dict[str, Any]:
    """Learn on half the articles, measure on the other half, both ways: the held-out gain of the weights."""
    folds = []
    for fold in (0, 1):
        train = [c for c in data if zlib.crc32(c.article.encode()) % 2 != fold]
        test = [c for c in data if zlib.crc32(c.article.encode()) % 2 == fold]
        folds.append({"questions": len(test), "candidates_order": passage_metrics(test, None),
                      "reranked": passage_metrics(test, fit(train))})
    return {"folds": folds}


def build(out: Path = WEIGHTS_FILE, xquad: Path = XQUAD, limit: int = 0) -> dict[str, Any]:
    """Collect, fit and write the weights file (with provenance and the held-out figures); returns its content."""
    start = time.perf_counter()
    docs, titles, questions = xquad_articles(xquad, limit=limit)
    with tempfile.TemporaryDirectory(prefix="rerank-build-") as tmp:
        data = collect(docs, titles, questions, Path(tmp) / "index")
    weights = fit(data)
    result = {
        "features": list(FEATURES),
        "weights": [round(float(w), 4) for w in weights],
        "trained_on": {"file": "rag/devsets/xquad/xquad.en.json", "sha256": file_sha256(xquad.read_bytes()),
                       "licence": "CC BY-SA 4.0", "articles": len(docs), "questions": len(questions),
                       "left_out": list(REPORTED_ARTICLES), "top_n": TOP_N},
        "held_out_two_fold": two_fold(data),
        "in_sample": {"candidates_order": passage_metrics(data, None), "reranked": passage_metrics(data, weights)},
        "build_seconds": round(time.perf_counter() - start, 1),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result
