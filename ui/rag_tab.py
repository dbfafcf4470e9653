"""RAG tab: drop documents, see the chunks, arrange the pipeline, test retrieval, get cited answers.

``build()`` creates the components; ``register()`` wires them. Every event has a stable
``api_name`` prefixed ``rag_``. Per-visitor state (the open index, the pipeline spec) lives in
``gr.State``; the ``rag`` package does the work and emits typed events that this file only formats.
Each stage card's form is generated from its settings class, so no default is typed here.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr

from engine.workspace import Workspace
from rag.answer import Generate, answer
from rag.chunking import preview, split_document
from rag.events import (
    AnswerEvent,
    Chunked,
    EmbedProgress,
    FileLoaded,
    FileRefused,
    FileRemoved,
    FileUnchanged,
    IndexUpdated,
    RetrievedEvent,
    TokenEvent,
)
from rag.index import EmbedderMismatchError, RagIndex
from rag.ingest import SUPPORTED_EXTENSIONS, LoadedDocument, load_file
from rag.pipeline import PipelineSpec
from rag.retrieve import Hit, search
from rag.stages import FIXED_STAGES, POST_STEPS, STAGE_TITLES
from ui.common import SettingsForm, build_settings_form, friendly_errors, require_write, workspace_of

DEFAULT_COLLECTION = "my-documents"
POST_CONTAINER_ID = "rag-post-steps"
HIT_HEADERS = ["rank", "source", "page / section", "dense", "BM25", "fused", "text"]
SOURCE_HEADERS = ["[n]", "cited", "source", "page / section", "score", "text"]

# Read the post-retrieval cards' on-screen order (gr.Draggable reorders the DOM, not the server).
_READ_ORDER_JS = f"""(...args) => {{
  const items = document.querySelectorAll('#{POST_CONTAINER_ID} > .draggable-item');
  const order = Array.from(items).map(e => e.id.replace('rag-step-', '')).filter(Boolean);
  if (order.length) {{ args[0] = order.join(','); }}
  return args;
}}"""

# After an import, put the cards in the imported order.
_APPLY_ORDER_JS = f"""(order) => {{
  const box = document.getElementById('{POST_CONTAINER_ID}');
  if (!box || !order) return order;
  for (const name of order.split(',')) {{
    const item = box.querySelector(':scope > #rag-step-' + name.trim());
    if (item) box.appendChild(item);
  }}
  box.querySelectorAll(':scope > .draggable-item').forEach((e, i) => {{
    e.dataset.index = i;
    const handle = e.querySelector(':scope > .drag-handle');
    if (handle) handle.dataset.index = i;
  }});
  return order;
}}"""

GenerateFactory = Callable[[PipelineSpec], Generate]


def bundled_generate(spec: PipelineSpec) -> Generate:
    """Answer with the app's bundled base model (the engine's ChatModel), using the Generate stage settings."""
    from engine.config import GenerationSettings
    from engine.models import BUNDLED_ID
    from ui.common import chat_model_for

    gen = spec.stages["generate"]
    settings = GenerationSettings(max_new_tokens=gen.max_new_tokens, temperature=gen.temperature)
    model = chat_model_for(BUNDLED_ID)
    return lambda prompt: model.stream(prompt, settings=settings)


@dataclass
class RagTabComponents:
    index_state: gr.State
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
    indexed: gr.Dropdown
    remove_button: gr.Button
    reindex_button: gr.Button
    forms: dict[str, SettingsForm]
    enabled: dict[str, gr.Checkbox]
    order: gr.Textbox
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
    generate_factory: GenerateFactory = field(default=bundled_generate)

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


def collection_choices(request: gr.Request) -> Any:
    """The visitor's own collections, listed when they open the dropdown (never at build time: the page is shared)."""
    return gr.Dropdown(choices=workspace_of(request).index_names())


def build(generate_factory: GenerateFactory | None = None) -> RagTabComponents:
    spec = PipelineSpec()
    forms: dict[str, SettingsForm] = {}
    enabled: dict[str, gr.Checkbox] = {}
    gr.Markdown("Build a searchable collection from your own documents, check what it finds, and get answers "
                "that cite their sources.")
    index_state = gr.State(None)
    spec_state = gr.State(spec.to_dict())
    with gr.Row(equal_height=True):
        collection = gr.Dropdown(choices=[], value=DEFAULT_COLLECTION, allow_custom_value=True,
                                 label="Collection", info="Pick one, or type a new name.", elem_id="rag-collection",
                                 scale=3)
        open_button = gr.Button("Open collection", elem_id="rag-open", scale=1)
    status = gr.Markdown("No collection open yet.", elem_id="rag-status")

    with gr.Row(equal_height=False):
        with gr.Column(scale=1):
            upload = gr.File(file_count="multiple", label="Drop documents here",
                             file_types=list(SUPPORTED_EXTENSIONS), elem_id="rag-upload")
            with gr.Row():
                preview_button = gr.Button("Preview chunks", elem_id="rag-preview")
                build_button = gr.Button("Build index", variant="primary", elem_id="rag-build")
            build_log = gr.Markdown(elem_id="rag-build-log")
            with gr.Row(equal_height=True):
                indexed = gr.Dropdown(choices=[], multiselect=True, label="Indexed files", elem_id="rag-indexed",
                                      scale=3)
                remove_button = gr.Button("Remove selected", elem_id="rag-remove", scale=1)
            reindex_button = gr.Button("Re-index with the new settings", visible=False, variant="stop",
                                       elem_id="rag-reindex")
        with gr.Column(scale=1):
            preview_text = gr.Markdown(elem_id="rag-preview-text")
            preview_table = gr.Dataframe(headers=["file", "#", "page / section", "chars", "chunk"], interactive=False,
                                         wrap=True, max_height=360, elem_id="rag-preview-table")

    gr.Markdown("### Pipeline\nEach card is a stage. Drag the post-retrieval steps (⋮⋮ handle) into the order you "
                "want, tick the ones to use, then **Apply pipeline**.")
    with gr.Row(equal_height=False):
        for name in ("load", "split", "embed", "index", "retrieve"):
            with gr.Column(min_width=220), gr.Group(elem_id=f"rag-card-{name}"):
                gr.Markdown(f"**{STAGE_TITLES[name]}**")
                forms[name] = _stage_card(name)
    with gr.Row(equal_height=False):
        with gr.Column(scale=2):
            gr.Markdown("**Post-retrieval steps** (top runs first)")
            with gr.Draggable(elem_id=POST_CONTAINER_ID):
                for step in spec.post:
                    with gr.Group(elem_id=f"rag-step-{step.name}", elem_classes=["rag-step"]):
                        enabled[step.name] = gr.Checkbox(value=step.enabled, label=STAGE_TITLES[step.name],
                                                         elem_id=f"rag-enable-{step.name}")
                        forms[step.name] = _stage_card(step.name)
            order = gr.Textbox(value=",".join(s.name for s in spec.post), label="Order", interactive=False,
                               elem_id="rag-order")
        with gr.Column(scale=3):
            for name in ("prompt", "generate"):
                with gr.Group(elem_id=f"rag-card-{name}"):
                    gr.Markdown(f"**{STAGE_TITLES[name]}**")
                    forms[name] = _stage_card(name)
    with gr.Row(equal_height=True):
        apply_button = gr.Button("Apply pipeline", variant="primary", elem_id="rag-apply")
        export_button = gr.DownloadButton("Export pipeline JSON", value=_spec_file(spec), elem_id="rag-export")
        import_file = gr.File(file_types=[".json"], label="Import pipeline JSON", elem_id="rag-import", height=100)
    with gr.Accordion("Pipeline spec (JSON)", open=False):
        spec_code = gr.Code(value=spec.to_json(), language="json", interactive=False, elem_id="rag-spec")

    gr.Markdown("### Ask")
    question = gr.Textbox(label="Question", placeholder="What do my documents say about…?", elem_id="rag-question")
    with gr.Row():
        search_button = gr.Button("Test retrieval", elem_id="rag-search")
        ask_button = gr.Button("Ask", variant="primary", elem_id="rag-ask")
    search_log = gr.Markdown(elem_id="rag-search-log")
    hits = gr.Dataframe(headers=HIT_HEADERS, interactive=False, wrap=True, max_height=400, elem_id="rag-hits")
    answer_text = gr.Markdown(elem_id="rag-answer")
    sources = gr.Dataframe(headers=SOURCE_HEADERS, interactive=False, wrap=True, max_height=400,
                           elem_id="rag-sources")
    return RagTabComponents(index_state, spec_state, collection, open_button, status, upload, preview_button,
                            build_button, preview_text, preview_table, build_log, indexed, remove_button,
                            reindex_button, forms, enabled, order, apply_button, spec_code, export_button,
                            import_file, question, search_button, search_log, hits, ask_button, answer_text, sources,
                            generate_factory or bundled_generate)


# ----------------------------------------------------------------------------------------- logic


def _spec_file(spec: PipelineSpec) -> str:
    folder = Path(tempfile.mkdtemp(prefix="rag-spec-"))
    path = folder / "rag-pipeline.json"
    spec.to_json(path)
    return str(path)


def spec_from_form(c: RagTabComponents, values: tuple[Any, ...]) -> PipelineSpec:
    """Assemble and validate a spec from the form values (order box, enabled boxes, then each stage's form)."""
    values = list(values)
    order = [n.strip() for n in str(values.pop(0) or "").split(",") if n.strip()]
    flags = {name: bool(values.pop(0)) for name in c.enabled}
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
    out: list[Any] = [",".join(s.name for s in spec.post)]
    out.extend(next(s.enabled for s in spec.post if s.name == name) for name in c.enabled)
    for name, form in c.forms.items():
        out.extend(form.updates_for(spec[name]))
    return out


def _status(index: RagIndex) -> str:
    return (f"**{index.path.name}**: {len(index.files)} file(s), {len(index.chunks)} chunks, embedder "
            f"`{index.embedder_name}`, saved in `{index.path}`.")


def _files_update(index: RagIndex | None) -> Any:
    return gr.Dropdown(choices=sorted(index.files) if index else [], value=[])


def open_collection(name: str, spec_dict: dict[str, Any], ws: Workspace) -> tuple[Any, ...]:
    """Open (or create) one of the visitor's collections; an existing one brings its own pipeline spec."""
    path = ws.index_path(name)
    if (path / "manifest.json").exists():
        index = RagIndex.open(path)
        note = "Opened. Its saved pipeline is loaded into the cards."
    else:
        require_write("Creating a collection")
        index = RagIndex.create(path, PipelineSpec.from_dict(spec_dict))
        note = "New collection created with the pipeline below. Drop files and press **Build index**."
    return (index, index.spec.to_dict(), f"{_status(index)}\n\n{note}", _files_update(index),
            gr.Dropdown(choices=ws.index_names(), value=path.name))


def _uploads(files: list[Any] | None) -> list[tuple[str, str]]:
    if not files:
        raise ValueError("Drop one or more documents on the upload area first.")
    out = []
    for f in files:
        path = Path(getattr(f, "name", None) or str(f))
        out.append((path.name, str(path)))
    return out


def preview_chunks(files: list[Any] | None, spec: PipelineSpec, index: RagIndex | None) -> tuple[str, list[list]]:
    """Load and split the dropped files with the current cards' settings (nothing is embedded)."""
    load = spec.stages["load"]
    chunks, refused = [], []
    tokenizer = index.embedder.tokenizer if spec.split.method == "token" and index else None
    if spec.split.method == "token" and tokenizer is None:
        from rag.embedders import get_embedder

        tokenizer = get_embedder(spec.embed.model).tokenizer
    for name, path in _uploads(files):
        doc = load_file(path, name=name, pdf_password=load.pdf_password, max_mb=load.max_file_mb)
        if isinstance(doc, LoadedDocument):
            chunks.extend(split_document(doc, spec.split, tokenizer=tokenizer))
        else:
            refused.append(f"- ⚠️ {doc.message}")
    p = preview(chunks, first_n=3)
    lines = [f"**Preview** — {p.summary()}"]
    if p.histogram:
        lines.append("Lengths: " + ", ".join(f"{label}: {n}" for label, n in p.histogram if n))
    lines.extend(refused)
    rows = [[src, c.ordinal + 1, _where(c.page, c.section), len(c.text), _excerpt(c.text, 300)]
            for src, first in p.first_chunks.items() for c in first]
    return "\n\n".join(lines), rows


def _where(page: int | None, section: str | None) -> str:
    return " · ".join(x for x in (f"p. {page}" if page is not None else "", section or "") if x)


def _excerpt(text: str, n: int = 240) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[:n].rsplit(" ", 1)[0] + " …"


def format_index_events(events: Iterator[Any]) -> Iterator[str]:
    """Turn indexing events into a growing markdown log (one line per file, a live embedding line)."""
    lines: list[str] = []
    live = ""
    for event in events:
        if isinstance(event, FileLoaded):
            lines.append(f"- ✅ **{event.source}**: {event.sections} section(s), {event.chars:,} characters")
        elif isinstance(event, FileRefused):
            lines.append(f"- ⚠️ {event.message}")
        elif isinstance(event, FileUnchanged):
            lines.append(f"- ⏭️ **{event.source}** is already indexed with the same content.")
        elif isinstance(event, FileRemoved):
            verb = "replaced (old chunks removed)" if event.replaced else "removed"
            lines.append(f"- 🗑️ **{event.source}** {verb}: {event.chunks} chunk(s)")
        elif isinstance(event, Chunked):
            lines.append(f"- ✂️ {event.preview.summary()}")
        elif isinstance(event, EmbedProgress):
            live = f"Embedding… {event.done}/{event.total} chunks ({event.fraction:.0%}), {event.reused} reused"
        elif isinstance(event, IndexUpdated):
            live = (f"**Done** in {event.seconds:.1f}s: the collection holds {event.files} file(s), {event.chunks} "
                    f"chunks ({event.embedded} embedded, {event.reused} reused, {len(event.refused)} refused).")
        yield "\n".join([*lines, "", live])


def _hit_row(hit: Hit) -> list[Any]:
    def fmt(x: float | None, digits: int = 3) -> str:
        return "—" if x is None else f"{x:.{digits}f}"

    return [hit.rank, hit.chunk.source, _where(hit.chunk.page, hit.chunk.section), fmt(hit.dense_score),
            fmt(hit.bm25_score, 2), fmt(hit.fused_score, 4), _excerpt(hit.chunk.text)]


def _require_index(index: RagIndex | None) -> RagIndex:
    if index is None:
        raise ValueError("Open a collection first (top of this tab).")
    return index


def _require_chunks(index: RagIndex | None) -> RagIndex:
    index = _require_index(index)
    if not index.chunks:
        raise ValueError("This collection is empty: drop documents and press **Build index** first.")
    return index


# ----------------------------------------------------------------------------------------- register


def register(c: RagTabComponents) -> None:
    form = c.form_components()
    spec_outputs = [c.spec_state, c.spec_code, c.export_button]

    def spec_views(spec: PipelineSpec) -> list[Any]:
        return [spec.to_dict(), spec.to_json(), _spec_file(spec)]

    @friendly_errors("Could not open the collection")
    def on_open(name: str, spec_dict: dict[str, Any], request: gr.Request) -> list[Any]:
        index, spec_dict, status, files, collection = open_collection(name, spec_dict, workspace_of(request))
        spec = PipelineSpec.from_dict(spec_dict)
        return [index, status, files, collection, gr.Button(visible=False), *spec_views(spec),
                *form_updates(c, spec)]

    c.collection.focus(collection_choices, None, c.collection, api_visibility="private", show_progress="hidden")
    c.open_button.click(on_open, [c.collection, c.spec_state],
                        [c.index_state, c.status, c.indexed, c.collection, c.reindex_button, *spec_outputs, *form],
                        api_name="rag_open").then(
        None, c.order, c.order, js=_APPLY_ORDER_JS, api_visibility="private")

    @friendly_errors("Could not apply the pipeline")
    def on_apply(*values: Any) -> list[Any]:
        *values, index = values
        spec = spec_from_form(c, values)
        message, show_reindex = "Pipeline applied.", False
        if index is not None:
            try:
                stale = index.set_spec(spec)
            except EmbedderMismatchError as exc:
                return [index, f"⚠️ {exc}", gr.Button(visible=True), *spec_views(spec)]
            if stale:
                message = ("The chunking settings changed: the stored chunks no longer match. Press **Re-index** to "
                           "rebuild them (unchanged chunks keep their vectors).")
                show_reindex = True
            else:
                message = f"{_status(index)}\n\nPipeline applied and saved with the collection."
        return [index, message, gr.Button(visible=show_reindex), *spec_views(spec)]

    # The order box must be the first input: the JS hook overwrites args[0] with the on-screen order.
    c.apply_button.click(on_apply, [*form, c.index_state], [c.index_state, c.status, c.reindex_button, *spec_outputs],
                         api_name="rag_apply_pipeline", js=_READ_ORDER_JS).then(
        lambda spec: ",".join(s["stage"] for s in spec["stages"] if s["stage"] in POST_STEPS), c.spec_state, c.order,
        api_visibility="private")

    @friendly_errors("Could not re-index")
    def on_reindex(index: RagIndex | None, spec_dict: dict[str, Any]) -> Iterator[list[Any]]:
        require_write("Re-indexing")
        index = _require_index(index)
        spec = PipelineSpec.from_dict(spec_dict)
        log = ""
        for log in format_index_events(index.reindex(spec)):
            yield [index, log, gr.Button(visible=True), gr.skip()]
        yield [index, log, gr.Button(visible=False), _status(index)]

    c.reindex_button.click(on_reindex, [c.index_state, c.spec_state],
                           [c.index_state, c.build_log, c.reindex_button, c.status], api_name="rag_reindex")

    @friendly_errors("Could not preview the chunks")
    def on_preview(*values: Any) -> tuple[str, list[list]]:
        *values, files, index = values
        return preview_chunks(files, spec_from_form(c, values), index)

    c.preview_button.click(on_preview, [*form, c.upload, c.index_state], [c.preview_text, c.preview_table],
                           api_name="rag_preview", js=_READ_ORDER_JS)

    @friendly_errors("Could not build the index")
    def on_build(files: list[Any] | None, index: RagIndex | None, name: str,
                 spec_dict: dict[str, Any], request: gr.Request) -> Iterator[list[Any]]:
        require_write("Building an index")
        uploads = _uploads(files)
        if index is None:
            index = open_collection(name, spec_dict, workspace_of(request))[0]
        log = ""
        for log in format_index_events(index.add_files(uploads)):
            yield [index, log, gr.skip(), gr.skip()]
        yield [index, log, _status(index), _files_update(index)]

    c.build_button.click(on_build, [c.upload, c.index_state, c.collection, c.spec_state],
                         [c.index_state, c.build_log, c.status, c.indexed], api_name="rag_build")

    @friendly_errors("Could not remove the files")
    def on_remove(index: RagIndex | None, selected: list[str] | None) -> list[Any]:
        require_write("Removing files")
        index = _require_index(index)
        if not selected:
            raise ValueError("Pick the files to remove in 'Indexed files' first.")
        log = list(format_index_events(index.remove(selected)))[-1]
        return [index, log, _status(index), _files_update(index)]

    c.remove_button.click(on_remove, [c.index_state, c.indexed], [c.index_state, c.build_log, c.status, c.indexed],
                          api_name="rag_remove")

    @friendly_errors("Could not import the pipeline")
    def on_import(file: Any, index: RagIndex | None) -> list[Any]:
        if not file:
            return [gr.skip()] * (len(spec_outputs) + len(form) + 1)
        spec = PipelineSpec.load(getattr(file, "name", None) or str(file))
        note = "Pipeline imported. Press **Apply pipeline** to use it with the open collection."
        if index is not None and spec.embed.model != index.embedder_name:
            note += f" ⚠️ It uses embedder `{spec.embed.model}`; this collection was built with " \
                    f"`{index.embedder_name}`, so applying it will offer to re-index."
        return [note, *spec_views(spec), *form_updates(c, spec)]

    c.import_file.upload(on_import, [c.import_file, c.index_state], [c.status, *spec_outputs, *form],
                         api_name="rag_import_pipeline").then(
        None, c.order, c.order, js=_APPLY_ORDER_JS, api_visibility="private")

    @friendly_errors("Retrieval failed")
    def on_search(index: RagIndex | None, question: str, spec_dict: dict[str, Any]) -> tuple[str, list[list]]:
        index = _require_chunks(index)
        if not (question or "").strip():
            raise ValueError("Type a question first.")
        result = search(index, question, PipelineSpec.from_dict(spec_dict))
        log = f"{len(result.hits)} chunk(s) in {result.seconds * 1000:.0f} ms · " + " · ".join(result.log)
        return log, [_hit_row(h) for h in result.hits]

    c.search_button.click(on_search, [c.index_state, c.question, c.spec_state], [c.search_log, c.hits],
                          api_name="rag_search")
    c.question.submit(on_search, [c.index_state, c.question, c.spec_state], [c.search_log, c.hits],
                      api_visibility="private")

    @friendly_errors("Could not answer")
    def on_ask(index: RagIndex | None, question: str, spec_dict: dict[str, Any]) -> Iterator[list[Any]]:
        index = _require_chunks(index)
        if not (question or "").strip():
            raise ValueError("Type a question first.")
        spec = PipelineSpec.from_dict(spec_dict)
        hits: list[Hit] = []
        text = ""
        for event in answer(index, question, c.generate_factory(spec), spec):
            if isinstance(event, RetrievedEvent):
                hits = event.hits
                yield ["*Thinking…*", _source_rows(hits, set()), [_hit_row(h) for h in hits]]
            elif isinstance(event, TokenEvent):
                text += event.text
                yield [text, gr.skip(), gr.skip()]
            elif isinstance(event, AnswerEvent):
                yield [_answer_markdown(event), _source_rows(hits, {x.number for x in event.citations}), gr.skip()]

    c.ask_button.click(on_ask, [c.index_state, c.question, c.spec_state], [c.answer_text, c.sources, c.hits],
                       api_name="rag_ask")


def _source_rows(hits: list[Hit], cited: set[int]) -> list[list[Any]]:
    return [[f"[{n}]", "✓" if n in cited else "", h.chunk.source, _where(h.chunk.page, h.chunk.section),
             f"{h.score:.4f}", _excerpt(h.chunk.text, 400)] for n, h in enumerate(hits, start=1)]


def _answer_markdown(event: AnswerEvent) -> str:
    text = event.text or "*(the model returned no text)*"
    if event.citations:
        refs = "; ".join(f"[{c.number}] {c.hit.chunk.location}" for c in event.citations)
        text += f"\n\n**Sources cited:** {refs}"
    else:
        text += "\n\n*The answer cites no passage; the passages the model was given are listed below.*"
    if event.invalid_citations:
        text += f"\n\n⚠️ Cites passage(s) {', '.join(map(str, event.invalid_citations))} that were not provided."
    return text

