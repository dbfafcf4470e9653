"""The read-only demo (``TUNE_STUDIO_DEMO=1``) writes nothing and hands out none of the owner's files.

Every endpoint is taken from the running app's own API description, so an endpoint added later is
covered without touching this test: it must be declared in ``ui.common.ENDPOINT_ACCESS`` (the test
fails otherwise), and is then called as an anonymous visitor. Writes and downloads of the owner's files
must be refused with the demo's message; afterwards the data directory must be exactly as it was.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from engine.config import TrainConfig
from engine.jobs import JobStore
from engine.workspace import Workspace
from tests.conftest import FT_DATA, TESTDATA
from tests.ui_harness import REPO, running_app
from ui.common import ENDPOINT_ACCESS, READ_ONLY

DOCS = TESTDATA / "docs" / "unstructured"
COLLECTION = "handbook"


def _seed(home: Path) -> str:
    """The owner's workspace as a demo shows it: a dataset, a collection and a run. Returns the run id."""
    from rag.index import RagIndex
    from rag.pipeline import PipelineSpec

    ws = Workspace("local", root=home)
    (ws.datasets / "alpaca_en_demo.json").write_bytes((FT_DATA / "alpaca_en_demo.json").read_bytes())
    with RagIndex.edit(ws.index_path(COLLECTION), spec=PipelineSpec()) as index:
        list(index.add_files([DOCS / "book-war-and-peace-1p.txt", DOCS / "fake-text.txt"]))
    store = JobStore(home)
    job = store.submit(TrainConfig(max_steps=1), ws.datasets / "alpaca_en_demo.json", owner="local",
                       name="owner-run", start=False)
    store.cancel(job.id)  # a run of the owner's that no dispatcher will start during the test
    return job.id


def _snapshot(home: Path) -> dict[str, tuple[int, int]]:
    """Every file under the data directory with its size and modification time.

    Empty ``*.lock`` files are listed without their time: taking an inter-process lock opens the file for
    writing (the job store does that to read its queue consistently), which touches it but stores nothing.
    """
    out = {}
    for root, _dirs, files in os.walk(home):
        for name in files:
            path = Path(root) / name
            stat = path.stat()
            lock = name.endswith(".lock") and stat.st_size == 0
            out[str(path.relative_to(home))] = (stat.st_size, 0 if lock else stat.st_mtime_ns)
    return out


#: Smaller workloads for read-only endpoints, by parameter: short answers, one weight matrix for the Lab's layer
#: walk (0 = every matrix took 130 s), and a prompt with a one-word answer for the Lab's two precisions (its default
#: gets ~25 tokens, at seconds per token in 4 bits on a CPU). The same code runs on the same model files.
SMALL_WORK = {"max_new_tokens": 4, "max_layers": 1, "prompt": "Answer with one word only: is ice cold?"}


def _value(param: dict[str, Any], run_id: str, files: dict[str, Path]) -> Any:
    """A plausible value for one required API parameter, from its name and type."""
    from gradio_client import handle_file

    name, kind = param["parameter_name"], str(param["python_type"]["type"])
    if kind == "filepath":
        return handle_file(str(files["questions"] if "question" in name else files["doc"]))
    if kind.startswith("list[filepath]"):
        return [handle_file(str(files["doc"]))]
    if kind == "bool":
        return False
    if kind in ("int", "float"):
        return 1
    if kind.startswith("list"):
        return []
    if "run" in name:
        return run_id
    if "collection" in name or name == "name":
        return COLLECTION
    return "Hello"


def _call(client: Any, endpoint: str, info: dict[str, Any], run_id: str, files: dict[str, Path]) -> str:
    """Call one endpoint with plausible arguments; returns "" or the error message it answered with."""
    from gradio_client.exceptions import AppError

    kwargs = {p["parameter_name"]: _value(p, run_id, files) for p in info["parameters"]
              if not p["parameter_has_default"]}
    read_only = ENDPOINT_ACCESS[endpoint.lstrip("/")][0] == READ_ONLY
    if read_only:  # read-only calls are allowed to run: keep their work small (writes keep their defaults)
        kwargs.update({p["parameter_name"]: SMALL_WORK[p["parameter_name"]] for p in info["parameters"]
                       if p["parameter_name"] in SMALL_WORK})
    try:
        client.predict(**kwargs, api_name=endpoint)
    except AppError as exc:
        return str(exc)
    return ""


@pytest.mark.slow
def test_the_demo_refuses_every_write_and_owner_download_and_changes_nothing(tmp_path: Path) -> None:
    from gradio_client import Client

    home = tmp_path / "home"
    run_id = _seed(home)
    questions = tmp_path / "questions.csv"
    questions.write_text("question,answer\nWho wrote War and Peace?,Tolstoy\n", encoding="utf-8")
    files = {"doc": DOCS / "fake-text.txt", "questions": questions}
    with running_app(REPO / "app.py", home=home, env={"TUNE_STUDIO_DEMO": "1"}, log_name="demo-readonly-app") as url:
        client = Client(url, verbose=False)
        endpoints = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
        undeclared = sorted(e for e in endpoints if e.lstrip("/") not in ENDPOINT_ACCESS)
        assert not undeclared, f"declare these in ui.common.ENDPOINT_ACCESS: {undeclared}"
        assert len(endpoints) >= 40  # the description really listed the app's endpoints
        before = _snapshot(home)
        answers = {e: _call(client, e, info, run_id, files) for e, info in endpoints.items()}
        after = _snapshot(home)

    refused = {e for e, message in answers.items() if "read-only demo" in message}
    must_refuse = {e for e in endpoints if ENDPOINT_ACCESS[e.lstrip("/")][0] != READ_ONLY}
    assert refused == must_refuse, {"not refused": sorted(must_refuse - refused),
                                    "refused but read-only": sorted(refused - must_refuse)}
    for endpoint in ("/data_upload", "/rag_apply_pipeline", "/train_download_adapter", "/rag_build", "/train_start"):
        assert endpoint in refused
    assert answers["/chat"] == "" and answers["/chat_refresh"] == ""  # the demo still chats
    assert after == before, {k: (before.get(k), after.get(k)) for k in set(before) | set(after)
                             if before.get(k) != after.get(k)}
