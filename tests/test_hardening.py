"""A shared server's hygiene: no server paths in replies, PDF passwords used once, document text shown as
text, CSV exports a spreadsheet will not run, archives never half-written, download copies cleaned up,
and ``python -m engine inspect`` failing loudly on a refused file.

The app-level tests run the real ``app.py`` (one server for the module) and drive it with ``gradio_client``
into error paths and status lines; files come from ../shared/testdata (an encrypted copy of one of them is
made here with pypdf, and an injection is appended to another).
"""

from __future__ import annotations

import csv
import html
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
import zipfile
from pathlib import Path
from typing import Any

import pytest

from engine.files import FORMULA_STARTS, csv_cell
from tests.conftest import FT_DATA, TESTDATA
from tests.ui_harness import REPO, running_app, table_value

DOCS = TESTDATA / "docs" / "unstructured"
INJECTION = "![x](http://evil.example/p.png) and [click](javascript:alert(1)) and <img src=x onerror=alert(1)>"


# ----------------------------------------------------------------------------------------- CSV


def test_csv_exports_neutralise_cells_a_spreadsheet_would_run() -> None:
    from services.compare import ArmAnswer, Question, Report, ReportRow

    question = Question('=HYPERLINK("http://evil.example","click")', references=["+1+1", "@SUM(A1:A9)"], qid="-2")
    answer = ArmAnswer("base", text="\t=cmd|' /C calc'!A0", error="\rboom", done=True,
                       scores={"f1": 0.5, "exact_match": 0.0})
    report = Report(config={}, arms=["base"], rows=[ReportRow(question, {"base": answer})])
    header, row = list(csv.reader(io.StringIO(report.to_csv())))
    cells = dict(zip(header, row, strict=True))
    assert cells["question"] == "'" + question.question
    assert cells["qid"] == "'-2" and cells["references"].startswith("'+1+1")
    assert cells["answer"] == "'\t=cmd|' /C calc'!A0" and cells["error"] == "'\rboom"
    assert cells["f1"] == "0.5"  # numbers stay numbers
    assert not [c for c in row if c.startswith(FORMULA_STARTS)]
    assert csv_cell(-1.5) == -1.5 and csv_cell("plain") == "plain"


# ----------------------------------------------------------------------------------------- archives


def test_an_interrupted_zip_never_takes_the_final_name(tmp_path: Path) -> None:
    from engine.export import zip_folder

    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_model.safetensors").write_bytes(os.urandom(64 * 1024 * 1024))  # incompressible: slow
    (folder / "adapter_config.json").write_text('{"r": 8}', encoding="utf-8")
    stem = tmp_path / "adapter-run1"
    code = f"from pathlib import Path; from engine.export import zip_folder; zip_folder(Path({str(folder)!r}), " \
           f"Path({str(stem)!r}))"
    child = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".adapter-run1.*.partial.zip")):
        assert child.poll() is None and time.monotonic() < deadline, "the zip finished before it could be stopped"
        time.sleep(0.01)
    child.send_signal(signal.SIGKILL)  # a server killed while zipping
    child.wait()
    assert not stem.with_suffix(".zip").exists()  # so it is not served as if it were complete
    archive = zip_folder(folder, stem)  # the next download builds it whole
    with zipfile.ZipFile(archive) as zipped:
        assert zipped.testzip() is None
        assert sorted(zipped.namelist()) == ["adapter_config.json", "adapter_model.safetensors"]


def test_download_copies_are_kept_in_one_root_and_deleted_after_an_hour(tmp_path: Path) -> None:
    from ui.common import SERVED_MAX_AGE_S, served_copy, served_root

    old = Path(served_copy(DOCS / "fake-text.txt"))
    assert old.parent.parent == served_root() and old.read_bytes() == (DOCS / "fake-text.txt").read_bytes()
    stale = time.time() - SERVED_MAX_AGE_S - 60
    os.utime(old.parent, (stale, stale))
    fresh = Path(served_copy(DOCS / "fake-text.txt"))
    assert fresh.exists() and not old.parent.exists()


# ----------------------------------------------------------------------------------------- text, not markdown


def _render(markdown: str) -> str:
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark").enable("table").render(markdown)


def _visible(rendered: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", rendered))


def test_document_text_renders_literally_in_source_lists() -> None:
    from services.compare import ArmAnswer
    from ui.chat_tab import sources_message
    from ui.common import literal_markdown

    rendered = _render(literal_markdown(INJECTION))
    assert "<img" not in rendered and "<a " not in rendered
    assert _visible(rendered).strip() == INJECTION
    answer = ArmAnswer("rag", retrieved=[{"source": "notes.md", "location": "notes.md, [x](javascript:alert(1))",
                                          "score": 0.5, "text": INJECTION}], cited=[1])
    rendered = _render(sources_message(answer))
    assert "<img" not in rendered and "<a " not in rendered and "javascript:" in _visible(rendered)
    assert "![x](http://evil.example/p.png)" in _visible(rendered)


# ----------------------------------------------------------------------------------------- CLI


def test_inspect_exits_non_zero_when_the_file_is_refused(tmp_path: Path) -> None:
    fake = tmp_path / "data.json"
    fake.write_bytes((DOCS / "fake-memo.pdf").read_bytes())  # a PDF renamed .json: refused

    def inspect(path: Path) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "engine", "inspect", "--data", str(path), "--max-length", "256"],
                              cwd=REPO, capture_output=True, text=True, timeout=300,
                              env={**os.environ, "PYTHONPATH": str(REPO)})

    refused = inspect(fake)
    assert refused.returncode == 1, refused.stderr[-2000:]
    assert json.loads(refused.stdout)["refused"] is True
    accepted = inspect(FT_DATA / "alpaca_en_demo.json")
    assert accepted.returncode == 0, accepted.stderr[-2000:]
    assert json.loads(accepted.stdout)["ok"] is True


# ----------------------------------------------------------------------------------------- stored passwords


def _legacy_collection(home: Path, name: str, password: str) -> Path:
    """A collection as an older version saved it: its pipeline holding a PDF password."""
    from engine.workspace import Workspace
    from rag.index import RagIndex

    path = Workspace("local", root=home).index_path(name)
    RagIndex.create(path)
    manifest = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
    manifest["pipeline"]["stages"][0]["params"]["pdf_password"] = password
    (path / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return path


def test_scrub_removes_stored_passwords_and_old_specs_still_load(isolated_home: Path) -> None:
    from engine.workspace import Workspace
    from rag.index import RagIndex
    from rag.pipeline import PipelineSpec, scrub_stored_passwords

    secret = "legacy-" + uuid.uuid4().hex
    collection = _legacy_collection(isolated_home, "old-handbook", secret)
    export = Workspace("local").exports / "rag-pipeline.json"
    export.write_text((collection / "manifest.json").read_text(encoding="utf-8").replace(
        '"pipeline": ', '"unused": '), encoding="utf-8")  # not a spec: left alone
    spec_export = export.with_name("my-pipeline.json")
    spec_export.write_text(json.dumps(json.loads((collection / "manifest.json").read_text())["pipeline"]))
    assert PipelineSpec.load(spec_export).stages["load"].max_file_mb  # an old export still imports
    fixed = scrub_stored_passwords(isolated_home)
    assert sorted(p.name for p in fixed) == ["manifest.json", "my-pipeline.json"]
    assert secret not in (collection / "manifest.json").read_text() and secret not in spec_export.read_text()
    assert secret in export.read_text()  # a JSON file that is not a pipeline is not rewritten
    assert RagIndex.open(collection).spec == PipelineSpec()


# ----------------------------------------------------------------------------------------- the app


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The real app.py over a data directory that holds one collection saved by an older version."""
    home = tmp_path_factory.mktemp("hardening-home")
    legacy_secret = "legacy-" + uuid.uuid4().hex
    legacy = _legacy_collection(home, "legacy", legacy_secret)
    with running_app(REPO / "app.py", home=home, log_name="hardening-app") as url:
        yield {"url": url, "home": home, "legacy": legacy, "legacy_secret": legacy_secret}


def _client(url: str) -> Any:
    from gradio_client import Client

    return Client(url, verbose=False)


def _strings(value: Any) -> list[str]:
    """Every string in a reply, and the text of every file it handed out."""
    if isinstance(value, str):
        path = Path(value)
        try:
            if path.is_file() and path.stat().st_size < 5_000_000:
                return [value, path.read_text(encoding="utf-8", errors="replace")]
        except OSError:
            pass
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, (list, tuple)):
        return [s for v in value for s in _strings(v)]
    return []


def _reply(client: Any, *args: Any, **kwargs: Any) -> list[str]:
    """The strings of a reply, or of the error the app answered with."""
    from gradio_client.exceptions import AppError

    try:
        return _strings(client.predict(*args, **kwargs))
    except AppError as exc:
        return [str(exc)]


def test_start_up_removed_the_password_an_old_version_stored(app: dict) -> None:
    manifest = (app["legacy"] / "manifest.json").read_text(encoding="utf-8")
    assert app["legacy_secret"] not in manifest and "pdf_password" not in manifest


def test_a_pdf_password_opens_the_file_once_and_is_stored_nowhere(app: dict, tmp_path: Path) -> None:
    from gradio_client import handle_file
    from pypdf import PdfReader, PdfWriter

    secret = "pw-" + uuid.uuid4().hex
    locked = tmp_path / "locked-memo.pdf"
    writer = PdfWriter(clone_from=PdfReader(DOCS / "fake-memo.pdf"))
    writer.encrypt(user_password=secret, owner_password=secret + "-owner")
    with locked.open("wb") as handle:
        writer.write(handle)
    client = _client(app["url"])
    opened = _reply(client, "locked", api_name="/rag_open")
    without = _reply(client, files=[handle_file(str(locked))], name="locked", confirm=True, api_name="/rag_build")
    assert "password-protected" in without[0] and "'PDF password' box" in without[0]
    names = {p["label"]: p["parameter_name"] for p in client.view_api(return_format="dict", print_info=False)[
        "named_endpoints"]["/rag_preview"]["parameters"]}  # its stage settings are unnamed (param_N)
    text, table = client.predict(**{names["Drop documents here"]: [handle_file(str(locked))],
                                    names["PDF password (for encrypted PDFs)"]: secret}, api_name="/rag_preview")
    table = table_value(table)  # shown once it has rows: an update with the table inside
    assert "password-protected" not in text and [row[0] for row in table["data"]] == ["locked-memo.pdf"]
    built = _reply(client, files=[handle_file(str(locked))], name="locked", pdf_password=secret, confirm=True,
                   api_name="/rag_build")
    assert "locked-memo.pdf: 1 section(s)" in built[0] and "1 file(s)" in built[1]
    collection = app["home"] / "workspaces" / "local" / "indexes" / "locked"
    written = [p for p in app["home"].rglob("*") if p.is_file()] + [REPO / "test-artifacts" / "hardening-app.log"]
    assert any(p.is_relative_to(collection) for p in written) and len(written) > 10
    assert not [str(p) for p in written if secret.encode() in p.read_bytes()]
    exported = _strings(client.predict("locked", api_name="/rag_open"))  # status, spec JSON and the export file
    assert any('"tune-studio-rag-pipeline"' in s for s in exported)
    assert not [s for s in [*opened, *exported] if secret in s or "pdf_password" in s]


def _gone(home: Path, name: str) -> list[str]:
    """Delete a stored upload behind the app's back (as a disk clean-up would)."""
    for path in (home / "workspaces").rglob(name):
        path.unlink()
    return []


@pytest.mark.slow  # answers with the bundled model
def test_no_reply_names_a_server_path(app: dict, tmp_path: Path) -> None:
    from gradio_client import handle_file

    home = str(app["home"])
    client = _client(app["url"])
    not_a_dataset = tmp_path / "data.json"
    not_a_dataset.write_bytes((DOCS / "fake-memo.pdf").read_bytes())
    questions = tmp_path / "questions.csv"
    questions.write_text('question,answer\n"=1+1, what is Norwich?",a city\n', encoding="utf-8")
    broken_spec = tmp_path / "pipeline.json"
    broken_spec.write_text("{not json", encoding="utf-8")
    replies = [
        _reply(client, file=handle_file(str(not_a_dataset)), api_name="/data_upload"),
        _reply(client, file=handle_file(str(FT_DATA / "alpaca_en_demo.json")), max_length=256,
               api_name="/data_upload"),
        _reply(client, None, max_length=256, api_name="/data_check"),
        _gone(app["home"], "alpaca_en_demo.json"),
        _reply(client, None, max_length=256, api_name="/data_check"),  # its stored file is gone: named, not shown
        _reply(client, handle_file(str(broken_spec)), api_name="/rag_import_pipeline"),
        _reply(client, "paths", api_name="/rag_open"),
        _reply(client, files=[handle_file(str(DOCS / "norwich-city.txt")), handle_file(str(DOCS / "empty.txt"))],
               name="paths", confirm=True, api_name="/rag_build"),
        _reply(client, question="Where is Norwich?", api_name="/rag_search"),
        _reply(client, api_name="/compare_refresh"),  # the pickers list this visitor's collections from now on
        _reply(client, arms=["rag"], run="(none)", collection="no-such-collection", question="Where?",
               api_name="/compare_ask"),
        _reply(client, arms=["rag"], run="(none)", collection="paths", questions_file=handle_file(str(questions)),
               holdout_file=None, max_new_tokens=8, api_name="/compare_run"),
        _reply(client, api_name="/compare_export"),
        _reply(client, "Where is Norwich?", None, "base", "no-such-collection", api_name="/chat"),
        _reply(client, "no-such-run", api_name="/train_status"),
        _reply(client, run_name="x", hf_token="", api_name="/train_start"),
        _reply(client, run_id=None, collection=None, space_title="", model_repo="", api_name="/share_build_demo"),
    ]
    texts = [s for reply in replies for s in reply]
    assert any("not a dataset" in t for t in texts) and any("'alpaca_en_demo.json' does not exist" in t
                                                            for t in texts)  # the error paths were really taken
    assert any("**paths**" in t for t in texts) and any("'=1+1, what is Norwich?" in t for t in texts)  # CSV export
    leaks = [t[:300] for t in texts if home in t or "/workspaces/" in t]
    assert not leaks, leaks


@pytest.mark.slow  # answers with the bundled model
def test_a_documents_markdown_shows_as_text_under_a_chat_answer(app: dict, tmp_path: Path) -> None:
    from gradio_client import handle_file

    notes = tmp_path / "injected-notes.md"
    # One short chunk that starts with the injection, so the excerpt under the answer shows it.
    notes.write_text(INJECTION + "\n\n" + (DOCS / "book-war-and-peace-1p.txt").read_text(encoding="utf-8")[:400],
                     encoding="utf-8")
    client = _client(app["url"])
    client.predict("injected", api_name="/rag_open")
    client.predict(files=[handle_file(str(notes))], name="injected", confirm=True, api_name="/rag_build")
    history, *_ = client.predict("What does the picture show?", None, "base", "injected", max_new_tokens=8,
                                 api_name="/chat")
    sources = next(m for m in history if (m.get("metadata") or {}).get("title") == "Sources")
    content = sources["content"] if isinstance(sources["content"], str) else "".join(
        part.get("text", "") for part in sources["content"])
    rendered = _render(content)
    assert "<img" not in rendered and "<a " not in rendered
    assert "![x](http://evil.example/p.png)" in _visible(rendered)
