"""Experiment benchmark: are generated questions as hard as real ones, and can the judge be trusted?

    python -m bench experiment [--questions 30] [--judged 30] [--model ID] [--no-write]

On SQuAD-small (87 Wikipedia paragraphs, 626 human questions), in one process:
- the default RAG pipeline's hit@5 (document and passage level, rag.gold's one definition) on the human
  questions and on questions the chosen model generates from the same index (``services.qgen``, the
  Experiment tab's generator with its default prompt);
- how many generated pairs survive the checks, and why the others were dropped;
- the judge's agreement (Cohen's kappa) with the gold answers: RAG answers to human questions, graded by
  the judge against the gold answer and its passage, compared with "the gold answer is in the reply or
  half its words match";
- seconds per generated pair and per judged answer on this machine (with its CPU count).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.rag import RESULTS, SQUAD, _threads

SECTION = "## Experiment: generated questions vs human ones, and the judge"


def _index(folder: Path) -> Any:
    from rag.evaluate import build_index, load_corpus
    from rag.pipeline import PipelineSpec

    docs, titles = load_corpus(SQUAD / "corpus.jsonl")
    index, _ = build_index(docs, titles, PipelineSpec(), folder)
    return index


def _hit_rates(index: Any, golds: list[tuple[str, Any]]) -> dict[str, float]:
    """hit@1/5/10 and MRR@10 at both levels for (question, Gold) items, top 10 of the default pipeline."""
    from rag.gold import hit_rank, retrieval_metrics
    from rag.retrieve import search

    doc, passage = [], []
    for question, gold in golds:
        chunks = [h.chunk for h in search(index, question, index.spec, top_k=10).hits]
        doc.append(hit_rank(chunks, gold, "document"))
        passage.append(hit_rank(chunks, gold, "passage"))
    return {"n": len(golds), **{f"document_{k}": round(v, 4) for k, v in retrieval_metrics(doc).items()},
            **{f"passage_{k}": round(v, 4) for k, v in retrieval_metrics(passage).items()}}


def _generated(index: Any, chat: Any, n: int) -> tuple[list[Any], dict[str, Any]]:
    from services.qgen import ChunkTried, QGenSettings, QGenSummary, generate_pairs, model_generator

    settings = QGenSettings(questions=n)
    pairs, summary, start = [], None, time.perf_counter()
    for event in generate_pairs(index.chunks, model_generator(chat, settings), settings):
        if isinstance(event, ChunkTried) and event.pair is not None:
            pairs.append(event.pair)
            print(f"kept {len(pairs)}: {event.pair.question}", flush=True)
        elif isinstance(event, QGenSummary):
            summary = event
    seconds = time.perf_counter() - start
    assert summary is not None
    return pairs, {"kept": summary.kept, "tried": summary.tried, "passages": summary.passages,
                   "dropped": summary.dropped, "seconds": round(seconds, 1),
                   "seconds_per_kept_pair": round(seconds / max(1, summary.kept), 2),
                   "seconds_per_passage": round(seconds / max(1, summary.passages), 2)}


def _judge_agreement(index: Any, chat: Any, human: list[dict[str, Any]], n: int) -> dict[str, Any]:
    """The judge against the gold answers on ``n`` human questions answered by the RAG approach."""
    from core.generation import GenerationSettings
    from rag.gold import Gold, matches
    from services.compare import Comparer, CompareSettings, Question
    from services.experiment_report import reference_correct
    from services.judge import Judge, agreement_with_reference, trust

    sample = random.Random(0).sample(human, min(n, len(human)))
    comparer = Comparer(chat, arms=["rag"], index=index, generation=GenerationSettings(max_new_tokens=24),
                        settings=CompareSettings(top_k=2))
    judge = Judge.from_chat(chat)
    verdicts, reference, answer_s, judge_s = [], [], 0.0, 0.0
    for row in sample:
        start = time.perf_counter()
        *_, final = comparer.stream_arm("rag", Question(row["question"], row["answers"], row["gold_doc_id"]))
        answer_s += time.perf_counter() - start
        gold = Gold(row["gold_doc_id"], row["answers"][0])
        passage = next((c.text for c in index.chunks if matches(c, gold)), row["answers"][0])
        start = time.perf_counter()
        result = judge.grade(row["question"], row["answers"][0], passage, final.text)
        judge_s += time.perf_counter() - start
        verdicts.append(result.verdict)
        reference.append(reference_correct(final.scores))
    agreement = agreement_with_reference(verdicts, reference)
    trusted, reason = trust(agreement, judge.settings.kappa_threshold)
    return {"answers": len(sample), "reference_correct": sum(reference),
            "judge_correct": sum(v is True for v in verdicts),
            "unparsed": sum(v is None for v in verdicts), "kappa": agreement.kappa, "kappa_n": agreement.n,
            "trusted": trusted, "reason": reason, "seconds_per_answer": round(answer_s / len(sample), 2),
            "seconds_per_judgement": round(judge_s / len(sample), 2)}


def run(questions: int, judged: int, model: str) -> dict[str, Any]:
    from engine.infer import ChatModel
    from rag.evaluate import load_questions
    from rag.gold import Gold

    threads = _threads()
    human = load_questions(SQUAD / "questions.jsonl")
    with tempfile.TemporaryDirectory(prefix="bench-experiment-") as tmp:
        index = _index(Path(tmp) / "index")
        chat = ChatModel(model)
        pairs, generation = _generated(index, chat, questions)
        out = {"model": model, "threads": threads, "cpu": platform.processor() or platform.machine(),
               "load_before": round(os.getloadavg()[0], 1),
               "chunks": len(index.chunks), "generation": generation,
               "human": _hit_rates(index, [(r["question"], Gold(r["gold_doc_id"], r["answers"][0])) for r in human]),
               "generated": _hit_rates(index, [(p.question, p.gold) for p in pairs]),
               "examples": [{"question": p.question, "answer": p.answer, "source": p.source} for p in pairs[:5]],
               "judge": _judge_agreement(index, chat, human, judged)}
    out["load_after"] = round(os.getloadavg()[0], 1)
    return out


def render(result: dict[str, Any]) -> str:
    g, h, q, j = result["generation"], result["human"], result["generated"], result["judge"]
    dropped = "; ".join(f"{n} {reason}" for reason, n in g["dropped"].items()) or "none"
    lines = [SECTION, "",
             f"`python -m bench experiment` with {result['model']} on SQuAD-small ({result['chunks']} chunks, default "
             f"pipeline), {result['threads']} torch threads on {result['cpu']}, {os.cpu_count()} cores, load average "
             f"{result['load_before']} before and {result['load_after']} after (timings grow with load; the hit rates "
             "and the judge's agreement do not).", "",
             f"Generation: kept {g['kept']} pairs of {g['tried']} tried over {g['passages']} passages "
             f"({g['seconds_per_kept_pair']} s per kept pair, {g['seconds_per_passage']} s per passage); "
             f"dropped: {dropped}.", "",
             "| questions | n | doc hit@1 | doc hit@5 | doc MRR@10 | passage hit@1 | passage hit@5 | passage MRR@10 |",
             "|---|---|---|---|---|---|---|---|"]
    for name, m in (("human (SQuAD)", h), ("generated", q)):
        lines.append(f"| {name} | {m['n']} | {m['document_hit_at_1']} | {m['document_hit_at_5']} | "
                     f"{m['document_mrr_at_10']} | {m['passage_hit_at_1']} | {m['passage_hit_at_5']} | "
                     f"{m['passage_mrr_at_10']} |")
    kappa = "undefined" if j["kappa"] is None else f"{j['kappa']:.2f}"
    lines += ["", f"Judge (graded, against the gold answer and its passage) on {j['answers']} RAG answers to human "
              f"questions: {j['judge_correct']} judged correct, {j['reference_correct']} correct by the reference "
              f"check, {j['unparsed']} verdicts unreadable; kappa {kappa} (n = {j['kappa_n']}). "
              f"{j['reason']} {j['seconds_per_answer']} s per answer, {j['seconds_per_judgement']} s per judgement.",
              "", "First generated pairs: " + "; ".join(f"\"{e['question']}\" → \"{e['answer']}\" ({e['source']})"
                                                          for e in result["examples"]), ""]
    return "\n".join(lines)


def write(result: dict[str, Any]) -> None:
    from bench.results import replace_section

    replace_section(SECTION, render(result), RESULTS)


def main(argv: list[str] | None = None) -> int:
    from engine.models import BUNDLED_ID

    parser = argparse.ArgumentParser(prog="python -m bench experiment", description=__doc__)
    parser.add_argument("--questions", type=int, default=30, help="generated pairs to aim for")
    parser.add_argument("--judged", type=int, default=30, help="human questions answered and judged")
    parser.add_argument("--model", default=BUNDLED_ID)
    parser.add_argument("--no-write", action="store_true", help="print only; leave bench/RESULTS.md alone")
    args = parser.parse_args(argv)
    result = run(args.questions, args.judged, args.model)
    print(json.dumps(result, indent=2, default=str))
    (Path(__file__).parent / "experiment_results.json").write_text(json.dumps(result, indent=2, default=str))
    if not args.no_write:
        write(result)
    return 0
