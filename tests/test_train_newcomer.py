"""A newcomer's first run (issue #14, the training side): the preset chosen for the device, every long phase
named, bounded evaluation, an honest time estimate, a smooth ETA and the form after a reload.

Pure functions are tested directly; one real run of a tiny random-weight model (tests/tiny_models.py, the
bundled tokenizer) checks the phase events in the run's own log and the evaluation bounds.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import gradio as gr

from engine import events as ev
from engine.config import EVAL_MAX_COUNT, EVAL_MIN_STEPS, TrainConfig, default_preset, load_preset, preset_names
from engine.jobs import JobStore
from engine.time_estimate import estimate_time
from engine.train import auto_eval_steps, cap_validation
from tests.conftest import FT_DATA

DEMO = Path(__file__).resolve().parents[1] / "ui" / "demo_data" / "tune_studio_faq.json"


def test_taste_preset_comes_first_and_is_chosen_on_a_cpu() -> None:
    assert preset_names("cpu")[0] == "taste-cpu" == default_preset("cpu")
    assert preset_names("cuda")[0] == "balanced-gpu-qlora" == default_preset("cuda")
    assert sorted(preset_names("cpu")) == preset_names()  # reordered, none lost
    taste = load_preset("taste-cpu")
    assert taste.base_model == "bundled/SmolLM2-135M-Instruct" and taste.quantization == "4bit"
    assert taste.max_length <= 128 and 0 < taste.max_steps <= 15
    assert taste.save_steps > taste.max_steps  # no checkpoint mid-run: the adapter is saved once, at the end


def test_evaluation_is_bounded_in_count_and_short_runs_evaluate_only_at_the_end() -> None:
    config = TrainConfig()
    assert auto_eval_steps(config, 3) > 3  # a 3-step run: no evaluation during it (run_trainer does one at the end)
    assert auto_eval_steps(config, EVAL_MIN_STEPS - 1) > EVAL_MIN_STEPS - 1
    for total in (10, 12, 37, 100, 1000):
        for eval_steps in (0, 1, 2, 50):
            interval = auto_eval_steps(config.replace(eval_steps=eval_steps), total)
            assert total // interval <= EVAL_MAX_COUNT, (total, eval_steps, interval)
    assert auto_eval_steps(config.replace(eval_steps=300), 1000) == 300  # a rarer choice is kept


def test_the_validation_set_is_capped_and_the_rest_trains() -> None:
    from engine import data

    examples = data.prepare(FT_DATA / "alpaca_en_demo.json").examples
    train, held_out = data.split_train_validation(examples, 0.2, 42)
    capped_train, evaluated = cap_validation(train, held_out, 16)
    assert 1 <= len(evaluated) <= 16 < len(held_out)
    assert len(capped_train) + len(evaluated) == len(examples)  # nothing lost: the surplus trains
    assert not {e.key() for e in evaluated} & {e.key() for e in capped_train}  # no duplicate on both sides
    assert cap_validation(train, held_out[:5], 16) == (train, held_out[:5])


def test_time_estimate_grows_with_steps_and_max_length_and_names_no_number_on_a_gpu() -> None:
    base = load_preset("taste-cpu")
    times = [estimate_time(base.replace(max_steps=steps), "cpu").total_s for steps in (5, 10, 20, 40)]
    assert times == sorted(times) and len(set(times)) == 4
    lengths = [estimate_time(base.replace(max_length=n), "cpu").total_s for n in (64, 128, 256, 512)]
    assert lengths == sorted(lengths) and len(set(lengths)) == 4
    assert estimate_time(base, "cpu").total_s < estimate_time(base, "cpu", converted=False).total_s
    assert estimate_time(base.replace(max_steps=-1), "cpu").total_s is None  # steps depend on the data
    gpu = estimate_time(load_preset("balanced-gpu-qlora"), "cuda")
    assert gpu.total_s is None and gpu.step_s is None


def test_time_text_says_minutes_and_its_parts() -> None:
    from ui.train_tab import time_text

    text = time_text(estimate_time(load_preset("taste-cpu"), "cpu"))
    assert "min on this computer" in text and "loading" in text and "12 steps ×" in text
    assert "depends on the GPU" in time_text(estimate_time(load_preset("balanced-gpu-qlora"), "cuda"))


def test_eta_counts_down_with_the_clock_between_steps() -> None:
    from ui.train_tab import eta_left

    step = ev.Step("j", step=3, total_steps=10, eta_seconds=70.0, time=1000.0)
    assert eta_left(step, 1000.0) == 70.0
    assert eta_left(step, 1010.0) == 60.0
    assert eta_left(step, 1100.0) == 0.0  # late: never negative
    assert eta_left(ev.Step("j", step=1, eta_seconds=None, time=1000.0), 1005.0) is None


def test_progress_names_each_phase_instead_of_step_zero(isolated_home: Path) -> None:
    from ui.train_tab import progress_html

    store = JobStore()
    job = store.submit(TrainConfig(max_steps=4), DEMO, start=False)
    running = dataclasses.replace(job, status="running")
    cases = [
        (ev.Progress(job.id, phase="load", item="SmolLM2", message="weights"), "Loading the model…"),
        (ev.Progress(job.id, phase="tokenize", item="faq.json", done=120, total=689, unit="rows"),
         "Preparing your data (120/689)…"),
        (ev.Progress(job.id, phase="convert", item="SmolLM2"), "first time only"),
        (ev.Progress(job.id, phase="save", message="adapter"), "Saving the adapter…"),
    ]
    for event, expected in cases:
        shown = progress_html(running, [event])
        assert expected in shown and "Step 0" not in shown, shown
    step = ev.Step(job.id, step=2, total_steps=4, eta_seconds=40.0, time=1000.0)
    evaluating = progress_html(running, [step, ev.Progress(job.id, phase="evaluate", message="after step 2")],
                               now=1015.0)
    assert "Evaluating…" in evaluating and "Step 2 / 4" in evaluating and "25 s left" in evaluating


def test_after_a_reload_the_form_shows_the_settings_of_the_run_on_screen(isolated_home: Path) -> None:
    from ui import train_tab

    with gr.Blocks():
        tab = train_tab.build(gr.State(None))
    config = load_preset("taste-cpu").replace(max_steps=7, learning_rate=0.003, max_length=96)
    job = JobStore().submit(config, DEMO, start=False)
    updates = train_tab.page_form(tab.form, job, "taste-cpu")
    assert updates[0] is None  # no preset describes the run's own settings
    shown = dict(zip(tab.form.names, updates[1:], strict=True))
    assert shown["max_steps"] == 7 and shown["learning_rate"] == 0.003 and shown["max_length"] == 96
    assert tab.form.to_settings(updates[1:]) == config  # what the form shows is what Start would use
    fresh = train_tab.page_form(tab.form, None, "taste-cpu")
    assert isinstance(fresh[0], type(gr.skip()))
    assert tab.form.to_settings(fresh[1:]) == load_preset("taste-cpu")
    assert tab.preset.value == default_preset("cpu")  # this machine has no GPU


def test_a_real_run_names_its_phases_in_order_and_evaluates_a_capped_set_once(
        tiny_bundled: Path, tmp_path: Path) -> None:
    from engine.train import train

    config = TrainConfig(quantization="none", max_steps=3, max_length=64, batch_size=2, grad_accum=1,
                         val_fraction=0.5, eval_max_rows=8, save_steps=100, lora_dropout=0.0, warmup_ratio=0.0,
                         gradient_checkpointing=False, device="cpu")
    store = JobStore()
    job = store.submit(config, DEMO, start=False)  # 41 rows: about 20 held out, 8 of them evaluated
    assert train(store.load(job.id), store).status == "done"
    events = ev.EventLog(job.events_path).read()
    started = next(e for e in events if isinstance(e, ev.Started))
    phases = [e.phase for e in events if isinstance(e, ev.Progress)]
    first_seen = [p for i, p in enumerate(phases) if p not in phases[:i]]
    assert first_seen == ["load", "tokenize", "evaluate", "save"], phases
    before_training = [e for e in events if e.time <= started.time]
    assert [e.phase for e in before_training if isinstance(e, ev.Progress)][:2] == ["load", "tokenize"]
    weights = next(e for e in events if isinstance(e, ev.Progress) and e.message == "weights")
    assert events[0].time < weights.time <= started.time  # the first event came before the model was loaded
    counts = [e for e in events if isinstance(e, ev.Progress) and e.phase == "tokenize" and e.total]
    assert counts and counts[-1].done == counts[-1].total  # "Preparing your data (n/N)": counted to the end
    assert len([e for e in events if isinstance(e, ev.Eval)]) == 1  # one evaluation, at the end
    fingerprint = json.loads((job.run_dir / "data_fingerprint.json").read_text())
    assert 1 <= fingerprint["eval_rows"] <= 8 and fingerprint["train_rows"] + fingerprint["eval_rows"] == 41
    assert started.eval_rows == fingerprint["eval_rows"]
