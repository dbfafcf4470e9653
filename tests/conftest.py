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
