"""Fast checks of the fine-tuning UI without a server or a browser (data directory: conftest's isolated_home).

They pin the promises the browser tests cannot check cheaply: forms come from the engine's
setting definitions, every failure becomes one clear message, and what a page shows (status,
progress, curve, queue position) is rebuilt from the job store and its event log alone.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import pandas as pd
import pytest

from core.settings import SettingsError, describe
from engine import events as ev
from engine.config import TrainConfig
from engine.jobs import JobStore
from engine.models import ModelError

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "testdata" / "ft" / "llama_factory"
EXPECTED_API = {
    "data_upload", "data_load_demo", "data_apply_mapping", "data_check", "data_preview",
    "train_apply_preset", "train_estimate_memory", "train_start", "train_stop", "train_resume",
    "train_show_run", "train_refresh", "train_try", "train_download_adapter", "train_download_merged",
    "train_status", "train_provide_token",
}


def build_train_form():
    from ui import train_tab

    with gr.Blocks():
        return train_tab.build(gr.State(None))


def test_train_form_is_generated_from_train_config() -> None:
    tab = build_train_form()
    infos = {info.name: info for info in describe(TrainConfig)}
    assert tab.form.names == list(infos)
    for name, control in tab.form.controls.items():
        info = infos[name]
        assert control.value == info.default, name
        assert control.label == info.label, name
        assert control.info == info.spec.help, name
        if isinstance(control, gr.Slider):
            assert (control.minimum, control.maximum) == (info.spec.minimum, info.spec.maximum), name
        if info.spec.choices:
            assert isinstance(control, gr.Dropdown), name
    assert isinstance(tab.form.controls["gradient_checkpointing"], gr.Checkbox)
    assert tab.hf_token.type == "password"


def test_form_values_validate_through_settings() -> None:
    tab = build_train_form()
    defaults = [c.value for c in tab.form.components]
    assert tab.form.to_settings(defaults) == TrainConfig()
    bad = list(defaults)
    bad[tab.form.names.index("dtype")] = "float16"
    bad[tab.form.names.index("device")] = "cpu"
    with pytest.raises(SettingsError, match="dtype"):
        tab.form.to_settings(bad)


def test_memory_estimate_says_fits_or_why_not() -> None:
    from ui.train_tab import memory_text

    tab = build_train_form()
    values = [c.value for c in tab.form.components]
    text = memory_text(tab.form, values)
    assert "Memory estimate" in text and "GB" in text and "fit" in text
    values[tab.form.names.index("batch_size")] = 0
    assert "cannot be used" in memory_text(tab.form, values) and "batch_size" in memory_text(tab.form, values)


def test_app_builds_with_stable_api_names() -> None:
    from ui.app import build_app

    demo = build_app()
    public = {name.lstrip("/") for name in demo.get_api_info()["named_endpoints"]}
    ours = {name for name in public if name.startswith(("data_", "train_"))}  # the RAG tab adds rag_*
    assert ours == EXPECTED_API


@pytest.mark.parametrize("name,content,expected", [
    ("empty.json", "", "empty"),
    ("notjson.json", "this is not json at all, just words\n", "JSON"),
])
def test_bad_upload_is_a_clear_error(tmp_path: Path, name: str, content: str, expected: str) -> None:
    from ui.common import friendly_errors
    from ui.data_tab import analyse_file

    path = tmp_path / name
    path.write_text(content)
    handler = friendly_errors("This file cannot be used")(analyse_file)
    with pytest.raises(gr.Error) as info:
        handler(path, None, "bundled/SmolLM2-135M-Instruct", 128, "assistant", 0.05, 42)
    assert expected.lower() in str(info.value.message).lower()
    assert "Traceback" not in info.value.message


def test_multimodal_upload_is_refused_with_reason() -> None:
    from ui.common import friendly_errors
    from ui.data_tab import analyse_file

    handler = friendly_errors("This file cannot be used")(analyse_file)
    with pytest.raises(gr.Error) as info:
        handler(SHARED / "mllm_demo.json", None, "bundled/SmolLM2-135M-Instruct", 128, "assistant", 0.05, 42)
    assert "image" in info.value.message.lower()


def test_start_without_data_tells_what_to_do() -> None:
    from ui.train_tab import start_run

    tab = build_train_form()
    with pytest.raises(gr.Error, match="Load your data first"):
        start_run(tab.form, [c.value for c in tab.form.components], None, "", "", "local")


def test_gpu_only_setting_and_gated_model_fail_before_a_worker_starts() -> None:
    import torch

    from ui.train_tab import check_device_and_access

    if not torch.cuda.is_available():
        with pytest.raises(ModelError, match="GPU"):
            check_device_and_access(TrainConfig(device="cuda"), None)
    with pytest.raises(ModelError, match="token"):
        check_device_and_access(TrainConfig(base_model="meta-llama/Llama-3.2-1B-Instruct"), "")


def test_demo_dataset_is_valid_alpaca() -> None:
    from engine import data
    from ui.data_tab import DEMO_DATASET

    rows = json.loads(DEMO_DATASET.read_text())
    assert len(rows) >= 40 and all(r["instruction"] and r["output"] for r in rows)
    assert data.prepare(DEMO_DATASET).format == "alpaca"


def test_token_histogram_marks_bins_past_max_length() -> None:
    from ui.data_tab import token_histogram

    table = token_histogram([10, 20, 200, 300], max_length=128)
    assert table["examples"].sum() == 4
    assert set(table["fits"]) == {"fits", "cut at max length"}


def queued_job(home: Path, name: str = "demo") -> tuple[JobStore, str]:
    from ui.data_tab import DEMO_DATASET

    store = JobStore()
    job = store.submit(TrainConfig(max_steps=4), DEMO_DATASET, name=name, start=False)
    return store, job.id


def test_page_load_finds_the_visitors_active_run_and_replays_its_curve(isolated_home: Path) -> None:
    from engine.workspace import LOCAL_OWNER, Workspace
    from ui.train_tab import restore_view, view

    store, job_id = queued_job(isolated_home)
    log = ev.EventLog(store.get(job_id).events_path)
    log.append(ev.Step(job_id, step=1, total_steps=4, loss=2.5, eta_seconds=30, tokens_per_second=120))
    log.append(ev.Eval(job_id, step=1, eval_loss=2.7))
    log.append(ev.Step(job_id, step=2, total_steps=4, loss=2.1))
    picker, status, progress, curve, log_text, runs, timer, plotted, _panel, _rewards = restore_view(
        None, SimpleNamespace(username=None))
    assert picker.value == job_id
    assert "queue" in status and "position **1**" in status
    assert isinstance(curve, pd.DataFrame)
    points = curve.dropna()  # one NaN point per series keeps the chart's colours (see train_tab.chart_frame)
    assert sorted(zip(points["split"], points["step"], strict=True)) == [("eval", 1), ("train", 1), ("train", 2)]
    assert sorted(curve[curve["loss"].isna()]["split"]) == ["eval", "train"]
    assert "step 2/4" in log_text and "eval at step 1" in log_text
    assert "Step 2 / 4" in progress
    assert list(runs["Run"]) == [job_id]
    assert timer.active is True
    again = view(job_id, Workspace(LOCAL_OWNER), plotted=plotted)
    assert isinstance(again[2], type(gr.skip())), "an unchanged curve must not be re-sent every second"


def test_failed_run_shows_reason_fixes_and_resume_hint(isolated_home: Path) -> None:
    from ui.train_tab import status_text

    store, job_id = queued_job(isolated_home)
    store.finish(job_id, "failed", error="out of memory")
    failed = ev.Failed(job_id, reason="The GPU ran out of memory at step 3.", fixes=["Lower 'Batch size' to 2."],
                       resumable=True)
    text = status_text(store.get(job_id), [failed], None)
    assert "ran out of memory" in text and "Lower 'Batch size' to 2." in text and "Resume" in text


def test_try_it_refuses_unfinished_runs(isolated_home: Path) -> None:
    from ui.train_tab import adapter_download

    _, job_id = queued_job(isolated_home)
    with pytest.raises(gr.Error, match="only a finished run"):
        adapter_download(job_id, SimpleNamespace(username=None))


def test_analysis_shows_format_split_histogram_and_learned_preview() -> None:
    from engine.models import BUNDLED_ID
    from ui.data_tab import DEMO_DATASET, analyse_file

    out = analyse_file(DEMO_DATASET, None, BUNDLED_ID, 128, "assistant", 0.1, 42)
    dataset, usable, status = out[0], out[1], out[2]
    assert dataset["format"] == "alpaca" and "Detected format: alpaca" in status
    assert dataset["n_train"] + dataset["n_val"] == dataset["n_examples"] == len(usable) > 0 and dataset["n_val"] > 0
    info, segments = out[-2], out[-1]
    assert any(label == "learned" for _, label in segments) and any(label is None for _, label in segments)
    assert "Example 1 of" in info


def test_a_wrong_column_mapping_is_explained(tmp_path: Path) -> None:
    from engine import data
    from engine.models import BUNDLED_ID
    from ui.common import friendly_errors
    from ui.data_tab import DEMO_DATASET, analyse_file

    mapping = data.ColumnMapping(format="alpaca", prompt="question", response="output")
    with pytest.raises(gr.Error) as info:
        friendly_errors("This column mapping does not work")(analyse_file)(
            DEMO_DATASET, mapping, BUNDLED_ID, 128, "assistant", 0.1, 42)
    assert "question" in info.value.message
