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
from ui import chat_tab, compare_tab, data_tab, experiment_tab, guide, lab_tab, share_tab, train_tab
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
        build_header(demo, policy)
        with gr.Accordion("New here? Try the whole app in about 10 minutes", open=True, elem_id="guide",
                          visible=writable):
            tour = guide.build()
        dataset = gr.State(None)
        with gr.Tabs() as tabs:
            with gr.Tab("Data", id="data", visible=writable):
                data = data_tab.build(dataset)
            with gr.Tab("Train", id="train", visible=writable):
                train = train_tab.build(dataset)
            rag = add_rag_tab(demo, visible=writable, demo_triggers=[tour.buttons["docs"].click])
            with gr.Tab("Compare", id="compare") as compare_page:
                compare = compare_tab.build()
                compare_tab.register(compare)
            add_experiment_tab(demo, visible=writable)
            with gr.Tab("Chat", id="chat") as chat_page:
                chat = chat_tab.build()
                chat_tab.register(chat)
            with gr.Tab("Share", id="share", visible=writable) as share_page:
                share = share_tab.build()
            add_lab_tab(demo)
        data_tab.register(data, check_with=[train.control(name) for name in data_tab.CHECK_SETTINGS],
                          extra_demo_triggers=[tour.buttons["demo"]])
        data_tab.register_page_load(demo, data)
        train_tab.register(train)
        train_tab.register_page_load(demo, train)
        share_tab.register(share)
        share_tab.register_page_load(demo, share)
        chat_tab.register_page_load(demo, chat)
        # Lists refresh when a tab is opened (by a click, or by the guide switching tabs), never by polling.
        compare_tab.register_tab_select(compare_page, compare, tabs.change)
        chat_tab.register_tab_select(chat_page, chat)
        share_tab.register_tab_select(share_page, share, tabs.change)
        if writable:
            guide.register(tour, demo, guide.GuideTargets(
                tabs=tabs, dataset=dataset, train_preset=train.preset, train_form=train.form, compare=compare,
                rag_collection=getattr(rag, "collection", None), rag_question=getattr(rag, "question", None)))
    return demo


def build_header(demo: gr.Blocks, policy: AccessPolicy) -> None:
    """Title, sign-in button, whose workspace this is, and the read-only demo's banner."""
    with gr.Row(equal_height=True):
        gr.Markdown(f"# {TITLE}\nFine-tune an open language model on your own examples — no code needed.")
        if policy.oauth:
            gr.LoginButton(scale=0, min_width=220)
    who = gr.Markdown(elem_id="signed-in-as")
    if policy.demo:
        gr.Markdown("**Read-only demo:** chat with the models and compare them. Training and indexing are "
                    "turned off here.", elem_id="demo-banner")
    demo.load(signed_in_text, None, who, api_visibility="private")


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


def add_rag_tab(demo: gr.Blocks, visible: bool = True, demo_triggers: list[Any] | None = None) -> Any:
    """Add the RAG tab when ``ui/rag_tab.py`` exists and builds; otherwise say so, and keep the app up.

    ``demo`` is the app's Blocks: the tab follows a visitor's running index job again on every page load.
    Returns the tab's components (the guide fills its question), or None when the tab is not there.
    """
    try:
        rag_tab: Any = importlib.import_module("ui.rag_tab")
    except ModuleNotFoundError as exc:
        if exc.name != "ui.rag_tab":
            log.warning("RAG tab not added: %s", exc)
        return None
    except Exception:
        log.exception("RAG tab not added: ui/rag_tab.py failed to import")
        return None
    with gr.Tab("RAG", id="rag", visible=visible):
        try:
            components = rag_tab.build()
            rag_tab.register(components, demo_triggers=demo_triggers)
            rag_tab.register_page_load(demo, components)
            return components
        except UndeclaredEndpointError:
            raise  # a programming error, not a server problem: the app must not start with it
        except Exception:
            log.exception("RAG tab failed to build")
            gr.Markdown("⚠️ The RAG tab could not be built on this server; the other tabs work. "
                        "See the server log for details.")
    return None


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
