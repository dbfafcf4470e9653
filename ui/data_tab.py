"""Data tab: upload a file (or the demo), see what Tune Studio understood, fix it, preview it.

Why this shape: a newcomer cannot debug a dataset, so the tab answers, in order, "what did you
read?" (detected format and mapping), "what is wrong and how do I fix it?" (validation report),
"will it fit?" (token histogram, truncated rows, split) and "what will the model learn?" (preview
with the trained tokens highlighted). Everything is computed by ``engine.data``; this file only
arranges it. The loaded dataset lives in a per-visitor ``gr.State`` that the Train tab reads.

Preference data (DPO/ORPO pairs, KTO feedback) gets its own view: the pairs as the model sees them, token
counts per side and what the maximum length cuts, because what matters there is whether the two answers
survive the cut, not one learned span. Its ``kind`` and the methods that fit go into the shared state, so the
Train tab can say when the chosen method does not fit the data.
"""

from __future__ import annotations

import contextlib
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from core.settings import SettingInfo
from engine import data
from engine.data.language import language_warning
from engine.data.length_check import cut_line
from engine.quotas import accept_upload
from engine.workspace import AccessPolicy, Workspace
from ui.common import (
    SettingsForm,
    build_settings_form,
    display_value,
    endpoint,
    friendly_errors,
    limits_panel,
    named_parameters,
    tokenizer_for,
    workspace_of,
)

DEMO_DATASET = Path(__file__).parent / "demo_data" / "tune_studio_faq.json"
UPLOAD_TYPES = [".csv", ".json", ".jsonl", ".parquet", ".txt"]
MAX_ISSUES_SHOWN = 200
HISTOGRAM_BINS = 12
#: The Train-tab settings the check depends on, in the order ``register`` receives their controls.
CHECK_SETTINGS = ("base_model", "max_length", "train_on", "val_fraction", "seed")
#: Cheap to re-check on every change; a new base model may need a download, so that waits for the button.
AUTO_RECHECK = ("max_length", "train_on", "val_fraction")
ISSUE_HEADERS = ["Row", "Severity", "What is wrong", "How to fix"]
EMPTY_ISSUES = pd.DataFrame(columns=ISSUE_HEADERS)
PAIR_HEADERS = ["Row", "Prompt", "Chosen", "Rejected", "Tokens (prompt / chosen / rejected)", "Max length cuts"]
FEEDBACK_HEADERS = ["Row", "Prompt", "Answer", "Good/Bad", "Tokens (prompt / answer)", "Max length cuts"]
EMPTY_PAIRS = pd.DataFrame(columns=PAIR_HEADERS)
#: Column widths, so Chosen and Rejected sit next to a long prompt instead of being scrolled out of sight.
PAIR_WIDTHS = ["4%", "24%", "24%", "24%", "9%", "15%"]
FEEDBACK_WIDTHS = ["4%", "30%", "36%", "6%", "9%", "15%"]
#: Pairs shown in the table (each is rendered with the chat template, so the table stays quick).
PAIRS_SHOWN = 20
#: Characters of each side shown in the table: the end of the prompt (where the question is), the start of answers.
PAIR_TEXT_CHARS = 400
#: Which training methods fit each kind of data (the Train tab reads ``dataset["methods"]``).
METHODS_FOR = {"sft": ["sft"], "pairs": ["dpo", "orpo", "kto"], "feedback": ["kto", "sft"]}
EMPTY_HISTOGRAM = pd.DataFrame({"tokens": [], "examples": [], "fits": []})


@dataclass
class DataTabComponents:
    upload: gr.File
    demo_button: gr.Button
    status: gr.Markdown
    sft_on_chosen: gr.Checkbox  # data option: SFT on the chosen answers of a pair file
    mapping: SettingsForm
    apply_mapping: gr.Button
    check_again: gr.Button
    report: gr.Markdown
    issues: gr.Dataframe
    pairs: gr.Dataframe  # preference data: the first pairs as the model sees them
    histogram: gr.BarPlot
    preview_index: gr.Slider
    preview_info: gr.Markdown
    preview: gr.HighlightedText  # the example as readable turns
    preview_exact: gr.HighlightedText  # the same example exactly as the model sees it (behind the toggle)
    preview_raw: gr.Checkbox  # shows preview_exact instead of preview
    saved: gr.Dropdown  # "Your datasets": the visitor's kept files, most recent first
    delete_saved: gr.Button
    dataset: gr.State  # {"path", "name", "mapping", "format", "kind", "n_examples", ...} or None; read by Train
    examples: gr.State  # usable examples of the loaded file, for the preview
    check_with: list[Any] = field(default_factory=list)  # the Train-tab controls, set by ``register``


def build(dataset: gr.State | None = None) -> DataTabComponents:
    """Lay out the tab; ``dataset`` is the shared state the Train tab also reads."""
    gr.Markdown(
        "### 1 · Your data\nDrop a file with examples of questions and the answers you want "
        "(CSV, JSON, JSONL, Parquet or TXT), or start with the demo dataset."
    )
    with gr.Row():
        upload = gr.File(label="Drop your data file here", file_types=UPLOAD_TYPES, type="filepath",
                         elem_id="data-upload", scale=3)
        with gr.Column(scale=1):
            demo_button = gr.Button("Use the demo dataset", variant="secondary", elem_id="data-demo")
            gr.Markdown(f"{_demo_rows()} questions and answers about Tune Studio, written for this app.")
    with gr.Row():
        saved = gr.Dropdown(choices=[], value=None, label="Your datasets", scale=4, elem_id="data-saved",
                            info="Files you loaded before, kept in your workspace: pick one to load it again.")
        delete_saved = gr.Button("Delete this dataset", size="sm", variant="stop", scale=1, elem_id="data-delete")
    limits_panel("data-limits")
    status = gr.Markdown("No data loaded yet.", elem_id="data-status")
    sft_on_chosen = gr.Checkbox(False, label="Train on the chosen answers (SFT)", visible=False,
                                info="For preference pairs: fine-tune with SFT on the better answers and ignore the "
                                "rejected ones. Off: choose DPO or ORPO (or KTO) in the Train tab.",
                                elem_id="data-sft-on-chosen")
    with gr.Accordion("Column mapping (change it if the detected columns are wrong)", open=False):
        mapping = build_settings_form(data.ColumnMapping, prefix="mapping", custom={
            info.name: _column_dropdown for info in _column_settings()
        })
        apply_mapping = gr.Button("Apply mapping and check again", elem_id="data-apply-mapping")
    gr.Markdown("### 2 · Check")
    report = gr.Markdown(elem_id="data-report")
    check_again = gr.Button("Check again with the model and max length chosen in the Train tab", size="sm",
                            elem_id="data-check-again")
    histogram = gr.BarPlot(None, x="tokens", y="examples", color="fits", title="Tokens per example",
                           x_title="tokens", y_title="examples", elem_id="data-histogram")
    issues = gr.Dataframe(EMPTY_ISSUES, label="Problems found (row numbers count from 1)", interactive=False,
                          wrap=True, column_widths=["10%", "8%", "47%", "35%"], elem_id="data-issues",
                          visible=False)  # shown when there is a problem to list
    pairs = gr.Dataframe(EMPTY_PAIRS, label=f"Preference data: the first {PAIRS_SHOWN} usable rows as the model "
                         "sees them (prompt end, answers start)", interactive=False, wrap=True, visible=False,
                         column_widths=PAIR_WIDTHS, elem_id="data-pairs")
    gr.Markdown("### 3 · Preview — one example as a conversation; **highlighted** is what the model learns")
    with gr.Row():
        preview_index = gr.Slider(1, 2, value=1, step=1, label="Example", scale=4, elem_id="data-preview-index")
        preview_raw = gr.Checkbox(False, label="Show exactly what the model sees", scale=1, elem_id="data-preview-raw",
                                  info="The text with the chat template's special tokens, as it is tokenised.")
    preview_info = gr.Markdown()
    preview = gr.HighlightedText(label="Example", color_map={"learned": "green"},
                                 show_legend=True, combine_adjacent=True, elem_id="data-preview")
    preview_exact = gr.HighlightedText(label="Example exactly as the model sees it (chat template and special "
                                       "tokens)", color_map={"learned": "green"}, show_legend=True,
                                       combine_adjacent=True, visible=False, elem_id="data-preview-exact")
    return DataTabComponents(
        upload=upload, demo_button=demo_button, status=status, sft_on_chosen=sft_on_chosen, mapping=mapping,
        apply_mapping=apply_mapping, check_again=check_again,
        report=report, issues=issues, pairs=pairs, histogram=histogram, preview_index=preview_index,
        preview_info=preview_info, preview=preview, preview_exact=preview_exact, preview_raw=preview_raw,
        saved=saved, delete_saved=delete_saved,
        dataset=dataset if dataset is not None else gr.State(None),
        examples=gr.State([]),
    )


def register(c: DataTabComponents, check_with: list[gr.components.Component],
             extra_demo_triggers: list[gr.Button] | None = None) -> None:
    """Wire the events. ``check_with`` are the Train-tab controls named in CHECK_SETTINGS;
    ``extra_demo_triggers`` are other buttons (the guide's) that load the demo dataset too."""
    c.check_with = list(check_with)
    outputs = analysis_outputs(c)
    loads = [*outputs, c.saved]

    def on_apply(dataset: dict | None, *values: Any) -> list[Any]:
        if not dataset:
            raise gr.Error("Load a file first (drop it above or press 'Use the demo dataset').", title="No data yet")
        mapping = c.mapping.to_settings(values[: len(c.mapping.names)])
        return analyse_file(Path(dataset["path"]), mapping, *values[len(c.mapping.names):],
                            options=dataset.get("options"))

    def on_recheck(dataset: dict | None, *values: Any) -> list[Any]:
        if not dataset:
            return [gr.skip()] * len(outputs)
        return analyse_file(Path(dataset["path"]), stored_mapping(dataset), *values, options=dataset.get("options"))

    form_and_check = [*c.mapping.components, *check_with]
    mapping_names, check_names = c.mapping.names, list(CHECK_SETTINGS)
    endpoint(
        c.apply_mapping.click,
        named_parameters(friendly_errors("This column mapping does not work")(on_apply),
                         ["dataset", *mapping_names, *check_names]),
        [c.dataset, *form_and_check], outputs, api_name="data_apply_mapping",
        show_progress_on=c.status)
    recheck = named_parameters(friendly_errors("The data could not be checked again")(on_recheck),
                               ["dataset", *check_names])
    endpoint(c.check_again.click, recheck, [c.dataset, *check_with], outputs, api_name="data_check",
             show_progress_on=c.report)
    register_loading(c, loads, extra_demo_triggers)
    register_sft_on_chosen(c, check_with, outputs)
    register_saved(c, loads)
    for name, control in zip(CHECK_SETTINGS, check_with, strict=True):
        if name in AUTO_RECHECK:  # .change: also when a preset sets the value (not only when the visitor drags)
            control.change(recheck, [c.dataset, *check_with], outputs, api_visibility="private",
                           show_progress_on=c.report, trigger_mode="always_last")
    endpoint(
        c.preview_index.change,
        named_parameters(friendly_errors("The preview failed")(show_preview), ["examples", "example", *check_names]),
        [c.examples, c.preview_index, *check_with], [c.preview_exact, c.preview_info, c.preview],
        api_name="data_preview")
    c.preview_raw.change(show_exact, c.preview_raw, [c.preview_exact, c.preview], api_visibility="private",
                         show_progress="hidden")


def register_loading(c: DataTabComponents, loads: list[gr.components.Component],
                     extra_demo_triggers: list[gr.Button] | None) -> None:
    """Upload and demo: the status line says at once what is happening, then the analysis fills the tab."""
    check_with, check_names = c.check_with, list(CHECK_SETTINGS)

    def on_upload(path: str | None, *check: Any, request: gr.Request, profile: gr.OAuthProfile | None = None) -> Any:
        """A new file is always detected afresh: the mapping shown belongs to the previous file."""
        if not path:
            yield [gr.skip()] * len(loads)
            return
        yield working(loads, "⏳ Reading your file…")
        ws = workspace_of(request, profile)
        accept_upload(Path(path), ws)  # size and disk quota, before anything is copied (API clients skip the browser)
        yield from analyse_announced(ws, ws.save_dataset(path).path, loads, check)

    def on_demo(*check: Any, request: gr.Request, profile: gr.OAuthProfile | None = None) -> Any:
        yield working(loads, "⏳ Reading the demo dataset…")
        ws = workspace_of(request, profile)
        kept = None if AccessPolicy.from_env().demo else ws.save_dataset(DEMO_DATASET).path
        yield from analyse_announced(ws, kept or str(DEMO_DATASET), loads, check)

    endpoint(
        c.upload.upload,
        named_parameters(friendly_errors("This file cannot be used")(on_upload), ["file", *check_names], request=True),
        [c.upload, *check_with], loads, api_name="data_upload", show_progress="hidden")
    endpoint([b.click for b in [c.demo_button, *(extra_demo_triggers or [])]],
             named_parameters(friendly_errors("The demo dataset could not be loaded")(on_demo), check_names,
                              request=True),
             check_with, loads, api_name="data_load_demo", show_progress="hidden")


def analysis_outputs(c: DataTabComponents) -> list[gr.components.Component]:
    """What every analysis fills, in ``analyse_file``'s order."""
    return [c.dataset, c.examples, c.status, c.sft_on_chosen, *c.mapping.components, c.report, c.issues,
            c.pairs, c.histogram, c.preview_index, c.preview_exact, c.preview_info, c.preview]


def working(loads: list[Any], message: str) -> list[Any]:
    """Only the status line, at once: what the tab is doing while the rest is computed."""
    return [gr.skip(), gr.skip(), message, *[gr.skip()] * (len(loads) - 3)]


def analyse_announced(ws: Workspace, path: str, loads: list[Any], check: tuple[Any, ...]) -> Any:
    """Say that the tokenizer is loading (the first time takes a while), then analyse and remember the result."""
    yield working(loads, "⏳ File read. Counting tokens with the model's tokenizer (loading it the first time can "
                  "take up to a minute)…")
    outputs = analyse_file(Path(path), None, *check)
    remember(ws, outputs[0])
    yield [*outputs, saved_choices(ws, (outputs[0] or {}).get("dataset_id"))]


def register_page_load(demo: gr.Blocks, c: DataTabComponents) -> None:
    """After a reload, load the visitor's last dataset again (the Train tab reads the shared state)."""
    loads = [*analysis_outputs(c), c.saved]

    def on_load(*check: Any, request: gr.Request, profile: gr.OAuthProfile | None = None) -> list[Any]:
        ws = workspace_of(request, profile)
        last = ws.last_dataset()
        return load_saved(ws, last.id, loads, check) if last else [*[gr.skip()] * (len(loads) - 1),
                                                                  saved_choices(ws, None)]

    demo.load(on_load, c.check_with, loads, api_visibility="private", show_progress="hidden")


def register_saved(c: DataTabComponents, loads: list[gr.components.Component]) -> None:
    """Pick an earlier dataset from 'Your datasets' to load it; delete the one picked."""

    def on_pick(dataset_id: str | None, *check: Any, request: gr.Request,
                profile: gr.OAuthProfile | None = None) -> list[Any]:
        if not dataset_id:
            return [gr.skip()] * len(loads)
        return load_saved(workspace_of(request, profile), dataset_id, loads, check)

    def on_delete(dataset_id: str | None, dataset: dict | None, request: gr.Request,
                  profile: gr.OAuthProfile | None = None) -> list[Any]:
        if not dataset_id:
            raise gr.Error("Pick a dataset in 'Your datasets' first.", title="Nothing to delete")
        ws = workspace_of(request, profile)
        AccessPolicy.from_env().require_write("Deleting datasets")
        ws.delete_dataset(dataset_id)
        if dataset and dataset.get("dataset_id") == dataset_id:
            return [saved_choices(ws, None), None, "Dataset deleted. Load another one above."]
        return [saved_choices(ws, (dataset or {}).get("dataset_id")), gr.skip(), gr.skip()]

    c.saved.input(friendly_errors("This dataset could not be loaded")(on_pick), [c.saved, *c.check_with], loads,
                  api_visibility="private", show_progress_on=c.status)
    c.delete_saved.click(friendly_errors("This dataset could not be deleted")(on_delete), [c.saved, c.dataset],
                         [c.saved, c.dataset, c.status], api_visibility="private")


def load_saved(ws: Workspace, dataset_id: str, loads: list[Any], check: tuple[Any, ...]) -> list[Any]:
    """Analyse one of the visitor's kept datasets with its kept mapping and options."""
    try:
        record = ws.dataset(dataset_id)
        outputs = analyse_file(Path(record.path), stored_mapping({"mapping": record.mapping}), *check,
                               options=record.options)
    except Exception as exc:  # a page load must not end in an error toast: say it in the status line
        return [*working(loads, f"Your dataset could not be loaded again: {friendly_message(exc)}")[:-1],
                saved_choices(ws, None)]
    remember(ws, outputs[0])
    return [*outputs, saved_choices(ws, record.id)]


def friendly_message(exc: Exception) -> str:
    """The first line of an error, without server paths (KeyError quotes its text)."""
    text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    return text.splitlines()[0] if text else type(exc).__name__


def remember(ws: Workspace, state: dict | None) -> None:
    """Keep what was read (format, rows, mapping, options) in the dataset's record, and mark it the last used."""
    if not state or not state.get("dataset_id") or AccessPolicy.from_env().demo:
        return
    with contextlib.suppress(KeyError):  # not a kept file (the demo in a read-only Space)
        ws.update_dataset(state["dataset_id"], format=state["format"], rows=state["n_rows"], kind=state["kind"],
                          mapping=state.get("mapping"), options=state.get("options") or {})


def saved_choices(ws: Workspace, selected: str | None) -> gr.Dropdown:
    """'Your datasets', most recent first."""
    records = ws.list_datasets()
    ids = {r.id for r in records}
    return gr.Dropdown(choices=[(r.label(), r.id) for r in records], value=selected if selected in ids else None)


def register_sft_on_chosen(c: DataTabComponents, check_with: list[gr.components.Component],
                           outputs: list[gr.components.Component]) -> None:
    """Ticking 'Train on the chosen answers' changes what SFT would learn: check the file again with it."""

    def on_toggle(dataset: dict | None, flag: bool, *values: Any) -> list[Any]:
        if not dataset:
            return [gr.skip()] * len(outputs)
        options = {**(dataset.get("options") or {}), "sft_on_chosen": bool(flag)}
        return analyse_file(Path(dataset["path"]), stored_mapping(dataset), *values, options=options)

    c.sft_on_chosen.input(friendly_errors("The data could not be checked again")(on_toggle),
                          [c.dataset, c.sft_on_chosen, *check_with], outputs, api_visibility="private",
                          show_progress_on=c.status)


# ----------------------------------------------------------------------------------------- handlers


def analyse_file(path: Path, mapping: data.ColumnMapping | None, base_model: str, max_length: float,
                 train_on: str, val_fraction: float, seed: float, options: dict | None = None) -> list[Any]:
    """Prepare, validate and preview one file; the order matches ``register``'s outputs.

    Preference data gets the pairs view, unless SFT on its chosen answers was asked for (``options``), which
    is plain SFT data from then on. ``options`` are ``data.DataOptions`` fields, kept in the dataset state.
    """
    options = {k: v for k, v in (options or {}).items() if v}
    kind = data.preference_kind(path, mapping) or "sft"
    if kind != "sft" and not (kind == "pairs" and options.get("sft_on_chosen")):
        return analyse_preferences(path, mapping, base_model, int(max_length), options)
    return analyse_sft(path, mapping, kind, base_model, int(max_length), train_on, float(val_fraction), int(seed),
                       options)


def analyse_sft(path: Path, mapping: data.ColumnMapping | None, kind: str, base_model: str, max_length: int,
                train_on: str, val_fraction: float, seed: int, options: dict) -> list[Any]:
    """The SFT view: validation report, split, token histogram and the preview with learned tokens."""
    prepared = data.prepare(path, mapping, **options)
    tokenizer = tokenizer_for(base_model)
    report = data.validate(prepared, tokenizer, max_length, train_on)
    usable = data.training_examples(prepared, report)
    train, val = data.split_train_validation(usable, val_fraction, seed)
    dataset = {**dataset_state(path, mapping, kind, prepared.format, report.n_rows, report.n_examples, options),
               "n_train": len(train), "n_val": len(val)}
    lengths = token_lengths(report, tokenizer, usable, train_on)
    chat_lengths = [n for n, ex in zip(lengths, usable, strict=False) if not ex.is_text]
    dataset["length_line"] = cut_line(chat_lengths, max_length)
    dataset["language_warning"] = language_warning(usable, base_model)
    exact, info, segments = preview_outputs(usable, 1, tokenizer, max_length, train_on)
    checked_with = f"Checked with the tokenizer of **{base_model}**, max length {max_length}, training on {train_on}."
    status = status_text(path.name, prepared, report, len(train), len(val))
    status += f"\n\n⚠️ **Language:** {dataset['language_warning']}" if dataset["language_warning"] else ""
    return [
        dataset, usable, status,
        gr.Checkbox(value=bool(options.get("sft_on_chosen")), visible=kind == "pairs"),
        *mapping_updates(prepared.detection.mapping, prepared.format, path),
        f"**{dataset['length_line']}**\n\n" * bool(dataset["length_line"])
        + report_text(report, len(train), len(val)) + "\n\n" + checked_with,
        issues_table(report), gr.Dataframe(value=EMPTY_PAIRS, visible=False),
        histogram_update(token_histogram(lengths, max_length)),
        gr.Slider(minimum=1, maximum=max(2, len(usable)), value=1, step=1),
        exact, info, segments,
    ]


def analyse_preferences(path: Path, mapping: data.ColumnMapping | None, base_model: str, max_length: int,
                        options: dict) -> list[Any]:
    """The preference view: pairs (or labelled answers) with token counts per side and what max length cuts."""
    prepared = data.prepare_preferences(path, mapping)
    tokenizer = tokenizer_for(base_model)
    report = data.validate_preferences(prepared, tokenizer, max_length)
    usable = data.training_preferences(prepared, report)
    dataset = dataset_state(path, mapping, prepared.kind, prepared.source, report.n_rows, report.n_examples, options)
    dataset["length_line"] = cut_line(report.token_lengths, max_length)
    checked_with = f"Checked with the tokenizer of **{base_model}**, max length {max_length}."
    shown = f"Preference data: the first {min(len(usable), PAIRS_SHOWN)} usable rows are in the table above."
    return [
        dataset, [], preference_status(path.name, prepared, report),
        gr.Checkbox(value=False, visible=prepared.kind == "pairs"),
        *mapping_updates(prepared.mapping, "auto", path),
        preference_report_text(report) + "\n\n" + checked_with,
        issues_table(report), gr.Dataframe(value=pairs_table(tokenizer, usable, max_length, prepared.kind),
                                           visible=True,
                                           column_widths=PAIR_WIDTHS if prepared.kind == "pairs" else FEEDBACK_WIDTHS),
        histogram_update(token_histogram(report.token_lengths, max_length)),
        gr.Slider(minimum=1, maximum=2, value=1, step=1),
        [], shown, [],
    ]


def dataset_state(path: Path, mapping: data.ColumnMapping | None, kind: str, fmt: str, n_rows: int,
                  n_examples: int, options: dict) -> dict[str, Any]:
    """What the Train tab reads: the file, the mapping and options to use, and which methods fit the data."""
    used_mapping = mapping.to_dict() if mapping is not None and mapping.explicit() else None
    methods = METHODS_FOR[kind] + (["sft"] if kind == "pairs" and options.get("sft_on_chosen") else [])
    kept = path.parent.name if re.fullmatch(r"[0-9a-f]{12}", path.parent.name) else None
    return {"path": str(path), "name": path.name, "mapping": used_mapping, "format": fmt, "kind": kind,
            "methods": methods, "options": options, "n_rows": n_rows, "n_examples": n_examples,
            "dataset_id": kept}


def stored_mapping(dataset: dict) -> data.ColumnMapping | None:
    """The column mapping kept with the loaded dataset (None: detected)."""
    return data.ColumnMapping.from_dict(dataset["mapping"]) if dataset.get("mapping") else None


Segments = list[tuple[str, str | None]]


def show_preview(examples: list[data.Example], index: float, base_model: str, max_length: float, train_on: str,
                 *_: Any) -> tuple[Segments, str, Segments]:
    """Another example of the loaded file (exact, info line, readable) with the current model and max length."""
    return preview_outputs(examples, int(index), tokenizer_for(base_model), int(max_length), train_on)


def show_exact(exact: bool) -> tuple[gr.HighlightedText, gr.HighlightedText]:
    """The toggle: the exact text instead of the readable turns."""
    return gr.HighlightedText(visible=bool(exact)), gr.HighlightedText(visible=not exact)


# ----------------------------------------------------------------------------------------- formatting


def status_text(name: str, prepared: data.PreparedData, report: data.ValidationReport, n_train: int,
                n_val: int) -> str:
    """What was read and what to do next, in one glance."""
    if not report.ok:
        return (f"### ⚠️ `{name}` has no usable example\nEvery row has an error: see the problems below, fix "
                "the file and upload it again, or change the column mapping.")
    warnings = "".join(f"\n- ⚠️ {w}" for w in prepared.detection.warnings)
    return (f"### ✅ Loaded `{name}`\n**Detected format: {prepared.format}** — {prepared.detection.explanation}"
            f"{warnings}\n\n{report.n_examples} usable examples: {n_train} for training, {n_val} for validation. "
            "**Next:** look at the preview below, then open the **Train** tab and press **Start**.")


def preference_status(name: str, prepared: data.PreparedPreferences, report: data.PreferenceReport) -> str:
    """What was read and which training method fits it: preference data cannot be trained with plain SFT."""
    if not report.ok:
        return (f"### ⚠️ `{name}` has no usable example\nEvery row has an error: see the problems below, fix "
                "the file and upload it again, or change the column mapping.")
    head = f"### ✅ Loaded `{name}`\n"
    if prepared.kind == "pairs":
        return (f"{head}{prepared.explanation}\n\n{report.n_examples} usable pairs. "
                "**Next:** choose **DPO** or **ORPO** in Train (or **KTO**, which counts each "
                "chosen answer as good and each rejected one as bad). To fine-tune with SFT on the chosen answers "
                "only, tick *Train on the chosen answers (SFT)* below.")
    return (f"{head}**Feedback data (answers marked good or bad)** — {prepared.explanation}\n\n"
            f"{report.n_examples} usable answers: {report.n_desirable} good, {report.n_undesirable} bad. "
            "**Next:** choose **KTO** in Train; with SFT only the good answers are learned and the bad ones are "
            "left out.")


def preference_report_text(report: data.PreferenceReport) -> str:
    """Counts, token statistics per side and how many rows max length cuts."""
    prompt, answer = report.prompt_tokens, report.answer_tokens
    labels = (f" · **good:** {report.n_desirable} · **bad:** {report.n_undesirable}"
              if report.kind == "feedback" else "")
    lines = [
        f"**Rows:** {report.n_rows} · **usable:** {report.n_examples} · **rows with errors (left out):** "
        f"{report.n_error_rows}{labels}",
        f"**Prompt tokens:** mean {prompt.mean:g}, 90% ≤ {prompt.p90}, longest {prompt.max} · **answer tokens:** "
        f"mean {answer.mean:g}, 90% ≤ {answer.p90}, longest {answer.max}",
        f"**max length {report.max_length}: {report.n_cut} row(s) would be cut**"
        + (" (the prompt loses its start, the answers their end) — raise *Max length* in the Train tab or "
           "shorten them." if report.n_cut else "."),
    ]
    lines += [f"⚠️ {w}" for w in report.warnings]
    return "\n\n".join(lines)


def pairs_table(tokenizer: Any, items: list[Any], max_length: int, kind: str) -> pd.DataFrame:
    """The first usable pairs (or labelled answers) as the model sees them, with tokens per side and cuts."""
    rows = []
    for item in items[:PAIRS_SHOWN]:
        p = data.preview_pair(tokenizer, item, max_length)
        prompt = _clip_start(p.prompt_text)
        if kind == "pairs":
            rows.append([p.row, prompt, _clip_end(p.chosen_text), _clip_end(p.rejected_text),
                         f"{p.prompt_tokens} / {p.chosen_tokens} / {p.rejected_tokens}", p.cut_note or "nothing"])
        else:
            rows.append([p.row, prompt, _clip_end(p.chosen_text), p.label,
                         f"{p.prompt_tokens} / {p.chosen_tokens}", p.cut_note or "nothing"])
    return pd.DataFrame(rows, columns=PAIR_HEADERS if kind == "pairs" else FEEDBACK_HEADERS)


def _clip_start(text: str) -> str:
    """The end of a long prompt: the question is at the end, and that is what max length keeps."""
    return text if len(text) <= PAIR_TEXT_CHARS else "…" + text[-PAIR_TEXT_CHARS:]


def _clip_end(text: str) -> str:
    """The start of a long answer."""
    return text if len(text) <= PAIR_TEXT_CHARS else text[:PAIR_TEXT_CHARS] + "…"


def report_text(report: data.ValidationReport, n_train: int, n_val: int) -> str:
    stats = report.token_stats
    lines = [
        f"**Rows:** {report.n_rows} · **usable:** {report.n_examples} · **rows with errors (left out):** "
        f"{report.n_error_rows} · **rows with warnings (kept):** {report.n_warning_rows} · "
        f"**duplicates:** {report.n_duplicates}",
        f"**Split:** {n_train} training / {n_val} validation examples",
        f"**Tokens per example:** median {stats.p50}, 90% ≤ {stats.p90}, longest "
        f"{'at least ' if stats.n_counted_in_part else ''}{stats.max} · "
        f"**max length {report.max_length}: {stats.n_truncated} example(s) would be cut**"
        + (" — raise *Max length* in the Train tab or shorten them." if stats.n_truncated else "."),
    ]
    lines += [f"⚠️ {w}" for w in report.warnings]
    return "\n\n".join(lines)


def issues_table(report: data.ValidationReport | data.PreferenceReport) -> Any:
    """The problems, row by row; the table is hidden when there are none (an empty table reads as broken)."""
    rows = [[issue.where, issue.severity, issue.message, issue.fix] for issue in report.issues[:MAX_ISSUES_SHOWN]]
    return gr.Dataframe(value=pd.DataFrame(rows, columns=ISSUE_HEADERS) if rows else EMPTY_ISSUES,
                        visible=bool(rows))


def token_lengths(report: data.ValidationReport, tokenizer: Any, examples: list[data.Example],
                  train_on: str) -> list[int]:
    """Full token count per usable example (before truncation), for the histogram."""
    known = getattr(report, "token_lengths", None)
    if known:
        return list(known)
    return [data.encode_example(tokenizer, ex, report.max_length, train_on).full_length for ex in examples]


def token_histogram(lengths: list[int], max_length: int) -> pd.DataFrame:
    """Counts per length bin; bins past max length are marked so the cut-off is visible."""
    if not lengths:
        return EMPTY_HISTOGRAM
    top = max(max(lengths), max_length)
    width = max(1, -(-top // HISTOGRAM_BINS))
    counts = Counter(min(n // width, HISTOGRAM_BINS - 1) for n in lengths)
    rows = []
    for b in range(HISTOGRAM_BINS):
        low, high = b * width, (b + 1) * width - 1
        rows.append({"tokens": f"{low}–{high}", "examples": counts.get(b, 0),
                     "fits": "cut at max length" if high >= max_length else "fits"})
    return pd.DataFrame(rows)


def histogram_update(table: pd.DataFrame) -> gr.BarPlot:
    """Bars in length order (a text axis would otherwise sort '63–125' after '630–692')."""
    return gr.BarPlot(value=table, sort=list(table["tokens"]) or None)


def preview_outputs(examples: list[data.Example], index: int, tokenizer: Any, max_length: int,
                    train_on: str) -> tuple[Segments, str, Segments]:
    """The example exactly as tokenised (learned tokens marked), the info line, and the example as readable turns."""
    if not examples:
        return [], "No example to preview.", []
    index = min(max(index, 1), len(examples))
    example = examples[index - 1]
    preview = data.render_preview(tokenizer, example, max_length, train_on)
    cut = f" — **cut from {preview.full_length} tokens**: the end is not learned" if preview.truncated else ""
    info = (f"Example {index} of {len(examples)} (row {preview.row} of the file): {preview.n_tokens} tokens, "
            f"{preview.n_trained_tokens} learned{cut}.")
    exact = [(text, "learned" if trained else None) for text, trained in preview.segments]
    return exact, info, readable_turns(example, train_on)


#: How each role is named in the readable preview.
ROLE_NAMES = {"user": "You", "assistant": "Assistant", "system": "Instructions (system)", "tool": "Tool result"}


def readable_turns(example: data.Example, train_on: str) -> list[tuple[str, str | None]]:
    """The example as a conversation ("You: …", "Assistant: …"); what the model learns is marked."""
    if example.is_text:
        return [(example.text or "", "learned")]
    segments: list[tuple[str, str | None]] = []
    if example.tools:
        segments.append((f"Tools offered: {example.tools}\n\n", "learned" if train_on == "all" else None))
    for m in example.messages:
        learned = "learned" if train_on == "all" or m.role == "assistant" else None
        segments.append((f"{ROLE_NAMES.get(m.role, m.role)}: ", None))
        segments.append((m.content + "\n\n", learned))
    return segments


def mapping_updates(detected: data.ColumnMapping, fmt: str, path: Path) -> list[Any]:
    """Show the mapping detection chose, with the file's columns as the choices.

    ``fmt`` is the detected format; preference shapes are not SFT formats, so the dropdown shows 'auto' for them.
    """
    columns = file_columns(path)
    updates = []
    for info in _mapping_infos():
        value = display_value(getattr(detected, info.name, None))
        if info.name == "format":
            choices = list(info.spec.choices or ())
            updates.append(gr.Dropdown(choices=choices, value=fmt if fmt in choices else "auto"))
        else:
            updates.append(gr.Dropdown(choices=["", *columns], value=value))
    return updates


def file_columns(path: Path) -> list[str]:
    """Column names seen in the first rows of a file (none for plain text)."""
    loaded = data.load_dataset_file(path)
    names: dict[str, None] = {}
    for record in loaded.records[:200]:
        if isinstance(record, dict):
            names.update(dict.fromkeys(str(k) for k in record))
    return list(names)


def _mapping_infos() -> list[SettingInfo]:
    from core.settings import describe

    return describe(data.ColumnMapping)


def _column_settings() -> list[SettingInfo]:
    return [info for info in _mapping_infos() if info.name != "format"]


def _column_dropdown(info: SettingInfo) -> gr.Dropdown:
    """A column picker: choices are filled with the file's columns once a file is loaded."""
    return gr.Dropdown(choices=[""], value="", allow_custom_value=True, label=info.label, info=info.spec.help,
                       elem_id=f"mapping-{info.name}")


def _demo_rows() -> int:
    import json

    return len(json.loads(DEMO_DATASET.read_text(encoding="utf-8")))
