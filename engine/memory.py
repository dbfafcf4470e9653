"""How much memory a run will need, before it starts — and how that compared with what runs measured.

The estimate is a sum of what fills memory during LoRA training, each part from the model's shape and the
settings: frozen base weights, the adapter, optimizer state and gradients, activations (with the loss over
the vocabulary), the framework itself — and, on CPU, the model's checkpoint file while it loads, when that
is the larger moment. It is compared with what the device has.

How it was corrected: every finished run records its measured peak next to this estimate (``metrics.json``:
peak RSS on CPU, peak allocated on CUDA) and ``python -m bench memory`` keeps a committed table of measured
runs (``bench/memory_runs.json``, SmolLM2 135M/360M/1.7B shapes, 4-bit and full precision, ranks, lengths,
batch sizes, checkpointing on and off). On CPU the estimate is within ±25% of every row there (the test
``tests/test_memory_estimate.py`` holds it to that); :func:`memory_table` shows both per device. The CUDA
figures follow the same model with bf16 sizes but have not been measured yet.
"""

from __future__ import annotations

import json
import resource
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.config import TrainConfig
from engine.models import ModelInfo, info_from_config, local_model_info

GB = 1024**3
BENCH_RUNS = Path(__file__).resolve().parents[1] / "bench" / "memory_runs.json"

# The framework, before any model or batch. CPU: importing torch, transformers, TRL, PEFT and datasets measured
# 0.42 GB resident; the tokenizer, the tokenised data, the trainer and the heap the model load leaves behind
# (resident memory after loading minus imports and weights: 0.2-2.6 GB) bring it to this, fitted on the bench table.
# CUDA: the context and kernels, which ``max_memory_allocated`` does not see (runs' CUDA rows compare without it).
FRAMEWORK_OVERHEAD_GB = {"cpu": 1.4, "cuda": 0.8}
# CPU: glibc's allocator keeps freed activation-sized blocks resident, so peak RSS was 1.3-2.2x the live tensors
# (torch's memory profiler against ru_maxrss on the same step; with MALLOC_MMAP_THRESHOLD_=131072 a 2048-token
# step peaked at 3.1 GB instead of 5.3 GB). CUDA: PyTorch's caching allocator; max_memory_allocated counts tensors.
HEAP_FACTOR = {"cpu": 1.6, "cuda": 1.0}
# CPU, 4-bit: bitsandbytes' CPU path dequantises every weight to fp32 for each matmul — in the forward pass, the
# checkpointing recompute and the backward pass; the heap kept about this share of each pass's fp32 copy resident.
DEQUANT_HEAP = {"cpu": 0.15, "cuda": 0.0}
QUANTIZED_BYTES = {"4bit": 0.52, "8bit": 1.05}  # NF4: half a byte per weight + double-quantised block scales


@dataclass(frozen=True)
class MemoryEstimate:
    """Gigabytes per component, the device's capacity and whether the run fits.

    ``loading_gb`` is what only the model load needs beyond the weights (on CPU the mapped checkpoint file);
    the peak is the larger of loading and training, so ``total_gb`` is the overhead plus the larger of
    ``weights + loading`` and ``weights + adapter + optimizer + activations``. ``activations_gb`` is the
    training working memory: saved activations, the loss's tiles, and on CPU the heap the allocator keeps.
    """

    device: str
    weights_gb: float
    adapter_gb: float
    optimizer_gb: float
    activations_gb: float
    overhead_gb: float
    capacity_gb: float | None
    loading_gb: float = 0.0
    advice: list[str] = field(default_factory=list)

    @property
    def training_gb(self) -> float:
        """What the training steps hold at their peak (without the framework overhead)."""
        return self.weights_gb + self.adapter_gb + self.optimizer_gb + self.activations_gb

    @property
    def total_gb(self) -> float:
        return self.overhead_gb + max(self.training_gb, self.weights_gb + self.loading_gb)

    @property
    def fits(self) -> bool | None:
        return None if self.capacity_gb is None else self.total_gb <= 0.9 * self.capacity_gb

    def components(self) -> dict[str, float]:
        """The parts and the total in GB, rounded, as runs record them."""
        parts = ("weights_gb", "adapter_gb", "optimizer_gb", "activations_gb", "loading_gb", "overhead_gb",
                 "total_gb")
        return {name: round(getattr(self, name), 4) for name in parts}


def device_capacity_gb(device: str) -> float | None:
    """GPU memory of device 0, or the RAM available now on CPU."""
    try:
        if device == "cuda":
            import torch

            return torch.cuda.get_device_properties(0).total_memory / GB
        import psutil

        return psutil.virtual_memory().available / GB
    except Exception:
        return None


def _lora_params(info: ModelInfo, config: TrainConfig) -> float:
    """Adapter parameters for all linear layers of every block (attention + MLP)."""
    h, inter, r = info.hidden, info.intermediate, config.lora_r
    kv = info.kv_hidden or h
    per_layer = r * (2 * (h + h) + 2 * (h + kv)) + 3 * r * (h + inter)
    if config.target_modules.strip() != "all-linear":
        share = len(config.target_modules_value()) / 7
        per_layer *= min(1.0, share)
    return per_layer * info.layers


def _weights_gb(info: ModelInfo, config: TrainConfig, device: str) -> float:
    """Frozen base weights as held in memory: quantised linear layers, full-precision embeddings and head.

    Full precision is fp32 on CPU (half precision is slow there) and bf16/fp16 on a GPU.
    """
    params = info.params_b * 1e9
    embed = info.vocab * info.hidden * (1 if info.tied else 2)  # embeddings and the head stay unquantised
    full_bytes = 4 if device == "cpu" else 2
    per_param = QUANTIZED_BYTES.get(config.quantization, full_bytes)
    return ((params - embed) * per_param + embed * full_bytes) / GB


def _loading_gb(info: ModelInfo, config: TrainConfig, device: str) -> float:
    """CPU only: the checkpoint file, memory-mapped and read whole while the weights are converted from it (its
    pages count as resident until the load ends; 1.7B shape, bf16 file of 3.2 GB: load peaks of 5.0-7.4 GB).

    An fp32 checkpoint loaded unquantised in fp32 is used in place (its pages are the weights): nothing extra.
    On a GPU the file's pages are host memory, not device memory.
    """
    if device != "cpu" or (config.quantization == "none" and info.file_bytes == 4):
        return 0.0
    return info.params_b * 1e9 * info.file_bytes / GB


def _per_layer_token_bytes(info: ModelInfo, config: TrainConfig, act_bytes: int) -> float:
    """Activations one decoder layer keeps for backward, per token (measured with autograd's saved-tensor hooks).

    Saved: the block input and its two norms' outputs, q/k/v after rotary embedding and the attention output,
    the MLP's gate, up, activated and product tensors, each adapter's rank-r intermediate — (7h + 2·kv + 4·ffn
    + 7r) values; measured 41 KB per token per layer on the 135M shape, 69 KB on the 360M, within 4% of this.
    LoRA dropout adds a dropped copy and a mask of each adapted layer's input: 6h + ffn values of
    ``act_bytes + 2`` bytes (measured +29 KB and +48 KB).
    """
    h, inter, kv, r = info.hidden, info.intermediate, info.kv_hidden or info.hidden, config.lora_r
    share = 1.0 if config.target_modules.strip() == "all-linear" else min(1.0, len(config.target_modules_value()) / 7)
    per = (7 * h + 2 * kv + 4 * inter + 7 * r * share) * act_bytes
    if config.lora_dropout > 0:
        per += (6 * h + inter) * share * (act_bytes + 2)
    return per


def _loss_bytes(info: ModelInfo, tokens: int, device: str) -> float:
    """TRL's fused LM head never builds the full logits: it projects tiles of up to 4096 tokens × 32768 vocabulary
    entries and folds them. On CPU (torch ops, no Triton kernel) its backward held about 8 fp32 tiles at once
    (measured 2.1 GB at 2048 tokens, 4.2 GB from 4096 tokens on); on a GPU the fold is fused: about 2 tiles."""
    tile = min(tokens, 4096) * min(info.vocab, 32768)
    return tile * 8 * 4 if device == "cpu" else tile * 2 * 2


def sequences_per_example(config: TrainConfig) -> int:
    """Preference methods run two sequences per example through the model: the chosen and the rejected answer
    (DPO, ORPO), or the answer and its mismatched KL partner (KTO). The frozen reference pass keeps no
    activations (no gradient), so it adds time, not memory."""
    return 1 if config.method == "sft" else 2


def _activations_gb(info: ModelInfo, config: TrainConfig, device: str) -> float:
    """What a micro-batch holds at the start of backward: every layer's saved activations (only each layer's
    input with gradient checkpointing, plus one layer recomputed) and the loss's tiles, times the heap factor.

    A micro-batch is ``batch_size × max_length`` tokens at most (twice that for preference methods): packed
    sequences are filled to max length and padding-free packing puts a batch's sequences in one row; unpacked
    batches pad to their longest row.
    """
    tokens = config.batch_size * config.max_length * sequences_per_example(config)
    act_bytes = 4 if device == "cpu" else 2
    per_layer = tokens * _per_layer_token_bytes(info, config, act_bytes)
    if config.gradient_checkpointing:
        stored = tokens * info.hidden * act_bytes * info.layers + per_layer
    else:
        stored = per_layer * info.layers
    return ((stored + _loss_bytes(info, tokens, device)) * HEAP_FACTOR.get(device, 1.0)
            + _dequantised_bytes(info, config, device)) / GB


def _dequantised_bytes(info: ModelInfo, config: TrainConfig, device: str) -> float:
    """The heap the quantised layers' per-matmul fp32 copies leave resident (CPU; see ``DEQUANT_HEAP``)."""
    if config.quantization not in QUANTIZED_BYTES:
        return 0.0
    passes = 3 if config.gradient_checkpointing else 2  # forward, (recompute,) backward
    quantised = info.params_b * 1e9 - info.vocab * info.hidden * (1 if info.tied else 2)
    return quantised * 4 * passes * DEQUANT_HEAP.get(device, 0.0)


def _shape(config: TrainConfig, info: ModelInfo | None) -> ModelInfo:
    """The model's shape: given, read from its local ``config.json``, from the registry, or a 1B guess."""
    info = info or local_model_info(config.base_model)
    if not info.layers:
        info = ModelInfo(info.id, info.label, params_b=1.0, layers=24, hidden=2048, intermediate=5632, vocab=32000)
    return info


def estimate_memory(config: TrainConfig, device: str | None = None, info: ModelInfo | None = None) -> MemoryEstimate:
    """Estimate peak memory of a run; ``device`` defaults to what ``config.device`` resolves to here.

    ``info`` gives the model's shape when it is known better than by id (a loaded model's config, a
    benchmark's stored shape); otherwise a model already on this machine is measured from its ``config.json``.
    """
    from engine.models import pick_device

    if device is None:
        try:
            device = pick_device(config.device)
        except Exception:
            device = config.device
    info = _shape(config, info)
    lora = _lora_params(info, config)
    optimizer_bytes = 2 if device == "cuda" and config.optimizer in ("auto", "paged_adamw_8bit", "adamw_8bit") else 8
    estimate = MemoryEstimate(
        device=device,
        weights_gb=_weights_gb(info, config, device),
        adapter_gb=lora * 4 / GB,
        optimizer_gb=lora * (optimizer_bytes + 4) / GB,
        activations_gb=_activations_gb(info, config, device),
        overhead_gb=FRAMEWORK_OVERHEAD_GB.get(device, 1.0),
        capacity_gb=device_capacity_gb(device),
        loading_gb=_loading_gb(info, config, device),
    )
    if estimate.fits is False:
        return MemoryEstimate(**{**estimate.__dict__, "advice": _advice(estimate, config)})
    return estimate


def _advice(estimate: MemoryEstimate, config: TrainConfig) -> list[str]:
    """Fixes ordered by what frees the most memory for this configuration."""
    tips: list[tuple[float, str]] = [
        (estimate.activations_gb / 2, f"Halve 'Batch size' to {max(1, config.batch_size // 2)} and double "
                                      "'Gradient accumulation' (same effective batch)."),
        (estimate.activations_gb / 2, f"Lower 'Max length' to {max(32, config.max_length // 2)}."),
    ]
    if not config.gradient_checkpointing:
        tips.append((estimate.activations_gb * 0.6, "Turn on gradient checkpointing."))
    if config.quantization != "4bit":
        tips.append((estimate.weights_gb * 0.6, "Use quantization '4bit' (QLoRA)."))
    tips.append((estimate.adapter_gb + estimate.optimizer_gb, "Use a smaller LoRA rank or a smaller base model."))
    return [text for _, text in sorted(tips, key=lambda t: -t[0])]


# ------------------------------------------------------------------------------------- measured


def reset_peak(device: str) -> None:
    """Start counting a GPU's peak afresh (a CPU process's peak RSS cannot be reset: it covers the process)."""
    if device == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats()


def measured_peak_gb(device: str) -> tuple[float, str]:
    """This process's peak so far, in GB, and what was measured.

    CUDA: ``torch.cuda.max_memory_allocated`` (tensors; the CUDA context and the allocator's cache come on
    top, as the estimate's overhead does). CPU: ``ru_maxrss`` of this process — the resident set at its
    highest, model loading included. A worker runs one job, so that is the run's peak.
    """
    if device == "cuda":
        import torch

        return torch.cuda.max_memory_allocated() / GB, "cuda_max_allocated"
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / GB, "cpu_rss"


def run_memory_record(config: TrainConfig, device: str, model_config: dict[str, Any] | None) -> dict[str, Any]:
    """What a finished run adds to ``metrics.json``: the measured peak, the estimate, and the settings they hang on.

    ``estimated_memory_gb`` estimates what was measured: the whole estimate against peak RSS on CPU, the estimate
    without the CUDA context against ``max_memory_allocated``; ``memory_estimate`` keeps every component.
    ``model_config`` is the loaded model's config (its exact shape). An estimate that fails never fails the run.
    """
    peak, kind = measured_peak_gb(device)
    record: dict[str, Any] = {"device": device, "peak_memory_gb": round(peak, 4), "peak_memory_kind": kind,
                              "estimated_memory_gb": None, "memory_settings": _settings(config)}
    try:
        info = info_from_config(config.base_model, model_config) if model_config else None
        estimate = estimate_memory(config, device, info=info)
    except Exception:
        return record
    record["estimated_memory_gb"] = round(comparable_gb(estimate, kind), 4)
    record["memory_estimate"] = estimate.components()
    return record


def comparable_gb(estimate: MemoryEstimate, kind: str) -> float:
    """The part of the estimate a measurement of ``kind`` sees (peak allocated on CUDA excludes the context)."""
    return estimate.total_gb - (estimate.overhead_gb if kind == "cuda_max_allocated" else 0.0)


def _settings(config: TrainConfig) -> dict[str, Any]:
    from engine.models import model_info

    return {"model": model_info(config.base_model).label, "quantization": config.quantization,
            "lora_r": config.lora_r, "max_length": config.max_length, "batch_size": config.batch_size,
            "gradient_checkpointing": config.gradient_checkpointing}


@dataclass(frozen=True)
class MemoryRow:
    """One run's estimate next to its measured peak.

    ``source``: ``"run <folder>"`` for a finished run of this app, ``"bench"`` for a committed row of
    ``bench/memory_runs.json``. ``device``: ``cpu`` (measured: peak RSS) or ``cuda`` (peak allocated).
    ``ratio`` = estimated / measured: above 1 the estimate was high (safe), below 1 it was low; ``None``
    when a run recorded no estimate. ``measured_kind`` says what ``measured_gb`` is (``cpu_rss`` or
    ``cuda_max_allocated``).
    """

    source: str
    model: str
    device: str
    quantization: str
    lora_r: int
    max_length: int
    batch_size: int
    gradient_checkpointing: bool
    estimated_gb: float | None
    measured_gb: float
    ratio: float | None
    measured_kind: str = ""


def _row(source: str, settings: dict[str, Any], device: str, estimated: float | None, measured: float,
         kind: str) -> MemoryRow:
    ratio = estimated / measured if estimated is not None and measured > 0 else None
    return MemoryRow(source=source, model=str(settings.get("model", "")), device=device,
                     quantization=str(settings.get("quantization", "")), lora_r=int(settings.get("lora_r", 0)),
                     max_length=int(settings.get("max_length", 0)), batch_size=int(settings.get("batch_size", 0)),
                     gradient_checkpointing=bool(settings.get("gradient_checkpointing", False)),
                     estimated_gb=estimated, measured_gb=measured, ratio=ratio, measured_kind=kind)


def measured_rows(runs: Iterable[Any]) -> list[MemoryRow]:
    """Rows for finished runs: each item a run folder (``Path``) or anything with a ``run_dir`` (a ``JobRecord``).

    Runs without a recorded peak — unfinished, failed, or finished before peaks were recorded — are skipped.
    The estimate is the one recorded when the run finished (what the estimator said then).
    """
    rows = []
    for run in runs:
        run_dir = Path(getattr(run, "run_dir", run))
        try:
            metrics = json.loads((run_dir / "metrics.json").read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(metrics, dict) or not metrics.get("peak_memory_gb"):
            continue
        rows.append(_row(f"run {run_dir.name}", metrics.get("memory_settings") or {}, str(metrics.get("device")),
                         metrics.get("estimated_memory_gb"), float(metrics["peak_memory_gb"]),
                         str(metrics.get("peak_memory_kind", ""))))
    return rows


def bench_rows(path: Path = BENCH_RUNS) -> list[MemoryRow]:
    """The committed benchmark rows, re-estimated with the estimator as it is now (empty when the file is absent,
    as in a deployed Space, which does not ship ``bench/``)."""
    try:
        table = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return []
    rows = []
    for run in table.get("runs", []):
        kind = run.get("measured_kind", "cpu_rss")
        estimated = comparable_gb(estimate_bench_run(run), kind)
        rows.append(_row("bench", {**run["settings"], "model": run["model"]}, run["device"], estimated,
                         float(run["measured_gb"]), kind))
    return rows


def estimate_bench_run(run: dict[str, Any]) -> MemoryEstimate:
    """The current estimate for a stored benchmark row: its settings and its model's shape, as stored."""
    config = TrainConfig(**run["settings"])
    return estimate_memory(config, run["device"], info=ModelInfo(run["model"], run["model"], **run["shape"]))


def memory_table(runs: Iterable[Any] = (), include_bench: bool = True) -> dict[str, list[MemoryRow]]:
    """Estimate vs measured per device (``{"cpu": [...], "cuda": [...]}``): the given finished runs first,
    then the committed benchmark rows. What the Lab tab shows."""
    table: dict[str, list[MemoryRow]] = {}
    for row in [*measured_rows(runs), *(bench_rows() if include_bench else [])]:
        table.setdefault(row.device, []).append(row)
    return table
