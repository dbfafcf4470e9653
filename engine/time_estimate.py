"""How long a run will take on this device, before it starts: loading, then steps of a measured cost.

Only the bundled model on a CPU has measured figures (below); other models on a CPU are scaled by their
parameter count from them, which is rough, and on a GPU the time depends too much on the GPU to name a number.
A step's cost grows with the tokens it reads, batch size × gradient accumulation × max length (packing fills
sequences up to max length, so that is what a step really computes), plus a fixed cost per micro-batch (the
4-bit weights are turned back into numbers once per forward and backward pass, whatever the batch holds).
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.config import TrainConfig, eval_interval
from engine.models import BUNDLED_ID, local_model_info

# Measured 2026-12-02 on the development machine (x86_64, 2 cores with AVX2, no GPU, 24 GB; torch 2.13 CPU,
# transformers 5.23, TRL 1.16, bitsandbytes 0.50), the bundled SmolLM2-135M-Instruct in 4 bit, through
# `python -m engine train --preset taste-cpu --data ui/demo_data/tune_studio_faq.json` (the real job path: a
# worker process; phases timed by its events, its CPU time read from /proc every second). The figures are for
# a machine with about one core free for the run (a laptop doing other things, or another process keeping one
# core busy), i.e. the worker's CPU-seconds: 138 for the whole taste run. Other sessions kept this machine
# busier (load average 5-7), where the same run took 231 s of wall time; on a calm machine it is faster.
# - from Start to the first training step: worker start and imports, tokenizer, data, 4-bit weights, trainer,
#   and the first step's warm-up (18.7 + 5.6 CPU-seconds; 13.8 s of wall time at load average 2):
CPU_LOAD_S = 25.0
# - converting the bundled GGUF file the first time it is used (once per machine; later loads skip it):
CPU_CONVERT_S = 30.0
# - one step: a fixed cost per micro-batch (4-bit weights dequantised in every forward and backward pass) plus a
#   cost per token: 9.5 CPU-seconds per step of one micro-batch of 2 × 128 tokens (steps 2-12: 104 CPU-seconds);
#   7 s of wall time for 2 micro-batches of 2 × 128 tokens on both cores at load average 2:
CPU_MICRO_BATCH_S = 1.0
CPU_S_PER_TOKEN = 0.028
# - one evaluation of the (capped) validation set, in training steps (5-30 s against 15-40 s steps at load 8):
CPU_EVAL_STEPS = 0.5
# - saving the adapter, its tokenizer and the run's records at the end (0.4 s; 12 s when a last checkpoint
#   was written first, which the trainer no longer does):
CPU_SAVE_S = 2.0
BUNDLED_PARAMS_B = 0.135


@dataclass(frozen=True)
class TimeEstimate:
    """Seconds per phase; ``step_s`` is None where no figure is honest (a GPU), ``steps`` None when the number
    of steps depends on the data (epochs instead of max steps)."""

    device: str
    load_s: float | None
    steps: int | None
    step_s: float | None
    eval_s: float = 0.0
    save_s: float = 0.0
    first_time_s: float = 0.0  # converting the bundled model, the first time only

    @property
    def total_s(self) -> float | None:
        if self.load_s is None or self.step_s is None or self.steps is None:
            return None
        return self.first_time_s + self.load_s + self.steps * self.step_s + self.eval_s + self.save_s


def tokens_per_step(config: TrainConfig) -> int:
    """Tokens one optimizer step reads at most: batch size × gradient accumulation × max length."""
    return config.batch_size * config.grad_accum * config.max_length


def cpu_step_seconds(config: TrainConfig, params_b: float = BUNDLED_PARAMS_B) -> float:
    """One optimizer step on this CPU: a fixed cost per micro-batch plus a cost per token, scaled by model size."""
    scale = max(params_b, 0.01) / BUNDLED_PARAMS_B
    return scale * (config.grad_accum * CPU_MICRO_BATCH_S + tokens_per_step(config) * CPU_S_PER_TOKEN)


def evaluations(config: TrainConfig, steps: int) -> int:
    """How many evaluations a run of ``steps`` makes (as ``engine.train.auto_eval_steps`` places them)."""
    if config.val_fraction <= 0:
        return 0
    interval = eval_interval(config, steps)
    return steps // interval + (1 if steps % interval else 0)


def estimate_time(config: TrainConfig, device: str, *, converted: bool = True) -> TimeEstimate:
    """The time a run of these settings takes on ``device`` ("cpu" or "cuda"); ``converted``: the bundled
    model is already converted on this machine (else its first-time conversion is added)."""
    steps = config.max_steps if config.max_steps > 0 else None
    if device != "cpu":
        return TimeEstimate(device, load_s=None, steps=steps, step_s=None)
    params_b = BUNDLED_PARAMS_B if config.base_model == BUNDLED_ID else local_model_info(config.base_model).params_b
    scale = max(params_b or BUNDLED_PARAMS_B, 0.01) / BUNDLED_PARAMS_B
    step_s = cpu_step_seconds(config, params_b or BUNDLED_PARAMS_B)
    eval_s = evaluations(config, steps) * CPU_EVAL_STEPS * step_s if steps is not None else 0.0
    first = CPU_CONVERT_S if config.base_model == BUNDLED_ID and not converted else 0.0
    return TimeEstimate("cpu", load_s=CPU_LOAD_S * max(1.0, scale), steps=steps, step_s=step_s, eval_s=eval_s,
                        save_s=CPU_SAVE_S, first_time_s=first)
