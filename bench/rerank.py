"""Rerank on/off on SQuAD-small: hit@1/5/10 and MRR@10 at document and passage level, and the reranker's latency.

    TUNE_STUDIO_MODELS=... HF_HUB_OFFLINE=1 .venv/bin/python -m bench.rerank [--questions N] [--out F]

The default pipeline is indexed once; the same questions are scored with the rerank step off and on (a Hub
reranker, top_n 20: run it where the Hub is reachable). The reranker's added latency is the difference of the
query latencies (p50, p95) on and off.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from rag.evaluate import build_index, load_corpus, load_questions, score
from rag.pipeline import PipelineSpec
from rag.rerankers import DEFAULT_RERANKER, get_reranker

REPO = Path(__file__).resolve().parents[1]
SQUAD = REPO.parent / "shared" / "testdata" / "rag" / "squad_small" / "derived"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--questions", type=int, default=0, help="N evenly spaced answerable questions (0 = all 293)")
    p.add_argument("--model", default=DEFAULT_RERANKER)
    p.add_argument("--top-n", type=int, default=20)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    docs, titles = load_corpus(SQUAD / "corpus.jsonl")
    questions = load_questions(SQUAD / "questions.jsonl")
    if args.questions:  # evenly spaced over the file, so both articles are in
        questions = questions[:: max(1, len(questions) // args.questions)][: args.questions]
    off = PipelineSpec()
    on = off.with_enabled("rerank", True).with_params("rerank", model=args.model, top_n=args.top_n)
    get_reranker(args.model)  # loaded outside the timed queries
    with tempfile.TemporaryDirectory() as tmp:
        index, _ = build_index(docs, titles, off, Path(tmp) / "idx")
        result = {"questions": len(questions), "model": args.model, "top_n": args.top_n,
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
