"""Command line: ``python -m engine {train,generate,inspect,runs,cancel,resume,worker}``.

Training options are generated from :class:`TrainConfig`, so every setting the UI shows is also
a flag here (``--lora-r``, ``--max-length``...) with the same help text and bounds.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from engine.config import TrainConfig, load_preset, preset_names
from engine.settings import SettingsError, _base_type, describe

ALIASES = {"base_model": ["--base"]}


def _add_setting_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("training settings (override the preset/config file)")
    for info in describe(TrainConfig):
        flag = "--" + info.name.replace("_", "-")
        kind = _base_type(info.type)
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
    worker = sub.add_parser("worker", help=argparse.SUPPRESS)
    worker.add_argument("job_id")
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
    from engine.events import Cancelled, Done, Failed
    from engine.jobs import JobStore

    config = _config_from_args(args)
    mapping = json.loads(args.mapping) if args.mapping else None
    options = {"placeholders": json.loads(args.placeholders)} if args.placeholders else None
    store = JobStore()
    job = store.submit(config, args.data, mapping=mapping, data_options=options, run_dir=Path(args.output),
                       owner="cli")
    outcome = 1
    try:
        for event in store.follow(job.id):
            print(event.to_json(), flush=True)
            if isinstance(event, Done):
                outcome = 0
            elif isinstance(event, Failed):
                print(f"Training failed: {event.reason}", file=sys.stderr)
                for fix in event.fixes:
                    print(f"  - {fix}", file=sys.stderr)
                outcome = 1
            elif isinstance(event, Cancelled):
                outcome = 130
    except KeyboardInterrupt:
        store.cancel(job.id)
        print(f"Stopping run {job.id}; resume it with: python -m engine resume {job.id}", file=sys.stderr)
        return 130
    return outcome


def cmd_generate(args: argparse.Namespace) -> int:
    from engine.config import GenerationSettings
    from engine.infer import ChatModel

    base = args.base or (base_model_of_adapter(args.adapter) if args.adapter else None)
    overrides = {k: v for k, v in {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature,
                                   "seed": args.seed}.items() if v is not None}
    chat = ChatModel(base) if base else ChatModel()
    for piece in chat.stream(args.prompt, adapter=args.adapter, settings=GenerationSettings.from_dict(overrides)):
        print(piece, end="", flush=True)
    print()
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
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    from engine.jobs import JobStore

    for job in JobStore().list():
        print(json.dumps({"id": job.id, "name": job.name, "status": job.status, "step": job.last_step,
                          "total_steps": job.total_steps, "final_loss": job.final_loss, "run_dir": str(job.run_dir),
                          "error": job.error}))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    try:
        if args.command == "train":
            return cmd_train(args)
        if args.command == "generate":
            return cmd_generate(args)
        if args.command == "inspect":
            return cmd_inspect(args)
        if args.command == "runs":
            return cmd_runs(args)
        if args.command in ("cancel", "resume"):
            from engine.jobs import JobStore

            store = JobStore()
            job = store.cancel(args.job_id) if args.command == "cancel" else store.resume(args.job_id)
            print(json.dumps({"id": job.id, "status": job.status}))
            return 0
        if args.command == "worker":
            from engine.train import run_job

            return run_job(args.job_id)
    except (SettingsError, ValueError, RuntimeError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 2


if __name__ == "__main__":
    sys.exit(main())
