"""Test-wide settings: offline, an isolated data directory, one shared cache of converted models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TESTDATA = REPO.parent / "shared" / "testdata"
FT_DATA = TESTDATA / "ft" / "llama_factory"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
# Converting the bundled GGUF takes ~30 s: do it once per machine, not once per test.
os.environ.setdefault("TUNE_STUDIO_MODELS", str(Path.home() / ".cache" / "tune_studio_test_models"))


def pytest_configure(config: pytest.Config) -> None:
    """CI always has ../shared/testdata beside the repo: without it the tests must fail, never quietly skip."""
    if not TESTDATA.is_dir():
        raise pytest.UsageError(f"The shared test data is missing: expected {TESTDATA} (../shared/testdata "
                                "beside the repo). Check out or link ../shared there, as CI has it.")


#: The longest test files (measured with ``--durations``), collected first: the suite runs in two processes, one
#: file per process at a time, and a long file started last would leave one process idle while it ends.
LONG_FILES = ("test_engine_training.py", "test_rag_browser.py", "test_ui_e2e.py", "test_experiment_browser.py",
              "test_preference_training.py", "test_preference_browser.py", "test_publish.py", "test_compare_model.py",
              "test_space_hub.py", "test_job_tokens.py", "test_load.py", "test_demo_readonly.py",
              "test_compare_browser.py", "test_lab_browser.py", "test_rag_shared_collection.py", "test_rag_eval.py",
              "test_chat.py", "test_workspaces.py", "test_rag_citations_browser.py", "test_engine_distributed.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Long files first (stable: the order inside a file, and of the other files, is kept)."""
    rank = {name: index for index, name in enumerate(LONG_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONG_FILES)))


@pytest.fixture(autouse=True)
def isolated_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own data directory, so runs, indexes and jobs never leak between tests."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("TUNE_STUDIO_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def tokenizer():
    """The bundled SmolLM2 tokenizer, loaded once for every test that needs it."""
    from engine.models import load_tokenizer

    return load_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer) -> Path:
    """A tiny random-weight Llama with the bundled tokenizer, saved once per test session (see tiny_models.py)."""
    from tests.tiny_models import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny-model"), tokenizer)


@pytest.fixture
def tiny_bundled(tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The tiny model where the bundled one is looked for, so a run takes seconds (workers inherit the setting)."""
    import shutil

    models = tmp_path / "models"
    shutil.copytree(tiny_model_dir, models / "SmolLM2-135M-Instruct")
    monkeypatch.setenv("TUNE_STUDIO_MODELS", str(models))
    return models


@pytest.fixture(scope="session")
def hub_server():
    """A local fake of the Hugging Face Hub for the whole session (repos, tokens, request log: tests/hub_server.py).

    In-process tests use ``fake_hub`` below; a subprocess (the app, a worker) gets ``hub_server.env()``.
    """
    from tests.hub_server import FakeHub

    with FakeHub.with_test_repos() as server:
        yield server


@pytest.fixture
def fake_hub(hub_server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """This process's huggingface_hub pointed at the fake Hub, online, with an empty Hub cache of its own.

    The per-test models folder links the shared converted bundled model, so it is never converted again.
    """
    from engine.hub import forget_access
    from engine.models import bundled_model_dir

    bundled = bundled_model_dir()
    models = tmp_path / "models"
    models.mkdir()
    (models / bundled.name).symlink_to(bundled, target_is_directory=True)
    monkeypatch.setenv("TUNE_STUDIO_MODELS", str(models))
    hub_server.connect(monkeypatch)
    hub_server.clear_requests()
    hub_server.bytes_per_second = None
    forget_access()
    yield hub_server
    hub_server.bytes_per_second = None
    forget_access()
