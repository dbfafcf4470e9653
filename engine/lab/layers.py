"""The model layer by layer: weight statistics, what each quantization format costs, and sizes per format.

Why read the safetensors files tensor by tensor instead of the loaded model: the report then needs the
memory of one weight matrix at a time (a 7B model's layers can be walked on a small machine), and the
figures are those of the weights on disk, before any loading-time conversion.

Which tensors count as quantizable is decided the way transformers + bitsandbytes decide it: every
``nn.Linear`` of the architecture except the output head (found on a weightless ``meta`` copy of the
model, so any architecture works). Everything else (embeddings, norms) is counted at 16 bits in the
quantized formats, as a 4-bit load keeps them.

The errors are real round trips: int8 through :func:`engine.lab.quant.quantize_array` per output row (the
playground's own code), NF4 and FP4 through bitsandbytes' ``quantize_4bit``/``dequantize_4bit`` with 64-value
blocks, with and without double quantization (the absmax of each block itself quantized to 8 bits).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine.lab.quant import QuantSettings, quantize_array

OUTLIER_SIGMAS = 6.0
"""A weight is an outlier beyond 6 standard deviations from its tensor's mean: a normal distribution puts 2 in a
billion there, so any visible share means heavy tails — the values that stretch a min–max int8 grid."""
BLOCKSIZE = 64  # bitsandbytes' 4-bit block size used by transformers' BitsAndBytesConfig
HISTOGRAM_BINS = 60
GRID_BLOCK = 32  # GGUF Q4 blocks: 32 consecutive weights share one scale (and a minimum in Q4_1)
FORMATS = ("fp32", "bf16", "int8 symmetric", "int8 asymmetric", "nf4", "nf4 + double quant", "fp4",
           "fp4 + double quant")
METHODS = FORMATS[2:]


@dataclass(frozen=True)
class TensorStats:
    """Summary statistics of one weight tensor (population moments, computed in float64)."""

    min: float
    max: float
    mean: float
    std: float
    skewness: float
    kurtosis: float  # excess kurtosis: 0 for a normal distribution, larger for heavy tails
    outlier_share: float  # share of weights beyond OUTLIER_SIGMAS standard deviations from the mean


@dataclass(frozen=True)
class QuantError:
    """One format's round trip on one tensor: errors, and the bytes the format needs for it."""

    method: str
    mse: float
    max_abs: float
    sqnr_db: float  # signal-to-quantization-noise ratio: 10·log10(Σx² / Σ(x̂ − x)²); higher is better
    bytes: int


@dataclass(frozen=True)
class LayerReport:
    """A quantizable weight matrix: where it is, its statistics and histogram, each format's error."""

    name: str
    shape: tuple[int, ...]
    stats: TensorStats
    errors: list[QuantError]
    histogram: tuple[list[float], list[int]]  # bin edges (len bins + 1), counts
    grid_like: bool  # at most 16 distinct values per block of 32: dequantized from a 4-bit file

    @property
    def params(self) -> int:
        return math.prod(self.shape)

    def error(self, method: str) -> QuantError:
        return next(e for e in self.errors if e.method == method)


@dataclass(frozen=True)
class ModelReport:
    """The whole walk: per-layer reports, the model's size in each format, and caveats."""

    model: str
    layers: list[LayerReport]
    sizes: dict[str, int]  # format -> bytes of the whole model
    other_params: int  # parameters that stay in 16 bits (embeddings, norms, biases)
    skipped_layers: int  # quantizable layers not walked (a limit was set)
    notes: list[str] = field(default_factory=list)

    def worst(self, method: str = "nf4", count: int = 5) -> list[LayerReport]:
        """The layers that suffer most under ``method``: the lowest SQNR first."""
        return sorted(self.layers, key=lambda layer: layer.error(method).sqnr_db)[:count]

    def to_dict(self, histograms: bool = False) -> dict[str, Any]:
        layers = []
        for layer in self.layers:
            item = {"name": layer.name, "shape": list(layer.shape), "stats": asdict(layer.stats),
                    "errors": [asdict(e) for e in layer.errors], "grid_like": layer.grid_like}
            if histograms:
                item["histogram"] = {"edges": layer.histogram[0], "counts": layer.histogram[1]}
            layers.append(item)
        return {"model": self.model, "sizes_bytes": self.sizes, "other_params": self.other_params,
                "skipped_layers": self.skipped_layers, "notes": self.notes, "layers": layers}


# ----------------------------------------------------------------------------------------- one tensor


def tensor_stats(weights: np.ndarray) -> TensorStats:
    """Min, max, mean, std, skewness, excess kurtosis and outlier share of ``weights`` (any shape)."""
    x = np.asarray(weights, dtype=np.float64).ravel()
    mean = float(x.mean())
    centred = x - mean
    m2 = float(np.mean(centred**2))
    std = math.sqrt(m2)
    if m2 == 0:
        return TensorStats(float(x.min()), float(x.max()), mean, 0.0, 0.0, 0.0, 0.0)
    skewness = float(np.mean(centred**3)) / m2**1.5
    kurtosis = float(np.mean(centred**4)) / m2**2 - 3.0
    outliers = float(np.mean(np.abs(centred) > OUTLIER_SIGMAS * std))
    return TensorStats(float(x.min()), float(x.max()), mean, std, skewness, kurtosis, outliers)


def histogram(weights: np.ndarray, bins: int = HISTOGRAM_BINS) -> tuple[list[float], list[int]]:
    counts, edges = np.histogram(np.asarray(weights, dtype=np.float32).ravel(), bins=bins)
    return [float(e) for e in edges], [int(c) for c in counts]


def error_of(method: str, original: np.ndarray, restored: np.ndarray, nbytes: int) -> QuantError:
    """MSE, max |error| and SQNR of a round trip (in float64, so tiny errors are not rounded away)."""
    x = np.asarray(original, dtype=np.float64)
    err = np.asarray(restored, dtype=np.float64) - x
    noise = float(np.sum(err**2))
    signal = float(np.sum(x**2))
    sqnr = math.inf if noise == 0 else 10 * math.log10(signal / noise) if signal > 0 else -math.inf
    return QuantError(method, float(np.mean(err**2)), float(np.max(np.abs(err))), sqnr, int(nbytes))


def int8_round_trip(weights: np.ndarray, scheme: str) -> tuple[np.ndarray, int]:
    """int8 per output row (one scale per row; asymmetric also one zero point): (restored, bytes)."""
    settings = QuantSettings(bits=8, scheme=scheme, signed=True, clip="minmax")
    w = np.asarray(weights, dtype=np.float32).reshape(weights.shape[0], -1)
    _, restored, _, _ = quantize_array(w, settings, axis=1)
    rows = w.shape[0]
    overhead = rows * 4 + (rows if scheme == "asymmetric" else 0)  # fp32 scales (+ int8 zero points)
    return restored.reshape(weights.shape), w.size + overhead


def bnb_round_trip(weights: Any, quant_type: str, double_quant: bool) -> tuple[np.ndarray, int]:
    """bitsandbytes' own 4-bit quantize → dequantize on a float32 tensor: (restored, bytes of the packed form)."""
    import bitsandbytes.functional as bnbf
    import torch

    tensor = torch.as_tensor(weights, dtype=torch.float32).contiguous()
    packed, state = bnbf.quantize_4bit(tensor, blocksize=BLOCKSIZE, compress_statistics=double_quant,
                                       quant_type=quant_type)
    restored = bnbf.dequantize_4bit(packed, state)
    return restored.numpy(), _packed_bytes(packed, state)


def _packed_bytes(packed: Any, state: Any) -> int:
    """Bytes bitsandbytes stores for a 4-bit tensor: packed nibbles, block absmax, and the nested state."""
    total = packed.numel() * packed.element_size() + state.absmax.numel() * state.absmax.element_size()
    nested = getattr(state, "state2", None)
    if nested is not None:
        total += nested.absmax.numel() * nested.absmax.element_size() + nested.code.numel() * 4 + 4  # + offset
    return total


def quant_errors(weights: np.ndarray) -> list[QuantError]:
    """Every format of :data:`METHODS` on one tensor."""
    out = []
    for scheme in ("symmetric", "asymmetric"):
        restored, nbytes = int8_round_trip(weights, scheme)
        out.append(error_of(f"int8 {scheme}", weights, restored, nbytes))
    for quant_type in ("nf4", "fp4"):
        for double in (False, True):
            restored, nbytes = bnb_round_trip(weights, quant_type, double)
            out.append(error_of(quant_type + (" + double quant" if double else ""), weights, restored, nbytes))
    return out


def looks_dequantized_from_4bit(weights: np.ndarray, blocks: int = 2048) -> bool:
    """True when every block of 32 consecutive weights holds at most 16 distinct values.

    That is the fingerprint of weights expanded from a 4-bit file (GGUF Q4_0/Q4_1: 16 levels per block of
    32): their quantization errors here measure re-quantizing an already quantized grid, not a real model.
    Real trained weights have ~32 distinct values per block.
    """
    flat = np.asarray(weights).ravel()
    usable = min(blocks, flat.size // GRID_BLOCK) * GRID_BLOCK
    if usable == 0:
        return False
    chunk = np.sort(flat[:usable].reshape(-1, GRID_BLOCK), axis=1)
    distinct = 1 + np.count_nonzero(np.diff(chunk, axis=1), axis=1)
    return bool(distinct.max() <= 16)


def layer_report(name: str, weights: np.ndarray) -> LayerReport:
    w = np.asarray(weights, dtype=np.float32)
    return LayerReport(name=name, shape=tuple(w.shape), stats=tensor_stats(w), errors=quant_errors(w),
                       histogram=histogram(w), grid_like=looks_dequantized_from_4bit(w))


# ----------------------------------------------------------------------------------------- a model folder


def quantizable_names(folder: Path) -> list[str]:
    """Weight names of every ``nn.Linear`` except the output head, from a weightless (meta) copy of the model."""
    import torch

    from engine.lab.lora import meta_model

    model = meta_model(folder)
    head = model.get_output_embeddings()
    return [f"{name}.weight" for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and module is not head]


def tensor_files(folder: Path) -> dict[str, Path]:
    """Tensor name -> the safetensors file holding it (one file, or a sharded model's index)."""
    index = folder / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        return {name: folder / file for name, file in weight_map.items()}
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError("This model has no .safetensors weights the Lab can read.")
    from safetensors import safe_open

    out: dict[str, Path] = {}
    for file in files:
        with safe_open(str(file), "np") as handle:
            out.update(dict.fromkeys(handle.keys(), file))
    return out


def iter_tensors(files: dict[str, Path], names: list[str]) -> Iterator[tuple[str, np.ndarray]]:
    """Load ``names`` one at a time (float32 numpy), so only one matrix is in memory."""
    from safetensors import safe_open

    for name in names:
        with safe_open(str(files[name]), "pt") as handle:
            yield name, handle.get_tensor(name).float().numpy()


def tensor_shapes(files: dict[str, Path]) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape, reading each file's header once (no tensor data)."""
    from safetensors import safe_open

    shapes: dict[str, tuple[int, ...]] = {}
    for file in sorted(set(files.values())):
        with safe_open(str(file), "pt") as handle:
            shapes.update({name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()})  # noqa: SIM118
    return shapes


def short_name(name: str) -> str:
    """``model.layers.3.self_attn.q_proj.weight`` -> ``layers.3.self_attn.q_proj``."""
    return name.removeprefix("model.").removesuffix(".weight")


def analyse_folder(folder: Path, model: str, *, max_layers: int | None = None,
                   on_layer: Callable[[int, int, str], None] | None = None) -> ModelReport:
    """Walk every quantizable matrix of the model in ``folder`` (``max_layers`` caps the walk for big models).

    ``on_layer(done, total, name)`` is called after each matrix, for progress. Sizes are always of the
    whole model: they need only the tensors' shapes, except the 4-bit formats' bytes, which are measured on
    the walked matrices and scaled by parameter count to the rest.
    """
    files = tensor_files(folder)
    wanted = [n for n in quantizable_names(folder) if n in files]
    walked = wanted[:max_layers] if max_layers else wanted
    reports = []
    for done, (name, weights) in enumerate(iter_tensors(files, walked), start=1):
        reports.append(layer_report(short_name(name), weights))
        if on_layer:
            on_layer(done, len(walked), short_name(name))
    shapes, linear = tensor_shapes(files), set(wanted)
    quantizable = sum(math.prod(shape) for name, shape in shapes.items() if name in linear)
    other = sum(math.prod(shape) for name, shape in shapes.items() if name not in linear)
    return ModelReport(model=model, layers=reports, sizes=model_sizes(reports, quantizable, other),
                       other_params=other, skipped_layers=len(wanted) - len(walked), notes=_notes(reports))


def model_sizes(reports: list[LayerReport], quantizable: int, other: int) -> dict[str, int]:
    """Bytes of the whole model per format; the quantized ones keep non-linear tensors at 16 bits."""
    walked = sum(r.params for r in reports) or 1
    sizes = {"fp32": 4 * (quantizable + other), "bf16": 2 * (quantizable + other)}
    for method in METHODS:
        measured = sum(r.error(method).bytes for r in reports)
        sizes[method] = round(measured * quantizable / walked) + 2 * other
    return sizes


def _notes(reports: list[LayerReport]) -> list[str]:
    grid_like = sum(r.grid_like for r in reports)
    if not reports or grid_like < len(reports) / 2:
        return []
    return [f"{grid_like} of {len(reports)} weight matrices hold at most 16 distinct values per block of 32: these "
            "weights were themselves dequantized from a 4-bit file (the bundled model ships as a Q4_1 GGUF), so "
            "the errors below measure re-quantizing an existing 4-bit grid and are not representative of a "
            "full-precision model."]
