"""``python -m bench gpu --smoke``: both arms of the GPU benchmark, SFT and DPO, run end to end on the CPU (a tiny
random model, a few steps each), so the CUDA run waiting for a GPU cannot break unseen in its CPU-testable parts."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CUDA_ONLY = ("half_precision", "liger_kernel", "paged_adamw_8bit", "batch_from_free_memory",
             "gradient_checkpointing_when_needed")


@pytest.mark.slow
def test_smoke_runs_both_arms_of_sft_and_dpo_on_equal_tokens(tmp_path: Path) -> None:
    out = tmp_path / "gpu_smoke.json"
    proc = subprocess.run([sys.executable, "-m", "bench", "gpu", "--smoke", "--out", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=150, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    row, dpo = json.loads(out.read_text())["rows"]
    assert (row["method"], dpo["method"]) == ("sft", "dpo")
    plain, app = row["plain"], row["app"]
    assert row["device"] == "cpu"
    for arm in (plain, app):
        assert arm["tokens"] > 0 and arm["steps"] > 0 and not arm["stopped_at_cap"]
        assert math.isfinite(arm["held_out_loss"]) and arm["held_out_loss"] > 0
        assert arm["peak_memory_kind"] == "cpu_rss_delta_sampled"
    assert app["tokens"] == plain["tokens"]  # the same rows, one epoch each: equal real tokens
    assert plain["pad_tokens"] > 0 and app["pad_tokens"] == 0  # padded batches against padding-free packing
    assert app["batch_positions"] < plain["batch_positions"]
    features = app["features"]
    assert features["padding_free_packing"].startswith("used")
    for name in CUDA_ONLY:
        assert features[name].startswith("not used: no CUDA"), (name, features[name])
    assert set(row["ratios"]) == {"tokens_per_second", "steady_tokens_per_second", "peak_memory", "held_out_loss"}
    assert "| smoke | sft | app / plain |" in proc.stdout
    assert_dpo_arms(dpo)
    assert "| smoke | dpo | app / plain |" in proc.stdout
    assert not (REPO / "bench" / "gpu_results.json").exists() or "smoke" not in (
        REPO / "bench" / "gpu_results.json").read_text()  # a smoke run never writes the CUDA results file


def assert_dpo_arms(row: dict) -> None:
    """Both DPO arms trained the same pairs (real tokens > 0, equal) and were scored on the held-out pairs."""
    plain, app = row["plain"], row["app"]
    assert row["device"] == "cpu"
    for arm in (plain, app):
        assert arm["tokens"] > 0 and arm["steps"] > 0 and not arm["stopped_at_cap"]
        assert math.isfinite(arm["held_out_loss"]) and arm["held_out_loss"] > 0
        assert 0 <= arm["held_out_reward_accuracy"] <= 1 and math.isfinite(arm["held_out_reward_margin"])
        assert arm["tokens_per_second"] > 0 and arm["peak_memory_kind"] == "cpu_rss_delta_sampled"
    assert app["tokens"] == plain["tokens"] == plain["dataset_tokens"]  # equal pairs, one epoch, nothing cut
    assert plain["settings"]["loss_type"] == app["settings"]["loss_type"] == "['sigmoid']"
    assert app["features"]["padding_free_packing"].startswith("not used: DPO pads")
    assert app["features"]["preset"] == "quick-cpu-dpo"


def test_plan_fits_its_budget_even_when_every_arm_hits_its_cap() -> None:
    from bench import gpu

    models = [*gpu.SHAPES, "bundled"]
    specs = gpu.plan(models, budget_s=420, smoke=False)
    runs = [(s["model"], s["method"]) for s in specs]
    assert runs == [(m, "sft") for m in models] + [("SmolLM2-135M", "dpo"), ("Qwen3-0.6B", "dpo")]
    assert sum(gpu.SETUP_S + 2 * s["cap_s"] for s in specs) <= 420
    assert all(s["rows"] >= (32 if s["method"] == "dpo" else 64) for s in specs)
    assert [s["method"] for s in gpu.plan(models, 420, False, ())] == ["sft"] * len(models)
