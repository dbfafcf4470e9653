"""Index builds as background jobs (real worker processes through the job store) and the shared reader cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.events import Cancelled, Done, EventLog, Log, Progress
from engine.jobs import JobStore
from engine.workspace import Workspace
from rag.index import MANIFEST, RagIndex, ReadOnlyIndexError
from rag.pipeline import PipelineSpec
from services import collections
from services.index_jobs import (
    IndexJobError,
    index_jobs,
    read_result,
    stage_uploads,
    staging_dir,
    submit_index_job,
    sweep_staging,
)

TESTDATA = Path(__file__).resolve().parents[1].parent / "shared" / "testdata"
DOCS = TESTDATA / "docs" / "unstructured"
WIKI = TESTDATA / "ft" / "llama_factory" / "wiki_demo.txt"  # 1 MB of plain text: a build long enough to cancel
pytestmark = pytest.mark.skipif(not DOCS.is_dir(), reason=f"shared test data missing at {DOCS}")


def small_spec() -> PipelineSpec:
    return PipelineSpec().with_params("split", chunk_size=500, chunk_overlap=50)


@pytest.fixture
def ws(isolated_home) -> Workspace:
    return Workspace("alice", root=isolated_home)


def test_a_build_runs_in_a_worker_with_progress_and_refusals(ws):
    uploads = [(n, DOCS / n) for n in ("fake-memo.pdf", "book-war-and-peace-1p.txt", "password.pdf")]
    job = submit_index_job(ws, "hand book", "add", uploads=uploads, spec=small_spec(), visitor="alice")
    assert job.kind == "index" and job.lane == "cpu" and job.payload["collection"] == "hand_book"
    staged = [Path(p) for _, p in job.payload["files"]]
    assert all(p.is_relative_to(staging_dir(ws)) and p.exists() for p in staged)  # copies, not Gradio's temp files
    job = ws.store().wait(job.id, timeout=300)
    events = EventLog(job.events_path).read()
    assert job.status == "done", [e for e in events if not isinstance(e, Progress)]
    assert isinstance(events[-1], Done)
    phases = [e.phase for e in events if isinstance(e, Progress)]
    assert {"read", "split", "embed", "index"} <= set(phases) and phases.index("read") < phases.index("embed")
    reads = [e for e in events if isinstance(e, Progress) and e.phase == "read" and e.page is None]
    assert [e.item for e in reads] == [n for n, _ in uploads] and reads[0].total == 3
    pages = [e for e in events if isinstance(e, Progress) and e.phase == "read" and e.page is not None]
    assert [(e.item, e.page, e.pages, e.done) for e in pages] == [("fake-memo.pdf", 1, 1, 1)]  # its one page, text
    embeds = [e for e in events if isinstance(e, Progress) and e.phase == "embed"]
    assert embeds[-1].done == embeds[-1].total > 0 and embeds[-1].unit == "chunks"
    warnings = [e.message for e in events if isinstance(e, Log) and e.level == "warning"]
    assert len(warnings) == 1 and "password.pdf" in warnings[0]
    result = read_result(job)
    assert result["version"] == 2 and result["files"] == 2
    assert [r["file"] for r in result["refused"]] == ["password.pdf"]
    index = collections.open_collection(ws.index_path("hand book"))
    assert index.version == 2 and set(index.files) == {"fake-memo.pdf", "book-war-and-peace-1p.txt"}
    assert not any(p.exists() for p in staged)  # staging is cleaned once the job ended
    kept = [p.name for p in ws.index_path("hand book").glob("v*/originals/*")]  # the PDF itself, for page images
    assert kept == [f"{index.files['fake-memo.pdf'].sha256}.pdf"]
    assert str(ws.root) not in json.dumps(result)  # names, never server paths


def test_a_cancelled_build_leaves_the_collection_exactly_as_it_was(ws):
    path = ws.index_path("wiki")
    with RagIndex.edit(path, spec=small_spec()) as index:
        list(index.add_files([DOCS / "fake-memo.pdf"]))
    before = (path / MANIFEST).read_bytes()
    folders = sorted(p.name for p in path.iterdir())
    job = submit_index_job(ws, "wiki", "add", uploads=[("wiki_demo.txt", WIKI)])
    store = ws.store()
    for event in store.follow(job.id, poll=0.2):
        if isinstance(event, Progress) and event.phase == "embed" and event.done < (event.total or 0):
            store.cancel(job.id)
            break
    job = store.wait(job.id, timeout=300)
    events = EventLog(job.events_path).read()
    assert job.status == "cancelled" and isinstance(events[-1], Cancelled)
    assert any(isinstance(e, Log) and "collection is unchanged" in e.message for e in events)
    assert (path / MANIFEST).read_bytes() == before and sorted(p.name for p in path.iterdir()) == folders
    assert set(RagIndex.open(path).files) == {"fake-memo.pdf"}


def test_remove_and_apply_run_as_jobs_on_the_latest_version(ws):
    path = ws.index_path("docs")
    with RagIndex.edit(path, spec=small_spec()) as index:
        list(index.add_files([DOCS / "fake-memo.pdf", DOCS / "book-war-and-peace-1p.txt"]))
    store = ws.store()
    removed = store.wait(submit_index_job(ws, "docs", "remove", sources=["fake-memo.pdf"]).id, timeout=300)
    assert removed.status == "done" and read_result(removed)["removed"] == ["fake-memo.pdf"]
    dense = RagIndex.open(path).spec.with_params("retrieve", mode="dense", top_k=3)
    applied = store.wait(submit_index_job(ws, "docs", "apply", spec=dense).id, timeout=300)
    assert applied.status == "done" and read_result(applied) == {**read_result(applied), "version": 4,
                                                                "needs_reindex": False}
    saved = RagIndex.open(path)
    assert saved.spec.retrieve.mode == "dense" and set(saved.files) == {"book-war-and-peace-1p.txt"}
    # A spec that cuts chunks differently is not saved by Apply: the job says a re-index is needed.
    bigger = saved.spec.with_params("split", chunk_size=2000, chunk_overlap=0)
    stale = store.wait(submit_index_job(ws, "docs", "apply", spec=bigger).id, timeout=300)
    assert read_result(stale)["needs_reindex"] is True and RagIndex.open(path).version == 4
    assert [j.status for j in index_jobs(ws)] == ["done", "done", "done"]


def test_bad_requests_are_refused_before_anything_is_queued(ws):
    with pytest.raises(IndexJobError, match="Drop one or more documents"):
        submit_index_job(ws, "docs", "add", uploads=[])
    with pytest.raises(IndexJobError, match="Pick the files to remove"):
        submit_index_job(ws, "docs", "remove", sources=[])
    with pytest.raises(IndexJobError, match=r"'gone\.txt' is no longer on the server"):
        stage_uploads(ws, [("gone.txt", ws.root / "gone.txt")])
    assert index_jobs(ws) == [] and not JobStore(ws.data_root).list(kind=None)


def test_readers_share_one_copy_per_version(ws):
    path = ws.index_path("shared")
    with RagIndex.edit(path, spec=small_spec()) as index:
        list(index.add_files([DOCS / "fake-memo.pdf"]))
    first = collections.open_collection(path)
    assert collections.open_collection(path) is first and first.version == 2 and first.read_only
    with pytest.raises(ReadOnlyIndexError):
        list(first.remove(["fake-memo.pdf"]))
    with RagIndex.edit(path) as index:
        list(index.add_files([DOCS / "book-war-and-peace-1p.txt"]))
    second = collections.open_collection(path)
    assert second is not first and second.version == 3 and len(second.files) == 2
    assert first.version == 2 and len(first.files) == 1  # a request holding the old copy keeps it as it was
    assert collections.cached_version(path) == 3


def test_a_build_stopped_by_the_system_saves_nothing_and_keeps_its_files_to_run_again(ws):
    import os
    import signal
    import time

    from engine.events import Interrupted

    path = ws.index_path("wiki")
    with RagIndex.edit(path, spec=small_spec()) as index:
        list(index.add_files([DOCS / "fake-memo.pdf"]))
    before = (path / MANIFEST).read_bytes()
    job = submit_index_job(ws, "wiki", "add", uploads=[("wiki_demo.txt", WIKI)])
    store = ws.store()
    for event in store.follow(job.id, poll=0.2):
        if isinstance(event, Progress) and event.phase == "embed":
            os.kill(store.load(job.id).pid, signal.SIGTERM)  # what a Space restarting does to its workers
            break
    deadline = time.time() + 120
    while store.load(job.id).status == "running" and time.time() < deadline:
        time.sleep(0.2)
    job = store.load(job.id)
    events = EventLog(job.events_path).read()
    assert job.status == "interrupted" and isinstance(events[-1], Interrupted) and events[-1].resumable
    assert (path / MANIFEST).read_bytes() == before
    assert Path(job.payload["staging"]).is_dir()  # kept: the server queues the build again when it starts


def test_a_fresh_staging_folder_survives_another_requests_sweep_and_vanished_files_fail_the_build(ws):
    """Two builds submitted at once: B's sweep ran between A staging its files and A recording its job, and
    A's batch was lost while both reported Done (seen once in CI). A fresh folder is now never swept, and a
    build whose staged files are gone fails with a message instead of reporting Done."""
    import os
    import time

    from services.index_jobs import _staged_files

    fresh, staged = stage_uploads(ws, [("fake-memo.pdf", DOCS / "fake-memo.pdf")])  # A: staged, no job yet
    old, _ = stage_uploads(ws, [("fake-doc.rtf", DOCS / "fake-doc.rtf")])  # an orphan of a build never submitted
    two_hours_ago = time.time() - 7200
    os.utime(old, (two_hours_ago, two_hours_ago))
    sweep_staging(ws)  # what B's submit does first
    assert fresh.is_dir() and Path(staged[0][1]).is_file()
    assert not old.exists()

    payload = {"staging": str(fresh), "files": staged}
    assert _staged_files(payload) == [tuple(staged[0])]
    Path(staged[0][1]).unlink()
    with pytest.raises(IndexJobError, match=r"no longer on the server .* nothing was changed"):
        _staged_files(payload)
