"""Experiment tab: from a document collection to an honest "fine-tune, RAG, or both?" verdict, top to bottom.

One page in five steps: choose documents and a model; generate question–answer pairs and review them; split
them into train and test (with the leakage check); run the experiment (a fine-tuning run, then all four
approaches answer the test questions); read the verdict. Everything lives in the experiment's folder
(``services.experiment``), so a reload, a closed tab or a restart loses nothing: on page load the visitor's
latest experiment is shown again, and a step still running is followed again.

Long steps are jobs (question generation, a training run, the evaluation). Their handlers queue the job and
then follow its event log without holding a thread (async generators, like the RAG tab's index jobs); every
handler returns a dict of the components it changes. The forms come from the settings classes
(``QGenSettings``, ``ExperimentSplitSettings``, ``ExperimentSettings``): no default is typed here.
"""

from __future__ import annotations

import asyncio
import dataclasses
import html
import json
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import gradio as gr
import pandas as pd

from core.settings import SettingInfo
from engine import events as ev
from engine.jobs import JobError, JobRecord
from engine.models import BUNDLED_ID, MODELS, hub_kwargs, model_info
from engine.quotas import check_upload
from engine.workspace import Workspace
from services import experiment as xp
from services import experiment_report as er
from services.experiment_split import ExperimentSplitSettings, too_small
from services.judge import JudgeSettings
from services.qgen import QAPair, QGenSettings
from ui.common import (
    SettingsForm,
    api_endpoint,
    build_settings_form,
    endpoint,
    format_duration,
    friendly_errors,
    hide_paths,
    literal_markdown,
    model_token,
    named_parameters,
    progress_line,
    require_write,
    served_copy,
    served_folder,
    visitor_of,
    workspace_of,
)
from ui.train_tab import progress_html

POLL_SECONDS = 0.5  # how often a follower reads a job's event log
QUESTION_HEADERS = ["Keep", "Question", "Answer", "Source", "Page", "Quote", "Origin"]
QUESTION_TYPES = ["bool", "str", "str", "str", "str", "str", "str"]
DROPPED_HEADERS = ["Dropped test question", "Why", "The training question it repeats"]
RETRIEVAL_HEADERS = ["Level", "hit@1", "hit@5", "hit@10", "MRR@10"]
RETRIEVAL_LEVELS = {"document": "Document (right file)", "passage": "Passage (right passage)"}
NO_VERDICT = "No verdict yet: run the experiment (step 4)."
HONEST_NOTE = (
    "ℹ️ **What to expect from the bundled 135M model:** it is small, so treat this as a demo of the method. It "
    "drops many of the pairs it generates (its answers are often not in the passage), and as a judge it grades "
    "near chance, so its grades are usually not trusted. Larger models on a GPU Space keep more pairs and judge "
    "well enough to be used.")
RETRIEVAL_NOTE = (
    "*hit@k*: share of test questions whose document (or exact passage) is among the first *k* passages found. "
    "*MRR@10*: 1 ÷ the rank of the first right passage, averaged (1.0 = always found first, 0 = never in the top "
    "10). Low numbers here mean RAG cannot answer well whatever the model.")
WORKING = ("queued", "running", "cancelling")


@dataclass
class ExperimentTabComponents:
    name: gr.Dropdown
    collection: gr.Dropdown
    model: gr.Dropdown
    hf_token: gr.Textbox
    open_button: gr.Button
    status: gr.Markdown
    experiment: gr.State  # the open experiment's name (per browser)
    qgen: SettingsForm
    generate: gr.Button
    cancel_generate: gr.Button
    gen_progress: gr.Markdown
    questions: gr.Dataframe
    shown_ids: gr.State  # pair ids aligned with the table's rows (new rows have none)
    questions_note: gr.Markdown
    add_row: gr.Button
    save: gr.Button
    regenerate: gr.Button
    import_file: gr.File
    download: gr.Button
    download_files: gr.File
    split_form: SettingsForm
    split_button: gr.Button
    split_summary: gr.Markdown
    dropped: gr.Dataframe
    run_form: SettingsForm
    judge_form: SettingsForm
    run_button: gr.Button
    cancel_run: gr.Button
    run_progress: gr.HTML
    verdict: gr.Markdown
    key_line: gr.Markdown
    summary: gr.Dataframe
    comparisons: gr.Dataframe
    retrieval: gr.Dataframe
    retrieval_note: gr.Markdown
    report_files: gr.File
    vote_pair: gr.State
    vote_question: gr.Markdown
    vote_a: gr.Markdown
    vote_b: gr.Markdown
    vote_buttons: dict[str, gr.Button]
    vote_note: gr.Markdown

    def view_outputs(self) -> list[gr.components.Component]:
        """Every component a handler's dict may update (a dict leaves the ones it does not name unchanged)."""
        return [self.name, self.collection, self.model, self.status, self.experiment, self.gen_progress,
                self.questions, self.shown_ids, self.questions_note, self.split_summary, self.dropped,
                self.run_progress, self.verdict, self.key_line, self.summary, self.comparisons, self.retrieval,
                self.retrieval_note, self.report_files, self.import_file, self.download_files, self.vote_pair,
                self.vote_question, self.vote_a, self.vote_b, self.vote_note]


# ----------------------------------------------------------------------------------------- build


def build() -> ExperimentTabComponents:
    """The page top to bottom: the five steps, each with a short line saying what it does."""
    gr.Markdown("Find out what answers questions about **your documents** best: the model as it is, the model "
                "**fine-tuned** on questions about them (it learns the facts), **RAG** (the model reads passages "
                "looked up in your documents), or both. Follow the five steps; everything is saved as you go, so "
                "you may close the page and come back.")
    parts: dict[str, Any] = {}
    parts.update(_build_choose())
    parts.update(_build_questions())
    parts.update(_build_split())
    parts.update(_build_run())
    parts.update(_build_verdict())
    return ExperimentTabComponents(**parts)


def _build_choose() -> dict[str, Any]:
    gr.Markdown("### 1 · Choose documents and a model")
    with gr.Row(equal_height=False):
        name = gr.Dropdown(choices=[], value=None, allow_custom_value=True, label="Experiment",
                           info="Pick one of yours to open it, or type a new name.", elem_id="experiment-name")
        collection = gr.Dropdown(choices=[], value=None, allow_custom_value=True,  # listed per visitor on load
                                 label="Documents (a collection from the RAG tab)",
                                 info="The questions are made from these documents, and RAG looks answers up in "
                                      "them.", elem_id="experiment-collection")
        model = gr.Dropdown(choices=[(m.label, m.id) for m in MODELS], value=BUNDLED_ID, allow_custom_value=True,
                            label="Model", info="The model that writes the questions, is fine-tuned and answers. "
                                                "Any Hugging Face model id can be typed in.",
                            elem_id="experiment-model")
    with gr.Accordion("Using a gated Hugging Face model? Your token", open=False):
        hf_token = gr.Textbox("", label="Hugging Face token (only for gated models)", type="password",
                              info="Used only to download the model; never saved or logged.",
                              elem_id="experiment-hf-token")
    open_button = gr.Button("Create / open", variant="primary", elem_id="experiment-open")
    status = gr.Markdown("Pick or name an experiment, choose its documents and model, and press **Create / open**.",
                         elem_id="experiment-status")
    return {"name": name, "collection": collection, "model": model, "hf_token": hf_token,
            "open_button": open_button, "status": status, "experiment": gr.State(None)}


def _template_box(info: SettingInfo, prefix: str = "experiment-qgen") -> gr.Textbox:
    """The prompt settings as tall boxes (they hold several lines); label, default and help from the setting."""
    return gr.Textbox(info.default, label=info.label, info=info.spec.help,
                      lines=8 if info.name.endswith("template") else 3, elem_id=f"{prefix}-{info.name}")


def _judge_template_box(info: SettingInfo) -> gr.Textbox:
    return _template_box(info, "experiment-judge")


def _build_questions() -> dict[str, Any]:
    gr.Markdown("### 2 · Questions\nThe model reads passages of your documents and writes a question with a short "
                "answer copied from each passage; pairs whose answer is not in the passage are dropped. Then check "
                "them below: edit any cell, untick **Keep** to delete a question, add your own with **Add a row**, "
                "and press **Save changes**.")
    qgen = build_settings_form(QGenSettings, prefix="experiment-qgen", advanced_label="Advanced: the prompt the "
                               "model gets", custom={"template": _template_box, "system": _template_box})
    with gr.Row():
        generate = gr.Button("Generate questions", variant="primary", elem_id="experiment-generate")
        cancel_generate = gr.Button("Cancel", variant="stop", elem_id="experiment-gen-cancel")
    gen_progress = gr.Markdown("", elem_id="experiment-gen-progress")
    questions_note = gr.Markdown("", elem_id="experiment-questions-note")
    questions = gr.Dataframe(pd.DataFrame(columns=QUESTION_HEADERS), headers=QUESTION_HEADERS,
                             datatype=QUESTION_TYPES, type="array", interactive=True, wrap=True, visible=False,
                             static_columns=[6], column_widths=["8%", "24%", "14%", "11%", "6%", "27%", "10%"],
                             label="Your questions (Source, Page and Quote say where each answer is written)",
                             elem_id="experiment-questions")
    with gr.Row():
        add_row = gr.Button("Add a row", elem_id="experiment-add-row")
        save = gr.Button("Save changes", variant="primary", elem_id="experiment-save")
        regenerate = gr.Button("Regenerate unticked", elem_id="experiment-regenerate")
        download = gr.Button("Download questions", elem_id="experiment-download")
    with gr.Row():
        import_file = gr.File(label="Import a question set (.jsonl or .csv with question and answer columns)",
                              file_types=[".jsonl", ".csv"], type="filepath", elem_id="experiment-import")
        download_files = gr.File(label="Your questions", file_count="multiple", interactive=False, visible=False,
                                 elem_id="experiment-download-files")
    return {"qgen": qgen, "generate": generate, "cancel_generate": cancel_generate, "gen_progress": gen_progress,
            "questions": questions, "shown_ids": gr.State([]), "questions_note": questions_note, "add_row": add_row,
            "save": save, "regenerate": regenerate, "import_file": import_file, "download": download,
            "download_files": download_files}


def _build_split() -> dict[str, Any]:
    gr.Markdown("### 3 · Split into train and test\nThe fine-tuned model must be tested on questions it never "
                "trained on, or it would just remember them. **Split** puts some questions aside for the test and "
                "drops test questions that repeat a training question (the *leakage check*).")
    split_form = build_settings_form(ExperimentSplitSettings, prefix="experiment-split")
    split_button = gr.Button("Split", variant="primary", elem_id="experiment-split-button")
    split_summary = gr.Markdown("", elem_id="experiment-split-summary")
    dropped = gr.Dataframe(pd.DataFrame(columns=DROPPED_HEADERS), interactive=False, wrap=True, visible=False,
                           label="Test questions dropped by the leakage check", elem_id="experiment-dropped")
    return {"split_form": split_form, "split_button": split_button, "split_summary": split_summary,
            "dropped": dropped}


def _build_run() -> dict[str, Any]:
    gr.Markdown("### 4 · Run the experiment\n**Run** fine-tunes the model on the training questions (a training "
                "run, also listed in the Train tab), then answers every test question four ways: the **base** "
                "model, the **fine-tuned** model, **RAG** (the base model reading passages found in your "
                "documents) and **fine-tuned + RAG**. Each answer is compared with the reference answer; an *LLM "
                "judge* (a model grading each answer) can score them too.")
    gr.Markdown(HONEST_NOTE, elem_id="experiment-model-note")
    run_form = build_settings_form(xp.ExperimentSettings, prefix="experiment-run")
    with gr.Accordion("The judge: how it scores and the exact prompt it reads", open=False,
                      elem_id="experiment-judge-prompts"):
        judge_form = build_settings_form(JudgeSettings, prefix="experiment-judge",
                                         custom={"graded_template": _judge_template_box,
                                                 "pairwise_template": _judge_template_box})
    with gr.Row():
        run_button = gr.Button("Run", variant="primary", elem_id="experiment-run-button")
        cancel_run = gr.Button("Cancel", variant="stop", elem_id="experiment-run-cancel")
    run_progress = gr.HTML("", elem_id="experiment-run-progress")
    return {"run_form": run_form, "judge_form": judge_form, "run_button": run_button, "cancel_run": cancel_run,
            "run_progress": run_progress}


def _build_verdict() -> dict[str, Any]:
    gr.Markdown("### 5 · Verdict\nEvery figure comes with a 95% interval: the range the true value probably lies "
                "in, given this many questions. A difference counts only when its interval stays clear of zero.")
    verdict = gr.Markdown(NO_VERDICT, elem_id="experiment-verdict")
    key_line = gr.Markdown("", elem_id="experiment-key")
    summary = gr.Dataframe(pd.DataFrame(columns=er.SUMMARY_HEADER), interactive=False, wrap=True, visible=False,
                           label="Each approach", elem_id="experiment-summary")
    comparisons = gr.Dataframe(pd.DataFrame(columns=er.COMPARISON_HEADER), interactive=False, wrap=True,
                               visible=False, label="Differences between approaches", elem_id="experiment-comparisons")
    retrieval = gr.Dataframe(pd.DataFrame(columns=RETRIEVAL_HEADERS), interactive=False, visible=False,
                             label="Retrieval: did RAG find the right passage?", elem_id="experiment-retrieval")
    retrieval_note = gr.Markdown("", elem_id="experiment-retrieval-note")
    report_files = gr.File(label="The report (HTML page, spreadsheet, raw data)", file_count="multiple",
                           interactive=False, visible=False, elem_id="experiment-report-files")
    return {"verdict": verdict, "key_line": key_line, "summary": summary, "comparisons": comparisons,
            "retrieval": retrieval, "retrieval_note": retrieval_note, "report_files": report_files,
            **_build_votes()}


def _build_votes() -> dict[str, Any]:
    """Blind votes on the test answers: the check of the judge that needs no reference answer, only you."""
    with gr.Accordion("Check the judge yourself: vote blind", open=False, elem_id="experiment-votes"):
        gr.Markdown("Two answers to one test question, from two approaches you are not told. Pick the better one; "
                    "after a few votes the page shows how often the judge agrees with you (Cohen's kappa: 1 = "
                    "always, 0 = no better than chance).")
        question = gr.Markdown("", elem_id="experiment-vote-question")
        with gr.Row():
            answer_a = gr.Markdown("", elem_id="experiment-vote-a")
            answer_b = gr.Markdown("", elem_id="experiment-vote-b")
        with gr.Row():
            buttons = {choice: gr.Button(label, elem_id=f"experiment-vote-{choice}")
                       for choice, label in VOTE_LABELS.items()}
        note = gr.Markdown("", elem_id="experiment-vote-note")
    return {"vote_pair": gr.State(None), "vote_question": question, "vote_a": answer_a, "vote_b": answer_b,
            "vote_buttons": buttons, "vote_note": note}


VOTE_LABELS = {"A": "A is better", "B": "B is better", "tie": "Tie", "both_bad": "Both bad"}


def vote_view(c: ExperimentTabComponents, exp: xp.Experiment) -> dict[Any, Any]:
    """The next blind pair (or why there is none) and the judge's agreement with the votes so far."""
    pair = xp.next_blind_pair(exp)
    agreement = xp.judge_vs_votes(exp)
    if pair is None:
        done = "Every test question has your vote." if exp.report() is not None else "Run the experiment first."
        return {c.vote_pair: None, c.vote_question: done, c.vote_a: "", c.vote_b: "", c.vote_note: agreement}
    return {c.vote_pair: pair, c.vote_question: f"**Question:** {literal_markdown(pair['question'])}",
            c.vote_a: f"**A:** {literal_markdown(pair['answer_a']) or '*(empty)*'}",
            c.vote_b: f"**B:** {literal_markdown(pair['answer_b']) or '*(empty)*'}", c.vote_note: agreement}


# ----------------------------------------------------------------------------------------- views


def question_rows(pairs: Sequence[QAPair]) -> list[list[Any]]:
    return [[True, p.question, p.answer, p.source, "" if p.page is None else str(p.page), p.quote, p.origin]
            for p in pairs]


def questions_view(c: ExperimentTabComponents, pairs: Sequence[QAPair]) -> dict[Any, Any]:
    """The review table (hidden while empty), the ids aligned with its rows, and a count by origin."""
    counts: dict[str, int] = {}
    for p in pairs:
        counts[p.origin] = counts.get(p.origin, 0) + 1
    note = (f"**{len(pairs)} question(s)**: " + ", ".join(f"{n} {origin}" for origin, n in sorted(counts.items()))
            + ". *Origin* says who wrote each one: generated (the model), edited, imported or user (you)."
            if pairs else "")
    return {c.questions: gr.Dataframe(pd.DataFrame(question_rows(pairs), columns=QUESTION_HEADERS),
                                      visible=bool(pairs)),
            c.shown_ids: [p.id for p in pairs], c.questions_note: note}


def split_view(c: ExperimentTabComponents, exp: xp.Experiment, pairs: Sequence[QAPair]) -> dict[Any, Any]:
    """The saved split's summary (with the too-small warning) and the dropped questions, if any."""
    report = exp.split()
    if report is None:
        return {c.split_summary: "", c.dropped: gr.Dataframe(visible=False)}
    text = f"✅ {report.summary()}"
    text += "".join(f"\n\n{note}" for note in report.notes)
    warning = too_small(report)
    if warning:
        text += f"\n\n⚠️ {warning}"
    if not {*report.train_ids, *report.test_ids} <= {p.id for p in pairs}:
        text += "\n\n⚠️ The questions changed since this split: press **Split** again before running."
    by_id = {p.id: p.question for p in pairs}
    rows = [[d["question"], d["reason"], by_id.get(d.get("train_id"), "")] for d in report.dropped]
    return {c.split_summary: text,
            c.dropped: gr.Dataframe(pd.DataFrame(rows, columns=DROPPED_HEADERS), visible=bool(rows))}


def retrieval_rows(report: dict[str, Any]) -> list[list[Any]]:
    retrieval = report.get("retrieval") or {}
    rows = []
    for level, label in RETRIEVAL_LEVELS.items():
        m = retrieval.get(level)
        if isinstance(m, dict):
            rows.append([label, *(round(m.get(k) or 0.0, 2) for k in ("hit_at_1", "hit_at_5", "hit_at_10",
                                                                      "mrr_at_10"))])
    return rows


def judge_line(report: dict[str, Any]) -> str:
    judge = report.get("judge") or {}
    verdict = report["verdict"]
    used = f"The verdict uses: *{verdict.get('metric_name', verdict.get('metric', ''))}*."
    return f"**The judge:** {judge.get('reason') or 'not used.'} {used}"


def report_view(c: ExperimentTabComponents, exp: xp.Experiment) -> dict[Any, Any]:
    """The verdict in large type, the key line, the three tables and the report files (hidden until a report)."""
    report = exp.report()
    if report is None:
        hidden = gr.Dataframe(visible=False)
        return {c.verdict: NO_VERDICT, c.key_line: "", c.summary: hidden, c.comparisons: hidden,
                c.retrieval: hidden, c.retrieval_note: "", c.report_files: gr.File(value=None, visible=False),
                **vote_view(c, exp)}
    key = report.get("key_question") or ""
    files = [served_copy(exp.folder / f"report.{ext}") for ext in ("html", "csv", "json")
             if (exp.folder / f"report.{ext}").is_file()]
    rows = retrieval_rows(report)
    return {
        c.verdict: report["verdict"]["text"],
        c.key_line: (f"**Fine-tuning or RAG?** {key}\n\n" if key else "") + judge_line(report)
        + (f"\n\n**Split:** {report['split_summary']}" if report.get("split_summary") else ""),
        c.summary: gr.Dataframe(pd.DataFrame(er.summary_rows(report), columns=er.SUMMARY_HEADER), visible=True),
        c.comparisons: gr.Dataframe(pd.DataFrame(er.comparison_rows(report), columns=er.COMPARISON_HEADER),
                                    visible=True),
        c.retrieval: gr.Dataframe(pd.DataFrame(rows, columns=RETRIEVAL_HEADERS), visible=bool(rows)),
        c.retrieval_note: RETRIEVAL_NOTE if rows else "",
        c.report_files: gr.File(value=files, visible=bool(files)),
        **vote_view(c, exp),
    }


def status_line(exp: xp.Experiment, pairs: Sequence[QAPair]) -> str:
    record = exp.record
    split = exp.split()
    if not pairs:
        step = "**Next:** generate questions (step 2), or import or write your own."
    elif split is None:
        step = "**Next:** check the questions, then split them (step 3)."
    elif exp.report() is None:
        step = "**Next:** run the experiment (step 4)."
    else:
        step = "The verdict is below (step 5)."
    return (f"Experiment **{html.escape(exp.name)}**: questions about **{html.escape(record['collection'])}**, "
            f"model **{html.escape(model_info(record['model']).label)}**, {len(pairs)} question(s). {step}")


def experiment_view(c: ExperimentTabComponents, ws: Workspace, exp: xp.Experiment) -> dict[Any, Any]:
    """Everything the page shows of one experiment, read from its folder."""
    record = exp.record
    pairs = exp.questions()
    return {c.experiment: exp.name,
            c.name: gr.Dropdown(choices=xp.list_experiments(ws), value=exp.name),
            c.collection: gr.Dropdown(choices=ws.index_names(), value=record["collection"]),
            c.model: gr.Dropdown(value=record["model"]),
            c.status: status_line(exp, pairs),
            **questions_view(c, pairs), **split_view(c, exp, pairs), **report_view(c, exp)}


# ----------------------------------------------------------------------------------------- the review table


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes", "✓", "x")
    return bool(value)


def _text(value: Any) -> str:
    if value is None or (isinstance(value, float) and value != value):  # NaN from an empty cell
        return ""
    return str(value).strip()


def _page(value: Any) -> int | None:
    text = _text(value)
    try:
        return int(float(text)) if text else None
    except ValueError:
        return None


def table_rows(table: Any) -> list[list[Any]]:
    """The table's rows as lists of seven cells; blank rows (every cell empty) left out."""
    if isinstance(table, pd.DataFrame):
        table = table.values.tolist()
    if isinstance(table, dict):
        table = table.get("data") or []
    rows = []
    for row in table or []:
        cells = [*list(row)[: len(QUESTION_HEADERS)], *[""] * (len(QUESTION_HEADERS) - len(row))]
        if any(_text(cell) for cell in cells[1:]):
            rows.append(cells)
    return rows


def _same_pair(row: list[Any], pair: QAPair) -> bool:
    """Whether a row still shows ``pair`` (at least one of question, answer or quote unchanged)."""
    return _text(row[1]) == pair.question or _text(row[2]) == pair.answer or _text(row[5]) == pair.quote


def align_rows(rows: list[list[Any]], ids: Sequence[str], stored: dict[str, QAPair]) -> list[tuple[list, str | None]]:
    """Each row with the id of the pair it shows, or None for a row the user added.

    Rows the user added have an empty Origin cell (that column cannot be edited). When the table's menu
    deleted rows, positions no longer line up, so each row is matched to the first unused pair it still shows.
    """
    existing = [row for row in rows if _text(row[6])]
    if len(existing) == len(ids):
        queue = iter(ids)
        return [(row, next(queue) if _text(row[6]) else None) for row in rows]
    unused = [i for i in ids if i in stored]
    out: list[tuple[list, str | None]] = []
    for row in rows:
        match = next((i for i in unused if _text(row[6]) and _same_pair(row, stored[i])), None)
        if match is not None:
            unused.remove(match)
        out.append((row, match))
    return out


def pair_from_row(row: list[Any], old: QAPair | None) -> QAPair:
    """The pair a row holds: an edited copy of ``old`` (origin "edited" when a cell changed), or a new one."""
    fields = {"question": _text(row[1]), "answer": _text(row[2]), "source": _text(row[3]), "page": _page(row[4]),
              "quote": _text(row[5])}
    if old is None:
        return QAPair(id=f"user-{uuid.uuid4().hex[:10]}", chunk_id="", origin="user", **fields)
    new = dataclasses.replace(old, **fields)
    if new == old:
        return old
    moved = (new.source, new.quote, new.page) != (old.source, old.quote, old.page)
    return dataclasses.replace(new, origin="edited", chunk_id="" if moved else old.chunk_id)


def pairs_from_table(table: Any, ids: Sequence[str] | None,
                     stored: Sequence[QAPair]) -> tuple[list[QAPair], list[str], int]:
    """(pairs to keep, ids shown, unticked rows) from the edited table; rows without a question are ignored."""
    by_id = {p.id: p for p in stored}
    kept, unticked = [], 0
    for row, pair_id in align_rows(table_rows(table), list(ids or []), by_id):
        if not _text(row[1]):
            continue
        if not _truthy(row[0]):
            unticked += 1
            continue
        kept.append(pair_from_row(row, by_id.get(pair_id) if pair_id else None))
    return kept, [i for i in ids or [] if i in by_id], unticked


def save_table(exp: xp.Experiment, table: Any, ids: Sequence[str] | None) -> tuple[int, int]:
    """Store the edited table as the review set; returns (kept, deleted)."""
    kept, shown, unticked = pairs_from_table(table, ids, exp.questions())
    if not kept and not shown:
        return 0, 0  # an empty table with nothing shown: nothing to save
    exp.save_questions(kept, shown)
    return len(kept), unticked


def add_row(table: Any) -> Any:
    """One empty row at the end (Keep ticked) for the user to type a question into."""
    rows = table_rows(table)
    rows.append([True, "", "", "", "", "", ""])
    return gr.Dataframe(pd.DataFrame(rows, columns=QUESTION_HEADERS), visible=True)


# ----------------------------------------------------------------------------------------- jobs


def _poll(ws: Workspace, job_id: str, offset: int) -> tuple[JobRecord, list[ev.JobEvent], int]:
    """The job (one of the visitor's; reconciled, and started when a lane is free) and its events after ``offset``."""
    store = ws.store()
    job = store.get(job_id)
    if job.owner != ws.owner:
        raise JobError(f"There is no job with id {job_id!r} in your workspace.")
    if job.status == "queued":
        store.dispatch()
    events, offset = ev.EventLog(job.events_path).iter_from(offset)
    return job, list(events), offset


async def follow(ws: Workspace, job_id: str) -> AsyncIterator[tuple[JobRecord, list[ev.JobEvent]]]:
    """(job, new events) every poll until the job ends (or waits for a token); holds no thread while waiting."""
    offset = 0
    while True:
        job, events, offset = await anyio.to_thread.run_sync(_poll, ws, job_id, offset)
        yield job, events
        if job.finished or job.status == "needs_token":
            return
        await asyncio.sleep(POLL_SECONDS)


def _ended_line(job: JobRecord, failed: str | None) -> str:
    if job.status == "failed":
        return f"❌ **Stopped:** {hide_paths(failed or job.error or 'the job failed.')}"
    if job.status == "cancelled":
        return "⏹ **Cancelled.** What was made so far is kept."
    if job.status == "interrupted":
        return f"⏸ **Paused:** {hide_paths(job.error or 'the server stopped.')} It continues when the server is back."
    if job.status == "needs_token":
        return "🔑 **Waiting for your token:** the server restarted; type it again above and press the button again."
    return ""


@dataclass
class GenerationView:
    """What the page shows of a question-generation job: the live line, then its notes (kept, dropped and why)."""

    live: str = "Queued…"
    lines: list[str] = field(default_factory=list)
    failed: str | None = None

    def add(self, event: ev.JobEvent) -> None:
        if isinstance(event, ev.Queued):
            self.live = f"Waiting in line (number {event.position})…" if event.position else "Queued…"
        elif isinstance(event, ev.Progress):
            self.live = progress_line(event)
        elif isinstance(event, ev.Log):
            self.lines.append(f"- {'⚠️' if event.level == 'warning' else '✅'} {event.message}")
        elif isinstance(event, ev.Failed):
            self.failed = event.reason

    def text(self, job: JobRecord) -> str:
        live = _ended_line(job, self.failed) or self.live
        if job.status == "done":
            live = f"✅ **Done** in {format_duration(job.duration_seconds)}. Check the questions below."
        elif job.status == "cancelling":
            live += " — cancel requested, stopping after this passage…"
        return "\n".join([live, "", *self.lines])


async def follow_generation(c: ExperimentTabComponents, ws: Workspace, exp: xp.Experiment,
                            job_id: str) -> AsyncIterator[dict[Any, Any]]:
    """Stream the generation's progress line, and the review table whenever new pairs arrived."""
    view, count = GenerationView(), -1
    async for job, events in follow(ws, job_id):
        for event in events:
            view.add(event)
        update: dict[Any, Any] = {c.gen_progress: view.text(job)}
        if events or job.finished:
            pairs = await anyio.to_thread.run_sync(exp.questions)
            if len(pairs) != count or job.finished:
                count = len(pairs)
                update.update(questions_view(c, pairs))
                update[c.status] = await anyio.to_thread.run_sync(status_line, exp, pairs)
        yield update


def _train_lines(job: JobRecord, events: list[ev.JobEvent]) -> str:
    """The fine-tuning run: its status in words, the train tab's progress bar, and the latest loss."""
    step = next((e for e in reversed(events) if isinstance(e, ev.Step)), None)
    failed = next((e.reason for e in events if isinstance(e, ev.Failed)), None)
    state = _ended_line(job, failed) or {
        "queued": "waiting in line for the device", "running": "training", "cancelling": "stopping…",
        "done": f"✅ done in {format_duration(job.duration_seconds)}"}.get(job.status, job.status)
    loss = f" · loss {step.loss:.4f}" if step and step.loss is not None else ""
    return (f"<p><b>1 · Fine-tuning</b> (training run <code>{html.escape(job.id)}</code>): "
            f"{html.escape(state)}{loss}</p>{progress_html(job, events)}")


def _eval_line(job: JobRecord | None, events: list[ev.JobEvent]) -> str:
    """The evaluation: waiting for the fine-tuning, then one progress line (answers, then the judge)."""
    if job is None:
        return ""
    latest = next((e for e in reversed(events) if isinstance(e, ev.Progress)), None)
    failed = next((e.reason for e in events if isinstance(e, ev.Failed)), None)
    if job.status == "done":
        state = f"✅ done in {format_duration(job.duration_seconds)}: the verdict is below."
    else:
        state = _ended_line(job, failed) or (progress_line(latest) if latest and job.status != "queued"
                                             else "waits for the fine-tuning to finish")
    return f"<p><b>2 · Answering and judging</b>: {html.escape(state)}</p>"


async def follow_run(c: ExperimentTabComponents, ws: Workspace, exp: xp.Experiment, train_id: str,
                     eval_id: str) -> AsyncIterator[dict[Any, Any]]:
    """Follow the fine-tuning run, then the evaluation, then show the verdict."""
    train_events: list[ev.JobEvent] = []
    eval_job = await anyio.to_thread.run_sync(lambda: ws.store().get(eval_id))
    train = None
    async for train, events in follow(ws, train_id):
        train_events.extend(events)
        if events or train.finished:
            yield {c.run_progress: _train_lines(train, train_events) + _eval_line(eval_job, [])}
    eval_events: list[ev.JobEvent] = []
    async for eval_job, events in follow(ws, eval_id):
        eval_events.extend(events)
        if events or eval_job.finished:
            yield {c.run_progress: _train_lines(train, train_events) + _eval_line(eval_job, eval_events)}
    if eval_job.status == "done":
        yield await anyio.to_thread.run_sync(lambda: experiment_view(c, ws, exp))


def active_job(ws: Workspace, exp: xp.Experiment) -> tuple[str, JobRecord] | None:
    """The experiment's step still waiting or running ("generate" or "run"), with its job; None when none is."""
    record, store = exp.record, ws.store()
    for key, step in (("generate_job", "generate"), ("train_job", "run"), ("eval_job", "run")):
        job_id = record.get(key)
        if not job_id:
            continue
        try:
            job = store.get(job_id)
        except JobError:
            continue
        if job.status in WORKING or job.status == "needs_token":
            return step, job
    return None


def cancel_step(ws: Workspace, name: str | None) -> str:
    """Cancel whichever step of the experiment is waiting or running (the fine-tuning and its evaluation both)."""
    exp = xp.open_experiment(ws, _require_name(name))
    record, store, cancelled = exp.record, ws.store(), []
    for key in ("generate_job", "train_job", "eval_job"):
        job_id = record.get(key)
        if not job_id:
            continue
        job = store.get(job_id)
        if job.owner == ws.owner and job.status in ("queued", "running", "needs_token"):
            try:
                store.cancel(job_id)
                cancelled.append(key)
            except JobError:
                continue  # it ended a moment ago
    if not cancelled:
        return "Nothing to cancel: no step of this experiment is waiting or running."
    return "⏹ Cancel requested: the step stops at its next checkpoint; what was made so far is kept."


# ----------------------------------------------------------------------------------------- actions


def _require_name(name: str | None) -> str:
    if not (name or "").strip():
        raise ValueError("Open an experiment first (step 1: pick or name one and press Create / open).")
    return str(name).strip()


def _check_model(model: str, token: str | None) -> None:
    """A Hub model other than the bundled one: refuse a bad id or a gated one without access, before any job."""
    if model == BUNDLED_ID:
        return
    from engine.hub import require_access

    token = (token or "").strip() or None
    hub_kwargs(model, token)
    require_access(model, token)


def open_or_create(ws: Workspace, name: str | None, collection: str | None, model: str | None,
                   token: str | None) -> tuple[xp.Experiment, str]:
    """Open the named experiment, or create it over ``collection`` with ``model``; returns it and a note."""
    name = _require_name(name)
    if (ws.experiment_path(name) / "experiment.json").is_file():
        return xp.open_experiment(ws, name), "Opened."
    if not collection:
        raise ValueError("Choose the documents (a collection built in the RAG tab) for the new experiment.")
    model = (model or "").strip() or BUNDLED_ID
    _check_model(model, model_token(ws.owner, token))
    return xp.create_experiment(ws, name, collection, model), "Created."


def queue_generation(ws: Workspace, name: str | None, table: Any, ids: Sequence[str] | None, token: str | None,
                     qgen: SettingsForm, values: Sequence[Any], visitor: str,
                     only_unticked: bool) -> tuple[xp.Experiment, JobRecord]:
    """Save the table (unticked rows are deleted), then queue a generation: the form's count, or one per
    deleted row for "Regenerate unticked"."""
    exp = xp.open_experiment(ws, _require_name(name))
    _, deleted = save_table(exp, table, ids)
    fixed = {}
    if only_unticked:
        if not deleted:
            raise ValueError("Untick the questions you want replaced first, then press Regenerate unticked.")
        fixed["questions"] = deleted
    settings = qgen.to_settings(list(values), **fixed)
    job = xp.start_generation(ws, exp, settings, visitor=visitor, hf_token=model_token(ws.owner, token))  # type: ignore[arg-type]
    return exp, job


def questions_files(ws: Workspace, name: str | None) -> list[str]:
    """The review set as JSONL (one QAPair per line, gold chunk ids included) and CSV, in the download folder."""
    exp = xp.open_experiment(ws, _require_name(name))
    pairs = exp.questions()
    if not pairs:
        raise ValueError("There are no questions to download yet: generate, import or add some first.")
    folder = served_folder()
    jsonl, csv = folder / f"{exp.name}-questions.jsonl", folder / f"{exp.name}-questions.csv"
    jsonl.write_text("".join(json.dumps(p.to_dict(), ensure_ascii=False) + "\n" for p in pairs), encoding="utf-8")
    csv.write_text(xp.questions_csv(pairs), encoding="utf-8")
    return [str(jsonl), str(csv)]


def experiment_status(name: str, request: gr.Request, profile: gr.OAuthProfile | None = None) -> dict[str, Any]:
    """An experiment's state as plain data, for scripts (gradio_client) following one they started."""
    ws = workspace_of(request, profile)
    exp = xp.open_experiment(ws, _require_name(name))
    record, split, report = exp.record, exp.split(), exp.report()
    store = ws.store()
    jobs = {}
    for key in ("generate_job", "train_job", "eval_job"):
        if record.get(key):
            job = store.get(record[key])
            jobs[key.removesuffix("_job")] = {"id": job.id, "status": job.status, "error": job.error}
    return {"name": exp.name, "collection": record["collection"], "model": record["model"],
            "questions": len(exp.questions()), "jobs": jobs,
            "split": None if split is None else {"summary": split.summary(), "train": len(split.train_ids),
                                                 "test": len(split.test_ids), "dropped": split.dropped},
            "verdict": None if report is None else report["verdict"]}


# ----------------------------------------------------------------------------------------- events


def _errors(title: str) -> Any:
    return friendly_errors(title, translate=_user_facing)


def _user_facing(exc: Exception) -> Exception:
    """The services' own errors carry messages meant for the user."""
    from services.experiment_split import SplitError
    from services.qgen import QGenError

    if isinstance(exc, (xp.ExperimentError, SplitError, QGenError, JobError)):
        return ValueError(str(exc))
    return exc


def register(c: ExperimentTabComponents) -> None:
    """Wire the five steps (``experiment_*`` API endpoints)."""
    c.name.focus(experiment_choices, None, c.name, api_visibility="private", show_progress="hidden")
    c.collection.focus(collection_choices, None, c.collection, api_visibility="private", show_progress="hidden")
    _register_open(c)
    _register_generation(c)
    _register_review(c)
    _register_split_and_run(c)
    _register_votes(c)
    api_endpoint(_errors("Could not read the experiment")(experiment_status), api_name="experiment_status")


def experiment_choices(request: gr.Request, profile: gr.OAuthProfile | None = None) -> Any:
    return gr.Dropdown(choices=xp.list_experiments(workspace_of(request, profile)))


def collection_choices(request: gr.Request, profile: gr.OAuthProfile | None = None) -> Any:
    return gr.Dropdown(choices=workspace_of(request, profile).index_names())


def _register_open(c: ExperimentTabComponents) -> None:
    def on_open(name: str | None, collection: str | None, model: str | None, token: str | None,
                request: gr.Request, profile: gr.OAuthProfile | None = None) -> dict[Any, Any]:
        ws = workspace_of(request, profile)
        exp, note = open_or_create(ws, name, collection, model, token)
        view = experiment_view(c, ws, exp)
        view[c.status] = f"{note} {view[c.status]}"
        return {**view, c.gen_progress: "", c.run_progress: ""}

    endpoint(c.open_button.click, _errors("Could not open the experiment")(on_open),
             [c.name, c.collection, c.model, c.hf_token], c.view_outputs(), api_name="experiment_open")


def _register_generation(c: ExperimentTabComponents) -> None:
    """Generate / Regenerate unticked (both save the table first, then follow the job) and Cancel."""
    names = ["experiment", "table", "shown_ids", "hf_token", *c.qgen.names]

    def generator(only_unticked: bool) -> Any:
        async def on_generate(name: str | None, table: Any, ids: list[str] | None, token: str | None, *values: Any,
                              request: gr.Request, profile: gr.OAuthProfile | None = None,
                              ) -> AsyncIterator[dict[Any, Any]]:
            require_write("Generating questions")
            ws = workspace_of(request, profile)
            exp, job = await anyio.to_thread.run_sync(
                lambda: queue_generation(ws, name, table, ids, token, c.qgen, values, visitor_of(request, profile),
                                         only_unticked))
            yield await anyio.to_thread.run_sync(lambda: experiment_view(c, ws, exp))
            async for update in follow_generation(c, ws, exp, job.id):
                yield update
        return named_parameters(_errors("Could not generate questions")(on_generate), names, request=True)

    inputs = [c.experiment, c.questions, c.shown_ids, c.hf_token, *c.qgen.components]
    endpoint(c.generate.click, generator(False), inputs, c.view_outputs(), api_name="experiment_generate",
             concurrency_limit=None, show_progress_on=c.gen_progress)
    c.regenerate.click(generator(True), inputs, c.view_outputs(), api_visibility="private", concurrency_limit=None,
                       show_progress_on=c.gen_progress)

    def on_cancel(name: str | None, request: gr.Request, profile: gr.OAuthProfile | None = None) -> str:
        return cancel_step(workspace_of(request, profile), name)

    endpoint([c.cancel_generate.click, c.cancel_run.click], _errors("Could not cancel")(on_cancel), c.experiment,
             c.status, api_name="experiment_cancel")


def _register_review(c: ExperimentTabComponents) -> None:
    """Save changes, Add a row, Import and Download of the review set."""

    def on_save(name: str | None, table: Any, ids: list[str] | None, request: gr.Request,
                profile: gr.OAuthProfile | None = None) -> dict[Any, Any]:
        ws = workspace_of(request, profile)
        exp = xp.open_experiment(ws, _require_name(name))
        kept, deleted = save_table(exp, table, ids)
        view = experiment_view(c, ws, exp)
        view[c.questions_note] = f"💾 Saved: {kept} kept, {deleted} deleted. " + view[c.questions_note]
        return view

    endpoint(c.save.click, _errors("Could not save the questions")(on_save), [c.experiment, c.questions,
             c.shown_ids], c.view_outputs(), api_name="experiment_save_questions")
    c.add_row.click(add_row, c.questions, c.questions, api_visibility="private")

    def on_import(name: str | None, questions_file: Any, request: gr.Request,
                  profile: gr.OAuthProfile | None = None) -> dict[Any, Any]:
        if not questions_file:
            return {}
        ws = workspace_of(request, profile)
        exp = xp.open_experiment(ws, _require_name(name))
        path = Path(getattr(questions_file, "name", None) or str(questions_file))
        check_upload(path)
        added = xp.import_questions(exp, path)
        view = experiment_view(c, ws, exp)
        view[c.questions_note] = f"📥 Imported {added} new question(s) from {path.name}. " + view[c.questions_note]
        return {**view, c.import_file: None}

    endpoint(c.import_file.upload, _errors("Could not import the questions")(on_import),
             [c.experiment, c.import_file], c.view_outputs(), api_name="experiment_import")

    def on_download(name: str | None, request: gr.Request, profile: gr.OAuthProfile | None = None) -> Any:
        return gr.File(value=questions_files(workspace_of(request, profile), name), visible=True)

    endpoint(c.download.click, _errors("Could not prepare the download")(on_download), c.experiment,
             c.download_files, api_name="experiment_download")


def _register_votes(c: ExperimentTabComponents) -> None:
    def voter(choice: str) -> Any:
        def on_vote(name: str | None, pair: dict[str, str] | None, request: gr.Request,
                    profile: gr.OAuthProfile | None = None) -> dict[Any, Any]:
            exp = xp.open_experiment(workspace_of(request, profile), _require_name(name))
            if pair is None:
                raise ValueError("There is no pair to vote on: run the experiment first.")
            xp.record_vote(exp, pair["qid"], pair["arm_a"], pair["arm_b"], choice)
            return vote_view(c, exp)

        return _errors("Could not keep the vote")(on_vote)

    outputs = [c.vote_pair, c.vote_question, c.vote_a, c.vote_b, c.vote_note]
    for choice, button in c.vote_buttons.items():
        endpoint(button.click, voter(choice), [c.experiment, c.vote_pair], outputs,
                 api_name=f"experiment_vote_{choice.lower()}")


def _register_split_and_run(c: ExperimentTabComponents) -> None:
    def on_split(name: str | None, table: Any, ids: list[str] | None, *values: Any, request: gr.Request,
                 profile: gr.OAuthProfile | None = None) -> dict[Any, Any]:
        ws = workspace_of(request, profile)
        exp = xp.open_experiment(ws, _require_name(name))
        save_table(exp, table, ids)  # what is split is what the table shows
        xp.split_experiment(ws, exp, c.split_form.to_settings(list(values)))  # type: ignore[arg-type]
        return experiment_view(c, ws, exp)

    endpoint(c.split_button.click, named_parameters(_errors("Could not split the questions")(on_split),
                                                    ["experiment", "table", "shown_ids", *c.split_form.names],
                                                    request=True),
             [c.experiment, c.questions, c.shown_ids, *c.split_form.components], c.view_outputs(),
             api_name="experiment_split", show_progress_on=c.split_summary)

    async def on_run(name: str | None, token: str | None, *values: Any, request: gr.Request,
                     profile: gr.OAuthProfile | None = None) -> AsyncIterator[dict[Any, Any]]:
        require_write("Running an experiment")
        ws = workspace_of(request, profile)
        split_at = len(c.run_form.names)
        settings = c.run_form.to_settings(list(values[:split_at]))
        judge = c.judge_form.to_settings(list(values[split_at:]))
        exp = await anyio.to_thread.run_sync(xp.open_experiment, ws, _require_name(name))
        train, evaluation = await anyio.to_thread.run_sync(lambda: xp.start_run(
            ws, exp, settings, visitor=visitor_of(request, profile), hf_token=model_token(ws.owner, token),
            judge_settings=judge))
        yield {**report_view(c, exp), c.run_progress: "<p>Queued…</p>"}
        async for update in follow_run(c, ws, exp, train.id, evaluation.id):
            yield update

    endpoint(c.run_button.click, named_parameters(_errors("Could not run the experiment")(on_run),
                                                  ["experiment", "hf_token", *c.run_form.names,
                                                   *[f"judge_{n}" for n in c.judge_form.names]], request=True),
             [c.experiment, c.hf_token, *c.run_form.components, *c.judge_form.components], c.view_outputs(),
             api_name="experiment_run",
             concurrency_limit=None, show_progress_on=c.run_progress)


# ----------------------------------------------------------------------------------------- page load


def register_page_load(demo: gr.Blocks, c: ExperimentTabComponents) -> None:
    """Fill the pickers; show the visitor's latest experiment as it was left, and follow a step still running."""

    async def on_load(request: gr.Request, profile: gr.OAuthProfile | None = None) -> AsyncIterator[dict[Any, Any]]:
        try:
            ws = workspace_of(request, profile)
            exp, lists = await anyio.to_thread.run_sync(_latest, ws)
        except Exception:  # not signed in yet, or a passing hiccup: the page works without it
            yield {}
            return
        if exp is None:
            yield {c.name: gr.Dropdown(choices=lists[0]), c.collection: gr.Dropdown(choices=lists[1])}
            return
        yield await anyio.to_thread.run_sync(experiment_view, c, ws, exp)
        running = await anyio.to_thread.run_sync(active_job, ws, exp)
        if running is None:
            return
        record = exp.record
        if running[0] == "generate":
            async for update in follow_generation(c, ws, exp, running[1].id):
                yield update
        else:
            async for update in follow_run(c, ws, exp, record["train_job"], record["eval_job"]):
                yield update

    demo.load(on_load, None, c.view_outputs(), api_visibility="private", concurrency_limit=None,
              show_progress="hidden")


def _latest(ws: Workspace) -> tuple[xp.Experiment | None, tuple[list[str], list[str]]]:
    """The visitor's most recently changed experiment (None when they have none), and the two pickers' choices."""
    names = xp.list_experiments(ws)
    lists = (names, ws.index_names())
    if not names:
        return None, lists
    latest = max(names, key=lambda n: (ws.experiment_path(n) / "experiment.json").stat().st_mtime)
    return xp.open_experiment(ws, latest), lists
