"""``python -m bench train``: the app's training against a plain TRL QLoRA recipe, in one run.

Both recipes train the bundled SmolLM2-135M on the same rows of a real dataset for one epoch —
equal tokens — each in a fresh child process so peak memory is measured cleanly (``ru_maxrss``).
Afterwards each adapter is scored the same way: the loss on the assistant tokens of the same
held-out rows.

The plain recipe is what a user copying TRL's SFT + PEFT docs runs: ``SFTTrainer`` with its defaults
(no packing, padding to the longest row of each batch, gradient checkpointing on), bitsandbytes NF4
with double quantisation, ``LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear")``,
``learning_rate=2e-4`` (TRL's PEFT docs: "~10x the full fine-tuning rate for LoRA"), batch 8, max
length 512. One thing is changed so it is not crippled on a CPU: precision. TRL defaults to
``bf16=True`` and casts a quantised model's LoRA weights to bf16; on a CPU without bf16 instructions
(this one has AVX2 only) both are emulated, which made a step ~5-10x slower. The plain recipe
therefore trains in fp32 (``bf16=False``, fp32 compute dtype, LoRA weights cast back to fp32), as the
app does on CPU.

The app recipe is its ``quick-cpu-demo`` preset (what the Train tab offers on a CPU), run for one
epoch at the same max length, without a validation split.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "testdata" / "ft" / "llama_factory" / "alpaca_en_demo.json"
MAX_LENGTH = 512
APP_PRESET = "quick-cpu-demo"


def _held_out_loss(model: Any, tokenizer: Any, eval_file: Path) -> float:
    """Mean loss over assistant tokens of the held-out rows, through the app's own encoding."""
    import torch

    from engine import data

    prepared = data.prepare(eval_file)
    encoded = data.encode_examples(tokenizer, prepared.examples, MAX_LENGTH)
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for example in encoded:
            ids = torch.tensor([example.input_ids])
            labels = torch.tensor([[t if m else -100 for t, m in zip(example.input_ids, example.assistant_masks,
                                                                      strict=True)]])
            n = int((labels[:, 1:] != -100).sum())
            loss = model(input_ids=ids, labels=labels).loss
            total, count = total + float(loss) * n, count + n
    return total / count


def _real_tokens(dataset: Any) -> int:
    return sum(len(ids) for ids in dataset["input_ids"])


def run_plain(train_file: Path, eval_file: Path, out: Path) -> dict[str, Any]:
    """The recipe a newcomer copies from TRL's docs: defaults everywhere except what the module doc names."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from engine import data
    from engine.models import load_base_model, load_tokenizer

    tokenizer = load_tokenizer()
    conversations = [{"messages": [{"role": m.role, "content": m.content} for m in ex.messages]}
                     for ex in data.prepare(train_file).examples]
    # NF4 + double quantisation with an fp32 compute dtype (the CPU has no bf16).
    model = load_base_model(quantization="4bit", device="cpu", dtype="float32")
    args = SFTConfig(output_dir=str(out), per_device_train_batch_size=8, max_length=MAX_LENGTH, packing=False,
                     learning_rate=2e-4, num_train_epochs=1, use_cpu=True, bf16=False, report_to="none",
                     save_strategy="no", disable_tqdm=True, logging_steps=1)
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(conversations),
                         processing_class=tokenizer, peft_config=lora)
    for param in trainer.model.parameters():  # TRL casts QLoRA adapters to bf16: emulated, slow on this CPU
        if param.requires_grad:
            param.data = param.data.to(torch.float32)
    tokens = _real_tokens(trainer.train_dataset)
    start, cpu = time.perf_counter(), time.process_time()
    trainer.train()
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    trainer.save_model(str(out / "adapter"))
    return {"tokens": tokens, "seconds": seconds, "cpu_seconds": cpu_seconds, "steps": trainer.state.global_step,
            "peak_gb": peak, "settings": {k: getattr(args, k) for k in _REPORTED},
            "eval_loss": _score(out / "adapter", eval_file)}


_REPORTED = ("per_device_train_batch_size", "gradient_accumulation_steps", "learning_rate", "packing",
             "gradient_checkpointing", "bf16", "max_length", "lr_scheduler_type", "optim")


def run_app(train_file: Path, eval_file: Path, out: Path) -> dict[str, Any]:
    """The app's own path: its CPU preset, its data layer, its trainer; one epoch."""
    from engine.config import load_preset
    from engine.jobs import JobStore
    from engine.train import train

    store = JobStore(out / "home")
    config = load_preset(APP_PRESET).replace(max_length=MAX_LENGTH, max_steps=-1, num_epochs=1.0, val_fraction=0.0,
                                             save_steps=100_000)
    job = store.submit(config, train_file, start=False, run_dir=out / "run")
    start, cpu = time.perf_counter(), time.process_time()
    result = train(job, store=None)
    # includes model load and data preparation: counted against the app
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    metrics = json.loads((job.run_dir / "metrics.json").read_text())
    return {"tokens": metrics["train_tokens"], "seconds": seconds, "cpu_seconds": cpu_seconds, "steps": result.steps,
            "peak_gb": peak, "eval_loss": _score(job.adapter_dir, eval_file), "config": config.to_dict()}


def _score(adapter_dir: Path, eval_file: Path) -> float:
    """Both adapters are scored identically: on a fresh full-precision base, as they are used for chat."""
    from engine.infer import ChatModel

    chat = ChatModel()
    chat.load_adapter(adapter_dir)
    return _held_out_loss(chat.model, chat.tokenizer, eval_file)


def _child(recipe: str, train_file: Path, eval_file: Path, out: Path) -> None:
    runner = run_plain if recipe == "plain" else run_app
    print("RESULT " + json.dumps(runner(train_file, eval_file, out)), flush=True)


def _spawn(recipe: str, train_file: Path, eval_file: Path, out: Path) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.train", "--child", recipe, str(train_file), str(eval_file), str(out)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{recipe} recipe failed:\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def _split(data_file: Path, rows: int, eval_rows: int, folder: Path) -> tuple[Path, Path]:
    records = json.loads(data_file.read_text())
    train_file, eval_file = folder / "train.json", folder / "eval.json"
    train_file.write_text(json.dumps(records[:rows]))
    eval_file.write_text(json.dumps(records[rows:rows + eval_rows]))
    return train_file, eval_file


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench train", description=__doc__)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--rows", type=int, default=96, help="training rows (both recipes, one epoch)")
    parser.add_argument("--eval-rows", type=int, default=32)
    parser.add_argument("--order", default="plain,app", choices=("plain,app", "app,plain"))
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        recipe, train_file, eval_file, out = args.child
        _child(recipe, Path(train_file), Path(eval_file), Path(out))
        return 0
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        folder = Path(tmp)
        train_file, eval_file = _split(args.data, args.rows, args.eval_rows, folder)
        for recipe in args.order.split(","):
            load_before = os.getloadavg()
            results[recipe] = _spawn(recipe, train_file, eval_file, folder / recipe)
            results[recipe]["load_average"] = {"before": load_before, "after": os.getloadavg()}
            print(recipe, json.dumps(results[recipe], default=str), flush=True)
    for result in results.values():
        result["tokens_per_second"] = result["tokens"] / result["seconds"]
        # CPU time of the whole child (training only): what the run costs when the cores are not shared
        result["tokens_per_cpu_second"] = result["tokens"] / result["cpu_seconds"]
    plain, app = results["plain"], results["app"]
    summary = {
        "data": f"{args.data.name}: {args.rows} training rows, {args.eval_rows} held-out rows, 1 epoch",
        "plain": plain, "app": app,
        "ratios": {"tokens_per_second": app["tokens_per_second"] / plain["tokens_per_second"],
                   "tokens_per_cpu_second": app["tokens_per_cpu_second"] / plain["tokens_per_cpu_second"],
                   "peak_memory": app["peak_gb"] / plain["peak_gb"],
                   "held_out_loss": app["eval_loss"] / plain["eval_loss"]},
    }
    print(json.dumps(summary, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
