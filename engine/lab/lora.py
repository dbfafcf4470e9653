"""LoRA in numbers: exactly how many parameters a rank buys, and what a finished run actually learned.

The count walks the model's ``nn.Linear`` layers on a weightless ``meta`` copy (built from the config
alone, so a 7B model costs no memory) and matches target names the way PEFT does: a module is adapted
when its name equals a target or ends with ``.`` + target; ``all-linear`` means every linear layer but the
output head. Each adapted ``d_in → d_out`` layer gains ``A`` (r × d_in) and ``B`` (d_out × r): r·(d_in + d_out)
parameters. ``tests/test_lab.py`` checks the total against PEFT's own count on the real model.

The spectrum of a finished run: the learned update of a layer is ΔW = (α / r)·B·A, of rank at most r. Its
singular values say how many directions the run really used; a few large ones mean a smaller rank would
have done. They come from the r × r core of two QR factorizations (exact, and cheap even for 7B layers).
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from core.settings import SettingsError

TOP_DIRECTIONS = (1, 4)  # "how much of the update the top 1 / top 4 directions carry"


@dataclass(frozen=True)
class LoraModule:
    """One adapted layer."""

    name: str
    d_in: int
    d_out: int
    r: int

    @property
    def params(self) -> int:
        return self.r * (self.d_in + self.d_out)


@dataclass(frozen=True)
class LoraCount:
    """The adapter a choice of rank and targets creates on a model."""

    model: str
    r: int
    alpha: float
    targets: list[str]
    modules: list[LoraModule]
    base_params: int

    @property
    def trainable_params(self) -> int:
        return sum(m.params for m in self.modules)

    @property
    def share_of_base(self) -> float:
        return self.trainable_params / self.base_params if self.base_params else 0.0

    @property
    def scaling(self) -> float:
        """α / r: how strongly the update is added to the frozen weight."""
        return self.alpha / self.r

    def by_kind(self) -> list[tuple[str, int, int, int, int]]:
        """(module kind, count, d_in, d_out, params) per kind (``q_proj``...), in model order."""
        kinds: dict[str, list[LoraModule]] = {}
        for module in self.modules:
            kinds.setdefault(module.name.rsplit(".", 1)[-1], []).append(module)
        return [(kind, len(ms), ms[0].d_in, ms[0].d_out, sum(m.params for m in ms)) for kind, ms in kinds.items()]

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "r": self.r, "alpha": self.alpha, "scaling": self.scaling,
                "targets": self.targets, "trainable_params": self.trainable_params, "base_params": self.base_params,
                "share_of_base": self.share_of_base,
                "by_kind": [dict(zip(("kind", "count", "d_in", "d_out", "params"), row, strict=True))
                            for row in self.by_kind()],
                "modules": [{**asdict(m), "params": m.params} for m in self.modules]}


def parse_targets(text: str | list[str]) -> list[str]:
    """``"q_proj, v_proj"`` -> ``["q_proj", "v_proj"]``; ``"all-linear"`` stays one entry."""
    items = text if isinstance(text, list) else text.split(",")
    targets = [t.strip() for t in items if t.strip()]
    if not targets:
        raise SettingsError("target_modules", "name at least one layer (q_proj, v_proj...) or use all-linear.")
    return targets


@functools.lru_cache(maxsize=8)
def _meta_model(folder: str) -> Any:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def meta_model(folder: Path) -> Any:
    """The model's architecture with no weights (``meta`` device): shapes only, no memory.

    Kept per folder (a few, least recently used first out): building one takes seconds, and a size check, a
    LoRA count and a layer walk of the same model each need it. Only read (module names and shapes), never
    changed, so one copy serves every request; a model folder's config never changes under the same path.
    """
    return _meta_model(str(folder))


def meta_model_of(model_id: str | None, token: str | None = None) -> Any:
    """:func:`meta_model` of a model id, downloading only its ``config.json`` (a 70B model costs nothing)."""
    from engine.models import model_folder

    return meta_model(model_folder(model_id, token, files=("config.json",)))


def params_billions(model: Any) -> float:
    """The model's parameter count in billions (a tied weight counted once), to three decimals."""
    return round(sum(p.numel() for p in model.parameters()) / 1e9, 3)


def _matches(name: str, targets: list[str]) -> bool:
    return any(name == t or name.endswith("." + t) for t in targets)


def count_lora(model: Any, r: int, targets: list[str], alpha: float | None = None, label: str = "") -> LoraCount:
    """The exact adapter ``r`` and ``targets`` create on ``model`` (a real or meta torch model)."""
    import torch

    if r < 1:
        raise SettingsError("lora_r", "the rank must be at least 1.")
    head = model.get_output_embeddings()
    everything = targets == ["all-linear"]
    modules = [LoraModule(name, m.in_features, m.out_features, r) for name, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and m is not head and (everything or _matches(name, targets))]
    if not modules:
        kinds = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
        raise SettingsError("target_modules", f"no layer of this model is called {', '.join(targets)}. Its linear "
                                              f"layers are: {', '.join(kinds)} (or use all-linear).")
    base = sum(p.numel() for p in model.parameters())  # parameters() yields a tied weight once
    return LoraCount(model=label, r=r, alpha=float(alpha if alpha is not None else 2 * r), targets=targets,
                     modules=modules, base_params=base)


# ----------------------------------------------------------------------------------------- a finished run


@dataclass(frozen=True)
class UpdateSpectrum:
    """Singular values of one layer's learned update ΔW = (α / r)·B·A."""

    name: str
    singular_values: list[float]

    @property
    def norm(self) -> float:
        """Frobenius norm of ΔW (the update's total size)."""
        return math.sqrt(sum(s * s for s in self.singular_values))

    def energy_share(self, top: int) -> float:
        """Share of ΔW's squared norm carried by its ``top`` largest directions."""
        total = sum(s * s for s in self.singular_values)
        return sum(s * s for s in self.singular_values[:top]) / total if total else 0.0


def update_singular_values(a: Any, b: Any, scaling: float) -> list[float]:
    """Singular values of ``scaling · B @ A`` from QR factors: B = Q_b R_b, Aᵀ = Q_a R_a ⇒ B·A = Q_b (R_b R_aᵀ) Q_aᵀ."""
    import torch

    _, r_b = torch.linalg.qr(b.double())
    _, r_a = torch.linalg.qr(a.double().T)
    core = scaling * (r_b @ r_a.T)
    return [float(s) for s in torch.linalg.svdvals(core)]


def adapter_spectrum(adapter_dir: Path) -> list[UpdateSpectrum]:
    """The spectrum of every adapted layer of a saved PEFT adapter (``adapter_model.safetensors``)."""
    from safetensors.torch import load_file

    config = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    r, alpha = int(config["r"]), float(config.get("lora_alpha", config["r"]))
    scaling = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
    tensors = load_file(str(adapter_dir / "adapter_model.safetensors"))
    spectra = []
    for key in sorted(k for k in tensors if k.endswith("lora_A.weight")):
        name = key.removesuffix(".lora_A.weight").removeprefix("base_model.model.").removeprefix("model.")
        b = tensors[key.replace("lora_A", "lora_B")]
        spectra.append(UpdateSpectrum(name, update_singular_values(tensors[key], b, scaling)))
    if not spectra:
        raise ValueError("This adapter holds no LoRA layers (no lora_A/lora_B weights).")
    return spectra


def spectrum_summary(spectra: list[UpdateSpectrum]) -> dict[str, Any]:
    """Per-layer norm and top-k energy shares, plus their means: what the CLI and the Lab show."""
    rows = [{"layer": s.name, "norm": s.norm, **{f"top{k}_share": s.energy_share(k) for k in TOP_DIRECTIONS},
             "singular_values": s.singular_values} for s in spectra]
    means = {f"mean_top{k}_share": sum(row[f"top{k}_share"] for row in rows) / len(rows) for k in TOP_DIRECTIONS}
    return {"layers": rows, **means}
