"""One run on two processes (DDP through accelerate, gloo on CPU), as a multi-GPU Space runs it on its GPUs.

Real jobs through the job store and its worker, a tiny random-weight model (tests/tiny_models.py) in 4-bit:
the mechanics (both ranks train, one adapter, the same loss as one process with the same global batch,
cancel, resume, a killed rank) do not depend on the model's size.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.settings import SettingsError
from engine import events as ev
from engine.config import TrainConfig
from engine.distributed import failure_reason, processes_for, rank_record_path, read_rank_records
from engine.jobs import JobRecord, JobStore, process_alive
from tests.conftest import FT_DATA, REPO

pytestmark = pytest.mark.slow
DATA = FT_DATA / "identity.json"
#: Largest step-loss difference between 2 processes × batch 1 and 1 process × batch 2 (float sums in another order).
#: Measured 2026-12-02 on the 2-core machine, idle and with both cores busy: at most 1e-6 over 6 steps. That this
#: bound can fail: the two processes with batch 2 each (twice the global batch) differed by 0.002-0.065 per step.
LOSS_TOLERANCE = 2e-3


def _config(**overrides: object) -> TrainConfig:
    values = dict(quantization="4bit", max_steps=6, max_length=128, batch_size=1, grad_accum=1, val_fraction=0.0,
                  save_steps=100, lora_dropout=0.0, warmup_ratio=0.0, learning_rate=1e-2,
                  gradient_checkpointing=False, device="cpu", processes=2)
    return TrainConfig(**{**values, **overrides})


def _flags(config: TrainConfig) -> list[str]:
    """The command line's flags for every setting of ``config`` (``python -m engine train --processes 2 ...``)."""
    return [part for name, value in config.to_dict().items()
            for part in (f"--{name.replace('_', '-')}", str(value).lower() if isinstance(value, bool) else str(value))]


def _losses(job: JobRecord) -> list[float]:
    return [e.loss for e in ev.EventLog(job.events_path).read() if isinstance(e, ev.Step)]


def _wait_for_step(store: JobStore, job_id: str, step: int, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = store.load(job_id)
        assert job.status in ("queued", "running"), (job.status, job.error)
        if job.last_step >= step:
            return
        time.sleep(0.2)
    raise AssertionError(f"no step {step} within {timeout} s")


def test_processes_are_one_per_gpu_by_default_and_never_more_than_the_gpus() -> None:
    assert processes_for(0, "cpu", 0) == 1 and processes_for(0, "cuda", 1) == 1 and processes_for(0, "cuda", 4) == 4
    assert processes_for(2, "cpu", 0) == 2  # gloo on CPU: how this path is tested
    with pytest.raises(SettingsError, match="3 processes need 3 GPUs, but this server has 2"):
        processes_for(3, "cuda", 2)


def test_a_visitor_cannot_start_several_processes_on_a_server_without_gpus() -> None:
    from ui.train_tab import check_processes

    with pytest.raises(SettingsError, match="need a GPU each, and this server has none"):
        check_processes(_config(), "cpu")
    check_processes(_config(processes=0), "cpu")


def test_the_cause_of_a_failed_run_is_the_rank_that_vanished_or_failed_on_its_own() -> None:
    killed = {0: {"status": "failed", "reason": "Connection closed by peer", "lost_peer": True},
              1: {"status": "running"}}
    assert failure_reason(killed, 2)[0].startswith("Training process 2 of 2 stopped unexpectedly")
    oom = {0: {"status": "failed", "reason": "lost", "lost_peer": True},
           1: {"status": "failed", "reason": "Training ran out of memory.", "fixes": ["Lower 'Batch size'"]}}
    reason, fixes, _ = failure_reason(oom, 2)
    assert reason == "Training ran out of memory. (training process 2 of 2)" and fixes == ["Lower 'Batch size'"]


def test_two_processes_train_like_one_with_the_same_global_batch(tiny_bundled: Path, tmp_path: Path) -> None:
    from engine.train import record_result, train

    store = JobStore()
    reference = store.submit(_config(processes=1, batch_size=2), DATA, start=False)  # trained here, in this process
    result = train(store.load(reference.id), store)
    assert result.status == "done"
    record_result(store, reference, result, 0.0)  # finished, so the queue does not start it again
    cli = subprocess.run([sys.executable, "-m", "engine", "train", "--data", str(DATA), "--output",
                          str(tmp_path / "ddp-run"), *_flags(_config())], cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    job = store.load(json.loads(cli.stdout.splitlines()[0])["job_id"])
    worker_log = (job.run_dir / "worker.log").read_text()[-3000:]
    assert cli.returncode == 0 and job.status == "done", (cli.stderr[-2000:], worker_log)
    one, two = _losses(store.load(reference.id)), _losses(job)
    assert len(one) == len(two) == 6 and one[-1] < one[0], (one, two)
    assert max(abs(a - b) for a, b in zip(one, two, strict=True)) <= LOSS_TOLERANCE, (one, two)
    started = next(e for e in ev.EventLog(job.events_path).read() if isinstance(e, ev.Started))
    assert started.processes == 2 and json.loads((job.run_dir / "metrics.json").read_text())["processes"] == 2
    records = read_rank_records(job.run_dir, 2)
    assert [records[r]["status"] for r in (0, 1)] == ["done", "done"] and {records[r]["steps"] for r in (0, 1)} == {6}
    assert records[0]["pid"] != records[1]["pid"]
    saved = [p.parent.name for p in job.run_dir.rglob("adapter_model.safetensors")]
    assert saved == ["adapter"], saved  # one adapter, saved once (by rank 0)
    assert len([e for e in ev.EventLog(job.events_path).read() if isinstance(e, ev.Step)]) == 6  # one event log


def test_cancel_stops_both_ranks_at_one_step_and_a_killed_rank_fails_the_resumed_run(tiny_bundled: Path) -> None:
    store = JobStore()
    job = store.submit(_config(max_steps=5000, save_steps=5000, learning_rate=2e-4), DATA)
    _wait_for_step(store, job.id, 2)
    store.cancel(job.id)
    job = store.wait(job.id, timeout=120)
    records = read_rank_records(job.run_dir, 2)
    assert job.status == "cancelled", (job.error, records)
    assert [records[r]["status"] for r in (0, 1)] == ["cancelled", "cancelled"]
    assert records[0]["steps"] == records[1]["steps"] >= 2  # both stopped after the same step
    assert not any(process_alive(records[r]["pid"], None) for r in (0, 1))
    checkpoint = job.latest_checkpoint()
    assert checkpoint is not None and checkpoint.name == f"checkpoint-{records[0]['steps']}"

    store.resume(job.id)  # continues on two processes from the checkpoint the cancel left
    _wait_for_step(store, job.id, records[0]["steps"] + 1)
    rank1 = json.loads(rank_record_path(job.run_dir, 1).read_text())["pid"]
    os.kill(rank1, signal.SIGKILL)
    job = store.wait(job.id, timeout=120)
    assert job.status == "failed"
    assert job.error.startswith("Training process 2 of 2 stopped unexpectedly (it was killed"), job.error
    assert not process_alive(json.loads(rank_record_path(job.run_dir, 0).read_text())["pid"], None)
    failed = [e for e in ev.EventLog(job.events_path).read() if isinstance(e, ev.Failed)]
    assert len(failed) == 1 and failed[0].resumable and job.latest_checkpoint() == checkpoint
