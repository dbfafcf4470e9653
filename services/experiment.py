"""The Experiment flow: from a document collection to an honest "fine-tune, RAG, or both?" verdict.

Why: people come with one question about *their* documents, and answering it by hand means writing a
question set, a training set and a scoring scheme. Here one experiment folder holds every step, so a closed
tab, a reload or a restart loses nothing:

    experiments/<name>/experiment.json    which collection and model, and the ids of its jobs
                       questions.jsonl    the reviewed question–answer pairs (gold: file, page, quoted span)
                       generated/*.jsonl  what each generation job made (merged into the review table)
                       split.json         train/test ids and what the leakage check dropped
                       train.jsonl        the training split, as the SFT data file of the fine-tuning run
                       report.json/.html/.csv   the verdict, stamped with every setting

The long steps are jobs in the device lane, run in order: question generation (kind "generate",
``services.qgen``), fine-tuning (an ordinary "train" run: it shows in the Train tab too), then the evaluation
(kind "experiment", :func:`run_experiment_job`), which answers the test questions with all four approaches,
scores them, asks the judge, and writes the report (``services.experiment_report``).
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import os
import signal
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.files import locked, write_atomic
from core.generation import GenerationSettings
from core.settings import Settings, setting
from engine.events import Cancelled, Done, EventLog, Interrupted, Log, Progress
from engine.jobs import TOKEN_ENV, JobError, JobRecord, JobStore, record_failure
from engine.workspace import Workspace
from services import experiment_report as er
from services.experiment_split import ExperimentSplitSettings, SplitReport, split_pairs
from services.qgen import QAPair, QGenSettings

EVAL_KIND = "experiment"
GENERATE_KIND = "generate"
MIN_PAIRS_TO_SPLIT = 4


class ExperimentError(ValueError):
    """An experiment step cannot run as asked; the message says what to do instead."""


class ExperimentSettings(Settings):
    """How the fine-tuning and the evaluation of an experiment run (generation and split have their own)."""

    max_steps: int = setting(30, "Fine-tuning steps on the training questions. More steps teach more but take "
                             "longer: on a laptop CPU with the bundled model a step takes a few seconds.",
                             label="Fine-tuning steps", minimum=1, maximum=5000, step=1)
    cpt_steps: int = setting(0, "Continued pre-training on your documents' own text before the fine-tuning on "
                             "the questions (0 = off): it teaches the documents' wording first. In a by-document "
                             "split only the training documents are used, so the test documents stay unseen.",
                             label="Pre-training steps on the documents", minimum=0, maximum=5000, step=1)
    learning_rate: float = setting(1e-3, "How fast the fine-tuning moves; the CPU preset's value.",
                                   label="Learning rate", minimum=1e-6, maximum=1e-2, advanced=True)
    answer_tokens: int = setting(32, "Longest answer each approach may give, in tokens (the questions ask for "
                                 "short answers).", label="Answer length", minimum=4, maximum=1024, step=1)
    top_k: int = setting(2, "Passages retrieved for the two RAG approaches.", label="Retrieved passages",
                         minimum=1, maximum=20, step=1)
    judge: bool = setting(True, "Also score every answer with an LLM judge (against the reference answer and the "
                          "source passage). Its agreement with the reference answers is shown; when it is poor, "
                          "the verdict does not use it.", label="Use an LLM judge")
    judge_model: str = setting("", "The judge's model; empty = the experiment's model. A 135M model judges near "
                               "chance: pick a larger one on a GPU Space.", label="Judge model", advanced=True)
    min_questions: int = setting(10, "Fewest test questions for a verdict; below it the report says 'too few "
                                 "questions to tell'.", label="Questions needed for a verdict", minimum=2,
                                 maximum=1000, step=1, advanced=True)
    resamples: int = setting(2000, "Bootstrap resamples for the intervals (more = steadier, slower).",
                             minimum=200, maximum=20000, step=100, advanced=True)
    seed: int = setting(0, "Seed of the bootstrap (the same seed gives the same intervals).", minimum=0,
                        maximum=2**31 - 1, step=1, advanced=True)


# --------------------------------------------------------------------------------- the record


def _read_pairs(path: Path) -> list[QAPair]:
    if not path.is_file():
        return []
    pairs = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            try:
                pairs.append(QAPair.from_dict(json.loads(line)))
            except (json.JSONDecodeError, TypeError, KeyError):
                continue  # a torn last line of a running generation job
    return pairs


def pairs_jsonl(pairs: Sequence[QAPair]) -> str:
    return "".join(json.dumps(p.to_dict(), ensure_ascii=False) + "\n" for p in pairs)


@dataclass
class Experiment:
    """One experiment folder; cheap to create per request (everything is read from disk when asked)."""

    folder: Path

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def record(self) -> dict[str, Any]:
        path = self.folder / "experiment.json"
        if not path.is_file():
            raise ExperimentError(f"There is no experiment '{self.name}'; create it first.")
        return json.loads(path.read_text(encoding="utf-8"))

    def update(self, **values: Any) -> dict[str, Any]:
        """Change fields of experiment.json under the lock, on its latest version."""
        with locked(self.folder):
            record = {**self.record, **values}
            write_atomic(self.folder / "experiment.json", json.dumps(record, indent=2))
        return record

    @property
    def questions_path(self) -> Path:
        return self.folder / "questions.jsonl"

    def questions(self) -> list[QAPair]:
        """The review set: saved pairs first, then what generation jobs made since, minus what the user deleted."""
        saved = _read_pairs(self.questions_path)
        seen = {p.id for p in saved} | set(self.record.get("removed", []))
        merged = list(saved)
        for path in sorted((self.folder / "generated").glob("*.jsonl"), key=lambda p: p.stat().st_mtime):
            for pair in _read_pairs(path):
                if pair.id not in seen:
                    seen.add(pair.id)
                    merged.append(pair)
        return merged

    def save_questions(self, pairs: Sequence[QAPair], shown_ids: Sequence[str] = ()) -> None:
        """Store the reviewed set. Ids the user was shown but no longer kept count as deleted, so a pair still
        being generated while the user edited is kept (it was never shown), and a deleted one stays deleted."""
        with locked(self.folder):
            record = self.record
            kept = {p.id for p in pairs}
            removed = set(record.get("removed", [])) | {i for i in shown_ids if i not in kept}
            write_atomic(self.questions_path, pairs_jsonl(pairs))
            record["removed"] = sorted(removed - kept)
            write_atomic(self.folder / "experiment.json", json.dumps(record, indent=2))

    def split(self) -> SplitReport | None:
        path = self.folder / "split.json"
        return SplitReport.from_dict(json.loads(path.read_text(encoding="utf-8"))) if path.is_file() else None

    def report(self) -> dict[str, Any] | None:
        path = self.folder / "report.json"
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def list_experiments(ws: Workspace) -> list[str]:
    return sorted(p.name for p in ws.experiments.iterdir() if (p / "experiment.json").is_file())


def open_experiment(ws: Workspace, name: str) -> Experiment:
    exp = Experiment(ws.experiment_path(name))
    exp.record  # noqa: B018 - raises the plain message when it does not exist
    return exp


def create_experiment(ws: Workspace, name: str, collection: str, model: str) -> Experiment:
    """A new experiment over one of the owner's collections (which must exist and hold chunks)."""
    from services.collections import open_collection

    folder = ws.experiment_path(name)
    if (folder / "experiment.json").is_file():
        raise ExperimentError(f"An experiment named '{folder.name}' exists already: pick it in the list, or choose "
                              "another name.")
    path = ws.index_path(collection)
    if not (path / "manifest.json").is_file():
        raise ExperimentError(f"There is no collection '{collection}': build one in the RAG tab first.")
    if not open_collection(path).chunks:
        raise ExperimentError(f"The collection '{collection}' is empty: add documents to it in the RAG tab first.")
    with locked(folder):
        record = {"name": folder.name, "collection": path.name, "model": model, "created": time.time()}
        write_atomic(folder / "experiment.json", json.dumps(record, indent=2))
    return Experiment(folder)


# ------------------------------------------------------------------------------ the steps


def check_visitor_jobs(ws: Workspace, visitor: str | None) -> None:
    """A visitor may have as many generation and evaluation jobs waiting or running as training runs (the
    ``max_queued_runs`` limit): they share the one device lane, so one visitor must not fill it."""
    from engine.jobs import ACTIVE, WAITING
    from engine.limits import limits

    if visitor is None:
        return  # the operator (CLI) has no quota
    store = ws.store()
    mine = store.visitor_hash(visitor)
    busy = sum(1 for job in store.list(owner=ws.owner, kind=None) if job.kind in (GENERATE_KIND, EVAL_KIND)
               and job.visitor_hash == mine and job.status in (*ACTIVE, *WAITING))
    limits().check("max_queued_runs", busy + 1, "Counting this one, your question-generation and evaluation jobs "
                   "waiting or running", "Wait for one of them to finish, or cancel one, then try again.")


def start_generation(ws: Workspace, exp: Experiment, settings: QGenSettings, *, visitor: str | None = None,
                     hf_token: str | None = None) -> JobRecord:
    """Queue a question-generation job; its pairs appear in the review table as they are made."""
    check_visitor_jobs(ws, visitor)
    record = exp.record
    out = exp.folder / "generated" / f"{uuid.uuid4().hex[:12]}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"collection_path": str(ws.index_path(record["collection"])), "model": record["model"],
               "settings": settings.to_dict(), "out": str(out),
               "existing": str(exp.questions_path) if exp.questions_path.is_file() else None,
               "experiment": exp.name}
    job = ws.store().submit_task(GENERATE_KIND, payload, owner=ws.owner, visitor=visitor, hf_token=hf_token,
                                 name=f"questions for {exp.name}")
    exp.update(generate_job=job.id)
    return job


def import_questions(exp: Experiment, path: str | Path) -> int:
    """Add a question set (our own export, or any CSV/JSONL with question and answer columns); returns how many."""
    from services.compare import CompareError, load_questions

    path = Path(path)
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8-sig").splitlines()
            if line.strip()] if path.suffix.lower() == ".jsonl" else []
    if rows and all(isinstance(r, dict) and {"question", "answer", "quote"} <= set(r) for r in rows):
        new = [QAPair.from_dict({**r, "origin": "imported"}) for r in rows]
    else:
        try:
            loaded = load_questions(path)
        except (CompareError, UnicodeDecodeError) as exc:
            raise ExperimentError(f"{path.name} cannot be imported: {exc}") from None
        new = [QAPair(id=f"imp-{uuid.uuid4().hex[:8]}", question=q.question,
                      answer=q.references[0] if q.references else "", source=q.gold_doc_id or "", page=None,
                      quote=q.references[0] if q.references else "", chunk_id="", origin="imported")
               for q in loaded]
    current = exp.questions()
    known = {p.question.strip().lower() for p in current}
    added = [p for p in new if p.question.strip().lower() not in known]
    exp.save_questions([*current, *added])
    return len(added)


def questions_csv(pairs: Sequence[QAPair]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["question", "answer", "source", "page", "quote", "chunk_id"])
    for p in pairs:
        writer.writerow([p.question, p.answer, p.source, p.page, p.quote, p.chunk_id])
    return buffer.getvalue()


def split_experiment(ws: Workspace, exp: Experiment, settings: ExperimentSplitSettings) -> SplitReport:
    """Split the reviewed pairs into train and test with the leakage check, using the collection's embedder."""
    from services.collections import open_collection
    from services.experiment_split import embedder_function

    pairs = [p for p in exp.questions() if p.question.strip() and p.answer.strip()]
    if len(pairs) < MIN_PAIRS_TO_SPLIT:
        raise ExperimentError(f"Only {len(pairs)} question–answer pair(s) with both a question and an answer: "
                              f"generate or add at least {MIN_PAIRS_TO_SPLIT} before splitting.")
    index = open_collection(ws.index_path(exp.record["collection"]))
    report = split_pairs(pairs, settings, embedder_function(index))
    with locked(exp.folder):
        write_atomic(exp.folder / "split.json", json.dumps(report.to_dict(), indent=2))
    return report


def answer_prompt(question: str) -> str:
    """What the fine-tuned arm is asked at test time, so training sees exactly the same wording."""
    from services.compare import CompareSettings

    return CompareSettings().base_template.replace("{question}", question.strip())


def write_training_file(exp: Experiment, report: SplitReport) -> Path:
    """The train split as chat messages (the prompt the fine-tuned arm will be asked, and the answer)."""
    by_id = {p.id: p for p in exp.questions()}
    rows = [{"messages": [{"role": "user", "content": answer_prompt(by_id[i].question)},
                          {"role": "assistant", "content": by_id[i].answer}]}
            for i in report.train_ids if i in by_id]
    if not rows:
        raise ExperimentError("The training side of the split is empty: split again with a smaller test share.")
    path = exp.folder / "train.jsonl"
    write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


def write_pretraining_file(exp: Experiment, report: SplitReport, index: Any) -> Path:
    """The documents' text for continued pre-training: every chunk, but in a by-document split only the chunks
    of training documents (pre-training on a test document would leak its facts into the fine-tuned model)."""
    by_id = {p.id: p for p in exp.questions()}
    allowed = {by_id[i].source for i in report.train_ids if i in by_id} if report.mode == "document" else None
    texts = dict.fromkeys(c.text for c in index.chunks if allowed is None or c.source in allowed)
    if not texts:
        raise ExperimentError("There is no document text to pre-train on: turn pre-training off, or split again.")
    path = exp.folder / "pretrain.jsonl"
    write_atomic(path, "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts))
    return path


def training_config(model: str, settings: ExperimentSettings) -> Any:
    """The device's preset with the experiment's steps and model (the same QLoRA defaults as the Train tab)."""
    from engine.config import load_preset
    from engine.models import pick_device

    preset = "balanced-gpu-qlora" if pick_device("auto") == "cuda" else "quick-cpu-demo"
    return load_preset(preset).replace(base_model=model, max_steps=settings.max_steps,
                                       learning_rate=settings.learning_rate, save_steps=max(settings.max_steps, 1))


def start_run(ws: Workspace, exp: Experiment, settings: ExperimentSettings, *, visitor: str | None = None,
              hf_token: str | None = None, judge_settings: Any = None) -> tuple[JobRecord, JobRecord]:
    """Queue the fine-tuning run (behind a pre-training run on the documents when asked) and, behind it in the
    same lane, the evaluation that uses its adapter. ``judge_settings`` (``services.judge.JudgeSettings``):
    the judge's mode and prompts, as the user edited them."""
    report = exp.split()
    if report is None:
        raise ExperimentError("Split the questions into train and test first (step 3).")
    current = {p.id for p in exp.questions()}
    if not set(report.test_ids) <= current or not set(report.train_ids) <= current:
        raise ExperimentError("The questions changed since the split: split again before running.")
    if not report.test_ids:
        raise ExperimentError("The test side of the split is empty: split again with a larger test share.")
    check_visitor_jobs(ws, visitor)
    data = write_training_file(exp, report)
    store = ws.store()
    config = training_config(exp.record["model"], settings)
    queued: list[JobRecord] = []
    try:
        if settings.cpt_steps:
            from services.collections import open_collection

            text = write_pretraining_file(exp, report, open_collection(ws.index_path(exp.record["collection"])))
            queued.append(store.submit(config.replace(max_steps=settings.cpt_steps, save_steps=settings.cpt_steps),
                                       text, owner=ws.owner, name=f"experiment {exp.name}: pre-training",
                                       hf_token=hf_token, visitor=visitor))
            config = config.replace(from_run=queued[0].id)
        train = store.submit(config, data, owner=ws.owner, name=f"experiment {exp.name}", hf_token=hf_token,
                             visitor=visitor, queued_after=True)
        queued.append(train)
        payload = {"experiment": str(exp.folder), "train_job": train.id, "settings": settings.to_dict(),
                   "pretrain_job": queued[0].id if settings.cpt_steps else None,
                   "judge_settings": judge_settings.to_dict() if judge_settings is not None else None,
                   "collection_path": str(ws.index_path(exp.record["collection"]))}
        evaluation = store.submit_task(EVAL_KIND, payload, owner=ws.owner, visitor=visitor, hf_token=hf_token,
                                       name=f"evaluate {exp.name}")
    except (JobError, ExperimentError, ValueError):
        for job in queued:  # a half-queued chain would train for nothing
            store.cancel(job.id)
        raise
    exp.update(train_job=train.id, eval_job=evaluation.id, pretrain_job=payload["pretrain_job"],
               settings=settings.to_dict())
    return train, evaluation


# ---------------------------------------------------------------------------- the evaluation


class _Stopped(Exception):
    """The user pressed Cancel: the evaluation stops between two answers."""


def _answers(chat: Any, pairs: Sequence[QAPair], *, adapter: str, adapter_label: str, index: Any, collection: str,
             settings: ExperimentSettings, progress: Callable[[str, int, int, str], None]) -> tuple[list[dict], Any]:
    """Every approach's answer to every test question, scored against the reference answer."""
    from services.compare import Comparer, CompareSettings, Question

    comparer = Comparer(chat, arms=er.ARMS, adapter=adapter, adapter_label=adapter_label, index=index,
                        collection=collection, generation=GenerationSettings(max_new_tokens=settings.answer_tokens),
                        settings=CompareSettings(top_k=settings.top_k))
    rows, done, total = [], 0, len(pairs) * len(er.ARMS)
    for pair in pairs:
        question = Question(pair.question, [pair.answer], pair.source or None, pair.id)
        answers = {}
        for arm in er.ARMS:
            progress("answer", done, total, f"{er.ARM_NAMES[arm]}: {pair.question[:60]}")
            final = None
            for final in comparer.stream_arm(arm, question):  # noqa: B007 - the last one is the finished answer
                pass
            assert final is not None
            answers[arm] = {"text": final.text, "f1": final.scores.get("f1"),
                            "contained": final.scores.get("contained"),
                            "exact_match": final.scores.get("exact_match"), "rouge_l": final.scores.get("rouge_l"),
                            "total_s": round(final.total_s, 3), "error": final.error, "sources": final.sources}
            answers[arm]["reference_correct"] = er.reference_correct(answers[arm])
            done += 1
        rows.append({"id": pair.id, "question": pair.question, "reference": pair.answer, "source": pair.source,
                     "page": pair.page, "quote": pair.quote, "chunk_id": pair.chunk_id, "answers": answers})
    return rows, comparer


def _retrieval(index: Any, spec: Any, rows: list[dict]) -> dict[str, Any]:
    """hit@k and MRR@10 of the test questions, at document and at passage level (rag.gold's one definition)."""
    from rag.gold import Gold, hit_rank, retrieval_metrics
    from rag.retrieve import search

    doc_ranks, passage_ranks = [], []
    for row in rows:
        chunks = [h.chunk for h in search(index, row["question"], spec, top_k=10).hits]
        gold = Gold(source=row["source"], quote=row["quote"], page=row["page"], chunk_id=row["chunk_id"])
        row["doc_rank"] = hit_rank(chunks, gold, "document")
        row["passage_rank"] = hit_rank(chunks, gold, "passage")
        doc_ranks.append(row["doc_rank"])
        passage_ranks.append(row["passage_rank"])
    return {"n": len(rows), "document": retrieval_metrics(doc_ranks), "passage": retrieval_metrics(passage_ranks)}


def _passages(index: Any, rows: list[dict]) -> dict[str, str]:
    """The source passage of each question, for the judge: its chunk if it still exists, else its quote."""
    from rag.gold import Gold, chunk_id, matches

    by_id = {chunk_id(c): c for c in index.chunks}
    out = {}
    for row in rows:
        chunk = by_id.get(row["chunk_id"])
        if chunk is None:
            gold = Gold(source=row["source"], quote=row["quote"], page=row["page"])
            chunk = next((c for c in index.chunks if matches(c, gold)), None)
        out[row["id"]] = chunk.text if chunk is not None else row["quote"]
    return out


def _judge(judge: Any, rows: list[dict], passages: dict[str, str], votes: Sequence[dict],
           progress: Callable[[str, int, int, str], None]) -> dict[str, Any]:
    """Judge every answer (graded, or pairwise in both orders), then check the judge against the reference
    answers and, where the user voted blind, against the votes."""
    from services.judge import agreement_with_votes, trust

    pairwise = judge.settings.mode == "pairwise"
    judged = _judge_pairwise(judge, rows, passages, progress) if pairwise else \
        _judge_graded(judge, rows, passages, progress)
    agreement = judged["agreement"]
    trusted, reason = trust(agreement, judge.settings.kappa_threshold)
    out = {"used": True, "mode": judge.settings.mode, "settings": judge.settings.to_dict(),
           "agreement_reference": _agreement_dict(agreement), "trusted": trusted, "reason": reason,
           "unparsed": judged["unparsed"]}
    if votes:
        prefs = [_judge_preference(rows, v) for v in votes]
        votes_agreement = agreement_with_votes(prefs, [v["choice"] for v in votes])
        out["agreement_votes"] = _agreement_dict(votes_agreement)
        out["votes_reason"] = trust(votes_agreement, judge.settings.kappa_threshold, against="your votes")[1]
    return out


def _judge_graded(judge: Any, rows: list[dict], passages: dict[str, str],
                  progress: Callable[[str, int, int, str], None]) -> dict[str, Any]:
    """Each answer graded CORRECT/INCORRECT against the reference and the passage; checked against the
    reference answers' own verdict (found in the reply, or half its words)."""
    from services.judge import agreement_with_reference

    total, done = sum(len(r["answers"]) for r in rows), 0
    verdicts, reference = [], []
    for row in rows:
        for arm, answer in row["answers"].items():
            progress("judge", done, total, f"{er.ARM_NAMES[arm]}: {row['question'][:60]}")
            result = judge.grade(row["question"], row["reference"], passages[row["id"]], answer["text"])
            answer["judge"] = None if result.verdict is None else float(result.verdict)
            answer["judge_raw"] = result.raw
            verdicts.append(result.verdict)
            reference.append(answer["reference_correct"])
            done += 1
    return {"agreement": agreement_with_reference(verdicts, reference), "unparsed": verdicts.count(None)}


def _reference_preference(a: dict, b: dict) -> str:
    """Which of two answers the reference answer prefers: the right one over the wrong one, else a tie."""
    ra, rb = a["reference_correct"], b["reference_correct"]
    return "A" if ra and not rb else "B" if rb and not ra else "tie"


def _judge_pairwise(judge: Any, rows: list[dict], passages: dict[str, str],
                    progress: Callable[[str, int, int, str], None]) -> dict[str, Any]:
    """Every pair of approaches compared in both orders; an approach's judge score on a question is its share
    of wins (a tie counts half) among the comparisons the judge could read."""
    from services.judge import agreement_with_votes

    total, done = len(rows) * len(er.ARMS) * (len(er.ARMS) - 1) // 2, 0
    prefs, reference, unparsed = [], [], 0
    for row in rows:
        answers, points = row["answers"], {arm: [] for arm in row["answers"]}
        row["pairwise"] = []
        for a, b in itertools.combinations(list(answers), 2):
            progress("judge", done, total, f"{er.ARM_NAMES[a]} vs {er.ARM_NAMES[b]}: {row['question'][:50]}")
            result = judge.compare(row["question"], row["reference"], passages[row["id"]], answers[a]["text"],
                                   answers[b]["text"])
            done += 1
            row["pairwise"].append({"a": a, "b": b, "winner": result.winner, "consistent": result.consistent})
            if result.winner is None:
                unparsed += 1
                continue
            points[a].append({"A": 1.0, "B": 0.0}.get(result.winner, 0.5))
            points[b].append({"A": 0.0, "B": 1.0}.get(result.winner, 0.5))
            prefs.append(result.winner)
            reference.append(_reference_preference(answers[a], answers[b]))
        for arm, got in points.items():
            answers[arm]["judge"] = sum(got) / len(got) if got else None
    return {"agreement": agreement_with_votes(prefs, reference), "unparsed": unparsed}


def _agreement_dict(agreement: Any) -> dict[str, Any]:
    return {"kappa": agreement.kappa, "observed": agreement.observed, "n": agreement.n}


def _judge_preference(rows: list[dict], vote: dict) -> str | None:
    """What the judge's grades say about a blind vote's two answers: A, B, or a tie."""
    row = next((r for r in rows if r["id"] == vote["qid"]), None)
    if row is None:
        return None
    for pair in row.get("pairwise", []):  # pairwise mode: the judge's own verdict on exactly these two
        if (pair["a"], pair["b"]) == (vote["arm_a"], vote["arm_b"]):
            return pair["winner"]
        if (pair["b"], pair["a"]) == (vote["arm_a"], vote["arm_b"]):
            return {"A": "B", "B": "A"}.get(pair["winner"], pair["winner"])
    a = (row["answers"].get(vote["arm_a"]) or {}).get("judge")
    b = (row["answers"].get(vote["arm_b"]) or {}).get("judge")
    if a is None or b is None:
        return None
    return "A" if a > b else "B" if b > a else "tie"


def evaluate(chat: Any, pairs: Sequence[QAPair], *, adapter: str, adapter_label: str, index: Any, collection: str,
             settings: ExperimentSettings, judge: Any | None = None, votes: Sequence[dict] = (),
             progress: Callable[[str, int, int, str], None] = lambda *a: None) -> dict[str, Any]:
    """The whole report of one experiment from its test pairs: answers, retrieval, judge, comparisons, verdict."""
    t0 = time.perf_counter()
    rows, comparer = _answers(chat, pairs, adapter=adapter, adapter_label=adapter_label, index=index,
                              collection=collection, settings=settings, progress=progress)
    t_answers = time.perf_counter() - t0
    retrieval = _retrieval(index, comparer.spec, rows)
    judged = _judge(judge, rows, _passages(index, rows), votes, progress) if judge is not None else {
        "used": False, "trusted": False, "reason": "The judge was turned off for this experiment."}
    metric = "judge" if judged.get("trusted") else "f1"
    arms = list(er.ARMS)
    comparisons = er.comparisons(rows, arms, metric, seed=settings.seed, resamples=settings.resamples)
    report = {"config": {**comparer.config(), "arms": arms, "experiment": settings.to_dict()},
              "questions": rows, "retrieval": retrieval, "judge": judged,
              "arms": er.arm_summary(rows, arms, seed=settings.seed, resamples=settings.resamples),
              "comparisons": comparisons,
              "verdict": er.decide(comparisons, arms, len(rows), metric, settings.min_questions),
              "key_question": er.key_question(comparisons),
              "timings": {"answers_s": round(t_answers, 2), "total_s": round(time.perf_counter() - t0, 2)}}
    return report


def save_report(folder: Path, report: dict[str, Any]) -> dict[str, Path]:
    """report.json, report.html and report.csv, each swapped in whole."""
    paths = {"json": folder / "report.json", "html": folder / "report.html", "csv": folder / "report.csv"}
    with locked(folder):
        write_atomic(paths["html"], er.render_html(report))
        write_atomic(paths["csv"], er.to_csv(report))
        write_atomic(paths["json"], er.to_json(report))
    return paths


# ------------------------------------------------------------------------------ the job


class _Interrupted(BaseException):
    """SIGTERM: the server is stopping."""


def _raise_interrupted(signum: int, frame: Any) -> None:
    raise _Interrupted()


def run_experiment_job(job_id: str, store: JobStore | None = None) -> int:
    """Worker entry point for kind "experiment": evaluate the finished fine-tuning run and write the report.

    Same contract as the other runners: a terminal event, then ``store.finish``, then the next job.
    """
    store = store or JobStore()
    job = store.load(job_id)
    log = EventLog(job.events_path)
    previous = signal.signal(signal.SIGTERM, _raise_interrupted)
    exit_code = 0
    t0 = time.time()
    try:
        _run_evaluation(job, store, log)
        log.append(Done(job.id, duration_seconds=time.time() - t0))
        store.finish(job.id, "done")
    except _Stopped:
        log.append(Cancelled(job.id, resumable=False))
        store.finish(job.id, "cancelled")
    except _Interrupted:
        reason = "The server stopped during the evaluation; press 'Evaluate again' when it is back (the fine-tuned " \
                 "run is kept)."
        log.append(Interrupted(job.id, reason=reason, resumable=False))
        store.finish(job.id, "interrupted", error=reason)
        exit_code = 75
    except BaseException as exc:
        reason = str(exc) if isinstance(exc, (ExperimentError, JobError)) else \
            f"The evaluation stopped with an error: {type(exc).__name__}: {exc}"
        record_failure(store, job.id, reason, exc)
        exit_code = 1
    finally:
        signal.signal(signal.SIGTERM, previous)
        if exit_code != 75:
            store.dispatch()
    return exit_code


def _run_evaluation(job: JobRecord, store: JobStore, log: EventLog) -> None:
    from engine.infer import ChatModel
    from services.collections import open_collection

    payload = job.payload
    exp = Experiment(Path(payload["experiment"]))
    train = store.load(payload["train_job"])
    if train.status != "done":
        raise ExperimentError(f"The fine-tuning run ended as '{train.status}', so there is no fine-tuned model to "
                              "evaluate: look at it in the Train tab, then press Run again.")
    settings = ExperimentSettings.from_dict(payload["settings"])
    report = exp.split()
    if report is None:
        raise ExperimentError("The split is gone: split the questions again, then press Run again.")
    by_id = {p.id: p for p in exp.questions()}
    pairs = [by_id[i] for i in report.test_ids if i in by_id]
    model_id = exp.record["model"]
    token = os.environ.get(TOKEN_ENV) or None

    def progress(phase: str, done: int, total: int, item: str) -> None:
        if store.cancel_requested(job.id):
            raise _Stopped()
        log.append(Progress(job.id, phase=phase, done=done, total=total, unit="answers", item=item))

    log.append(Progress(job.id, phase="load", item=model_id, message="loading the model"))
    chat = ChatModel(model_id, token=token)
    index = open_collection(Path(payload["collection_path"]))
    judge = make_judge(chat, settings, token, lambda model: log.append(
        Progress(job.id, phase="load", item=model, message="loading the judge")),
        judge_settings=_judge_settings(payload.get("judge_settings")))
    result = evaluate(chat, pairs, adapter=str(train.adapter_dir), adapter_label=train.name, index=index,
                      collection=exp.record["collection"], settings=settings, judge=judge,
                      votes=_votes(exp), progress=progress)
    result["split_summary"] = report.summary()
    result["config"].update({"name": exp.name, "train_run": train.id, "train_config": train.config.to_dict(),
                             "split": report.to_dict() | {"train_ids": len(report.train_ids),
                                                          "test_ids": len(report.test_ids)}})
    save_report(exp.folder, result)
    log.append(Log(job.id, message=result["verdict"]["text"]))


def make_judge(chat: Any, settings: ExperimentSettings, token: str | None,
               on_load: Callable[[str], None] = lambda model: None, judge_settings: Any = None) -> Any:
    """The judge of an experiment (None when turned off): its own model when one is chosen, else ``chat``."""
    from engine.infer import ChatModel
    from services.judge import Judge, JudgeSettings

    if not settings.judge:
        return None
    judge_chat = chat
    if settings.judge_model and settings.judge_model != chat.base_model:
        on_load(settings.judge_model)
        judge_chat = ChatModel(settings.judge_model, token=token)
    return Judge.from_chat(judge_chat, judge_settings or JudgeSettings())


def _judge_settings(values: dict[str, Any] | None) -> Any:
    from services.judge import JudgeSettings

    return JudgeSettings.from_dict(values) if values else JudgeSettings()


def _votes(exp: Experiment) -> list[dict]:
    path = exp.folder / "votes.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# ------------------------------------------------------------------------------ blind votes


VOTE_CHOICES = ("A", "B", "tie", "both_bad")


def next_blind_pair(exp: Experiment) -> dict[str, str] | None:
    """The next test answer pair to vote on blind (two approaches in seeded random positions), skipping the
    questions already voted on; None when every question has a vote or there is no report yet."""
    from services.compare import blind_pairs

    report = exp.report()
    if report is None:
        return None
    voted = {v["qid"] for v in _votes(exp)}
    qids = [q["id"] for q in report["questions"]]
    seed = (report["config"].get("experiment") or {}).get("seed", 0)
    for qid, arm_a, arm_b in blind_pairs(qids, list(report["config"]["arms"]), seed=seed):
        if qid not in voted:
            row = next(q for q in report["questions"] if q["id"] == qid)
            return {"qid": qid, "question": row["question"], "arm_a": arm_a, "arm_b": arm_b,
                    "answer_a": row["answers"][arm_a]["text"], "answer_b": row["answers"][arm_b]["text"]}
    return None


def record_vote(exp: Experiment, qid: str, arm_a: str, arm_b: str, choice: str) -> int:
    """Keep one blind vote (A/B as the voter saw them); returns how many votes the experiment has."""
    if choice not in VOTE_CHOICES:
        raise ExperimentError(f"Unknown vote {choice!r}; choose one of {', '.join(VOTE_CHOICES)}.")
    with locked(exp.folder):
        votes = _votes(exp)
        votes.append({"qid": qid, "arm_a": arm_a, "arm_b": arm_b, "choice": choice, "time": time.time()})
        write_atomic(exp.folder / "votes.jsonl", "".join(json.dumps(v) + "\n" for v in votes))
    return len(votes)


def judge_vs_votes(exp: Experiment) -> str:
    """The judge's agreement with the user's blind votes (Cohen's kappa with n), in one line; "" without votes."""
    from services.judge import JudgeSettings, agreement_with_votes, trust

    report, votes = exp.report(), _votes(exp)
    if report is None or not votes:
        return ""
    if not (report.get("judge") or {}).get("used"):
        return f"{len(votes)} blind vote(s) kept; the judge was off in this run, so there is nothing to compare."
    prefs = [_judge_preference(report["questions"], v) for v in votes]
    agreement = agreement_with_votes(prefs, [v["choice"] for v in votes])
    threshold = JudgeSettings.from_dict(report["judge"].get("settings") or {}).kappa_threshold
    return trust(agreement, threshold, against="your votes")[1]
