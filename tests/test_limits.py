"""Every limit of engine/limits.py, enforced where it applies and named in the message that enforces it.

The engine-level tests use real files from ../shared/testdata (plus rows and documents grown from them);
the app-level tests run the real ``app.py`` with tight limits from the environment and drive it with
``gradio_client``, as an API client that skips the browser would.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest

from engine import data
from engine.limits import LimitError, Limits
from engine.quotas import accept_upload, check_room
from engine.workspace import Workspace
from tests.conftest import FT_DATA, TESTDATA
from tests.ui_harness import REPO, running_app

DOCS = TESTDATA / "docs" / "unstructured"
ALPACA = FT_DATA / "alpaca_en_demo.json"


def _alpaca_with(tmp_path: Path, extra: dict) -> Path:
    """The real alpaca demo file with one more row appended (the row under test)."""
    rows = json.loads(ALPACA.read_text(encoding="utf-8"))[:20]
    path = tmp_path / "data.json"
    path.write_text(json.dumps([*rows, extra]), encoding="utf-8")
    return path


# ----------------------------------------------------------------------------------------- dataset rows


def test_a_20_mb_row_is_a_row_error_and_is_never_tokenized(tmp_path: Path, tokenizer) -> None:
    war_and_peace = (DOCS / "book-war-and-peace-1p.txt").read_text(encoding="utf-8")
    huge = (war_and_peace * (20_000_000 // len(war_and_peace) + 1))[:20_000_000]
    path = _alpaca_with(tmp_path, {"instruction": "Summarise the book.", "input": "", "output": huge})
    start = time.perf_counter()
    prepared = data.prepare(path)
    report = data.validate(prepared, tokenizer, 512)
    seconds = time.perf_counter() - start
    huge_row = prepared.n_rows
    issue = next(i for i in report.issues if i.row == huge_row)
    assert issue.severity == "error" and issue.kind == "too_long"
    assert "20,000,0" in issue.message and "Longest row (characters)" in issue.message and "200,000" in issue.message
    assert report.n_examples == huge_row - 1  # every other row is still usable
    assert len(report.token_lengths) == huge_row - 1  # the huge row has no token count: it was not tokenized
    assert seconds < 30, f"validating took {seconds:.1f}s"  # was 2+ minutes and 5.4 GB


def test_a_long_row_within_the_limit_is_tokenized_only_as_far_as_max_length_keeps(tmp_path: Path,
                                                                                    tokenizer) -> None:
    text = (DOCS / "norwich-city.txt").read_text(encoding="utf-8")
    reply = (text * 4)[:150_000]
    path = _alpaca_with(tmp_path, {"instruction": "Tell me about Norwich.", "input": "", "output": reply})
    max_length = 256
    prepared = data.prepare(path)
    start = time.perf_counter()
    report = data.validate(prepared, tokenizer, max_length)
    seconds = time.perf_counter() - start
    long_row = prepared.n_rows
    issue = next(i for i in report.issues if i.row == long_row)
    assert issue.severity == "warning" and issue.kind == "truncated"
    assert "at least" in issue.message and "will be cut" in issue.message
    counted = int(issue.message.split("at least ")[1].split()[0])
    full = data.encode_example(tokenizer, prepared.examples[-1], max_length)
    assert max_length < counted < full.full_length  # honest: a lower bound, and a true one
    # The tokens training keeps (and learns from) are exactly those of the whole row.
    clipped_trained = report.token_stats.trained_tokens - sum(
        data.encode_example(tokenizer, ex, max_length).n_trained for ex in prepared.examples[:-1])
    assert clipped_trained == full.n_trained
    assert report.token_stats.n_counted_in_part >= 1 and any("at least" in w for w in report.warnings)
    assert seconds < 20


# ----------------------------------------------------------------------------------------- quotas


def test_upload_size_and_disk_quota_name_their_limits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNE_STUDIO_LIMIT_MAX_UPLOAD_MB", "1")
    monkeypatch.setenv("TUNE_STUDIO_LIMIT_MAX_WORKSPACE_MB", "10")
    big = tmp_path / "big.pdf"
    big.write_bytes((DOCS / "loremipsum-flat.pdf").read_bytes() * 3)  # 1.5 MB
    ws = Workspace("alice")
    with pytest.raises(LimitError, match=r"'big\.pdf'.*Largest upload \(MB\)\) is 1\b"):
        accept_upload(big, ws)
    small = DOCS / "fake-memo.pdf"
    assert accept_upload(small, ws) == small.stat().st_size
    (ws.datasets / "kept.bin").write_bytes(b"\0" * (9 * 1024 * 1024))
    with pytest.raises(LimitError, match=r"Disk per visitor \(MB\)\) is 10\b.*uses 9\.0 MB now"):
        check_room(ws, 2 * 1024 * 1024, "'more.pdf'")


# ----------------------------------------------------------------------------------------- RAG, engine side


def test_documents_over_the_limits_are_refused_one_by_one(tmp_path: Path) -> None:
    from rag.estimate import admit_documents, read_files
    from rag.events import ReadingFile
    from rag.index import RagIndex
    from rag.ingest import LoadedDocument, Refusal
    from rag.pipeline import PipelineSpec

    limits = Limits.from_dict({"max_document_chars": 10_000, "max_chunks_per_collection": 100})
    files = [(n, DOCS / n) for n in ("norwich-city.txt", "book-war-and-peace-1p.txt",
                                      "language-docs_eng_spa_mult.txt", "fake-text.txt")]
    read = [item for item in read_files(files, limits) if not isinstance(item, ReadingFile)]
    assert isinstance(read[0], Refusal) and "Longest document (characters)) is 10,000" in read[0].message
    assert all(isinstance(doc, LoadedDocument) for doc in read[1:])  # the rest of the batch is kept

    spec = PipelineSpec().with_params("split", chunk_size=50, chunk_overlap=0)
    index = RagIndex.create(tmp_path / "small-chunks", spec)
    admitted = admit_documents(index, read, limits)
    kinds = [type(doc).__name__ for doc in admitted]
    assert kinds == ["Refusal", "LoadedDocument", "Refusal", "LoadedDocument"], kinds
    assert "Chunks per collection) is 100" in admitted[2].message and "'small-chunks'" in admitted[2].message


def test_build_estimate_goes_characters_to_chunks_to_seconds() -> None:
    from rag.estimate import CHARS_PER_PDF_PAGE, estimate_build, plan_build
    from rag.pipeline import PipelineSpec

    spec = PipelineSpec()
    step = spec.split.chunk_size - spec.split.chunk_overlap
    text = DOCS / "norwich-city.txt"
    chunks, seconds = estimate_build([("norwich-city.txt", text)], spec, rate=10.0)
    assert chunks == -(-text.stat().st_size // step) and seconds == pytest.approx(chunks / 10)
    pdf = plan_build([("multi-column-2p.pdf", DOCS / "multi-column-2p.pdf")], spec, rate=10.0)
    assert pdf.chars == 2 * CHARS_PER_PDF_PAGE  # from the page count, without extracting the text
    known = plan_build([("norwich-city.txt", text)], spec, rate=10.0,
                       known={"norwich-city.txt": hashlib.sha256(text.read_bytes()).hexdigest()})
    assert known.chunks == 0  # a file the collection holds unchanged costs nothing


# ----------------------------------------------------------------------------------------- the app


TIGHT = {"TUNE_STUDIO_LIMIT_MAX_UPLOAD_MB": "8", "TUNE_STUDIO_LIMIT_MAX_WORKSPACE_MB": "10",
         "TUNE_STUDIO_LIMIT_MAX_DOCUMENT_CHARS": "10000", "TUNE_STUDIO_LIMIT_MAX_CHUNKS_PER_COLLECTION": "100",
         "TUNE_STUDIO_LIMIT_MAX_COLLECTIONS": "2", "TUNE_STUDIO_LIMIT_CONFIRM_BUILD_SECONDS": "1",
         "TUNE_STUDIO_LIMIT_MAX_ROW_CHARS": "5000"}


@pytest.fixture(scope="module")
def tight_app(tmp_path_factory: pytest.TempPathFactory):
    """The real app.py with tight limits; yields (url, data directory)."""
    home = tmp_path_factory.mktemp("limits-home")
    with running_app(REPO / "app.py", home=home, env=TIGHT, log_name="limits-app") as url:
        yield url, home


def _client(url: str):
    from gradio_client import Client

    return Client(url, verbose=False)


def test_the_limits_panel_shows_the_servers_numbers(tight_app) -> None:
    import urllib.request

    url, _ = tight_app
    with urllib.request.urlopen(url + "config", timeout=30) as response:
        config = json.loads(response.read())
    texts = [str(c.get("props", {}).get("value") or "") for c in config["components"]]
    labels = [str(c.get("props", {}).get("label") or "") for c in config["components"]]
    assert labels.count("Limits on this server") == 2  # Data tab and RAG tab
    tables = [t for t in texts if "| Limit | Value |" in t]
    assert len(tables) == 2
    assert "| Largest upload (MB) | 8 |" in tables[0] and "| Collections per visitor | 2 |" in tables[0]


def test_chat_and_compare_refuse_oversized_messages_and_histories(tight_app) -> None:
    from gradio_client.exceptions import AppError

    client = _client(tight_app[0])
    with pytest.raises(AppError, match=r"your message \(characters\) is 8,001; the limit here \(Longest message"):
        client.predict("x" * 8001, None, "base", None, api_name="/chat")
    history = [{"role": "user", "content": [{"type": "text", "text": "q" * 30_000}]},
               {"role": "assistant", "content": [{"type": "text", "text": "a" * 60_000}]}]
    with pytest.raises(AppError, match=r"is 90,000; the limit here \(Longest chat history \(characters\)\) is 40,000"):
        client.predict("And then?", history, "base", None, api_name="/chat")
    with pytest.raises(AppError, match=r"the question \(characters\) is 9,000; the limit here \(Longest message"):
        client.predict(arms=["base"], run="(none)", collection=None, question="y" * 9000, api_name="/compare_ask")


def test_uploads_over_the_size_limit_or_the_disk_quota_are_refused(tight_app, tmp_path: Path) -> None:
    from gradio_client import handle_file

    url, home = tight_app
    client = _client(url)
    too_big = tmp_path / "too_big.json"
    too_big.write_bytes(b"[" + b" " * (9 * 1024 * 1024) + b"]")
    with pytest.raises(Exception, match=r"(?i)too large|413|maximum"):  # Gradio's own check (max_file_size)
        client.predict(file=handle_file(str(too_big)), api_name="/data_upload")
    datasets = home / "workspaces" / "local" / "datasets"
    for number in (1, 2):
        upload = tmp_path / f"part{number}.json"
        upload.write_bytes(b"[" + bytes([120 + number]) * (6 * 1024 * 1024) + b"]")  # not JSON: still stored
        try:
            client.predict(file=handle_file(str(upload)), api_name="/data_upload")
        except Exception as exc:
            message = str(exc)
        if number == 1:
            assert any(p.name == "part1.json" for p in datasets.rglob("*"))
    assert "Disk per visitor (MB)) is 10" in message
    assert not any(p.name == "part2.json" for p in datasets.rglob("*"))  # refused before anything was copied


def test_a_row_over_the_row_limit_is_listed_as_a_problem(tight_app, tmp_path: Path) -> None:
    from gradio_client import handle_file

    path = _alpaca_with(tmp_path, {"instruction": "Too long", "input": "", "output": "word " * 2000})
    out = _client(tight_app[0]).predict(file=handle_file(str(path)), max_length=256, api_name="/data_upload")
    from tests.ui_harness import table_value

    tables = [table_value(o) for o in out]
    issues = next(o for o in tables if isinstance(o, dict) and "headers" in o and "What is wrong" in o["headers"])
    messages = [row[2] for row in issues["data"] if row[0].startswith("row 21")]
    assert messages and "Longest row (characters)) is 5,000" in messages[0]


def test_collections_chunks_documents_and_long_builds_are_bounded(tight_app, tmp_path: Path) -> None:
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    from rag.pipeline import PipelineSpec

    url, home = tight_app
    client = _client(url)
    small = PipelineSpec().with_params("split", chunk_size=50, chunk_overlap=0)
    spec_file = tmp_path / "small-chunks-pipeline.json"
    small.to_json(spec_file)
    client.predict(handle_file(str(spec_file)), api_name="/rag_import_pipeline")  # the cards now cut 50 chars
    client.predict("first", api_name="/rag_open")
    client.predict("second", api_name="/rag_open")
    with pytest.raises(AppError, match=r"the limit here \(Collections per visitor\) is 2"):
        client.predict("third", api_name="/rag_open")
    indexes = home / "workspaces" / "local" / "indexes"
    names = {p.name for p in indexes.iterdir()}
    assert {"first", "second"} <= names and not any(n.startswith("third") for n in names)  # nothing for "third"

    files = [handle_file(str(DOCS / n)) for n in ("norwich-city.txt", "book-war-and-peace-1p.txt",
                                                   "language-docs_eng_spa_mult.txt", "fake-text.txt")]
    asked = client.predict(files=files, name="second", api_name="/rag_build")
    assert "This will take about" in asked[0] and "go on?" in asked[0]
    assert "Ask before builds longer than (s)" in asked[0]
    assert json.loads((indexes / "second" / "manifest.json").read_text())["files"] == []  # nothing was queued
    log = client.predict(files=files, name="second", confirm=True, api_name="/rag_build")[0]
    assert "'norwich-city.txt' in characters is 47,7" in log and "Longest document (characters)) is 10,000" in log
    assert "Chunks per collection) is 100" in log and "language-docs_eng_spa_mult.txt" in log
    manifest = json.loads((indexes / "second" / "manifest.json").read_text())
    assert sorted(f["source"] for f in manifest["files"]) == ["book-war-and-peace-1p.txt", "fake-text.txt"]
    assert manifest["counts"]["chunks"] <= 100
