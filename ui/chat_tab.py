"""The Chat tab: talk to the base model or one of your fine-tuned runs, optionally grounded in a RAG collection.

Same shape as the other tabs: :func:`build` makes the components, :func:`register` wires the events
(:func:`register_page_load` the page-load one), and every event has a stable ``api_name`` (``chat``,
``chat_refresh``, ``chat_clear``). The conversation lives in the ``gr.Chatbot`` value (per visitor, sent
with every message), never in module globals.

No prompting or retrieval is written here: an answer is one arm of :class:`services.compare.Comparer` (base,
fine-tuned, RAG or fine-tuned+RAG) on the process-wide model of ``ui.common.chat_model_for``, with the
earlier turns put in front of the prompt. A RAG answer uses the collection's own pipeline (retrieval depth,
prompt with [n] citations), and its sources are shown under the answer.

API (gradio_client)::

    history = None
    for history, _, sources, stats in client.submit("What is Tune Studio?", history, "base", None,
                                                    max_new_tokens=64, api_name="/chat"):
        ...  # streams: ``history`` grows token by token; pass the last one back for the next turn

``model`` is ``"base"`` (the bundled model), ``"base:<model id>"`` (the base of one of your runs) or the
id of one of your finished runs; ``collection`` is the name of one of your RAG collections, or None.
"""

from __future__ import annotations

import html
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from core.generation import GenerationSettings
from engine.models import BUNDLED_ID
from engine.workspace import Workspace
from services.compare import ArmAnswer, Comparer, CompareSettings, Question
from services.model_notes import small_model_note
from ui.common import (
    SettingsForm,
    body_size,
    build_settings_form,
    chat_model_for,
    check_history,
    check_message,
    endpoint,
    friendly_errors,
    literal_markdown,
    model_token,
    named_parameters,
    workspace_of,
)
from ui.rag_citations import quote_for

BASE = "base"
NO_COLLECTION = None
SOURCES_TITLE = "Sources"
SOURCE_HEADERS = ["[n]", "source", "score", "text"]  # [n] ✓ = cited in the answer
SOURCE_WIDTHS = ["8%", "24%", "10%", "58%"]  # narrow number and score columns: the score is never cut off
#: Earlier turns sent with a new message, newest kept first (characters; the bundled model reads 8k tokens).
HISTORY_CHARS = 6000
API_INPUTS = ["message", "history", "model", "collection"]
History = list[dict[str, Any]]


@dataclass
class ChatTabComponents:
    model: gr.Dropdown
    collection: gr.Dropdown
    refresh_button: gr.Button
    chatbot: gr.Chatbot
    message: gr.Textbox
    send_button: gr.Button
    clear_button: gr.Button
    stats: gr.Markdown
    sources: gr.Dataframe
    generation: SettingsForm
    hf_token: gr.Textbox
    model_note: gr.Markdown


@dataclass(frozen=True)
class ModelChoice:
    """What a picker value resolves to: which base weights, which adapter (if any), and how to name it."""

    base_model: str
    adapter: str | None
    label: str
    run_name: str | None = None


# ----------------------------------------------------------------------------------------- choices


def _short(model_id: str) -> str:
    return model_id.rstrip("/").split("/")[-1]


def model_choices(ws: Workspace | None = None) -> list[tuple[str, str]]:
    """(label, value): the bundled base model, the bases of your runs, then your finished runs' adapters."""
    choices = [(f"Base model — {_short(BUNDLED_ID)}", BASE)]
    if ws is None:
        return choices
    runs = ws.finished_runs()
    for base in dict.fromkeys(job.config.base_model for job in runs):
        if base != BUNDLED_ID:
            choices.append((f"Base model — {_short(base)}", f"{BASE}:{base}"))
    for job in runs:
        choices.append((f"Fine-tuned: {job.name} ({_short(job.config.base_model)}, run {job.id})", job.id))
    return choices


def collection_choices(ws: Workspace | None = None) -> list[str]:
    return ws.index_names() if ws is not None else []


def resolve_model(ws: Workspace, value: str | None) -> ModelChoice:
    """A picker value (or API argument) to base weights + adapter; someone else's run reads as missing."""
    value = (value or BASE).strip()
    if value == BASE:
        return ModelChoice(BUNDLED_ID, None, f"base model ({_short(BUNDLED_ID)})")
    if value.startswith(f"{BASE}:"):
        base = value.split(":", 1)[1]
        if base != BUNDLED_ID and base not in {job.config.base_model for job in ws.finished_runs()}:
            raise ValueError(f"{base} is not the base model of one of your finished runs; pick a model from the list.")
        return ModelChoice(base, None, f"base model ({_short(base)})")
    job = ws.run(value)  # raises for unknown ids and for other people's runs alike
    if job.status != "done":
        raise ValueError(f"Run {job.name} is {job.status}: chat with it once it has finished training.")
    if not (job.adapter_dir / "adapter_config.json").exists():
        raise ValueError(f"Run {job.name} has no adapter to load (its files were removed).")
    return ModelChoice(job.config.base_model, str(job.adapter_dir), f"fine-tuned run {job.name}", job.name)


def open_collection(ws: Workspace, name: str | None) -> Any:
    """One of the visitor's RAG indexes, or None for no retrieval."""
    if not name or not str(name).strip():
        return None
    from services.collections import open_collection as shared_collection

    if str(name) not in ws.index_names():
        raise ValueError(f"There is no RAG collection named {name!r} in your workspace; build it in the RAG tab, "
                         "then pick it under *RAG collection* (press ↻ Refresh if it is not listed).")
    return shared_collection(ws.index_path(str(name)))  # one read-only copy per version, shared by every chat


# ----------------------------------------------------------------------------------------- history


def message_text(message: dict[str, Any]) -> str:
    """The text of a Chatbot message, whether its content is a string or Gradio's list of parts."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    if isinstance(content, dict):
        return str(content.get("text", ""))
    return ""


def prior_turns(history: list[dict[str, Any]] | None, budget: int = HISTORY_CHARS) -> list[dict[str, str]]:
    """Earlier user/assistant turns for the model: sources and notes (messages with a title) are left out,
    and the oldest turns are dropped once the budget is spent (a conversation always starts with a user turn)."""
    turns = [{"role": m["role"], "content": message_text(m)} for m in history or []
             if m.get("role") in ("user", "assistant") and not (m.get("metadata") or {}).get("title")]
    kept: list[dict[str, str]] = []
    used = 0
    for turn in reversed(turns):
        used += len(turn["content"])
        if used > budget:
            break
        kept.append(turn)
    kept.reverse()
    while kept and kept[0]["role"] != "user":
        kept.pop(0)
    return [t for t in kept if t["content"].strip()]


class WithHistory:
    """A ChatLike that puts the earlier turns in front of whatever prompt an arm builds (the engine's protocol)."""

    def __init__(self, chat: Any, prior: list[dict[str, str]]):
        self.chat = chat
        self.prior = prior
        self.tokenizer = chat.tokenizer
        self.base_model = chat.base_model

    def stream(self, messages: Any, *, adapter: str | Path | None = None,
               settings: GenerationSettings | None = None, **provenance: Any) -> Iterator[str]:
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        return self.chat.stream([*self.prior, *messages], adapter=adapter, settings=settings, **provenance)


def make_comparer(ws: Workspace, model: str | None, collection: str | None, generation: GenerationSettings,
                  prior: list[dict[str, str]], token: str | None = None) -> tuple[Comparer, str, ModelChoice]:
    """The one arm that answers: base / ft, plus +rag when a collection is chosen."""
    choice = resolve_model(ws, model)
    index = open_collection(ws, collection)
    arm = ("ft" if choice.adapter else "base") if index is None else ("ft+rag" if choice.adapter else "rag")
    if index is not None and not index.chunks:
        raise ValueError(f"The collection {collection!r} has no documents yet; add some in the RAG tab.")
    # The message goes to the model unchanged; a RAG prompt is the collection's own (with [n] citations).
    options = CompareSettings(base_template="{question}", rag_template="", top_k=0)
    chat = chat_model_for(choice.base_model, model_token(ws.owner, token))  # a gated base: this visitor's access
    comparer = Comparer(WithHistory(chat, prior), arms=[arm], adapter=choice.adapter,
                        index=index, generation=generation, settings=options, adapter_label=choice.run_name,
                        collection=collection or None)
    return comparer, arm, choice


# ----------------------------------------------------------------------------------------- formatting


def sources_message(answer: ArmAnswer) -> str:
    """The retrieved passages under a RAG answer, cited ones marked ✓."""
    cited = set(answer.cited)
    lines = []
    for n, r in enumerate(answer.retrieved, start=1):
        mark = " ✓ cited" if n in cited else ""
        excerpt = " ".join(r["text"].split())
        excerpt = excerpt[:160] + ("…" if len(excerpt) > 160 else "")
        # a cited passage: "[1] ✓ cited handbook.pdf, p. 3 — “the span that backs the answer”"
        quote = f" — “{quote_for(answer.text, n, r['text'])}”" if n in cited else ""
        # Document text is shown as text: an excerpt holding ![x](http://…) or <img> must not render.
        lines.append(f"**[{n}]**{mark} {literal_markdown(r['location'] + quote)} · score {r['score']:.3f}  \n"
                     f"<small>{literal_markdown(excerpt)}</small>")
    return "\n\n".join(lines) or "No passage was retrieved."


def source_rows(answer: ArmAnswer) -> list[list[Any]]:
    """The passages an answer read, cited ones marked ✓; scores to three decimals so the column stays narrow."""
    cited = set(answer.cited)
    return [[f"[{n}]{' ✓' if n in cited else ''}", r["location"], _score(r["score"]),
             (f"“{quote_for(answer.text, n, r['text'])}” — " if n in cited else "") + r["text"][:600]]
            for n, r in enumerate(answer.retrieved, start=1)]


def _score(value: Any) -> Any:
    return f"{value:.3f}" if isinstance(value, float) else value


def has_rows(table: Any) -> bool:
    """Whether a Dataframe value holds a row with any text (an empty table arrives as one blank row or none)."""
    if table is None:
        return False
    if hasattr(table, "to_numpy"):  # the pandas frame Gradio hands a handler
        table = table.to_numpy().tolist()
    elif isinstance(table, dict):
        table = table.get("data") or []
    return any(str(cell).strip() for row in table for cell in row)


def sources_visibility(table: Any) -> Any:
    """Show the passages table only when the last answer read some."""
    return gr.Dataframe(visible=has_rows(table))


def base_model_of(ws: Workspace | None, value: str | None) -> str:
    """The base model a picker value answers with (the bundled one when unknown), for the small-model note."""
    if ws is None:
        return BUNDLED_ID
    try:
        return resolve_model(ws, value).base_model
    except Exception:  # a run still training or removed: the answer itself will say so
        return BUNDLED_ID


def stats_text(answer: ArmAnswer, choice: ModelChoice, arm: str) -> str:
    where = choice.label + (" + RAG" if "rag" in arm else "")
    if not answer.done:
        return f"*{where}: answering…*" if answer.text else f"*{where}: waiting for the first token…*"
    ttft = "–" if answer.ttft_s is None else f"{answer.ttft_s:.2f} s"
    made_by = f"  \n<small>Answered by: {html.escape(answer.provenance_line)}</small>" if answer.provenance else ""
    return (f"{where} · first token {ttft} · {answer.tokens_per_s:.1f} tokens/s · total {answer.total_s:.2f} s · "
            f"{answer.tokens} tokens{made_by}")


def chat_turns(message: str, history: History | None, settings: GenerationSettings, ws: Workspace,
               model: str | None, collection: str | None, token: str | None = None,
               ) -> Iterator[tuple[History, list[list[Any]], str]]:
    """Stream (history, source rows, stats) while one answer is generated; the engine does the work."""
    message = (message or "").strip()
    if not message:
        raise ValueError("Type a message first.")
    history = list(history or [])
    comparer, arm, choice = make_comparer(ws, model, collection, settings, prior_turns(history), token)
    history.append({"role": "user", "content": message})
    reply: dict[str, Any] = {"role": "assistant", "content": ""}
    history.append(reply)
    # Show the question at once: the model answers one request at a time, so the first token may take a while.
    yield history, [], stats_text(ArmAnswer(arm), choice, arm)
    final: ArmAnswer | None = None
    for partial in comparer.stream_arm(arm, Question(message)):
        reply["content"] = body_size(partial.text)  # a model's "# Heading" at body size
        final = partial
        yield history, source_rows(partial), stats_text(partial, choice, arm)
    if final is None:  # stream_arm always ends with a done answer; this guards a changed engine
        return
    if final.error:
        reply["content"] = "*(no answer: see the message)*"  # never leave a withheld answer's text on screen
        yield history, [], stats_text(final, choice, arm)
        raise RuntimeError(final.error)
    if not final.text:
        reply["content"] = "*(the model returned an empty answer; try again, or raise Max new tokens)*"
    if "rag" in arm:
        history.append({"role": "assistant", "content": sources_message(final),
                        "metadata": {"title": SOURCES_TITLE, "status": "done"}})
    yield history, source_rows(final), stats_text(final, choice, arm)


# ----------------------------------------------------------------------------------------- build


def build() -> ChatTabComponents:
    gr.Markdown("Chat with the base model or one of your fine-tuned runs. Pick a RAG collection to ground the "
                "answers in your documents: the passages used are listed under each answer, cited ones marked ✓.")
    with gr.Row(equal_height=True):
        model = gr.Dropdown(choices=model_choices(), value=BASE, label="Model", allow_custom_value=True,
                            info="The base model, or one of your finished runs (its adapter on the same base).",
                            elem_id="chat-model", scale=3)
        collection = gr.Dropdown(choices=[], value=NO_COLLECTION, label="RAG collection (optional)",
                                 allow_custom_value=True, info="Leave empty to chat without retrieval.",
                                 elem_id="chat-collection", scale=2)
        refresh_button = gr.Button("↻ Refresh", elem_id="chat-refresh", scale=0, min_width=110)
    model_note = gr.Markdown(small_model_note(BUNDLED_ID), elem_id="chat-model-note")
    chatbot = gr.Chatbot(label="Conversation", height=460, elem_id="chat-chatbot", buttons=["copy", "copy_all"],
                         feedback_options=None)
    with gr.Row(equal_height=True):
        message = gr.Textbox(label="Message", placeholder="Ask something… (Enter sends)", lines=1, max_lines=6,
                             elem_id="chat-message", scale=6, autofocus=False)
        send_button = gr.Button("Send", variant="primary", elem_id="chat-send", scale=1)
        clear_button = gr.Button("Clear", elem_id="chat-clear", scale=0, min_width=90)
    stats = gr.Markdown("", elem_id="chat-stats")
    sources = gr.Dataframe(headers=SOURCE_HEADERS, interactive=False, wrap=True, max_height=300, visible=False,
                           column_widths=SOURCE_WIDTHS, label="Passages read for the last answer ([n] ✓ = cited)",
                           elem_id="chat-sources")
    with gr.Accordion("Generation settings", open=False, elem_id="chat-settings"):
        generation = build_settings_form(GenerationSettings, prefix="chat-gen", advanced_label="More")
        hf_token = gr.Textbox("", label="Hugging Face token (only for a gated base model)", type="password",
                              info="Used for this chat only, kept in no file; needs read access to the model.",
                              elem_id="chat-hf-token")
    return ChatTabComponents(model, collection, refresh_button, chatbot, message, send_button, clear_button, stats,
                             sources, generation, hf_token, model_note)


# ----------------------------------------------------------------------------------------- events


def register(c: ChatTabComponents) -> None:
    """Wire Refresh, Send (button or Enter) and Clear; each is a public API endpoint (see the module docstring).

    The passages table shows only after an answer that read some; the small-model note follows the model picked."""
    endpoint(c.refresh_button.click, friendly_errors("Could not list your models")(refresh_pickers),
             [c.model, c.collection], [c.model, c.collection], api_name="chat_refresh")

    @friendly_errors("The model could not answer")
    def on_chat(message: str, history: list[dict[str, Any]] | None, model: str | None, collection: str | None,
                *values: Any, request: gr.Request, profile: gr.OAuthProfile | None = None) -> Iterator[list[Any]]:
        *values, hf_token = values
        check_message(message, request, profile=profile)
        check_history(sum(len(message_text(m) if isinstance(m, dict) else str(m)) for m in history or []), request,
                      profile)
        ws = workspace_of(request, profile)  # demo mode: the demo workspace (chat is allowed there)
        settings = c.generation.to_settings(values)
        for shown, rows, stats in chat_turns(message, history, settings, ws, model, collection, hf_token):
            yield [shown, "", rows, stats]

    chat = named_parameters(on_chat, [*API_INPUTS, *c.generation.names, "hf_token"], request=True)
    sent = endpoint([c.send_button.click, c.message.submit], chat,
                    [c.message, c.chatbot, c.model, c.collection, *c.generation.components, c.hf_token],
                    [c.chatbot, c.message, c.sources, c.stats], api_name="chat", show_progress="minimal")

    def on_clear() -> list[Any]:
        return [[], "", [], ""]

    cleared = endpoint(c.clear_button.click, on_clear, None, [c.chatbot, c.message, c.sources, c.stats],
                       api_name="chat_clear", show_progress="hidden")
    for event in (sent, cleared):  # the API keeps its four outputs; the page hides an empty table afterwards
        event.then(sources_visibility, c.sources, c.sources, api_visibility="private", show_progress="hidden")
    c.model.change(model_note_for, c.model, c.model_note, api_visibility="private", show_progress="hidden")


def model_note_for(model: str | None, request: gr.Request, profile: gr.OAuthProfile | None = None) -> str:
    """The small-model note for the model picked (nothing for a larger one)."""
    try:
        ws = workspace_of(request, profile)
    except gr.Error:
        ws = None
    return small_model_note(base_model_of(ws, model))


def refresh_pickers(model: str | None, collection: str | None, request: gr.Request,
                    profile: gr.OAuthProfile | None = None) -> list[Any]:
    """The visitor's own models and collections; a choice that is still there stays chosen."""
    ws = workspace_of(request, profile)
    models = model_choices(ws)
    names = collection_choices(ws)
    keep_model = model if model in {value for _, value in models} else BASE
    keep_collection = collection if collection in names else None
    return [gr.Dropdown(choices=models, value=keep_model), gr.Dropdown(choices=names, value=keep_collection)]


def fill_pickers_on_load(model: str | None, collection: str | None, request: gr.Request,
                         profile: gr.OAuthProfile | None = None) -> list[Any]:
    """:func:`refresh_pickers` without the toast: on page load a visitor not signed in yet just keeps ↻ Refresh."""
    try:
        return refresh_pickers(model, collection, request, profile)
    except Exception:
        return [gr.skip(), gr.skip()]


def register_page_load(demo: gr.Blocks, c: ChatTabComponents) -> None:
    """Fill the pickers with the visitor's own runs and collections when the page opens (Gradio's ``demo.load``)."""
    demo.load(fill_pickers_on_load, [c.model, c.collection], [c.model, c.collection], api_visibility="private",
              show_progress="hidden")


def register_tab_select(tab: gr.Tab, c: ChatTabComponents, *also: Any) -> None:
    """Refresh the pickers whenever the visitor opens the Chat tab, so a run or collection made since the page
    loaded is listed without pressing Refresh (one light request per tab opening, no polling). ``also``: more
    triggers, e.g. the ``gr.Tabs``' ``change`` (a button switching tabs does not fire ``tab.select``)."""
    gr.on([tab.select, *also], fill_pickers_on_load, [c.model, c.collection], [c.model, c.collection],
          api_visibility="private", show_progress="hidden")
