"""``python -m bench gpu``: QLoRA SFT and DPO throughput on a GPU, the app's recipe against plain TRL, in one run.

Models are built from a config with random weights (seed 0) in real shapes — SmolLM2-135M's, Qwen3-0.6B's and
Qwen2.5-1.5B's (the Hub checkpoints' ``config.json``) — and the bundled SmolLM2-135M where its weights are on the
machine: speed and memory do not depend on the weight values. Each model is saved (bf16, with the bundled SmolLM2
tokenizer, whose ids fit every vocabulary here) as the bundled model's folder of its own models directory, so the
app trains it through its own path, and loaded by both arms in NF4 with double quantisation (bitsandbytes).

The data is synthetic, identical for both arms: alpaca rows whose answers are spans of this repository's own
documentation (real English, markdown) with a log-normal length (median about 110 words, 8 to 400; about 295
tokens on average with the chat template): short rows of uneven length, as chat SFT data is. 32 other rows are
held out.

(a) plain: what a user copying TRL's SFT + PEFT docs runs: ``SFTTrainer`` defaults (no packing, batch 8 padded to
    its longest row, gradient checkpointing on, fused AdamW, max length 1024), ``LoraConfig(r=16, lora_alpha=32,
    lora_dropout=0.05, target_modules="all-linear")``, learning rate 2e-4; bf16 where the card has it, else fp16.
(b) app: the app's own trainer (``engine.train.build_sft_trainer``: padding-free best-fit packing, the optimizer
    ``auto`` resolves to, Liger kernels when the engine turns them on) from its ``balanced-gpu-qlora`` preset, one
    epoch, no validation split, gradient accumulation 1, the batch chosen from free GPU memory with
    ``engine.memory.estimate_memory`` (gradient checkpointing only when no batch fits without it).
Each feature that needs CUDA is recorded per row as "used: ..." or "not used: <reason>".

DPO (``method: dpo`` rows), on the smaller shapes only (``DPO_MODELS``: SmolLM2-135M's and Qwen3-0.6B's; the 1.5B
shape and the bundled model, the 135M shape again, would not fit the 8-minute budget next to their SFT runs): the
same NF4 model, preference pairs built from the same doc-span generator (prompt: the row's instruction; chosen: its
answer; rejected: the same words shuffled, so both answers have equal length and vocabulary), 32 other pairs held
out, one epoch (equal pairs), each method in its own child process:
(a) plain: ``DPOTrainer`` with ``DPOConfig`` defaults (batch 8, each pair padded to the batch's longest sequence,
    gradient checkpointing on, sigmoid loss, β 0.1), the LoRA of TRL's PEFT docs as in ``bench/dpo.py``
    (``r=32, lora_alpha=16, lora_dropout=0.05``), learning rate 2e-4, conversational rows (TRL renders the chat
    template); bf16 where the card has it, else fp16.
(b) app: ``engine.preference.build_preference_trainer`` on a job with method ``dpo`` of the ``balanced-gpu-qlora``
    preset (on the CPU smoke ``bench.dpo.APP_PRESET``), with the same overrides and batch choice as its SFT arm
    (the memory estimate counts two sequences per pair); our own token ids.
DPO figures: real tokens (TRL's count: both sequences of each pair, prompt included), tokens/s, peak memory as for
SFT, and after equal pairs TRL's DPO loss, reward accuracy and margin on the held-out pairs (``trainer.evaluate``,
each arm's own trainer and tokens; ``held_out_loss`` holds the DPO loss on those rows).

Equal tokens: both arms train one epoch over the same rows. Figures: real (non-pad) tokens trained (TRL's count),
tokens/s over ``trainer.train()`` (and steady, from the 4th logged step on), peak memory (CUDA: peak allocated,
weights included; CPU: peak resident set above the arm's start, sampled), and the loss after equal tokens: the
mean loss on the assistant tokens of the held-out rows, computed the same way for both arms.

Each model and method runs in a fresh child process (plain first, so no kernel patch of the app arm reaches it). On
CUDA the results go to ``bench/gpu_results.json``; ``--smoke`` runs a tiny 2-layer model on the CPU for a few steps
per arm, SFT (16 rows) then DPO (8 shorter pairs) in one child (a test of the mechanics, not a measurement) and
writes only where ``--out`` says.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.dpo import APP_PRESET as CPU_DPO_PRESET
from bench.dpo import _messages
from bench.train import _real_tokens

REPO = Path(__file__).resolve().parents[1]
RESULTS_JSON = REPO / "bench" / "gpu_results.json"
PUBLISHED_QWEN3_TPS = 18_000  # QLoRA Qwen3-0.6B NF4 on an H200 (Unsloth, Surogate)
MAX_LENGTH = 1024
EVAL_ROWS = 32
GB = 1024**3
BUNDLED_FOLDER = "SmolLM2-135M-Instruct"
TEXT_FILES = ("README.md", "ARCHITECTURE.md", "docs")

# Real shapes (the Hub checkpoints' config.json): architecture, config fields; all tie their embeddings.
SHAPES: dict[str, tuple[str, dict[str, Any]]] = {
    "SmolLM2-135M": ("llama", {"hidden_size": 576, "num_hidden_layers": 30, "num_attention_heads": 9,
                               "num_key_value_heads": 3, "intermediate_size": 1536, "vocab_size": 49152,
                               "rope_theta": 100000.0, "rms_norm_eps": 1e-5}),
    "Qwen3-0.6B": ("qwen3", {"hidden_size": 1024, "num_hidden_layers": 28, "num_attention_heads": 16,
                             "num_key_value_heads": 8, "head_dim": 128, "intermediate_size": 3072,
                             "vocab_size": 151936, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6}),
    "Qwen2.5-1.5B": ("qwen2", {"hidden_size": 1536, "num_hidden_layers": 28, "num_attention_heads": 12,
                               "num_key_value_heads": 2, "intermediate_size": 8960, "vocab_size": 151936,
                               "rope_theta": 1000000.0, "rms_norm_eps": 1e-6}),
}
SMOKE_LENGTHS = {"median": 15, "longest": 40}  # words: the smoke's rows are short, its steps fast
SMOKE_DPO_LENGTHS = {"median": 10, "longest": 20}  # DPO's full-vocabulary logits of two sequences: shorter still
SMOKE_SHAPE = ("llama", {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                         "num_key_value_heads": 2, "intermediate_size": 128})
# For sizing the plan only (rows per model): cautious guesses of the plain recipe's tokens/s on an H200.
PLAIN_TPS_GUESS = {"SmolLM2-135M": 12_000, "bundled": 12_000, "Qwen3-0.6B": 5_000, "Qwen2.5-1.5B": 2_500}
DPO_MODELS = ("SmolLM2-135M", "Qwen3-0.6B")  # the shapes DPO runs on (see the module doc)
DPO_SPEED = 0.6  # for sizing: DPO's tokens/s against SFT's (a reference forward pass, padded pairs)
TOKENS_PER_PAIR = 600  # the synthetic pairs' mean real tokens: two sequences of prompt + answer
SETUP_S = 25  # per model: child start, imports, building, saving and quantising the model, held-out loss


# ----------------------------------------------------------------------------------------------- data


def source_words() -> list[str]:
    """The words of this repository's documentation, in order: real English for the synthetic answers."""
    words: list[str] = []
    for name in TEXT_FILES:
        path = REPO / name
        for file in sorted(path.rglob("*.md")) if path.is_dir() else [path]:
            words += file.read_text(encoding="utf-8").split()
    return words


def synthetic_rows(count: int, seed: int, words: list[str], median: int = 110, longest: int = 400
                   ) -> list[dict[str, str]]:
    """Alpaca rows: a short instruction and an answer that is a span of real text, log-normal in length."""
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        length = min(longest, max(8, round(rng.lognormvariate(math.log(median), 0.8))))
        start = rng.randrange(0, max(1, len(words) - length))
        topic = " ".join(words[start:start + 3])
        rows.append({"instruction": f"Write note {i} about: {topic}", "input": "",
                     "output": " ".join(words[start:start + length])})
    return rows


def synthetic_pairs(count: int, seed: int, words: list[str], **lengths: int) -> list[dict[str, str]]:
    """Preference pairs from the same rows: the answer is chosen, the same words shuffled are rejected."""
    rng = random.Random(seed)
    pairs = []
    for row in synthetic_rows(count, seed, words, **lengths):
        shuffled = row["output"].split()
        rng.shuffle(shuffled)
        pairs.append({"prompt": row["instruction"], "chosen": row["output"], "rejected": " ".join(shuffled)})
    return pairs


def conversational_pairs(path: Path) -> Any:
    """The pairs of ``path`` as TRL's conversational rows (prompt / chosen / rejected messages), as ``bench dpo``."""
    from datasets import Dataset

    from engine import data

    return Dataset.from_list([{"prompt": _messages(p.prompt), "chosen": _messages([p.chosen]),
                               "rejected": _messages([p.rejected])} for p in data.prepare_preferences(path).pairs])


# ------------------------------------------------------------------------------------------- measuring


class PeakMemory:
    """Peak memory of one arm: CUDA peak allocated (reset at the start), or on CPU the sampled peak resident set
    above what the process held at the start (``ru_maxrss`` cannot be reset between two arms of one process)."""

    def __init__(self, device: str):
        self.device = device
        self._peak = 0
        self._stop = threading.Event()

    def __enter__(self) -> PeakMemory:
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            return self
        import psutil

        process = psutil.Process()
        self._start = self._peak = process.memory_info().rss

        def sample() -> None:
            while not self._stop.wait(0.01):
                self._peak = max(self._peak, process.memory_info().rss)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()
            self._peak = torch.cuda.max_memory_allocated()
            return
        self._stop.set()
        self._thread.join()

    @property
    def kind(self) -> str:
        return "cuda_max_allocated" if self.device == "cuda" else "cpu_rss_delta_sampled"

    @property
    def gb(self) -> float:
        return (self._peak if self.device == "cuda" else self._peak - self._start) / GB


def step_clock(cap_s: float, token_cap: float) -> Any:
    """A callback recording when each step ended and TRL's running count of real tokens; it stops the run past a
    time cap (the safety that keeps a whole run inside its budget) or once ``token_cap`` real tokens are trained
    (the app's arm, when the plain arm was stopped by its cap: equal tokens, within one step)."""
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def __init__(self) -> None:
            self.marks: list[tuple[float, float]] = []  # (time, real tokens so far) at each logged step
            self.capped = False
            self._t0 = time.perf_counter()

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self._t0 = time.perf_counter()

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
            if logs and "num_tokens" in logs:
                self.marks.append((time.perf_counter(), float(logs["num_tokens"])))
                if self.marks[-1][1] >= token_cap:
                    control.should_training_stop = True

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if time.perf_counter() - self._t0 > cap_s:
                self.capped = control.should_training_stop = True

    return StepClock()


def steady_tps(marks: list[tuple[float, float]], skip: int = 3) -> float | None:
    """Tokens/s from the ``skip``-th logged step to the last: without the first steps' compilation and warm-up."""
    if len(marks) <= skip + 1:
        return None
    (t0, n0), (t1, n1) = marks[skip], marks[-1]
    return (n1 - n0) / (t1 - t0) if t1 > t0 else None


def pad_tokens(trainer: Any) -> tuple[int, int]:
    """Positions and pad positions the trainer's batches hold over one epoch (its own collator, no model)."""
    total = pads = 0
    for batch in trainer.get_train_dataloader():
        total += batch["input_ids"].numel()
        if "attention_mask" in batch:
            pads += int(batch["input_ids"].numel() - batch["attention_mask"].sum())
    return total, pads


def held_out_loss(model: Any, tokenizer: Any, eval_file: Path, device: str, max_length: int) -> float:
    """Mean loss over the assistant tokens of the held-out rows, through the app's own encoding (both arms)."""
    import torch

    from engine import data

    examples = data.encode_examples(tokenizer, data.prepare(eval_file).examples, max_length)
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for example in examples:
            ids = torch.tensor([example.input_ids], device=device)
            labels = torch.tensor([[t if m else -100 for t, m in zip(example.input_ids, example.assistant_masks,
                                                                      strict=True)]], device=device)
            n = int((labels[:, 1:] != -100).sum())
            total, count = total + float(model(input_ids=ids, labels=labels).loss) * n, count + n
    return total / max(1, count)


def dataset_tokens(dataset: Any) -> int:
    """Real tokens of one epoch: SFT rows, or DPO pairs (both sequences, the prompt in each)."""
    if "input_ids" in dataset.column_names:
        return _real_tokens(dataset)
    return sum(2 * len(p) + len(c) + len(r) for p, c, r in
               zip(dataset["prompt_ids"], dataset["chosen_ids"], dataset["rejected_ids"], strict=True))


def dpo_held_out(trainer: Any, eval_dataset: Any = None) -> dict[str, float]:
    """TRL's DPO loss, reward accuracy and margin on the held-out pairs, from the arm's own trainer."""
    metrics = trainer.evaluate(eval_dataset)
    return {"held_out_loss": metrics["eval_loss"], "held_out_reward_accuracy": metrics["eval_rewards/accuracies"],
            "held_out_reward_margin": metrics["eval_rewards/margins"]}


def train_measured(trainer: Any, device: str, cap_s: float, token_cap: float,
                   held_out: Callable[[], dict[str, float]]) -> dict[str, Any]:
    """One arm's training and figures (the trainer already built), then ``held_out``'s."""
    import torch

    positions, pads = pad_tokens(trainer)
    clock = step_clock(cap_s, token_cap)
    trainer.add_callback(clock)
    with PeakMemory(device) as peak:
        start = time.perf_counter()
        trainer.train()
        if device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    tokens = int(getattr(trainer, "_total_train_tokens", 0))
    return {"tokens": tokens, "dataset_tokens": dataset_tokens(trainer.train_dataset), "seconds": seconds,
            "tokens_per_second": tokens / seconds, "steady_tokens_per_second": steady_tps(clock.marks),
            "steps": trainer.state.global_step, "planned_steps": trainer.state.max_steps,
            "stopped_at_cap": clock.capped, "batch_positions": positions, "pad_tokens": pads,
            "peak_memory_gb": peak.gb, "peak_memory_kind": peak.kind, **held_out()}


def sft_held_out(trainer: Any, tokenizer: Any, eval_file: Path, device: str) -> Callable[[], dict[str, float]]:
    return lambda: {"held_out_loss": held_out_loss(trainer.model, tokenizer, eval_file, device,
                                                   trainer.args.max_length)}


def adapters_to_float32(trainer: Any) -> None:
    """TRL casts QLoRA adapters to bf16: emulated on a CPU; keep them fp32 there."""
    import torch

    for param in trainer.model.parameters():
        if param.requires_grad:
            param.data = param.data.to(torch.float32)


def free_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------------------ arms


def run_plain(train_file: Path, eval_file: Path, out: Path, device: str, cap_s: float,
              max_length: int = MAX_LENGTH) -> dict[str, Any]:
    """TRL's documented SFT + PEFT QLoRA recipe (see the module doc)."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from engine import data
    from engine.models import load_base_model, load_tokenizer, pick_dtype

    dtype = pick_dtype(device)
    tokenizer = load_tokenizer()
    conversations = [{"messages": [{"role": m.role, "content": m.content} for m in ex.messages]}
                     for ex in data.prepare(train_file).examples]
    model = load_base_model(quantization="4bit", device=device)
    args = SFTConfig(output_dir=str(out), max_length=max_length, packing=False, learning_rate=2e-4,
                     num_train_epochs=1, use_cpu=device == "cpu", bf16=dtype == torch.bfloat16,
                     fp16=dtype == torch.float16, report_to="none", save_strategy="no", disable_tqdm=True,
                     logging_steps=1, seed=0, data_seed=0)
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(conversations),
                         processing_class=tokenizer, peft_config=lora)
    if dtype == torch.float32:
        adapters_to_float32(trainer)
    result = train_measured(trainer, device, cap_s, float("inf"), sft_held_out(trainer, tokenizer, eval_file, device))
    result["settings"] = {k: str(getattr(args, k)) for k in REPORTED}
    return result


def run_plain_dpo(train_file: Path, eval_file: Path, out: Path, device: str, cap_s: float,
                  max_length: int = MAX_LENGTH) -> dict[str, Any]:
    """TRL's documented DPO + PEFT recipe on the same NF4 model (see the module doc)."""
    import torch
    from peft import LoraConfig
    from trl import DPOConfig, DPOTrainer

    from engine.models import load_base_model, load_tokenizer, pick_dtype

    dtype = pick_dtype(device)
    tokenizer = load_tokenizer()
    model = load_base_model(quantization="4bit", device=device)
    args = DPOConfig(output_dir=str(out), max_length=max_length, learning_rate=2e-4, num_train_epochs=1,
                     use_cpu=device == "cpu", bf16=dtype == torch.bfloat16, fp16=dtype == torch.float16,
                     report_to="none", save_strategy="no", disable_tqdm=True, logging_steps=1, seed=0, data_seed=0)
    lora = LoraConfig(r=32, lora_alpha=16, lora_dropout=0.05, bias="none", task_type="CAUSAL_LM")
    trainer = DPOTrainer(model=model, args=args, train_dataset=conversational_pairs(train_file),
                         eval_dataset=conversational_pairs(eval_file), processing_class=tokenizer, peft_config=lora)
    if dtype == torch.float32:
        adapters_to_float32(trainer)
    result = train_measured(trainer, device, cap_s, float("inf"), lambda: dpo_held_out(trainer))
    result["settings"] = {k: str(getattr(args, k, None)) for k in REPORTED + DPO_REPORTED}
    return result


REPORTED = ("per_device_train_batch_size", "gradient_accumulation_steps", "learning_rate", "packing",
            "padding_free", "gradient_checkpointing", "bf16", "fp16", "max_length", "optim", "use_liger_kernel")
DPO_REPORTED = ("beta", "loss_type")


def choose_batch(config: Any, device: str, max_batch: int) -> tuple[Any, dict[str, str]]:
    """The largest batch (of packed ``max_length`` sequences) whose memory estimate fits 80% of the free GPU
    memory, without gradient checkpointing if any batch fits so; on CPU the preset's batch, unchanged."""
    if device != "cuda":
        return config, {"batch_from_free_memory": f"not used: no CUDA (the preset's batch {config.batch_size})",
                        "gradient_checkpointing_when_needed": "not used: no CUDA (the preset's setting, "
                                                              f"{config.gradient_checkpointing})"}
    import torch

    from engine.memory import comparable_gb, estimate_memory

    free_gb = torch.cuda.mem_get_info()[0] / GB
    sizes = [b for b in (64, 32, 16, 8, 4, 2, 1) if b <= max_batch]
    for checkpointing in (False, True):
        for batch in sizes:
            candidate = config.replace(batch_size=batch, gradient_checkpointing=checkpointing)
            need = comparable_gb(estimate_memory(candidate, "cuda"), "cuda_max_allocated")
            if need <= 0.8 * free_gb:
                why = "needed: no batch fits without it" if checkpointing else "off: the batch fits without it"
                return candidate, {"batch_from_free_memory": f"used: batch {batch} (estimate {need:.1f} GB of "
                                                             f"{free_gb:.1f} GB free, cap {max_batch})",
                                   "gradient_checkpointing_when_needed": f"used: {why}"}
    candidate = config.replace(batch_size=1, gradient_checkpointing=True)
    return candidate, {"batch_from_free_memory": f"used: batch 1 (nothing fits {free_gb:.1f} GB free by the estimate)",
                       "gradient_checkpointing_when_needed": "used: needed"}


def app_config(device: str, max_batch: int, max_length: int, method: str = "sft") -> tuple[Any, dict[str, str]]:
    from engine.config import load_preset
    from engine.models import BUNDLED_ID

    dpo = method == "dpo"
    preset = "balanced-gpu-qlora" if device == "cuda" else CPU_DPO_PRESET if dpo else "quick-cpu-demo"
    extra: dict[str, Any] = {"method": "dpo"} if dpo else {"packing": True}
    config = load_preset(preset).replace(base_model=BUNDLED_ID, quantization="4bit", max_length=max_length,
                                         max_steps=-1, num_epochs=1.0, val_fraction=0.0, grad_accum=1,
                                         save_steps=100_000, learning_rate=2e-4, seed=0, **extra)
    config, features = choose_batch(config, device, max_batch)
    return config, {"preset": preset, **features}


def run_app(train_file: Path, eval_file: Path, out: Path, device: str, cap_s: float, max_batch: int,
            token_cap: float, max_length: int = MAX_LENGTH, method: str = "sft") -> dict[str, Any]:
    """The app's own trainer (``engine.train.build_sft_trainer``, or for DPO
    ``engine.preference.build_preference_trainer``) on a job of its preset (see the module doc)."""
    from engine.events import EventLog
    from engine.jobs import JobStore
    from engine.models import pick_dtype
    from engine.preference import build_preference_trainer
    from engine.train import Interruption, build_sft_trainer

    config, features = app_config(device, max_batch, max_length, method)
    job = JobStore(out / "home").submit(config, train_file, start=False, run_dir=out / "run")
    dtype = pick_dtype(device, config.dtype)
    build = build_preference_trainer if method == "dpo" else build_sft_trainer
    setup = build(job, None, None, EventLog(job.events_path), device, dtype, Interruption())
    trainer = setup.trainer
    held_out = (app_dpo_held_out(trainer, setup.tokenizer, eval_file, max_length) if method == "dpo" else
                sft_held_out(trainer, setup.tokenizer, eval_file, device))
    result = train_measured(trainer, device, cap_s, token_cap, held_out)
    result["settings"] = {k: str(getattr(trainer.args, k, None))
                          for k in REPORTED + (DPO_REPORTED if method == "dpo" else ())}
    result["settings"]["batch_size"] = config.batch_size
    result["features"] = {**features, **app_features(trainer, device, dtype)}
    if method == "dpo":
        result["features"]["padding_free_packing"] = ("not used: DPO pads each batch's pairs (TRL's DPOTrainer has "
                                                      "no padding-free path)")
    return result


def app_dpo_held_out(trainer: Any, tokenizer: Any, eval_file: Path, max_length: int) -> Callable[[], dict[str, float]]:
    """The held-out pairs in the app's own token ids, scored by its trainer."""
    from datasets import Dataset

    from engine import data
    from engine.preference import encoded_rows

    rows = encoded_rows("pairs", tokenizer, data.prepare_preferences(eval_file).pairs, max_length)
    return lambda: dpo_held_out(trainer, Dataset.from_list(rows))


def app_features(trainer: Any, device: str, dtype: Any) -> dict[str, str]:
    """What the app's arm actually ran with, read from the built trainer and model."""
    import importlib.util

    import torch

    no_cuda = device != "cuda"
    liger = importlib.util.find_spec("liger_kernel") is not None
    flash = importlib.util.find_spec("flash_attn") is not None
    attention = getattr(trainer.model.config, "_attn_implementation", None) or "default"
    if "flash" not in attention:
        attention += " (flash-attn " + ("importable, not asked for by the engine)" if flash else "not installed)")
    optim = str(trainer.args.optim).split(".")[-1].lower()
    precision = {torch.bfloat16: "bf16", torch.float16: "fp16 (the card has no bf16)"}.get(dtype)
    return {
        "padding_free_packing": ("used: best-fit packing, one row per batch (position ids)"
                                 if getattr(trainer, "padding_free", False) else "not used: the engine did not pack"),
        "attention": attention,
        "half_precision": "not used: no CUDA (fp32)" if no_cuda else f"used: {precision}",
        "liger_kernel": ("not used: no CUDA" if no_cuda else "used" if trainer.args.use_liger_kernel else
                         "not used: " + ("the engine did not turn it on" if liger else "liger-kernel not installed")),
        "paged_adamw_8bit": ("not used: no CUDA (" + optim + ")" if no_cuda else
                             "used" if optim == "paged_adamw_8bit" else f"not used: {optim}"),
    }


# ---------------------------------------------------------------------------------------------- models


def build_model(name: str, folder: Path, tokenizer: Any, device: str) -> dict[str, Any]:
    """A random-weight model of shape ``name`` (seed 0), saved in bf16 with ``tokenizer`` as ``folder``."""
    import torch
    from transformers import LlamaConfig, Qwen2Config, Qwen3Config

    arch, fields = SMOKE_SHAPE if name == "smoke" else SHAPES[name]
    fields = {**fields, "vocab_size": max(fields.get("vocab_size", 0), len(tokenizer))}
    config_class = {"llama": LlamaConfig, "qwen2": Qwen2Config, "qwen3": Qwen3Config}[arch]
    config = config_class(**fields, tie_word_embeddings=True, max_position_embeddings=32768,
                          bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                          pad_token_id=tokenizer.pad_token_id)
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    params = sum(p.numel() for p in model.parameters())
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    del model
    free_memory()
    return {"architecture": arch, "parameters": params, **fields}


def prepare_model(name: str, models: Path, device: str) -> dict[str, Any] | str:
    """Point the app's models directory at ``models`` holding model ``name`` as the bundled folder; the shape,
    or why the model cannot run here (the bundled weights when they are not on this machine)."""
    from engine.models import bundled_model_dir, load_tokenizer

    if name == "bundled":
        try:
            folder = bundled_model_dir()
        except Exception as exc:
            return f"skipped: the bundled model is not on this machine ({type(exc).__name__})"
        if not any(folder.glob("*.safetensors")):
            return "skipped: only the bundled tokenizer is on this machine, not its weights"
        (models / BUNDLED_FOLDER).symlink_to(folder, target_is_directory=True)
        shape = {"architecture": "llama", "real weights": True, **SHAPES["SmolLM2-135M"][1]}
    else:
        shape = build_model(name, models / BUNDLED_FOLDER, load_tokenizer(), device)
    os.environ["TUNE_STUDIO_MODELS"] = str(models)
    return shape


def run_model(spec: dict[str, Any]) -> dict[str, Any]:
    """Both arms of one method on one model, in this (fresh) process: plain first, then the app."""
    from engine.models import pick_device

    device = pick_device("auto")
    out = Path(spec["out"])
    models = out / "models"
    models.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    shape = prepare_model(spec["model"], models, device)
    method = spec.get("method", "sft")
    if isinstance(shape, str):
        return {"model": spec["model"], "method": method, "skipped": shape}
    words = source_words()
    train_file, eval_file = out / "train.json", out / "eval.json"
    lengths = {} if spec["model"] != "smoke" else SMOKE_DPO_LENGTHS if method == "dpo" else SMOKE_LENGTHS
    make = synthetic_pairs if method == "dpo" else synthetic_rows
    train_file.write_text(json.dumps(make(spec["rows"], 1, words, **lengths)))
    eval_file.write_text(json.dumps(make(spec.get("eval_rows", EVAL_ROWS), 2, words, **lengths)))
    max_length = spec.get("max_length", MAX_LENGTH)
    row: dict[str, Any] = {"model": spec["model"], "method": method, "device": device,
                           "device_name": device_name(device), "shape": shape, "rows": spec["rows"],
                           "max_length": max_length, "build_seconds": time.perf_counter() - start}
    plain_arm = run_plain_dpo if method == "dpo" else run_plain
    row["plain"] = plain_arm(train_file, eval_file, out / "plain", device, spec["cap_s"], max_length)
    free_memory()
    plain = row["plain"]
    token_cap = plain["tokens"] if plain["stopped_at_cap"] else float("inf")  # equal tokens (and so pairs)
    row["app"] = run_app(train_file, eval_file, out / "app", device, spec["cap_s"], spec["max_batch"], token_cap,
                         max_length, method)
    free_memory()
    row["ratios"] = ratios(row["plain"], row["app"])
    return row


def device_name(device: str) -> str:
    import platform

    import torch

    return torch.cuda.get_device_name(0) if device == "cuda" else f"CPU ({platform.processor() or platform.machine()})"


def ratios(plain: dict[str, Any], app: dict[str, Any]) -> dict[str, float | None]:
    """app / plain; the goal: tokens/s ≥ 2, peak memory ≤ 0.6, held-out loss about 1."""
    def ratio(key: str) -> float | None:
        a, p = app.get(key), plain.get(key)
        return a / p if a is not None and p else None

    return {"tokens_per_second": ratio("tokens_per_second"),
            "steady_tokens_per_second": ratio("steady_tokens_per_second"),
            "peak_memory": ratio("peak_memory_gb"), "held_out_loss": ratio("held_out_loss")}


# ------------------------------------------------------------------------------------------------ plan


def plan(models: list[str], budget_s: float, smoke: bool, dpo_models: tuple[str, ...] = DPO_MODELS
         ) -> list[dict[str, Any]]:
    """Each run (a model's SFT, and its DPO for the models in ``dpo_models``: each in its own child process) gets
    an equal share of the budget, its setup included. Rows (pairs) are sized so that the plain arm takes about
    35% of the training share by cautious guesses of its speed (the app's arm, half that by the goal); a time cap
    of half the share per arm keeps the whole run inside the budget if a guess is wrong. A capped plain arm is
    marked so, and the app's arm then stops at the same number of real tokens."""
    if smoke:
        tiny = {"model": "smoke", "eval_rows": 4, "cap_s": 60.0, "max_batch": 8, "max_length": 256}
        return [{**tiny, "method": "sft", "rows": 16}, {**tiny, "method": "dpo", "rows": 8}]
    runs = [(name, "sft") for name in models] + [(name, "dpo") for name in models if name in dpo_models]
    share = max(30.0, budget_s / len(runs) - SETUP_S)
    tokens_per_row = 300  # the synthetic rows' mean (295 tokens with the chat template)

    def rows(name: str, method: str) -> int:
        if method == "dpo":
            return max(32, int(share * 0.35 * PLAIN_TPS_GUESS[name] * DPO_SPEED / TOKENS_PER_PAIR))
        return max(64, int(share * 0.35 * PLAIN_TPS_GUESS[name] / tokens_per_row))

    return [{"model": name, "method": method, "rows": rows(name, method), "cap_s": share * 0.5, "max_batch": 8}
            for name, method in runs]


def spawn(specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Runs ``specs`` one after the other in one fresh child process; a row per spec (failed ones say so)."""
    cmd = [sys.executable, "-m", "bench.gpu", "--child", json.dumps(specs)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    rows = [json.loads(line[len("RESULT "):]) for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    return rows + [{"model": spec["model"], "method": spec.get("method", "sft"), "failed": proc.stderr[-3000:]}
                   for spec in specs[len(rows):]]


def table(rows: list[dict[str, Any]]) -> str:
    """The printed (and RESULTS.md) table: one line per model, method and arm (held-out loss: SFT's, or for DPO
    TRL's DPO loss, next to the held-out reward accuracy)."""
    lines = ["| model | method | arm | real tokens | pad tokens | tokens/s | steady tokens/s | peak GB | held-out loss "
             "| reward accuracy |", "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        name = f"| {row['model']} | {row.get('method', 'sft')} |"
        if "plain" not in row:
            lines.append(f"{name} — | {row.get('skipped') or 'failed'} | | | | | | |")
            continue
        for arm in ("plain", "app"):
            r = row[arm]
            steady, accuracy = r["steady_tokens_per_second"], r.get("held_out_reward_accuracy")
            lines.append(f"{name} {arm} | {r['tokens']:,} | {r['pad_tokens']:,} | "
                         f"{r['tokens_per_second']:,.0f} | {'—' if steady is None else f'{steady:,.0f}'} | "
                         f"{r['peak_memory_gb']:.2f} | {r['held_out_loss']:.3f} | "
                         f"{'—' if accuracy is None else f'{accuracy:.2f}'} |")
        q = {k: "—" if v is None else f"{v:.2f}×" for k, v in row["ratios"].items()}
        lines.append(f"{name} app / plain | | | {q['tokens_per_second']} | "
                     f"{q['steady_tokens_per_second']} | {q['peak_memory']} | {q['held_out_loss']} | |")
    return "\n".join(lines)


def summary(rows: list[dict[str, Any]], budget_s: float, seconds: float) -> dict[str, Any]:
    qwen = next((r for r in rows if r["model"] == "Qwen3-0.6B" and r.get("method") == "sft" and "app" in r), None)
    published = None
    if qwen is not None:
        tps = qwen["app"]["steady_tokens_per_second"] or qwen["app"]["tokens_per_second"]
        published = {"app_tokens_per_second": tps, "published": PUBLISHED_QWEN3_TPS,
                     "ratio": tps / PUBLISHED_QWEN3_TPS}
    return {"budget_s": budget_s, "seconds": seconds, "rows": rows,
            "qwen3_0_6b_vs_published": published}


HEADING = "## GPU throughput (python -m bench gpu)"


def results_block(result: dict[str, Any]) -> str:
    """The RESULTS.md section of a CUDA run: conditions, the table, the app arm's features, the published figure."""
    rows = result["rows"]
    measured = next((r for r in rows if "app" in r), {})
    lines = [f"{HEADING}\n", f"Measured by `python -m bench gpu` on {measured.get('device_name', '?')} in "
             f"{result['seconds']:.0f} s (budget {result['budget_s']:.0f} s); arms and data as the module doc of "
             "`bench/gpu.py` says; every figure in `bench/gpu_results.json`. Real tokens are non-pad tokens; peak is "
             "`torch.cuda.max_memory_allocated` (weights included); held-out loss is on 32 other rows after one "
             "epoch (equal tokens); for DPO rows it is TRL's DPO loss on 32 held-out pairs, next to their reward "
             "accuracy.\n", table(rows), ""]
    for row in rows:
        if "app" in row:
            features = "; ".join(f"{k}: {v}" for k, v in row["app"]["features"].items())
            lines.append(f"- {row['model']} {row.get('method', 'sft').upper()}, app arm: {features}.")
    published = result.get("qwen3_0_6b_vs_published")
    if published:
        lines.append(f"- Qwen3-0.6B, app arm: {published['app_tokens_per_second']:,.0f} tokens/s against the "
                     f"published {PUBLISHED_QWEN3_TPS:,} (ratio {published['ratio']:.2f}; the goal is ≥ 0.8).")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench gpu", description=__doc__)
    parser.add_argument("--models", default="SmolLM2-135M,Qwen3-0.6B,Qwen2.5-1.5B,bundled",
                        help="comma-separated: " + ", ".join([*SHAPES, "bundled"]))
    parser.add_argument("--dpo-models", default=",".join(DPO_MODELS),
                        help="comma-separated: the models that also run DPO (empty: none)")
    parser.add_argument("--budget-s", type=float, default=420.0, help="the whole run's time budget, seconds")
    parser.add_argument("--smoke", action="store_true", help="a tiny model on the CPU, a few steps per arm")
    parser.add_argument("--out", type=Path, help="results file (default: bench/gpu_results.json on CUDA only)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        for spec in json.loads(args.child):
            print("RESULT " + json.dumps(run_model(spec), default=str), flush=True)
            free_memory()
        return 0
    specs = plan(args.models.split(","), args.budget_s, args.smoke, tuple(filter(None, args.dpo_models.split(","))))
    print("plan:", json.dumps(specs), flush=True)
    start, rows = time.perf_counter(), []
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        specs = [{**spec, "out": str(Path(tmp) / f"{spec['model']}-{spec['method']}")} for spec in specs]
        # one child per run on a GPU (the app's kernel patches must not reach a later plain arm); the smoke's runs
        # share one (no CUDA, no patches; one start-up less)
        for group in [specs] if args.smoke else [[spec] for spec in specs]:
            rows += spawn(group)
            for row in rows[-len(group):]:
                print(json.dumps(row, default=str), flush=True)
    result = summary(rows, args.budget_s, time.perf_counter() - start)
    print(table(rows))
    print("Qwen3-0.6B app vs published:", json.dumps(result["qwen3_0_6b_vs_published"]))
    cuda = any(r.get("device") == "cuda" for r in rows)
    out = args.out or (RESULTS_JSON if cuda and not args.smoke else None)
    if out is not None:
        out.write_text(json.dumps(result, indent=2, default=str) + "\n")
        print("written:", out)
    if cuda and not args.smoke:
        from bench.results import replace_section

        replace_section(HEADING, results_block(result))
    return 0 if all("plain" in r or "skipped" in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
