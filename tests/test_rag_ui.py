"""The RAG tab's forms are generated from the stage settings and map back to the same pipeline spec."""

from __future__ import annotations

import gradio as gr

from engine.settings import describe
from rag.pipeline import PipelineSpec
from rag.stages import POST_STEPS
from ui import rag_tab


def _tab() -> rag_tab.RagTabComponents:
    with gr.Blocks():
        components = rag_tab.build()
        rag_tab.register(components)
    return components


def test_forms_cover_every_setting_and_round_trip_a_spec():
    c = _tab()
    for name, form in c.forms.items():
        assert form.names == [i.name for i in describe(rag_tab._settings_cls(name))]
    spec = (PipelineSpec().with_order(["rerank", "mmr", "dedupe", "threshold"]).with_enabled("mmr", True)
            .with_params("split", method="sentence", chunk_size=700, chunk_overlap=70)
            .with_params("retrieve", mode="dense", top_k=8).with_params("mmr", lambda_mult=0.4))
    values = rag_tab.form_updates(c, spec)
    assert len(values) == len(c.form_components())
    assert rag_tab.spec_from_form(c, tuple(values)) == spec


def test_every_event_has_a_stable_rag_api_name():
    with gr.Blocks() as demo:
        rag_tab.register(rag_tab.build())
    names = {fn.api_name for fn in demo.fns.values() if fn.api_name and fn.api_visibility != "private"}
    assert {"rag_open", "rag_apply_pipeline", "rag_preview", "rag_build", "rag_remove", "rag_reindex",
            "rag_import_pipeline", "rag_search", "rag_ask"} <= names
    assert all(n.startswith("rag_") for n in names)


def test_post_step_cards_are_draggable_in_spec_order():
    c = _tab()
    assert list(c.enabled) == [s.name for s in PipelineSpec().post]
    assert set(c.enabled) == set(POST_STEPS)
