"""Real QLoRA training on the bundled model, through the CLI contract and the job store.

These are slow (minutes on 2 CPU cores) and run in CI: they are the proof that the engine trains,
that the adapter changes the answer, and that a run survives cancel, kill -9 and resume.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.generation import GenerationSettings
from engine.config import TrainConfig
from engine.events import Cancelled, Checkpoint, Done, Failed, Started, Step
from engine.jobs import JobStore, process_alive
from tests.conftest import FT_DATA, REPO

IDENTITY = {"name": "Tunely", "author": "Tune Studio"}
WHO = "Who are you?"
pytestmark = pytest.mark.slow
# Margins from the measured spread (issue #9): this recipe run 5 times on a loaded 2-core machine (load 4-5;
# seed 42 with 1, 2 and 4 threads, seeds 7 and 1234 with 2 and 3) gave a last/first training-loss ratio of
# 0.69, 0.69, 0.69, 0.57, 0.77 and an adapter/base loss ratio on the identity answers (identity_nll) of
# 0.26, 0.26, 0.26, 0.33, 0.34. Thread counts change nothing here; seeds and CPUs do (the previous CI machine
# printed "Tunely" where this one prints "Tuneely", and its eval loss fell where this one's rises), so the
# bounds leave room beyond the worst run seen and no assertion reads one exact greedy spelling.
LOSS_RATIO_MAX = 0.85
NLL_RATIO_MAX = 0.6


def _cli(args: list[str], home: Path, timeout: float = 1200) -> subprocess.CompletedProcess:
    env = {**os.environ, "TUNE_STUDIO_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "engine", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def identity_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Train once on identity.json (placeholders filled in) through `python -m engine train`."""
    home = tmp_path_factory.mktemp("train-home")
    out = tmp_path_factory.mktemp("identity-run") / "run"
    result = _cli(["train", "--data", str(FT_DATA / "identity.json"), "--output", str(out),
                   "--placeholders", json.dumps(IDENTITY), "--preset", "quick-cpu-demo",
                   "--max-steps", "24", "--max-length", "128", "--batch-size", "4", "--grad-accum", "1",
                   "--learning-rate", "0.002", "--save-steps", "100", "--val-fraction", "0.05",
                   "--warmup-ratio", "0.0"], home)
    events = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    return {"home": home, "out": out, "result": result, "events": events}


def test_cli_train_prints_events_and_exits_zero(identity_run: dict) -> None:
    result, events = identity_run["result"], identity_run["events"]
    assert result.returncode == 0, result.stderr[-3000:]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "queued" and "started" in kinds and kinds[-1] == "done"
    steps = [e for e in events if e["event"] == "step"]
    assert [e["step"] for e in steps] == list(range(1, 25))
    assert all(e["tokens_per_second"] is None or e["tokens_per_second"] > 0 for e in steps)
    out = identity_run["out"]
    for name in ("adapter/adapter_config.json", "adapter/adapter_model.safetensors", "config.yaml",
                 "data_fingerprint.json", "metrics.json", "events.jsonl"):
        assert (out / name).exists(), name
    fingerprint = json.loads((out / "data_fingerprint.json").read_text())
    assert fingerprint["format"] == "alpaca" and fingerprint["rows"] == 91 and len(fingerprint["sha256"]) == 64


def test_loss_falls(identity_run: dict) -> None:
    losses = [e["loss"] for e in identity_run["events"] if e["event"] == "step"]
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    assert last < LOSS_RATIO_MAX * first, losses
    evals = [e["eval_loss"] for e in identity_run["events"] if e["event"] == "eval"]
    assert len(evals) >= 2 and all(math.isfinite(e) for e in evals), evals  # measured, reported, never NaN


def identity_nll(model: object, tokenizer: object, rows: int = 16) -> float:
    """Mean loss per answer token on the first identity examples (placeholders filled): how likely the
    model finds the trained answers. Teacher-forced, so it does not hang on one greedy token."""
    import torch

    data = json.loads((FT_DATA / "identity.json").read_text())[:rows]
    fill = lambda text: text.replace("{{name}}", IDENTITY["name"]).replace("{{author}}", IDENTITY["author"])  # noqa: E731
    total, count = 0.0, 0
    for row in data:
        prompt = [{"role": "user", "content": fill(row["instruction"] + (f"\n{row['input']}" if row["input"] else ""))}]
        prefix = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, return_dict=True)["input_ids"]
        full = tokenizer.apply_chat_template([*prompt, {"role": "assistant", "content": fill(row["output"])}],
                                             return_dict=True)["input_ids"]
        ids = torch.tensor([full])
        labels = ids.clone()
        labels[0, : len(prefix)] = -100
        with torch.inference_mode():
            loss = float(model(input_ids=ids, labels=labels).loss)
        tokens = int((labels != -100).sum()) - 1
        total, count = total + loss * tokens, count + tokens
    return total / count


def test_adapter_changes_the_answer_toward_the_trained_identity_on_one_base_copy(identity_run: dict) -> None:
    import psutil

    from engine.infer import ChatModel

    adapter = identity_run["out"] / "adapter"
    chat = ChatModel()
    settings = GenerationSettings(max_new_tokens=40)
    before = chat.generate(WHO, settings=settings)
    base_nll = identity_nll(chat.model, chat.tokenizer)
    rss = psutil.Process().memory_info().rss
    tuned = chat.generate(WHO, adapter=adapter, settings=settings)
    grown_mb = (psutil.Process().memory_info().rss - rss) / 2**20
    with chat.gate.using(chat.load_adapter(adapter)):  # the adapter selected through the serving gate
        tuned_nll = identity_nll(chat.model, chat.tokenizer)
    after = chat.generate(WHO, settings=settings)
    assert tuned_nll < NLL_RATIO_MAX * base_nll, (tuned_nll, base_nll, tuned)
    assert "Tunely" not in before and tuned != before, tuned
    assert after == before  # the base answers with the adapter switched off, from the same weights
    assert grown_mb < 150, f"adapter load grew memory by {grown_mb:.0f} MB: the base must not be copied"


def test_concurrent_base_and_adapter_requests_answer_as_if_alone(identity_run: dict) -> None:
    """Visitors chat at once: same-adapter requests generate together, a switch waits; no answer is mixed up."""
    from concurrent.futures import ThreadPoolExecutor

    from engine.infer import ChatModel

    adapter = identity_run["out"] / "adapter"
    chat = ChatModel()
    settings = GenerationSettings(max_new_tokens=24)
    alone = {name: chat.generate(WHO, adapter=name, settings=settings) for name in (None, adapter)}
    requests = [None, adapter, adapter, None, adapter, None]
    with ThreadPoolExecutor(max_workers=len(requests)) as pool:
        together = list(pool.map(lambda name: chat.generate(WHO, adapter=name, settings=settings), requests))
    assert together == [alone[name] for name in requests]
    assert alone[None] != alone[adapter]


def test_cli_generate_uses_the_adapter(identity_run: dict) -> None:
    from engine.infer import ChatModel

    adapter = identity_run["out"] / "adapter"
    result = _cli(["generate", "--adapter", str(adapter), "--prompt", WHO, "--max-new-tokens", "30"],
                  identity_run["home"], timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    base = ChatModel().generate(WHO, settings=GenerationSettings(max_new_tokens=30))
    assert result.stdout.strip() and result.stdout.strip() != base.strip()
    assert f"answered by: base SmolLM2-135M-Instruct · adapter {identity_run['out'].name} (" in result.stderr


def test_merged_model_answers_like_base_plus_adapter(identity_run: dict) -> None:
    from engine.export import adapter_zip, merged_zip
    from engine.infer import ChatModel

    store = JobStore(identity_run["home"])
    job = store.list()[0]
    assert job.status == "done"
    archive = adapter_zip(job)
    assert archive.stat().st_size > 1_000_000
    merged_archive = merged_zip(job)
    assert merged_archive.exists()
    settings = GenerationSettings(max_new_tokens=20)
    merged = ChatModel(str(job.run_dir / "merged")).generate(WHO, settings=settings)
    via_adapter = ChatModel().generate(WHO, adapter=job.adapter_dir, settings=settings)
    assert merged.split()[:6] == via_adapter.split()[:6]


def _wait_for(store: JobStore, job_id: str, predicate, timeout: float = 900) -> list:
    deadline = time.time() + timeout
    while time.time() < deadline:
        events = store.events(job_id)
        if predicate(events):
            return events
        store.get(job_id)  # reconcile, as the UI does on every poll
        time.sleep(0.5)
    raise AssertionError(f"timed out; last events: {[type(e).__name__ for e in store.events(job_id)][-8:]}")


def test_cancel_kill_and_resume_continue_from_checkpoints(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "home")
    config = TrainConfig(max_steps=8, batch_size=1, grad_accum=1, max_length=64, save_steps=2, val_fraction=0.0,
                         gradient_checkpointing=False, packing=False)
    job = store.submit(config, FT_DATA / "alpaca_en_demo.json")

    # kill -9 the worker after its first checkpoint: the run must be reported failed, never done.
    _wait_for(store, job.id, lambda ev: any(isinstance(e, Checkpoint) for e in ev))
    pid = store.get(job.id).pid
    os.kill(pid, signal.SIGKILL)
    deadline = time.time() + 30
    while process_alive(pid, None) and time.time() < deadline:
        time.sleep(0.2)
    killed = store.get(job.id)
    assert killed.status == "failed" and "stopped unexpectedly" in killed.error and killed.resumable
    failed = [e for e in store.events(job.id) if isinstance(e, Failed)]
    assert failed and "Resume" in failed[-1].reason
    checkpoint_step = int(killed.latest_checkpoint().name.split("-")[-1])
    assert checkpoint_step >= 2

    # Resume, then stop it from the outside (the UI's Stop button).
    store.resume(job.id)
    _wait_for(store, job.id, lambda ev: any(isinstance(e, Step) and e.step > checkpoint_step + 1 for e in ev))
    store.cancel(job.id)
    stopped = store.wait(job.id, timeout=300)
    assert stopped.status == "cancelled"
    assert any(isinstance(e, Cancelled) for e in store.events(job.id))
    stop_step = int(stopped.latest_checkpoint().name.split("-")[-1])
    assert stop_step > checkpoint_step

    # Resume again: it finishes all 8 steps, continuing from where it stopped.
    store.resume(job.id)
    done = store.wait(job.id, timeout=900)
    events = store.events(job.id)
    assert done.status == "done", done.error
    assert isinstance(events[-1], Done) and events[-1].steps == 8
    resumed_from = [e.resumed_from_step for e in events if isinstance(e, Started)]
    assert resumed_from == [0, checkpoint_step, stop_step]
    assert (done.adapter_dir / "adapter_model.safetensors").exists()


def test_inspect_cli_reports_format_validation_and_an_example(tmp_path: Path) -> None:
    result = _cli(["inspect", "--data", str(FT_DATA / "alpaca_en_demo.json"), "--max-length", "256"], tmp_path,
                  timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    text = json.dumps(report)
    assert report["format"] == "alpaca" or '"alpaca"' in text
    assert "<|im_start|>assistant" in text


def test_cli_train_fails_with_a_reason_on_a_refused_file(tmp_path: Path) -> None:
    result = _cli(["train", "--data", str(FT_DATA / "mllm_demo.json"), "--output", str(tmp_path / "r"),
                   "--max-steps", "1"], tmp_path, timeout=300)
    assert result.returncode != 0
    failed = [json.loads(line) for line in result.stdout.splitlines() if '"failed"' in line]
    assert failed and "image" in failed[-1]["reason"].lower()
    assert "Training failed" in result.stderr
