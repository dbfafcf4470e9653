"""Model registry and the device/precision choices, including the GPU-only paths CI can still check."""

from __future__ import annotations

import pytest
import torch

from engine.config import TrainConfig
from engine.models import (
    BUNDLED_ID,
    MODELS,
    ModelError,
    hub_kwargs,
    load_tokenizer,
    pick_device,
    pick_dtype,
    quantization_config,
)
from engine.train import explain_failure, planned_steps, resolve_optimizer


def test_registry_offers_the_bundled_model_first_and_hub_models() -> None:
    assert MODELS[0].id == BUNDLED_ID and MODELS[0].bundled
    ids = {m.id for m in MODELS}
    assert {"Qwen/Qwen2.5-0.5B-Instruct", "meta-llama/Llama-3.2-1B-Instruct", "google/gemma-2-2b-it"} <= ids
    assert all(m.layers and m.hidden and m.vocab for m in MODELS)


def test_gated_model_without_token_is_refused_before_any_download(monkeypatch) -> None:
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with pytest.raises(ModelError, match=r"gated.*token"):
        hub_kwargs("meta-llama/Llama-3.2-1B-Instruct", None)
    assert hub_kwargs("meta-llama/Llama-3.2-1B-Instruct", "hf_x") == {"token": "hf_x"}
    assert hub_kwargs("Qwen/Qwen2.5-0.5B-Instruct", None) == {}


def test_device_and_dtype_choices() -> None:
    assert pick_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert pick_dtype("cpu") is torch.float32
    assert pick_dtype("cpu", "bfloat16") is torch.bfloat16
    if not torch.cuda.is_available():
        with pytest.raises(ModelError, match="needs a GPU"):
            pick_device("cuda")


def test_quantization_configs_are_nf4_with_double_quant_or_8bit() -> None:
    four = quantization_config("4bit", torch.bfloat16)
    assert four.load_in_4bit and four.bnb_4bit_quant_type == "nf4" and four.bnb_4bit_use_double_quant
    assert four.bnb_4bit_compute_dtype == torch.bfloat16
    assert quantization_config("8bit", torch.float16).load_in_8bit
    assert quantization_config("none", torch.float32) is None


def test_optimizer_auto_is_paged_8bit_on_gpu_and_adamw_on_cpu() -> None:
    assert resolve_optimizer(TrainConfig(), "cuda") == "paged_adamw_8bit"
    assert resolve_optimizer(TrainConfig(), "cpu") == "adamw_torch"
    assert resolve_optimizer(TrainConfig(optimizer="adafactor"), "cuda") == "adafactor"


def test_planned_steps_from_epochs_or_max_steps() -> None:
    assert planned_steps(TrainConfig(max_steps=7), 1000) == 7
    assert planned_steps(TrainConfig(batch_size=4, grad_accum=2, num_epochs=2.0), 80) == 20


def test_out_of_memory_gets_concrete_fixes() -> None:
    reason, fixes = explain_failure(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert "out of memory" in reason.lower()
    assert any("Batch size" in f for f in fixes) and any("4bit" in f for f in fixes)
    reason, fixes = explain_failure(KeyError("instruction"))
    assert "KeyError" in reason and not fixes


def test_bundled_tokenizer_has_a_chat_template_and_pad_token() -> None:
    tokenizer = load_tokenizer()
    assert tokenizer.chat_template and tokenizer.pad_token is not None
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                         add_generation_prompt=True)
    assert text.endswith("<|im_start|>assistant\n")
