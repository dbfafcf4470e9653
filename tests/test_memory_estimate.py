"""The memory estimate against measured peaks: the committed bench table, and one real run's own record.

``bench/memory_runs.json`` holds real training runs measured by ``python -m bench memory`` (peak RSS of a fresh
process per run). Each row is re-estimated here from its stored settings and model shape with the estimator as
it is now, so a change to ``engine/memory.py`` that moves any row outside ±25% fails this test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.memory import BENCH_RUNS, MemoryRow, bench_rows, comparable_gb, estimate_bench_run, memory_table
from tests.conftest import REPO

TOLERANCE = 0.25  # issue #15: estimate within ±25% of the measured peak


def _bench_table() -> dict:
    assert BENCH_RUNS.is_file(), f"{BENCH_RUNS} is missing: run `python -m bench memory` and commit it"
    return json.loads(BENCH_RUNS.read_text())


def test_every_committed_bench_row_is_within_25_percent_of_its_measured_peak() -> None:
    runs = _bench_table()["runs"]
    shapes = {run["model"] for run in runs}
    assert len(runs) >= 10 and len(shapes) >= 3, shapes
    assert {run["settings"]["quantization"] for run in runs} >= {"4bit", "none"}
    assert sum("1.7B" in run["model"] for run in runs) >= 2
    outside = []
    for run in runs:
        ratio = comparable_gb(estimate_bench_run(run), run["measured_kind"]) / run["measured_gb"]
        if not 1 - TOLERANCE <= ratio <= 1 + TOLERANCE:
            outside.append(f"#{run['index']} {run['model']} {run['settings']}: ratio {ratio:.2f}")
    assert not outside, "estimate / measured outside ±25%:\n" + "\n".join(outside)


def test_bench_rows_come_back_per_device_with_their_ratio() -> None:
    rows = bench_rows()
    assert len(rows) == len(_bench_table()["runs"])
    table = memory_table(include_bench=True)
    assert table["cpu"] == rows  # no runs given: the committed rows only, all measured on CPU
    assert all(isinstance(r, MemoryRow) and r.source == "bench" and r.measured_kind == "cpu_rss" for r in rows)
    assert all(r.ratio == pytest.approx(r.estimated_gb / r.measured_gb) for r in rows)


def test_runs_without_a_recorded_peak_are_skipped(tmp_path: Path) -> None:
    old = tmp_path / "old-run"
    old.mkdir()
    (old / "metrics.json").write_text(json.dumps({"steps": 3, "final_loss": 1.0}))  # before peaks were recorded
    (tmp_path / "unfinished").mkdir()
    assert memory_table([old, tmp_path / "unfinished"], include_bench=False) == {}


@pytest.mark.slow
def test_a_real_run_records_its_peak_and_the_table_shows_it(tmp_path: Path, isolated_home: Path, tokenizer) -> None:
    """Two optimizer steps of a tiny random model through the CLI, the job queue and a worker process."""
    from engine.jobs import JobStore
    from tests.tiny_models import make_tiny_model

    models = tmp_path / "models"
    make_tiny_model(models / "SmolLM2-135M-Instruct", tokenizer)  # trained as "the bundled model"
    data = tmp_path / "faq.json"
    data.write_text(json.dumps([{"instruction": f"What is item {i}?", "output": f"Item {i} is thing {i}. " * 8}
                                for i in range(8)]))
    out = tmp_path / "run"
    env = {**os.environ, "TUNE_STUDIO_HOME": str(isolated_home), "TUNE_STUDIO_MODELS": str(models)}
    result = subprocess.run(
        [sys.executable, "-m", "engine", "train", "--data", str(data), "--output", str(out), "--preset",
         "quick-cpu-demo", "--max-steps", "2", "--max-length", "64", "--batch-size", "2", "--grad-accum", "1",
         "--val-fraction", "0", "--save-steps", "100"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["device"] == "cpu" and metrics["peak_memory_kind"] == "cpu_rss"
    assert 0.1 < metrics["peak_memory_gb"] < 64  # the worker's own peak RSS: torch alone is ~0.4 GB
    assert metrics["estimated_memory_gb"] > 0
    # the estimate was made from the loaded model's own shape (2 layers, hidden 64), not the bundled model's
    assert metrics["memory_estimate"]["weights_gb"] < 0.05
    assert metrics["memory_settings"]["max_length"] == 64 and metrics["memory_settings"]["quantization"] == "4bit"

    table = memory_table(JobStore(isolated_home).list(), include_bench=True)
    mine = [row for row in table["cpu"] if row.source == f"run {out.name}"]
    assert len(mine) == 1, table
    row = mine[0]
    assert row.measured_gb == metrics["peak_memory_gb"] and row.estimated_gb == metrics["estimated_memory_gb"]
    assert row.ratio == pytest.approx(row.estimated_gb / row.measured_gb)
    assert (row.lora_r, row.batch_size, row.gradient_checkpointing) == (16, 2, False)
    assert any(r.source == "bench" for r in table["cpu"])  # the committed rows follow the runs
