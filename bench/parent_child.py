"""Parent-child (small-to-big) retrieval against the default pipeline, on SQuAD-small and a long-document variant.

    TUNE_STUDIO_MODELS=... HF_HUB_OFFLINE=1 .venv/bin/python -m bench.parent_child [--only long|squad]

Each pipeline is scored by ``rag.evaluate.evaluate``, the code behind ``python -m rag eval --pipeline FILE``
(the pipelines are also written as JSON files beside the output, so any row can be rerun with the CLI).

The long-document variant is built here, not shipped: SQuAD-small's 87 paragraphs joined back into their two
articles (Normans, Computational_complexity_theory; title = the article; CC BY-SA 4.0), plus three long
unrelated documents from ``shared/testdata/docs/unstructured`` as distractors (norwich-city.txt,
book-war-and-peace-1p.txt, example-10k-1p.html; Apache-2.0, see their LICENSE file there). The 293 answerable
questions keep their answers; their gold document becomes the article. Document level is nearly free there
(two articles); passage level (a retrieved passage holds the answer) is the figure that tells pipelines apart.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

from rag.evaluate import evaluate
from rag.ingest import load_file
from rag.pipeline import PipelineSpec

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "testdata"
SQUAD = DATA / "rag" / "squad_small" / "derived"
DISTRACTORS = ("norwich-city.txt", "book-war-and-peace-1p.txt", "example-10k-1p.html")


def pipelines() -> dict[str, PipelineSpec]:
    """The default, and parent-child with two piece sizes and two parent sizes (the split stage's chunk size)."""
    base = PipelineSpec()
    big = base.with_params("split", chunk_size=2000, chunk_overlap=200)

    def pc(spec: PipelineSpec, child: int) -> PipelineSpec:
        return spec.with_enabled("parent_child", True).with_params("parent_child", child_size=child)

    return {"default (chunks 1000)": base, "parent-child 250 in 1000": pc(base, 250),
            "chunks 2000": big, "parent-child 250 in 2000": pc(big, 250), "parent-child 400 in 2000": pc(big, 400)}


def long_documents(folder: Path) -> tuple[Path, Path]:
    """Write the long-document corpus and questions (the layout ``python -m rag eval`` reads) into ``folder``."""
    paragraphs: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for line in (SQUAD / "corpus.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        article, number = row["doc_id"].rsplit("#", 1)
        paragraphs[article].append((int(number), row["text"]))
    rows = [{"doc_id": a, "title": a.replace("_", " "), "text": "\n\n".join(t for _, t in sorted(ps))}
            for a, ps in paragraphs.items()]
    for name in DISTRACTORS:
        doc = load_file(DATA / "docs" / "unstructured" / name)
        rows.append({"doc_id": name, "text": "\n\n".join(s.text for s in doc.sections)})
    corpus = folder / "long_corpus.jsonl"
    corpus.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    questions = folder / "long_questions.jsonl"
    with questions.open("w", encoding="utf-8") as out:
        for line in (SQUAD / "questions.jsonl").read_text(encoding="utf-8").splitlines():
            q = json.loads(line)
            if q.get("gold_doc_id"):
                q["gold_doc_id"] = q["gold_doc_id"].rsplit("#", 1)[0]
                out.write(json.dumps(q, ensure_ascii=False) + "\n")
    return corpus, questions


def run(only: str | None) -> list[dict[str, Any]]:
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-parent-child-") as tmp:
        folder = Path(tmp)
        sets = {"squad-small": (SQUAD / "corpus.jsonl", SQUAD / "questions.jsonl"), "long": long_documents(folder)}
        for set_name, (corpus, questions) in sets.items():
            if only and not set_name.startswith(only):
                continue
            for name, spec in pipelines().items():
                report = evaluate(corpus, questions, spec).to_dict()
                report.pop("pipeline")
                row = {"set": set_name, "pipeline": name, **report}
                print(json.dumps(row), flush=True)
                results.append(row)
    return results


def table(results: list[dict[str, Any]]) -> str:
    head = ("| set | pipeline | chunks searched | doc hit@1 / @5 / @10 | doc MRR@10 | passage hit@1 / @5 / @10 | "
            "passage MRR@10 | index s | query p50 ms |\n|---|---|---|---|---|---|---|---|---|\n")
    lines = [f"| {r['set']} | {r['pipeline']} | {r['chunks']} | {r['hit_at_1']:.3f} / {r['hit_at_5']:.3f} / "
             f"{r['hit_at_10']:.3f} | {r['mrr_at_10']:.3f} | {r['passage_hit_at_1']:.3f} / {r['passage_hit_at_5']:.3f}"
             f" / {r['passage_hit_at_10']:.3f} | {r['passage_mrr_at_10']:.3f} | {r['index_seconds']:.1f} | "
             f"{r['query_p50_ms']:.1f} |" for r in results]
    return head + "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("long", "squad"), help="one set only")
    parser.add_argument("--write-pipelines", metavar="DIR", help="also write each pipeline as JSON for the CLI")
    args = parser.parse_args(argv)
    if args.write_pipelines:
        for name, spec in pipelines().items():
            spec.to_json(Path(args.write_pipelines) / (name.replace(" ", "_").replace("(", "").replace(")", "")
                                                       + ".json"))
    print(table(run(args.only)), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
