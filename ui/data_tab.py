"""Data tab: upload a file (or the demo), see what Tune Studio understood, fix it, preview it.

Why this shape: a newcomer cannot debug a dataset, so the tab answers, in order, "what did you
read?" (detected format and mapping), "what is wrong and how do I fix it?" (validation report),
"will it fit?" (token histogram, truncated rows, split) and "what will the model learn?" (preview
with the trained tokens highlighted). Everything is computed by ``engine.data``; this file only
arranges it. The loaded dataset lives in a per-visitor ``gr.State`` that the Train tab reads.
"""

from __future__ import annotations

import hashlib
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from core.settings import SettingInfo
from engine import data
from engine.quotas import accept_upload
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
EMPTY_HISTOGRAM = pd.DataFrame({"tokens": [], "examples": [], "fits": []})


@dataclass
class DataTabComponents:
    upload: gr.File
    demo_button: gr.Button
    status: gr.Markdown
    mapping: SettingsForm
    apply_mapping: gr.Button
    check_again: gr.Button
    report: gr.Markdown
    issues: gr.Dataframe
    histogram: gr.BarPlot
    preview_index: gr.Slider
    preview_info: gr.Markdown
    preview: gr.HighlightedText
    dataset: gr.State  # {"path", "name", "mapping", "format", ...} or None; read by the Train tab
    examples: gr.State  # usable examples of the loaded file, for the preview


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
    limits_panel("data-limits")
    status = gr.Markdown("No data loaded yet.", elem_id="data-status")
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
                          wrap=True, column_widths=["10%", "8%", "47%", "35%"], elem_id="data-issues")
    gr.Markdown("### 3 · Preview — exactly what the model sees; **highlighted** tokens are what it learns")
    preview_index = gr.Slider(1, 2, value=1, step=1, label="Example", elem_id="data-preview-index")
    preview_info = gr.Markdown()
    preview = gr.HighlightedText(label="Example as the model sees it", color_map={"learned": "green"},
                                 show_legend=True, combine_adjacent=True, elem_id="data-preview")
    return DataTabComponents(
        upload=upload, demo_button=demo_button, status=status, mapping=mapping, apply_mapping=apply_mapping,
        check_again=check_again,
        report=report, issues=issues, histogram=histogram, preview_index=preview_index,
        preview_info=preview_info, preview=preview, dataset=dataset if dataset is not None else gr.State(None),
        examples=gr.State([]),
    )


def register(c: DataTabComponents, check_with: list[gr.components.Component],
             extra_demo_triggers: list[gr.Button] | None = None) -> None:
    """Wire the events. ``check_with`` are the Train-tab controls named in CHECK_SETTINGS;
    ``extra_demo_triggers`` are other buttons (the guide's) that load the demo dataset too."""
    outputs = [c.dataset, c.examples, c.status, *c.mapping.components, c.report, c.issues, c.histogram,
               c.preview_index, c.preview_info, c.preview]

    def on_upload(path: str | None, *check: Any, request: gr.Request,
                  profile: gr.OAuthProfile | None = None) -> list[Any]:
        """A new file is always detected afresh: the mapping shown belongs to the previous file."""
        if not path:
            return [gr.skip()] * len(outputs)
        ws = workspace_of(request, profile)
        accept_upload(Path(path), ws)  # size and disk quota, before anything is copied (API clients skip the browser)
        return analyse_file(store_upload(Path(path), ws.datasets), None, *check)

    def on_demo(*check: Any) -> list[Any]:
        return analyse_file(DEMO_DATASET, None, *check)

    def on_apply(dataset: dict | None, *values: Any) -> list[Any]:
        if not dataset:
            raise gr.Error("Load a file first (drop it above or press 'Use the demo dataset').", title="No data yet")
        mapping = c.mapping.to_settings(values[: len(c.mapping.names)])
        return analyse_file(Path(dataset["path"]), mapping, *values[len(c.mapping.names):])

    def on_recheck(dataset: dict | None, *values: Any) -> list[Any]:
        if not dataset:
            return [gr.skip()] * len(outputs)
        mapping = data.ColumnMapping.from_dict(dataset["mapping"]) if dataset.get("mapping") else None
        return analyse_file(Path(dataset["path"]), mapping, *values)

    form_and_check = [*c.mapping.components, *check_with]
    mapping_names, check_names = c.mapping.names, list(CHECK_SETTINGS)
    endpoint(
        c.upload.upload,
        named_parameters(friendly_errors("This file cannot be used")(on_upload), ["file", *check_names], request=True),
        [c.upload, *check_with], outputs, api_name="data_upload", show_progress_on=c.status)
    endpoint([b.click for b in [c.demo_button, *(extra_demo_triggers or [])]],
             named_parameters(friendly_errors("The demo dataset could not be loaded")(on_demo), check_names),
             check_with, outputs, api_name="data_load_demo", show_progress_on=c.status)
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
    for name, control in zip(CHECK_SETTINGS, check_with, strict=True):
        if name in AUTO_RECHECK:
            committed = control.release if isinstance(control, gr.Slider) else control.change
            committed(recheck, [c.dataset, *check_with], outputs, api_visibility="private", show_progress_on=c.report)
    endpoint(
        c.preview_index.change,
        named_parameters(friendly_errors("The preview failed")(show_preview), ["examples", "example", *check_names]),
        [c.examples, c.preview_index, *check_with], [c.preview_info, c.preview], api_name="data_preview")


# ----------------------------------------------------------------------------------------- handlers


def analyse_file(path: Path, mapping: data.ColumnMapping | None, base_model: str, max_length: float,
                 train_on: str, val_fraction: float, seed: float) -> list[Any]:
    """Prepare, validate, split and preview one file; the order matches ``register``'s outputs."""
    max_length, seed = int(max_length), int(seed)
    prepared = data.prepare(path, mapping)
    tokenizer = tokenizer_for(base_model)
    report = data.validate(prepared, tokenizer, max_length, train_on)
    usable = data.training_examples(prepared, report)
    train, val = data.split_train_validation(usable, float(val_fraction), seed)
    used_mapping = mapping.to_dict() if mapping is not None and mapping.explicit() else None
    dataset = {"path": str(path), "name": path.name, "mapping": used_mapping, "format": prepared.format,
               "n_rows": report.n_rows, "n_examples": report.n_examples, "n_train": len(train), "n_val": len(val)}
    lengths = token_lengths(report, tokenizer, usable, train_on)
    info, segments = preview_outputs(usable, 1, tokenizer, max_length, train_on)
    checked_with = f"Checked with the tokenizer of **{base_model}**, max length {max_length}, training on {train_on}."
    return [
        dataset, usable, status_text(path.name, prepared, report, len(train), len(val)),
        *mapping_updates(prepared, path), report_text(report, len(train), len(val)) + "\n\n" + checked_with,
        issues_table(report),
        histogram_update(token_histogram(lengths, max_length)),
        gr.Slider(minimum=1, maximum=max(2, len(usable)), value=1, step=1),
        info, segments,
    ]


def show_preview(examples: list[data.Example], index: float, base_model: str, max_length: float, train_on: str,
                 *_: Any) -> tuple[str, list[tuple[str, str | None]]]:
    """Another example of the loaded file, rendered with the current model and max length."""
    return preview_outputs(examples, int(index), tokenizer_for(base_model), int(max_length), train_on)


def store_upload(path: Path, folder: Path) -> Path:
    """Copy an upload out of Gradio's temporary cache into the visitor's workspace, where runs find it later."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    target = folder / digest / path.name
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    return target


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


def issues_table(report: data.ValidationReport) -> pd.DataFrame:
    rows = [[issue.where, issue.severity, issue.message, issue.fix] for issue in report.issues[:MAX_ISSUES_SHOWN]]
    return pd.DataFrame(rows, columns=ISSUE_HEADERS) if rows else EMPTY_ISSUES


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
                    train_on: str) -> tuple[str, list[tuple[str, str | None]]]:
    if not examples:
        return "No example to preview.", []
    index = min(max(index, 1), len(examples))
    preview = data.render_preview(tokenizer, examples[index - 1], max_length, train_on)
    cut = f" — **cut from {preview.full_length} tokens**" if preview.truncated else ""
    info = (f"Example {index} of {len(examples)} (row {preview.row} of the file): {preview.n_tokens} tokens, "
            f"{preview.n_trained_tokens} learned{cut}.")
    return info, [(text, "learned" if trained else None) for text, trained in preview.segments]


def mapping_updates(prepared: data.PreparedData, path: Path) -> list[Any]:
    """Show the mapping detection chose, with the file's columns as the choices."""
    columns = file_columns(path)
    detected = prepared.detection.mapping
    updates = []
    for info in _mapping_infos():
        value = display_value(getattr(detected, info.name, None))
        if info.name == "format":
            updates.append(gr.Dropdown(choices=list(info.spec.choices or ()), value=prepared.format))
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
