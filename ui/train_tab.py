"""Train tab: pick a model and settings, start a run, watch it live, stop/resume it, try the result.

Why this shape: training runs in a detached worker process (``engine.jobs``), never inside a web
request, so this tab only submits jobs and then *reads* them — a 1 s ``gr.Timer`` re-reads the job
record and its event log while a run is active. Because everything shown is rebuilt from the log,
a refreshed page, a closed tab or a second browser show the same run with its whole curve.
The form is generated from ``TrainConfig``; no default is typed here.
"""

from __future__ import annotations

import dataclasses
import html
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gradio as gr
import pandas as pd

from core.generation import GenerationSettings
from core.settings import SettingInfo, SettingsError, describe
from engine import events as ev
from engine.config import METHOD_LABELS, TrainConfig, load_preset, preset_names
from engine.distributed import processes_for
from engine.hardware import METHOD_LABELS as FIT_LABELS
from engine.hardware import (
    DeviceFit,
    current_tier,
    device_fit,
    precision_note,
    recommended_preset,
    tier_columns,
    tier_fits,
)
from engine.hub import require_access
from engine.jobs import ACTIVE, JobRecord, JobStore
from engine.limits import Limits, limits
from engine.models import BUNDLED_ID, MODELS, hub_kwargs, local_config_path, local_model_info, model_info, pick_device
from engine.time_estimate import TimeEstimate, estimate_time
from engine.workspace import Workspace
from ui.common import (
    SettingsForm,
    api_endpoint,
    build_settings_form,
    chat_model_for,
    endpoint,
    format_duration,
    friendly_errors,
    model_token,
    named_parameters,
    progress_line,
    require_write,
    served_copy,
    visitor_of,
    workspace_of,
)

LOG_LINES_SHOWN = 300
VIEW_SIZE = 9  # outputs of view(): status, progress, plot, log, runs, timer, plotted, token panel, reward plot
RUN_HEADERS = ["Run", "Name", "Status", "Model", "Steps", "Duration", "Final loss"]


def chart_frame(points: list[dict[str, Any]], y: str, color: str, series: tuple[str, ...]) -> pd.DataFrame:
    """A curve for a ``gr.LinePlot``, with one empty (NaN, not drawn) point per series.

    Why: the browser's chart takes its colours and legend from the series in the data it is first drawn with,
    and later updates only swap the data. A chart first drawn empty (or before the first eval point) would draw
    every later series without a colour, i.e. invisibly; with every series in every frame, none is missing.
    """
    empty = [{"step": float("nan"), y: float("nan"), color: name} for name in series]
    return pd.DataFrame([*points, *empty], columns=["step", y, color]).astype({"step": float, y: float})


LOSS_SERIES = ("train", "eval")
REWARD_SERIES = tuple(ev.REWARD_SERIES.values())  # chosen, rejected, margin
EMPTY_CURVE = chart_frame([], "loss", "split", LOSS_SERIES)
EMPTY_REWARDS = chart_frame([], "reward", "series", REWARD_SERIES)
BASE_START = ("the base model (a new adapter)", "")  # the 'Start from run' choice that continues nothing
STATUS_ICONS = {"queued": "⏳", "running": "🏃", "cancelling": "⏹", "done": "✅", "failed": "❌", "cancelled": "⏹",
                "interrupted": "⏸", "needs_token": "🔑"}
START_LIMITS = ("max_queued_runs", "max_steps")  # the limits that bound the Start button, shown beside it


@dataclass
class TrainTabComponents:
    preset: gr.Dropdown
    form: SettingsForm
    model_notes: gr.Markdown
    hf_token: gr.Textbox
    memory: gr.Markdown
    data_fit: gr.Markdown
    run_name: gr.Textbox
    start: gr.Button
    stop: gr.Button
    resume: gr.Button
    limits_note: gr.Markdown
    run_picker: gr.Dropdown  # the run this visitor is looking at (per browser session)
    refresh_runs: gr.Button
    status: gr.Markdown
    token_panel: gr.Group  # shown only for a run waiting in needs_token
    token_again: gr.Textbox
    provide_token: gr.Button
    progress: gr.HTML
    loss_plot: gr.LinePlot
    reward_plot: gr.LinePlot  # preference runs: rewards of chosen and rejected answers and their margin
    log: gr.Textbox
    runs_table: gr.Dataframe
    try_prompt: gr.Textbox
    try_button: gr.Button
    try_answer: gr.Textbox
    generation: SettingsForm
    download_adapter: gr.Button
    download_merged: gr.Button
    download_file: gr.File
    timer: gr.Timer
    plotted: gr.State  # which curve this browser already shows, so ticks only re-send a changed chart
    dataset: gr.State

    def control(self, name: str) -> gr.components.Component:
        """A generated setting control by name (the Data tab re-checks with some of them)."""
        return self.form.controls[name]


def store() -> JobStore:
    """The job store of the data directory; cheap to create, holds no per-visitor state.

    Only for what every visitor may see (the device queue); a visitor's own runs go through
    ``workspace_of(request)``, which refuses someone else's run id.
    """
    return JobStore()


# ----------------------------------------------------------------------------------------- build


def build(dataset: gr.State) -> TrainTabComponents:
    gr.Markdown("### 1 · Model and settings\nPick a preset to fill everything in, or change single settings. "
                "Every setting explains itself; the less common ones are under *Advanced*.")
    device = pick_device()
    with gr.Row():
        preset = gr.Dropdown(choices=preset_names(device), value=recommended_preset(device), label="Preset",
                             info="Fills in the settings below for a typical situation; you can still change them. "
                                  "Preselected for this computer"
                                  f" ({'a GPU' if device == 'cuda' else 'no GPU: a first taste in about 2 minutes'}).",
                             elem_id="train-preset")
        hf_token = gr.Textbox("", label="Hugging Face token (only for gated models)", type="password",
                              info="Needed for gated models such as Llama. Used only to download the model; "
                                   "never saved or logged.", elem_id="train-hf-token")
    form = build_settings_form(TrainConfig, prefix="train",
                               custom={"base_model": _model_picker, "from_run": _from_run_picker})
    model_notes = gr.Markdown(model_notes_text(form_default("base_model")), elem_id="train-model-notes")
    memory = gr.Markdown(elem_id="train-memory")
    data_fit = gr.Markdown(elem_id="train-data-fit")  # the Data tab's "n of N examples will be cut" line
    gr.Markdown("### 2 · Train")
    run_name, start, stop, resume, limits_note = _build_start_row()
    with gr.Row():
        run_picker = gr.Dropdown(choices=[], value=None, label="Run shown below", allow_custom_value=True,
                                 info="Your runs, newest first. Pick one to see its curve, try it or download it.",
                                 elem_id="train-run-picker", scale=4)
        refresh_runs = gr.Button("Refresh", size="sm", scale=1, elem_id="train-refresh")
    status = gr.Markdown("No run yet. Load data in the **Data** tab, then press **Start training**.",
                         elem_id="train-status")
    token_panel, token_again, provide_token = _build_token_panel()
    progress = gr.HTML(progress_html(None, None), elem_id="train-progress")
    loss_plot, reward_plot = _build_plots()
    log = gr.Textbox(label="Log", lines=8, max_lines=8, interactive=False, autoscroll=True, elem_id="train-log")
    gr.Markdown("### 3 · Your runs")
    runs_table = gr.Dataframe(pd.DataFrame(columns=RUN_HEADERS), interactive=False, elem_id="train-runs")
    timer = gr.Timer(1.0, active=False)
    return TrainTabComponents(
        preset=preset, form=form, model_notes=model_notes, hf_token=hf_token, memory=memory, data_fit=data_fit,
        run_name=run_name, start=start, stop=stop, resume=resume, limits_note=limits_note, run_picker=run_picker,
        refresh_runs=refresh_runs, status=status, token_panel=token_panel, token_again=token_again,
        provide_token=provide_token, progress=progress, loss_plot=loss_plot, reward_plot=reward_plot, log=log,
        runs_table=runs_table, **_build_try_and_download(), timer=timer, plotted=gr.State(None), dataset=dataset,
    )


def _build_try_and_download() -> dict[str, Any]:
    """Section 4: ask the selected finished run, and download its adapter or merged model."""
    gr.Markdown("### 4 · Try it and take it home (finished runs)")
    parts: dict[str, Any] = {}
    with gr.Row():
        with gr.Column(scale=2):
            parts["try_prompt"] = gr.Textbox("", label="Ask your fine-tuned model", lines=2,
                                             elem_id="train-try-prompt")
            parts["try_button"] = gr.Button("Ask", elem_id="train-try")
            parts["try_answer"] = gr.Textbox(label="Answer (from the selected run's adapter)", lines=6,
                                             interactive=False, elem_id="train-try-answer")
            with gr.Accordion("Answer settings", open=False):
                parts["generation"] = build_settings_form(GenerationSettings, advanced_label="More answer settings",
                                                          prefix="generation")
        with gr.Column(scale=1):
            parts["download_adapter"] = gr.Button("Download adapter (.zip)", elem_id="train-download-adapter")
            parts["download_merged"] = gr.Button("Download merged model (.zip)", elem_id="train-download-merged")
            gr.Markdown("The adapter is small and needs the base model; the merged model loads anywhere but takes "
                        "a minute to build.")
            parts["download_file"] = gr.File(label="Your download", interactive=False,
                                             elem_id="train-download-file")
    return parts


def _build_plots() -> tuple[gr.LinePlot, gr.LinePlot]:
    """The loss curve, and under it the reward chart that preference runs (DPO, ORPO, KTO) show."""
    loss_plot = gr.LinePlot(EMPTY_CURVE, x="step", y="loss", color="split", title="Loss (lower is better)",
                            x_title="step", y_title="loss", color_map={"train": "#1f77b4", "eval": "#ff7f0e"},
                            height=300, elem_id="train-loss-plot")
    reward_plot = gr.LinePlot(EMPTY_REWARDS, x="step", y="reward", color="series",
                              title="Rewards (DPO/ORPO/KTO): chosen should rise above rejected", x_title="step",
                              y_title="reward", color_map={"chosen": "#2ca02c", "rejected": "#d62728",
                                                           "margin": "#9467bd"},
                              height=260, visible=False, elem_id="train-reward-plot")
    return loss_plot, reward_plot


def _build_start_row() -> tuple[gr.Textbox, gr.Button, gr.Button, gr.Button, gr.Markdown]:
    """Run name, Start/Stop/Resume, and under them the limits that bound Start (so nobody is surprised)."""
    with gr.Row():
        run_name = gr.Textbox("", label="Run name (optional)", placeholder="defaults to the data file's name", scale=2)
        start = gr.Button("Start training", variant="primary", elem_id="train-start", scale=1)
        stop = gr.Button("Stop", variant="stop", elem_id="train-stop", scale=1)
        resume = gr.Button("Resume", elem_id="train-resume", scale=1)
    return run_name, start, stop, resume, gr.Markdown(limits_text(), elem_id="train-limits")


def _build_token_panel() -> tuple[gr.Group, gr.Textbox, gr.Button]:
    """Shown only for a run in ``needs_token``: its token was lost in a restart (tokens live in memory only)."""
    with gr.Group(visible=False, elem_id="train-needs-token") as token_panel:
        token_again = gr.Textbox("", label="Your Hugging Face token", type="password", elem_id="train-token-again",
                                 info="Kept in the server's memory only until this run starts; never saved.")
        provide_token = gr.Button("Continue with this token", variant="primary", elem_id="train-provide-token")
    return token_panel, token_again, provide_token


def _model_picker(info: SettingInfo) -> gr.Dropdown:
    """The registry's models by name; any other Hub id can be typed in."""
    return gr.Dropdown(choices=[(m.label, m.id) for m in MODELS], value=info.default, allow_custom_value=True,
                       label=info.label, info=info.spec.help, elem_id="train-base-model")


def _from_run_picker(info: SettingInfo) -> gr.Dropdown:
    """'Start from run': the base model, or one of the visitor's finished runs (listed when the page loads)."""
    return gr.Dropdown(choices=[BASE_START], value=info.default, label=info.label, info=info.spec.help,
                       elem_id="train-from-run")


def from_run_choices(ws: Workspace, current: str | None = None) -> Any:
    """The visitor's finished runs as starting points; a choice that is no longer there falls back to the base."""
    runs = ws.finished_runs()
    choices = [BASE_START, *((f"{j.name} · {METHOD_LABELS.get(j.config.method, j.config.method)} · {j.id}", j.id)
                             for j in runs)]
    value = current if current in {j.id for j in runs} else ""
    return gr.Dropdown(choices=choices, value=value)


def form_default(name: str) -> Any:
    return getattr(TrainConfig(), name)


def limits_text() -> str:
    """The limits that bound Start, with their labels, read from ``engine.limits`` (never retyped here)."""
    bounds = limits()
    labels = {info.name: info.label for info in describe(Limits)}
    parts = [f"{labels[name]}: **{getattr(bounds, name):,}**" for name in START_LIMITS]
    return "Limits on this server — " + " · ".join(parts)


# ----------------------------------------------------------------------------------------- events


def register(c: TrainTabComponents) -> None:
    """Wire the form, the run buttons, the run view and Try/Download (``train_*`` API endpoints)."""
    _register_form(c)
    _register_run_buttons(c)
    _register_try_and_download(c)


def _register_form(c: TrainTabComponents) -> None:
    """Presets fill the form; any change re-estimates memory (and a new model shows its notes)."""
    form = c.form.components
    # The Data tab re-checks the data whenever max length (or the model) changes here, presets included, and
    # says in the shared dataset how many examples would be cut: shown beside the settings that decide it.
    c.dataset.change(lambda d: (d or {}).get("length_line", ""), c.dataset, c.data_fit, api_visibility="private",
                     show_progress="hidden")
    endpoint(c.preset.change,
             friendly_errors("This preset could not be loaded")(lambda name: apply_preset(c.form, name)),
             c.preset, form, api_name="train_apply_preset")
    c.form.controls["base_model"].change(model_notes_text, c.form.controls["base_model"], c.model_notes,
                                         api_visibility="private")
    endpoint([control.change for control in form],
             named_parameters(lambda *v: memory_text(c.form, v), c.form.names), form, c.memory,
             api_name="train_estimate_memory", show_progress="hidden", trigger_mode="always_last")


def _register_run_buttons(c: TrainTabComponents) -> None:
    """Start, Stop, Resume, a waiting run's token, and which run is shown (picked, refreshed, or every second)."""
    view_outputs = [c.status, c.progress, c.loss_plot, c.log, c.runs_table, c.timer, c.plotted, c.token_panel,
                    c.reward_plot]
    picker_and_view = [c.run_picker, *view_outputs]

    def start(run_name: str, token: str, dataset: dict | None, *values: Any, request: gr.Request,
              profile: gr.OAuthProfile | None = None) -> list[Any]:
        require_write("Training")
        ws = workspace_of(request, profile)
        job = start_run(c.form, values, dataset, run_name, token, ws.owner, visitor=visitor_of(request, profile))
        return [picker_update(ws, job.id), *view(job.id, ws)]

    endpoint(c.start.click, named_parameters(friendly_errors("Training could not start")(start),
                                             ["run_name", "hf_token", "dataset", *c.form.names], request=True),
             [c.run_name, c.hf_token, c.dataset, *c.form.components],
             picker_and_view, api_name="train_start", show_progress_on=c.status)
    endpoint(c.stop.click, friendly_errors("The run could not be stopped")(stop_run), [c.run_picker], view_outputs,
             api_name="train_stop", show_progress_on=c.status)
    endpoint(c.resume.click, friendly_errors("The run could not be resumed")(resume_run), [c.run_picker, c.hf_token],
             view_outputs, api_name="train_resume", show_progress_on=c.status)
    endpoint(c.provide_token.click, friendly_errors("The run could not continue")(provide_token_run),
             [c.run_picker, c.token_again], [*view_outputs, c.token_again],
             api_name="train_provide_token", show_progress_on=c.status)
    endpoint(c.run_picker.select, friendly_errors("The run could not be shown")(view_for_request), [c.run_picker],
             view_outputs, api_name="train_show_run", show_progress_on=c.status)
    endpoint(c.refresh_runs.click, friendly_errors("The runs could not be listed")(restore_view), [c.run_picker],
             picker_and_view, api_name="train_refresh", show_progress_on=c.status)
    from_run = c.form.controls["from_run"]
    c.refresh_runs.click(from_run_for_request, from_run, from_run, api_visibility="private")
    c.timer.tick(tick_view, [c.run_picker, c.plotted], view_outputs, api_visibility="private",
                 show_progress="hidden")


def _register_try_and_download(c: TrainTabComponents) -> None:
    """Try a finished run, download its adapter or merged model, and the run status for scripts."""

    def ask(run_id: str | None, prompt: str, token: str | None, *values: Any, request: gr.Request,
            profile: gr.OAuthProfile | None = None) -> Any:
        yield from try_run(c.generation, workspace_of(request, profile), run_id, prompt, token, values)

    endpoint(c.try_button.click,
             named_parameters(friendly_errors("The model could not answer")(ask),
                              ["run_id", "prompt", "hf_token", *c.generation.names], request=True),
             [c.run_picker, c.try_prompt, c.hf_token, *c.generation.components], c.try_answer, api_name="train_try")
    endpoint(c.download_adapter.click, friendly_errors("The adapter could not be packed")(adapter_download),
             c.run_picker, c.download_file, api_name="train_download_adapter")
    endpoint(c.download_merged.click, friendly_errors("The merged model could not be built")(merged_download),
             [c.run_picker, c.hf_token], c.download_file, api_name="train_download_merged")
    api_endpoint(friendly_errors("The run could not be read")(run_status), api_name="train_status")


def register_page_load(demo: gr.Blocks, c: TrainTabComponents) -> None:
    """On every page load: re-find this visitor's running (or latest) run and replay its curve; then fill the
    form with that run's settings, or with the preset chosen for this device when there is no run."""
    shown = demo.load(restore_view, [c.run_picker], [c.run_picker, c.status, c.progress, c.loss_plot, c.log,
                                                     c.runs_table, c.timer, c.plotted, c.token_panel, c.reward_plot],
                      api_visibility="private")

    def fill_form(run_id: str | None, preset: str | None, request: gr.Request,
                  profile: gr.OAuthProfile | None = None) -> list[Any]:
        return page_form_for_request(c.form, run_id, preset, request, profile)

    shown.then(fill_form, [c.run_picker, c.preset], [c.preset, *c.form.components], api_visibility="private",
               show_progress="hidden")
    demo.load(lambda *v: memory_text(c.form, v), c.form.components, c.memory, api_visibility="private")


# ----------------------------------------------------------------------------------------- actions


def apply_preset(form: SettingsForm, name: str | None) -> list[Any]:
    if not name:
        return [gr.skip()] * len(form.names)
    return form.updates_for(load_preset(name))


def page_form(form: SettingsForm, job: JobRecord | None, preset: str | None) -> list[Any]:
    """What the form shows when the page loads: the settings of the run on screen (its saved config, and the
    preset box emptied, since no preset describes it), else the preselected preset's values. The preset box
    comes first, then one value per setting."""
    if job is not None:
        return [None, *form.updates_for(job.config)]
    return [gr.skip(), *apply_preset(form, preset)]


def page_form_for_request(form: SettingsForm, run_id: str | None, preset: str | None, request: gr.Request,
                          profile: gr.OAuthProfile | None = None) -> list[Any]:
    """:func:`page_form` for the visitor's run shown; 'Start from run' gets the visitor's finished runs as its
    choices here too (one handler, so no second page-load event can reset the value it shows)."""
    ws = workspace_of(request, profile)
    job = next((j for j in ws.runs() if j.id == run_id), None) if run_id else None
    updates = page_form(form, job, preset)
    shown_from = job.config.from_run if job is not None else (load_preset(preset).from_run if preset else "")
    updates[1 + form.names.index("from_run")] = from_run_choices(ws, shown_from)
    return updates


def start_run(form: SettingsForm, values: tuple[Any, ...], dataset: dict | None, run_name: str, token: str,
              owner: str, visitor: str | None = None) -> JobRecord:
    """Check everything a person can get wrong before a worker is spawned, then queue the run.

    ``visitor`` (who clicked) is what the per-visitor caps count; the token the run gets is the visitor's,
    or the server's own only where ``token_for_job`` allows it (the Space owner's runs).
    """
    if not dataset:
        raise gr.Error("Load your data first: open the Data tab and drop a file, or press 'Use the demo dataset'.",
                       title="No data loaded", duration=None)
    config: TrainConfig = form.to_settings(values)  # type: ignore[assignment]
    check_method_fits_data(config, dataset)
    config = with_start_run_base(config, owner)
    job_token = job_token_for(owner, token)
    check_device_and_access(config, job_token)
    return store().submit(config, dataset["path"], mapping=dataset.get("mapping"),
                          data_options=dataset.get("options") or None, owner=owner,
                          name=(run_name or "").strip(), hf_token=job_token, visitor=visitor)


def check_method_fits_data(config: TrainConfig, dataset: dict) -> None:
    """DPO/ORPO need pairs, KTO needs pairs or answers marked good/bad, SFT on pairs needs the explicit
    'Train on the chosen answers' choice: a mismatch is refused here with the fix, never found mid-run."""
    kind = dataset.get("kind", "sft")
    method = METHOD_LABELS[config.method]
    if config.method in ("dpo", "orpo") and kind != "pairs":
        what = "answers marked good or bad (choose KTO for those)" if kind == "feedback" else "one answer per prompt"
        raise gr.Error(f"{method} learns from pairs of answers (a chosen and a rejected one per prompt), but the "
                       f"loaded data has {what}. Load a preference file in the Data tab, or choose SFT.",
                       title=f"{method} needs preference pairs", duration=None)
    if config.method == "kto" and kind not in ("pairs", "feedback"):
        raise gr.Error("KTO learns from answers marked good or bad (or from pairs), but the loaded data has one "
                       "unlabelled answer per prompt. Choose SFT, or load KTO/preference data.",
                       title="KTO needs labelled answers", duration=None)
    if config.method == "sft" and kind == "pairs" and not (dataset.get("options") or {}).get("sft_on_chosen"):
        raise gr.Error("The loaded file holds preference pairs. Choose DPO or ORPO as the training method, or tick "
                       "'Train on the chosen answers' in the Data tab to fine-tune with SFT on the preferred "
                       "answers only.", title="SFT on preference pairs", duration=None)


def with_start_run_base(config: TrainConfig, owner: str) -> TrainConfig:
    """A run that continues another one trains that run's base model (an adapter fits only its own base)."""
    if not config.from_run:
        return config
    source = store().load(config.from_run)
    if source.owner != owner:
        raise gr.Error("Pick one of your own finished runs in 'Start from run'.", title="Not your run")
    if source.config.base_model != config.base_model:
        gr.Info(f"Continuing '{source.name}', so this run uses its base model {source.config.base_model}.")
        config = config.replace(base_model=source.config.base_model)
    return config


def job_token_for(owner: str, typed: str | None) -> str | None:
    """The token a job (or a download) of ``owner`` uses: see ``ui.common.model_token``."""
    return model_token(owner, typed)


def check_device_and_access(config: TrainConfig, token: str | None) -> None:
    """GPU-only settings without a GPU, or a gated model without a token, fail here and not in the worker."""
    device = pick_device(config.device)  # raises ModelError with the fix when 'cuda' is asked for on CPU
    check_processes(config, device)
    if device == "cpu" and config.quantization in ("4bit", "8bit") and config.base_model != BUNDLED_ID:
        gr.Warning("No GPU here: training a Hub model with 4-bit/8-bit quantization on the CPU is very slow. "
                   "For real runs use a GPU Space; the bundled model is fine on a CPU.")
    if config.base_model != BUNDLED_ID:
        token = (token or "").strip() or None
        hub_kwargs(config.base_model, token)  # a listed gated model without a token: refused without a request
        require_access(config.base_model, token)  # any other: the Hub says whether this token may read it


def check_processes(config: TrainConfig, device: str) -> None:
    """Several processes need a GPU each: on a CPU server a visitor may not start them (each would hold its own
    copy of the model in the server's memory; the command line can, to test the multi-process path)."""
    if config.processes <= 1:
        return
    if device == "cpu":
        raise SettingsError("processes", "several processes need a GPU each, and this server has none: set "
                                         "'Processes' (under Advanced) to 0.")
    import torch

    processes_for(config.processes, device, torch.cuda.device_count())


def stop_run(run_id: str | None, request: gr.Request, profile: gr.OAuthProfile | None = None) -> list[Any]:
    require_write("Stopping a run")
    ws = workspace_of(request, profile)
    ws.store().cancel(ws.run(require_run(run_id)).id)
    return view(run_id, ws)


def resume_run(run_id: str | None, hf_token: str | None, request: gr.Request,
               profile: gr.OAuthProfile | None = None) -> list[Any]:
    require_write("Resuming a run")
    ws = workspace_of(request, profile)
    job = ws.run(require_run(run_id))
    job_token = job_token_for(ws.owner, hf_token)
    check_device_and_access(job.config, job_token)
    ws.store().resume(job.id, hf_token=job_token)
    return view(run_id, ws)


def provide_token_run(run_id: str | None, token: str | None, request: gr.Request,
                      profile: gr.OAuthProfile | None = None) -> list[Any]:
    """'Continue with this token': a run that lost its token in a restart goes back to its place in the queue."""
    require_write("Continuing a run")
    ws = workspace_of(request, profile)
    job = ws.run(require_run(run_id))
    ws.store().provide_token(job.id, (token or "").strip())
    return [*view(run_id, ws), ""]  # the token field is emptied: the server holds it now


def try_run(generation: SettingsForm, ws: Workspace, run_id: str | None, prompt: str, token: str | None,
            values: tuple[Any, ...]) -> Any:
    """Stream the selected finished run's answer, piece by piece."""
    job = finished_job(ws, run_id)
    if not (prompt or "").strip():
        raise gr.Error("Type a question first.", title="Nothing to answer")
    settings = generation.to_settings(values)
    chat = chat_model_for(job.config.base_model, job_token_for(ws.owner, token))
    answer = ""
    for piece in chat.stream(prompt, adapter=job.adapter_dir, settings=settings):
        answer += piece
        yield answer


def adapter_download(run_id: str | None, request: gr.Request, profile: gr.OAuthProfile | None = None) -> str:
    """A copy outside the data directory: only files the app hands out are served, never the data directory."""
    from engine.export import adapter_zip

    return served_copy(adapter_zip(finished_job(workspace_of(request, profile), run_id)))


def merged_download(run_id: str | None, hf_token: str | None, request: gr.Request,
                    profile: gr.OAuthProfile | None = None) -> str:
    from engine.export import merged_zip

    require_write("Building a merged model")
    ws = workspace_of(request, profile)
    job = finished_job(ws, run_id)
    return served_copy(merged_zip(job, job_token_for(ws.owner, hf_token)))


def require_run(run_id: str | None) -> str:
    if not run_id:
        raise gr.Error("No run is selected: start one, or pick one in 'Run shown below'.", title="No run selected")
    return run_id


def finished_job(ws: Workspace, run_id: str | None) -> JobRecord:
    job = ws.run(require_run(run_id))
    if job.status != "done":
        raise gr.Error(f"Run {job.id} is {job.status}; only a finished run has an adapter to try or download.",
                       title="This run has not finished")
    return job


def run_status(run_id: str, request: gr.Request, profile: gr.OAuthProfile | None = None) -> dict:
    """A run's state as plain data, for scripts (gradio_client) polling a run they started."""
    ws = workspace_of(request, profile)
    job = ws.run(run_id)
    the_store = ws.store()
    events = the_store.events(job.id)
    latest = next((e for e in reversed(events) if isinstance(e, ev.Progress)), None)
    return {
        "id": job.id, "name": job.name, "status": job.status, "step": job.last_step,
        "total_steps": job.total_steps, "final_loss": job.final_loss, "error": job.error,
        "queue_position": the_store.queue_position(job.id), "resumable": job.resumable,
        "loss_curve": ev.loss_curve(events),
        "progress": None if latest is None else {**dataclasses.asdict(latest), "text": progress_line(latest)},
    }


# ----------------------------------------------------------------------------------------- views


def restore_view(run_id: str | None, request: gr.Request, profile: gr.OAuthProfile | None = None) -> list[Any]:
    """Keep the run this browser shows; after a reload pick the owner's active run, else the newest."""
    ws = workspace_of(request, profile)
    jobs = ws.runs()
    ids = {j.id for j in jobs}
    if not run_id or run_id not in ids:
        active = [j for j in jobs if j.status in ("queued", "needs_token", *ACTIVE)]
        run_id = (active or jobs)[0].id if jobs else None
    return [picker_update(ws, run_id, jobs), *view(run_id, ws, jobs)]


def view_for_request(run_id: str | None, request: gr.Request, profile: gr.OAuthProfile | None = None) -> list[Any]:
    return view(run_id, workspace_of(request, profile))


def tick_view(run_id: str | None, plotted: str | None, request: gr.Request,
              profile: gr.OAuthProfile | None = None) -> list[Any]:
    """The 1 s refresh: the chart is only re-sent when it gained points (no flicker), and a passing
    hiccup (a locked database, a half-written file) just waits for the next tick."""
    try:
        return view(run_id, workspace_of(request, profile), plotted=plotted)
    except Exception:
        logging.getLogger("tune_studio.ui").warning("Refresh of run %s failed; retrying", run_id, exc_info=True)
        return [gr.skip()] * VIEW_SIZE


def from_run_for_request(current: str | None, request: gr.Request,
                         profile: gr.OAuthProfile | None = None) -> Any:
    return from_run_choices(workspace_of(request, profile), current)


def picker_update(ws: Workspace, run_id: str | None, jobs: list[JobRecord] | None = None) -> Any:
    jobs = jobs if jobs is not None else ws.runs()
    return gr.Dropdown(choices=[(run_label(j), j.id) for j in jobs], value=run_id)


def run_label(job: JobRecord) -> str:
    return f"{job.name} · {job.id}"  # no status here: the list is not refreshed every second


def view(run_id: str | None, ws: Workspace, jobs: list[JobRecord] | None = None,
         plotted: str | None = None) -> list[Any]:
    """Status, progress, curve, log, history and timer state, all rebuilt from the job record and its log.

    ``plotted`` identifies the curve this browser already shows; an unchanged curve is not re-sent.
    """
    the_store = ws.store()
    history = runs_table(jobs if jobs is not None else ws.runs())
    queue = queue_text(the_store.list(), ws.owner)
    if not run_id:
        return ["No run yet. Load data in the **Data** tab, then press **Start training**." + queue,
                progress_html(None, None), EMPTY_CURVE, "", history, gr.Timer(active=False), None,
                gr.Group(visible=False), gr.LinePlot(EMPTY_REWARDS, visible=False)]
    job = ws.run(run_id)
    events = the_store.events(run_id)
    points = ev.loss_curve(events)
    rewards = ev.reward_curve(events)
    signature = f"{run_id}:{len(points)}:{points[-1] if points else ''}:{len(rewards)}"
    unchanged = signature == plotted
    return [
        status_text(job, events, the_store.queue_position(job.id)) + queue,
        progress_html(job, events),
        gr.skip() if unchanged else chart_frame(points, "loss", "split", LOSS_SERIES),
        log_text(events),
        history,
        gr.Timer(active=job.status in ("queued", *ACTIVE)),
        signature,
        gr.Group(visible=job.status == "needs_token"),
        gr.skip() if unchanged else reward_plot_update(job, rewards),
    ]


def reward_plot_update(job: JobRecord, rewards: list[dict[str, Any]]) -> Any:
    """The reward chart, shown for preference runs once they have rewards (SFT has none).

    Shown only with data, so the browser lays it out with its axis labels: a chart first drawn empty keeps the
    empty chart's margins, and the legend and the minus signs of negative rewards would be cut off.
    """
    if job.config.method == "sft" or not rewards:
        return gr.LinePlot(EMPTY_REWARDS, visible=False)
    return gr.LinePlot(chart_frame(rewards, "reward", "series", REWARD_SERIES), visible=True)


def queue_text(jobs: list[JobRecord], owner: str) -> str:
    """The device queue as everyone sees it: one run trains at a time; other people's runs stay anonymous."""
    waiting = sorted((j for j in jobs if j.status in ("queued", *ACTIVE)),
                     key=lambda j: (j.status == "queued", j.created_at))
    if not waiting:
        return "\n\n**Device queue:** empty — a new run starts at once."
    lines = []
    for position, job in enumerate(waiting, start=1):
        who = f"your run **{html.escape(job.name)}**" if job.owner == owner else "another person's run"
        state = "training now" if job.status in ACTIVE else "waiting"
        lines.append(f"{position}. {STATUS_ICONS.get(job.status, '')} {who} — {state}")
    return "\n\n**Device queue** (one run trains at a time):\n" + "\n".join(lines)


def status_text(job: JobRecord, events: list[ev.JobEvent], queue_position: int | None) -> str:
    icon = STATUS_ICONS.get(job.status, "")
    cfg = job.config
    steps = f"max steps {cfg.max_steps}" if cfg.max_steps > 0 else f"{cfg.num_epochs:g} epoch(s)"
    head = (f"### {icon} {job.name} — {job.status}\nRun `{job.id}` · model `{cfg.base_model}` · "
            f"{METHOD_LABELS[cfg.method]} · {steps} · batch {cfg.batch_size} × {cfg.grad_accum} · max length "
            f"{cfg.max_length} · LR {cfg.learning_rate:g}") + preference_line(job, events)
    if job.status == "queued":
        where = f"position **{queue_position}** in the queue" if queue_position else "in the queue"
        return f"{head}\n\nWaiting: another run is using the device; this run is {where} and starts by itself."
    if job.status == "running":
        doing = "Training" if any(isinstance(e, ev.Step) for e in events) else (
            "Getting ready: the bar below names each phase (loading the model, preparing your data)")
        return f"{head}\n\n{doing}. You can close this page: the run continues and shows up again when you return."
    if job.status == "cancelling":
        return f"{head}\n\nStopping after the current step and saving a checkpoint…"
    if job.status == "done":
        return (f"{head}\n\nFinished in {format_duration(job.duration_seconds)}, final loss "
                f"**{_fmt_loss(job.final_loss)}**. **Next:** ask it something below, or download the adapter.")
    if job.status == "cancelled":
        return f"{head}\n\nStopped at step {job.last_step}. Press **Resume** to continue from the last checkpoint."
    if job.status == "needs_token":
        return f"{head}\n\n**Waiting for you:** {job.error or 'this run needs your Hugging Face token again.'}"
    if job.status == "interrupted":
        return (f"{head}\n\n**Paused:** {job.error or 'the server stopped.'} It goes back in the queue by itself "
                "when the server starts again.")
    failed = next((e for e in reversed(events) if isinstance(e, ev.Failed)), None)
    reason = failed.reason if failed else (job.error or "The run failed.")
    fixes = "".join(f"\n- {fix}" for fix in (failed.fixes if failed else []))
    return f"{head}\n\n**What went wrong:** {reason}" + (f"\n\n**How to fix it:**{fixes}" if fixes else "") + (
        "\n\nPress **Resume** to try again." if job.resumable else "")


def preference_line(job: JobRecord, events: list[ev.JobEvent]) -> str:
    """For DPO/ORPO/KTO runs: what the rewards are measured against and the latest held-out reward accuracy."""
    if job.config.method == "sft":
        return ""
    started = next((e for e in reversed(events) if isinstance(e, ev.Started)), None)
    reference = started.reference if started and started.reference else reference_preview(job.config)
    held_out = next((e for e in reversed(events) if isinstance(e, ev.Eval) and e.reward_accuracy is not None), None)
    accuracy = (f" Held-out pairs where the model prefers the chosen answer: **{held_out.reward_accuracy:.0%}** "
                f"(step {held_out.step}).") if held_out else ""
    return f"\n\n{reference}{accuracy}"


def reference_preview(config: TrainConfig) -> str:
    """What the reference will be, before the worker has said it."""
    if config.method == "orpo":
        return "ORPO needs no reference model."
    if config.from_run:
        return (f"Reference: the adapter of run {config.from_run}, frozen as a second adapter on the same base; "
                "training continues that adapter.")
    return "Reference: the base model (the new adapter starts at zero)."


def progress_html(job: JobRecord | None, events: list[ev.JobEvent] | None, now: float | None = None) -> str:
    """A progress bar with the phase in words ("Loading the model…") or step/total, a smooth ETA and speed."""
    if job is None:
        return "<div class='ts-progress'><div class='ts-progress-text'>No run selected.</div></div>"
    step_event = next((e for e in reversed(events or []) if isinstance(e, ev.Step)), None)
    total = (step_event.total_steps if step_event else 0) or job.total_steps
    done_steps = step_event.step if step_event else job.last_step
    if job.status == "done":
        done_steps = total = max(total, done_steps, 1)
    fraction = min(1.0, done_steps / total) if total else 0.0
    phase = current_phase(job, events or [])
    parts = [] if phase is not None and not step_event else [f"Step {done_steps} / {total or '?'}"]
    if phase is not None:
        parts.insert(0, phase_text(phase))
    if step_event and job.status in ACTIVE:
        eta = eta_left(step_event, time.time() if now is None else now)
        if eta is not None:
            parts.append(f"about {format_duration(eta)} left" if eta >= 1 else "almost done")
        if step_event.tokens_per_second:
            parts.append(f"{step_event.tokens_per_second:,.0f} tokens/s")
    if job.duration_seconds is not None:
        parts.append(f"elapsed {format_duration(job.duration_seconds)}")
    text = html.escape(" · ".join(parts))
    return (f"<div class='ts-progress' data-status='{job.status}' data-step='{done_steps}' data-total='{total}'>"
            f"<progress max='100' value='{fraction * 100:.0f}' style='width:100%'></progress>"
            f"<div class='ts-progress-text'>{text}</div></div>")


def eta_left(step: ev.Step, now: float) -> float | None:
    """Seconds left, counting down with the clock between steps: the ETA the last Step event gave, less the time
    since it was written (never below 0). None before the run knows its speed."""
    if step.eta_seconds is None:
        return None
    return max(0.0, step.eta_seconds - max(0.0, now - step.time))


#: The training phases in words, as the progress bar shows them ("Loading the model…").
PHASE_TEXT = {"starting": "Starting…", "convert": "Preparing the bundled model (first time only, about half a minute)…",
              "load": "Loading the model…", "tokenize": "Preparing your data…", "evaluate": "Evaluating…",
              "save": "Saving the adapter…"}


def phase_text(event: ev.Progress) -> str:
    """One training phase in plain words, with its count where there is one: "Preparing your data (120/689)…"."""
    if event.phase == "download" or event.phase not in PHASE_TEXT:
        return progress_line(event)  # bytes, rate and time left, as every tab shows a download
    if event.phase == "save" and event.message == "checkpoint":
        return "Saving a checkpoint…"
    text = PHASE_TEXT[event.phase]
    if event.total and event.phase in ("tokenize", "evaluate"):
        text = f"{text[:-1]} ({event.done:,.0f}/{event.total:,.0f})…"
    return text


def current_phase(job: JobRecord, events: list[ev.JobEvent]) -> ev.Progress | None:
    """The long phase a running job is in (loading, preparing data, evaluating, saving), if any.

    A Progress event counts only until a Step, Eval or Checkpoint follows it: those say the phase is over.
    """
    if job.status not in ACTIVE:
        return None
    for event in reversed(events):
        if isinstance(event, ev.Progress):
            return event
        if isinstance(event, (ev.Step, ev.Eval, ev.Checkpoint, *ev.TERMINAL)):
            return None
    return None


def log_text(events: list[ev.JobEvent]) -> str:
    lines = [line for line in map(event_line, events) if line]
    return "\n".join(lines[-LOG_LINES_SHOWN:])


def _started_line(event: ev.Started) -> str:
    resumed = f", resuming from step {event.resumed_from_step}" if event.resumed_from_step else ""
    return (f"Started on {event.device}: {event.train_rows} training / {event.eval_rows} validation examples, "
            f"{event.total_steps} steps{resumed}.")


def _done_line(event: ev.Done) -> str:
    return (f"Done: {event.steps} steps in {format_duration(event.duration_seconds)}, final loss "
            f"{_fmt_loss(event.final_loss)}.")


#: How each kind of job event reads in the run log (one line each).
_EVENT_LINES: dict[type, Callable[[Any], str]] = {
    ev.Queued: lambda e: f"Queued (position {e.position})." if e.position else "Queued.",
    ev.Started: _started_line,
    ev.Step: lambda e: f"step {e.step}/{e.total_steps}  loss {_fmt_loss(e.loss)}",
    ev.Eval: lambda e: f"eval at step {e.step}: loss {_fmt_loss(e.eval_loss)}",
    ev.Checkpoint: lambda e: f"Checkpoint saved at step {e.step}.",
    ev.Done: _done_line,
    ev.Failed: lambda e: f"Failed: {e.reason}",
    ev.Cancelled: lambda e: f"Stopped at step {e.step}.",
    ev.Interrupted: lambda e: f"Paused at step {e.step}: {e.reason}",
    ev.Progress: progress_line,
    ev.Log: lambda e: f"[{e.level}] {e.message}",
}


def event_line(event: ev.JobEvent) -> str:
    """One readable line per event; the UI only formats typed events, it never parses worker output.

    Looked up along the event's class hierarchy, so a subclass of a known event reads like its parent.
    """
    for cls in type(event).__mro__:
        if cls in _EVENT_LINES:
            return _EVENT_LINES[cls](event)
    return ""


def runs_table(jobs: list[JobRecord]) -> pd.DataFrame:
    rows = [[j.id, j.name, f"{STATUS_ICONS.get(j.status, '')} {j.status}", model_info(j.config.base_model).label,
             f"{j.last_step}/{j.total_steps or '?'}", format_duration(j.duration_seconds), _fmt_loss(j.final_loss)]
            for j in jobs]
    return pd.DataFrame(rows, columns=RUN_HEADERS)


def model_notes_text(model_id: str | None) -> str:
    info = model_info(model_id or BUNDLED_ID)
    gated = " · 🔒 gated: paste your Hugging Face token above" if info.gated else ""
    size = f"{info.params_b:.2f} B parameters · " if info.params_b else ""
    return "\n\n".join(part for part in (f"*{info.label}:* {size}{info.notes}{gated}", largest_here_text(),
                                         gpu_tiers_text(model_id or BUNDLED_ID)) if part)


def largest_here_text(fit: DeviceFit | None = None) -> str:
    """"Largest model that fits here (T4, 14.7 GB): QLoRA: Qwen3-8B · LoRA: Qwen3-4B", from the memory estimate
    with the preset recommended for this device (``engine.hardware``; ``fit`` another device's); empty if it
    cannot be worked out."""
    try:
        fit = fit or device_fit(pick_device())
    except Exception:  # a note must never break the form
        logging.getLogger("tune_studio.ui").warning("GPU tier estimate failed", exc_info=True)
        return ""
    if fit.capacity_gb is None:
        return ""
    parts = [f"{FIT_LABELS[m]}: {info.label if info else 'none listed'}" for m, info in fit.largest.items()]
    speed = " On a CPU, speed rather than memory limits the model size." if fit.device == "cpu" else ""
    return (f"**Largest model that fits here** ({fit.label}; preset {fit.preset}): " + " · ".join(parts)
            + f" (memory estimate, not a measurement).{speed}")


def gpu_tiers_text(model_id: str) -> str:
    """"Which GPU do I need?": a small table, one column per GPU tier, ✅/❌ per method for this model with each
    tier's recommended preset; empty for a model whose shape is unknown until it is downloaded."""
    info = local_model_info(model_id)
    if not info.layers:
        return ""
    try:
        columns = tier_columns()
        rows = [f"| {FIT_LABELS[m]} ({bits}-bit) | " + " | ".join("✅" if tier_fits(info, tier, m) else "❌"
                                                                 for _, tier in columns) + " |"
                for m, bits in (("qlora", 4), ("lora", 16))]
    except Exception:
        logging.getLogger("tune_studio.ui").warning("GPU tier table failed for %s", model_id, exc_info=True)
        return ""
    header = "| | " + " | ".join(name for name, _ in columns) + " |\n|---|" + "---|" * len(columns)
    return ("**Which GPU do I need?** Fits ✅ or not ❌ with each card's recommended preset (memory estimate, not "
            "yet checked against GPU measurements):\n\n" + header + "\n" + "\n".join(rows))


def memory_text(form: SettingsForm, values: tuple[Any, ...]) -> str:
    """The memory estimate and a fits / does-not-fit verdict, or the reason the settings are invalid."""
    try:
        config: TrainConfig = form.to_settings(values)  # type: ignore[assignment]
    except SettingsError as exc:
        return f"⚠️ **These settings cannot be used:** {exc}"
    try:
        from engine.memory import estimate_memory
    except ImportError:  # MEMORY-ESTIMATE-SPOT: engine/memory.py not available yet
        return "Memory estimate not available yet."
    try:
        est = estimate_memory(config)
    except Exception as exc:  # an estimate must never block the form
        return f"Memory estimate unavailable for these settings ({exc})."
    timing = time_text(estimate_time(config, est.device, converted=local_config_path(BUNDLED_ID) is not None))
    capacity = f"{est.capacity_gb:.1f} GB" if est.capacity_gb is not None else "unknown"
    verdict = {True: "✅ **fits on this device**", False: "❌ **does not fit on this device**",
               None: "❔ device memory unknown"}[est.fits]
    tier = current_tier() if est.device == "cuda" else None
    where = tier.label if tier else est.device
    text = (f"{timing}\n\n**Memory estimate ({where}):** about **{est.total_gb:.1f} GB** of {capacity} — "
            f"{verdict}  \n"
            f"weights {est.weights_gb:.2f} · adapter {est.adapter_gb:.2f} · optimizer {est.optimizer_gb:.2f} · "
            f"activations {est.activations_gb:.2f} · overhead {est.overhead_gb:.2f} GB")
    if est.weights_gb + est.loading_gb > est.training_gb:
        text += (f"  \nThe peak is while the model loads (weights + {est.loading_gb:.2f} GB for reading the "
                 "checkpoint), not while it trains.")
    text += "  \nThe Lab tab (section 5) shows this estimate next to what finished runs really used."
    if note := precision_note(tier, config.dtype):
        text += f"  \n{note}"
    if est.advice:
        text += "\n\n**To make it fit:**" + "".join(f"\n- {tip}" for tip in est.advice)
    return text


def _seconds(value: float) -> str:
    return f"~{value:.0f} s" if value < 90 else f"~{format_duration(value)}"


def time_text(est: TimeEstimate) -> str:
    """The time estimate in words: "About 2 min on this computer: loading ~15 s, 12 steps × ~6 s…"."""
    if est.step_s is None:
        return ("**Time:** depends on the GPU — with the bundled model a run takes seconds; a 1.5B model "
                "about a second per step on a T4. The bar below shows the real ETA once training starts.")
    parts = [f"loading {_seconds(est.load_s or 0)}"]
    if est.first_time_s:
        parts.insert(0, f"preparing the bundled model the first time {_seconds(est.first_time_s)}")
    steps = f"{est.steps} steps × {_seconds(est.step_s)}" if est.steps else f"each step {_seconds(est.step_s)}"
    parts.append(steps)
    if est.eval_s:
        parts.append(f"checking on held-out rows {_seconds(est.eval_s)}")
    parts.append(f"saving {_seconds(est.save_s)}")
    detail = ", ".join(parts)
    if est.total_s is None:
        return (f"**Time on this computer:** {detail}; the number of steps depends on your data (set "
                "*Max steps* for a fixed length).")
    minutes = max(1, round(est.total_s / 60))
    return f"**About {minutes} min on this computer:** {detail} (longer while other work keeps it busy)."


def _fmt_loss(loss: float | None) -> str:
    return "–" if loss is None else f"{loss:.4f}"
