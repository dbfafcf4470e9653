"""The Lab tab: the ideas behind QLoRA — calibration, NF4, LoRA's low-rank update, memory — on your own model.

Same shape as the other tabs: :func:`build` makes the components (one small builder per section),
:func:`register` wires the events, every public event has a stable ``lab_*`` ``api_name``. All numbers come
from :mod:`engine.lab` and :mod:`engine.memory`; this file only turns them into tables and plots. Nothing
here writes to the workspace: every endpoint is read-only (the demo may use the Lab too). The two heavy
ones (walking every layer, loading a model twice) share one concurrency slot, so visitors queue for them
instead of loading models side by side.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
import pandas as pd

from core.settings import describe
from engine.config import TrainConfig
from engine.lab import decide, precision
from engine.lab.layers import FORMATS, METHODS
from engine.lab.quant import ROUNDING_RULE, QuantSettings, calibrate, parse_values, round_trip
from engine.limits import limits
from engine.models import BUNDLED_ID, MODELS
from engine.workspace import Workspace
from ui.common import (
    SettingsForm,
    build_settings_form,
    control_for,
    endpoint,
    friendly_errors,
    model_token,
    workspace_of,
)

HEAVY = {"concurrency_id": "lab_heavy", "concurrency_limit": 1}
DEFAULT_VALUES = "-20, 0, 250, 500, 1000"
QUANT_HEADERS = ["value", "quantized q", "dequantized", "error"]
SIZE_HEADERS = ["format", "size (MiB)", "vs fp32"]
LAYER_HEADERS = ["layer", "shape", "min", "max", "mean", "std", "skewness", "kurtosis", "outliers (>6σ)",
                 *[f"SQNR {m} (dB)" for m in METHODS]]
WORST_HEADERS = ["layer", "NF4 SQNR (dB)", "NF4 max |error|", "kurtosis", "outliers (>6σ)"]
LORA_HEADERS = ["module", "layers", "d_in", "d_out", "r × (d_in + d_out) × layers"]
SPECTRUM_HEADERS = ["layer", "‖ΔW‖", "top-1 direction share", "top-4 directions share", "singular values"]
MEMORY_HEADERS = ["source", "model", "device", "quantization", "rank", "max length", "batch", "checkpointing",
                  "estimated GB", "measured GB", "estimate / measured"]
PRECISION_HEADERS = ["format", "perplexity (lower is better)", "weights in memory (MiB)", "seconds"]


@dataclass
class LabTabComponents:
    values: gr.Textbox
    quant_form: SettingsForm
    quant_button: gr.Button
    quant_summary: gr.Markdown
    quant_table: gr.Dataframe
    quant_plot: gr.LinePlot
    model: gr.Dropdown
    max_layers: gr.Number
    analyse_button: gr.Button
    layers_notes: gr.Markdown
    sizes: gr.Dataframe
    worst: gr.Dataframe
    layer_table: gr.Dataframe
    layer_pick: gr.Dropdown
    layer_histogram: gr.BarPlot
    sample_button: gr.Button
    report_state: gr.State
    prompt: gr.Textbox
    text: gr.Textbox
    precision_button: gr.Button
    precision_table: gr.Dataframe
    precision_answers: gr.Markdown
    lora_controls: dict[str, gr.components.Component]
    lora_button: gr.Button
    lora_summary: gr.Markdown
    lora_table: gr.Dataframe
    run: gr.Dropdown
    spectrum_button: gr.Button
    spectrum_summary: gr.Markdown
    spectrum_table: gr.Dataframe
    memory_button: gr.Button
    memory_table: gr.Dataframe
    memory_notes: gr.Markdown
    answers: dict[str, gr.Radio]
    decide_button: gr.Button
    advice: gr.Markdown


# ----------------------------------------------------------------------------------------- build


def build() -> LabTabComponents:
    gr.Markdown("Fine-tuning courses teach calibration, NF4, LoRA's low-rank update and QLoRA's memory sum. Here "
                "they are computed on **your** model: change a setting and see the numbers move.")
    parts: dict[str, Any] = {}
    with gr.Accordion("1 · Calibration playground: how numbers become 8 or 4 bits", open=True, elem_id="lab-quant"):
        parts.update(_build_calibration())
    with gr.Accordion("2 · Your model, layer by layer: what int8, NF4 and FP4 cost", open=False,
                      elem_id="lab-layers"):
        parts.update(_build_layers())
    with gr.Accordion("3 · Same prompt, full precision vs NF4", open=False, elem_id="lab-precision"):
        parts.update(_build_precision())
    with gr.Accordion("4 · LoRA: what a rank buys, and what a run learned", open=False, elem_id="lab-lora"):
        parts.update(_build_lora())
    with gr.Accordion("5 · Memory: the estimate next to what runs really used", open=False, elem_id="lab-memory"):
        parts.update(_build_memory())
    with gr.Accordion("6 · Prompting, RAG or fine-tuning?", open=False, elem_id="lab-decide"):
        parts.update(_build_decide())
    return LabTabComponents(**parts)


def _build_calibration() -> dict[str, Any]:
    values = gr.Textbox(DEFAULT_VALUES, label="Values", elem_id="lab-values",
                        info="Numbers separated by commas — or take real weights from a layer in section 2.")
    form = build_settings_form(QuantSettings, prefix="lab-quant")
    gr.Markdown(f"**Rule:** {ROUNDING_RULE}", elem_id="lab-rule")
    button = gr.Button("Quantize", variant="primary", elem_id="lab-quant-run")
    summary = gr.Markdown(elem_id="lab-quant-summary")
    with gr.Row():
        table = gr.Dataframe(headers=QUANT_HEADERS, interactive=False, elem_id="lab-quant-table", max_height=360)
        plot = gr.LinePlot(None, x="x", y="value", color="curve", title="Quantize → dequantize (the staircase)",
                           x_title="original value", y_title="value after the round trip", elem_id="lab-quant-plot")
    return {"values": values, "quant_form": form, "quant_button": button, "quant_summary": summary,
            "quant_table": table, "quant_plot": plot}


def _build_layers() -> dict[str, Any]:
    with gr.Row():
        model = gr.Dropdown([(m.label, m.id) for m in MODELS], value=BUNDLED_ID, label="Model", scale=3,
                            elem_id="lab-model", info="Hub models are downloaded first (weights read one matrix at "
                                                      "a time).")
        max_layers = gr.Number(0, precision=0, minimum=0, label="Weight matrices to walk (0 = all)", scale=1,
                               elem_id="lab-max-layers")
    gr.Markdown(f"Models up to {limits().max_lab_model_b:g} billion parameters on this server (the "
                "*Largest Lab model* limit).", elem_id="lab-size-limit")
    button = gr.Button("Analyse the model", variant="primary", elem_id="lab-analyse")
    notes = gr.Markdown(elem_id="lab-layers-notes")
    with gr.Row():
        sizes = gr.Dataframe(headers=SIZE_HEADERS, interactive=False, label="The whole model in each format",
                             elem_id="lab-sizes")
        worst = gr.Dataframe(headers=WORST_HEADERS, interactive=False, label="Layers that suffer most in NF4",
                             elem_id="lab-worst")
    with gr.Row():
        layer_pick = gr.Dropdown([], label="Layer", scale=3, elem_id="lab-layer-pick", allow_custom_value=True)
        sample = gr.Button("Use 16 of its weights in the playground", scale=1, elem_id="lab-sample")
    histogram = gr.BarPlot(None, x="weight", y="count", title="Weight histogram", elem_id="lab-histogram",
                           x_title="weight value (bin centre)", y_title="weights")
    table = gr.Dataframe(headers=LAYER_HEADERS, interactive=False, label="Every layer", max_height=420,
                         elem_id="lab-layer-table")
    return {"model": model, "max_layers": max_layers, "analyse_button": button, "layers_notes": notes,
            "sizes": sizes, "worst": worst, "layer_table": table, "layer_pick": layer_pick,
            "layer_histogram": histogram, "sample_button": sample, "report_state": gr.State(None)}


def _build_precision() -> dict[str, Any]:
    gr.Markdown("The model of section 2 is loaded twice — full precision, then NF4 with double quantization as "
                "QLoRA loads it — and answers greedily, so only the weights differ. Perplexity on the text below "
                "measures what 4 bits cost.")
    prompt = gr.Textbox(precision.DEFAULT_PROMPT, label="Prompt", elem_id="lab-prompt")
    text = gr.Textbox(precision.DEFAULT_TEXT, label="Text for perplexity", lines=3, elem_id="lab-text",
                      max_length=precision.MAX_TEXT_CHARS)
    button = gr.Button("Answer in both", variant="primary", elem_id="lab-precision-run")
    table = gr.Dataframe(headers=PRECISION_HEADERS, interactive=False, elem_id="lab-precision-table")
    answers = gr.Markdown(elem_id="lab-precision-answers")
    return {"prompt": prompt, "text": text, "precision_button": button, "precision_table": table,
            "precision_answers": answers}


def _build_lora() -> dict[str, Any]:
    infos = {i.name: i for i in describe(TrainConfig)}
    with gr.Row():
        controls = {name: control_for(infos[name], elem_id=f"lab-{name}")
                    for name in ("lora_r", "lora_alpha", "target_modules")}
    button = gr.Button("Count the adapter's parameters", variant="primary", elem_id="lab-lora-run")
    summary = gr.Markdown(elem_id="lab-lora-summary")
    table = gr.Dataframe(headers=LORA_HEADERS, interactive=False, elem_id="lab-lora-table")
    gr.Markdown("**After a finished run:** its learned update of each layer is ΔW = (α/r)·B·A. The share carried by "
                "the top directions says how much of the rank it really used.")
    with gr.Row():
        run = gr.Dropdown([], label="Finished run", scale=3, elem_id="lab-run", allow_custom_value=True)
        spectrum_button = gr.Button("Show its update's singular values", scale=1, elem_id="lab-spectrum-run")
    spectrum_summary = gr.Markdown(elem_id="lab-spectrum-summary")
    spectrum_table = gr.Dataframe(headers=SPECTRUM_HEADERS, interactive=False, max_height=360,
                                  elem_id="lab-spectrum-table")
    return {"lora_controls": controls, "lora_button": button, "lora_summary": summary, "lora_table": table,
            "run": run, "spectrum_button": spectrum_button, "spectrum_summary": spectrum_summary,
            "spectrum_table": spectrum_table}


def _build_memory() -> dict[str, Any]:
    gr.Markdown("The Train tab estimates a run's memory before it starts. Here is that estimate next to the peak "
                "each finished run really used (CPU: the process's peak RSS; GPU: peak allocated), per device, "
                "plus the reference runs that calibrated the estimator.")
    button = gr.Button("Show the table", elem_id="lab-memory-run")
    table = gr.Dataframe(headers=MEMORY_HEADERS, interactive=False, max_height=420, elem_id="lab-memory-table")
    notes = gr.Markdown(elem_id="lab-memory-notes")
    return {"memory_button": button, "memory_table": table, "memory_notes": notes}


def _build_decide() -> dict[str, Any]:
    answers = {key: gr.Radio(list(choices), label=question, elem_id=f"lab-q-{key}")
               for key, (question, choices) in decide.QUESTIONS.items()}
    button = gr.Button("What should I try?", variant="primary", elem_id="lab-decide-run")
    advice = gr.Markdown(elem_id="lab-advice")
    return {"answers": answers, "decide_button": button, "advice": advice}


# ----------------------------------------------------------------------------------------- calibration


def quantize_values(text: str, *form_values: Any, form: SettingsForm) -> tuple[str, pd.DataFrame, pd.DataFrame]:
    result = calibrate(parse_values(text), form.to_settings(form_values))
    table = pd.DataFrame([[v.value, v.q, v.dequant, v.error] for v in result.values], columns=QUANT_HEADERS)
    grid = result.grid()
    summary = (f"**scale** = {result.scale:.6g} · **zero point** = {result.zero_point} · integers "
               f"{result.qmin}…{result.qmax} ({len(grid)} levels, one every {result.scale:.4g}) · calibration range "
               f"[{result.lo:.6g}, {result.hi:.6g}] · MSE {result.mse:.4g} · max |error| {result.max_abs_error:.4g}")
    if result.clamped:
        summary += f" · **{result.clamped} value(s) clamped** to the grid's ends"
    summary += "".join(f"\n\n⚠️ {note}" for note in result.notes)
    return summary, table, staircase(result.lo, result.hi, result.scale, result.zero_point, result.qmin, result.qmax)


def staircase(lo: float, hi: float, scale: float, zero_point: int, qmin: int, qmax: int,
              points: int = 400) -> pd.DataFrame:
    """The round trip as a function of the input over the range (and a margin), next to the identity line."""
    margin = 0.1 * (hi - lo or 1.0)
    x = np.linspace(lo - margin, hi + margin, points)
    _, _, restored = round_trip(x, scale, zero_point, qmin, qmax)
    rows = [{"x": float(a), "value": float(b), "curve": "after quantize → dequantize"}
            for a, b in zip(x, restored, strict=True)]
    rows += [{"x": float(a), "value": float(a), "curve": "original (no error)"} for a in (x[0], x[-1])]
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------- layers


def visitor_token(request: gr.Request) -> str | None:
    """The token this visitor's model downloads may use: never another visitor's (see ``model_token``)."""
    return model_token(workspace_of(request).owner, None)


def check_lab_size(model_id: str, token: str | None) -> None:
    """Refuse a model above the Lab's size limit before downloading its weights (only config.json is read)."""
    from engine.lab.lora import meta_model_of, params_billions

    billions = params_billions(meta_model_of(model_id, token))
    limits().check("max_lab_model_b", billions, f"The size of {model_id.split('/')[-1]} (billion parameters)",
                   "Pick a smaller model here; section 4 counts LoRA parameters of any size.")


def analyse_model(model_id: str, max_layers: float | None, request: gr.Request,
                  progress: gr.Progress = gr.Progress()) -> tuple[Any, ...]:
    """Walk the model's weight matrices with a progress bar; the report stays in the page's state."""
    from engine.lab.layers import analyse_folder
    from engine.models import model_folder

    token = visitor_token(request)
    model_id = model_id or BUNDLED_ID
    check_lab_size(model_id, token)
    progress(0, desc="Fetching the model")
    folder = model_folder(model_id, token)
    report = analyse_folder(folder, model_id, max_layers=int(max_layers or 0) or None,
                            on_layer=lambda done, total, name: progress((done, total), desc=f"Analysing {name}"))
    data = report.to_dict(histograms=True)
    names = [layer["name"] for layer in data["layers"]]
    first = names[0] if names else None
    return (data, layers_notes(data), sizes_table(data), worst_table(data), layer_table(data),
            gr.Dropdown(choices=names, value=first), histogram_plot(data, first))


def layers_notes(data: dict[str, Any]) -> str:
    lines = [f"**{len(data['layers'])} weight matrices** of {data['model']} walked"
             + (f" ({data['skipped_layers']} more not walked: raise the limit to include them)"
                if data["skipped_layers"] else "")
             + f"; {data['other_params']:,} other parameters (embeddings, norms) stay in 16 bits when quantized."]
    lines += [f"⚠️ {note}" for note in data["notes"]]
    lines.append("SQNR = signal-to-quantization-noise ratio, 10·log10(Σw² / Σerror²) in dB: higher is better; every "
                 "6 dB is about one bit. int8 uses one scale per output row; NF4/FP4 one per block of 64 weights.")
    return "\n\n".join(lines)


def sizes_table(data: dict[str, Any]) -> pd.DataFrame:
    sizes = data["sizes_bytes"]
    return pd.DataFrame([[name, round(sizes[name] / 2**20, 1), f"{sizes[name] / sizes['fp32']:.1%}"]
                         for name in FORMATS], columns=SIZE_HEADERS)


def _error(layer: dict[str, Any], method: str) -> dict[str, Any]:
    return next(e for e in layer["errors"] if e["method"] == method)


def worst_table(data: dict[str, Any], count: int = 5) -> pd.DataFrame:
    ranked = sorted(data["layers"], key=lambda layer: _error(layer, "nf4")["sqnr_db"])[:count]
    return pd.DataFrame([[layer["name"], round(_error(layer, "nf4")["sqnr_db"], 2),
                          f"{_error(layer, 'nf4')['max_abs']:.4g}", round(layer["stats"]["kurtosis"], 2),
                          f"{layer['stats']['outlier_share']:.3%}"] for layer in ranked], columns=WORST_HEADERS)


def layer_table(data: dict[str, Any]) -> pd.DataFrame:
    rows = []
    for layer in data["layers"]:
        s = layer["stats"]
        rows.append([layer["name"], "×".join(map(str, layer["shape"])), f"{s['min']:.4g}", f"{s['max']:.4g}",
                     f"{s['mean']:.3g}", f"{s['std']:.4g}", round(s["skewness"], 3), round(s["kurtosis"], 2),
                     f"{s['outlier_share']:.3%}", *[round(_error(layer, m)["sqnr_db"], 2) for m in METHODS]])
    return pd.DataFrame(rows, columns=LAYER_HEADERS)


def histogram_plot(data: dict[str, Any] | None, name: str | None) -> gr.BarPlot:
    layer = next((item for item in (data or {}).get("layers", []) if item["name"] == name), None)
    if layer is None:
        return gr.BarPlot(value=None)
    edges, counts = layer["histogram"]["edges"], layer["histogram"]["counts"]
    width = edges[1] - edges[0]
    table = pd.DataFrame({"weight": [e + width / 2 for e in edges[:-1]], "count": counts})
    return gr.BarPlot(value=table, x_bin=width, y_aggregate="sum", title=f"Weight histogram of {name}")


def sample_weights(model_id: str, name: str | None, request: gr.Request) -> str:
    """16 weights of a layer (its first row's first 12, and its extremes) as playground values."""
    from engine.lab.layers import iter_tensors, short_name, tensor_files
    from engine.models import model_folder
    if not name:
        raise ValueError("Analyse the model first, then pick a layer.")
    folder = model_folder(model_id or BUNDLED_ID, visitor_token(request))
    files = tensor_files(folder)
    key = next((k for k in files if short_name(k) == name), None)
    if key is None:
        raise ValueError(f"The model has no layer called {name}: analyse it again.")
    _, weights = next(iter_tensors(files, [key]))
    picked = [*weights.ravel()[:14], weights.min(), weights.max()]
    return ", ".join(f"{float(v):.6g}" for v in picked)


# ----------------------------------------------------------------------------------------- precision


def answer_in_both(model_id: str, prompt: str, text: str, request: gr.Request,
                   progress: gr.Progress = gr.Progress()) -> tuple[pd.DataFrame, str]:
    token = visitor_token(request)
    check_lab_size(model_id or BUNDLED_ID, token)
    results = precision.compare_precisions(model_id or BUNDLED_ID, prompt, text, token=token,
                                           on_phase=lambda phase: progress(None, desc=phase))
    table = pd.DataFrame([[r.format, round(r.perplexity, 3), round(r.footprint_bytes / 2**20, 1), round(r.seconds, 1)]
                          for r in results], columns=PRECISION_HEADERS)
    answers = "\n\n".join(f"**{r.format}:** {r.answer or '(empty answer)'}" for r in results)
    return table, answers


# ----------------------------------------------------------------------------------------- LoRA


def count_adapter(model_id: str, r: float, alpha: float, targets: str, request: gr.Request) -> tuple[str, Any]:
    from engine.lab.lora import count_lora, meta_model_of, parse_targets

    shapes = meta_model_of(model_id or BUNDLED_ID, visitor_token(request))
    count = count_lora(shapes, int(r), parse_targets(targets), alpha, model_id)
    summary = (f"**{count.trainable_params:,} trainable parameters** — {count.share_of_base:.3%} of the model's "
               f"{count.base_params:,}. Each adapted layer d_in → d_out gets A (r × d_in) and B (d_out × r): "
               f"r·(d_in + d_out) parameters. Scaling α/r = {count.scaling:g}.")
    table = pd.DataFrame([[kind, n, d_in, d_out, f"{params:,}"] for kind, n, d_in, d_out, params in count.by_kind()],
                         columns=LORA_HEADERS)
    return summary, table


def finished_runs(ws: Workspace) -> list[tuple[str, str]]:
    return [(f"{job.name} · {job.id}", job.id) for job in ws.finished_runs()]


def refresh_runs(request: gr.Request) -> gr.Dropdown:
    choices = finished_runs(workspace_of(request))
    return gr.Dropdown(choices=choices, value=choices[0][1] if choices else None)


def run_spectrum(run_id: str | None, request: gr.Request) -> tuple[str, pd.DataFrame]:
    from engine.lab.lora import TOP_DIRECTIONS, adapter_spectrum, spectrum_summary

    if not run_id:
        raise ValueError("Pick one of your finished runs (train one in the Train tab first).")
    job = workspace_of(request).run(run_id)
    summary = spectrum_summary(adapter_spectrum(Path(job.adapter_dir)))
    top, more = TOP_DIRECTIONS
    rows = [[row["layer"], f"{row['norm']:.4g}", f"{row[f'top{top}_share']:.0%}", f"{row[f'top{more}_share']:.0%}",
             ", ".join(f"{s:.3g}" for s in row["singular_values"][:8])] for row in summary["layers"]]
    text = (f"**{len(rows)} adapted layers.** On average the top direction carries "
            f"{summary[f'mean_top{top}_share']:.0%} of an update and the top {more} carry "
            f"{summary[f'mean_top{more}_share']:.0%}: when that is near 100%, a smaller rank would learn the same.")
    return text, pd.DataFrame(rows, columns=SPECTRUM_HEADERS)


# ----------------------------------------------------------------------------------------- memory, decision


def memory_rows(request: gr.Request) -> tuple[pd.DataFrame, str]:
    """Every finished run of this visitor with a measured peak, then the reference rows, grouped per device."""
    from engine.memory import memory_table

    table = memory_table(workspace_of(request).runs())
    rows, notes = [], []
    for device, device_rows in table.items():
        for r in device_rows:
            rows.append([r.source, r.model, r.device, r.quantization, r.lora_r, r.max_length, r.batch_size,
                         "on" if r.gradient_checkpointing else "off",
                         None if r.estimated_gb is None else round(r.estimated_gb, 2), round(r.measured_gb, 2),
                         "–" if r.ratio is None else f"{r.ratio:.2f}"])
        ratios = [r.ratio for r in device_rows if r.ratio is not None]
        if ratios:
            notes.append(f"**{device}:** {len(device_rows)} runs, estimate / measured {min(ratios):.2f}–"
                         f"{max(ratios):.2f} (above 1: the estimate was on the safe side)")
    if "cuda" not in table:
        notes.append("No GPU run measured here yet: GPU rows appear after a run on a GPU finishes.")
    return pd.DataFrame(rows, columns=MEMORY_HEADERS), "\n\n".join(notes) or "No measured run yet."


def latest_report(ws: Workspace) -> dict[str, Any] | None:
    """The newest Compare report JSON of this visitor, if any."""
    files = sorted(ws.reports.glob("*/comparison.json"), key=lambda p: p.stat().st_mtime)
    for file in reversed(files):
        try:
            return json.loads(file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
    return None


def advise(changes: str | None, citations: str | None, goal: str | None, examples: str | None,
           prompt_works: str | None, request: gr.Request) -> str:
    values = (changes, citations, goal, examples, prompt_works)
    answers = {key: value or "" for key, value in zip(decide.QUESTIONS, values, strict=True)}
    advice = decide.recommend(answers, latest_report(workspace_of(request)))
    lines = [f"### Try: {advice.approach}", *[f"- {reason}" for reason in advice.reasons]]
    if advice.evidence:
        lines += ["", "**Your own measurements (latest Compare report):**", *[f"- {e}" for e in advice.evidence]]
    else:
        lines += ["", "_Measure it: ask the same questions to all four in the Compare tab — your own questions beat "
                      "any rule of thumb._"]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------- events


def register(c: LabTabComponents) -> None:
    """Wire every event (``lab_*`` API endpoints, all read-only)."""
    form = c.quant_form
    endpoint(c.quant_button.click,
             friendly_errors("Could not quantize")(lambda text, *v: quantize_values(text, *v, form=form)),
             [c.values, *form.components], [c.quant_summary, c.quant_table, c.quant_plot], api_name="lab_quantize")
    analysed = [c.report_state, c.layers_notes, c.sizes, c.worst, c.layer_table, c.layer_pick, c.layer_histogram]
    endpoint(c.analyse_button.click, friendly_errors("Could not analyse the model")(analyse_model),
             [c.model, c.max_layers], analysed, api_name="lab_analyse", **HEAVY)
    c.layer_pick.change(histogram_plot, [c.report_state, c.layer_pick], c.layer_histogram, api_visibility="private",
                        show_progress="hidden")
    endpoint(c.sample_button.click, friendly_errors("Could not read the layer")(sample_weights),
             [c.model, c.layer_pick], c.values, api_name="lab_sample_weights")
    endpoint(c.precision_button.click, friendly_errors("Could not compare precisions")(answer_in_both),
             [c.model, c.prompt, c.text], [c.precision_table, c.precision_answers], api_name="lab_precision", **HEAVY)
    lora = c.lora_controls
    endpoint(c.lora_button.click, friendly_errors("Could not count the adapter")(count_adapter),
             [c.model, lora["lora_r"], lora["lora_alpha"], lora["target_modules"]], [c.lora_summary, c.lora_table],
             api_name="lab_lora")
    endpoint(c.run.focus, refresh_runs, None, c.run, api_name="lab_refresh", show_progress="hidden")
    endpoint(c.spectrum_button.click, friendly_errors("Could not read the run")(run_spectrum), c.run,
             [c.spectrum_summary, c.spectrum_table], api_name="lab_spectrum")
    endpoint(c.memory_button.click, friendly_errors("Could not build the table")(memory_rows), None,
             [c.memory_table, c.memory_notes], api_name="lab_memory")
    endpoint(c.decide_button.click, friendly_errors("Answer every question")(advise), list(c.answers.values()),
             c.advice, api_name="lab_decide")


def register_page_load(demo: gr.Blocks, c: LabTabComponents) -> None:
    """Fill the run list when the page opens (it is per visitor)."""
    demo.load(refresh_runs, None, c.run, api_visibility="private")
