"""Command line: ``python -m rag eval|index|query`` — JSON on stdout, progress on stderr.

    python -m rag eval --corpus CORPUS.jsonl --questions QUESTIONS.jsonl [--pipeline SPEC.json] [--ablation]
    python -m rag eval --devset long-docs|squad-small [--ablation]
    python -m rag index --docs DIR --out INDEX_DIR [--pipeline SPEC.json]
    python -m rag query --index INDEX_DIR --question TEXT [--top-k N]
    python -m rag build-reranker [--out FILE]    (the bundled reranker's weights: rag/build_reranker.py)

Bad input ends with a one-line message and exit status 2, never a traceback. Hub embedders download
(with a plain message when the Hub cannot be reached); set ``HF_HUB_OFFLINE=1`` to forbid that.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from core.settings import SettingsError
from engine.hub import HubError
from rag.ablation import format_table, run_ablation
from rag.devset import DEVSETS, DevSetError, load_devset
from rag.embedders import EmbedderUnavailableError, UnknownEmbedderError
from rag.evaluate import EvalDataError, evaluate_documents, load_corpus, load_questions
from rag.events import EmbedProgress, FileLoaded, FileRefused, FileRemoved, FileUnchanged, IndexUpdated
from rag.index import EmbedderMismatchError, IndexError_, RagIndex
from rag.ingest import iter_files
from rag.pipeline import PipelineSpec, PipelineSpecError
from rag.retrieve import search


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _progress(event: Any) -> None:
    if isinstance(event, FileRefused):
        _log(f"refused  {event.source}: {event.message}")
    elif isinstance(event, FileLoaded):
        _log(f"loaded   {event.source} ({event.sections} section(s), {event.chars} chars)")
    elif isinstance(event, FileUnchanged):
        _log(f"same     {event.source}")
    elif isinstance(event, FileRemoved):
        _log(f"{'replaced' if event.replaced else 'removed '} {event.source} ({event.chunks} chunks)")
    elif isinstance(event, EmbedProgress) and event.total:
        _log(f"embedded {event.done}/{event.total}")


def _spec(path: str | None) -> PipelineSpec:
    return PipelineSpec.load(path) if path else PipelineSpec()


def _eval_data(args: argparse.Namespace) -> tuple[list[Any], dict[str, str], list[dict[str, Any]]]:
    """Documents, titles and questions: a named development set, or --corpus and --questions."""
    if args.devset:
        devset = load_devset(args.devset, Path(args.testdata) if args.testdata else None)
        return devset.documents, devset.titles, devset.questions
    if not (args.corpus and args.questions):
        raise EvalDataError("Name a development set with --devset, or give both --corpus and --questions.")
    docs, titles = load_corpus(args.corpus)
    questions = load_questions(args.questions)
    if not questions:
        raise EvalDataError(f"{args.questions} has no answerable questions with a gold_doc_id.")
    return docs, titles, questions


def cmd_ablation(args: argparse.Namespace) -> dict[str, Any]:
    """Every variant of ``python -m rag eval --ablation``: the table on stderr, the rows as JSON on stdout."""
    docs, titles, questions = _eval_data(args)
    _log(f"ablation: {len(docs)} documents, {len(questions)} questions")
    with tempfile.TemporaryDirectory(prefix="rag-ablation-") as tmp:
        rows = run_ablation(docs, titles, questions, Path(tmp), _spec(args.pipeline), on_line=_log)
    _log(format_table(rows))
    return {"documents": len(docs), "questions": len(questions), "variants": rows}


def cmd_eval(args: argparse.Namespace) -> dict[str, Any]:
    if args.ablation:
        return cmd_ablation(args)
    docs, titles, questions = _eval_data(args)
    report = evaluate_documents(docs, titles, questions, _spec(args.pipeline),
                                on_event=_progress if args.verbose else None)
    out = report.to_dict()
    if not args.full:
        out.pop("pipeline")
    _log(_levels_line("document", out, "", report.questions))
    if report.passage_hit_at_1 is not None:
        _log(_levels_line("passage ", out, "passage_", report.passage_questions or 0))
    return out


def _levels_line(level: str, out: dict[str, Any], prefix: str, questions: int) -> str:
    """One stderr line per hit level (the JSON on stdout carries both as keys): document = right file,
    passage = a retrieved chunk holds the gold answer."""
    values = "  ".join(f"{name} {out[prefix + key]:.3f}" for name, key in
                       (("hit@1", "hit_at_1"), ("hit@5", "hit_at_5"), ("hit@10", "hit_at_10"), ("MRR@10", "mrr_at_10")))
    return f"{level} level ({questions} questions): {values}"


def _adopt_pipeline(index: RagIndex, spec: PipelineSpec, allow_reindex: bool) -> None:
    """Bring an existing collection to ``--pipeline``: save it, or re-index when chunks or vectors change."""
    if spec == index.spec:
        return
    if spec.embed.model != index.embedder_name and not allow_reindex:
        raise EmbedderMismatchError(index.path, index.embedder_name, spec.embed.model)
    if spec.embed.model != index.embedder_name or index.set_spec(spec):
        for event in index.reindex(spec):
            _progress(event)


def cmd_index(args: argparse.Namespace) -> dict[str, Any]:
    """Index a folder into a collection, under the collection's lock (another writer is waited for, not undone)."""
    docs = Path(args.docs)
    if not docs.is_dir():
        raise FileNotFoundError(f"--docs {docs} is not a folder.")
    spec = _spec(args.pipeline)
    out = Path(args.out)
    files = list(iter_files(docs))
    names = {str(p.relative_to(docs)) for p in files}
    final: IndexUpdated | None = None
    with RagIndex.edit(out, spec=spec, on_wait=lambda: _log(f"waiting for another change to {out} to finish")) as index:
        if args.pipeline:
            _adopt_pipeline(index, spec, args.reindex)
        for event in index.add_files([(str(p.relative_to(docs)), p) for p in files]):
            _progress(event)
            if isinstance(event, IndexUpdated):
                final = event
        gone = [s for s in index.files if s not in names]
        if gone and args.prune:
            for event in index.remove(gone):
                _progress(event)
    assert final is not None
    return {"index": str(out), "version": index.version, "files": len(index.files), "chunks": len(index.chunks),
            "added": final.added_files, "embedded": final.embedded, "reused": final.reused,
            "refused": [{"file": r.source, "reason": str(r.reason), "message": r.message} for r in final.refused],
            "seconds": round(final.seconds, 3)}


def cmd_query(args: argparse.Namespace) -> dict[str, Any]:
    index = RagIndex.open(args.index)
    result = search(index, args.question, top_k=args.top_k)
    return {"question": args.question, "seconds": round(result.seconds, 4), "steps": result.log,
            "hits": [h.to_dict() for h in result.hits]}


def cmd_build_reranker(args: argparse.Namespace) -> dict[str, Any]:
    from rag.build_reranker import build
    from rag.rerankers import WEIGHTS_FILE

    return build(Path(args.out) if args.out else WEIGHTS_FILE)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m rag", description="Tune Studio RAG: evaluate, index, query.")
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("eval", help="retrieval quality on a corpus with gold documents")
    e.add_argument("--corpus", help="JSONL of {doc_id, title, text}")
    e.add_argument("--questions", help="JSONL of {qid, question, answers[], gold_doc_id}")
    e.add_argument("--devset", choices=DEVSETS, help="a development set read from the shared test data instead "
                   "(long-docs: whole articles and long files; squad-small: the SQuAD-small paragraphs)")
    e.add_argument("--testdata", help="the shared test data folder (default: ../shared/testdata beside the repo)")
    e.add_argument("--ablation", action="store_true", help="each stage on/off, retrieval modes and the naive "
                   "recipe: one row each, with latency per stage")
    e.add_argument("--pipeline", help="pipeline spec JSON (default: the app's default pipeline)")
    e.add_argument("--full", action="store_true", help="include the pipeline spec in the output")
    e.add_argument("--verbose", action="store_true", help="progress on stderr")
    e.set_defaults(func=cmd_eval)
    i = sub.add_parser("index", help="index every file in a folder (incremental)")
    i.add_argument("--docs", required=True)
    i.add_argument("--out", required=True)
    i.add_argument("--pipeline")
    i.add_argument("--reindex", action="store_true", help="allow re-embedding everything when --pipeline names "
                   "another embedder than the index's")
    i.add_argument("--prune", action="store_true", help="remove indexed files no longer in --docs")
    i.set_defaults(func=cmd_index)
    q = sub.add_parser("query", help="ranked chunks for a question")
    q.add_argument("--index", required=True)
    q.add_argument("--question", required=True)
    q.add_argument("--top-k", type=int, default=None)
    q.set_defaults(func=cmd_query)
    b = sub.add_parser("build-reranker", help="learn the bundled reranker's weights on XQuAD (English)")
    b.add_argument("--out", help="weights file (default: rag/models/sentence_reranker.json)")
    b.set_defaults(func=cmd_build_reranker)
    return p


def main(argv: list[str] | None = None) -> int:
    # The environment is left as the caller set it: the bundled embedder loads from its local folder
    # with local_files_only=True, and Hub embedders download through the app's one downloader.
    from services.hub import connect_downloads

    connect_downloads()
    args = parser().parse_args(argv)
    try:
        result = args.func(args)
    except (EvalDataError, DevSetError, PipelineSpecError, SettingsError, IndexError_, FileNotFoundError, HubError,
            EmbedderUnavailableError, UnknownEmbedderError) as exc:
        _log(f"error: {exc}")
        return 2
    print(json.dumps(result, indent=2, ensure_ascii=False))
    return 0


def _fit_threads() -> None:
    """Compute with the cores other programs leave free (``engine.cpu``), as the app's workers do: embedding a
    collection with 2 threads while another program holds one of 2 cores is many times slower than with 1."""
    from engine.cpu import fit_threads_to_free_cores

    line = fit_threads_to_free_cores()
    if line:
        _log(line)


if __name__ == "__main__":
    _fit_threads()
    sys.exit(main())
