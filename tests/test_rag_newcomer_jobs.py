"""The newcomer's RAG path below the UI: the demo collection as an ordinary index job, a drop with an
unsupported file (refused by itself, the rest indexed), per-file progress, and what the tab then shows."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.events import EventLog, Log, Progress
from engine.workspace import Workspace
from rag.index import RagIndex
from rag.pipeline import PipelineSpec
from rag.retrieve import search
from services.index_jobs import DEMO_COLLECTION, demo_documents, read_result, start_demo_collection

EMAIL = Path(__file__).resolve().parents[2] / "shared" / "testdata" / "docs" / "unstructured-email"


@pytest.fixture
def ws(isolated_home) -> Workspace:
    return Workspace("newcomer", root=isolated_home)


def test_the_demo_collection_is_built_once_and_keeps_several_chunks_of_the_document_asked_about(ws):
    names = [name for name, _ in demo_documents()]
    assert len(names) >= 2 and all(name.endswith(".md") for name in names)
    job_id = start_demo_collection(ws)
    assert job_id != DEMO_COLLECTION
    assert start_demo_collection(ws) == job_id  # still waiting or running: the same job, not a second one
    job = ws.store().wait(job_id, timeout=300)
    assert job.status == "done", job.error
    assert read_result(job)["files"] == len(names) and read_result(job)["refused"] == []
    assert start_demo_collection(ws) == DEMO_COLLECTION  # built: nothing queued again
    index = RagIndex.open(ws.index_path(DEMO_COLLECTION))
    assert sorted(index.files) == sorted(names)
    hits = search(index, "What is QLoRA and how much memory does the 4-bit copy take?", PipelineSpec()).hits
    assert hits[0].chunk.source == "fine-tuning-lora-qlora.md"
    # the default keeps more than one chunk of the document the question is about (it used to keep one)
    assert sum(h.chunk.source == "fine-tuning-lora-qlora.md" for h in hits) >= 2


@pytest.mark.skipif(not EMAIL.is_dir(), reason=f"shared test data missing at {EMAIL}")
def test_an_unsupported_file_is_refused_by_itself_with_per_file_progress(tmp_path):
    """What an index job logs for a drop with an unsupported file (its reporter, in process), and the tables."""
    from services.index_jobs import _Reporter
    from ui import rag_tab

    exe = tmp_path / "setup.exe"
    exe.write_bytes(b"MZ\x90\x00 not a document")
    log = EventLog(tmp_path / "events.jsonl")
    reporter = _Reporter("job1", log)
    index = RagIndex.create(tmp_path / "mail", PipelineSpec())
    for event in index.add_files([EMAIL / "fake-email.eml", exe, EMAIL / "fake-email.msg"]):
        reporter(event)
    events = log.read()
    reads = [(e.item, e.done, e.total) for e in events if isinstance(e, Progress) and e.phase == "read"]
    assert reads == [("fake-email.eml", 1, 3), ("setup.exe", 2, 3), ("fake-email.msg", 3, 3)]
    view = rag_tab.JobView()
    for event in events:
        view.add(event)
    assert any(line.startswith("- ⚠️ setup.exe: this kind of file (.exe) cannot be read") for line in view.lines)
    assert not any(str(tmp_path) in line for line in view.lines)
    assert any(isinstance(e, Log) and e.message.startswith("fake-email.msg:") for e in events)
    assert view.live.startswith("Writing the index")  # the last progress line shown in the log
    assert [r.source for r in reporter.final.refused] == ["setup.exe"]
    files = rag_tab.file_rows(index)
    assert [row[0] for row in files] == ["fake-email.eml", "fake-email.msg"] and all(row[1] >= 1 for row in files)
    note, chunks = rag_tab.chunk_rows(index)
    assert "2 file(s)" in note and {row[0] for row in chunks} == {"fake-email.eml", "fake-email.msg"}
    assert any("Roses are red" in row[4] for row in chunks)


def test_a_drop_is_checked_file_by_file_before_the_build(tmp_path):
    from types import SimpleNamespace

    from ui import rag_tab

    files = [SimpleNamespace(name=str(tmp_path / "a" / "notes.md")), SimpleNamespace(name=str(tmp_path / "x.exe")),
             SimpleNamespace(name=str(tmp_path / "b" / "notes.md"))]
    assert [name for name, _ in rag_tab._uploads(files)] == ["notes.md", "x.exe"]  # a name dropped twice: once
    note = rag_tab.upload_note(files)
    assert note.startswith("1 file(s) ready") and "x\\.exe: this kind of file cannot be read" in note
    assert str(tmp_path) not in note and ".msg" in note
