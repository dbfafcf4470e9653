"""The app shell: a first-run guide, then one tab per job (Data, Train, RAG, Compare, Experiment, Chat, Share, Lab).

Why this shape: each tab file builds its components and then registers its events, so tabs can
share a few components (the loaded dataset, the Train settings the Data check depends on) without
knowing each other's layout. The RAG tab belongs to another module and is optional: the app must
work whether or not it is present or healthy.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

import gradio as gr

from engine.quotas import upload_bytes_limit
from engine.workspace import AccessPolicy
from services.hub import connect_downloads
from ui import chat_tab, compare_tab, data_tab, experiment_tab, lab_tab, share_tab, train_tab
from ui.common import UndeclaredEndpointError, signed_in_user

log = logging.getLogger("tune_studio.ui")

TITLE = "Tune Studio"
#: Gradio's own cache (uploads, and the copies of every download it served): checked hourly, files older
#: than a day deleted. Handlers copy what they keep into the workspace at once, so nothing needs them longer.
GRADIO_CACHE_CLEANUP = (3600, 86400)
CSS = """
.ts-progress progress { height: 14px; }
.ts-progress-text { font-size: 0.95em; margin-top: 4px; }
#experiment-verdict p { font-size: 1.45em; font-weight: 600; line-height: 1.35; }
"""

GUIDE_STEPS = (
    ("Load data", "Start with the demo dataset (41 questions and answers about this app), or drop your own file "
                  "in the **Data** tab. Tune Studio shows the format it detected, any problems row by row, and "
                  "a preview of what the model will learn."),
    ("Pick settings", "The quick CPU preset trains the bundled SmolLM2 model in a few minutes on a laptop. "
                      "The memory estimate tells you whether the run fits before you start."),
    ("Train", "In the **Train** tab press **Start training**. Watch the loss fall; you may close the page — "
              "the run continues and reappears when you come back."),
    ("Try and download", "When the run is finished, ask it a question under *Try it*, and download the adapter "
                         "or the merged model."),
)


def build_app(policy: AccessPolicy | None = None) -> gr.Blocks:
    """The whole web app. Per-visitor state lives in gr.State / component values, never in module globals.

    ``policy`` (default: from the environment) decides sign-in and the read-only demo: in the demo the
    building tabs are hidden *and* their handlers refuse, so the API cannot train either (every public
    event is registered through ``ui.common.endpoint``, which puts the demo check in front of it).
    """
    policy = policy or AccessPolicy.from_env()
    writable = not policy.demo
    scrub_stored_secrets()
    connect_downloads()  # Hub embedders download through engine.hub, like models (rag cannot import engine)
    with gr.Blocks(title=TITLE, delete_cache=GRADIO_CACHE_CLEANUP) as demo:
        with gr.Row(equal_height=True):
            gr.Markdown(f"# {TITLE}\nFine-tune an open language model on your own examples — no code needed.")
            if policy.oauth:
                gr.LoginButton(scale=0, min_width=220)
        who = gr.Markdown(elem_id="signed-in-as")
        if policy.demo:
            gr.Markdown("**Read-only demo:** chat with the models and compare them. Training and indexing are "
                        "turned off here.", elem_id="demo-banner")
        with gr.Accordion("New here? Follow these four steps", open=True, elem_id="guide", visible=writable):
            guide, guide_buttons = build_guide()
        dataset = gr.State(None)
        with gr.Tabs() as tabs:
            with gr.Tab("Data", id="data", visible=writable):
                data = data_tab.build(dataset)
            with gr.Tab("Train", id="train", visible=writable):
                train = train_tab.build(dataset)
            add_rag_tab(demo, visible=writable)
            with gr.Tab("Compare", id="compare"):
                compare_tab.register(compare_tab.build())
            add_experiment_tab(demo, visible=writable)
            with gr.Tab("Chat", id="chat"):
                chat = chat_tab.build()
                chat_tab.register(chat)
            with gr.Tab("Share", id="share", visible=writable):
                share = share_tab.build()
            add_lab_tab(demo)
        data_tab.register(data, check_with=[train.control(name) for name in data_tab.CHECK_SETTINGS],
                          extra_demo_triggers=[guide_buttons["demo"]])
        train_tab.register(train)
        train_tab.register_page_load(demo, train)
        share_tab.register(share)
        share_tab.register_page_load(demo, share)
        chat_tab.register_page_load(demo, chat)
        register_guide(guide, guide_buttons, tabs, train)
        demo.load(signed_in_text, None, who, api_visibility="private")
    return demo


def scrub_stored_secrets() -> None:
    """Remove PDF passwords older versions saved with collections (manifests, demo Space copies) at start-up.

    Never stops the app from starting: a failure is logged and the app serves as before.
    """
    try:
        from core.paths import data_dir
        from rag.pipeline import scrub_stored_passwords

        fixed = scrub_stored_passwords(data_dir())
    except Exception:
        log.exception("Could not check saved pipelines for stored PDF passwords")
        return
    if fixed:
        log.warning("Removed stored PDF passwords from %d saved pipeline(s)", len(fixed))


def signed_in_text(request: gr.Request, profile: gr.OAuthProfile | None = None) -> str:
    """Whose workspace this page shows, so two people on one Space know they are apart."""
    user = signed_in_user(request, profile)
    return f"Signed in as **{user}** — your datasets, runs and indexes are yours only." if user else ""


def build_guide() -> tuple[gr.Walkthrough, dict[str, gr.Button]]:
    """A gr.Walkthrough whose steps each say what to do and offer the one click that does it."""
    buttons: dict[str, gr.Button] = {}
    with gr.Walkthrough(selected=0) as guide:
        for index, (label, text) in enumerate(GUIDE_STEPS):
            with gr.Step(label, id=index):
                gr.Markdown(text)
                with gr.Row():
                    if index == 0:
                        buttons["demo"] = gr.Button("Load the demo dataset", variant="primary", elem_id="guide-demo")
                    if index == 1:
                        buttons["preset"] = gr.Button("Use the quick CPU preset", variant="primary",
                                                      elem_id="guide-preset")
                    if index == 2:
                        buttons["to_train"] = gr.Button("Open the Train tab", variant="primary")
                    if index < len(GUIDE_STEPS) - 1:
                        buttons[f"next{index}"] = gr.Button("Next step →", elem_id=f"guide-next-{index}")
    return guide, buttons


def register_guide(guide: gr.Walkthrough, buttons: dict[str, gr.Button], tabs: gr.Tabs,
                   train: train_tab.TrainTabComponents) -> None:
    for index in range(len(GUIDE_STEPS) - 1):
        buttons[f"next{index}"].click(lambda i=index: gr.Walkthrough(selected=i + 1), None, guide,
                                      api_visibility="private")
    buttons["demo"].click(lambda: gr.Walkthrough(selected=1), None, guide, api_visibility="private")
    quick = "quick-cpu-demo"
    buttons["preset"].click(lambda: (gr.Dropdown(value=quick), gr.Walkthrough(selected=2), gr.Tabs(selected="train")),
                            None, [train.preset, guide, tabs], api_visibility="private")
    buttons["to_train"].click(lambda: gr.Tabs(selected="train"), None, tabs, api_visibility="private")


def add_experiment_tab(demo: gr.Blocks, visible: bool = True) -> None:
    """The Experiment: documents -> questions -> split -> fine-tune and four answering approaches -> verdict."""
    with gr.Tab("Experiment", id="experiment", visible=visible):
        experiment = experiment_tab.build()
        experiment_tab.register(experiment)
        experiment_tab.register_page_load(demo, experiment)


def add_lab_tab(demo: gr.Blocks) -> None:
    """The Lab: read-only computations on models and the visitor's own runs, so it is shown in the demo too."""
    with gr.Tab("Lab", id="lab"):
        lab = lab_tab.build()
        lab_tab.register(lab)
        lab_tab.register_page_load(demo, lab)


def add_rag_tab(demo: gr.Blocks, visible: bool = True) -> None:
    """Add the RAG tab when ``ui/rag_tab.py`` exists and builds; otherwise say so, and keep the app up.

    ``demo`` is the app's Blocks: the tab follows a visitor's running index job again on every page load.
    """
    try:
        rag_tab: Any = importlib.import_module("ui.rag_tab")
    except ModuleNotFoundError as exc:
        if exc.name != "ui.rag_tab":
            log.warning("RAG tab not added: %s", exc)
        return
    except Exception:
        log.exception("RAG tab not added: ui/rag_tab.py failed to import")
        return
    with gr.Tab("RAG", id="rag", visible=visible):
        try:
            components = rag_tab.build()
            rag_tab.register(components)
            rag_tab.register_page_load(demo, components)
        except UndeclaredEndpointError:
            raise  # a programming error, not a server problem: the app must not start with it
        except Exception:
            log.exception("RAG tab failed to build")
            gr.Markdown("⚠️ The RAG tab could not be built on this server; the other tabs work. "
                        "See the server log for details.")


def launch_kwargs(policy: AccessPolicy | None = None, share: bool = False) -> dict[str, Any]:
    """Settings that Gradio 6 takes at launch (theme, css, sign-in, share link) rather than in gr.Blocks.

    No ``allowed_paths``: the data directory is never served. Downloads are copies the handlers
    hand out (``served_copy``), so one visitor cannot fetch another's files by path.
    """
    policy = policy or AccessPolicy.from_env()
    kwargs: dict[str, Any] = {"css": CSS, "theme": gr.themes.Soft(), "share": share or policy.share,
                              "max_file_size": upload_bytes_limit()}  # Gradio refuses bigger uploads itself
    if policy.users:
        kwargs["auth"] = policy.check_password
        kwargs["auth_message"] = "Sign in to your Tune Studio workspace."
    return kwargs
