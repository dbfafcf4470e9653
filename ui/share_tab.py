"""The Share tab: publish a finished run to the Hugging Face Hub, and build (or push) a demo Space for it.

Same shape as the other tabs: :func:`build` makes the components, :func:`register` wires the events,
and every event has a stable ``api_name`` prefixed ``share_``. All the work is in
:mod:`services.publish`; this file picks the visitor's own run and collection through their
:class:`~engine.workspace.Workspace` and formats. The token field is a password box; its value is
handed to the engine in memory and never logged, stored or echoed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from engine.files import write_archive
from engine.jobs import JobRecord
from engine.workspace import Workspace
from services.public_link import public_link
from services.publish import (
    build_demo_space,
    build_model_folder,
    check_repo_id,
    check_token,
    model_card,
    push_model,
    push_space,
    require_finished,
)
from ui.common import endpoint, friendly_errors, require_write, served_folder, workspace_of

NO_COLLECTION = "(no documents)"
INTRO = ("## Share\nPublish a finished run to the Hugging Face Hub with a model card that records its base model, "
         "data fingerprint, settings and metrics, and publish a small demo Space that chats with it (optionally "
         "answering from one of your RAG collections, with sources).")
STEPS = ("**Publish a demo Space in four clicks:** 1. pick the finished run (and, if you like, a RAG collection); "
         "2. type a name for the Space, as *your-username/my-demo*; 3. paste a Hugging Face token with write "
         "access (on huggingface.co: your profile picture → Settings → Access Tokens → Create new token, type "
         "*Write*); 4. press **Push the demo Space**. Its address appears here when it is published; the Space "
         "is ready a few minutes later. **Push the model** publishes the run itself the same way.")
TOKEN_NEEDED = ("Paste a Hugging Face token with write access into the token field first (on huggingface.co: your "
                "profile picture → Settings → Access Tokens → Create new token, type *Write*).")


@dataclass
class ShareTabComponents:
    link: gr.Markdown
    run: gr.Dropdown
    collection: gr.Dropdown
    refresh_button: gr.Button
    model_repo: gr.Textbox
    space_repo: gr.Textbox
    space_title: gr.Textbox
    hf_token: gr.Textbox
    private: gr.Checkbox
    include_merged: gr.Checkbox
    card_button: gr.Button
    build_button: gr.Button
    push_model_button: gr.Button
    push_demo_button: gr.Button
    status: gr.Markdown
    download: gr.File
    card: gr.Markdown


# ----------------------------------------------------------------------------------------- choices


def run_choices(ws: Workspace) -> list[tuple[str, str]]:
    """The visitor's finished runs, as (label, run id)."""
    return [(f"{job.name} · {job.id} · {job.config.base_model.split('/')[-1]}", job.id)
            for job in ws.finished_runs()]


def collection_choices(ws: Workspace) -> list[str]:
    return [NO_COLLECTION, *ws.index_names()]


def chosen_run(ws: Workspace, run_id: str | None) -> JobRecord:
    """The visitor's own finished run; someone else's id reads as missing (the workspace refuses it)."""
    if not run_id:
        raise ValueError("Pick one of your finished runs first (press ↻ Refresh if it finished after the page "
                         "loaded).")
    job = ws.run(run_id)
    require_finished(job)
    return job


def chosen_index(ws: Workspace, collection: str | None) -> Path | None:
    if not collection or collection == NO_COLLECTION:
        return None
    path = ws.index_path(collection)
    if not (path / "manifest.json").exists():
        raise ValueError(f"There is no collection named {collection!r} in your workspace; build it in the RAG tab.")
    return path


def optional_repo(repo_id: str | None) -> str | None:
    return check_repo_id(repo_id) if (repo_id or "").strip() else None


# ----------------------------------------------------------------------------------------- build


def build() -> ShareTabComponents:
    """The link to this app, the pickers, the repo names and token, the four actions and their results."""
    gr.Markdown(INTRO)
    link = gr.Markdown(public_link(os.environ).text, elem_id="share-link")  # the share link, if any, at page load
    gr.Markdown(STEPS, elem_id="share-steps")
    with gr.Row(equal_height=True):
        run = gr.Dropdown(choices=[], value=None, label="Finished run", allow_custom_value=True, elem_id="share-run",
                          scale=3)
        collection = gr.Dropdown(choices=[NO_COLLECTION], value=NO_COLLECTION, allow_custom_value=True,
                                 label="RAG collection for the demo (optional)", elem_id="share-collection", scale=2)
        refresh_button = gr.Button("↻ Refresh", elem_id="share-refresh", scale=1)
    with gr.Row(equal_height=True):
        model_repo = gr.Textbox("", label="Model repo id", placeholder="your-username/my-adapter",
                                elem_id="share-model-repo")
        space_repo = gr.Textbox("", label="Demo Space repo id", placeholder="your-username/my-adapter-demo",
                                elem_id="share-space-repo")
        space_title = gr.Textbox("", label="Demo title (optional)", placeholder="defaults to the run's name",
                                 elem_id="share-space-title")
    with gr.Row(equal_height=True):
        hf_token = gr.Textbox("", label="Hugging Face token (write scope)", type="password", scale=3,
                              info="Used for this push only; never stored, logged or written into the files.",
                              elem_id="share-token")
        private = gr.Checkbox(True, label="Private repos", elem_id="share-private")
        include_merged = gr.Checkbox(False, label="Include the merged model", elem_id="share-merged",
                                     info="Also publish the adapter folded into the base (loads without PEFT).")
    with gr.Row():
        card_button = gr.Button("Preview the model card", elem_id="share-card")
        build_button = gr.Button("Download the demo Space (zip)", elem_id="share-build-demo")
        push_model_button = gr.Button("Push the model", variant="primary", elem_id="share-push-model")
        push_demo_button = gr.Button("Push the demo Space", variant="primary", elem_id="share-push-demo")
    status = gr.Markdown("", elem_id="share-status")
    download = gr.File(label="Demo Space folder (zip)", interactive=False, elem_id="share-download")
    card = gr.Markdown("", elem_id="share-card-preview")
    return ShareTabComponents(link, run, collection, refresh_button, model_repo, space_repo, space_title, hf_token,
                              private, include_merged, card_button, build_button, push_model_button,
                              push_demo_button, status, download, card)


# ----------------------------------------------------------------------------------------- actions


def card_preview(card: str) -> str:
    """The card as it renders on the Hub: the YAML front matter shown as a code block above the body."""
    if card.startswith("---\n"):
        front, _, body = card[4:].partition("\n---\n")
        return f"```yaml\n{front}\n```\n{body}"
    return card


def zipped_copy(folder: Path) -> str:
    """A zip of the folder in a fresh download folder (the data directory itself is never served), written
    atomically and deleted with the other download copies after an hour."""
    return str(write_archive(folder, served_folder() / f"{folder.name}.zip"))


def demo_folder(ws: Workspace, job: JobRecord, collection: str | None, title: str | None,
                model_repo: str | None) -> Path:
    return build_demo_space(job, ws.exports / f"demo-space-{job.id}", index_path=chosen_index(ws, collection),
                            title=title, model_repo=optional_repo(model_repo))


def refresh(run_id: str | None, request: gr.Request, profile: gr.OAuthProfile | None = None) -> list[gr.Dropdown]:
    """The visitor's runs and collections; the chosen run stays chosen, else the newest one is picked."""
    ws = workspace_of(request, profile)
    runs = run_choices(ws)
    ids = [value for _, value in runs]
    chosen = run_id if run_id in ids else (ids[0] if ids else None)
    return [gr.Dropdown(choices=runs, value=chosen), gr.Dropdown(choices=collection_choices(ws))]


def preview_card(run_id: str | None, model_repo: str | None, include_merged: bool, request: gr.Request,
                 profile: gr.OAuthProfile | None = None) -> str:
    job = chosen_run(workspace_of(request, profile), run_id)
    return card_preview(model_card(job, optional_repo(model_repo), bool(include_merged)))


def build_demo(run_id: str | None, collection: str | None, space_title: str | None, model_repo: str | None,
               request: gr.Request, profile: gr.OAuthProfile | None = None) -> list[str]:
    require_write("Publishing")
    ws = workspace_of(request, profile)
    folder = demo_folder(ws, chosen_run(ws, run_id), collection, space_title, model_repo)
    return [f"Built the demo Space for run {run_id}: the zip below is a copy to keep, or to upload to a Space by "
            "hand. To publish it in one click instead, fill in the Space name and your token and press **Push the "
            "demo Space**.", zipped_copy(folder)]


def push_model_repo(run_id: str | None, model_repo: str | None, hf_token: str | None, private: bool,
                    include_merged: bool, request: gr.Request, profile: gr.OAuthProfile | None = None) -> str:
    require_write("Publishing")
    ws = workspace_of(request, profile)
    job = chosen_run(ws, run_id)
    repo, token = check_repo_id(model_repo), check_token(token_given(hf_token))  # before a (possibly slow) merge
    folder = build_model_folder(job, ws.exports / f"model-{job.id}", include_merged=bool(include_merged),
                                token=token, repo_id=repo)
    url = push_model(folder, repo, token, private=bool(private))
    return (f"Pushed the {'adapter and merged model' if include_merged else 'adapter'} with its model card: "
            f"**[{url}]({url})**")


def push_demo_space(run_id: str | None, collection: str | None, space_title: str | None, space_repo: str | None,
                    model_repo: str | None, hf_token: str | None, private: bool, request: gr.Request,
                    profile: gr.OAuthProfile | None = None) -> str:
    require_write("Publishing")
    ws = workspace_of(request, profile)
    job = chosen_run(ws, run_id)
    repo, token = check_repo_id(space_repo), check_token(token_given(hf_token))
    folder = demo_folder(ws, job, collection, space_title, model_repo)
    url = push_space(folder, repo, token, private=bool(private))
    shared = "private: only you (and your organisation) can open it" if private else "public: anyone can open it"
    return (f"Published the demo Space: **[{url}]({url})** ({shared}). Hugging Face builds it in a few minutes; "
            "the page shows *Building* until then.")


def token_given(hf_token: str | None) -> str:
    """The pasted token, or a message that says where to make one (before anything is built or sent)."""
    if not (hf_token or "").strip():
        raise ValueError(TOKEN_NEEDED)
    return str(hf_token)


# ----------------------------------------------------------------------------------------- events


def register(c: ShareTabComponents) -> None:
    """Wire Refresh, the model card preview, Build and the two pushes (``share_*`` API endpoints)."""
    endpoint(c.refresh_button.click, refresh, c.run, [c.run, c.collection], api_name="share_refresh")
    endpoint(c.card_button.click, friendly_errors("Could not write the model card")(preview_card),
             [c.run, c.model_repo, c.include_merged], c.card, api_name="share_model_card")
    endpoint(c.build_button.click, friendly_errors("Could not build the demo Space")(build_demo),
             [c.run, c.collection, c.space_title, c.model_repo], [c.status, c.download], api_name="share_build_demo")
    endpoint(c.push_model_button.click, friendly_errors("Could not push the model")(push_model_repo),
             [c.run, c.model_repo, c.hf_token, c.private, c.include_merged], c.status, api_name="share_push_model")
    endpoint(c.push_demo_button.click, friendly_errors("Could not push the demo Space")(push_demo_space),
             [c.run, c.collection, c.space_title, c.space_repo, c.model_repo, c.hf_token, c.private], c.status,
             api_name="share_push_demo")


def link_text(demo: gr.Blocks) -> str:
    """The link to this app as :func:`services.public_link.public_link` words it, from the environment and the
    share link Gradio made at launch (the running Blocks' ``share_url``; None without one)."""
    return public_link(os.environ, getattr(demo, "share_url", None)).text


def register_page_load(demo: gr.Blocks, c: ShareTabComponents) -> None:
    """Fill the run and collection pickers with this visitor's own items, and the app's link, when the page loads."""
    demo.load(refresh, c.run, [c.run, c.collection], api_visibility="private")
    demo.load(lambda: link_text(demo), None, c.link, api_visibility="private", show_progress="hidden")


def register_tab_select(tab: gr.Tab, c: ShareTabComponents, *also: Any) -> None:
    """Refresh the pickers whenever the visitor opens the Share tab (a run finished since the page loaded).
    ``also``: more triggers, e.g. the ``gr.Tabs``' ``change`` (a button switching tabs does not fire ``tab.select``)."""
    gr.on([tab.select, *also], quiet_refresh, c.run, [c.run, c.collection], api_visibility="private",
          show_progress="hidden")


def quiet_refresh(run_id: str | None, request: gr.Request, profile: gr.OAuthProfile | None = None) -> list[Any]:
    """:func:`refresh` without a toast when the visitor is not signed in yet."""
    try:
        return list(refresh(run_id, request, profile))
    except gr.Error:
        return [gr.skip(), gr.skip()]
