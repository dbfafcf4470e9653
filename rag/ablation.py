"""``python -m rag eval --ablation``: the default pipeline against one change at a time, with latency per stage.

Variants, read from the spec at run time (so a step or switch added later is ablated without editing this
file): the default; each post-retrieval step toggled; each retrieval mode; each on/off setting of the stages
that shape retrieval (title prepending, ...); and the naive recipe (:func:`rag.evaluate.naive_spec`). Hits are
:mod:`rag.gold`'s (via :func:`rag.evaluate.score`). An index is built once per distinct index-affecting
setting (:meth:`PipelineSpec.index_fingerprint` and the vector index kind) and reused by every variant that
only changes retrieval. A variant that cannot run here (the rerank model not available offline) is reported
as skipped, not failed.

Stage latencies are medians over a sample of questions, timed by calling retrieval's pieces in
:func:`rag.retrieve.search`'s order: embed the question, dense search, BM25, fusion (the candidate list
minus the two searches), then each enabled post step.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.settings import base_type, describe
from rag import retrieve
from rag.evaluate import build_index, naive_spec, score
from rag.index import RagIndex
from rag.ingest import LoadedDocument
from rag.pipeline import PipelineSpec

#: Stages whose on/off settings change what retrieval returns (prompt and generate only shape the answer).
RETRIEVAL_STAGES = ("split", "embed", "index", "retrieve")
STAGE_SAMPLE = 40
BASE_STAGES = ("embed question", "dense search", "bm25", "fusion")


@dataclass(frozen=True)
class Variant:
    name: str
    spec: PipelineSpec


def _toggles(base: PipelineSpec) -> list[Variant]:
    """One variant per boolean setting of the retrieval stages (e.g. ``split.prepend_title``), flipped."""
    out = []
    for stage in RETRIEVAL_STAGES:
        settings = base.stages[stage]
        for info in describe(type(settings)):
            if base_type(info.type) is bool:
                value = getattr(settings, info.name)
                label = f"{stage}.{info.name} {'off' if value else 'on'}"
                out.append(Variant(label, base.with_params(stage, **{info.name: not value})))
    return out


def ablation_variants(base: PipelineSpec | None = None) -> list[Variant]:
    base = base or PipelineSpec()
    variants = [Variant("default", base)]
    for step in base.post:
        variants.append(Variant(f"{step.name} {'off' if step.enabled else 'on'}",
                                base.with_enabled(step.name, not step.enabled)))
    mode_info = next(i for i in describe(type(base.retrieve)) if i.name == "mode")
    for mode in mode_info.spec.choices or ():
        if mode != base.retrieve.mode:
            variants.append(Variant(f"retrieve {mode}", base.with_params("retrieve", mode=mode)))
    variants.extend(_toggles(base))
    variants.append(Variant("naive recipe", naive_spec()))
    return variants


def index_key(spec: PipelineSpec) -> str:
    """What decides a built index: chunks and vectors (the fingerprint) and the vector index kind."""
    return json.dumps({**spec.index_fingerprint(), "index": spec.stages["index"].to_dict()}, sort_keys=True)


def stage_timings(index: RagIndex, questions: list[dict[str, Any]], spec: PipelineSpec,
                  top_k: int = 10) -> dict[str, float]:
    """Median milliseconds per retrieval stage over the questions; stages this spec does not run are left out."""
    settings, steps = spec.retrieve, spec.enabled_post_steps()
    needs_vector = settings.mode != "bm25" or any(s.name in ("threshold", "mmr") for s in steps)
    runs = {"embed question": needs_vector, "dense search": settings.mode in ("dense", "hybrid"),
            "bm25": settings.mode in ("bm25", "hybrid"), "fusion": True}
    times: dict[str, list[float]] = {name: [] for name in [*BASE_STAGES, *(s.name for s in steps)] if runs.get(name, 1)}
    for q in questions:
        text = q["question"].strip()
        t0 = time.perf_counter()
        qvec = index.embedder.embed_query(text) if needs_vector else None
        t1 = time.perf_counter()
        if runs["dense search"] and qvec is not None:
            index.dense_search(qvec, settings.candidates)
        t2 = time.perf_counter()
        if runs["bm25"]:
            index.bm25.search(text, settings.candidates)
        t3 = time.perf_counter()
        hits = retrieve._candidates(index, text, qvec, spec)
        t4 = time.perf_counter()
        base = (t1 - t0, t2 - t1, t3 - t2, max(0.0, (t4 - t3) - (t3 - t1)))
        for name, seconds in zip(BASE_STAGES, base, strict=True):
            if name in times:
                times[name].append(seconds)
        for step in steps:
            start = time.perf_counter()
            hits = retrieve.POST_STEPS[step.name](hits, step.settings, index=index, query=text, qvec=qvec,
                                                  top_k=top_k)
            times[step.name].append(time.perf_counter() - start)
    return {name: float(np.median(values)) * 1000 for name, values in times.items() if values}


def _runs(index: RagIndex, spec: PipelineSpec, question: str) -> str | None:
    """None when the variant runs here; else why not (a rerank model that is not available offline)."""
    try:
        retrieve.search(index, question, spec, top_k=10)
    except Exception as exc:
        if any(s.name == "rerank" for s in spec.enabled_post_steps()):
            return "model not available offline"
        return f"{type(exc).__name__}: {exc}"
    return None


def run_ablation(docs: list[LoadedDocument], titles: dict[str, str], questions: list[dict[str, Any]], workdir: Path,
                 base: PipelineSpec | None = None, on_line: Callable[[str], None] | None = None,
                 stage_sample: int = STAGE_SAMPLE) -> list[dict[str, Any]]:
    """One row per variant (skipped ones carry ``skipped``: the reason); indexes built once per index key."""
    built: dict[str, tuple[RagIndex, float, dict[str, float]]] = {}
    rows = []
    for variant in ablation_variants(base):
        key = index_key(variant.spec)
        fresh = key not in built
        if fresh:
            phases: dict[str, float] = {}
            index, seconds = build_index(docs, titles, variant.spec, workdir / f"index-{len(built)}", phases=phases)
            built[key] = (index, seconds, phases)
        index, seconds, phases = built[key]
        why = _runs(index, variant.spec, questions[0]["question"])
        if why:
            rows.append({"variant": variant.name, "skipped": why})
            if on_line:
                on_line(f"{variant.name}: skipped ({why})")
            continue
        row = {"variant": variant.name, "chunks": len(index.chunks), **score(index, questions, variant.spec),
               "index_seconds": seconds, "index_built": fresh, "index_phases": phases,
               "stages_ms": stage_timings(index, questions[:stage_sample], variant.spec)}
        rows.append(row)
        if on_line:
            on_line(f"{variant.name}: hit@5 {row['hit_at_5']:.3f}  MRR@10 {row['mrr_at_10']:.3f}")
    return rows


_METRICS = (("hit_at_1", "h@1"), ("hit_at_5", "h@5"), ("hit_at_10", "h@10"), ("mrr_at_10", "MRR"))


def _cells(row: dict[str, Any], stage_names: list[str]) -> list[str]:
    doc = [f"{row[k]:.3f}" for k, _ in _METRICS]
    passage = [f"{row[f'passage_{k}']:.3f}" if row.get(f"passage_{k}") is not None else "-" for k, _ in _METRICS]
    index = f"{row['index_seconds']:.1f}" if row["index_built"] else "same"
    stages = [f"{row['stages_ms'][s]:.1f}" if s in row["stages_ms"] else "-" for s in stage_names]
    return [row["variant"], str(row["chunks"]), *doc, *passage, index, f"{row['query_p50_ms']:.1f}",
            f"{row['query_p95_ms']:.1f}", *stages]


def format_table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table: document-level then passage-level metrics, index seconds ("same": reused), query
    p50/p95 and median ms per stage."""
    done = [r for r in rows if "skipped" not in r]
    post = list(dict.fromkeys(s for r in done for s in r["stages_ms"] if s not in BASE_STAGES))
    stage_names = [*BASE_STAGES, *post]
    header = ["variant", "chunks", *(f"doc {m}" for _, m in _METRICS), *(f"psg {m}" for _, m in _METRICS),
              "index s", "p50 ms", "p95 ms", *(f"{s} ms" for s in stage_names)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cells(r, stage_names)) + " |" for r in done]
    lines += [f"{r['variant'].split()[0]}: skipped ({r['skipped']})" for r in rows if "skipped" in r]
    return "\n".join(lines)
