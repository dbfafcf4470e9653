"""Command line: ``python -m engine {train,generate,inspect,runs,cancel,resume,compare,lab,worker,rank}``.

Training options are generated from :class:`TrainConfig`, so every setting the UI shows is also
a flag here (``--lora-r``, ``--max-length``...) with the same help text and bounds.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from core.settings import SettingsError, base_type, describe
from engine.config import TrainConfig, load_preset, preset_names
from engine.lab.cli import add_lab_parser, join_value_lists, run_lab

ALIASES = {"base_model": ["--base"]}
RUNNERS: dict[str, str] = {"train": "engine.train:run_job", "index": "services.index_jobs:run_index_job",
                           "experiment": "services.experiment:run_experiment_job",
                           "generate": "services.qgen:run_generate_job"}
"""Which function runs each kind of job, as "module:function", imported only in the worker that needs it.

Why strings: engine/jobs.py must not import rag/ or services/, but this entry point may import any layer.
A runner takes ``(job_id, store)``, records its own terminal event and status and returns an exit code."""


def _add_setting_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("training settings (override the preset/config file)")
    for info in describe(TrainConfig):
        flag = "--" + info.name.replace("_", "-")
        kind = base_type(info.type)
        extra: dict[str, Any] = {"type": str if kind is bool else kind}
        if info.spec.choices:
            extra["choices"] = list(info.spec.choices)
        group.add_argument(flag, *ALIASES.get(info.name, []), dest=info.name, default=None,
                           help=f"{info.spec.help} (default: {info.default})", **extra)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m engine", description="Tune Studio fine-tuning engine")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="fine-tune on a data file; prints the job's events as JSON lines")
    train.add_argument("--data", required=True, help="CSV, JSON, JSONL, Parquet or TXT file")
    train.add_argument("--output", required=True, help="folder for this run's adapter, config, metrics and events")
    train.add_argument("--config", help="YAML file of settings")
    train.add_argument("--preset", choices=preset_names(), help="start from a shipped preset")
    train.add_argument("--mapping", help="JSON column mapping overriding format detection")
    train.add_argument("--placeholders", help='JSON values for {{placeholders}} in the data, e.g. {"name": "Ada"}')
    train.add_argument("--sft-on-chosen", action="store_true",
                       help="SFT on a preference-pair file: train on the chosen answers, ignore the rejected ones")
    _add_setting_flags(train)

    gen = sub.add_parser("generate", help="answer a prompt with the base model or a fine-tuned adapter")
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--adapter", help="adapter folder of a finished run (its base model is used)")
    gen.add_argument("--base", help="base model id (default: the adapter's, else the bundled model)")
    gen.add_argument("--max-new-tokens", type=int)
    gen.add_argument("--temperature", type=float)
    gen.add_argument("--seed", type=int)

    inspect = sub.add_parser("inspect", help="detected format, validation report and one rendered example")
    inspect.add_argument("--data", required=True)
    inspect.add_argument("--base", help="model whose chat template and tokenizer to use")
    inspect.add_argument("--max-length", type=int, default=TrainConfig().max_length)
    inspect.add_argument("--mapping", help="JSON column mapping overriding format detection")

    sub.add_parser("runs", help="list runs")
    for name in ("cancel", "resume"):
        cmd = sub.add_parser(name, help=f"{name} a run")
        cmd.add_argument("job_id")
    _add_compare_parser(sub)
    _add_experiment_parser(sub)
    add_lab_parser(sub)
    worker = sub.add_parser("worker", help=argparse.SUPPRESS)
    worker.add_argument("job_id")
    rank = sub.add_parser("rank", help=argparse.SUPPRESS)  # one process of a multi-process run (accelerate)
    rank.add_argument("job_id")
    return parser


def _config_from_args(args: argparse.Namespace) -> TrainConfig:
    values: dict[str, Any] = {}
    if args.preset:
        values.update(load_preset(args.preset).to_dict())
    if args.config:
        values.update(TrainConfig.from_yaml(args.config).to_dict())
    for info in describe(TrainConfig):
        value = getattr(args, info.name, None)
        if value is not None:
            values[info.name] = value
    return TrainConfig.from_dict(values)


def cmd_train(args: argparse.Namespace) -> int:
    from engine.jobs import JobStore

    config = _config_from_args(args)
    mapping = json.loads(args.mapping) if args.mapping else None
    options = {"placeholders": json.loads(args.placeholders)} if args.placeholders else {}
    if args.sft_on_chosen:
        options["sft_on_chosen"] = True
    store = JobStore()
    if config.from_run and args.base_model is None:  # an adapter fits only its own base: take the run's
        from engine.jobs import JobError

        try:
            config = config.replace(base_model=store.load(config.from_run).config.base_model)
        except JobError as exc:
            raise SettingsError("from_run", f"{exc} List runs with: python -m engine runs") from None
    # The operator's own token (the CLI reads $HF_TOKEN only): held in this process's memory for this job.
    job = store.submit(config, args.data, mapping=mapping, data_options=options or None, run_dir=Path(args.output),
                       owner="cli", hf_token=os.environ.get("HF_TOKEN") or None)
    outcome = 1
    try:
        for event in store.follow(job.id):
            print(event.to_json(), flush=True)
            outcome = _outcome(event, outcome)
    except KeyboardInterrupt:
        store.cancel(job.id)
        print(f"Stopping run {job.id}; resume it with: python -m engine resume {job.id}", file=sys.stderr)
        return 130
    return outcome


def _outcome(event: Any, current: int) -> int:
    """The exit code a followed event implies (0 done, 1 failed, 130 stopped, 75 interrupted: run it again)."""
    from engine.events import Cancelled, Done, Failed, Interrupted

    if isinstance(event, Done):
        return 0
    if isinstance(event, Failed):
        print(f"Training failed: {event.reason}", file=sys.stderr)
        for fix in event.fixes:
            print(f"  - {fix}", file=sys.stderr)
        return 1
    if isinstance(event, Cancelled):
        return 130
    if isinstance(event, Interrupted):
        print(f"Training was interrupted: {event.reason}", file=sys.stderr)
        return 75
    return current


def cmd_worker(job_id: str) -> int:
    """``python -m engine worker JOB_ID``: run one job with the runner of its kind.

    A SIGTERM before the runner starts ends the job as ``interrupted`` (it is queued again when the server
    starts); a kind whose runner cannot be imported ends as failed with the reason, and the queue moves on.
    """
    from engine.events import EventLog, Failed, Interrupted, Progress
    from engine.jobs import JobStore

    store = JobStore()
    job = store.load(job_id)
    log = EventLog(job.events_path)
    previous = signal.signal(signal.SIGTERM, _stop_worker)
    try:
        # Importing a runner (torch, transformers) takes seconds to tens of seconds: say so at once.
        log.append(Progress(job.id, phase="starting", message="loading the code for this job"))
        runner = _runner(job.kind)
    except _WorkerStopped:
        reason = "The server restarted or went to sleep before this job started; it starts again when it is back."
        log.append(Interrupted(job.id, step=job.last_step, reason=reason, resumable=True))
        store.finish(job.id, "interrupted", error=reason)
        return 75  # no dispatch: the server is stopping
    except _RunnerMissing as exc:
        log.append(Failed(job.id, reason=str(exc), resumable=True))
        store.finish(job.id, "failed", error=str(exc))
        store.dispatch()
        return 1
    signal.signal(signal.SIGTERM, previous)  # the runner installs its own handler if it can checkpoint
    _fit_threads(log, job.id)
    return runner(job_id, store)


def _fit_threads(log: Any, job_id: str) -> None:
    """Compute with the cores other programs leave free (``engine.cpu``); say so in the job's log."""
    from engine.cpu import fit_threads_to_free_cores
    from engine.events import Log

    try:
        line = fit_threads_to_free_cores()
    except Exception:  # never a reason for a job to fail: it runs with the default threads
        return
    if line:
        log.append(Log(job_id, message=line))


class _WorkerStopped(BaseException):
    """SIGTERM while the worker was still importing its runner.

    A BaseException, like KeyboardInterrupt: raised from a signal handler anywhere inside library imports, it
    must not be caught (and turned into an import error) by a library's ``except Exception``."""


class _RunnerMissing(RuntimeError):
    """This server has no working runner for a kind of job; the message says which and why."""


def _stop_worker(signum: int, frame: Any) -> None:
    raise _WorkerStopped()


def _runner(kind: str) -> Callable[..., int]:
    """The runner function of a kind, imported from :data:`RUNNERS`."""
    target = RUNNERS.get(kind)
    if target is None:
        raise _RunnerMissing(f"This server does not know how to run a '{kind}' job (known kinds: "
                             f"{', '.join(RUNNERS)}). It may have been created by a newer version of Tune Studio.")
    module_name, _, function = target.partition(":")
    try:
        return getattr(importlib.import_module(module_name), function)
    except ImportError as exc:
        missing = getattr(exc, "name", None) or module_name
        raise _RunnerMissing(f"This server cannot run '{kind}' jobs: the module '{missing}' is not available "
                             f"({type(exc).__name__}). Ask the server's owner to update or reinstall Tune "
                             "Studio, then press Resume.") from exc
    except AttributeError as exc:
        raise _RunnerMissing(f"This server cannot run '{kind}' jobs: '{module_name}' has no function "
                             f"'{function}'. Ask the server's owner to update Tune Studio, then press Resume.") from exc


def cmd_generate(args: argparse.Namespace) -> int:
    """Print the answer on stdout and what produced it (base, revision, adapter hash, settings) on stderr."""
    from core.generation import GenerationSettings
    from services.model_cache import shared_models

    base = args.base or (base_model_of_adapter(args.adapter) if args.adapter else None)
    overrides = {k: v for k, v in {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature,
                                   "seed": args.seed}.items() if v is not None}
    chat = shared_models().chat_model(base)
    records: list[Any] = []
    for piece in chat.stream(args.prompt, adapter=args.adapter, settings=GenerationSettings.from_dict(overrides),
                             on_provenance=records.append):
        print(piece, end="", flush=True)
    print()
    for record in records:
        print(f"answered by: {record.line()}", file=sys.stderr)
        print(json.dumps({"provenance": record.columns()}, default=str), file=sys.stderr)
    return 0


def base_model_of_adapter(adapter_dir: str) -> str | None:
    """A run folder keeps the exact config next to the adapter; that names the base model by id."""
    config_file = Path(adapter_dir).resolve().parent / "config.yaml"
    if config_file.exists():
        return TrainConfig.from_yaml(config_file).base_model
    adapter_config = Path(adapter_dir) / "adapter_config.json"
    if adapter_config.exists():
        return json.loads(adapter_config.read_text()).get("base_model_name_or_path")
    return None


def cmd_inspect(args: argparse.Namespace) -> int:
    from engine import data
    from engine.models import load_tokenizer

    tokenizer = load_tokenizer(args.base)
    mapping = data.ColumnMapping.from_dict(json.loads(args.mapping)) if args.mapping else None
    report = data.inspect_report(args.data, tokenizer, max_length=args.max_length, mapping=mapping)
    print(json.dumps(report, indent=2, ensure_ascii=False, default=str))
    return 0 if report["ok"] else 1  # refused, or no usable row: scripts must not go on to train


def cmd_runs(args: argparse.Namespace) -> int:
    from engine.jobs import JobStore

    for job in JobStore().list():
        print(json.dumps({"id": job.id, "name": job.name, "status": job.status, "step": job.last_step,
                          "total_steps": job.total_steps, "final_loss": job.final_loss, "run_dir": str(job.run_dir),
                          "error": job.error}))
    return 0


def _add_compare_parser(sub: Any) -> None:
    """``compare``: every chosen arm over a question set; generation flags come from GenerationSettings."""
    from core.generation import GenerationSettings

    cmp = sub.add_parser("compare", help="base vs fine-tuned vs RAG vs fine-tuned+RAG on a question set; "
                         "prints the per-arm summary as JSON and writes the report")
    cmp.add_argument("--questions", help="CSV or JSONL: question, optional answer(s), optional gold_doc_id")
    cmp.add_argument("--holdout", help="fine-tuning data file: hold out part of it as the question set instead")
    cmp.add_argument("--arms", default="base,rag", help="comma-separated: base, rag, ft, ft+rag")
    cmp.add_argument("--corpus", help="JSONL corpus {doc_id,title,text} to index for the RAG arms")
    cmp.add_argument("--index", help="existing RAG index folder for the RAG arms")
    cmp.add_argument("--adapter", help="adapter folder of a finished run for the ft arms")
    cmp.add_argument("--base", help="base model id (default: the adapter's, else the bundled model)")
    cmp.add_argument("--train-data", help="fine-tuning data to check the questions against for leakage")
    cmp.add_argument("--limit", type=int, default=0, help="use only the first N questions")
    cmp.add_argument("--out", required=True, help="report file: .json (default), .csv or .html")
    cmp.add_argument("--html", help="also write the self-contained HTML report here")
    cmp.add_argument("--csv", help="also write the per-question CSV here")
    group = cmp.add_argument_group("generation settings (shared by every arm)")
    for info in describe(GenerationSettings):
        group.add_argument("--" + info.name.replace("_", "-"), dest="gen_" + info.name, type=base_type(info.type),
                           default=None, help=f"{info.spec.help} (default: {info.default})")
    from services.compare import CompareSettings

    options = cmp.add_argument_group("comparison settings")
    for info in describe(CompareSettings):
        flag = "--blind-seed" if info.name == "seed" else "--" + info.name.replace("_", "-")
        options.add_argument(flag, dest="cmp_" + info.name, type=base_type(info.type), default=None,
                             help=f"{info.spec.help} (default: {info.default!r})")


def cmd_compare(args: argparse.Namespace) -> int:
    from core.generation import GenerationSettings
    from services import compare
    from services.model_cache import shared_models

    if bool(args.questions) == bool(args.holdout):
        raise ValueError("Give exactly one of --questions FILE or --holdout TRAINING_FILE.")
    arms = compare.parse_arms(args.arms)
    settings = compare.CompareSettings.from_dict({k[4:]: v for k, v in vars(args).items()
                                                  if k.startswith("cmp_") and v is not None})
    train_prompts: list[str] = []
    if args.holdout:
        questions, train_prompts = compare.holdout_questions(args.holdout, settings.holdout_fraction)
        questions = questions[: args.limit] if args.limit > 0 else questions
    else:
        questions = compare.load_questions(args.questions, args.limit)
    if args.train_data:
        train_prompts = compare.training_prompts(args.train_data)
    leaks = compare.leakage_check(questions, train_prompts, settings.near_duplicate) if train_prompts else 0
    index = None
    if any("rag" in a for a in arms):
        if args.index:
            from rag.index import RagIndex

            index = RagIndex.open(args.index)
        elif args.corpus:
            print(f"indexing {args.corpus} ...", file=sys.stderr, flush=True)
            index = compare.build_corpus_index(args.corpus)
        else:
            raise ValueError("The rag arms need --corpus CORPUS.jsonl or --index DIR.")
    generation = GenerationSettings.from_dict({k[4:]: v for k, v in vars(args).items()
                                               if k.startswith("gen_") and v is not None})
    base = args.base or (base_model_of_adapter(args.adapter) if args.adapter else None)
    chat = shared_models().chat_model(base)
    comparer = compare.Comparer(chat, arms=arms, adapter=args.adapter, index=index, generation=generation,
                                settings=settings)
    report = comparer.run(questions, on_progress=lambda done, total, what: print(
        f"[{done}/{total}] {what}", file=sys.stderr, flush=True))
    report.save(args.out)
    for extra in (args.html, args.csv):
        if extra:
            report.save(extra)
    print(json.dumps({"arms": report.summary(), "questions": len(questions), "leakage_flagged": leaks,
                      "report": str(args.out)}, indent=2, default=str))
    return 0


#: Experiment flags whose plain name would collide across its three settings classes (all have a seed).
EXPERIMENT_FLAG_NAMES = {("qgen", "seed"): "question-seed", ("split", "seed"): "split-seed",
                         ("split", "mode"): "split-mode", ("run", "seed"): "bootstrap-seed",
                         ("judge", "mode"): "judge-mode", ("judge", "max_new_tokens"): "judge-max-new-tokens"}


def _add_experiment_parser(sub: Any) -> None:
    """``experiment``: documents -> questions -> split -> fine-tune -> four approaches -> verdict, in one folder."""
    from services.experiment import ExperimentSettings
    from services.experiment_split import ExperimentSplitSettings
    from services.judge import JudgeSettings
    from services.qgen import QGenSettings

    exp = sub.add_parser("experiment", help="generate questions from a RAG index, fine-tune on part of them and "
                         "compare base, fine-tuned, RAG and fine-tuned+RAG on the rest; writes questions.jsonl, "
                         "split.json and report.json (.html, .csv) into --out")
    exp.add_argument("--index", required=True, help="RAG index folder (a collection built in the app or the CLI)")
    exp.add_argument("--out", required=True, help="folder for every file of the experiment")
    exp.add_argument("--model", default=None, help="model that generates, is fine-tuned and answers "
                     "(default: the bundled model)")
    for prefix, cls, title in (("qgen", QGenSettings, "question generation"),
                               ("split", ExperimentSplitSettings, "train/test split"),
                               ("run", ExperimentSettings, "fine-tuning, answers and judge"),
                               ("judge", JudgeSettings, "judge")):
        group = exp.add_argument_group(f"{title} settings")
        for info in describe(cls):
            flag = "--" + EXPERIMENT_FLAG_NAMES.get((prefix, info.name), info.name.replace("_", "-"))
            kind = base_type(info.type)
            extra: dict[str, Any] = {"action": argparse.BooleanOptionalAction} if kind is bool else {"type": kind}
            if info.spec.choices:
                extra["choices"] = list(info.spec.choices)
            group.add_argument(flag, dest=f"{prefix}__{info.name}", default=None,
                               help=f"{info.spec.help} (default: {info.default!r})", **extra)


def cmd_experiment(args: argparse.Namespace) -> int:
    from engine.models import BUNDLED_ID
    from services.experiment import ExperimentSettings
    from services.experiment_flow import run_experiment
    from services.experiment_split import ExperimentSplitSettings
    from services.judge import JudgeSettings
    from services.qgen import QGenSettings

    def values(prefix: str) -> dict[str, Any]:
        return {k.split("__", 1)[1]: v for k, v in vars(args).items() if k.startswith(prefix + "__") and v is not None}

    report = run_experiment(args.index, args.out, model=args.model or BUNDLED_ID,
                            qgen=QGenSettings.from_dict(values("qgen")),
                            split=ExperimentSplitSettings.from_dict(values("split")),
                            settings=ExperimentSettings.from_dict(values("run")),
                            judge=JudgeSettings.from_dict(values("judge")),
                            token=os.environ.get("HF_TOKEN") or None,
                            say=lambda line: print(line, file=sys.stderr, flush=True))
    print(json.dumps({"verdict": report["verdict"]["text"], "key_question": report["key_question"],
                      "judge": report["judge"].get("reason"), "retrieval": report["retrieval"],
                      "out": str(args.out)}, indent=2, default=str))
    return 0


def cmd_cancel_or_resume(args: argparse.Namespace) -> int:
    from engine.jobs import JobStore

    store = JobStore()
    job = (store.cancel(args.job_id) if args.command == "cancel"
           else store.resume(args.job_id, hf_token=os.environ.get("HF_TOKEN") or None))
    print(json.dumps({"id": job.id, "status": job.status}))
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "train": cmd_train, "generate": cmd_generate, "inspect": cmd_inspect, "runs": cmd_runs, "compare": cmd_compare,
    "experiment": cmd_experiment, "lab": run_lab, "cancel": cmd_cancel_or_resume, "resume": cmd_cancel_or_resume,
    "worker": lambda args: cmd_worker(args.job_id), "rank": lambda args: cmd_rank(args.job_id),
}


def cmd_rank(job_id: str) -> int:
    """``python -m engine rank JOB_ID``: one process of a multi-process run, started by ``accelerate launch``
    from the job's worker (``engine.distributed``), never by hand."""
    from engine.train import run_rank

    return run_rank(job_id)


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(join_value_lists(sys.argv[1:] if argv is None else argv))
    command = COMMANDS.get(args.command)
    if command is None:
        return 2
    try:
        return command(args)
    except (SettingsError, ValueError, RuntimeError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
