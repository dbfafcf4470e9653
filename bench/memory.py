"""``python -m bench memory``: the memory estimate (``engine/memory.py``) against measured peaks.

Each row of the matrix is a real, short training run through the app's own path (``engine.train.train``: the
data layer, TRL's ``SFTTrainer``, PEFT, bitsandbytes NF4), 2 optimizer steps, each in a fresh child process so
its peak resident memory (``ru_maxrss``, which the run itself records in ``metrics.json``) is its own.

Models are random-weight Llama-architecture models in real SmolLM2 shapes (135M, 360M, 1.7B), built from a
config and saved with the bundled tokenizer (memory does not depend on weight values), and the real bundled
SmolLM2-135M-Instruct itself (an fp32 checkpoint) for the rows named "bundled". Each shape is saved as
the bundled model's folder of its own models directory (``TUNE_STUDIO_MODELS``), so the run trains it as the
bundled model and ``estimate_memory`` reads its shape from that folder's ``config.json``, as it would for
any model already on the machine. Weights are stored in bf16, as Hub checkpoints are.

The data is synthetic: every row's answer is longer than the longest max length, so every packed sequence is
exactly ``max_length`` tokens and a step holds ``batch_size × max_length`` tokens — the worst case the
estimate is for.

Writes ``bench/memory_runs.json`` (settings, shape, estimate components, measured peak, ratio, machine) and
prints the table. ``--only 0,3`` runs some rows (by index) and merges them into an existing file;
``--reestimate`` recomputes the stored rows' estimates after a change to the estimator, without training.
Each row also keeps ``recorded_estimate_gb``, what the run itself recorded in ``metrics.json`` when it ran.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "memory_runs.json"
STEPS = 2
GB = 1024**3

# SmolLM2 shapes (the Hub checkpoints' config.json), all with tied embeddings and a 49152-token vocabulary.
SHAPES: dict[str, dict[str, int]] = {
    "135M": {"num_hidden_layers": 30, "hidden_size": 576, "intermediate_size": 1536, "num_attention_heads": 9,
             "num_key_value_heads": 3},
    "360M": {"num_hidden_layers": 32, "hidden_size": 960, "intermediate_size": 2560, "num_attention_heads": 15,
             "num_key_value_heads": 5},
    "1.7B": {"num_hidden_layers": 24, "hidden_size": 2048, "intermediate_size": 8192, "num_attention_heads": 32,
             "num_key_value_heads": 32},
}


def _run(shape: str, quantization: str, lora_r: int, max_length: int, batch_size: int, checkpointing: bool,
         dropout: float = 0.0) -> dict[str, Any]:
    return {"shape": shape, "settings": {
        "quantization": quantization, "lora_r": lora_r, "lora_alpha": 2 * lora_r, "lora_dropout": dropout,
        "max_length": max_length, "batch_size": batch_size, "gradient_checkpointing": checkpointing}}


# shape, quantization, LoRA rank, max length, batch size, gradient checkpointing, LoRA dropout.
# "bundled" is the real bundled SmolLM2-135M-Instruct (real weights, fp32 on disk): what CPU users train.
MATRIX: list[dict[str, Any]] = [
    _run("bundled", "4bit", 16, 256, 2, False),  # the quick-cpu-demo preset's micro-batch
    _run("bundled", "none", 16, 512, 2, True, dropout=0.05),
    _run("135M", "4bit", 16, 512, 4, False),
    _run("135M", "4bit", 16, 512, 4, True),
    _run("135M", "4bit", 64, 1024, 2, False, dropout=0.05),
    _run("135M", "none", 8, 512, 2, False),
    _run("135M", "none", 32, 1024, 4, True, dropout=0.05),
    _run("360M", "4bit", 16, 512, 2, False),
    _run("360M", "4bit", 32, 1024, 2, True),
    _run("360M", "none", 16, 256, 4, False, dropout=0.05),
    _run("360M", "4bit", 8, 256, 8, False),
    _run("1.7B", "4bit", 16, 128, 1, True),
    _run("1.7B", "4bit", 8, 256, 2, False),
]


def build_model(shape: str, folder: Path) -> Path:
    """A random-weight Llama of ``shape`` with the bundled tokenizer, saved (bf16) as ``folder``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from engine.models import load_tokenizer

    tokenizer = load_tokenizer()
    config = LlamaConfig(vocab_size=49152, max_position_embeddings=8192, tie_word_embeddings=True,
                         rope_theta=100000.0, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **SHAPES[shape])
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)  # built and saved in bf16 directly: half the time and memory
    model = LlamaForCausalLM(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def write_data(path: Path, rows: int = 64, words: int = 1400) -> Path:
    """Alpaca rows whose answers are longer than any max length of the matrix (about 1.3 tokens per word)."""
    rng = random.Random(0)
    vocabulary = ["model", "memory", "token", "batch", "weight", "adapter", "layer", "gradient", "quantized",
                  "optimizer", "sequence", "length", "attention", "kernel", "tensor", "training", "rate"]
    records = [{"instruction": f"Write a long note number {i} about training.", "input": "",
                "output": " ".join(rng.choice(vocabulary) for _ in range(words))} for i in range(rows)]
    path.write_text(json.dumps(records))
    return path


def _maxrss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """One run in this (fresh) process: train 2 steps through the app's path; report its recorded peak."""
    import psutil

    import engine.train as engine_train
    from engine.config import TrainConfig
    from engine.jobs import JobStore
    from engine.memory import estimate_memory

    phases = {"after_imports_gb": _maxrss_gb()}
    prepare = engine_train.load_model_announced

    def prepare_and_measure(*args: Any, **kwargs: Any) -> Any:  # the peak and the resident set once loaded
        result = prepare(*args, **kwargs)
        phases.update(after_load_peak_gb=_maxrss_gb(), after_load_rss_gb=psutil.Process().memory_info().rss / GB)
        return result

    engine_train.load_model_announced = prepare_and_measure
    out = Path(spec["out"])
    config = TrainConfig(**spec["settings"], device="cpu", max_steps=STEPS, grad_accum=1, val_fraction=0.0,
                         save_steps=100_000, warmup_ratio=0.0, learning_rate=1e-3)
    job = JobStore(out / "home").submit(config, spec["data"], start=False, run_dir=out / "run")
    start, cpu = time.perf_counter(), time.process_time()
    engine_train.train(job, store=None)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    metrics = json.loads((job.run_dir / "metrics.json").read_text())
    estimate = estimate_memory(config, "cpu")  # the shape from the models folder's config.json
    return {"measured_gb": metrics["peak_memory_gb"], "measured_kind": metrics["peak_memory_kind"],
            "recorded_estimate_gb": metrics["estimated_memory_gb"], "estimate": estimate.components(),
            "steps": metrics["steps"], "train_tokens": metrics["train_tokens"], "seconds": round(seconds, 1),
            "cpu_seconds": round(cpu_seconds, 1), "phases": {k: round(v, 3) for k, v in phases.items()}}


def _spawn(args: list[str], env: dict[str, str], timeout: float = 1800) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-m", "bench.memory", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"child {args[:2]} failed:\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1", **extra}


def _models_dir(tmp: Path, shape: str) -> Path:
    """A models directory whose bundled-model folder is the random model of ``shape`` (built on first use)."""
    from engine.model_ids import BUNDLED_ID
    from engine.models import bundled_model_dir

    if shape == "bundled":
        return bundled_model_dir().parent
    models = tmp / f"models-{shape}"
    folder = models / BUNDLED_ID.split("/")[-1]
    if not (folder / "config.json").exists():
        started = time.perf_counter()
        _spawn(["--build", shape, str(folder)], _env())
        print(f"built the {shape} model in {time.perf_counter() - started:.0f} s", flush=True)
    return models


def run_matrix(indices: list[int], tmp: Path) -> list[dict[str, Any]]:
    from engine.models import info_from_config

    data = write_data(tmp / "data.json")
    rows = []
    for index in indices:
        spec = MATRIX[index]
        models = _models_dir(tmp, spec["shape"])
        shape = info_from_config(spec["shape"], json.loads((models / "SmolLM2-135M-Instruct" / "config.json")
                                                         .read_text()))
        load_before = os.getloadavg()
        child_spec = {"settings": spec["settings"], "data": str(data), "out": str(tmp / f"run-{index}")}
        result = _spawn(["--child", json.dumps(child_spec)],
                        _env(TUNE_STUDIO_MODELS=str(models), TUNE_STUDIO_HOME=str(tmp / f"home-{index}")))
        name = "SmolLM2-135M-Instruct (bundled)" if spec["shape"] == "bundled" else f"SmolLM2-{spec['shape']} shape"
        row = {"index": index, "model": name, "device": "cpu",
               "settings": spec["settings"], "shape": _shape_dict(shape), **result,
               "load_average": {"before": load_before, "after": os.getloadavg()}}
        row["ratio"] = round(row["estimate"]["total_gb"] / row["measured_gb"], 3)
        print(_line(row), flush=True)
        rows.append(row)
    return rows


def _shape_dict(info: Any) -> dict[str, Any]:
    from engine.models import SHAPE_FIELDS

    return {name: getattr(info, name) for name in SHAPE_FIELDS}


def _line(row: dict[str, Any]) -> str:
    s, e = row["settings"], row["estimate"]
    return (f"| {row['index']} | {row['model']} | {s['quantization']} | {s['lora_r']} | "
            f"{s['max_length']} | {s['batch_size']} | {'on' if s['gradient_checkpointing'] else 'off'} | "
            f"{s['lora_dropout']} | {e['weights_gb']:.2f} | {e['activations_gb']:.2f} | {e['loading_gb']:.2f} | "
            f"{e['total_gb']:.2f} | "
            f"{row['measured_gb']:.2f} | {row['ratio']:.2f} | {row['seconds']:.0f} |")


HEADER = ("| # | model | quant | r | max len | batch | grad ckpt | dropout | est. weights | est. activations | "
          "est. loading | estimate (GB) | measured peak RSS (GB) | estimate / measured | wall (s) |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")


def _machine() -> dict[str, Any]:
    import bitsandbytes
    import peft
    import torch
    import transformers
    import trl

    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GB, 1),
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__,
                         "peft": peft.__version__, "bitsandbytes": bitsandbytes.__version__}}


def save(rows: list[dict[str, Any]], path: Path, seconds: float) -> dict[str, Any]:
    """Merge ``rows`` into the table at ``path`` (by index) and write it."""
    old = json.loads(path.read_text()) if path.exists() else {}
    merged = {row["index"]: row for row in old.get("runs", [])}
    merged.update({row["index"]: row for row in rows})
    table = {"what": "python -m bench memory: estimate_memory(config, 'cpu') vs the run's recorded peak RSS "
                     f"(ru_maxrss of a fresh child process), {STEPS} optimizer steps per run",
             "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"), "machine": _machine(),
             "last_run_seconds": round(seconds), "runs": [merged[i] for i in sorted(merged)]}
    path.write_text(json.dumps(table, indent=1) + "\n")
    return table


def reestimate(path: Path) -> dict[str, Any]:
    """Recompute the stored rows' estimates with the estimator as it is now (the measurements stay as measured)."""
    from engine.memory import estimate_bench_run

    table = json.loads(path.read_text())
    for row in table["runs"]:
        row["estimate"] = estimate_bench_run(row).components()
        row["ratio"] = round(row["estimate"]["total_gb"] / row["measured_gb"], 3)
    table["estimated"] = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    path.write_text(json.dumps(table, indent=1) + "\n")
    return table


def _summary(table: dict[str, Any]) -> None:
    print(HEADER)
    for row in table["runs"]:
        print(_line(row))
    ratios = [row["ratio"] for row in table["runs"]]
    print(f"estimate / measured over all {len(ratios)} stored rows: {min(ratios):.2f} – {max(ratios):.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench memory", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help="comma-separated row indices (default: the whole matrix)")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--reestimate", action="store_true",
                        help="only recompute the stored rows' estimates with the current estimator (no training)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--build", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.build:
        build_model(args.build[0], Path(args.build[1]))
        print("RESULT {}", flush=True)
        return 0
    if args.child:
        print("RESULT " + json.dumps(child(json.loads(args.child))), flush=True)
        return 0
    if args.reestimate:
        _summary(reestimate(args.out))
        return 0
    indices = [int(i) for i in args.only.split(",")] if args.only else list(range(len(MATRIX)))
    started = time.perf_counter()
    print(HEADER, flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        rows = run_matrix(indices, Path(tmp))
    table = save(rows, args.out, time.perf_counter() - started)
    print(f"\n{len(rows)} run(s) in {time.perf_counter() - started:.0f} s; table: {args.out}\n")
    _summary(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
