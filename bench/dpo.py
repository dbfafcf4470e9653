"""``python -m bench dpo``: the app's DPO against a plain TRL ``DPOTrainer`` recipe, in one run.

Both recipes train the bundled SmolLM2-135M with DPO for one epoch on the same pairs of LLaMA-Factory's
``dpo_en_demo.json`` (real ShareGPT preference pairs), each in a fresh child process so peak memory is measured
cleanly (``ru_maxrss``). Only pairs whose prompt + longer answer fit ``--max-length`` tokens are used, so neither
recipe cuts anything and both see equal tokens. Afterwards each adapter is scored the same way on held-out pairs
(``engine.preference.preference_scores``: DPO's implicit reward, β = 0.1, against the base model, on a fresh
full-precision base): reward accuracy = share of held-out pairs whose chosen answer gets the higher reward.

The plain recipe is what a user copying TRL's docs runs: ``DPOTrainer`` with ``DPOConfig`` defaults (batch 8,
gradient checkpointing on, sigmoid loss, β 0.1, max length 1024), the model loaded in full precision as in TRL's
DPO docs, the LoRA settings of TRL's PEFT docs (``LoraConfig(r=32, lora_alpha=16, lora_dropout=0.05,
bias="none", task_type="CAUSAL_LM")``) and those docs' LoRA learning rate 2e-4 (DPO's own default, 1e-6, is
meant for full fine-tuning and leaves a LoRA adapter nearly untouched in one epoch). Conversational rows
(prompt / chosen / rejected messages): TRL applies the chat template itself. One thing is changed so it is not
crippled on a CPU: precision (``bf16=False``, as ``bench train`` explains: this CPU has no bf16 instructions).

The app recipe is its ``quick-cpu-dpo`` preset, one epoch at the same max length, no validation split: NF4
QLoRA, our own tokens, no gradient checkpointing, batch 1 × accumulation 4 (each pair's two sequences padded
only to the longer one).
Its time includes model loading and data preparation; the plain recipe's does not.
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
DEFAULT_DATA = REPO.parent / "shared" / "testdata" / "ft" / "llama_factory" / "dpo_en_demo.json"
APP_PRESET = "quick-cpu-dpo"
BETA = 0.1


def _peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _messages(turns: Any) -> list[dict[str, str]]:
    return [{"role": m.role, "content": m.content} for m in turns]


def run_plain(train_file: Path, max_length: int, out: Path) -> dict[str, Any]:
    """TRL's documented DPO + PEFT recipe (see the module doc for the one change)."""
    from datasets import Dataset
    from peft import LoraConfig
    from trl import DPOConfig, DPOTrainer

    from engine import data
    from engine.models import load_base_model, load_tokenizer

    tokenizer = load_tokenizer()
    pairs = data.prepare_preferences(train_file).pairs
    rows = [{"prompt": _messages(p.prompt), "chosen": _messages([p.chosen]), "rejected": _messages([p.rejected])}
            for p in pairs]
    model = load_base_model(quantization="none", device="cpu", dtype="float32")
    args = DPOConfig(output_dir=str(out), learning_rate=2e-4, num_train_epochs=1, use_cpu=True, bf16=False,
                     report_to="none", save_strategy="no", disable_tqdm=True, logging_steps=1)
    lora = LoraConfig(r=32, lora_alpha=16, lora_dropout=0.05, bias="none", task_type="CAUSAL_LM")
    trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                         peft_config=lora)
    start, cpu = time.perf_counter(), time.process_time()
    trainer.train()
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    trainer.save_model(str(out / "adapter"))
    settings = {k: getattr(args, k) for k in ("per_device_train_batch_size", "gradient_accumulation_steps",
                                              "learning_rate", "gradient_checkpointing", "bf16", "max_length",
                                              "beta", "loss_type")}
    return {"seconds": seconds, "cpu_seconds": cpu_seconds, "steps": trainer.state.global_step,
            "peak_gb": _peak_gb(), "settings": settings, "adapter": str(out / "adapter")}


def run_app(train_file: Path, max_length: int, out: Path) -> dict[str, Any]:
    """The app's own path: its CPU preset with method DPO, its data layer, its trainer; one epoch."""
    from engine.config import load_preset
    from engine.jobs import JobStore
    from engine.train import train

    store = JobStore(out / "home")
    config = load_preset(APP_PRESET).replace(max_length=max_length, max_steps=-1, num_epochs=1.0, val_fraction=0.0,
                                             save_steps=100_000)
    job = store.submit(config, train_file, start=False, run_dir=out / "run")
    start, cpu = time.perf_counter(), time.process_time()
    result = train(job, store=None)  # includes model load and data preparation: counted against the app
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    return {"seconds": seconds, "cpu_seconds": cpu_seconds, "steps": result.steps, "peak_gb": _peak_gb(),
            "settings": config.to_dict(), "adapter": str(job.adapter_dir)}


def _child(recipe: str, train_file: Path, max_length: int, out: Path) -> None:
    runner = run_plain if recipe == "plain" else run_app
    print("RESULT " + json.dumps(runner(train_file, max_length, out), default=str), flush=True)


def _spawn(recipe: str, train_file: Path, max_length: int, out: Path) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.dpo", "--child", recipe, str(train_file), str(max_length), str(out)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{recipe} recipe failed:\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def fitting_pairs(data_file: Path, max_length: int) -> tuple[list[int], list[Any], list[int]]:
    """Row numbers of the pairs that fit ``max_length`` uncut, their encodings' token counts, all in file order."""
    from engine import data
    from engine.models import load_tokenizer

    pairs = data.prepare_preferences(data_file).pairs
    encoded = data.encode_pairs(load_tokenizer(), pairs, 100_000)
    keep = [i for i, e in enumerate(encoded)
            if len(e.prompt_ids) + max(len(e.chosen_ids), len(e.rejected_ids)) <= max_length]
    tokens = [2 * len(encoded[i].prompt_ids) + len(encoded[i].chosen_ids) + len(encoded[i].rejected_ids)
              for i in keep]
    return [pairs[i].row for i in keep], [pairs[i] for i in keep], tokens


def _write_rows(data_file: Path, rows: list[int], path: Path) -> Path:
    records = json.loads(data_file.read_text())
    path.write_text(json.dumps([records[r - 1] for r in rows], ensure_ascii=False))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench dpo", description=__doc__)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--pairs", type=int, default=40, help="training pairs (both recipes, one epoch)")
    parser.add_argument("--held-out", type=int, default=20)
    parser.add_argument("--max-length", type=int, default=384)
    parser.add_argument("--order", default="plain,app", choices=("plain,app", "app,plain"))
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        recipe, train_file, max_length, out = args.child
        _child(recipe, Path(train_file), int(max_length), Path(out))
        return 0
    from engine.models import BUNDLED_ID
    from engine.preference import preference_scores

    rows, pairs, tokens = fitting_pairs(args.data, args.max_length)
    n_train = min(args.pairs, len(rows) - args.held_out)
    train_tokens = sum(tokens[:n_train])
    held_out = pairs[n_train:n_train + args.held_out]
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-dpo-") as tmp:
        folder = Path(tmp)
        train_file = _write_rows(args.data, rows[:n_train], folder / "train.json")
        for recipe in args.order.split(","):
            load_before = os.getloadavg()
            result = _spawn(recipe, train_file, args.max_length, folder / recipe)
            result["load_average"] = {"before": load_before, "after": os.getloadavg()}
            result["held_out"] = preference_scores(BUNDLED_ID, result.pop("adapter"), held_out, args.max_length,
                                                   beta=BETA)
            result["tokens"] = train_tokens
            result["tokens_per_second"] = train_tokens / result["seconds"]
            result["tokens_per_cpu_second"] = train_tokens / result["cpu_seconds"]
            results[recipe] = result
            print(recipe, json.dumps(result, default=str), flush=True)
    plain, app = results["plain"], results["app"]
    summary = {
        "data": f"{args.data.name}: {n_train} training pairs and {len(held_out)} held-out pairs of at most "
                f"{args.max_length} tokens ({train_tokens:,} real training tokens per epoch), 1 epoch",
        "plain": plain, "app": app,
        "ratios": {"tokens_per_second": app["tokens_per_second"] / plain["tokens_per_second"],
                   "tokens_per_cpu_second": app["tokens_per_cpu_second"] / plain["tokens_per_cpu_second"],
                   "peak_memory": app["peak_gb"] / plain["peak_gb"]},
        "held_out_reward_accuracy": {"plain": plain["held_out"]["reward_accuracy"],
                                     "app": app["held_out"]["reward_accuracy"]},
    }
    print(json.dumps(summary, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
