"""RAG benchmark: the app's default pipeline vs a naive recipe on SQuAD-small, plus latency at 10k chunks.

    python -m bench rag [--skip-10k] [--no-write]

Naive recipe: RecursiveCharacterTextSplitter 1000/100 + all-MiniLM-L6-v2 + FAISS flat, dense only.
Both run in the same process on the same data, so the comparison is fair on a busy machine; the
absolute latencies depend on the machine's load and are recorded with its CPU count.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TESTDATA = REPO.parent / "shared" / "testdata"
SQUAD = TESTDATA / "rag" / "squad_small" / "derived"
LARGE_SOURCES = [
    TESTDATA / "ft" / "llama_factory" / "wiki_demo.txt",
    TESTDATA / "ft" / "llama_factory" / "c4_demo.jsonl",
    TESTDATA / "docs" / "unstructured" / "norwich-city.txt",
]
RESULTS = REPO / "bench" / "RESULTS.md"


def _threads() -> int:
    import torch

    n = min(2, os.cpu_count() or 1)
    torch.set_num_threads(n)
    return n


def squad_comparison() -> dict[str, dict[str, Any]]:
    from rag.evaluate import build_index, load_corpus, load_questions, naive_spec, score
    from rag.pipeline import PipelineSpec

    docs, titles = load_corpus(SQUAD / "corpus.jsonl")
    questions = load_questions(SQUAD / "questions.jsonl")
    out = {}
    with tempfile.TemporaryDirectory(prefix="bench-rag-") as tmp:
        for name, spec in (("naive", naive_spec()), ("default", PipelineSpec())):
            index, seconds = build_index(docs, titles, spec, Path(tmp) / name)
            metrics = score(index, questions, spec)
            out[name] = {"chunks": len(index.chunks), "index_seconds": round(seconds, 2),
                         **{k: round(v, 4) for k, v in metrics.items()}}
            print(name, json.dumps(out[name]), flush=True)
    out["questions"] = len(questions)  # type: ignore[assignment]
    return out


def _large_documents() -> list[Any]:
    """Real text from the shared test data, as documents (c4 rows become one document each)."""
    from rag.ingest import LoadedDocument, Section, file_sha256, load_file

    docs = []
    for path in LARGE_SOURCES:
        if path.suffix == ".jsonl":
            for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
                text = json.loads(line).get("text", "")
                if text.strip():
                    name = f"{path.name}#{i}"
                    docs.append(LoadedDocument(name, file_sha256(text.encode()), [Section(text, name)]))
        else:
            docs.append(load_file(path))
    return docs


def latency_at_scale(min_chunks: int = 10_000, queries: int = 300) -> dict[str, Any]:
    """Build ≥``min_chunks`` chunks of real text, then time the default retrieval (hybrid + dedupe)."""
    from rag.evaluate import load_questions
    from rag.index import RagIndex
    from rag.pipeline import PipelineSpec
    from rag.retrieve import search

    spec = PipelineSpec().with_params("split", chunk_size=180, chunk_overlap=20)
    docs = _large_documents()
    questions = [q["question"] for q in load_questions(SQUAD / "questions.jsonl")][:queries]
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-rag-10k-") as tmp:
        index = RagIndex.create(Path(tmp) / "idx", spec)
        index.embedder  # noqa: B018 - load outside the timing
        start = time.perf_counter()
        for _ in index.add_documents(docs):
            pass
        out["chunks"] = len(index.chunks)
        out["index_seconds"] = round(time.perf_counter() - start, 1)
        if len(index.chunks) < min_chunks:
            raise RuntimeError(f"only {len(index.chunks)} chunks; lower chunk_size")
        for kind in ("flat", "hnsw"):
            index.set_spec(index.spec.with_params("index", kind=kind))
            run_spec = index.spec
            search(index, "warm up", run_spec)
            times, cpu = [], []
            for q in questions:
                t0, c0 = time.perf_counter(), time.thread_time()
                search(index, q, run_spec)
                times.append((time.perf_counter() - t0) * 1000)
                cpu.append((time.thread_time() - c0) * 1000)
            out[kind] = {"p50_ms": round(float(np.percentile(times, 50)), 2),
                         "p95_ms": round(float(np.percentile(times, 95)), 2),
                         "cpu_p50_ms": round(float(np.percentile(cpu, 50)), 2)}
            print("10k", kind, json.dumps(out[kind]), flush=True)
        # where the time goes: embedding the question dominates
        t = []
        for q in questions[:100]:
            t0 = time.perf_counter()
            index.embedder.embed_query(q)
            t.append((time.perf_counter() - t0) * 1000)
        out["query_embedding_p50_ms"] = round(float(np.percentile(t, 50)), 2)
    return out


def _table(squad: dict[str, Any]) -> str:
    rows = ["| pipeline | chunks | hit@1 | hit@5 | hit@10 | MRR@10 | index time (s) | query p50 (ms) "
            "| query p95 (ms) |",
            "|---|---|---|---|---|---|---|---|---|"]
    for name in ("naive", "default"):
        m = squad[name]
        rows.append(f"| {name} | {m['chunks']} | {m['hit_at_1']:.3f} | {m['hit_at_5']:.3f} | {m['hit_at_10']:.3f} | "
                    f"{m['mrr_at_10']:.3f} | {m['index_seconds']:.1f} | {m['query_p50_ms']:.1f} | "
                    f"{m['query_p95_ms']:.1f} |")
    return "\n".join(rows)


def render(squad: dict[str, Any], scale: dict[str, Any] | None, threads: int) -> str:
    lines = [
        "## RAG",
        "",
        f"Measured by `python -m bench rag` on {time.strftime('%Y-%m-%d')}, "
        f"{platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPU cores, torch threads {threads}, no GPU; the machine was shared with training jobs, "
        "so absolute latencies are pessimistic.",
        "",
        f"SQuAD-small (`../shared/testdata/rag/squad_small/derived/`, {squad['questions']} answerable questions, "
        "87 paragraphs). A hit = the gold paragraph among the top-k chunks' sources.",
        "",
        "- naive: RecursiveCharacterTextSplitter 1000/100 + all-MiniLM-L6-v2 + FAISS flat, dense only.",
        "- default: the app's default pipeline — recursive 1000/100 with the document title prepended to the "
        "embedded/keyword text, MiniLM + FAISS flat **and** BM25 fused by weighted reciprocal rank (k=60, dense "
        "weight 0.7), dedupe (one chunk per source, near-duplicates dropped).",
        "",
        _table(squad),
    ]
    if scale:
        lines += [
            "",
            f"Latency at scale: {scale['chunks']} chunks of real text (wiki_demo.txt, c4_demo.jsonl, norwich-city.txt; "
            f"recursive 180/20), default retrieval (hybrid + dedupe), {300} SQuAD questions; indexing took "
            f"{scale['index_seconds']} s.",
            "",
            "| vector index | query p50 (ms) | query p95 (ms) | CPU time per query p50 (ms) |",
            "|---|---|---|---|",
            *(f"| {k} | {scale[k]['p50_ms']} | {scale[k]['p95_ms']} | {scale[k]['cpu_p50_ms']} |"
              for k in ("flat", "hnsw")),
            "",
            "Wall-clock latency includes waiting for a core while other jobs run; the CPU time column "
            "(the querying thread's own time — a query runs on one thread) is what it costs on an idle core.",
            "",
            f"Embedding the question alone (wall clock, timed separately): p50 {scale['query_embedding_p50_ms']} ms.",
        ]
    return "\n".join(lines) + "\n"


def write_results(section: str, path: Path = RESULTS) -> None:
    """Replace only the ``## RAG`` section of RESULTS.md, keeping every other heading as it is."""
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmark results\n\n"
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.strip() == "## RAG"), None)
    if start is None:
        new = text.rstrip("\n") + "\n\n" + section
    else:
        end = next((j for j in range(start + 1, len(lines)) if lines[j].startswith("## ")), len(lines))
        new = "".join(lines[:start]) + section + ("\n" + "".join(lines[end:]) if end < len(lines) else "")
    path.write_text(new, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench rag", description=__doc__)
    parser.add_argument("--skip-10k", action="store_true", help="skip the 10k-chunk latency run (minutes)")
    parser.add_argument("--no-write", action="store_true", help="print only; do not update bench/RESULTS.md")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    threads = _threads()
    squad = squad_comparison()
    scale = None if args.skip_10k else latency_at_scale()
    section = render(squad, scale, threads)
    print(section)
    if not args.no_write:
        write_results(section)
    return 0
