"""The whole Experiment in one call, for the CLI: ``python -m engine experiment --index DIR --out DIR``.

Why in one process: an operator scripting a study wants one command that leaves every artefact in one
folder (questions.jsonl, split.json, train.jsonl, the run, report.json/.html/.csv). Generation and the
evaluation run here on one loaded model; the fine-tuning is an ordinary queued run (its own worker, its
own events), followed until it ends, exactly as ``python -m engine train`` does.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.events import Done, Failed
from engine.jobs import JobStore
from services.experiment import (
    Experiment,
    ExperimentError,
    ExperimentSettings,
    evaluate,
    locked,
    make_judge,
    pairs_jsonl,
    save_report,
    training_config,
    write_atomic,
    write_pretraining_file,
    write_training_file,
)
from services.experiment_split import ExperimentSplitSettings, split_pairs
from services.qgen import ChunkTried, QGenSettings, QGenSummary, generate_pairs, model_generator

Say = Callable[[str], None]


def _generate(index: Any, chat: Any, settings: QGenSettings, say: Say) -> list[Any]:
    """Question–answer pairs from the collection, reported one passage at a time."""
    pairs, summary = [], None
    for event in generate_pairs(index.chunks, model_generator(chat, settings), settings):
        if isinstance(event, ChunkTried):
            if event.pair is not None:
                pairs.append(event.pair)
            say(f"[passage {event.number}/{event.total}] {event.source}: "
                f"{'kept' if event.kept else 'dropped: ' + event.reason}")
        elif isinstance(event, QGenSummary):
            summary = event
    if summary is not None:
        dropped = ", ".join(f"{n} {reason}" for reason, n in summary.dropped.items()) or "none"
        say(f"kept {summary.kept} of {summary.tried} pairs from {summary.passages} passages; dropped: {dropped}")
    return pairs


def _follow(store: JobStore, job: Any, what: str, say: Say) -> Any:
    """Print a queued run's loss as it trains; its record once it ended well, else a plain error."""
    for event in store.follow(job.id):
        if isinstance(event, Failed):
            raise ExperimentError(f"The {what} run failed: {event.reason}")
        step = getattr(event, "step", None)
        if step is not None and getattr(event, "loss", None) is not None:
            say(f"[{what} step {step}] loss {event.loss:.3f}")
        if isinstance(event, Done):
            break
    job = store.load(job.id)
    if job.status != "done":
        raise ExperimentError(f"The {what} run ended as '{job.status}': there is no fine-tuned model to evaluate.")
    return job


def _train(exp: Experiment, report: Any, settings: ExperimentSettings, index: Any, token: str | None,
           say: Say) -> Any:
    """Pre-train on the documents' text (when asked), then fine-tune on the training questions, in the folder."""
    store = JobStore()
    config = training_config(exp.record["model"], settings)
    if settings.cpt_steps:
        text = write_pretraining_file(exp, report, index)
        cpt = store.submit(config.replace(max_steps=settings.cpt_steps, save_steps=settings.cpt_steps), text,
                           run_dir=exp.folder / "pretrain-run", owner="cli", hf_token=token,
                           name=f"experiment {exp.name}: pre-training")
        config = config.replace(from_run=_follow(store, cpt, "pre-training", say).id)
    job = store.submit(config, write_training_file(exp, report), run_dir=exp.folder / "run", owner="cli",
                       name=f"experiment {exp.name}", hf_token=token)
    return _follow(store, job, "fine-tuning", say)


def run_experiment(index_dir: str | Path, out_dir: str | Path, *, model: str, qgen: QGenSettings,
                   split: ExperimentSplitSettings, settings: ExperimentSettings, judge: Any = None,
                   token: str | None = None, say: Say = print) -> dict[str, Any]:
    """Generate, split, fine-tune, answer with all four approaches, judge, and write the report in ``out_dir``."""
    from engine.infer import ChatModel
    from rag.index import RagIndex
    from services.experiment_split import embedder_function

    t0 = time.time()
    index = RagIndex.open(index_dir, read_only=True)
    if not index.chunks:
        raise ExperimentError(f"The collection {Path(index_dir).name} is empty: add documents to it first.")
    out = Path(out_dir)
    exp = Experiment(out)
    with locked(out):
        write_atomic(out / "experiment.json", json.dumps({"name": out.name, "collection": Path(index_dir).name,
                                                           "model": model, "created": t0}, indent=2))
    say(f"loading {model} ...")
    chat = ChatModel(model, token=token)
    pairs = _generate(index, chat, qgen, say)
    write_atomic(exp.questions_path, pairs_jsonl(pairs))
    if len(pairs) < 4:
        raise ExperimentError(f"Only {len(pairs)} usable question–answer pair(s) were generated (questions.jsonl "
                              "keeps them): use a larger model, more questions, or add your own to questions.jsonl.")
    report = split_pairs(pairs, split, embedder_function(index))
    write_atomic(out / "split.json", json.dumps(report.to_dict(), indent=2))
    say(report.summary())
    job = _train(exp, report, settings, index, token, say)
    by_id = {p.id: p for p in pairs}
    result = evaluate(chat, [by_id[i] for i in report.test_ids], adapter=str(job.adapter_dir),
                      adapter_label=job.name, index=index, collection=Path(index_dir).name, settings=settings,
                      judge=make_judge(chat, settings, token, judge_settings=judge),
                      progress=lambda phase, done, total, item: say(f"[{phase} {done}/{total}] {item}"))
    result["split_summary"] = report.summary()
    result["config"].update({"name": out.name, "train_run": job.id, "train_config": job.config.to_dict(),
                             "question_generation": qgen.to_dict(), "split": report.to_dict(),
                             "seconds": round(time.time() - t0, 1)})
    save_report(out, result)
    return result
