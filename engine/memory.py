"""How much memory a run will need, before it starts.

A rough but honest sum of the four things that fill memory during LoRA training — frozen base
weights, the adapter, optimizer state and gradients, activations — compared with what the device
has. It errs high: being told "does not fit" and fitting beats crashing an hour in.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.config import TrainConfig
from engine.models import ModelInfo, model_info

GB = 1024**3
FRAMEWORK_OVERHEAD_GB = {"cpu": 1.2, "cuda": 0.8}  # torch + libraries (CPU) / CUDA context and kernels (GPU)


@dataclass(frozen=True)
class MemoryEstimate:
    """Gigabytes per component, the device's capacity and whether the run fits."""

    device: str
    weights_gb: float
    adapter_gb: float
    optimizer_gb: float
    activations_gb: float
    overhead_gb: float
    capacity_gb: float | None
    advice: list[str] = field(default_factory=list)

    @property
    def total_gb(self) -> float:
        return self.weights_gb + self.adapter_gb + self.optimizer_gb + self.activations_gb + self.overhead_gb

    @property
    def fits(self) -> bool | None:
        return None if self.capacity_gb is None else self.total_gb <= 0.9 * self.capacity_gb


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
    per_layer = 4 * r * (h + h) + 3 * r * (h + inter)
    if config.target_modules.strip() != "all-linear":
        share = len(config.target_modules_value()) / 7
        per_layer *= min(1.0, share)
    return per_layer * info.layers


def _weights_gb(info: ModelInfo, config: TrainConfig, device: str) -> float:
    params = info.params_b * 1e9
    embed = info.vocab * info.hidden  # embeddings (and a tied/untied head) stay unquantised
    full_bytes = 4 if device == "cpu" else 2
    per_param = {"4bit": 0.56, "8bit": 1.05, "none": full_bytes}[config.quantization]
    return ((params - embed) * per_param + embed * full_bytes) / GB


def _activations_gb(info: ModelInfo, config: TrainConfig, device: str) -> float:
    tokens = config.batch_size * config.max_length
    act_bytes = 4 if device == "cpu" else 2
    h, inter = info.hidden, info.intermediate
    per_layer_token = (16 * h + 3 * inter) * act_bytes
    if config.gradient_checkpointing:
        stored = tokens * h * act_bytes * info.layers + tokens * per_layer_token
    else:
        stored = tokens * per_layer_token * info.layers
    logits = tokens * info.vocab * 4 * 0.25  # the loss is computed in chunks, never the full logits at once
    return (stored + logits) / GB


def estimate_memory(config: TrainConfig, device: str | None = None) -> MemoryEstimate:
    """Estimate peak memory of a run; ``device`` defaults to what ``config.device`` resolves to here."""
    from engine.models import pick_device

    if device is None:
        try:
            device = pick_device(config.device)
        except Exception:
            device = config.device
    info = model_info(config.base_model)
    if not info.layers:
        info = ModelInfo(info.id, info.label, params_b=1.0, layers=24, hidden=2048, intermediate=5632, vocab=32000)
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
