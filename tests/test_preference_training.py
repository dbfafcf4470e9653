"""Real preference tuning (DPO, KTO, ORPO) on the bundled model, through the CLI and the job store.

Slow (minutes on 2 CPU cores) and run in CI. The proof that a method learned is measured independently of TRL's
own logs: ``engine.preference.preference_scores`` recomputes DPO's implicit rewards of the training pairs on a
fresh full-precision base with the saved adapter, against the reference the run used.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine import data
from engine.config import TrainConfig
from engine.events import Started, Step
from engine.jobs import JobStore
from engine.models import BUNDLED_ID
from engine.preference import preference_scores
from engine.train import train
from tests.conftest import REPO

pytestmark = pytest.mark.slow

PAIRS = [
    ("What is the capital of France?", "Paris.", "Berlin."),
    ("How many legs does a spider have?", "Eight.", "Six."),
    ("What colour is a clear daytime sky?", "Blue.", "Green."),
    ("What is 2 + 2?", "4.", "5."),
    ("Which planet do we live on?", "Earth.", "Mars."),
    ("What do bees make?", "Honey.", "Milk."),
    ("What is frozen water called?", "Ice.", "Steam."),
    ("How many days are in a week?", "Seven.", "Ten."),
]
MAX_LENGTH = 64
# Margins from the measured spread (bench/RESULTS.md, "Preference tests: spread"): these two recipes, run with
# seeds 42, 7 and 1234 while two other training processes kept the 2 cores busy (load 3.9-5.3), gave a mean
# reward margin on the 8 training pairs of 1.76, 1.36, 1.56 (DPO) and 0.73, 0.67 (KTO, seeds 42 and 7), reward
# accuracy 1.0 every time; the same seed gives the same figure. The bounds sit at about a third of the lowest.
DPO_MARGIN_MIN = 0.5
KTO_MARGIN_MIN = 0.2
QUICK = dict(max_length=MAX_LENGTH, batch_size=2, grad_accum=1, val_fraction=0.0, save_steps=100,
             warmup_ratio=0.0, lora_dropout=0.0, gradient_checkpointing=False, packing=False, device="cpu")


def pair_file(folder: Path) -> Path:
    """TRL's standard preference format: one JSON object per line with prompt, chosen and rejected."""
    path = folder / "pairs.jsonl"
    path.write_text("".join(json.dumps({"prompt": q, "chosen": c, "rejected": r}) + "\n" for q, c, r in PAIRS))
    return path


def run_in_process(home: Path, config: TrainConfig, data_file: Path, **submit: object) -> tuple[JobStore, object]:
    """Queue without starting a worker and train in this process (what the worker does), then record it."""
    store = JobStore(home)
    job = store.submit(config, data_file, start=False, **submit)
    result = train(job, store=None)
    store.finish(job.id, result.status, final_loss=result.final_loss)
    return store, store.load(job.id)


@pytest.fixture(scope="module")
def pairs_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return pair_file(tmp_path_factory.mktemp("pairs"))


@pytest.fixture(scope="module")
def dpo_cli_run(tmp_path_factory: pytest.TempPathFactory, pairs_path: Path) -> dict:
    """`python -m engine train --method dpo` on the 8 pairs, 10 steps."""
    home = tmp_path_factory.mktemp("dpo-home")
    out = tmp_path_factory.mktemp("dpo-run") / "run"
    env = {**os.environ, "TUNE_STUDIO_HOME": str(home)}
    result = subprocess.run(
        [sys.executable, "-m", "engine", "train", "--method", "dpo", "--data", str(pairs_path), "--output", str(out),
         "--preset", "quick-cpu-demo", "--max-steps", "10", "--max-length", str(MAX_LENGTH), "--batch-size", "2",
         "--grad-accum", "1", "--val-fraction", "0", "--learning-rate", "0.001", "--save-steps", "100",
         "--warmup-ratio", "0"], cwd=REPO, env=env, capture_output=True, text=True, timeout=1500)
    events = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    return {"result": result, "events": events, "out": out}


def test_dpo_cli_run_finishes_and_says_its_reference(dpo_cli_run: dict) -> None:
    result, events = dpo_cli_run["result"], dpo_cli_run["events"]
    assert result.returncode == 0, result.stderr[-3000:]
    started = next(e for e in events if e["event"] == "started")
    assert started["method"] == "dpo" and "base model" in started["reference"]
    steps = [e for e in events if e["event"] == "step"]
    assert len(steps) == 10 and all(e["reward_margin"] is not None for e in steps)
    assert abs(steps[0]["reward_margin"]) < 0.05, "at step 1 the policy is the reference: no margin yet"
    assert events[-1]["event"] == "done"
    metrics = json.loads((dpo_cli_run["out"] / "metrics.json").read_text())
    assert metrics["method"] == "dpo" and metrics["data_kind"] == "pairs"
    assert not (dpo_cli_run["out"] / "adapter" / "ref").exists(), "the frozen reference is not part of the result"


def test_dpo_grows_the_reward_margin_of_the_training_pairs(dpo_cli_run: dict, pairs_path: Path) -> None:
    assert dpo_cli_run["result"].returncode == 0
    pairs = data.prepare_preferences(pairs_path).pairs
    scores = preference_scores(BUNDLED_ID, dpo_cli_run["out"] / "adapter", pairs, MAX_LENGTH)
    assert scores["mean_margin"] > DPO_MARGIN_MIN, scores
    assert scores["reward_accuracy"] >= 0.75, scores
    assert scores["mean_chosen_reward"] > scores["mean_rejected_reward"]


def test_kto_on_the_pairs_raises_good_answers_over_bad_ones(tmp_path: Path, pairs_path: Path) -> None:
    config = TrainConfig(method="kto", max_steps=10, learning_rate=1e-3, **QUICK)
    store, job = run_in_process(tmp_path / "home", config, pairs_path)
    assert job.status == "done"
    events = store.events(job.id)
    started = next(e for e in events if isinstance(e, Started))
    assert started.method == "kto" and started.train_rows == 2 * len(PAIRS)  # each pair: one good, one bad answer
    assert any(isinstance(e, Step) and e.reward_chosen is not None for e in events)
    pairs = data.prepare_preferences(pairs_path).pairs
    scores = preference_scores(BUNDLED_ID, job.adapter_dir, pairs, MAX_LENGTH)
    assert scores["mean_margin"] > KTO_MARGIN_MIN, scores


def test_kto_file_with_labels_is_trained_as_feedback_and_refused_for_dpo(tmp_path: Path) -> None:
    feedback = tmp_path / "feedback.jsonl"
    feedback.write_text("".join(json.dumps({"prompt": q, "completion": a, "label": good}) + "\n"
                                for q, c, r in PAIRS[:2] for a, good in ((c, True), (r, False))))
    store = JobStore(tmp_path / "home")
    job = store.submit(TrainConfig(method="dpo", max_steps=1, **QUICK), feedback, start=False)
    with pytest.raises(data.DatasetError, match="pairs of answers"):
        train(job, store=None)


def test_dpo_continuing_an_sft_run_uses_that_adapter_as_its_frozen_reference(tmp_path: Path,
                                                                              pairs_path: Path) -> None:
    home = tmp_path / "home"
    sft = TrainConfig(method="sft", max_steps=4, learning_rate=2e-3, **QUICK)
    _, sft_job = run_in_process(home, sft, pairs_path, data_options={"sft_on_chosen": True}, owner="ada")
    assert sft_job.status == "done"
    # The SFT adapter really moved the model (LoRA's B matrices start at zero), so a run whose reference were
    # the bare base would start with non-zero rewards.
    from safetensors.torch import load_file

    weights = load_file(str(sft_job.adapter_dir / "adapter_model.safetensors"))
    assert max(float(w.abs().max()) for name, w in weights.items() if "lora_B" in name) > 1e-3

    dpo = TrainConfig(method="dpo", from_run=sft_job.id, max_steps=2, learning_rate=1e-3, **QUICK)
    _, dpo_job = run_in_process(home, dpo, pairs_path, owner="ada")
    assert dpo_job.status == "done" and dpo_job.start_adapter == str(sft_job.adapter_dir)
    events = JobStore(home).events(dpo_job.id)
    started = next(e for e in events if isinstance(e, Started))
    assert sft_job.id in started.reference and "frozen" in started.reference
    first = next(e for e in events if isinstance(e, Step))
    assert abs(first.reward_chosen) < 0.01 and abs(first.reward_rejected) < 0.01, first


def test_a_run_cannot_continue_someone_elses_run_or_another_base(tmp_path: Path, pairs_path: Path) -> None:
    from engine.jobs import JobError

    store = JobStore(tmp_path / "home")
    other = store.submit(TrainConfig(max_steps=1, **QUICK), pairs_path, start=False, owner="bob",
                         data_options={"sft_on_chosen": True})
    with pytest.raises(JobError, match="no run"):
        store.submit(TrainConfig(method="dpo", from_run=other.id, **QUICK), pairs_path, start=False, owner="ada")
    with pytest.raises(JobError, match="has not finished"):
        store.submit(TrainConfig(method="dpo", from_run=other.id, **QUICK), pairs_path, start=False, owner="bob")


def test_orpo_trains_from_the_experimental_trainer(tmp_path: Path, pairs_path: Path) -> None:
    config = TrainConfig(method="orpo", max_steps=2, learning_rate=1e-3, **QUICK)
    store, job = run_in_process(tmp_path / "home", config, pairs_path)
    assert job.status == "done" and (job.adapter_dir / "adapter_model.safetensors").is_file()
    events = store.events(job.id)
    started = next(e for e in events if isinstance(e, Started))
    assert started.method == "orpo" and "no reference" in started.reference
    assert all(e.reward_margin is not None for e in events if isinstance(e, Step))
