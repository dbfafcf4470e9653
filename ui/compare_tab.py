"""The Compare tab: base vs fine-tuned vs RAG vs fine-tuned+RAG, on one question or a whole question set.

Blind votes close the loop: they export as preference pairs, "Improve with these votes" trains a DPO run
that continues the voted run on them, and that run comes back as the "After votes" arm (``ft2``) for a
before/after comparison on the same questions.

Same shape as the other tabs: :func:`build` makes the components, :func:`register` wires the events,
every event has a stable ``api_name`` prefixed ``compare_``, and a visitor's report and blind-vote
progress live in ``gr.State``. All the work is in :mod:`services.compare`; this file only formats.
The arms share one copy of the model, so they answer one after another; each pane streams as it goes.
"""

from __future__ import annotations

import html
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from core.generation import GenerationSettings
from engine.jobs import JobRecord
from engine.models import BUNDLED_ID
from engine.quotas import check_upload
from engine.workspace import AccessPolicy, Workspace
from services.compare import (
    ARM_LABELS,
    ARMS,
    METRICS,
    SUMMARY_METRICS,
    VOTE_CHOICES,
    ArmAnswer,
    Comparer,
    CompareSettings,
    Progress,
    Question,
    Report,
    Vote,
    arm_label,
    blind_pairs,
    holdout_questions,
    improve_with_votes,
    leakage_check,
    load_questions,
    metric_name,
    parse_arms,
    preference_pairs,
    training_prompts,
    win_rates,
    write_preference_file,
)
from services.model_notes import small_model_note
from ui.common import (
    SettingsForm,
    body_size,
    build_settings_form,
    check_message,
    endpoint,
    friendly_errors,
    hide_paths,
    literal_markdown,
    model_token,
    named_parameters,
    served_copy,
    served_folder,
    visitor_of,
    workspace_of,
)
from ui.rag_citations import quote_for

NO_RUN = "(none)"
#: The per-answer table: the scores by their plain names (``services.compare.METRICS``).
TABLE_SCORES = ("contained", "f1", "rouge_l", "retrieval_hit")
TABLE_HEADERS = ["#", "question", "reference", "approach", "answer", *[metric_name(m) for m in TABLE_SCORES],
                 "why wrong", "seconds"]
TABLE_WIDTHS = ["3%", "14%", "10%", "9%", "22%", "7%", "7%", "7%", "6%", "9%", "6%"]  # "why wrong", "seconds" uncut
#: Retrieved passages ([n] ✓ = cited): narrow number and score columns, so the score is never cut off.
# Three columns, not four: four panes side by side leave a fourth column a few letters wide (headers wrapped
# letter by letter), so the score shares the source's cell.
CHUNK_HEADERS = ["[n]", "source (score)", "text"]
CHUNK_WIDTHS = ["16%", "30%", "54%"]
WIN_HEADERS = ["approach", "votes", "wins", "ties", "losses", "both bad", "win rate", "95% CI"]
IMPROVE_HELP = ("*Improve with these votes* trains on your blind votes: pick a fine-tuned run, run a question "
                "set with it, and vote; each vote between two answers to the same prompt becomes a preference "
                "pair.")
PAIRS_FILE = "preference-pairs.jsonl"


@dataclass
class ComparePane:
    column: gr.Column
    answer: gr.Markdown
    stats: gr.Markdown
    chunks: gr.Dataframe


@dataclass
class CompareTabComponents:
    report_state: gr.State
    blind_state: gr.State
    arms: gr.CheckboxGroup
    run: gr.Dropdown
    run2: gr.Dropdown
    collection: gr.Dropdown
    refresh_button: gr.Button
    model_note: gr.Markdown
    generation: SettingsForm
    options: SettingsForm
    question: gr.Textbox
    ask_button: gr.Button
    panes: dict[str, ComparePane]
    questions_file: gr.File
    holdout_file: gr.File
    limit: gr.Number
    run_button: gr.Button
    status: gr.HTML
    summary: gr.Dataframe
    table: gr.Dataframe
    blind_button: gr.Button
    blind_question: gr.Markdown
    blind_a: gr.Markdown
    blind_b: gr.Markdown
    vote_buttons: dict[str, gr.Button]
    blind_status: gr.Markdown
    wins: gr.Dataframe
    improve_button: gr.Button
    improve_status: gr.Markdown
    export_button: gr.Button
    exports: gr.File
    pairs_note: gr.Markdown


# ----------------------------------------------------------------------------------------- choices


def run_choices(ws: Workspace | None = None) -> list[tuple[str, str]]:
    """The visitor's finished runs with an adapter, as (label, run id); none before we know who is asking."""
    out = [(NO_RUN, NO_RUN)]
    for job in ws.finished_runs() if ws else []:
        out.append((f"{job.name} ({job.config.base_model.split('/')[-1]})", job.id))
    return out


def run2_choices(ws: Workspace | None = None) -> list[tuple[str, str]]:
    """Runs for the "After votes" arm: the finished ones, and those still training, marked as such.

    Why unfinished runs too: the run "Improve with these votes" starts is preselected here at once, so the
    before/after comparison is one click away when it finishes; asking before then says it is still training.
    """
    out = run_choices(ws)
    for job in ws.runs() if ws else []:
        if not job.finished:
            out.append((f"{job.name} (still training)", job.id))
    return out


def collection_choices(ws: Workspace | None = None) -> list[str]:
    return ws.index_names() if ws else []


# ----------------------------------------------------------------------------------------- build


def build() -> CompareTabComponents:
    """The tab top to bottom: pickers and settings, side by side, question set, blind vote and export."""
    return CompareTabComponents(**_build_pickers(), **_build_side_by_side(), **_build_question_set(),
                                **_build_blind_vote())


def _build_pickers() -> dict[str, Any]:
    """The intro, the per-visitor states, the approach/run/collection pickers and the shared settings."""
    gr.Markdown("Ask the same question in up to four ways and see which answers best: the **base model** alone, "
                "your **fine-tuned** run, the base model reading your documents (**RAG**), and both together. "
                "One copy of the model gives every answer (your run's adapter is switched on and off), so they "
                "come one after another, each pane filling as it goes, with the same generation settings.")
    parts: dict[str, Any] = {"report_state": gr.State(None), "blind_state": gr.State(None)}
    with gr.Row(equal_height=True):
        parts["arms"] = gr.CheckboxGroup(choices=[(ARM_LABELS[a], a) for a in ARMS], value=["base", "rag"],
                                         label="Answers to compare", elem_id="compare-arms", scale=3)
        parts["run"] = gr.Dropdown(choices=run_choices(), value=NO_RUN,
                                   label="Fine-tuned run (for the fine-tuned answers)", elem_id="compare-run", scale=2)
        parts["run2"] = gr.Dropdown(choices=run2_choices(), value=NO_RUN,
                                    label="Second run (for the 'After votes' answer)", elem_id="compare-run2", scale=2,
                                    info="E.g. the run 'Improve with these votes' trained; same base model.")
        parts["collection"] = gr.Dropdown(choices=collection_choices(), value=None,
                                          label="RAG collection (for the RAG answers)", elem_id="compare-collection",
                                          scale=2)
        parts["refresh_button"] = gr.Button("↻ Refresh lists", elem_id="compare-refresh", scale=1)
    parts["model_note"] = gr.Markdown(small_model_note(BUNDLED_ID), elem_id="compare-model-note")
    with gr.Accordion("Generation settings (shared by every answer)", open=False, elem_id="compare-settings"):
        parts["generation"] = build_settings_form(GenerationSettings, prefix="compare-gen", advanced_label="More")
        parts["options"] = build_settings_form(CompareSettings, prefix="compare-opt",
                                               advanced_label="Prompts and checks")
    return parts


def _build_side_by_side() -> dict[str, Any]:
    """One question, and one pane per approach (only the chosen ones' panes are visible)."""
    gr.Markdown("### Side by side")
    with gr.Row(equal_height=True):
        question = gr.Textbox(label="Question", placeholder="Ask something your data or documents cover…",
                              elem_id="compare-question", scale=5)
        ask_button = gr.Button("Ask each one", variant="primary", elem_id="compare-ask", scale=1)
    panes: dict[str, ComparePane] = {}
    with gr.Row(equal_height=False):
        for arm in ARMS:
            panes[arm] = _build_pane(arm)
    return {"question": question, "ask_button": ask_button, "panes": panes}


def _build_pane(arm: str) -> ComparePane:
    """One approach's column: its name, the streamed answer, its timing, and (RAG) the retrieved passages,
    hidden until there are some."""
    slug = arm.replace("+", "-")
    with gr.Column(visible=arm in ("base", "rag"), min_width=240, elem_id=f"compare-pane-{slug}") as column:
        gr.Markdown(f"**{ARM_LABELS[arm]}**")
        answer = gr.Markdown("", elem_id=f"compare-answer-{slug}")
        stats = gr.Markdown("", elem_id=f"compare-stats-{slug}")
        chunks = gr.Dataframe(headers=CHUNK_HEADERS, interactive=False, wrap=True, max_height=260, visible=False,
                              column_widths=CHUNK_WIDTHS, label="Passages read ([n] ✓ = cited)",
                              elem_id=f"compare-chunks-{slug}")
    return ComparePane(column, answer, stats, chunks)


def _build_question_set() -> dict[str, Any]:
    """The question-set files and limit, Run, and the progress, summary and per-answer tables."""
    gr.Markdown("### Question set\nUpload questions (CSV or JSONL with `question`, optional `answer`, optional "
                "`gold_doc_id`), or hold out part of a fine-tuning file. Every chosen approach answers every question.")
    parts: dict[str, Any] = {}
    with gr.Row(equal_height=True):
        parts["questions_file"] = gr.File(label="Question set (CSV / JSONL)", file_types=[".csv", ".jsonl", ".json"],
                                          elem_id="compare-questions", height=110)
        parts["holdout_file"] = gr.File(label="…or a fine-tuning file to hold out from (also checked for leakage)",
                                        file_types=[".csv", ".jsonl", ".json", ".parquet", ".txt"],
                                        elem_id="compare-holdout", height=110)
        parts["limit"] = gr.Number(value=20, precision=0, minimum=0, label="Questions (0 = all)",
                                   elem_id="compare-limit")
        parts["run_button"] = gr.Button("Run the question set", variant="primary", elem_id="compare-run-set")
    parts["status"] = gr.HTML("", elem_id="compare-status")
    parts["summary"] = gr.Dataframe(headers=summary_headers(["base", "rag"]), interactive=False, wrap=True,
                                    visible=False, label="Summary (means over the questions)",
                                    elem_id="compare-summary")
    parts["table"] = gr.Dataframe(headers=TABLE_HEADERS, interactive=False, wrap=True, max_height=500,
                                  column_widths=TABLE_WIDTHS, visible=False, label="Every answer",
                                  elem_id="compare-table")
    return parts


def _build_blind_vote() -> dict[str, Any]:
    """Blind voting on the last question set (anonymous A/B), the win rates, and the report export."""
    gr.Markdown("### Blind vote\nWhich approach wrote each answer is hidden, and left/right positions are "
                "shuffled per question.")
    parts: dict[str, Any] = {
        "blind_button": gr.Button("Start blind voting on the last question set", elem_id="compare-blind-start"),
        "blind_question": gr.Markdown("", elem_id="compare-blind-question"),
    }
    with gr.Row(equal_height=False):
        parts["blind_a"] = gr.Markdown("", elem_id="compare-blind-a")
        parts["blind_b"] = gr.Markdown("", elem_id="compare-blind-b")
    with gr.Row():
        parts["vote_buttons"] = {
            "A": gr.Button("A is better", elem_id="compare-vote-a"),
            "B": gr.Button("B is better", elem_id="compare-vote-b"),
            "tie": gr.Button("Tie", elem_id="compare-vote-tie"),
            "both_bad": gr.Button("Both bad", elem_id="compare-vote-both-bad"),
        }
    parts["blind_status"] = gr.Markdown("", elem_id="compare-blind-status")
    parts["wins"] = gr.Dataframe(headers=WIN_HEADERS, interactive=False, visible=False, label="Win rates",
                                 elem_id="compare-wins")
    with gr.Row(equal_height=True):
        parts["improve_button"] = gr.Button("Improve with these votes", interactive=False, elem_id="compare-improve",
                                            scale=1)
        parts["improve_status"] = gr.Markdown(IMPROVE_HELP, elem_id="compare-improve-status")
    with gr.Row(equal_height=True):
        parts["export_button"] = gr.Button("Export report (JSON, CSV, HTML) and preference pairs",
                                           elem_id="compare-export")
        parts["exports"] = gr.File(label="Report files, and preference pairs (JSONL, TRL format)",
                                   file_count="multiple", interactive=False, elem_id="compare-exports")
    parts["pairs_note"] = gr.Markdown("", elem_id="compare-pairs-note")
    return parts


# ----------------------------------------------------------------------------------------- logic


def _path(file: Any) -> str | None:
    if not file:
        return None
    return str(getattr(file, "name", None) or file)


def picked_runs(ws: Workspace, chosen: list[str], run: str | None, run2: str | None
                ) -> tuple[JobRecord | None, JobRecord | None]:
    """The fine-tuned run and (for the "After votes" arm) the second run, from the visitor's workspace.

    Both adapters are served by one copy of one base model, so the two runs must share their base; the
    second run must have finished (it may be listed while it still trains).
    """
    job = ws.run(run) if run and run != NO_RUN else None
    job2 = ws.run(run2) if "ft2" in chosen and run2 and run2 != NO_RUN else None
    if job2 is not None and job2.status != "done":
        raise ValueError(f"The second run {job2.name} has not finished ({job2.status}); follow it in the Train tab "
                         "and ask again when it is done.")
    if job and job2 and job.config.base_model != job2.config.base_model:
        raise ValueError(f"The two runs fine-tune different base models ({job.config.base_model} and "
                         f"{job2.config.base_model}); one comparison serves one base model, so pick runs of the "
                         "same one.")
    return job, job2


def checked_arms(arms: list[str] | None, run: str | None, run2: str | None) -> list[str]:
    """The ticked approaches, refused in the tab's own words when one lacks the run it needs."""
    if not arms:
        raise ValueError("Tick at least one answer to compare under *Answers to compare* (e.g. Base model and RAG).")
    chosen = parse_arms(arms)
    if any("ft" in a.split("+") for a in chosen) and (not run or run == NO_RUN):
        raise ValueError("The fine-tuned answers need one of your finished runs: pick it under *Fine-tuned run* "
                         "(train one in the Train tab first), or untick Fine-tuned.")
    if "ft2" in chosen and (not run2 or run2 == NO_RUN):
        raise ValueError("The 'After votes' answer needs a second finished run: pick it under *Second run*, or "
                         "untick it.")
    return chosen


def base_model_of(ws: Workspace | None, run: str | None, run2: str | None = None) -> str:
    """The base model the comparison will load: the picked run's, else the bundled one."""
    for run_id in (run, run2):
        if ws is not None and run_id and run_id != NO_RUN:
            try:
                return ws.run(run_id).config.base_model
            except Exception:  # a run removed meanwhile: the comparison itself will say so
                continue
    return BUNDLED_ID


def make_comparer(arms: list[str] | None, run: str | None, collection: str | None, gen_values: list[Any],
                  opt_values: list[Any], c: CompareTabComponents, ws: Workspace, run2: str | None = None) -> Comparer:
    """Turn the form into a Comparer on the shared, process-wide model of the run's base.

    The runs and the collection are looked up in the visitor's workspace: an API client cannot point
    the comparer at someone else's adapter or index by passing a path.
    """
    from services.collections import open_collection
    from ui.common import chat_model_for

    chosen = checked_arms(arms, run, run2)
    job, job2 = picked_runs(ws, chosen, run, run2)
    index = None
    if any("rag" in a for a in chosen):
        if not collection:
            raise ValueError("The RAG answers need a collection of documents: build one in the RAG tab, then pick "
                             "it under *RAG collection*.")
        index = open_collection(ws.index_path(collection))  # the shared read-only copy of its current version
    generation = c.generation.to_settings(gen_values)
    options = c.options.to_settings(opt_values)
    either = job or job2
    base = either.config.base_model if either else BUNDLED_ID  # the run's own record names its base model
    chat = chat_model_for(base, model_token(ws.owner, None))  # the owner's token serves the owner's requests only
    return Comparer(chat, arms=chosen, adapter=job.adapter_dir if job else None, index=index, generation=generation,
                    settings=options, adapter_label=job.name if job else None, collection=collection or None,
                    adapter2=job2.adapter_dir if job2 else None, adapter2_label=job2.name if job2 else None,
                    run_id=job.id if job else None, run2_id=job2.id if job2 else None)


def pane_stats(a: ArmAnswer) -> str:
    """Under an answer: its timings, what produced it, and an error if it failed."""
    if not a.done:
        return "*answering…*" if a.text else "*waiting for the first token…*"
    ttft = "–" if a.ttft_s is None else f"{a.ttft_s:.2f} s"
    text = (f"first token {ttft} · {a.tokens_per_s:.1f} tokens/s · total {a.total_s:.2f} s · {a.tokens} tokens")
    if a.provenance:
        text += f"  \n<small>Answered by: {html.escape(a.provenance_line)}</small>"
    if a.error:
        text += f"\n\n⚠️ {hide_paths(a.error)}"  # an exception's text may name server paths
    return text


def chunk_rows(a: ArmAnswer) -> list[list[Any]]:
    """The passages an answer read, cited ones marked ✓; the score (three decimals) beside its source."""
    cited = set(a.cited)
    return [[f"[{n}]{' ✓' if n in cited else ''}", f"{r['location']} ({_score(r['score'])})",
             (f"“{quote_for(a.text, n, r['text'])}” — " if n in cited else "") + r["text"][:400]]
            for n, r in enumerate(a.retrieved, start=1)]


def _score(value: Any) -> Any:
    return f"{value:.3f}" if isinstance(value, float) else value


def chunk_table(a: ArmAnswer) -> Any:
    """The passages table of a pane, shown only once it has rows."""
    rows = chunk_rows(a)
    return gr.Dataframe(value=rows, visible=bool(rows))


def summary_headers(arms: list[str], config: dict[str, Any] | None = None) -> list[str]:
    """The summary's columns: the measure, one per compared approach, and what the measure means."""
    return ["measure", *[arm_label(a, config) for a in arms], "what it means"]


def summary_rows(report: Report) -> list[list[Any]]:
    """One row per measure (plain name, a value per approach, its one-line meaning); RAG-only ones only with RAG."""
    summary = report.summary()
    rows = []
    for metric in SUMMARY_METRICS:
        values = [summary.get(arm, {}).get(metric) for arm in report.arms]
        if all(v is None for v in values):
            continue  # e.g. retrieval measures without a RAG answer, scores without reference answers
        row: list[Any] = [metric_name(metric)]
        row += ["" if v is None else round(v, 3) if isinstance(v, float) else v for v in values]
        rows.append([*row, METRICS[metric][1]])
    return rows


def summary_table(report: Report) -> Any:
    """The summary Dataframe for a finished question set (headers follow the approaches compared)."""
    return gr.Dataframe(value={"headers": summary_headers(report.arms, report.config), "data": summary_rows(report)},
                        visible=True)


def table_rows(report: Report) -> list[list[Any]]:
    """Every answer of a question set, one row each, with its scores (:data:`TABLE_HEADERS`)."""
    rows = []
    for i, r in enumerate(report.rows, start=1):
        q = r.question
        label = q.question + (f"  ⚠ {q.leak}" if q.leak else "")
        for arm, a in r.answers.items():
            s = a.scores

            def fmt(v: float | None) -> str:
                return "" if v is None else f"{v:.2f}"

            rows.append([i, label, " | ".join(q.references), arm_label(arm, report.config), a.text,
                         *[fmt(s.get(m)) for m in TABLE_SCORES], a.failure, round(a.total_s, 2)])
    return rows


def win_table(report: Report | None) -> Any:
    """The win-rate table, shown once there is a vote."""
    rows = win_rows(report)
    return gr.Dataframe(value=rows, visible=bool(rows))


def win_rows(report: Report | None) -> list[list[Any]]:
    if report is None:
        return []
    return [[arm_label(arm, report.config), r["votes"], r["wins"], r["ties"], r["losses"], r["both_bad"],
             f"{r['win_rate']:.2f}", f"{r['ci95'][0]:.2f}–{r['ci95'][1]:.2f}"]
            for arm, r in win_rates(report.votes).items()]


def load_question_set(questions_file: Any, holdout_file: Any, limit: int, opts: CompareSettings
                      ) -> tuple[list[Question], int]:
    """Questions from the uploaded set or the held-out part of a fine-tuning file; flags leaks when it can."""
    qpath, hpath = _path(questions_file), _path(holdout_file)
    if not qpath and not hpath:
        raise ValueError("Upload a question set, or a fine-tuning file to hold out questions from.")
    for path in (p for p in (qpath, hpath) if p):
        check_upload(path)  # API clients skip the browser's size check
    limit = int(limit or 0)
    if qpath:
        questions = load_questions(qpath, limit)
        prompts = training_prompts(hpath) if hpath else []
    else:
        questions, prompts = holdout_questions(hpath, opts.holdout_fraction)  # type: ignore[arg-type]
        questions = questions[:limit] if limit > 0 else questions
    leaks = leakage_check(questions, prompts, opts.near_duplicate) if prompts else 0
    return questions, leaks


def blind_view(report: Report, blind: dict[str, Any]) -> list[Any]:
    """The current anonymous pair, or the end-of-voting message."""
    pairs = blind["pairs"]
    i = blind["position"]
    if i >= len(pairs):
        return ["**All questions voted.** Win rates are below; export the report to keep them.", "", "",
                f"{len(report.votes)} vote(s) recorded.", win_table(report)]
    qid, arm_a, arm_b = pairs[i]
    row = next(r for r in report.rows if r.question.qid == qid)
    return [f"**Question {i + 1} of {len(pairs)}:** {row.question.question}",
            f"**Answer A**\n\n{body_size(row.answers[arm_a].text) or '*(empty)*'}",
            f"**Answer B**\n\n{body_size(row.answers[arm_b].text) or '*(empty)*'}",
            f"{len(report.votes)} vote(s) recorded.", win_table(report)]


def record_vote(report: Report | None, blind: dict[str, Any] | None, choice: str) -> None:
    if report is None or not blind:
        raise ValueError("Start blind voting first (after running a question set).")
    if choice not in VOTE_CHOICES:
        raise ValueError(f"A vote is one of {', '.join(VOTE_CHOICES)}.")
    if blind["position"] >= len(blind["pairs"]):
        raise ValueError("Every question has a vote already; start blind voting again for a new round.")
    qid, arm_a, arm_b = blind["pairs"][blind["position"]]
    report.votes.append(Vote(qid, arm_a, arm_b, choice))
    blind["position"] += 1


def progress_html(p: Progress) -> str:
    """A real progress bar (the Markdown status cannot draw one) plus what is being answered now."""
    return (f"<div class='ts-progress'><progress value='{p.done}' max='{max(p.total, 1)}' style='width:100%'>"
            f"</progress><div class='ts-progress-text'>{p.done}/{p.total} answers · {html.escape(p.what)}</div></div>")


def export_files(report: Report | None, ws: Workspace, keep: bool = True) -> list[str]:
    """Saved in the visitor's workspace (kept), handed out as copies (the data directory is not served).

    In the read-only demo (``keep=False``) nothing is written to the owner's workspace: the files go
    straight to the download folder, so a demo visitor can still take their comparison home.
    The preference pairs (JSONL in TRL's conversational format) come along when the votes gave any.
    """
    if report is None:
        raise ValueError("Run a question set first; the report is what gets exported.")
    folder = served_folder() if not keep else Path(tempfile.mkdtemp(prefix="compare-report-", dir=ws.reports))
    paths = [report.save(folder / f"comparison.{ext}") for ext in ("json", "csv", "html")]
    pairs = preference_pairs(report)
    if pairs.rows:
        paths.append(write_preference_file(pairs, folder / PAIRS_FILE))
    return [served_copy(path) for path in paths] if keep else [str(path) for path in paths]


# ----------------------------------------------------------------------------------------- events


def register(c: CompareTabComponents) -> None:
    """Wire every event: the pickers, Ask, Run, blind voting, improving with the votes and export
    (``compare_*`` API endpoints)."""
    _register_lists(c)
    _register_ask(c)
    _register_run(c)
    _register_blind(c)
    _register_improve(c)
    endpoint(c.export_button.click, friendly_errors("Could not export")(export_for_request), c.report_state,
             [c.exports, c.pairs_note], api_name="compare_export")


def refresh_lists(request: gr.Request, profile: gr.OAuthProfile | None = None) -> list[Any]:
    """The visitor's own runs and collections for the three pickers."""
    ws = workspace_of(request, profile)
    return [gr.Dropdown(choices=run_choices(ws)), gr.Dropdown(choices=run2_choices(ws)),
            gr.Dropdown(choices=collection_choices(ws))]


def newest_collection(ws: Workspace, names: list[str]) -> str | None:
    """The collection built or changed last (its manifest is rewritten on every build), or None."""
    def changed(name: str) -> float:
        try:
            return (ws.index_path(name) / "manifest.json").stat().st_mtime
        except OSError:
            return 0.0
    return max(names, key=changed) if names else None


def fill_lists(run: str | None, run2: str | None, collection: str | None, request: gr.Request,
               profile: gr.OAuthProfile | None = None) -> list[Any]:
    """On opening the tab: the visitor's current runs and collections, what they picked kept, the newest run and
    collection picked when nothing was, and the small-model note for the model that will answer."""
    try:
        ws = workspace_of(request, profile)
    except gr.Error:  # not signed in yet: the pickers stay as they are, Refresh says why
        return [gr.skip()] * 4
    runs, names = run_choices(ws), collection_choices(ws)
    run_ids = [value for _, value in runs]
    keep_run = run if run in run_ids and run != NO_RUN else (run_ids[1] if len(run_ids) > 1 else NO_RUN)
    keep_run2 = run2 if run2 in [value for _, value in run2_choices(ws)] else NO_RUN
    keep_collection = collection if collection in names else newest_collection(ws, names)
    return [gr.Dropdown(choices=runs, value=keep_run), gr.Dropdown(choices=run2_choices(ws), value=keep_run2),
            gr.Dropdown(choices=names, value=keep_collection), small_model_note(base_model_of(ws, keep_run, keep_run2))]


def model_note_for(run: str | None, run2: str | None, request: gr.Request,
                   profile: gr.OAuthProfile | None = None) -> str:
    """The small-model note for the base model of the picked runs (the bundled model without one)."""
    return small_model_note(base_model_of(workspace_of(request, profile), run, run2))


def register_tab_select(tab: gr.Tab, c: CompareTabComponents, *also: Any) -> None:
    """Refresh the lists whenever the visitor opens the Compare tab, so a run or collection made since the
    page loaded is there without pressing Refresh (one light request per tab opening, no polling).

    ``tab.select`` fires on the visitor's click only; ``also`` adds triggers such as the ``gr.Tabs``'
    ``change``, which fires when a button (the guide) switches tabs too."""
    gr.on([tab.select, *also], fill_lists, [c.run, c.run2, c.collection], [c.run, c.run2, c.collection, c.model_note],
          api_visibility="private", show_progress="hidden")


def export_for_request(report: Report | None, request: gr.Request,
                       profile: gr.OAuthProfile | None = None) -> list[Any]:
    """:func:`export_files` in the visitor's workspace (kept there, except in the read-only demo), and the
    line saying how many preference pairs the votes gave and why the others were left out."""
    files = export_files(report, workspace_of(request, profile), keep=not AccessPolicy.from_env().demo)
    return [files, pairs_note(report)]


def pairs_note(report: Report | None) -> str:
    """The preference pairs' counts in plain words (what the JSONL holds, and what it leaves out)."""
    if report is None:
        return ""
    return f"**Preference pairs ({PAIRS_FILE}):** {preference_pairs(report).line()}"


def _register_lists(c: CompareTabComponents) -> None:
    """Refresh (button, or opening a picker), the small-model note, and showing only the chosen answers' panes.

    Opening the tab refreshes the lists too (:func:`register_tab_select`, wired where the tab is made)."""
    pickers = [c.run, c.run2, c.collection]
    endpoint(c.refresh_button.click, refresh_lists, None, pickers, api_name="compare_refresh")
    # Lists are the visitor's own, so they are filled when the visitor opens them, not when the page is built.
    for picker in pickers:
        picker.focus(refresh_lists, None, pickers, api_visibility="private", show_progress="hidden")
    gr.on([c.run.change, c.run2.change], friendly_errors("Could not read the run")(model_note_for), [c.run, c.run2],
          c.model_note, api_visibility="private", show_progress="hidden")

    def on_arms(arms: list[str] | None) -> list[Any]:
        return [gr.Column(visible=arm in (arms or [])) for arm in ARMS]

    c.arms.change(on_arms, c.arms, [c.panes[a].column for a in ARMS], api_visibility="private")


def _settings_inputs(c: CompareTabComponents) -> list[Any]:
    """The generation form, then the compare options: the values ``_comparer_for`` splits again."""
    return [*c.generation.components, *c.options.components]


def _setting_api_names(c: CompareTabComponents) -> list[str]:
    """API names of :func:`_settings_inputs`. Both forms have a "seed" (sampling vs blind-pair shuffling):
    the option keeps a distinct API name."""
    return [*c.generation.names, *(f"compare_{n}" if n in c.generation.names else n for n in c.options.names)]


def _comparer_for(c: CompareTabComponents, arms: list[str] | None, runs: tuple[str | None, str | None],
                  collection: str | None, values: tuple[Any, ...], ws: Workspace) -> Comparer:
    """:func:`make_comparer` from the pickers (the two runs) and the :func:`_settings_inputs` values."""
    n_gen = len(c.generation.components)
    return make_comparer(arms, runs[0], collection, list(values[:n_gen]), list(values[n_gen:]), c, ws, runs[1])


def _register_ask(c: CompareTabComponents) -> None:
    """Ask each chosen approach one question; each pane streams its answer in turn (headings at body size)."""
    pane_outputs = [x for arm in ARMS for x in (c.panes[arm].column, c.panes[arm].answer, c.panes[arm].stats,
                                                c.panes[arm].chunks)]

    @friendly_errors("Could not compare")
    def on_ask(arms: list[str] | None, run: str | None, run2: str | None, collection: str | None, question: str,
               *values: Any, request: gr.Request, profile: gr.OAuthProfile | None = None) -> Iterator[list[Any]]:
        if not (question or "").strip():
            raise ValueError("Type a question first.")
        check_message(question, request, "the question", profile)
        comparer = _comparer_for(c, arms, (run, run2), collection, values, workspace_of(request, profile))
        current: dict[str, list[Any]] = {}
        for arm in ARMS:
            chosen = arm in comparer.arms
            current[arm] = [gr.Column(visible=chosen), "*waiting for its turn…*" if chosen else "", "",
                            gr.Dataframe(value=[], visible=False)]
        yield [x for arm in ARMS for x in current[arm]]
        for arm, partial in comparer.answer_all(Question(question.strip())):
            current[arm] = [gr.skip(), body_size(partial.text) or "…", pane_stats(partial), chunk_table(partial)]
            yield [x for arm in ARMS for x in current[arm]]

    ask_names = ["arms", "run", "run2", "collection", "question", *_setting_api_names(c)]
    endpoint(c.ask_button.click, named_parameters(on_ask, ask_names, request=True),
             [c.arms, c.run, c.run2, c.collection, c.question, *_settings_inputs(c)], pane_outputs,
             api_name="compare_ask")


def _register_run(c: CompareTabComponents) -> None:
    """Run the question set: a progress bar while it runs, then the summary and every answer."""

    @friendly_errors("Could not run the question set")
    def on_run(arms: list[str] | None, run: str | None, run2: str | None, collection: str | None,
               questions_file: Any, holdout_file: Any, limit: float | None, *values: Any, request: gr.Request,
               profile: gr.OAuthProfile | None = None) -> Iterator[list[Any]]:
        comparer = _comparer_for(c, arms, (run, run2), collection, values, workspace_of(request, profile))
        questions, leaks = load_question_set(questions_file, holdout_file, int(limit or 0), comparer.settings)
        for item in comparer.iter_run(questions):
            if isinstance(item, Progress):
                yield [gr.skip(), None, progress_html(item), gr.skip(), gr.skip(), gr.skip(), gr.skip()]
                continue
            yield [item, None, run_done_html(len(questions), len(comparer.arms), leaks), summary_table(item),
                   gr.Dataframe(value=table_rows(item), visible=True), *improve_view(item)]

    run_names = ["arms", "run", "run2", "collection", "questions_file", "holdout_file", "limit",
                 *_setting_api_names(c)]
    endpoint(c.run_button.click, named_parameters(on_run, run_names, request=True),
             [c.arms, c.run, c.run2, c.collection, c.questions_file, c.holdout_file, c.limit, *_settings_inputs(c)],
             [c.report_state, c.blind_state, c.status, c.summary, c.table, c.improve_button, c.improve_status],
             api_name="compare_run")


def run_done_html(questions: int, arms: int, leaks: int) -> str:
    """The status line after a question set: what ran, a leakage warning, and how to read the tables."""
    note = (f" ⚠ {leaks} question(s) appear (exactly or nearly) in the training data; scores on them "
            "measure memory, not skill." if leaks else "")
    return (f"<p>Done: {questions} question(s) × {arms} approach(es).{html.escape(note)} "
            "Below: a summary per approach (each measure explained in its last column) and every answer. A wrong "
            "RAG answer says why: <i>retrieval failure</i> when the right document was not among the passages "
            "read, <i>generation failure</i> when it was and the model still missed the answer.</p>")


def _register_blind(c: CompareTabComponents) -> None:
    """Start blind voting on the last report, and the four vote buttons (one API endpoint each)."""
    blind_outputs = [c.blind_question, c.blind_a, c.blind_b, c.blind_status, c.wins, c.improve_button,
                     c.improve_status]

    @friendly_errors("Could not start blind voting")
    def on_blind(report: Report | None, seed: Any) -> list[Any]:
        if report is None:
            raise ValueError("Run a question set first; blind voting compares its answers.")
        blind = {"pairs": blind_pairs([r.question.qid for r in report.rows], report.arms, int(seed or 0)),
                 "position": 0}
        return [blind, *blind_view(report, blind), *improve_view(report)]

    endpoint(c.blind_button.click, on_blind, [c.report_state, c.options.controls["seed"]],
             [c.blind_state, *blind_outputs], api_name="compare_blind_start")
    for choice, button in c.vote_buttons.items():
        endpoint(button.click, vote_handler(choice), [c.report_state, c.blind_state],
                 [c.report_state, c.blind_state, *blind_outputs], api_name=f"compare_vote_{choice.lower()}")


def vote_handler(choice: str) -> Callable[..., list[Any]]:
    """The handler of one vote button: record ``choice`` for the current pair and show the next one."""

    @friendly_errors("Could not record the vote")
    def on_vote(report: Report | None, blind: dict[str, Any] | None) -> list[Any]:
        record_vote(report, blind, choice)
        return [report, blind, *blind_view(report, blind), *improve_view(report)]  # type: ignore[arg-type]

    return on_vote


# ----------------------------------------------------------------------------------------- improve with votes


def improve_hint(report: Report | None) -> tuple[bool, str]:
    """Whether "Improve with these votes" can start now, and what it will do (or what is missing).

    It needs the voted fine-tuned run (a report without one has nothing to continue) and at least one
    preference pair; the read-only demo trains nothing.
    """
    if report is None:
        return False, IMPROVE_HELP
    if AccessPolicy.from_env().demo:
        return False, "Training on votes is turned off in this read-only demo; export the preference pairs instead."
    if not report.config.get("run_id"):
        return False, ("This comparison had no fine-tuned run, so there is nothing to improve: pick one under "
                       "*Fine-tuned run*, run the question set again and vote.")
    export = preference_pairs(report)
    if not export.rows:
        return False, f"No preference pairs yet. {export.line()}"
    name = literal_markdown(str(report.config.get("adapter") or "the fine-tuned run"))
    return True, (f"**Improve with these votes:** a DPO run continues **{name}** on your {len(export.rows)} "
                  "preference pair(s); when it finishes it appears in Compare as another answer so you can ask the "
                  f"same questions before and after (the *After votes* answer). {export.line()}")


def improve_view(report: Report | None) -> list[Any]:
    """The button (enabled only when :func:`improve_hint` allows it) and its explanation."""
    ready, text = improve_hint(report)
    return [gr.Button(interactive=ready), text]


def improve_started(report: Report, job: JobRecord, pairs: int) -> str:
    """What happened after the click, and how to get the before/after comparison."""
    voted = literal_markdown(str(report.config.get("adapter") or "the fine-tuned run"))
    return (f"**Started {literal_markdown(job.name)}:** a DPO run continues **{voted}** on your {pairs} preference "
            f"pair(s) ({job.config.max_steps} step(s) at learning rate {job.config.learning_rate:g}). When it "
            "finishes it appears in Compare as another answer so you can ask the same questions before and after: "
            "it is already picked under *Second run* and the *After votes* answer is ticked. Follow it in the Train "
            "tab, then run the question set again.")


def improve_for_request(report: Report | None, arms: list[str] | None, request: gr.Request,
                        profile: gr.OAuthProfile | None = None) -> list[Any]:
    """Write the pairs into the visitor's workspace, queue the DPO run, and set up the before/after comparison.

    The new run is preselected as the second run and the fine-tuned and "After votes" arms are ticked, so
    running the same question set again once it finishes compares the two. The button is disabled until the
    next vote, so one set of votes does not start two runs by a double click.
    """
    if report is None:
        raise ValueError("Run a question set and vote blind first; the votes are what the run learns from.")
    ws = workspace_of(request, profile)
    job, export = improve_with_votes(report, ws, visitor=visitor_of(request, profile),
                                     hf_token=model_token(ws.owner, None))
    ticked = {*(arms or []), "ft", "ft2"}
    return [improve_started(report, job, len(export.rows)), gr.Dropdown(choices=run2_choices(ws), value=job.id),
            gr.CheckboxGroup(value=[a for a in ARMS if a in ticked]), gr.Button(interactive=False)]


def _register_improve(c: CompareTabComponents) -> None:
    """The "Improve with these votes" button (``compare_improve``: it writes a file and starts training)."""
    endpoint(c.improve_button.click, friendly_errors("Could not start training on the votes")(improve_for_request),
             [c.report_state, c.arms], [c.improve_status, c.run2, c.arms, c.improve_button],
             api_name="compare_improve")
