"""RAG tab: drop documents, see the chunks, arrange the pipeline, test retrieval, get cited answers.

``build()`` creates the components; ``register()`` wires them (``register_page_load()`` the page-load
event, on the app's Blocks). Every event has a stable ``api_name`` prefixed ``rag_``. Per-visitor state
is small: the open collection's name and version and the index job being followed — never a loaded index
that could be written back over someone else's change. Every change (Build, Remove, Re-index, Apply) is a
background index job (``services.index_jobs``) applied to the collection's latest version under its lock; the handler
streams the job's events and returns when it ends, so an API caller still gets "Done" with the counts.
Search and answers read the current version from the shared cache (``services.collections``).
Each stage card's form is generated from its settings class, so no default is typed here.
"""

from __future__ import annotations

import asyncio
import functools
import math
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import gradio as gr

from core.settings import SettingsError
from engine.events import Cancelled, EventLog, Failed, JobEvent, Log, Progress, Queued
from engine.jobs import JobRecord
from engine.limits import limits
from engine.quotas import check_room, check_upload
from engine.workspace import Workspace
from rag.answer import Generate, answer
from rag.checks import problems_by_stage
from rag.chunking import preview, split_document
from rag.embedders import REGISTRY
from rag.estimate import plan_build
from rag.events import AnswerEvent, RetrievedEvent, TokenEvent
from rag.hits import Hit
from rag.index import MANIFEST, CollectionExistsError, RagIndex
from rag.ingest import SUPPORTED_EXTENSIONS, LoadedDocument, load_file
from rag.pipeline import PipelineSpec, PipelineSpecError
from rag.retrieve import search
from rag.stages import FIXED_STAGES, POST_STEPS, STAGE_TITLES
from services import collections
from services.index_jobs import (
    DEMO_COLLECTION,
    index_job,
    index_jobs,
    read_result,
    start_demo_collection,
    submit_index_job,
)
from ui.common import (
    USER_ERRORS,
    SettingsForm,
    api_endpoint,
    build_settings_form,
    check_message,
    endpoint,
    format_duration,
    hide_paths,
    limit_label,
    limits_panel,
    literal_markdown,
    progress_line,
    require_write,
    served_folder,
    user_error,
    visitor_of,
    workspace_of,
    wrap_calls,
)
from ui.rag_citations import (
    PAGE_HINT,
    cited_list,
    page_alt_text,
    page_caption,
    page_html,
    page_image,
    page_png,
    page_refs,
    png_data_url,
)

DEFAULT_COLLECTION = "my-documents"
POST_CONTAINER_ID = "rag-post-steps"
HIT_HEADERS = ["#", "source", "page / section", "meaning", "keywords", "combined", "rerank", "text"]
HIT_WIDTHS = ["6%", "17%", "13%", "8%", "8%", "8%", "8%", "32%"]
SOURCE_HEADERS = ["[n]", "cited", "source", "page / section", "score", "text"]
SOURCE_WIDTHS = ["6%", "7%", "20%", "14%", "9%", "44%"]
CHUNK_HEADERS = ["file", "#", "page / section", "chars", "chunk", "OCR confidence"]
CHUNK_WIDTHS = ["18%", "6%", "14%", "7%", "47%", "8%"]
FILE_HEADERS = ["file", "chunks"]
CHUNKS_SHOWN_PER_FILE = 3  # the chunk table after a build: the first chunks of each file
MAX_CHUNK_ROWS = 300
TOAST_SECONDS = 12  # error toasts fade; what they said stays in the build log or the status line
GLOSSARY = (
    "**Words used below.** *Chunk*: a piece of a document, about a paragraph, that can be found and cited. "
    "*Embedding / meaning search (dense)*: each chunk becomes a vector, so chunks that say the same thing in other "
    "words are found. *BM25*: keyword search, chunks that share the question's words. *Hybrid / reciprocal rank "
    "fusion*: combining keyword and meaning search into one ranking. *HNSW / IVF*: faster, approximate ways to "
    "search many vectors (a neighbour graph; clusters). *MMR*: variety among the results, so they do not all say "
    "the same. *Rerank*: a second model re-orders the best chunks.")
POLL_SECONDS = 0.5  # how often a follower reads the job's event log

#: One selector for every post-retrieval card by its own elem_id (``rag-step-<name>``) inside the Draggable's
#: own elem_id; ``querySelectorAll`` returns the matches in document order, which is the order on screen.
#: The card that splits the steps in use (above it) from the palette of steps not used (below it): dragging a step
#: across it is the one way to add or remove a step; its name stands in the order string where it sits.
PALETTE_DIVIDER = "unused"
#: Every card that shows the pipeline's self-check, in the order of ``RagTabComponents.spec_outputs()``.
CHECKED_STAGES = (*FIXED_STAGES, *POST_STEPS)
_STEP_CARDS = ", ".join(f"#{POST_CONTAINER_ID} #rag-step-{name}" for name in [*POST_STEPS, PALETTE_DIVIDER])

# gr.Draggable (Gradio 6.31) has no value and no event: it moves the cards' DOM nodes and nothing tells the
# server. So the order is read from, and written to, the document, relying only on our own elem_ids (never
# on Gradio's internal classes): read before Apply/Preview, written after Open/Import. gr.Group repeats its
# elem_id on an inner element, so a name can match twice; the first match of each name (an ancestor comes
# before its descendants) is the card itself. Appending a card to its parent is all a reorder needs: the
# Draggable watches its children and re-indexes them itself. tests/test_rag_browser.py drags a card by the
# same ids and checks the applied order, so a Gradio upgrade that breaks this fails that test.
_READ_ORDER_JS = f"""(...args) => {{
  const cards = document.querySelectorAll('{_STEP_CARDS}');
  const order = [...new Set(Array.from(cards).map(e => e.id.replace('rag-step-', '')))].filter(Boolean);
  if (order.length) {{ args[0] = order.join(','); }}
  return args;
}}"""

# After an open or import, put the cards in the spec's order.
_APPLY_ORDER_JS = f"""(order) => {{
  if (!order) return order;
  for (const name of order.split(',')) {{
    const card = document.querySelector('#{POST_CONTAINER_ID} #rag-step-' + name.trim());
    if (card && card.parentElement) card.parentElement.appendChild(card);
  }}
  return order;
}}"""

GenerateFactory = Callable[[PipelineSpec, Callable[[Any], None] | None], Generate]


def bundled_generate(spec: PipelineSpec, on_provenance: Callable[[Any], None] | None = None) -> Generate:
    """Answer with the app's bundled base model (the engine's ChatModel), using the Generate stage settings;
    ``on_provenance`` receives what produced the answer (``engine.infer.Provenance``)."""
    from engine.models import BUNDLED_ID
    from ui.common import chat_model_for

    settings = spec.stages["generate"]  # a GenerationSettings: the collection's own answer settings
    model = chat_model_for(BUNDLED_ID)
    return lambda prompt: model.stream(prompt, settings=settings, on_provenance=on_provenance)


@dataclass
class RagTabComponents:
    collection_state: gr.State  # {"collection": name, "version": n} of the open collection, or None
    job_state: gr.State  # id of the index job this page follows, or None
    spec_state: gr.State
    collection: gr.Dropdown
    open_button: gr.Button
    status: gr.Markdown
    upload: gr.File
    preview_button: gr.Button
    build_button: gr.Button
    preview_text: gr.Markdown
    preview_table: gr.Dataframe
    build_log: gr.Markdown
    cancel_button: gr.Button
    indexed: gr.Dropdown
    remove_button: gr.Button
    reindex_button: gr.Button
    forms: dict[str, SettingsForm]
    enabled: dict[str, gr.Checkbox]
    order: gr.Textbox
    checks: dict[str, gr.Markdown]  # per card: what in the pipeline works against this stage (rag.checks)
    apply_button: gr.Button
    spec_code: gr.Code
    export_button: gr.DownloadButton
    import_file: gr.File
    question: gr.Textbox
    search_button: gr.Button
    search_log: gr.Markdown
    hits: gr.Dataframe
    ask_button: gr.Button
    answer_text: gr.Markdown
    sources: gr.Dataframe
    demo_button: gr.Button
    files_table: gr.Dataframe
    generate_factory: GenerateFactory = field(default=bundled_generate)
    pdf_password: gr.Textbox | None = None  # used for one build or preview, never saved
    confirm_build: gr.Checkbox | None = None  # "go on" for a build estimated to take long
    source_refs: gr.State | None = None  # per row of `sources`: file, page, section and quote (ui.rag_citations)
    hit_refs: gr.State | None = None  # the same for the rows of `hits`
    page_view: gr.HTML | None = None  # the page of the passage whose row was selected
    page_image: gr.Image | None = None  # that page rendered (a PDF whose original the collection kept), above it

    def spec_outputs(self) -> list[Any]:
        """What shows an applied, opened or imported spec: its state, JSON, export file and each card's checks."""
        return [self.spec_state, self.spec_code, self.export_button, *(self.checks[s] for s in CHECKED_STAGES)]

    def form_components(self) -> list[Any]:
        """Every control that defines the spec, in a fixed order: order box, enabled boxes, stage forms."""
        comps: list[Any] = [self.order, *self.enabled.values()]
        for form in self.forms.values():
            comps.extend(form.components)
        return comps


# ----------------------------------------------------------------------------------------- build


def _stage_card(name: str) -> SettingsForm:
    return build_settings_form(_settings_cls(name), prefix=f"rag-{name}", advanced_label="More settings")


def _settings_cls(name: str) -> Any:
    return FIXED_STAGES.get(name) or POST_STEPS[name]


def collection_choices(request: gr.Request, profile: gr.OAuthProfile | None = None) -> Any:
    """The visitor's own collections, listed when they open the dropdown (never at build time: the page is shared)."""
    return gr.Dropdown(choices=workspace_of(request, profile).index_names())


def build(generate_factory: GenerateFactory | None = None) -> RagTabComponents:
    """Simple mode on top (collection, drop, Build, Ask); the pipeline cards under a closed "Advanced"."""
    spec = PipelineSpec()
    parts = {**_build_collection_bar(spec), **_build_documents(), **_build_ask()}
    with gr.Accordion("Advanced: the pipeline step by step, removing files", open=False, elem_id="rag-advanced"):
        gr.Markdown(GLOSSARY, elem_id="rag-glossary")
        parts.update(_build_manage_files())
        parts.update(_build_pipeline(spec))
        parts.update(_build_pipeline_io(spec))
    return RagTabComponents(**parts, generate_factory=generate_factory or bundled_generate)


def _build_collection_bar(spec: PipelineSpec) -> dict[str, Any]:
    """The intro, the per-visitor states, and the collection picker with Open and the status line."""
    gr.Markdown("Ask questions about your own documents and get answers that cite their sources: **1.** drop "
                "documents (or use the demo documents), **2.** press **Build index**, **3.** type a question and "
                "press **Ask**. The pipeline's settings are under *Advanced* at the bottom; the defaults work.")
    parts: dict[str, Any] = {"collection_state": gr.State(None), "job_state": gr.State(None),
                             "spec_state": gr.State(spec.to_dict())}
    with gr.Row(equal_height=True):
        parts["collection"] = gr.Dropdown(choices=[], value=DEFAULT_COLLECTION, allow_custom_value=True,
                                          label="Collection", info="Pick one, or type a new name.",
                                          elem_id="rag-collection", scale=3)
        parts["open_button"] = gr.Button("Open collection", elem_id="rag-open", scale=1)
    parts["status"] = gr.Markdown("No collection open yet.", elem_id="rag-status")
    return parts


def _build_documents() -> dict[str, Any]:
    """Drop box and buttons, the build log across the page, then the files and the chunks they were cut into."""
    parts: dict[str, Any] = {}
    with gr.Row(equal_height=False):
        # No file_types: Gradio would reject a whole drop for one unsupported file; each file is refused by
        # itself instead (rag.ingest says which kinds are read), and the rest are indexed.
        parts["upload"] = gr.File(file_count="multiple", label="Drop documents here", elem_id="rag-upload",
                                  scale=3)
        with gr.Column(scale=1, min_width=200):
            parts["build_button"] = gr.Button("2. Build index", variant="primary", elem_id="rag-build")
            parts["demo_button"] = gr.Button("Use the demo documents", elem_id="rag-demo-docs")
            parts["preview_button"] = gr.Button("Preview chunks", elem_id="rag-preview")
            parts["cancel_button"] = gr.Button("Cancel", variant="stop", elem_id="rag-cancel", min_width=80)
    parts["pdf_password"], parts["confirm_build"] = _build_options()
    parts["build_log"] = gr.Markdown(elem_id="rag-build-log")
    with gr.Row(equal_height=False):
        parts["files_table"] = gr.Dataframe(headers=FILE_HEADERS, interactive=False, wrap=True, max_height=360,
                                            column_widths=["75%", "25%"], label="Files in the collection",
                                            elem_id="rag-files", scale=1, min_width=220,
                                            visible="hidden")
        with gr.Column(scale=3):
            parts["preview_text"] = gr.Markdown(elem_id="rag-preview-text")
            parts["preview_table"] = gr.Dataframe(headers=CHUNK_HEADERS, interactive=False, wrap=True,
                                                  max_height=360, column_widths=CHUNK_WIDTHS, label="Chunks",
                                                  elem_id="rag-preview-table", visible="hidden")
    return parts


def _build_manage_files() -> dict[str, Any]:
    """Remove files from the open collection, and the re-index offer after a chunking change."""
    parts: dict[str, Any] = {}
    with gr.Row(equal_height=True):
        parts["indexed"] = gr.Dropdown(choices=[], multiselect=True, label="Indexed files (pick the ones to remove)",
                                       elem_id="rag-indexed", scale=3)
        parts["remove_button"] = gr.Button("Remove selected", elem_id="rag-remove", scale=1)
    parts["reindex_button"] = gr.Button("Re-index with the new settings", visible=False, variant="stop",
                                        elem_id="rag-reindex")
    return parts


def _build_pipeline(spec: PipelineSpec) -> dict[str, Any]:
    """The stage cards: the fixed stages in a row, then the draggable post-retrieval steps beside prompt/generate."""
    forms: dict[str, SettingsForm] = {}
    enabled: dict[str, gr.Checkbox] = {}
    checks: dict[str, gr.Markdown] = {}
    gr.Markdown("### Pipeline\nEach card is a stage. Steps run after the search from the top down; the ones below "
                "the line are the palette, not used. Drag a step (⋮⋮ handle) onto the line to move it in or out, "
                "or onto another step to swap the two; then **Apply pipeline**. A ⚠️ on a card says what in the "
                "pipeline works against it.")
    with gr.Row(equal_height=False):
        for name in ("load", "split", "embed", "index", "retrieve"):
            with gr.Column(min_width=220), gr.Group(elem_id=f"rag-card-{name}"):
                gr.Markdown(f"**{STAGE_TITLES[name]}**")
                forms[name] = _stage_card(name)
                checks[name] = _check_box(name, spec)
    with gr.Row(equal_height=False):
        with gr.Column(scale=2):
            order = _build_post_steps(spec, forms, enabled, checks)
        with gr.Column(scale=3):
            for name in ("prompt", "generate"):
                with gr.Group(elem_id=f"rag-card-{name}"):
                    gr.Markdown(f"**{STAGE_TITLES[name]}**")
                    forms[name] = _stage_card(name)
                    checks[name] = _check_box(name, spec)
    return {"forms": forms, "enabled": enabled, "order": order, "checks": checks}


def _check_box(stage: str, spec: PipelineSpec) -> gr.Markdown:
    """Where the pipeline's self-check speaks about this card (empty when all is well)."""
    return gr.Markdown(check_text(stage, problems_by_stage(spec)), elem_id=f"rag-check-{stage}")


def check_text(stage: str, problems: dict[str, list[str]]) -> str:
    return "\n\n".join(f"⚠️ {message}" for message in problems.get(stage, []))


def order_string(spec: PipelineSpec) -> str:
    """The cards' order as the page holds it: the steps in use, the palette's divider, then the unused steps."""
    used = [s.name for s in spec.post if s.enabled]
    return ",".join([*used, PALETTE_DIVIDER, *(s.name for s in spec.post if not s.enabled)])


def _build_post_steps(spec: PipelineSpec, forms: dict[str, SettingsForm], enabled: dict[str, gr.Checkbox],
                      checks: dict[str, gr.Markdown]) -> gr.Textbox:
    """One card per post-retrieval step in a gr.Draggable, each with our own ``rag-step-<name>`` elem_id (the
    order scripts above read them): the steps in use, the divider card, then the palette of unused steps.

    Where a card sits is the one way to say whether it runs and when; the (hidden) checkboxes only carry that
    to the server and to API callers, and the (hidden) order box holds the order the server last saw."""
    gr.Markdown("**After the search** (top runs first)")
    steps = {s.name: s for s in spec.post}
    with gr.Draggable(elem_id=POST_CONTAINER_ID):
        for name in order_string(spec).split(","):
            if name == PALETTE_DIVIDER:
                with gr.Group(elem_id=f"rag-step-{PALETTE_DIVIDER}", elem_classes=["rag-step", "rag-divider"]):
                    gr.Markdown("**▲ In the pipeline · Palette: not used ▼** — drop a step on this line to move it "
                                "across (in or out); drop it on another step to swap the two.")
                continue
            with gr.Group(elem_id=f"rag-step-{name}", elem_classes=["rag-step"]):
                gr.Markdown(f"**{STAGE_TITLES[name]}**")
                enabled[name] = gr.Checkbox(value=steps[name].enabled, label="used", visible=False,
                                            elem_id=f"rag-enable-{name}")
                forms[name] = _stage_card(name)
                checks[name] = _check_box(name, spec)
    return gr.Textbox(value=order_string(spec), label="Order", interactive=False, elem_id="rag-order",
                      visible="hidden")


def _build_pipeline_io(spec: PipelineSpec) -> dict[str, Any]:
    """Apply, export and import of the pipeline, and its JSON for reading."""
    parts: dict[str, Any] = {}
    with gr.Row(equal_height=True):
        parts["apply_button"] = gr.Button("Apply pipeline", variant="primary", elem_id="rag-apply")
        parts["export_button"] = gr.DownloadButton("Export pipeline JSON", value=_spec_file(spec),
                                                   elem_id="rag-export")
        parts["import_file"] = gr.File(file_types=[".json"], label="Import pipeline JSON", elem_id="rag-import",
                                       height=100)
    with gr.Accordion("Pipeline spec (JSON)", open=False):
        parts["spec_code"] = gr.Code(value=spec.to_json(), language="json", interactive=False, elem_id="rag-spec")
    return parts


def _answering_model_note() -> str:
    """The tab answers with the bundled model: say honestly what so small a model can do (one rule, one text)."""
    from engine.models import BUNDLED_ID
    from services.model_notes import small_model_note

    return small_model_note(BUNDLED_ID)


def _build_ask() -> dict[str, Any]:
    """The question box, Test retrieval and Ask, and what they show: hits, the answer and its sources."""
    gr.Markdown("### 3. Ask")
    parts: dict[str, Any] = {"question": gr.Textbox(label="Question", placeholder="What do my documents say about…?",
                                                    elem_id="rag-question")}
    with gr.Row():
        parts["ask_button"] = gr.Button("Ask", variant="primary", elem_id="rag-ask")
        parts["search_button"] = gr.Button("Only show the passages found", elem_id="rag-search")
    gr.Markdown(_answering_model_note(), elem_id="rag-model-note")  # what the bundled 135M model can and cannot do
    parts["answer_text"] = gr.Markdown(elem_id="rag-answer")
    parts["sources"] = gr.Dataframe(headers=SOURCE_HEADERS, interactive=False, wrap=True, max_height=400,
                                    column_widths=SOURCE_WIDTHS, label="Sources given to the model",
                                    elem_id="rag-sources", visible="hidden")
    # Hidden, not removed, until a PDF page is shown: scripts and tests find it by its elem_id either way. The
    # whole page fits on a screen (where the quote stands shows at a glance); full screen reads it closely.
    parts["page_image"] = gr.Image(None, format="png", interactive=False, label="Page", buttons=["fullscreen"],
                                   height=900, elem_id="rag-page-image", visible="hidden")
    parts["page_view"] = gr.HTML(f"<p><small>{PAGE_HINT}</small></p>", elem_id="rag-page-view")
    parts["source_refs"], parts["hit_refs"] = gr.State([]), gr.State([])
    parts["search_log"] = gr.Markdown(elem_id="rag-search-log")
    parts["hits"] = gr.Dataframe(headers=HIT_HEADERS, interactive=False, wrap=True, max_height=400,
                                 column_widths=HIT_WIDTHS, label="Passages found (meaning, keyword, combined and "
                                 "rerank scores: the rerank step, when on, decides the order)", elem_id="rag-hits",
                                 visible="hidden")
    return parts


def _build_options() -> tuple[gr.Textbox, gr.Checkbox]:
    """The "go on with a long build" tick; the PDF password box and the server's limits in a closed accordion."""
    confirm_build = gr.Checkbox(False, label="Go on even if the build takes long",
                                info="Long builds ask first; tick this and press Build index again to start.",
                                elem_id="rag-confirm-build")
    with gr.Accordion("PDF password", open=False, elem_id="rag-pdf-options"):
        pdf_password = gr.Textbox("", type="password", label="PDF password (for encrypted PDFs)",
                                  info="Used for this build or preview only; never saved with the collection or "
                                       "exported.", elem_id="rag-pdf-password")
    limits_panel("rag-limits")
    return pdf_password, confirm_build


def build_question(ws: Workspace, name: str, uploads: list[tuple[str, str]], spec_dict: dict[str, Any],
                   confirm: bool) -> str:
    """Before a build is queued: the disk quota, then "this will take about N minutes — go on?" ("" to go on).

    The estimate (characters → chunks → seconds at this server's measured embedding rate) uses the
    collection's own pipeline when it exists, else the cards'; files it already holds unchanged are skipped.
    """
    path = ws.index_path(name)
    index = collections.open_collection(path) if (path / MANIFEST).exists() else None
    spec = index.spec if index is not None else PipelineSpec.from_dict(spec_dict)
    known = {source: record.sha256 for source, record in index.files.items()} if index is not None else None
    bound = limits().confirm_build_seconds
    estimate = plan_build(uploads, spec, known=known, ask_after=math.inf if confirm else bound)  # confirmed: no timing
    upload_bytes = sum(Path(p).stat().st_size for _, p in uploads)
    dimension = REGISTRY[spec.embed.model].dimension
    check_room(ws, upload_bytes + estimate.added_bytes(dimension), f"these {len(uploads)} file(s) and their index")
    if confirm or estimate.seconds <= bound:
        return ""
    return (f"⏳ **This will take about {format_duration(estimate.seconds)} — go on?** {estimate.files} new file(s), "
            f"about {estimate.chunks:,} chunks to embed at {estimate.rate:,.1f} chunks/s on this server; builds "
            f"estimated over {bound:,} s ask first (limit *{limit_label('confirm_build_seconds')}*). Tick **Go on "
            "even if the build takes long** and press **Build index** again, or drop fewer "
            "files.")


# ----------------------------------------------------------------------------------------- errors


def _user_facing(exc: Exception) -> Exception:
    """rag's index errors are written for the user: show them as such, not as 'something unexpected'."""
    from rag.index import IndexError_

    return ValueError(str(exc)) if isinstance(exc, IndexError_) else exc


def fading_error(exc: Exception, title: str) -> gr.Error:
    """``ui.common.user_error`` for this tab, fading after :data:`TOAST_SECONDS` when its message is meant for the
    user (what went wrong is also in the build log or status line); an unexpected error stays until closed."""
    error = user_error(_user_facing(exc), title)
    if isinstance(_user_facing(exc), USER_ERRORS):
        error.duration = TOAST_SECONDS
    return error


def handler_errors(title: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Every exception of this tab's handlers as a titled toast (:func:`fading_error`), never a raw trace.

    Many handlers are async generators (job followers), so many visitors following builds hold no worker
    threads while they wait; ``wrap_calls`` wraps those as well. A ``gr.Error`` raised on purpose (the read-only
    demo's refusal) passes through unchanged.
    """
    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        return wrap_calls(fn, on_error=lambda exc: fading_error(exc, title))

    return wrap


# ----------------------------------------------------------------------------------------- logic


def _spec_file(spec: PipelineSpec) -> str:
    """The spec as a download (in the app's download root, pruned after an hour); it holds no password."""
    path = served_folder() / "rag-pipeline.json"
    spec.to_json(path)
    return str(path)


def spec_from_form(c: RagTabComponents, values: tuple[Any, ...]) -> PipelineSpec:
    """Assemble and validate a spec from the form values (order box, enabled boxes, then each stage's form)."""
    values = list(values)
    order = [n.strip() for n in str(values.pop(0) or "").split(",") if n.strip()]
    flags = {name: bool(values.pop(0)) for name in c.enabled}
    if PALETTE_DIVIDER in order:  # the page's order: the steps above the divider run, the palette's do not
        used = set(order[: order.index(PALETTE_DIVIDER)])
        order = [n for n in order if n != PALETTE_DIVIDER]
        flags = {name: name in used for name in flags}
    params: dict[str, dict[str, Any]] = {}
    for name, form in c.forms.items():
        n = len(form.components)
        params[name], values = form.values(values[:n]), values[n:]
    stages = []
    for name in FIXED_STAGES:
        stages.append({"stage": name, "params": params[name]})
        if name == "retrieve":
            for step in order or list(POST_STEPS):
                stages.append({"stage": step, "enabled": flags[step], "params": params[step]})
    return PipelineSpec.from_dict({"stages": stages})


def form_updates(c: RagTabComponents, spec: PipelineSpec) -> list[Any]:
    """New values for every control in ``form_components()`` order."""
    out: list[Any] = [order_string(spec)]
    out.extend(next(s.enabled for s in spec.post if s.name == name) for name in c.enabled)
    for name, form in c.forms.items():
        out.extend(form.updates_for(spec[name]))
    return out


def _status(index: RagIndex) -> str:
    """The collection by name and version (never its folder on the server)."""
    return (f"**{index.name}** (version {index.version}): {len(index.files)} file(s), {len(index.chunks)} chunks, "
            f"embedder `{index.embedder_name}`.")


def _state(index: RagIndex) -> dict[str, Any]:
    return {"collection": index.name, "version": index.version}


def _files_update(index: RagIndex | None) -> Any:
    return gr.Dropdown(choices=sorted(index.files) if index else [], value=[])


def check_new_collection(ws: Workspace, name: str) -> None:
    """Refuse a new collection beyond the visitor's quota (an existing one can always be changed)."""
    path = ws.index_path(name)
    if (path / MANIFEST).exists():
        return
    require_write("Creating a collection")
    limits().check("max_collections", len(ws.index_names()) + 1, "Counting this one, the number of your collections",
                   "Add the documents to one of your existing collections instead.")


def open_or_create(name: str, spec_dict: dict[str, Any], ws: Workspace) -> tuple[RagIndex, str]:
    """The current version of one of the visitor's collections (created empty, with the cards' spec, when new)."""
    path = ws.index_path(name)
    note = "Opened. Its saved pipeline is loaded into the cards."
    if not (path / MANIFEST).exists():
        check_new_collection(ws, name)
        try:
            RagIndex.create(path, PipelineSpec.from_dict(spec_dict), timeout=10)
            note = "New collection created with the pipeline below. Drop files and press **Build index**."
        except CollectionExistsError:
            pass  # someone created it a moment ago: open theirs
    return collections.open_collection(path), note


def read_collection(ws: Workspace, state: dict[str, Any] | None) -> RagIndex:
    """The open collection's current version, from the shared read-only cache."""
    name = (state or {}).get("collection")
    if not name:
        raise ValueError("Open a collection first (top of this tab).")
    return collections.open_collection(ws.index_path(name))


def _target(state: dict[str, Any] | None, name: str | None) -> str:
    """The collection a change goes to: the open one, else the name typed in the picker."""
    chosen = (state or {}).get("collection") or (name or "").strip()
    if not chosen:
        raise ValueError("Pick or type a collection name first (top of this tab).")
    return str(chosen)


def _uploads(files: list[Any] | None) -> list[tuple[str, str]]:
    """``(file name, path)`` of each dropped file; a name dropped twice counts once (the last copy)."""
    if not files:
        raise ValueError("Drop one or more documents on the upload area first.")
    by_name: dict[str, str] = {}
    for f in files:
        path = Path(getattr(f, "name", None) or str(f))
        by_name[path.name] = str(path)  # a later copy replaces an earlier one, in the first one's place
    return list(by_name.items())


def upload_note(files: list[Any] | None) -> str:
    """Said as soon as files are dropped: which of them cannot be read (they are left out of the build)."""
    names = [name for name, _ in _uploads(files)] if files else []
    odd = [n for n in names if Path(n).suffix.lower() not in SUPPORTED_EXTENSIONS]
    if not odd:
        return f"{len(names)} file(s) ready: press **Build index**." if names else ""
    lines = [f"- ⚠️ {literal_markdown(n)}: this kind of file cannot be read, so it will be left out." for n in odd]
    ready = len(names) - len(odd)
    head = f"{ready} file(s) ready: press **Build index**." if ready else "No file here can be read."
    return "\n".join([head, *lines, f"\nSupported: {' '.join(SUPPORTED_EXTENSIONS)}"])


def file_rows(index: RagIndex | None) -> list[list[Any]]:
    """The collection's files and how many chunks each gave, by name."""
    if index is None:
        return []
    return [[source, record.chunks] for source, record in sorted(index.files.items())]


def chunk_rows(index: RagIndex | None) -> tuple[str, list[list[Any]]]:
    """What the chunk table shows of a collection: the first chunks of each file, with a line saying so."""
    if index is None or not index.chunks:
        return "", []
    rows: list[list[Any]] = []
    shown: dict[str, int] = {}
    for chunk in index.chunks:
        if shown.get(chunk.source, 0) >= CHUNKS_SHOWN_PER_FILE or len(rows) >= MAX_CHUNK_ROWS:
            continue
        shown[chunk.source] = shown.get(chunk.source, 0) + 1
        rows.append([chunk.source, chunk.ordinal + 1, _where(chunk.page, chunk.section), len(chunk.text),
                     _excerpt(chunk.text, 300), ocr_label(chunk, index.documents.get(chunk.source))])
    note = (f"**Chunks** of **{literal_markdown(index.name)}**: {len(index.chunks):,} from {len(index.files)} "
            f"file(s); the first {CHUNKS_SHOWN_PER_FILE} of each file below.")
    return note, rows


def _collection_views(index: RagIndex | None) -> list[Any]:
    """Files table, chunk note and chunk table for a collection (after Open, a build, a removal)."""
    note, rows = chunk_rows(index)
    files = file_rows(index)
    return [_table(files), note, _table(rows)]


def _table(rows: list[list[Any]]) -> Any:
    """A table's new rows, shown only when there are some (an empty table with headers says nothing). Hidden, not
    removed: the page keeps the element, so scripts and tests find it by its elem_id either way."""
    return gr.Dataframe(value=rows, visible=True if rows else "hidden")


def preview_chunks(files: list[Any] | None, spec: PipelineSpec, pdf_password: str = "") -> tuple[str, Any]:
    """Load and split the dropped files with the current cards' settings (nothing is embedded or kept)."""
    load = spec.stages["load"]
    chunks, refused, sections = [], [], {}
    tokenizer = None
    if spec.split.method == "token":
        from rag.embedders import get_embedder

        tokenizer = get_embedder(spec.embed.model).tokenizer
    for name, path in _uploads(files):
        doc = load_file(path, name=name, pdf_password=pdf_password, max_mb=load.max_file_mb, load=load)
        if isinstance(doc, LoadedDocument):
            chunks.extend(split_document(doc, spec.split, tokenizer=tokenizer, children=spec.child_split()))
            sections[doc.source] = doc.sections
            refused.extend(f"- ⚠️ {literal_markdown(doc.source)}: {literal_markdown(note)}" for note in doc.notes)
        else:
            refused.append(f"- ⚠️ {doc.message}")
    p = preview(chunks, first_n=3)
    lines = [f"**Preview** — {p.summary()}"]
    if p.histogram:
        lines.append("Lengths: " + ", ".join(f"{label}: {n}" for label, n in p.histogram if n))
    lines.extend(refused)
    rows = [[src, c.ordinal + 1, _where(c.page, c.section), len(c.text), _excerpt(c.text, 300),
             ocr_label(c, sections.get(src))] for src, first in p.first_chunks.items() for c in first]
    return "\n\n".join(lines), _table(rows)


def _where(page: int | None, section: str | None) -> str:
    return " · ".join(x for x in (f"p. {page}" if page is not None else "", section or "") if x)


def _excerpt(text: str, n: int = 240) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[:n].rsplit(" ", 1)[0] + " …"


def _hit_row(hit: Hit) -> list[Any]:
    def fmt(x: float | None, digits: int = 3) -> str:
        return "—" if x is None else f"{x:.{digits}f}"

    return [hit.rank, hit.chunk.source, _where(hit.chunk.page, hit.chunk.section), fmt(hit.dense_score),
            fmt(hit.bm25_score, 2), fmt(hit.fused_score, 4), fmt(hit.rerank_score, 2), _excerpt(hit.matched.text)]


def _require_chunks(index: RagIndex) -> RagIndex:
    if not index.chunks:
        raise ValueError("This collection is empty: drop documents and press **Build index** first.")
    return index


# ----------------------------------------------------------------------------------------- following jobs


def done_line(result: dict[str, Any] | None) -> str:
    """The last line of a finished index job, with the counts an API caller reads."""
    if result is None:
        return "**Done**."
    if result.get("action") == "apply":
        if result.get("needs_reindex"):
            return ("**Not applied**: the chunking settings changed, so the stored chunks no longer match. Press "
                    "**Re-index** to rebuild them (unchanged chunks keep their vectors).")
        return f"**Done**: pipeline applied and saved with the collection (version {result['version']})."
    return (f"**Done** in {result['seconds']:.1f}s: the collection holds {result['files']} file(s), "
            f"{result['chunks']} chunks ({result['embedded']} embedded, {result['reused']} reused, "
            f"{len(result['refused'])} refused) — version {result['version']}.")


@dataclass
class JobView:
    """What a page shows of an index job: one line per file or note, then a live progress line."""

    lines: list[str] = field(default_factory=list)
    live: str = ""
    failed: str | None = None

    def add(self, event: JobEvent) -> None:
        if isinstance(event, Queued):
            self.live = f"Queued (number {event.position} in line for indexing)…" if event.position else "Queued…"
        elif isinstance(event, Progress):
            self.live = progress_line(event)
        elif isinstance(event, Log):
            self.lines.append(f"- {'⚠️' if event.level == 'warning' else '✅'} {event.message}")
        elif isinstance(event, Failed):
            self.failed = event.reason
            self.live = f"**Failed**: {event.reason}"
        elif isinstance(event, Cancelled):
            self.live = "**Cancelled**: the collection is unchanged."

    def text(self, job: JobRecord) -> str:
        live = self.live
        if job.status == "done":
            live = done_line(read_result(job))
        elif job.status == "cancelling":
            live += " — cancel requested, stopping at the next batch…"
        return hide_paths("\n".join([*self.lines, "", live]))


def _poll(ws: Workspace, job_id: str, offset: int) -> tuple[JobRecord, list[JobEvent], int]:
    """The job's record (reconciled: a vanished worker reads as failed) and its events after ``offset``."""
    store = ws.store()
    job = index_job(ws, job_id)
    if job.status == "queued":
        store.dispatch()
    events, offset = EventLog(job.events_path).iter_from(offset)
    return job, list(events), offset


async def follow_job(ws: Workspace, job_id: str) -> AsyncIterator[tuple[JobRecord, str, bool]]:
    """(job, log text, finished) each time the text changes, until the job ends; polls without holding a thread."""
    view, offset, shown = JobView(), 0, None
    while True:
        job, events, offset = await anyio.to_thread.run_sync(_poll, ws, job_id, offset)
        for event in events:
            view.add(event)
        finished = job.finished or job.status == "needs_token"
        text = view.text(job)
        if text != shown or finished:
            shown = text
            yield job, text, finished
        if finished:
            if job.status == "failed":  # the reason stays in the log above: the toast may fade
                raise gr.Error(hide_paths(view.failed or job.error or "The index job failed."),
                               duration=TOAST_SECONDS, title="The index job failed")
            return
        await asyncio.sleep(POLL_SECONDS)


def _latest(ws: Workspace, name: str) -> RagIndex | None:
    """The collection's current version after a job (None when it was never created)."""
    path = ws.index_path(name)
    return collections.open_collection(path) if (path / MANIFEST).exists() else None


async def submit_and_follow(ws: Workspace, name: str, action: str,
                            **kwargs: Any) -> AsyncIterator[tuple[str, str, RagIndex | None]]:
    """Queue one change as an index job and stream (job id, log text, the collection once it ended)."""
    job = await anyio.to_thread.run_sync(functools.partial(submit_index_job, ws, name, action, **kwargs))
    async for _, text, finished in follow_job(ws, job.id):
        latest = await anyio.to_thread.run_sync(_latest, ws, name) if finished else None
        yield job.id, text, latest


# ----------------------------------------------------------------------------------------- register


def register(c: RagTabComponents, demo_triggers: list[Any] | None = None) -> None:
    """Wire every event; the changes stream their index job, the rest answer at once.

    ``demo_triggers`` are other events (the app guide's button) that start the demo documents too."""
    c.collection.focus(collection_choices, None, c.collection, api_visibility="private", show_progress="hidden")
    _register_open_and_import(c)
    _register_build_and_cancel(c)
    _register_demo(c, demo_triggers)
    _register_remove_and_reindex(c)
    _register_apply(c)
    _register_live_checks(c)
    _register_questions(c)


def _spec_views(spec: PipelineSpec) -> list[Any]:
    """Values for ``RagTabComponents.spec_outputs()``: state, JSON, export file, and each card's checks."""
    problems = problems_by_stage(spec)
    return [spec.to_dict(), spec.to_json(), _spec_file(spec),
            *(check_text(stage, problems) for stage in CHECKED_STAGES)]


def _register_open_and_import(c: RagTabComponents) -> None:
    """Open (or create) a collection, import a spec, preview chunks: none of these writes an index job."""
    form = c.form_components()
    spec_outputs = c.spec_outputs()

    @handler_errors("Could not open the collection")
    def on_open(name: str, spec_dict: dict[str, Any], request: gr.Request,
                profile: gr.OAuthProfile | None = None) -> list[Any]:
        ws = workspace_of(request, profile)
        index, note = open_or_create(name, spec_dict, ws)
        return [_state(index), f"{_status(index)}\n\n{note}", _files_update(index),
                gr.Dropdown(choices=ws.index_names(), value=index.name), gr.Button(visible=False),
                *_collection_views(index), *_spec_views(index.spec), *form_updates(c, index.spec)]

    open_outputs = [c.collection_state, c.status, c.indexed, c.collection, c.reindex_button, *_views(c),
                    *spec_outputs, *form]
    endpoint(c.open_button.click, on_open, [c.collection, c.spec_state], open_outputs, api_name="rag_open").then(
        None, c.order, c.order, js=_APPLY_ORDER_JS, api_visibility="private")

    @handler_errors("Could not open the collection")
    def on_pick(name: str, state: dict[str, Any] | None, spec_dict: dict[str, Any], request: gr.Request,
                profile: gr.OAuthProfile | None = None) -> list[Any]:
        """Picking an existing collection (or the guide picking one) opens it; a new name waits for Build."""
        ws = workspace_of(request, profile)
        name = (name or "").strip()
        if not name or (state or {}).get("collection") == name or not (ws.index_path(name) / MANIFEST).exists():
            return [gr.skip()] * len(open_outputs)
        return on_open(name, spec_dict, request, profile)

    c.collection.change(on_pick, [c.collection, c.collection_state, c.spec_state], open_outputs,
                        api_visibility="private", show_progress="hidden").then(
        None, c.order, c.order, js=_APPLY_ORDER_JS, api_visibility="private")

    @handler_errors("Could not import the pipeline")
    def on_import(file: Any, state: dict[str, Any] | None, request: gr.Request,
                  profile: gr.OAuthProfile | None = None) -> list[Any]:
        if not file:
            return [gr.skip()] * (len(spec_outputs) + len(form) + 1)
        check_upload(getattr(file, "name", None) or str(file))  # API clients skip the browser's size check
        spec = PipelineSpec.load(getattr(file, "name", None) or str(file))
        note = "Pipeline imported. Press **Apply pipeline** to use it with the open collection."
        index = read_collection(workspace_of(request, profile), state) if state else None
        if index is not None and spec.embed.model != index.embedder_name:
            note += f" ⚠️ It uses embedder `{spec.embed.model}`; this collection was built with " \
                    f"`{index.embedder_name}`, so applying it will offer to re-index."
        return [note, *_spec_views(spec), *form_updates(c, spec)]

    endpoint(c.import_file.upload, on_import, [c.import_file, c.collection_state], [c.status, *spec_outputs, *form],
             api_name="rag_import_pipeline").then(
        None, c.order, c.order, js=_APPLY_ORDER_JS, api_visibility="private")

    @handler_errors("Could not preview the chunks")
    def on_preview(*values: Any) -> tuple[str, Any]:
        *values, files, pdf_password = values
        return preview_chunks(files, spec_from_form(c, values), pdf_password or "")

    endpoint(c.preview_button.click, on_preview, [*form, c.upload, c.pdf_password],
             [c.preview_text, c.preview_table], api_name="rag_preview", js=_READ_ORDER_JS)


def _register_build_and_cancel(c: RagTabComponents) -> None:
    """Build and Cancel: a build is an index job this page follows to its end (Cancel stops it before it saves)."""

    @handler_errors("Could not build the index")
    async def on_build(files: list[Any] | None, state: dict[str, Any] | None, name: str,
                       spec_dict: dict[str, Any], pdf_password: str | None, confirm: bool | None,
                       request: gr.Request, profile: gr.OAuthProfile | None = None) -> AsyncIterator[list[Any]]:
        """Check quota and duration, stage the uploads, queue the job, stream its log until it ends."""
        require_write("Building an index")
        ws, target, uploads = workspace_of(request, profile), _target(state, name), _uploads(files)
        yield [gr.skip(), gr.skip(), f"Checking {len(uploads)} file(s)…", *[gr.skip()] * 6]
        await anyio.to_thread.run_sync(check_new_collection, ws, target)
        question = await anyio.to_thread.run_sync(build_question, ws, target, uploads, spec_dict, bool(confirm))
        if question:  # a long build asks before it starts; nothing is queued
            yield [gr.skip(), gr.skip(), question, *[gr.skip()] * 6]
            return
        async for job_id, log, index in submit_and_follow(ws, target, "add", uploads=uploads, visitor=visitor_of(
                request, profile), spec=PipelineSpec.from_dict(spec_dict), pdf_password=pdf_password or ""):
            if index is None:
                yield [gr.skip(), job_id, log, *[gr.skip()] * 6]
            else:  # the drop box is emptied: what it held is in the collection (or refused above)
                yield [_state(index), None, log, _status(index), _files_update(index), *_collection_views(index),
                       None]

    endpoint(c.build_button.click, on_build,
             [c.upload, c.collection_state, c.collection, c.spec_state, c.pdf_password, c.confirm_build],
             [c.collection_state, c.job_state, c.build_log, c.status, c.indexed, *_views(c), c.upload],
             api_name="rag_build", concurrency_limit=None, show_progress="hidden")
    c.upload.upload(upload_note, c.upload, c.build_log, api_visibility="private", show_progress="hidden")

    @handler_errors("Could not cancel")
    def on_cancel(job_id: str | None, state: dict[str, Any] | None, request: gr.Request,
                  profile: gr.OAuthProfile | None = None) -> str:
        return cancel_job(workspace_of(request, profile), job_id, state)

    endpoint(c.cancel_button.click, on_cancel, [c.job_state, c.collection_state], c.build_log, api_name="rag_cancel")


def _views(c: RagTabComponents) -> list[Any]:
    """The components :func:`_collection_views` fills, in its order."""
    return [c.files_table, c.preview_text, c.preview_table]


def _register_demo(c: RagTabComponents, triggers: list[Any] | None = None) -> None:
    """"Use the demo documents": the collection ``demo-docs`` built from the app's own short documents, as an
    ordinary index job this page follows (or opened at once when it is already built)."""

    @handler_errors("Could not build the demo collection")
    async def on_demo(request: gr.Request, profile: gr.OAuthProfile | None = None) -> AsyncIterator[list[Any]]:
        require_write("Building an index")
        ws = workspace_of(request, profile)
        started = await anyio.to_thread.run_sync(start_demo_collection, ws, visitor_of(request, profile))
        if started == DEMO_COLLECTION:
            index = await anyio.to_thread.run_sync(_latest, ws, DEMO_COLLECTION)
            yield [gr.Dropdown(value=DEMO_COLLECTION), _state(index), None,
                   "The demo documents are already in the collection **demo-docs**: ask a question below.",
                   _status(index), _files_update(index), *_collection_views(index)]
            return
        yield [gr.Dropdown(value=DEMO_COLLECTION), gr.skip(), started, "Building **demo-docs**…",
               *[gr.skip()] * 5]
        async for _, log, finished in follow_job(ws, started):
            index = await anyio.to_thread.run_sync(_latest, ws, DEMO_COLLECTION) if finished else None
            if index is None:
                yield [gr.skip(), gr.skip(), started, log, *[gr.skip()] * 5]
            else:
                yield [gr.skip(), _state(index), None, log + "\n\nNow ask a question below, e.g. *What does RAG mean?*",
                       _status(index), _files_update(index), *_collection_views(index)]

    # Private: API callers build with rag_build. The guide's button runs this same handler, so the page follows.
    outputs = [c.collection, c.collection_state, c.job_state, c.build_log, c.status, c.indexed, *_views(c)]
    gr.on([c.demo_button.click, *(triggers or [])], on_demo, None, outputs, api_visibility="private",
          concurrency_limit=None, show_progress="hidden")


def _register_remove_and_reindex(c: RagTabComponents) -> None:
    """Remove and Re-index: index jobs too, applied to the collection's latest version, followed to their end."""

    @handler_errors("Could not remove the files")
    async def on_remove(state: dict[str, Any] | None, selected: list[str] | None,
                        request: gr.Request, profile: gr.OAuthProfile | None = None) -> AsyncIterator[list[Any]]:
        require_write("Removing files")
        ws = workspace_of(request, profile)
        target = await anyio.to_thread.run_sync(lambda: read_collection(ws, state).name)
        async for job_id, log, index in submit_and_follow(ws, target, "remove", sources=selected or [],
                                                          visitor=visitor_of(request, profile)):
            if index is None:
                yield [gr.skip(), job_id, log, *[gr.skip()] * 5]
            else:
                yield [_state(index), None, log, _status(index), _files_update(index), *_collection_views(index)]

    endpoint(c.remove_button.click, on_remove, [c.collection_state, c.indexed],
             [c.collection_state, c.job_state, c.build_log, c.status, c.indexed, *_views(c)],
             api_name="rag_remove", concurrency_limit=None, show_progress="hidden")

    @handler_errors("Could not re-index")
    async def on_reindex(state: dict[str, Any] | None, spec_dict: dict[str, Any],
                         request: gr.Request, profile: gr.OAuthProfile | None = None) -> AsyncIterator[list[Any]]:
        require_write("Re-indexing")
        ws = workspace_of(request, profile)
        target = await anyio.to_thread.run_sync(lambda: read_collection(ws, state).name)
        async for job_id, log, index in submit_and_follow(ws, target, "reindex", visitor=visitor_of(request, profile),
                                                          spec=PipelineSpec.from_dict(spec_dict)):
            if index is None:
                yield [gr.skip(), job_id, log, gr.Button(visible=True), gr.skip()]
            else:
                yield [_state(index), None, log, gr.Button(visible=False), _status(index)]

    endpoint(c.reindex_button.click, on_reindex, [c.collection_state, c.spec_state],
             [c.collection_state, c.job_state, c.build_log, c.reindex_button, c.status],
             api_name="rag_reindex", concurrency_limit=None)


def cancel_job(ws: Workspace, job_id: str | None, state: dict[str, Any] | None) -> str:
    """Stop this page's index job, or else the visitor's running job for the open collection (e.g. after a reload)."""
    from engine.jobs import JobError

    job = index_job(ws, job_id) if job_id else None
    if job is None or job.finished:
        name = (state or {}).get("collection")
        active = [j for j in index_jobs(ws, active_only=True) if not name or j.payload.get("collection") == name]
        job = active[0] if active else None
    if job is None:
        return "Nothing to cancel: no index job of yours is waiting or running for this collection."
    try:
        ws.store().cancel(job.id)
    except JobError:
        return "That index job has already finished; there is nothing to cancel."
    return "Cancel requested: the job stops at its next batch, and the collection stays as it was before it."


def _register_apply(c: RagTabComponents) -> None:
    """Apply: checked against the collection's saved pipeline first; a spec that can be saved goes as a job."""
    form = c.form_components()
    spec_outputs = c.spec_outputs()

    @handler_errors("Could not apply the pipeline")
    async def on_apply(request: gr.Request, profile: gr.OAuthProfile | None, *values: Any,
                       ) -> AsyncIterator[list[Any]]:
        *values, state = values
        spec = spec_from_form(c, tuple(values))
        if not state:
            yield [gr.skip(), gr.skip(), "Pipeline applied.", gr.Button(visible=False), *_spec_views(spec)]
            return
        require_write("Changing a collection's pipeline")
        ws = workspace_of(request, profile)
        index = await anyio.to_thread.run_sync(read_collection, ws, state)
        refusal = apply_refusal(index, spec)
        if refusal is not None:
            yield [_state(index), gr.skip(), refusal, gr.Button(visible=True), *_spec_views(spec)]
            return
        if spec == index.spec:
            yield [_state(index), gr.skip(), f"{_status(index)}\n\nPipeline applied (nothing changed).",
                   gr.Button(visible=False), *_spec_views(spec)]
            return
        async for job_id, log, latest in submit_and_follow(ws, index.name, "apply", spec=spec,
                                                           visitor=visitor_of(request, profile)):
            if latest is None:
                yield [gr.skip(), job_id, log, gr.skip(), *_spec_views(spec)]
            else:
                stale = apply_refusal(latest, spec) is not None
                yield [_state(latest), None, f"{_status(latest)}\n\n{log.strip().splitlines()[-1]}",
                       gr.Button(visible=stale), *_spec_views(spec)]

    # The order box must be the first input: the JS hook overwrites args[0] with the on-screen order.
    endpoint(c.apply_button.click, on_apply, [*form, c.collection_state],
             [c.collection_state, c.job_state, c.status, c.reindex_button, *spec_outputs],
             api_name="rag_apply_pipeline", js=_READ_ORDER_JS, concurrency_limit=None).then(
        lambda spec: order_string(PipelineSpec.from_dict(spec)), c.spec_state, c.order,
        api_visibility="private")


def live_checks(c: RagTabComponents, values: tuple[Any, ...]) -> list[Any]:
    """Each card's checks for the settings as they stand on the page, before Apply: a choice that works against
    another is explained where it is made, as it is made. Values that do not make a spec yet (a number being
    typed) leave the checks as they were: Apply names what is wrong."""
    try:
        spec = spec_from_form(c, values)
    except (SettingsError, PipelineSpecError, ValueError, TypeError):
        return [gr.skip()] * len(CHECKED_STAGES)
    problems = problems_by_stage(spec)
    return [check_text(stage, problems) for stage in CHECKED_STAGES]


def _register_live_checks(c: RagTabComponents) -> None:
    """Re-check the pipeline whenever a card's setting changes (reads the on-screen order like Apply does)."""
    form = c.form_components()
    settings = [comp for f in c.forms.values() for comp in f.components]
    gr.on([comp.change for comp in settings], lambda *values: live_checks(c, values), form,
          [c.checks[s] for s in CHECKED_STAGES], js=_READ_ORDER_JS, api_visibility="private",
          show_progress="hidden", trigger_mode="always_last", queue=False)


def apply_refusal(index: RagIndex, spec: PipelineSpec) -> str | None:
    """Why ``spec`` cannot simply be saved with ``index`` (another embedder, other chunks), or None."""
    if spec.embed.model != index.embedder_name:
        return (f"⚠️ The collection '{index.name}' was built with '{index.embedder_name}', but the cards name "
                f"'{spec.embed.model}'. Vectors from different embedders cannot be mixed: press **Re-index** to "
                "re-embed the documents, or switch the embedder back.")
    if spec.index_fingerprint() != index.spec.index_fingerprint():
        return ("The chunking settings changed: the stored chunks no longer match. Press **Re-index** to rebuild "
                "them (unchanged chunks keep their vectors).")
    return None


def _register_questions(c: RagTabComponents) -> None:
    """Search and Ask read the open collection's current version from the shared cache."""
    @handler_errors("Retrieval failed")
    def on_search(state: dict[str, Any] | None, question: str, spec_dict: dict[str, Any],
                  request: gr.Request, profile: gr.OAuthProfile | None = None) -> tuple[str, Any, Any]:
        index = _require_chunks(read_collection(workspace_of(request, profile), state))
        if not (question or "").strip():
            raise ValueError("Type a question first.")
        check_message(question, request, "the question", profile)
        result = search(index, question, PipelineSpec.from_dict(spec_dict))
        log = (f"{len(result.hits)} chunk(s) from **{index.name}** v{index.version} in "
               f"{result.seconds * 1000:.0f} ms · " + " · ".join(result.log))
        return log, _table([_hit_row(h) for h in result.hits]), page_refs(result.hits, question=question)

    inputs = [c.collection_state, c.question, c.spec_state]
    endpoint(c.search_button.click, on_search, inputs, [c.search_log, c.hits, c.hit_refs], api_name="rag_search")
    c.question.submit(on_search, inputs, [c.search_log, c.hits, c.hit_refs], api_visibility="private")

    @handler_errors("Could not answer")
    def on_ask(state: dict[str, Any] | None, question: str, spec_dict: dict[str, Any],
               request: gr.Request, profile: gr.OAuthProfile | None = None) -> Iterator[list[Any]]:
        index = _require_chunks(read_collection(workspace_of(request, profile), state))
        if not (question or "").strip():
            raise ValueError("Type a question first.")
        check_message(question, request, "the question", profile)
        spec = PipelineSpec.from_dict(spec_dict)
        hits: list[Hit] = []
        text = ""
        records: list[Any] = []
        for event in answer(index, question, c.generate_factory(spec, records.append), spec):
            if isinstance(event, RetrievedEvent):
                hits = event.hits
                refs = page_refs(hits, question=question)
                yield ["*Thinking…*", _table(_source_rows(hits, set())), _table([_hit_row(h) for h in hits]), refs,
                       refs]
            elif isinstance(event, TokenEvent):
                text += event.text
                yield [text, *[gr.skip()] * 4]
            elif isinstance(event, AnswerEvent):
                made_by = [r.with_collection(index.name, index.version).line() for r in records]
                cited = {x.number for x in event.citations}
                yield [_answer_markdown(event, made_by), _table(_source_rows(hits, cited)), gr.skip(),
                       page_refs(hits, event.quotes, question), gr.skip()]

    endpoint(c.ask_button.click, on_ask, inputs, [c.answer_text, c.sources, c.hits, c.source_refs, c.hit_refs],
             api_name="rag_ask")
    _register_page_view(c)


def _register_page_view(c: RagTabComponents) -> None:
    """Selecting a row of the sources (or of the passages found) shows that passage's page, its quote marked: the
    rendered page above (PDFs whose original the collection kept), its stored text below (always)."""
    @handler_errors("Could not show the page")
    def on_show_page(state: dict[str, Any] | None, refs: list[dict[str, Any]] | None, evt: gr.SelectData,
                     request: gr.Request, profile: gr.OAuthProfile | None = None) -> tuple[Any, str]:
        row = evt.index[0] if isinstance(evt.index, (list, tuple)) else None
        if row is None or not refs or not 0 <= row < len(refs):
            raise ValueError("Select a row of the sources to see its page.")
        index = read_collection(workspace_of(request, profile), state)
        ref = refs[row]
        return (_page_image_update(index, ref),
                page_html(index.name, index.documents.get(ref.get("source", "")), ref))

    # Private: a row selection carries Gradio's event data, which an API call cannot send (Gradio fails before the
    # handler runs); API callers name the passage's file, page and quote to rag_show_page / rag_page_image instead.
    outputs = [c.page_image, c.page_view]
    c.sources.select(on_show_page, [c.collection_state, c.source_refs], outputs, api_visibility="private")
    c.hits.select(on_show_page, [c.collection_state, c.hit_refs], outputs, api_visibility="private")
    api_endpoint(handler_errors("Could not show the page")(show_page), api_name="rag_show_page")
    api_endpoint(handler_errors("Could not show the page image")(show_page_image), api_name="rag_page_image")


def _page_image_update(index: RagIndex, ref: dict[str, Any]) -> Any:
    """The page image shown with its caption ("file, p. N"), or hidden when there is none (the text view stays)."""
    image = page_image(index.path, index.files.get(str(ref.get("source") or "")), ref)
    if image is None:
        return gr.Image(value=None, visible="hidden")
    return gr.Image(value=image, label=page_caption(ref), alt_text=page_alt_text(ref), visible=True)


def _api_ref(collection: str, source: str, page: int | None, section: str, quote: str,
             request: gr.Request, profile: gr.OAuthProfile | None) -> tuple[RagIndex, dict[str, Any]]:
    """The visitor's collection and a page reference as the page view keeps one, from an API call's arguments."""
    from rag.chunking import Chunk

    index = read_collection(workspace_of(request, profile), {"collection": (collection or "").strip()})
    page = int(page) if page not in (None, "") else None
    where = Chunk("", source, 0, page=page, section=section or None).location
    return index, {"source": source, "page": page, "section": section or None, "location": where, "quote": quote}


def show_page(collection: str, source: str, page: int | None = None, section: str = "", quote: str = "",
              request: gr.Request = None, profile: gr.OAuthProfile | None = None) -> str:
    """One page of a file in the visitor's collection as HTML, ``quote`` marked: what selecting a source row shows,
    for scripts (the file, page and section as rag_ask / rag_search list a passage)."""
    index, ref = _api_ref(collection, source, page, section, quote, request, profile)
    return page_html(index.name, index.documents.get(source), ref)


def show_page_image(collection: str, source: str, page: int | None = None, quote: str = "",
                    request: gr.Request = None, profile: gr.OAuthProfile | None = None) -> str:
    """The page image the page view shows above the text, for scripts: a PNG as a ``data:image/png;base64,`` URL,
    ``quote`` highlighted; "" when there is none (not a PDF, or a collection built before originals were kept).

    A separate endpoint, so rag_show_page's single HTML output stays as its clients read it."""
    index, ref = _api_ref(collection, source, page, "", quote, request, profile)
    return png_data_url(page_png(index.path, index.files.get(source), ref))


def register_page_load(demo: gr.Blocks, c: RagTabComponents) -> None:
    """After a reload (or in a second tab), find the visitor's running index job and follow it again."""
    demo.load(follow_running_job, None, [c.collection, c.collection_state, c.job_state, c.build_log, c.status,
                                         c.indexed, *_views(c)], api_visibility="private", concurrency_limit=None,
              show_progress="hidden")


async def follow_running_job(request: gr.Request, profile: gr.OAuthProfile | None = None,
                             ) -> AsyncIterator[list[Any]]:
    """Pick the running job (else the oldest waiting one) of this workspace, show its collection, follow it.

    Yields (collection picker, collection state, job id, log, status, indexed files, files table, chunk note,
    chunk table) as the job goes on.
    """
    skip = [gr.skip()] * 9
    try:
        ws = workspace_of(request, profile)
        active = await anyio.to_thread.run_sync(functools.partial(index_jobs, ws, active_only=True))
    except Exception:  # not signed in yet, or a passing database hiccup: the page works without it
        yield skip
        return
    running = [j for j in active if j.status in ("running", "cancelling")] or active[::-1]
    if not running:
        yield skip
        return
    job = running[0]
    name = str(job.payload.get("collection", ""))
    current = await anyio.to_thread.run_sync(_latest, ws, name)
    yield [gr.Dropdown(value=name), _state(current) if current else gr.skip(), job.id,
           "Following your index job that is still running…",
           f"{_status(current)}\n\nA change to it is running below." if current else gr.skip(),
           _files_update(current) if current else gr.skip(),
           *(_collection_views(current) if current else [gr.skip()] * 3)]
    async for _, log, finished in follow_job(ws, job.id):
        latest = await anyio.to_thread.run_sync(_latest, ws, name) if finished else None
        if latest is None:
            yield [gr.skip(), gr.skip(), job.id, log, *[gr.skip()] * 5]
        else:
            yield [gr.skip(), _state(latest), None, log, _status(latest), _files_update(latest),
                   *_collection_views(latest)]


def _source_rows(hits: list[Hit], cited: set[int]) -> list[list[Any]]:
    return [[f"[{n}]", "✓" if n in cited else "", h.chunk.source, _where(h.chunk.page, h.chunk.section),
             f"{h.score:.4f}", _excerpt(h.matched.text, 400)] for n, h in enumerate(hits, start=1)]


def ocr_label(chunk: Any, sections: list[Any] | None = None) -> str:
    """"OCR 0.93" for a chunk whose text was read by OCR (its own confidence, else its page's), else ""."""
    confidence = getattr(chunk, "ocr_confidence", None)
    if confidence is None:
        same = [s for s in sections or [] if (s.page, s.section) == (chunk.page, chunk.section)]
        confidence = next((c for s in same if (c := getattr(s, "ocr_confidence", None)) is not None), None)
    return "" if confidence is None else f"OCR {confidence:.2f}"


def _answer_markdown(event: AnswerEvent, made_by: list[str] | None = None) -> str:
    text = event.text or "*(the model returned no text)*"
    if event.citations:
        text += f"\n\n{cited_list(event)}"
    else:
        text += "\n\n*The answer cites no passage; the passages the model was given are listed below.*"
    if event.invalid_citations:
        text += f"\n\n⚠️ Cites passage(s) {', '.join(map(str, event.invalid_citations))} that were not provided."
    for line in made_by or []:
        text += f"\n\n<small>Answered by: {literal_markdown(line)}</small>"
    return text
