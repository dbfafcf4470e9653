"""Model registry, device/precision choices (with the GPU-only paths CI can still check), Hub models via a fake Hub."""

from __future__ import annotations

import pytest
import torch

from engine.config import TrainConfig
from engine.models import (
    BUNDLED_ID,
    MODELS,
    ModelError,
    hub_kwargs,
    load_base_model,
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
    monkeypatch.setenv("HF_TOKEN", "hf_server_own_token")  # the operator's token never stands in for a visitor's
    with pytest.raises(ModelError, match=r"gated.*token") as info:
        hub_kwargs("meta-llama/Llama-3.2-1B-Instruct", None)
    assert "https://huggingface.co/meta-llama/Llama-3.2-1B-Instruct" in str(info.value)
    assert hub_kwargs("meta-llama/Llama-3.2-1B-Instruct", "hf_x") == {"token": "hf_x"}
    assert hub_kwargs("Qwen/Qwen2.5-0.5B-Instruct", None) == {}
    with pytest.raises(ModelError, match="file path"):
        hub_kwargs("/etc", None)


def test_device_choice_follows_what_torch_can_see(monkeypatch) -> None:
    tensor = torch.zeros(2, device=pick_device("auto"))  # whatever auto picks here can really hold tensors
    assert tensor.device.type == pick_device("auto")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device("auto") == "cpu" and pick_device("cpu") == "cpu"
    with pytest.raises(ModelError, match="needs a GPU"):
        pick_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device("auto") == "cuda" and pick_device("cuda") == "cuda"


def test_dtype_choices() -> None:
    assert pick_dtype("cpu") is torch.float32
    assert pick_dtype("cpu", "bfloat16") is torch.bfloat16
    assert pick_dtype("cuda", "float16") is torch.float16


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


# ------------------------------------------------------------------------- Hub models (fake Hub)


def test_a_hub_model_downloads_with_progress_and_loads_from_its_snapshot(fake_hub) -> None:
    from tests.hub_server import PUBLIC_REPO

    fake_hub.bytes_per_second = 20e6
    tokenizer = load_tokenizer(PUBLIC_REPO)
    assert not any(r.path.endswith("model.safetensors") for r in fake_hub.requests_for(PUBLIC_REPO))
    events = []
    model = load_base_model(PUBLIC_REPO, device="cpu", dtype="float32", on_progress=events.append)
    assert (model.config.hidden_size, model.config.num_hidden_layers) == (64, 2)
    assert model.config._commit_hash == fake_hub.repo(PUBLIC_REPO).sha  # the revision a run records
    from peft import LoraConfig, get_peft_model

    lora = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    assert lora.peft_config["default"].base_model_name_or_path == PUBLIC_REPO  # the id, never a cache path
    lora.unload()
    assert events and events[-1].done == events[-1].total > 10 * 2**20 and events[-1].repo_id == PUBLIC_REPO
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)
    out = model.generate(**prompt, max_new_tokens=3, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert out.shape[1] == prompt["input_ids"].shape[1] + 3
    assert {r.auth for r in fake_hub.requests_for(PUBLIC_REPO)} == {"none"}


@pytest.mark.parametrize("text", ["../models/x", "~/x", "./x", "C:\\x"])
def test_relative_and_home_paths_are_not_loaded(text: str) -> None:
    from engine.hub import HubError

    with pytest.raises(HubError, match="file path"):
        load_tokenizer(text)


def test_a_gated_hub_model_needs_the_token_of_an_account_that_accepted_its_licence(fake_hub) -> None:
    from engine.hub import HubError
    from tests.hub_server import GATED_REPO, READER_TOKEN

    with pytest.raises(HubError, match=f"https://huggingface.co/{GATED_REPO}") as info:
        load_base_model(GATED_REPO, device="cpu", dtype="float32")
    assert info.value.kind == "gated"
    tokenizer = load_tokenizer(GATED_REPO, READER_TOKEN)
    assert tokenizer.chat_template
    assert {r.auth for r in fake_hub.requests_for(GATED_REPO) if "/resolve/" in r.path} == {"reader"}
