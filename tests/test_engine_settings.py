"""Settings are defined once; presets, YAML, the CLI and validation all go through that definition."""

from __future__ import annotations

import pytest

from core.generation import GenerationSettings
from core.settings import SettingsError, describe
from engine.__main__ import _build_parser, _config_from_args
from engine.config import TrainConfig, load_preset, preset_names
from engine.memory import estimate_memory


@pytest.mark.parametrize("name", preset_names())
def test_every_shipped_preset_loads_and_validates(name: str) -> None:
    config = load_preset(name)
    assert isinstance(config, TrainConfig)
    assert config.to_dict() == TrainConfig.from_dict(config.to_dict()).to_dict()


def test_presets_exist_for_cpu_demo_and_gpu() -> None:
    assert {"quick-cpu-demo", "balanced-gpu-qlora"} <= set(preset_names())


def test_every_setting_has_help_text_and_a_default_within_bounds() -> None:
    for cls in (TrainConfig, GenerationSettings):
        infos = describe(cls)
        assert infos, cls
        for info in infos:
            assert len(info.spec.help) > 10, info.name
            if info.spec.minimum is not None:
                assert info.default >= info.spec.minimum, info.name
            if info.spec.maximum is not None:
                assert info.default <= info.spec.maximum, info.name
            if info.spec.choices:
                assert info.default in info.spec.choices, info.name


def test_yaml_round_trip(tmp_path) -> None:
    config = TrainConfig(lora_r=8, learning_rate=1e-4, packing=False)
    path = tmp_path / "c.yaml"
    config.to_yaml(path)
    assert TrainConfig.from_yaml(path) == config


@pytest.mark.parametrize(
    ("values", "names"),
    [
        ({"lora_r": 0}, "lora_r"),
        ({"learning_rate": 1.0}, "learning_rate"),
        ({"quantization": "3bit"}, "quantization"),
        ({"lora_rank": 8}, "lora_rank"),
        ({"batch_size": "many"}, "batch_size"),
        ({"device": "cpu", "optimizer": "paged_adamw_8bit"}, "optimizer"),
    ],
)
def test_bad_values_are_refused_with_the_setting_named(values: dict, names: str) -> None:
    with pytest.raises(SettingsError) as info:
        TrainConfig.from_dict(values)
    assert names in str(info.value)


def test_yaml_strings_are_coerced_to_the_declared_types() -> None:
    config = TrainConfig.from_dict({"lora_r": "8", "packing": "false", "learning_rate": "3e-4"})
    assert (config.lora_r, config.packing, config.learning_rate) == (8, False, 3e-4)


def test_cli_flags_are_generated_from_the_settings(tmp_path) -> None:
    data = tmp_path / "d.json"
    data.write_text("[]")
    args = _build_parser().parse_args(
        ["train", "--data", str(data), "--output", str(tmp_path / "o"), "--preset", "quick-cpu-demo",
         "--lora-r", "4", "--base", "Qwen/Qwen2.5-0.5B-Instruct", "--max-steps", "3", "--packing", "false"]
    )
    config = _config_from_args(args)
    preset = load_preset("quick-cpu-demo")
    assert (config.lora_r, config.base_model, config.max_steps, config.packing) == (
        4, "Qwen/Qwen2.5-0.5B-Instruct", 3, False)
    assert config.max_length == preset.max_length  # untouched settings come from the preset


def test_memory_estimate_moves_the_right_way() -> None:
    base = TrainConfig(batch_size=4, max_length=512, gradient_checkpointing=False)
    small, big = estimate_memory(base, "cpu"), estimate_memory(base.replace(batch_size=16), "cpu")
    assert big.activations_gb > 3 * small.activations_gb
    assert estimate_memory(base.replace(gradient_checkpointing=True), "cpu").activations_gb < small.activations_gb
    full = estimate_memory(base.replace(quantization="none"), "cpu")
    assert full.weights_gb > small.weights_gb


def test_memory_estimate_says_a_7b_model_in_full_precision_does_not_fit_a_small_gpu(monkeypatch) -> None:
    monkeypatch.setattr("engine.memory.device_capacity_gb", lambda device: 16.0)
    config = TrainConfig(base_model="meta-llama/Llama-2-7b-chat-hf", quantization="none", batch_size=8,
                         max_length=2048, gradient_checkpointing=False)
    estimate = estimate_memory(config, "cuda")
    assert estimate.fits is False
    assert estimate.advice and any("4bit" in tip for tip in estimate.advice)
    assert estimate_memory(config.replace(quantization="4bit", batch_size=1, gradient_checkpointing=True,
                                          max_length=1024), "cuda").fits is True
