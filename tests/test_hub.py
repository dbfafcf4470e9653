"""The Hub downloader, access checks and id checks, against a real local HTTP Hub (tests/hub_server.py).

Every test talks to the fake Hub through the real ``huggingface_hub`` client: downloads with progress,
gated repos with and without the right token, a revoked token, an unknown id, a full disk (the one
seam patched: ``shutil.disk_usage``), a Hub that is down, and a publish round trip. The request log
of the server shows which token (by label, never by value) went out with each request.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.settings import SettingsError
from engine import hub
from engine.config import TrainConfig
from engine.events import Progress
from engine.hub import DownloadProgress, HubError, check_model_id, download, require_access
from tests.conftest import REPO
from tests.hub_server import (
    EMBEDDER_REPO,
    GATED_REPO,
    NO_LICENCE_TOKEN,
    PUBLIC_REPO,
    READER_TOKEN,
    WRITER_TOKEN,
    FakeHub,
)
from tests.ui_harness import free_port

REVOKED = "hf_revoked0123456789abcdefREVOKED"


def _sizes(folder: Path) -> dict[str, int]:
    return {p.relative_to(folder).as_posix(): p.stat().st_size for p in folder.rglob("*") if p.is_file()}


def _file_requests(server: FakeHub, repo: str, method: str = "GET") -> list:
    return [r for r in server.requests_for(repo) if r.method == method and "/resolve/" in r.path]


# ------------------------------------------------------------------------------------ model ids


@pytest.mark.parametrize("text", ["../x", "/etc", "/etc/passwd", "~/x", "C:\\x", "C:/models/x", "./x", "a/../b",
                                  "..\\x", "\\\\server\\share"])
def test_paths_are_refused_as_model_ids_without_echoing_them(text: str) -> None:
    with pytest.raises(HubError, match="looks like a file path") as info:
        check_model_id(text)
    assert info.value.kind == "bad_id" and text not in str(info.value)
    with pytest.raises(SettingsError, match="base_model"):
        TrainConfig(base_model=text)


@pytest.mark.parametrize("text, why", [("", "Type a model id"), ("   ", "Type a model id"),
                                       ("gpt2", "exactly one '/'"), ("a/b/c", "exactly one '/'"),
                                       ("you/bad name", "not a valid"), ("you/x--y", "not a valid"),
                                       ("-you/x", "not a valid"), ("you/x.git", "not a valid"),
                                       ("you/" + "x" * 97, "not a valid")])
def test_malformed_ids_get_a_specific_message(text: str, why: str) -> None:
    with pytest.raises(HubError, match=why):
        check_model_id(text)


def test_hub_ids_and_the_bundled_id_are_accepted() -> None:
    assert check_model_id(" Qwen/Qwen2.5-0.5B-Instruct ") == "Qwen/Qwen2.5-0.5B-Instruct"
    assert check_model_id("meta-llama/Llama-3.2-1B-Instruct") == "meta-llama/Llama-3.2-1B-Instruct"
    assert TrainConfig().base_model == "bundled/SmolLM2-135M-Instruct"
    assert TrainConfig(base_model="google/gemma-2-2b-it").base_model == "google/gemma-2-2b-it"


# ------------------------------------------------------------------------------------- download


def test_only_loadable_files_are_picked_and_safetensors_win_over_older_weight_formats() -> None:
    listing = [("model-00001-of-00002.safetensors", 5), ("model-00002-of-00002.safetensors", 5),
               ("model.safetensors.index.json", 1), ("pytorch_model.bin", 10), ("consolidated.safetensors", 10),
               ("onnx/model.onnx", 10), ("config.json", 1), ("tokenizer.model", 1), ("README.md", 1),
               ("original/consolidated.00.pth", 10)]
    picked = {path for path, _ in hub.pick_files(listing, hub.MODEL_FILES)}
    assert picked == {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                      "model.safetensors.index.json", "config.json", "tokenizer.model"}
    older = [("pytorch_model.bin", 10), ("config.json", 1), ("vocab.txt", 1)]
    assert {path for path, _ in hub.pick_files(older, hub.MODEL_FILES)} == {"pytorch_model.bin", "config.json",
                                                                            "vocab.txt"}
    assert {path for path, _ in hub.pick_files(listing, hub.TOKENIZER_FILES)} == {
        "model.safetensors.index.json", "config.json", "tokenizer.model"}


def test_download_reports_bytes_rising_to_the_total_with_rate_and_eta(fake_hub: FakeHub,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", READER_TOKEN)  # the server's own token must never be used for a visitor
    fake_hub.bytes_per_second = 8e6  # ~2 s for the 16 MB model: progress is seen mid-download
    events: list[DownloadProgress] = []
    folder = download(PUBLIC_REPO, token=None, on_progress=events.append, allow_patterns=hub.MODEL_FILES)

    on_disk = _sizes(folder)
    assert "model.safetensors" in on_disk and "tokenizer.json" in on_disk and "README.md" not in on_disk
    total = sum(on_disk.values())
    done = [e.done for e in events]
    assert events[0].done == 0 and all(e.total == total for e in events)
    assert done == sorted(done) and done[-1] == total and events[-1].eta_seconds == 0.0
    middle = [e for e in events if 0 < e.done < total]
    assert middle and all(e.rate and e.rate > 0 and e.eta_seconds is not None and e.eta_seconds > 0 for e in middle)
    assert events[-1].files_done == events[-1].files == len(on_disk)

    event = events[len(events) // 2].to_event("job1")
    assert isinstance(event, Progress) and (event.phase, event.unit, event.item) == ("download", "bytes", PUBLIC_REPO)
    assert (event.done, event.total, event.eta_seconds) == (events[len(events) // 2].done, total,
                                                           events[len(events) // 2].eta_seconds)
    assert {r.auth for r in fake_hub.requests_for(PUBLIC_REPO)} == {"none"}


def test_a_second_download_comes_from_the_cache_without_fetching_files(fake_hub: FakeHub) -> None:
    first = download(PUBLIC_REPO, token=None, allow_patterns=hub.TOKENIZER_FILES)
    assert "model.safetensors" not in _sizes(first)  # tokenizer files only: no weights for counting tokens
    fake_hub.clear_requests()
    events: list[DownloadProgress] = []
    again = download(PUBLIC_REPO, token=None, on_progress=events.append, allow_patterns=hub.TOKENIZER_FILES)
    assert again == first and not _file_requests(fake_hub, PUBLIC_REPO)
    assert events[0].done == events[0].total == sum(_sizes(first).values())


def test_gated_model_without_token_names_the_licence_page(fake_hub: FakeHub) -> None:
    with pytest.raises(HubError) as info:
        download(GATED_REPO, token=None)
    message = str(info.value)
    assert info.value.kind == "gated" and f"https://huggingface.co/{GATED_REPO}" in message
    assert "read access" in message and "licence" in message
    assert not _file_requests(fake_hub, GATED_REPO)


def test_gated_model_with_a_token_that_has_not_accepted_the_licence(fake_hub: FakeHub) -> None:
    with pytest.raises(HubError) as info:
        require_access(GATED_REPO, NO_LICENCE_TOKEN)
    assert info.value.kind == "gated" and f"https://huggingface.co/{GATED_REPO}" in str(info.value)
    assert NO_LICENCE_TOKEN not in str(info.value)
    assert [r.auth for r in fake_hub.requests_for(GATED_REPO)] == ["nolicence"]


def test_gated_model_with_the_right_token_downloads_and_a_cached_copy_still_needs_it(fake_hub: FakeHub) -> None:
    folder = download(GATED_REPO, token=READER_TOKEN, allow_patterns=hub.TOKENIZER_FILES)
    assert (folder / "tokenizer.json").exists()
    assert {r.auth for r in _file_requests(fake_hub, GATED_REPO)} == {"reader"}
    with pytest.raises(HubError, match="gated") as info:  # the files are cached; access is still checked
        download(GATED_REPO, token=None, allow_patterns=hub.TOKENIZER_FILES)
    assert info.value.kind == "gated"


def test_access_checks_are_remembered_per_token_for_a_while(fake_hub: FakeHub) -> None:
    require_access(GATED_REPO, READER_TOKEN)
    require_access(GATED_REPO, READER_TOKEN)
    checks = [r for r in fake_hub.requests_for(GATED_REPO) if r.path.endswith("/auth-check")]
    assert len(checks) == 1
    with pytest.raises(HubError, match="gated"):  # another token (here none) is checked on its own
        require_access(GATED_REPO, None)
    fake_hub.clear_requests()
    require_access("bundled/SmolLM2-135M-Instruct", None)  # not a Hub model: nothing to check
    assert fake_hub.requests == []


def test_a_revoked_token_gets_its_own_message(fake_hub: FakeHub) -> None:
    with pytest.raises(HubError) as info:
        download(PUBLIC_REPO, token=REVOKED)
    assert info.value.kind == "bad_token" and "token was refused" in str(info.value)
    assert REVOKED not in str(info.value) and "settings/tokens" in str(info.value)


def test_an_unknown_model_says_to_check_the_id(fake_hub: FakeHub) -> None:
    for token in (None, READER_TOKEN):  # the Hub answers 401 without a token, 404 with one
        with pytest.raises(HubError) as info:
            download("nobody/no-such-model", token=token)
        assert info.value.kind == "not_found" and "nobody/no-such-model" in str(info.value)
        assert "check the id" in str(info.value)


def test_a_download_that_does_not_fit_on_disk_is_refused_before_it_starts(fake_hub: FakeHub,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    real = shutil.disk_usage
    monkeypatch.setattr(hub.shutil, "disk_usage", lambda path: real(path)._replace(free=5 * 2**20))
    with pytest.raises(HubError) as info:
        download(PUBLIC_REPO, token=None)
    message = str(info.value)
    assert info.value.kind == "no_disk" and "disk space" in message and re.search(r"needs \d+\.\d MB", message)
    assert str(hub.hub_cache_dir()) not in message and "/" not in message.replace(PUBLIC_REPO, "")
    assert not _file_requests(fake_hub, PUBLIC_REPO)


def test_an_unreachable_hub_says_so_quickly(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from huggingface_hub import constants

    monkeypatch.setenv("TUNE_STUDIO_MODELS", str(tmp_path))
    down = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setattr(constants, "ENDPOINT", down)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", down + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    hub.forget_access()
    start = time.monotonic()
    with pytest.raises(HubError) as info:
        download(PUBLIC_REPO, token=READER_TOKEN)
    assert info.value.kind == "offline" and "Cannot reach 127.0.0.1:" in str(info.value)
    assert "only the bundled model" in str(info.value) and READER_TOKEN not in str(info.value)
    assert time.monotonic() - start < 30
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(HubError, match="switched off") as info:
        download(PUBLIC_REPO, token=None)
    assert info.value.kind == "offline"


# ------------------------------------------------------------------------------------ embedders


def test_the_bundled_embedder_loads_offline_without_touching_the_environment(fake_hub: FakeHub,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import sentence_transformers  # noqa: F401 - importing it (scikit-learn) sets KMP_* variables: theirs, not ours
    from huggingface_hub import constants

    from rag import embedders

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(embedders, "_CACHE", {})  # a fresh load, not the session's cached one
    before = dict(os.environ)
    vector = embedders.get_embedder(embedders.BUNDLED).embed_query("hello")
    assert vector.shape == (384,)
    assert dict(os.environ) == before and "HF_HUB_OFFLINE" not in os.environ and not constants.HF_HUB_OFFLINE
    assert [r.path for r in fake_hub.requests if r.path != "/api/agent-harnesses"] == []  # no Hub call at all


def test_a_hub_embedder_downloads_through_the_same_downloader(fake_hub: FakeHub,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from rag import embedders
    from services.hub import connect_downloads

    monkeypatch.setattr(embedders, "_CACHE", {})
    monkeypatch.setattr(embedders, "_downloader", None)
    with pytest.raises(embedders.EmbedderUnavailableError, match="bundled embedder"):
        embedders.get_embedder(EMBEDDER_REPO)
    connect_downloads()
    events: list[DownloadProgress] = []
    embedder = embedders.get_embedder(EMBEDDER_REPO, on_progress=events.append)
    assert embedder.embed_query("hello").shape == (384,)
    assert events[-1].done == events[-1].total > 20 * 2**20 and events[-1].repo_id == EMBEDDER_REPO
    assert {r.auth for r in fake_hub.requests_for(EMBEDDER_REPO)} == {"none"}
    fetched = {r.path.rsplit("/", 1)[-1] for r in _file_requests(fake_hub, EMBEDDER_REPO)}
    assert {"modules.json", "model.safetensors", "config.json", "vocab.txt"} <= fetched and "README.md" not in fetched


# ------------------------------------------------------------------- what the fake Hub must speak


def test_the_fake_hub_serves_huggingface_hubs_own_snapshot_download(fake_hub: FakeHub, tmp_path: Path) -> None:
    from huggingface_hub import HfApi, snapshot_download

    folder = Path(snapshot_download(PUBLIC_REPO, cache_dir=tmp_path, token=False))
    assert set(_sizes(folder)) == set(fake_hub.repo(PUBLIC_REPO).files)
    infos = HfApi().get_paths_info(PUBLIC_REPO, ["config.json", "missing.txt"], token=False)
    assert [i.path for i in infos] == ["config.json"]
    assert HfApi().whoami(token=WRITER_TOKEN)["name"] == "test-user"


def test_a_subprocess_reaches_the_fake_hub_through_its_environment(hub_server: FakeHub, tmp_path: Path) -> None:
    script = ("import json; from engine.hub import download; "
              "print(json.dumps(sorted(p.name for p in download('tiny-org/tiny-chat', token=None, "
              "allow_patterns=['*.json']).iterdir())))")
    env = {**os.environ, **hub_server.env(), "TUNE_STUDIO_MODELS": str(tmp_path)}
    hub_server.clear_requests()
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == ["config.json", "generation_config.json", "tokenizer.json",
                                                        "tokenizer_config.json"]
    assert hub_server.requests_for(PUBLIC_REPO)


def test_push_model_and_space_reach_the_fake_hub_with_the_write_token(fake_hub: FakeHub, tmp_path: Path) -> None:
    from services.publish import PublishError, push_model, push_space

    (tmp_path / "README.md").write_text("---\nlicense: apache-2.0\n---\n# my adapter\n")
    (tmp_path / "adapter_config.json").write_text('{"r": 8}')
    url = push_model(tmp_path, "test-user/my-adapter", WRITER_TOKEN, endpoint=fake_hub.url)
    assert url.endswith("/test-user/my-adapter")
    pushed = fake_hub.repo("test-user/my-adapter")
    assert pushed is not None and pushed.private and {"README.md", "adapter_config.json"} <= set(pushed.files)
    assert push_space(tmp_path, "test-user/my-demo", WRITER_TOKEN, endpoint=fake_hub.url).endswith(
        "/spaces/test-user/my-demo")
    with pytest.raises(PublishError, match="write scope") as info:
        push_model(tmp_path, "test-user/other", READER_TOKEN, endpoint=fake_hub.url)
    assert READER_TOKEN not in str(info.value)
    assert {r.auth for r in fake_hub.requests if "my-adapter" in r.path} == {"writer"}


# --------------------------------------------------------------------------------- environment


def _environment_writes(path: Path) -> list[str]:
    """``os.environ[...] = ``, ``os.environ.setdefault/update/pop/...`` and ``os.putenv`` calls in one file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets = node.targets if isinstance(node, ast.Assign) else []
        for target in targets:
            if isinstance(target, ast.Subscript) and ast.unparse(target.value) == "os.environ":
                found.append(f"{path.name}:{node.lineno}")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner, name = ast.unparse(node.func.value), node.func.attr
            if (owner == "os.environ" and name in {"setdefault", "update", "pop", "popitem", "clear"}) or (
                    owner == "os" and name in {"putenv", "unsetenv"}):
                found.append(f"{path.name}:{node.lineno}")
    return found


def test_no_app_code_changes_the_process_environment() -> None:
    files = [p for folder in ("engine", "rag", "services", "ui") for p in (REPO / folder).rglob("*.py")]
    assert len(files) > 30
    assert [hit for path in files for hit in _environment_writes(path)] == []
