"""The RAG tab's forms are generated from the stage settings and map back to the same pipeline spec."""

from __future__ import annotations

import gradio as gr

from core.settings import describe
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
    # The page puts the steps in use first (above the palette's divider): the order among unused steps is not kept.
    used_first = [s.name for s in spec.post if s.enabled] + [s.name for s in spec.post if not s.enabled]
    assert values[0] == "rerank,mmr,dedupe,unused,threshold,parent_child"
    assert rag_tab.spec_from_form(c, tuple(values)) == spec.with_order(used_first)


def test_every_event_has_a_stable_rag_api_name():
    with gr.Blocks() as demo:
        rag_tab.register(rag_tab.build())
    names = {name.lstrip("/") for name in demo.get_api_info(all_endpoints=True)["named_endpoints"]}
    assert {"rag_open", "rag_apply_pipeline", "rag_preview", "rag_build", "rag_remove", "rag_reindex",
            "rag_import_pipeline", "rag_search", "rag_ask", "rag_cancel"} <= names
    assert all(n.startswith("rag_") for n in names)


def test_post_step_cards_are_draggable_in_spec_order():
    c = _tab()
    # The steps in use first, then the palette (below its divider) in the default spec's order.
    assert list(c.enabled) == ["dedupe", "rerank", "threshold", "mmr", "parent_child"]
    assert set(c.enabled) == set(POST_STEPS)
    assert c.order.value == "dedupe,rerank,unused,threshold,mmr,parent_child"


def test_job_view_renders_progress_refusals_and_the_final_counts(tmp_path):
    """What a follower shows: one line per note (warnings marked), the shared progress line, then "Done" with counts."""
    import json
    from dataclasses import replace

    from engine.events import Log, Progress, Queued
    from engine.jobs import JobRecord

    view = rag_tab.JobView()
    view.add(Queued("j1", position=2))
    assert view.live == "Queued (number 2 in line for indexing)…"
    view.add(Log("j1", message="memo.pdf: 3 section(s), 1,200 characters, 2 page(s)"))
    view.add(Log("j1", message="'password.pdf' is password-protected.", level="warning"))
    view.add(Progress("j1", phase="embed", done=64, total=256, unit="chunks", rate=8.0, eta_seconds=24))
    assert view.live == "Embedding: 64 of 256 chunks · 8 chunks/s · 24 s left"
    job = JobRecord(id="j1", owner="local", name="Build docs", status="running", created_at=0, started_at=0,
                    finished_at=None, config=None, data_path="", mapping=None, data_options={}, run_dir=tmp_path,
                    pid=None, pid_started=None, cancel_requested=False, resume_from=None, error=None, last_step=0,
                    total_steps=0, final_loss=None, kind="index")  # type: ignore[arg-type]
    text = view.text(job)
    assert text.splitlines()[:2] == ["- ✅ memo.pdf: 3 section(s), 1,200 characters, 2 page(s)",
                                     "- ⚠️ 'password.pdf' is password-protected."]
    assert view.text(replace(job, status="cancelling")).endswith("cancel requested, stopping at the next batch…")
    (tmp_path / "result.json").write_text(json.dumps({
        "action": "add", "version": 3, "files": 4, "chunks": 256, "embedded": 250, "reused": 6, "refused": [{}],
        "seconds": 31.5, "needs_reindex": False}))
    done = "**Done** in 31.5s: the collection holds 4 file(s), 256 chunks (250 embedded, 6 reused, 1 refused)"
    assert view.text(replace(job, status="done")).endswith(done + " — version 3.")



def test_checks_follow_the_form_as_it_changes_before_apply():
    """A setting changed on the page re-checks the pipeline at once (every card control's change event runs
    ``live_checks``): keyword-only search makes the threshold card explain itself; a value that does not make a
    pipeline (a number below its minimum, half typed) leaves the checks as they were."""
    c = _tab()
    spec = PipelineSpec().with_enabled("threshold", True)
    checks = dict(zip(rag_tab.CHECKED_STAGES, rag_tab.live_checks(c, tuple(rag_tab.form_updates(c, spec))),
                      strict=True))
    assert checks["threshold"] == ""

    bm25_only = rag_tab.form_updates(c, spec.with_params("retrieve", mode="bm25"))
    checks = dict(zip(rag_tab.CHECKED_STAGES, rag_tab.live_checks(c, tuple(bm25_only)), strict=True))
    assert "keyword only (bm25)" in checks["threshold"]

    forms = list(c.forms)
    top_k_at = (1 + len(c.enabled) + sum(len(c.forms[n].components) for n in forms[: forms.index("retrieve")])
                + c.forms["retrieve"].names.index("top_k"))
    broken = list(bm25_only)
    broken[top_k_at] = -5
    assert rag_tab.live_checks(c, tuple(broken)) == [gr.skip()] * len(rag_tab.CHECKED_STAGES)
