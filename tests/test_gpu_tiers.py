"""GPU tiers (``engine.hardware``): recognising the card, the preset for it, and the largest model each method fits.

Everything is computed from the memory estimate, so it runs on CPU. The public knowledge the figures are held to:
QLoRA of a 7-8B model is routinely done on a free 16 GB T4, while 16-bit LoRA of one needs more than 16 GB for its
weights alone; a card with more memory never fits a smaller model.
"""

from __future__ import annotations

import pytest
from huggingface_hub import SpaceHardware

from engine.config import load_preset, preset_names
from engine.hardware import (
    TIERS,
    fits,
    largest_model_that_fits,
    method_config,
    precision_note,
    tier_fit,
    tier_fits,
    tier_for_device,
)
from engine.memory import GB
from engine.models import model_info

T4 = next(t for t in TIERS if t.key == "t4")
H200 = next(t for t in TIERS if t.key == "h200")
SEVEN_TO_EIGHT_B = ("Qwen/Qwen2.5-7B-Instruct", "meta-llama/Llama-3.1-8B-Instruct", "Qwen/Qwen3-8B")


@pytest.mark.parametrize(("name", "total_bytes", "key", "bf16"), [
    ("Tesla T4", 15_828_320_256, "t4", False),  # torch reports 14.7 GiB on a "16 GB" T4
    ("NVIDIA L4", 23_580_639_232, "l4", True),
    ("NVIDIA A10G", 23_836_098_560, "a10g", True),
    ("NVIDIA L40S", 47_697_362_944, "l40s", True),
    ("NVIDIA A100-SXM4-40GB", 42_298_834_944, "a100-40", True),
    ("NVIDIA A100-SXM4-80GB", 85_051_572_224, "a100-80", True),
    ("NVIDIA H100 80GB HBM3", 84_929_216_512, "h100", True),
    ("NVIDIA H200", 150_754_820_096, "h200", True),
])
def test_known_cards_are_recognised_with_their_precision_and_measured_memory(name, total_bytes, key, bf16) -> None:
    tier = tier_for_device(name, total_bytes)
    assert (tier.key, tier.bf16) == (key, bf16)
    assert tier.usable_gb == pytest.approx(total_bytes / GB, abs=0.05)
    assert tier.preset in preset_names()


def test_the_h200_has_141_gb_and_the_t4_computes_in_float16() -> None:
    h200 = tier_for_device("NVIDIA H200", 150_754_820_096)
    assert h200.memory_gb == 141 and h200.usable_gb > 139
    assert load_preset(T4.preset).dtype == "float16"  # no bfloat16 on a T4 (torch may claim it, emulated)
    assert all(load_preset(t.preset).dtype == "auto" for t in TIERS if t.bf16)
    note = precision_note(T4, "bfloat16")  # the memory estimate's hint: which setting to change, where
    assert "float16" in note and "Advanced" in note and T4.preset in note
    assert precision_note(T4, "float16") == precision_note(T4, "auto") == ""
    assert precision_note(H200, "bfloat16") == precision_note(None, "auto") == ""


def test_unknown_cards_get_a_generic_tier_by_their_memory() -> None:
    rtx = tier_for_device("NVIDIA GeForce RTX 4090", 25_393_692_672, bf16=True)
    assert (rtx.key, rtx.label, rtx.memory_gb, rtx.bf16, rtx.preset) == ("other", "GeForce RTX 4090", 24, True,
                                                                         "24gb-gpu-qlora")
    small = tier_for_device("Quadro P5000", 16 * 10**9)
    assert (small.bf16, small.preset) == (False, "t4-gpu-qlora")
    assert tier_for_device("", 96 * GB).preset == "large-gpu-lora16"


def test_every_space_flavor_exists_and_every_tier_preset_fits_its_card() -> None:
    flavors = {hardware.value for hardware in SpaceHardware}
    assert {f for t in TIERS for f in t.flavors} <= flavors
    for tier in TIERS:
        config = load_preset(tier.preset)
        assert fits(model_info(config.base_model), config, tier.usable_gb), tier.key


def test_a_bigger_card_fits_an_equal_or_bigger_model() -> None:
    for method in ("qlora", "lora"):
        sizes = [tier_fit(t).largest[method].params_b for t in sorted(TIERS, key=lambda t: t.usable_gb)]
        assert sizes == sorted(sizes), (method, sizes)
        for preset in ("t4-gpu-qlora", "24gb-gpu-qlora", "large-gpu-lora16"):  # same settings, growing memory
            found = [largest_model_that_fits(gb, method, preset=preset) for gb in range(4, 150, 3)]
            sizes = [m.params_b if m else 0.0 for m in found]
            assert sizes == sorted(sizes), (method, preset)
    assert largest_model_that_fits(None, "qlora") is None
    assert largest_model_that_fits(1.0, "qlora") is None  # nothing fits in 1 GB


def test_qlora_fits_a_bigger_model_than_16_bit_lora_on_the_same_card() -> None:
    for tier in TIERS:
        fit = tier_fit(tier)
        assert fit.largest["qlora"].params_b >= fit.largest["lora"].params_b, tier.key
    for tier in TIERS[:3]:  # 16-24 GB: the 16-bit weights are the limit
        fit = tier_fit(tier)
        assert fit.largest["qlora"].params_b > fit.largest["lora"].params_b, tier.key


def test_a_7_to_8b_model_fits_a_t4_with_qlora_but_not_with_16_bit_lora() -> None:
    for model_id in SEVEN_TO_EIGHT_B:
        info = model_info(model_id)
        assert tier_fits(info, T4, "qlora") and not tier_fits(info, T4, "lora"), model_id
        assert tier_fits(info, H200, "lora"), model_id
    assert 7 <= tier_fit(T4).largest["qlora"].params_b < 9
    with pytest.raises(ValueError, match="qlora"):
        method_config(T4.preset, "full")


def test_the_picker_names_the_largest_model_and_which_gpus_fit() -> None:
    from ui.train_tab import gpu_tiers_text, largest_here_text, model_notes_text

    fit = tier_fit(T4)
    text = largest_here_text(fit)
    assert "Largest model that fits here" in text and "T4, 14.7 GB" in text
    assert f"QLoRA: {fit.largest['qlora'].label}" in text and f"LoRA: {fit.largest['lora'].label}" in text
    table = gpu_tiers_text("Qwen/Qwen2.5-7B-Instruct")
    header, _, qlora, lora = table.split("\n\n", 1)[1].splitlines()
    assert header.startswith("| | T4 16 GB | L4 / A10G 24 GB |") and "H200 141 GB" in header
    assert qlora.startswith("| QLoRA (4-bit) | ✅ |") and lora.startswith("| LoRA (16-bit) | ❌ |")
    assert lora.endswith("✅ |")  # an H200 holds it in 16-bit
    assert gpu_tiers_text("someone/not-downloaded-yet") == ""  # shape unknown: no guess shown
    notes = model_notes_text("Qwen/Qwen2.5-7B-Instruct")
    assert notes.startswith("*Qwen2.5-7B-Instruct:*") and table in notes

