"""Issue #9 point 5, the acceptance test: two visitors build into the same collection at once; both batches stay.

Two ``gradio_client`` sessions against the real RAG app (its own server process, real index workers,
the real bundled embedder), each building different real files from ../shared/testdata into one
collection at the same time. Both are told "Done", and both sets are present and searchable.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from engine.jobs import JobStore
from tests.ui_harness import REPO, running_app, table_value

DOCS = REPO.parent / "shared" / "testdata" / "docs" / "unstructured"
APP = REPO / "tests" / "apps" / "rag_only.py"

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not DOCS.is_dir(), reason=f"shared test data missing at {DOCS}")]

# Each visitor's files, and a phrase only one of them contains.
VISITORS = {
    "a": (["fake-memo.pdf", "fake-doc.rtf"], "How many bottles of water were delivered?", "fake-memo.pdf"),
    "b": (["book-war-and-peace-1p.txt", "codeblock.md"], "What did Prince Vasili say about Genoa and Lucca?",
          "book-war-and-peace-1p.txt"),
}


def _hit_sources(hits: object) -> list[str]:
    """Source column of the hits table as gradio_client returns it (a dict with "data" rows, or rows)."""
    hits = table_value(hits)  # shown once it has rows: an update with the table inside
    rows = hits["data"] if isinstance(hits, dict) else hits
    return [row[1] for row in rows]


def test_two_sessions_building_into_one_collection_at_once_keep_both(tmp_path: Path) -> None:
    from gradio_client import Client, handle_file

    home = tmp_path / "home"
    with running_app(APP, home=home, log_name="rag-shared-collection-app") as url:
        clients = {name: Client(url, verbose=False) for name in VISITORS}
        started = time.time()
        builds = {name: clients[name].submit([handle_file(str(DOCS / f)) for f in files], "team-docs",
                                             api_name="/rag_build")
                  for name, (files, _, _) in VISITORS.items()}
        logs = {name: job.result(timeout=600)[0] for name, job in builds.items()}
        for name, log in logs.items():
            assert "**Done**" in log, log
            for file in VISITORS[name][0]:
                assert file in log

        jobs = JobStore(home).list(kind="index")
        assert len(jobs) == 2 and all(j.status == "done" for j in jobs)
        # They really were at the same time: both were queued before either had finished.
        assert max(j.created_at for j in jobs) < min(j.finished_at for j in jobs)
        assert min(j.created_at for j in jobs) >= started

        for name, client in clients.items():
            status = client.predict("team-docs", api_name="/rag_open")[0]
            assert "4 file(s)" in status and "version 3" in status, status
            for _, (_, question, source) in VISITORS.items():
                log, hits = client.predict(question, api_name="/rag_search")
                assert _hit_sources(hits)[0] == source, (name, question, hits)
