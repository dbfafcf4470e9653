"""RAG benchmark: the app's default pipeline vs a naive recipe on SQuAD-small, plus latency at 10k chunks;
with ``--answers``, the bundled model's answers over the retrieved chunks, one row per prompt template.

    python -m bench rag [--skip-10k] [--no-write]
    python -m bench rag --answers [--questions 40] [--set A|B] [--variants baseline,short,...] [--template FILE]

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

    # The speed goal is for the search itself: the rerank step (on by default) is measured by bench.rerank.
    spec = PipelineSpec().with_params("split", chunk_size=180, chunk_overlap=20).with_enabled("rerank", False)
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


def write_results(section: str, path: Path = RESULTS, heading: str = "## RAG") -> None:
    """Replace only the ``heading`` section of RESULTS.md, keeping every other heading as it is."""
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmark results\n\n"
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.strip() == heading), None)
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
    parser.add_argument("--answers", action="store_true",
                        help="generate answers with the bundled model and score them per prompt template")
    parser.add_argument("--questions", type=int, default=40, help="--answers: how many SQuAD-small questions")
    parser.add_argument("--set", choices=tuple(QUESTION_SETS), default="A",
                        help="--answers: A chooses the template, B (disjoint questions) confirms the choice")
    parser.add_argument("--variants", default="baseline",
                        help=f"--answers: comma-separated names among {', '.join(PROMPT_VARIANTS)}, or 'all'")
    parser.add_argument("--template", action="append", type=Path, default=[],
                        help="--answers: also try the template in this text file (named by its file name)")
    parser.add_argument("--max-new-tokens", type=int, default=ANSWER_TOKENS, help="--answers: answer length cap")
    parser.add_argument("--context-chars", type=int, default=0,
                        help="--answers: the prompt stage's max_context_chars for every template (0: its default)")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.answers:
        return answers_main(args)
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


# ------------------------------------------------------------------------------ answers (--answers)

ANSWER_TOKENS = 64
ANSWER_RUNS = REPO / "bench" / "rag_answer_runs.json"
ANSWERS_HEADING = "## Small-model RAG prompt"
QUESTION_SETS = {"A": 0, "B": 3}
"""Offsets into SQuAD-small taken every 7th question: two disjoint samples spread over all 87 paragraphs."""
QUESTION_STRIDE = 7

PROMPT_VARIANTS: dict[str, str | None] = {
    "default": None,  # the app's current default (rag.stages.DEFAULT_PROMPT)
    "baseline": (  # the default before issue #14, kept so that a rerun compares against the same text
        "Answer the question using only the numbered context passages below. Cite the passages you use "
        "with their numbers in square brackets, like [1] or [2][3]. If the context does not contain the "
        "answer, say you do not know.\n\n"
        "Context:\n{context}\n\n"
        "Question: {question}\n"
        "Answer:"
    ),
    "short": (
        "Context:\n{context}\n\n"
        "Question: {question}\n"
        "Answer in one sentence using only the context, and end with the number of the passage you used, "
        "like [1].\n"
        "Answer:"
    ),
    "sentence": (
        "Passages:\n{context}\n\n"
        "Question: {question}\n"
        "Reply with one short sentence that answers the question, and put the number of the passage it comes "
        "from in square brackets at the end."
    ),
    "brief": (
        "Answer the question from the passages. Keep it short. Cite the passage number in square brackets.\n\n"
        "{context}\n\n"
        "Question: {question}"
    ),
}
"""Prompt templates tried with the bundled 135M model (``--variants``); ``None`` = the app's default."""


def question_sample(questions: list[dict[str, Any]], which: str, n: int) -> list[dict[str, Any]]:
    """Every 7th question from set ``which``'s offset: A and B never share a question."""
    return questions[QUESTION_SETS[which]::QUESTION_STRIDE][:n]


def score_reply(raw: str, text: str, hits: list[Any], answers: list[str]) -> dict[str, Any]:
    """One reply's figures: ``raw`` is what the model wrote, ``text`` the tidied reply the user sees."""
    from rag.answer import parse_citations
    from rag.gold import contains_phrase
    from services.compare import answer_contained

    citations, invalid = parse_citations(text, hits)
    return {
        "contained": answer_contained(text, answers),
        "cited": float(bool(citations)),
        "cited_correct": float(any(contains_phrase(c.hit.chunk.text, a) for c in citations for a in answers)),
        "invalid_citation": float(bool(invalid)),
        "heading_raw": float(any(line.lstrip().startswith("#") for line in raw.splitlines())),
        "heading_shown": float(any(line.lstrip().startswith("#") for line in text.splitlines())),
        "gold_retrieved": float(any(contains_phrase(h.chunk.text, a) for h in hits for a in answers)),
        "chars": len(text),
    }


def _templates(args: argparse.Namespace) -> dict[str, str]:
    from rag.stages import DEFAULT_PROMPT

    names = list(PROMPT_VARIANTS) if args.variants == "all" else [v for v in args.variants.split(",") if v]
    unknown = [n for n in names if n not in PROMPT_VARIANTS]
    if unknown:
        raise SystemExit(f"Unknown variant(s) {', '.join(unknown)}; choose among {', '.join(PROMPT_VARIANTS)}.")
    out = {n: PROMPT_VARIANTS[n] or DEFAULT_PROMPT for n in names}
    out.update({path.stem: path.read_text(encoding="utf-8") for path in args.template})
    return out


def run_answers(templates: dict[str, str], questions: list[dict[str, Any]],
                max_new_tokens: int, context_chars: int = 0) -> tuple[dict[str, list[dict[str, Any]]], dict[str, Any]]:
    """Each question answered with each template, interleaved question by question (load hits all alike)."""
    from core.generation import GenerationSettings
    from engine.infer import ChatModel
    from rag.answer import answer
    from rag.evaluate import build_index, load_corpus
    from rag.events import AnswerEvent, RetrievedEvent, TokenEvent
    from rag.pipeline import PipelineSpec

    docs, titles = load_corpus(SQUAD / "corpus.jsonl")
    model = ChatModel(device="cpu")
    settings = GenerationSettings(max_new_tokens=max_new_tokens)  # greedy (temperature 0), seed 0
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in templates}
    with tempfile.TemporaryDirectory(prefix="bench-rag-answers-") as tmp:
        index, _ = build_index(docs, titles, PipelineSpec(), Path(tmp) / "idx")
        for i, q in enumerate(questions, start=1):
            for name, template in templates.items():
                spec = index.spec.with_params("prompt", template=template,
                                              **({"max_context_chars": context_chars} if context_chars else {}))
                hits, raw, start = [], "", time.perf_counter()
                for event in answer(index, q["question"], lambda p: model.stream(p, settings=settings), spec):
                    if isinstance(event, RetrievedEvent):
                        hits = event.hits
                    elif isinstance(event, TokenEvent):
                        raw += event.text
                    elif isinstance(event, AnswerEvent):
                        text = event.text
                seconds = time.perf_counter() - start
                tokens = len(model.tokenizer(raw)["input_ids"])
                row = {"qid": q["qid"], "question": q["question"], "answers": q["answers"], "reply": text,
                       "seconds": round(seconds, 2), "tokens": tokens, "hit_cap": tokens >= max_new_tokens,
                       **score_reply(raw, text, hits, q["answers"])}
                rows[name].append(row)
                print(f"{i}/{len(questions)} {name} {seconds:.1f}s contained={row['contained']:.0f} "
                      f"cited={row['cited']:.0f} {text[:100]!r}", flush=True)
        chat = model.tokenizer.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False,
                                                   add_generation_prompt=True)
        conditions = {"system_turn_added": "system" in chat, "top_k": index.spec.retrieve.top_k,
                      "max_context_chars": context_chars or index.spec.stages["prompt"].max_context_chars,
                      "post_steps": {s.name: s.settings.to_dict() for s in index.spec.enabled_post_steps()}}
    return rows, conditions


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Rates with Wilson 95% intervals, mean reply length and seconds per answer."""
    from core.stats import wilson_interval

    n = len(rows)
    out: dict[str, Any] = {"n": n}
    for key in ("contained", "cited", "cited_correct", "invalid_citation", "heading_raw", "heading_shown",
                "gold_retrieved", "hit_cap"):
        k = int(sum(float(r[key]) for r in rows))
        low, high = wilson_interval(k, n)
        out[key] = {"k": k, "rate": round(k / n, 3) if n else 0.0, "low": round(low, 3), "high": round(high, 3)}
    out["mean_chars"] = round(float(np.mean([r["chars"] for r in rows])), 1) if n else 0.0
    out["seconds_per_answer"] = round(float(np.mean([r["seconds"] for r in rows])), 2) if n else 0.0
    return out


def render_answers(runs: dict[str, Any]) -> str:
    """The RESULTS.md table: one row per (question set, template), with Wilson intervals."""
    head = ["| set | template | N | answer contained | cites a passage | cites the passage with the answer "
            "| heading in raw reply | mean reply (chars) | s / answer |", "|---|---|---|---|---|---|---|---|---|"]

    def cell(m: dict[str, Any]) -> str:
        return f"{m['k']} ({m['rate']:.2f} [{m['low']:.2f}, {m['high']:.2f}])"

    for run in runs.values():
        for name, s in run["summary"].items():
            head.append(f"| {run['set']} | {name} | {s['n']} | {cell(s['contained'])} | {cell(s['cited'])} | "
                        f"{cell(s['cited_correct'])} | {cell(s['heading_raw'])} | {s['mean_chars']} | "
                        f"{s['seconds_per_answer']} |")
    return "\n".join([*head, "", *paired_lines(runs)])


def paired_lines(runs: dict[str, Any], baseline: str = "baseline") -> list[str]:
    """Each template against the baseline on the same questions of a set (paired bootstrap over questions)."""
    from core.stats import paired_bootstrap

    by_set: dict[str, dict[str, dict[str, dict[str, Any]]]] = {}
    for run in runs.values():
        for name, rows in run["rows"].items():
            by_set.setdefault(run["set"], {}).setdefault(name, {}).update({r["qid"]: r for r in rows})
    lines = []
    for which, templates in sorted(by_set.items()):
        base = templates.get(baseline, {})
        for name, rows in templates.items():
            qids = [q for q in rows if q in base] if name != baseline else []
            if not qids:
                continue
            parts = []
            for key, label in (("contained", "answer contained"), ("cited", "cites a passage")):
                d = paired_bootstrap([rows[q][key] for q in qids], [base[q][key] for q in qids])
                parts.append(f"{label} {d.diff:+.3f} [{d.low:+.3f}, {d.high:+.3f}], p = {d.p_value:.3f}")
            lines.append(f"- set {which}, {name} − {baseline} (N = {len(qids)}, paired bootstrap, 2000 resamples): "
                         + "; ".join(parts))
    return lines


def answers_main(args: argparse.Namespace) -> int:
    """Run ``--answers``: score the templates on one question set, keep the rows in rag_answer_runs.json."""
    import torch

    from rag.evaluate import load_questions

    torch.set_num_threads(1)  # the machine is shared; one thread keeps the other engineers' work moving
    templates = _templates(args)
    questions = question_sample(load_questions(SQUAD / "questions.jsonl"), args.set, args.questions)
    load = list(os.getloadavg())
    if args.context_chars:
        templates = {f"{name}@{args.context_chars}": t for name, t in templates.items()}
    rows, conditions = run_answers(templates, questions, args.max_new_tokens, args.context_chars)
    run = {**conditions, "set": args.set, "questions": len(questions), "max_new_tokens": args.max_new_tokens,
           "date": time.strftime("%Y-%m-%d %H:%M"), "cpu_count": os.cpu_count(), "torch_threads": 1,
           "load_average_before": load, "load_average_after": list(os.getloadavg()),
           "templates": templates, "summary": {n: summarise(r) for n, r in rows.items()}, "rows": rows}
    print(json.dumps({"set": args.set, "summary": run["summary"]}, indent=1))
    if not args.no_write:
        stored = json.loads(ANSWER_RUNS.read_text(encoding="utf-8")) if ANSWER_RUNS.exists() else {}
        stored[f"{args.set}:{','.join(templates)}"] = run
        ANSWER_RUNS.write_text(json.dumps(stored, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        print(render_answers(stored))
    return 0
