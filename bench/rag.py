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


def _cache_dir(spec: Any) -> Path:
    """Where the built 10k index is kept between runs: keyed by what decides its chunks and vectors."""
    import hashlib

    from rag.embedders import REGISTRY

    key = {"spec": spec.index_fingerprint(), "embedder": REGISTRY[spec.embed.model].revision,
           "sources": [(p.name, p.stat().st_size, int(p.stat().st_mtime)) for p in LARGE_SOURCES]}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tune_studio" / "bench"
    return root / f"rag-10k-{digest}"


def _scale_index(spec: Any, rebuild: bool) -> tuple[Any, float, bool]:
    """The ≥10k-chunk index: built once (embedding 12k chunks takes minutes), then reopened from the cache."""
    import shutil

    from rag.index import RagIndex

    folder = _cache_dir(spec)
    timing = folder / "build_seconds.json"
    if rebuild and folder.exists():
        shutil.rmtree(folder)
    if (folder / "idx" / "manifest.json").exists() and timing.exists():
        return RagIndex.open(folder / "idx"), json.loads(timing.read_text())["seconds"], True
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    index = RagIndex.create(folder / "idx", spec)
    index.embedder  # noqa: B018 - load outside the timing
    start = time.perf_counter()
    for _ in index.add_documents(_large_documents()):
        pass
    seconds = round(time.perf_counter() - start, 1)
    timing.write_text(json.dumps({"seconds": seconds, "chunks": len(index.chunks)}))
    return index, seconds, False


def _pct(values: list[float]) -> dict[str, float]:
    return {"p50": round(float(np.percentile(values, 50)), 2), "p95": round(float(np.percentile(values, 95)), 2)}


def stage_breakdown(index: Any, questions: list[str], spec: Any) -> dict[str, dict[str, float]]:
    """Each stage of the default retrieval timed on its own (thread CPU time, ms): where a query's time goes."""
    from rag import retrieve

    settings = spec.retrieve
    stages: dict[str, list[float]] = {k: [] for k in ("embed_query", "faiss", "bm25", "fusion", "post_steps")}

    def timed(name: str, fn: Any, *args: Any) -> Any:
        c0 = time.thread_time()
        out = fn(*args)
        stages[name].append((time.thread_time() - c0) * 1000)
        return out

    steps = spec.enabled_post_steps()
    for q in questions:
        qvec = timed("embed_query", index.embedder.embed_query, q)
        timed("faiss", index.dense_search, qvec, settings.candidates)
        timed("bm25", index.bm25.search, q, settings.candidates)
        c0 = time.thread_time()
        hits = retrieve._candidates(index, q, qvec, spec)  # repeats both searches; subtracted below
        total = (time.thread_time() - c0) * 1000
        stages["fusion"].append(max(0.0, total - stages["faiss"][-1] - stages["bm25"][-1]))
        c0 = time.thread_time()
        for step in steps:
            hits = retrieve.POST_STEPS[step.name](hits, step.settings, index=index, query=q, qvec=qvec,
                                                  top_k=settings.top_k)
        stages["post_steps"].append((time.thread_time() - c0) * 1000)
    return {k: _pct(v) for k, v in stages.items()}


def latency_at_scale(min_chunks: int = 10_000, queries: int = 300, rebuild: bool = False) -> dict[str, Any]:
    """≥``min_chunks`` chunks of real text (cached between runs), then time the default retrieval (hybrid + dedupe).

    Wall and thread CPU time are taken for every query; the flat and HNSW runs are interleaved query by query
    so that a burst of load from other jobs hits both alike.
    """
    from rag.evaluate import load_questions
    from rag.pipeline import PipelineSpec
    from rag.retrieve import search

    spec = PipelineSpec().with_params("split", chunk_size=180, chunk_overlap=20)
    questions = [q["question"] for q in load_questions(SQUAD / "questions.jsonl")][:queries]
    index, seconds, cached = _scale_index(spec, rebuild)
    out: dict[str, Any] = {"chunks": len(index.chunks), "index_seconds": seconds, "index_cached": cached,
                           "load_average_before": list(os.getloadavg())}
    if len(index.chunks) < min_chunks:
        raise RuntimeError(f"only {len(index.chunks)} chunks; lower chunk_size")
    specs = {kind: index.spec.with_params("index", kind=kind) for kind in ("flat", "hnsw")}
    faiss_by_kind = {}
    for kind, run_spec in specs.items():
        index._faiss = None
        index.spec = run_spec
        faiss_by_kind[kind] = index.faiss
    for kind, run_spec in specs.items():  # warm up: the first call pays one-off costs
        index.spec, index._faiss = run_spec, faiss_by_kind[kind]
        search(index, "warm up", run_spec)
    index.bm25  # noqa: B018
    wall: dict[str, list[float]] = {k: [] for k in specs}
    cpu: dict[str, list[float]] = {k: [] for k in specs}
    for q in questions:
        for kind, run_spec in specs.items():
            index.spec, index._faiss = run_spec, faiss_by_kind[kind]
            t0, c0 = time.perf_counter(), time.thread_time()
            search(index, q, run_spec)
            wall[kind].append((time.perf_counter() - t0) * 1000)
            cpu[kind].append((time.thread_time() - c0) * 1000)
    for kind in specs:
        out[kind] = {"p50_ms": _pct(wall[kind])["p50"], "p95_ms": _pct(wall[kind])["p95"],
                     "cpu_p50_ms": _pct(cpu[kind])["p50"], "cpu_p95_ms": _pct(cpu[kind])["p95"]}
        print("10k", kind, json.dumps(out[kind]), flush=True)
    index.spec, index._faiss = specs["flat"], faiss_by_kind["flat"]
    out["stages_cpu_ms"] = stage_breakdown(index, questions, specs["flat"])
    print("10k stages (thread CPU ms)", json.dumps(out["stages_cpu_ms"]), flush=True)
    out["load_average_after"] = list(os.getloadavg())
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
        cached = " (built once and reopened from the cache in `~/.cache/tune_studio/bench/`)" \
            if scale["index_cached"] else ""
        load = ", ".join(f"{x:.2f}" for x in scale["load_average_before"])
        stages = scale["stages_cpu_ms"]
        lines += [
            "",
            f"Latency at scale: {scale['chunks']} chunks of real text (wiki_demo.txt, c4_demo.jsonl, norwich-city.txt; "
            f"recursive 180/20), default retrieval (hybrid + dedupe), 300 SQuAD questions, flat and HNSW interleaved "
            f"query by query; indexing took {scale['index_seconds']} s{cached}. Load average (1/5/15 min) when the "
            f"run started: {load}.",
            "",
            "| vector index | wall p50 (ms) | wall p95 (ms) | CPU p50 (ms) | CPU p95 (ms) |",
            "|---|---|---|---|---|",
            *(f"| {k} | {scale[k]['p50_ms']} | {scale[k]['p95_ms']} | {scale[k]['cpu_p50_ms']} | "
              f"{scale[k]['cpu_p95_ms']} |" for k in ("flat", "hnsw")),
            "",
            "Wall-clock latency includes waiting for a core while other jobs run; CPU is the querying thread's own "
            "time (a query runs on one thread), i.e. what it costs on an idle core.",
            "",
            "Per stage (flat index, thread CPU time, ms):",
            "",
            "| stage | p50 | p95 |",
            "|---|---|---|",
            *(f"| {name} | {v['p50']} | {v['p95']} |" for name, v in stages.items()),
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
    parser.add_argument("--rebuild-10k", action="store_true", help="re-embed the 10k index, ignoring the cache")
    parser.add_argument("--only-10k", action="store_true", help="time the 10k index only; print, write nothing")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    threads = _threads()
    if args.only_10k:
        print(json.dumps(latency_at_scale(rebuild=args.rebuild_10k), indent=2))
        return 0
    squad = squad_comparison()
    scale = None if args.skip_10k else latency_at_scale(rebuild=args.rebuild_10k)
    section = render(squad, scale, threads)
    print(section)
    if not args.no_write:
        write_results(section)
    return 0
