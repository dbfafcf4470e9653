"""GPU tiers: the cards people train on (the GPU hardware of Hugging Face Spaces, and the larger server cards),
which one this machine has, the preset recommended for each, and the largest listed model each method fits.

Every figure here comes from the memory estimate (``engine.memory.estimate_memory``) with the tier's recommended
preset, so the model picker, the README and the tests say the same thing. On CUDA that estimate has not been
checked against measured peaks yet (``engine/memory.py``): the answers are estimates. Usable memory is what
``torch.cuda`` reports as the card's total (a "16 GB" T4 shows about 14.7 GiB); for the card in this machine the
measured total replaces the table's.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from engine.config import TrainConfig, default_preset, load_preset
from engine.memory import GB, device_capacity_gb, estimate_memory
from engine.models import MODELS, ModelInfo

#: The two ways of training an adapter the picker compares: QLoRA (4-bit base) and LoRA on a 16-bit base
#: (32-bit on a CPU, where half precision is slow).
METHOD_QUANTIZATION = {"qlora": "4bit", "lora": "none"}
METHOD_LABELS = {"qlora": "QLoRA", "lora": "LoRA"}


@dataclass(frozen=True)
class GpuTier:
    """One kind of card: its Space hardware flavors (none when Spaces do not offer it), memory as sold (GB) and
    as ``torch.cuda`` reports it (GiB), whether it computes in bfloat16 (the T4 does not: float16), and the
    preset recommended on it."""

    key: str
    label: str
    memory_gb: int
    usable_gb: float
    bf16: bool
    preset: str
    flavors: tuple[str, ...] = ()


#: Flavors as huggingface_hub's ``SpaceHardware`` lists them; the H100 and H200 are not Space hardware (other
#: clouds and servers; ZeroGPU lends GPU slices per function call, not for a whole training run). Usable memory:
#: the totals torch commonly reports for these cards (approximate); a recognised card's own total replaces it.
TIERS: tuple[GpuTier, ...] = (
    GpuTier("t4", "T4", 16, 14.7, False, "t4-gpu-qlora", ("t4-small", "t4-medium")),
    GpuTier("l4", "L4", 24, 22.0, True, "24gb-gpu-qlora", ("l4x1",)),
    GpuTier("a10g", "A10G", 24, 22.0, True, "24gb-gpu-qlora", ("a10g-small", "a10g-large")),
    GpuTier("a100-40", "A100", 40, 39.4, True, "large-gpu-lora16"),
    GpuTier("l40s", "L40S", 48, 44.4, True, "large-gpu-lora16", ("l40sx1",)),
    GpuTier("a100-80", "A100", 80, 79.1, True, "large-gpu-lora16", ("a100-large",)),
    GpuTier("h100", "H100", 80, 79.1, True, "large-gpu-lora16"),
    GpuTier("h200", "H200", 141, 139.8, True, "large-gpu-lora16"),
)
_BY_KEY = {tier.key: tier for tier in TIERS}
#: Card names as ``torch.cuda.get_device_name`` gives them ("Tesla T4", "NVIDIA A10G", "NVIDIA H100 80GB HBM3").
_NAME_PATTERNS = (
    (re.compile(r"\bH200\b", re.I), "h200"),
    (re.compile(r"\bH100\b", re.I), "h100"),
    (re.compile(r"\bA100\b", re.I), "a100"),
    (re.compile(r"\bL40S\b", re.I), "l40s"),
    (re.compile(r"\bL4\b", re.I), "l4"),
    (re.compile(r"\bA10G\b", re.I), "a10g"),
    (re.compile(r"\bT4\b", re.I), "t4"),
)


def preset_for_memory(usable_gb: float) -> str:
    """The recommended preset for a card known only by its memory: the T4 recipe (float16, safe on any card)
    below 20 GB, the 24 GB QLoRA recipe below 36 GB, else 16-bit LoRA."""
    if usable_gb < 20:
        return "t4-gpu-qlora"
    return "24gb-gpu-qlora" if usable_gb < 36 else "large-gpu-lora16"


def tier_for_device(name: str, total_bytes: int, bf16: bool | None = None) -> GpuTier:
    """The tier of a card from its name and total memory in bytes (``torch.cuda.get_device_properties``).

    A known card keeps its tier's label, precision and preset, with the measured memory (an H100 NVL has 94 GB,
    a MIG slice less); an A100 is the 40 or 80 GB one by its memory. An unknown card gets a generic tier named
    after it, its preset chosen by memory, bf16 as given (compute capability 8+), else assumed absent.
    """
    usable = total_bytes / GB
    key = next((key for pattern, key in _NAME_PATTERNS if pattern.search(name or "")), "")
    if key == "a100":
        key = "a100-80" if usable > 60 else "a100-40"
    if key:
        return dataclasses.replace(_BY_KEY[key], usable_gb=round(usable, 1)) if total_bytes > 0 else _BY_KEY[key]
    label = (name or "GPU").removeprefix("NVIDIA ").strip() or "GPU"
    return GpuTier("other", label, round(usable), round(usable, 1), bool(bf16), preset_for_memory(usable))


def current_tier() -> GpuTier | None:
    """This machine's GPU 0 as a tier, or None without a CUDA GPU."""
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        props = torch.cuda.get_device_properties(0)
        return tier_for_device(props.name, props.total_memory, bf16=props.major >= 8)
    except Exception:
        return None


def recommended_preset(device: str) -> str:
    """The preset for this machine: the tier's on a GPU, the CPU default (``engine.config``) otherwise."""
    tier = current_tier() if device == "cuda" else None
    return tier.preset if tier is not None else default_preset(device)


def precision_note(tier: GpuTier | None, dtype: str) -> str:
    """A card without bfloat16 (the T4) asked for it: say which setting to change. Empty otherwise ('auto' picks
    float16 there: ``engine.models.pick_dtype`` does not count emulated bfloat16)."""
    if tier is None or tier.bf16 or dtype != "bfloat16":
        return ""
    return (f"This {tier.label} has no bfloat16: set *Dtype* (under Advanced) to float16, or pick the "
            f"*{tier.preset}* preset, which does.")


@dataclass(frozen=True)
class DeviceFit:
    """What this machine's device holds: the device estimated for (``cuda`` or ``cpu``), its label ("T4, 14.7 GB"),
    memory for training in GB (None if unknown), the preset runs are sized with, and the largest listed model per
    method (None: none fits)."""

    device: str
    label: str
    capacity_gb: float | None
    preset: str
    largest: dict[str, ModelInfo | None]


def device_fit(device: str) -> DeviceFit:
    """The largest listed model each method fits on ``device`` here: a GPU with its tier's preset and measured
    memory, a CPU with the CPU default preset and the RAM available now (``engine.memory.device_capacity_gb``)."""
    tier = current_tier() if device == "cuda" else None
    if tier is not None:
        return tier_fit(tier)
    capacity, preset = device_capacity_gb("cpu"), default_preset("cpu")
    label = "CPU, " + (f"{capacity:.1f} GB of RAM free" if capacity else "RAM unknown")
    largest = {method: largest_model_that_fits(capacity, method, "cpu", preset) for method in METHOD_QUANTIZATION}
    return DeviceFit("cpu", label, capacity, preset, largest)


def tier_fit(tier: GpuTier) -> DeviceFit:
    """The largest listed model each method fits on a GPU tier, with its recommended preset."""
    largest = {method: largest_model_that_fits(tier.usable_gb, method, "cuda", tier.preset)
               for method in METHOD_QUANTIZATION}
    return DeviceFit("cuda", f"{tier.label}, {tier.usable_gb:.1f} GB", tier.usable_gb, tier.preset, largest)


def method_config(preset: str, method: str) -> TrainConfig:
    """A preset's settings with the method's quantization (``qlora``: 4-bit; ``lora``: none)."""
    if method not in METHOD_QUANTIZATION:
        raise ValueError(f"Unknown method {method!r}: use one of {', '.join(METHOD_QUANTIZATION)}.")
    return dataclasses.replace(load_preset(preset), quantization=METHOD_QUANTIZATION[method])


def fits(info: ModelInfo, config: TrainConfig, capacity_gb: float, device: str = "cuda") -> bool:
    """Whether the estimate for this model and these settings fits ``capacity_gb`` (the estimate's own margin)."""
    estimate = estimate_memory(config, device, info=info)
    return bool(dataclasses.replace(estimate, capacity_gb=capacity_gb).fits)


def largest_model_that_fits(capacity_gb: float | None, method: str, device: str = "cuda", preset: str | None = None,
                            models: tuple[ModelInfo, ...] = MODELS) -> ModelInfo | None:
    """The listed model with the most parameters whose run fits ``capacity_gb`` with ``method`` (``qlora`` or
    ``lora``), using the settings of ``preset`` (default: the tier's recommended preset for that memory on a
    GPU, the CPU default on a CPU). None when none fits or the capacity is unknown."""
    if capacity_gb is None:
        return None
    preset = preset or (preset_for_memory(capacity_gb) if device == "cuda" else default_preset(device))
    config = method_config(preset, method)
    fitting = [info for info in models if info.layers and fits(info, config, capacity_gb, device)]
    return max(fitting, key=lambda info: info.params_b, default=None)


def tier_fits(info: ModelInfo, tier: GpuTier, method: str) -> bool:
    """Whether a model fits a tier with a method, with that tier's recommended preset."""
    return fits(info, method_config(tier.preset, method), tier.usable_gb)


def tier_columns() -> list[tuple[str, GpuTier]]:
    """The tiers as the picker's table shows them: cards with the same memory and preset share a column
    ("L4 / A10G 24 GB"), smallest first."""
    groups: dict[tuple[float, str], list[GpuTier]] = {}
    for tier in TIERS:
        groups.setdefault((tier.usable_gb, tier.preset), []).append(tier)
    columns = []
    for members in sorted(groups.values(), key=lambda ts: ts[0].usable_gb):
        names = " / ".join(dict.fromkeys(t.label for t in members))
        columns.append((f"{names} {members[0].memory_gb} GB", members[0]))
    return columns
