"""The first-run guide: the whole product in six short steps, each with the one click that does it.

Why it reads the workspace instead of counting clicks: a newcomer who already loaded data, started a run
or built a collection (in another tab, or before a reload) must not be sent back to do it again, so the
guide shows ✓ / ⏳ / ○ for every step and opens the first one not done (``services.guide``). Every step's
button also opens the tab where its result appears, so "what now?" always has an answer on screen.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from services.guide import STEP_IDS, STEPS, GuideProgress, mark_visited, progress_of
from ui.common import friendly_errors, workspace_of

#: The question the guide asks in RAG and Compare: both the demo dataset and the demo documents cover it.
DEMO_QUESTION = "What does RAG mean?"
TASTE_PRESET = "taste-cpu"
REFRESH_SECONDS = 5.0  # how soon the checklist notices a finished run or a built collection
#: The tab each step's result appears in (ids of the app's gr.Tab).
STEP_TABS = {"data": "data", "train": "train", "docs": "rag", "ask": "rag", "compare": "compare",
             "share": "share"}
FOUR_ANSWERS = ["base", "ft", "rag", "ft+rag"]


@dataclass
class GuideComponents:
    checklist: gr.Markdown
    walkthrough: gr.Walkthrough
    buttons: dict[str, gr.Button]
    shown: gr.State
    timer: gr.Timer


@dataclass
class GuideTargets:
    """What the guide's buttons fill in or open in other tabs (the tabs own these components)."""

    tabs: gr.Tabs
    dataset: gr.State
    train_preset: gr.Dropdown
    train_form: Any  # ui.common.SettingsForm of the Train tab
    rag_collection: gr.Dropdown | None = None
    rag_question: gr.Textbox | None = None
    compare: Any = None  # ui.compare_tab.CompareTabComponents


def build() -> GuideComponents:
    """The checklist line and one walkthrough step per stage, each with its action and a "Next" button."""
    checklist = gr.Markdown(GuideProgress(False, None, None, False).checklist(), elem_id="guide-checklist")
    buttons: dict[str, gr.Button] = {}
    with gr.Walkthrough(selected=0, elem_id="guide-steps") as walkthrough:
        for index, (step, label, text) in enumerate(STEPS):
            with gr.Step(f"{index + 1}. {label}", id=index, elem_id=f"guide-step-{step}"):
                gr.Markdown(text)
                with gr.Row():
                    _step_buttons(step, buttons)
                    if index < len(STEPS) - 1:
                        buttons[f"next-{step}"] = gr.Button("Next step →", elem_id=f"guide-next-{step}", size="md")
    return GuideComponents(checklist=checklist, walkthrough=walkthrough, buttons=buttons, shown=gr.State(-1),
                           timer=gr.Timer(REFRESH_SECONDS))


def _step_buttons(step: str, buttons: dict[str, gr.Button]) -> None:
    """The step's own action (primary) and, where it helps, a second way ("my own file")."""
    actions = {
        "data": [("demo", "Load the demo dataset", "primary"), ("own-data", "Use my own file", "secondary")],
        "train": [("preset", "Choose the 2-minute taste preset", "primary")],
        "docs": [("docs", "Index the demo documents", "primary"), ("own-docs", "Use my own documents", "secondary")],
        "ask": [("ask", f"Ask “{DEMO_QUESTION}” with sources", "primary")],
        "compare": [("compare", "See the four answers side by side", "primary")],
        "share": [("share", "Open Share", "primary")],
    }[step]
    for key, label, variant in actions:
        buttons[key] = gr.Button(label, variant=variant, elem_id=f"guide-{key}", size="md")


# ----------------------------------------------------------------------------------------- events


def register(g: GuideComponents, demo: gr.Blocks, t: GuideTargets) -> None:
    """Follow the workspace (page load and a light timer); wire each step's buttons."""
    follow = [g.checklist, g.walkthrough, g.shown]
    demo.load(follow_state, [t.dataset, g.shown], follow, api_visibility="private")
    g.timer.tick(follow_state, [t.dataset, g.shown], follow, api_visibility="private", show_progress="hidden")
    for index, step in enumerate(STEP_IDS[:-1]):
        nxt = STEP_IDS[index + 1]
        g.buttons[f"next-{step}"].click(lambda i=index + 1, s=nxt: (gr.Walkthrough(selected=i),
                                                                     gr.Tabs(selected=STEP_TABS[s])),
                                        None, [g.walkthrough, t.tabs], api_visibility="private")
    open_tab = lambda tab: (lambda: gr.Tabs(selected=tab))  # noqa: E731
    g.buttons["demo"].click(open_tab("data"), None, t.tabs, api_visibility="private")
    g.buttons["own-data"].click(open_tab("data"), None, t.tabs, api_visibility="private")
    g.buttons["preset"].click(choose_taste_preset(t), None, [t.train_preset, t.tabs, *t.train_form.components],
                              api_visibility="private")
    g.buttons["own-docs"].click(open_tab("rag"), None, t.tabs, api_visibility="private")
    # Building the demo documents is the RAG tab's own handler (registered there with this button as a
    # trigger), so that page follows the job; here the button only opens the tab.
    g.buttons["docs"].click(open_tab("rag"), None, t.tabs, api_visibility="private")
    _register_visits(g, t)


def _present(*components: Any) -> list[Any]:
    return [c for c in components if c is not None]


def _register_visits(g: GuideComponents, t: GuideTargets) -> None:
    """Ask, Compare and Share leave nothing in the workspace: opening them from the guide counts as done."""
    rag_outputs = [t.tabs, *_present(t.rag_collection, t.rag_question)]
    g.buttons["ask"].click(friendly_errors("Could not open the question")(ask_in_rag(t)), None, rag_outputs,
                           api_visibility="private")
    if t.compare is not None:
        c = t.compare
        g.buttons["compare"].click(friendly_errors("Could not open Compare")(open_compare), None,
                                   [t.tabs, c.arms, c.run, c.collection, c.question], api_visibility="private")
    g.buttons["share"].click(visit_and_open("share"), None, t.tabs, api_visibility="private")


def follow_state(dataset: Any, shown: int, request: gr.Request) -> tuple[str, Any, int]:
    """The checklist, and the first step not done when that changed since last time.

    Why only on a change: the visitor may open another step by hand; a timer that kept selecting the
    "current" step would take it away from them every few seconds.
    """
    progress = progress_of(workspace_of(request), loaded=dataset is not None)
    current = progress.current()
    step = gr.Walkthrough(selected=current) if current != shown else gr.Walkthrough()
    return progress.checklist(), step, current


def choose_taste_preset(t: GuideTargets) -> Any:
    def choose() -> list[Any]:
        """The preset, and its values written into the form at once: when the dropdown already shows it (the
        default on a CPU), choosing it again fires no change, and the visitor may have edited the form since."""
        from ui.train_tab import apply_preset

        return [gr.Dropdown(value=TASTE_PRESET), gr.Tabs(selected="train"), *apply_preset(t.train_form, TASTE_PRESET)]

    return choose


def ask_in_rag(t: GuideTargets) -> Any:
    def ask(request: gr.Request) -> list[Any]:
        """Fill the RAG tab's question (and pick the newest collection); the visitor presses Ask."""
        ws = workspace_of(request)
        mark_visited(ws, "ask")
        progress = progress_of(ws)
        out: list[Any] = [gr.Tabs(selected="rag")]
        if t.rag_collection is not None:
            out.append(gr.Dropdown(choices=ws.index_names(), value=progress.collection)
                       if progress.collection else gr.Dropdown())
        if t.rag_question is not None:
            out.append(gr.Textbox(value=DEMO_QUESTION))
        return out

    return ask


def open_compare(request: gr.Request) -> list[Any]:
    """Compare with the four answers chosen, the newest finished run and collection, and the demo question."""
    ws = workspace_of(request)
    mark_visited(ws, "compare")
    from ui.compare_tab import collection_choices, run_choices

    progress = progress_of(ws)
    run = progress.run.id if progress.run_done and progress.run is not None else None
    runs = run_choices(ws)
    return [gr.Tabs(selected="compare"), gr.CheckboxGroup(value=FOUR_ANSWERS),
            gr.Dropdown(choices=runs, value=run) if run else gr.Dropdown(choices=runs),
            gr.Dropdown(choices=collection_choices(ws), value=progress.collection),
            gr.Textbox(value=DEMO_QUESTION)]


def visit_and_open(step: str) -> Any:
    def visit(request: gr.Request) -> Any:
        mark_visited(workspace_of(request), step)
        return gr.Tabs(selected=STEP_TABS[step])

    return visit
