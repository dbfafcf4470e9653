"""Rerank on/off on a development set: hit@1/5/10 and MRR@10 at document and passage level, and its latency.

    TUNE_STUDIO_MODELS=... HF_HUB_OFFLINE=1 .venv/bin/python -m bench.rerank [--devset long-docs|squad-small]
        [--model auto|bundled-minilm-sentences|HUB_ID] [--questions N] [--out F]

The default pipeline is indexed once; the same questions are scored with the rerank step off and on (top_n: the
step's default; the bundled reranker offline, a Hub cross-encoder where the Hub is reachable). The added latency is
the difference of the query latencies (p50, p95) on and off; its sentence cache starts empty, so the first
questions pay for embedding their passages' sentences, as a fresh server would.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from rag.devset import DEVSETS, load_devset
from rag.evaluate import build_index, score
from rag.pipeline import PipelineSpec
from rag.rerankers import DEFAULT_RERANKER, get_reranker, resolve_reranker
from rag.stages import RerankSettings


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--devset", choices=DEVSETS, default="squad-small")
    p.add_argument("--questions", type=int, default=0, help="N evenly spaced answerable questions (0 = all)")
    p.add_argument("--model", default=DEFAULT_RERANKER)
    p.add_argument("--top-n", type=int, default=RerankSettings().top_n)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    devset = load_devset(args.devset)
    docs, titles, questions = devset.documents, devset.titles, devset.questions
    if args.questions:  # evenly spaced over the file, so every part is in
        questions = questions[:: max(1, len(questions) // args.questions)][: args.questions]
    off = PipelineSpec().with_enabled("rerank", False)
    on = off.with_enabled("rerank", True).with_params("rerank", model=args.model, top_n=args.top_n)
    get_reranker(args.model)  # loaded outside the timed queries
    with tempfile.TemporaryDirectory() as tmp:
        index, _ = build_index(docs, titles, off, Path(tmp) / "idx")
        result = {"devset": args.devset, "questions": len(questions), "model": args.model,
                  "resolved_model": resolve_reranker(args.model), "top_n": args.top_n,
                  "rerank_off": score(index, questions, off), "rerank_on": score(index, questions, on)}
    r_on, r_off = result["rerank_on"], result["rerank_off"]
    result["added_ms_p50"] = r_on["query_p50_ms"] - r_off["query_p50_ms"]
    result["added_ms_p95"] = r_on["query_p95_ms"] - r_off["query_p95_ms"]
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
