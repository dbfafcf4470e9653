"""Retrieval evaluation on a corpus with known gold documents (the SQuAD-small layout).

Corpus lines: ``{doc_id, title, text}``; question lines: ``{qid, question, answers[], gold_doc_id}``
(``is_impossible`` questions have no gold document and are skipped). Hits are :mod:`rag.gold`'s, the same
definition the Experiment uses: at document level a question is a hit at k when its gold document is the
source of one of the top-k chunks; at passage level when one of them also holds the question's first answer
(SQuAD ``answers[0]``) as the gold quote. MRR@10 uses the rank of the first such chunk.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rag.events import EmbedProgress, Writing
from rag.gold import Gold, hit_rank, retrieval_metrics
from rag.index import RagIndex
from rag.ingest import LoadedDocument, Section, file_sha256
from rag.pipeline import PipelineSpec
from rag.retrieve import search
from rag.stages import SplitSettings


class EvalDataError(ValueError):
    """A corpus or questions file is malformed; the message names the file and line."""


@dataclass(frozen=True)
class EvalReport:
    questions: int
    chunks: int
    hit_at_1: float
    hit_at_5: float
    hit_at_10: float
    mrr_at_10: float
    index_seconds: float
    query_p50_ms: float
    query_p95_ms: float
    embedder: str
    pipeline: dict[str, Any]
    passage_questions: int | None = None
    passage_hit_at_1: float | None = None
    passage_hit_at_5: float | None = None
    passage_hit_at_10: float | None = None
    passage_mrr_at_10: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _read_jsonl(path: Path, required: tuple[str, ...]) -> list[dict[str, Any]]:
    rows = []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise EvalDataError(f"Cannot read {path}: {exc.strerror or exc}.") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise EvalDataError(f"{path}, line {number}: not valid JSON ({exc.msg}).") from None
        missing = [k for k in required if k not in row]
        if missing:
            raise EvalDataError(f"{path}, line {number}: missing field(s) {', '.join(missing)}.")
        rows.append(row)
    if not rows:
        raise EvalDataError(f"{path} has no rows.")
    return rows


def load_corpus(path: str | Path) -> tuple[list[LoadedDocument], dict[str, str]]:
    """Corpus rows as documents named by ``doc_id`` (so chunk sources are gold ids) plus their titles."""
    docs, titles = [], {}
    for row in _read_jsonl(Path(path), ("doc_id", "text")):
        doc_id, text = str(row["doc_id"]), str(row["text"])
        docs.append(LoadedDocument(doc_id, file_sha256(text.encode("utf-8")), [Section(text, doc_id)]))
        if row.get("title"):
            titles[doc_id] = str(row["title"])
    return docs, titles


def load_questions(path: str | Path) -> list[dict[str, Any]]:
    rows = _read_jsonl(Path(path), ("question",))
    return [r for r in rows if r.get("gold_doc_id") and not r.get("is_impossible")]


def build_index(docs: list[LoadedDocument], titles: dict[str, str], spec: PipelineSpec, path: Path,
                on_event: Callable[[Any], None] | None = None,
                phases: dict[str, float] | None = None) -> tuple[RagIndex, float]:
    """Index ``docs`` under ``spec`` at ``path``; returns the index and the seconds it took (model loading excluded).

    ``phases``, when given, receives where that time went: ``split`` (until the first embedding step),
    ``embed`` (until the index is written) and ``write`` (FAISS, BM25 and saving).
    """
    index = RagIndex.create(path, spec)
    index.embedder  # noqa: B018 - load the model outside the timed section
    start = time.perf_counter()
    marks: dict[str, float] = {}
    for event in index.add_documents(docs, titles):
        if on_event:
            on_event(event)
        if isinstance(event, EmbedProgress):
            marks.setdefault("embed", time.perf_counter())
        elif isinstance(event, Writing):
            marks.setdefault("write", time.perf_counter())
    end = time.perf_counter()
    if phases is not None:
        embed_at, write_at = marks.get("embed", end), marks.get("write", end)
        phases.update({"split": embed_at - start, "embed": write_at - embed_at, "write": end - write_at})
    return index, end - start


def gold_of(question: dict[str, Any]) -> Gold:
    """A question row's gold: its document, and its first answer as the quote (none: document level only)."""
    answers = question.get("answers") or []
    return Gold(str(question["gold_doc_id"]), str(answers[0]) if answers else "")


def score(index: RagIndex, questions: list[dict[str, Any]], spec: PipelineSpec) -> dict[str, float]:
    """Document- and passage-level hit@1/5/10, MRR@10 and query latency over ``questions`` (top 10 chunks each).

    Passage-level metrics count only questions with an answer to quote (``passage_questions`` of them); they
    are None when no question has one.
    """
    latencies, doc_ranks, passage_ranks = [], [], []
    search(index, questions[0]["question"], spec, top_k=10)  # warm-up: first call pays one-off costs
    for q in questions:
        start = time.perf_counter()
        result = search(index, q["question"], spec, top_k=10)
        latencies.append((time.perf_counter() - start) * 1000)
        chunks = [h.chunk for h in result.hits]
        gold = gold_of(q)
        doc_ranks.append(hit_rank(chunks, gold, "document"))
        if gold.quote.strip():
            passage_ranks.append(hit_rank(chunks, gold, "passage"))
    passage: dict[str, float] = {"passage_questions": len(passage_ranks)}
    if passage_ranks:
        passage.update({f"passage_{k}": v for k, v in retrieval_metrics(passage_ranks).items()})
    return {**retrieval_metrics(doc_ranks), **passage, "query_p50_ms": float(np.percentile(latencies, 50)),
            "query_p95_ms": float(np.percentile(latencies, 95))}


def evaluate(corpus: str | Path, questions: str | Path, spec: PipelineSpec | None = None,
             on_event: Callable[[Any], None] | None = None) -> EvalReport:
    """Index the corpus in a temporary folder under ``spec`` and score retrieval on the questions."""
    docs, titles = load_corpus(corpus)
    qs = load_questions(questions)
    if not qs:
        raise EvalDataError(f"{questions} has no answerable questions with a gold_doc_id.")
    return evaluate_documents(docs, titles, qs, spec, on_event)


def evaluate_documents(docs: list[LoadedDocument], titles: dict[str, str], qs: list[dict[str, Any]],
                       spec: PipelineSpec | None = None, on_event: Callable[[Any], None] | None = None) -> EvalReport:
    """:func:`evaluate` on loaded documents (a development set's) and question rows."""
    spec = spec or PipelineSpec()
    with tempfile.TemporaryDirectory(prefix="rag-eval-") as tmp:
        index, seconds = build_index(docs, titles, spec, Path(tmp) / "index", on_event)
        metrics = score(index, qs, spec)
    return EvalReport(questions=len(qs), chunks=len(index.chunks), index_seconds=seconds,
                      embedder=index.embedder_name, pipeline=spec.to_dict(), **metrics)


def naive_spec() -> PipelineSpec:
    """The common baseline: RecursiveCharacterTextSplitter 1000/100 + MiniLM + FAISS flat, dense only."""
    spec = PipelineSpec()
    spec = PipelineSpec({**spec.stages, "split": SplitSettings(method="recursive", chunk_size=1000, chunk_overlap=100,
                                                               prepend_title=False)}, spec.post)
    spec = spec.with_params("retrieve", mode="dense")
    for step in spec.post:
        spec = spec.with_enabled(step.name, False)
    return spec
