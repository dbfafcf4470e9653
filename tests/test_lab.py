"""The Lab's numbers: textbook calibration exactly, LoRA counts equal to PEFT's, 4-bit errors equal to a direct
bitsandbytes round trip, layer statistics equal to scipy's, update spectra equal to a full SVD."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engine.lab import decide
from engine.lab.layers import (
    METHODS,
    analyse_folder,
    bnb_round_trip,
    looks_dequantized_from_4bit,
    quant_errors,
    tensor_stats,
)
from engine.lab.lora import adapter_spectrum, count_lora, meta_model, parse_targets, spectrum_summary
from engine.lab.quant import QuantSettings, calibrate, parse_values, round_half_away
from tests.ui_harness import REPO

# ----------------------------------------------------------------------------------------- calibration


def test_textbook_symmetric_unsigned_0_to_1000():
    """The course: [0, 1000] to unsigned 8-bit, zero point 0, scale 1000/255 = 3.92; 250 → 64."""
    result = calibrate([0, 250, 1000], QuantSettings(bits=8, scheme="symmetric", signed=False))
    assert result.zero_point == 0
    assert result.scale == 1000 / 255 and round(result.scale, 2) == 3.92
    assert [v.q for v in result.values] == [0, 64, 255]
    assert result.values[1].dequant == pytest.approx(64 * 1000 / 255)


def test_textbook_asymmetric_minus20_to_1000():
    """The course: asymmetric [-20, 1000] to uint8 → scale 1020/255 = 4.0, zero point 5."""
    result = calibrate([-20, 0, 1000], QuantSettings(bits=8, scheme="asymmetric", signed=False))
    assert result.scale == 4.0 and result.zero_point == 5
    assert [v.q for v in result.values] == [0, 5, 255]
    assert [v.error for v in result.values] == [0.0, 0.0, 0.0]


def test_rounding_is_half_away_from_zero_then_clamped():
    assert list(round_half_away(np.array([2.5, -2.5, 0.5, -0.5, 1.49]))) == [3, -3, 1, -1, 1]
    # signed symmetric int8: scale = 127/127 = 1, so 2.5 → 3 (numpy's round would give 2) and -2.5 → -3
    result = calibrate([127, 2.5, -2.5], QuantSettings(bits=8, scheme="symmetric", signed=True))
    assert result.scale == 1.0 and [v.q for v in result.values] == [127, 3, -3]
    # 4-bit signed: 16 levels -8..7. The 80th percentile of the values is 5.6 (numpy's linear interpolation), so
    # scale = 5.6 / 7 = 0.8: 6 / 0.8 = 7.5 rounds to 8 and clamps to 7, and the outlier 100 clamps too.
    clipped = calibrate([0, 1, 2, 3, 4, 5, 6, 100],
                        QuantSettings(bits=4, scheme="symmetric", signed=True, clip="percentile", percentile=80))
    assert (clipped.qmin, clipped.qmax) == (-8, 7) and clipped.scale == pytest.approx(0.8)
    assert [v.q for v in clipped.values] == [0, 1, 3, 4, 5, 6, 7, 7] and clipped.clamped == 2
    assert len(clipped.grid()) == 16


def test_unsigned_symmetric_warns_about_negatives_and_bad_values_are_named():
    result = calibrate([-5, 10], QuantSettings(scheme="symmetric", signed=False))
    assert result.values[0].q == 0 and any("negative values clamp to 0" in n for n in result.notes)
    with pytest.raises(ValueError, match=r"entry 2 \('abc'\) is not a number"):
        parse_values("1, abc, 3")
    with pytest.raises(ValueError, match="only finite numbers"):
        parse_values("1, inf")


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine", "lab", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300)


def test_cli_quant_json_prints_scale_zero_point_and_values():
    out = _cli("quant", "--values", "0,250,1000", "--bits", "8", "--scheme", "symmetric", "--unsigned", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert round(data["scale"], 2) == 3.92 and data["zero_point"] == 0
    assert [v["q"] for v in data["values"]] == [0, 64, 255]
    assert set(data["values"][0]) == {"value", "q", "dequant", "error"}
    # a list starting with a minus sign is values, not a flag
    out = _cli("quant", "--values", "-20,1000", "--scheme", "asymmetric", "--unsigned", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["zero_point"] == 5
    bad = _cli("quant", "--values", "1,x")
    assert bad.returncode == 2 and "entry 2 ('x') is not a number" in bad.stderr


# ----------------------------------------------------------------------------------------- layers


def test_layer_statistics_equal_scipy():
    from scipy import stats

    rng = np.random.default_rng(0)
    weights = rng.standard_t(df=4, size=(64, 96)).astype(np.float32)
    weights[0, 0] = 40.0  # one far outlier
    got = tensor_stats(weights)
    x = weights.astype(np.float64).ravel()
    assert got.min == x.min() and got.max == x.max()
    assert got.mean == pytest.approx(np.mean(x), rel=1e-12)
    assert got.std == pytest.approx(np.std(x), rel=1e-12)
    assert got.skewness == pytest.approx(stats.skew(x), rel=1e-9)
    assert got.kurtosis == pytest.approx(stats.kurtosis(x), rel=1e-9)  # Fisher: excess kurtosis
    assert got.outlier_share == pytest.approx(np.mean(np.abs(x - x.mean()) > 6 * x.std()))
    assert got.outlier_share >= 1 / x.size


def test_nf4_and_fp4_errors_equal_a_direct_bitsandbytes_round_trip():
    import bitsandbytes.functional as bnbf
    import torch

    rng = np.random.default_rng(1)
    weights = (rng.standard_normal((128, 192)) * 0.02).astype(np.float32)
    errors = {e.method: e for e in quant_errors(weights)}
    assert set(errors) == set(METHODS)
    for quant_type in ("nf4", "fp4"):
        for double in (False, True):
            packed, state = bnbf.quantize_4bit(torch.from_numpy(weights), blocksize=64,
                                               compress_statistics=double, quant_type=quant_type)
            restored = bnbf.dequantize_4bit(packed, state).numpy().astype(np.float64)
            diff = restored - weights.astype(np.float64)
            got = errors[quant_type + (" + double quant" if double else "")]
            assert got.mse == pytest.approx(np.mean(diff**2), rel=1e-12)
            assert got.max_abs == pytest.approx(np.max(np.abs(diff)), rel=1e-12)
            assert got.sqnr_db == pytest.approx(10 * np.log10(np.sum(weights.astype(np.float64) ** 2)
                                                               / np.sum(diff**2)), rel=1e-12)
    # 4 bits per weight plus one fp32 absmax per 64 (8-bit absmax + a small nested state with double quant)
    assert errors["nf4"].bytes == weights.size // 2 + weights.size // 64 * 4
    assert errors["nf4 + double quant"].bytes < errors["nf4"].bytes
    assert errors["nf4"].mse < errors["fp4"].mse  # NF4's levels suit normal weights better than FP4's
    assert errors["int8 symmetric"].mse < errors["nf4"].mse


def test_bundled_model_is_flagged_as_dequantized_from_4bit_and_sized_from_its_tensors():
    from safetensors import safe_open

    from engine.models import bundled_model_dir

    folder = bundled_model_dir()
    report = analyse_folder(folder, "bundled", max_layers=3)
    assert len(report.layers) == 3 and report.skipped_layers == 210 - 3
    assert all(layer.grid_like for layer in report.layers) and "dequantized from a 4-bit file" in report.notes[0]
    with safe_open(str(folder / "model.safetensors"), "pt") as handle:
        total = sum(int(np.prod(handle.get_slice(k).get_shape())) for k in handle.keys())  # noqa: SIM118
    assert report.sizes["fp32"] == 4 * total and report.sizes["bf16"] == 2 * total
    assert report.sizes["nf4 + double quant"] < report.sizes["nf4"] < report.sizes["int8 symmetric"]
    assert not looks_dequantized_from_4bit(np.random.default_rng(0).standard_normal(32 * 64))


def test_tiny_model_walk_reports_every_linear_but_the_head(tiny_model_dir: Path):
    report = analyse_folder(tiny_model_dir, "tiny")
    assert len(report.layers) == 2 * 7 and report.notes == []  # random weights are not grid-like
    worst = report.worst("nf4", 3)
    assert [w.error("nf4").sqnr_db for w in worst] == sorted(w.error("nf4").sqnr_db for w in worst)
    data = report.to_dict(histograms=True)
    assert sum(data["layers"][0]["histogram"]["counts"]) == report.layers[0].params


@pytest.mark.parametrize("r", [1, 3])
def test_bnb_round_trip_is_deterministic(r: int):
    weights = np.random.default_rng(r).standard_normal((r * 8, 64)).astype(np.float32)
    first, _ = bnb_round_trip(weights, "nf4", True)
    second, _ = bnb_round_trip(weights, "nf4", True)
    assert np.array_equal(first, second)


# ----------------------------------------------------------------------------------------- LoRA


@pytest.mark.slow
def test_lora_count_equals_peft_on_the_bundled_model():
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from engine.models import bundled_model_dir

    folder = bundled_model_dir()
    shapes = meta_model(folder)
    for r, targets in ((8, "q_proj,v_proj"), (16, "all-linear"), (4, "q_proj,k_proj,v_proj,o_proj,gate_proj")):
        ours = count_lora(shapes, r, parse_targets(targets))
        peft_targets = "all-linear" if targets == "all-linear" else parse_targets(targets)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(str(folder)),
                               LoraConfig(r=r, target_modules=peft_targets))
        trainable, total = model.get_nb_trainable_parameters()
        assert ours.trainable_params == trainable, targets
        assert ours.base_params == total - trainable
    out = _cli("lora", "--r", "8", "--targets", "q_proj,v_proj", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["trainable_params"] == count_lora(shapes, 8, ["q_proj", "v_proj"]).trainable_params


def test_cli_lora_on_a_hub_model_fetches_only_its_config(hub_server, tiny_model_dir: Path, tmp_path: Path):
    """A Hub id is counted from config.json alone (a 70B model costs no download); gated needs a token."""
    import os

    from tests.hub_server import GATED_REPO, PUBLIC_REPO

    env = {**os.environ, **hub_server.env(), "TUNE_STUDIO_MODELS": str(tmp_path)}
    env.pop("HF_TOKEN", None)
    hub_server.clear_requests()
    out = subprocess.run([sys.executable, "-m", "engine", "lab", "lora", "--model", PUBLIC_REPO, "--r", "4",
                          "--targets", "q_proj,v_proj", "--json"], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["trainable_params"] == count_lora(meta_model(tiny_model_dir), 4,
                                                                    ["q_proj", "v_proj"]).trainable_params
    fetched = {r.path.rsplit("/", 1)[-1] for r in hub_server.requests_for(PUBLIC_REPO) if "/resolve/" in r.path}
    assert fetched == {"config.json"}
    gated = subprocess.run([sys.executable, "-m", "engine", "lab", "lora", "--model", GATED_REPO], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=300)
    assert gated.returncode == 2 and "token" in gated.stderr.lower() and "Traceback" not in gated.stderr


def test_lora_unknown_target_lists_the_real_layers(tiny_model_dir: Path):
    with pytest.raises(ValueError, match=r"Its linear layers are: .*q_proj"):
        count_lora(meta_model(tiny_model_dir), 8, ["qkv"])


def test_update_spectrum_equals_full_svd(tiny_model_dir: Path, tmp_path: Path):
    import torch
    from safetensors.torch import load_file

    from tests.tiny_models import make_tiny_adapter

    adapter = make_tiny_adapter(tiny_model_dir, tmp_path / "adapter", seed=3)
    config = json.loads((adapter / "adapter_config.json").read_text())
    scaling = config["lora_alpha"] / config["r"]
    tensors = load_file(str(adapter / "adapter_model.safetensors"))
    spectra = adapter_spectrum(adapter)
    assert len(spectra) == 2 * 2  # q_proj and v_proj of 2 layers
    for spectrum in spectra:
        key = next(k for k in tensors if spectrum.name in k and "lora_A" in k)
        delta = scaling * (tensors[key.replace("lora_A", "lora_B")].double() @ tensors[key].double())
        full = torch.linalg.svdvals(delta)[: config["r"]].tolist()
        assert spectrum.singular_values == pytest.approx(full, rel=1e-9, abs=1e-12)
        assert spectrum.norm == pytest.approx(float(torch.linalg.norm(delta)), rel=1e-9)
    summary = spectrum_summary(spectra)
    assert 0 < summary["mean_top1_share"] <= summary["mean_top4_share"] == pytest.approx(1.0)  # rank 4 ⇒ all


# ----------------------------------------------------------------------------------------- precision


@pytest.mark.slow
def test_full_precision_and_nf4_answer_the_same_prompt(tiny_model_dir: Path):
    from engine.lab.precision import compare_precisions

    phases: list[str] = []
    results = compare_precisions(str(tiny_model_dir), "Hello", max_new_tokens=4, on_phase=phases.append)
    assert [r.format for r in results] == ["full precision", "NF4 (4-bit)"]
    assert all(np.isfinite(r.perplexity) and r.perplexity > 1 for r in results)
    assert results[1].footprint_bytes < results[0].footprint_bytes
    assert results[0].perplexity != results[1].perplexity  # 4-bit weights change the model's predictions
    assert phases[0] == "Loading the model in full precision"


# ----------------------------------------------------------------------------------------- decision guide


def test_decision_guide_follows_the_course_rules_and_quotes_measurements():
    base = {"changes": "no", "citations": "no", "goal": "style", "examples": "over 1,000", "prompt_works": "no"}
    assert decide.recommend(base).approach == "Fine-tuning"
    assert decide.recommend({**base, "changes": "yes"}).approach == "Fine-tuning + RAG"
    assert decide.recommend({**base, "examples": "under 100"}).approach == "Prompting"
    assert decide.recommend({**base, "goal": "facts", "examples": "none"}).approach == "RAG"
    assert decide.recommend({**base, "prompt_works": "yes"}).approach == "Prompting"
    with pytest.raises(ValueError, match="Answer the question"):
        decide.recommend({**base, "goal": ""})
    report = {"summary": {"base": {"contained": 0.2, "questions": 12}, "rag": {"contained": 0.6, "questions": 12}}}
    evidence = decide.recommend(base, report).evidence
    assert evidence[0] == "On your 12 question(s), answers containing the reference: RAG 60%, the base model 20%."
    assert "fewer than 30 questions" in evidence[1]


def test_the_lab_refuses_a_model_over_its_size_limit_before_downloading_weights(tiny_model_dir: Path,
                                                                                 monkeypatch: pytest.MonkeyPatch):
    from engine.limits import LimitError
    from ui.lab_tab import check_lab_size

    check_lab_size(str(tiny_model_dir), None)  # ~6.4 M parameters: under the default 3 billion
    monkeypatch.setenv("TUNE_STUDIO_LIMIT_MAX_LAB_MODEL_B", "0.001")
    with pytest.raises(LimitError, match=r"\(billion parameters\) is 0\.006; the limit here .* is 0\.001"):
        check_lab_size(str(tiny_model_dir), None)
