"""Many people on one Space: sign-in, per-user workspaces, the read-only demo, and the HF token.

The app-level tests run the real ``app.py`` with password sign-in from the environment and drive it
with ``gradio_client`` signed in as two different people, exactly as two browsers would.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from engine.config import TrainConfig
from engine.jobs import JobError, JobStore
from engine.workspace import LOCAL_OWNER, AccessError, AccessPolicy, Workspace, safe_owner
from tests.conftest import FT_DATA
from tests.ui_harness import REPO, running_app

DEMO_DATA = REPO / "ui" / "demo_data" / "tune_studio_faq.json"
USERS = {"TUNE_STUDIO_USERS": "alice:alice-pass,bob:bob-pass"}
FAKE_TOKEN = "hf_FAKEtuneStudioToken0123456789abcdef"
TINY_RUN = {"max_steps": 2, "batch_size": 2, "grad_accum": 1, "max_length": 96, "save_steps": 1,
            "val_fraction": 0.0, "gradient_checkpointing": False}


# ----------------------------------------------------------------------------------------- policy


def test_policy_reads_users_from_env_and_file(tmp_path: Path) -> None:
    users_file = tmp_path / "users.txt"
    users_file.write_text("# team\ncarol:c-pass\n")
    env = {"TUNE_STUDIO_USERS": "alice:a:b, bob:pw", "TUNE_STUDIO_USERS_FILE": str(users_file)}
    policy = AccessPolicy.from_env(env)
    assert policy.requires_sign_in and not policy.demo
    assert policy.check_password("alice", "a:b")  # a password may contain ':'
    assert policy.check_password("carol", "c-pass")
    assert not policy.check_password("bob", "wrong") and not policy.check_password("nobody", "pw")
    assert "pw" not in repr(policy)  # passwords never end up in a log line


def test_policy_refuses_malformed_users_with_the_fix() -> None:
    with pytest.raises(AccessError, match="entry 2 is not 'name:password'"):
        AccessPolicy.from_env({"TUNE_STUDIO_USERS": "alice:pw,bob"})


def test_owner_rules_local_signed_in_and_demo() -> None:
    assert AccessPolicy.from_env({}).owner_for(None) == LOCAL_OWNER  # a laptop: one shared local workspace
    signed = AccessPolicy.from_env(USERS)
    assert signed.owner_for("alice") == "alice"
    with pytest.raises(AccessError, match="Sign in first"):
        signed.owner_for(None)
    demo = AccessPolicy.from_env({"TUNE_STUDIO_DEMO": "1", "TUNE_STUDIO_DEMO_WORKSPACE": "showcase"})
    assert demo.owner_for("anyone") == "showcase" and demo.owner_for(None) == "showcase"
    with pytest.raises(AccessError, match="read-only demo"):
        demo.require_write("Training")
    assert AccessPolicy.from_env({"SPACE_ID": "me/space", "OAUTH_CLIENT_ID": "x"}).oauth


def test_workspace_folders_never_collide_or_escape(isolated_home: Path) -> None:
    assert safe_owner("a/b") != safe_owner("a_b")
    assert "/" not in safe_owner("../../etc")
    ws = Workspace("../../etc")
    assert ws.root.resolve().is_relative_to(isolated_home.resolve())
    assert ws.index_path("../../../outside").resolve().is_relative_to(ws.indexes.resolve())


def test_someone_elses_run_reads_as_missing(isolated_home: Path) -> None:
    job = JobStore().submit(TrainConfig(max_steps=1), DEMO_DATA, owner="alice", start=False)
    assert Workspace("alice").run(job.id).id == job.id
    with pytest.raises(JobError, match="no run with id"):
        Workspace("bob").run(job.id)
    assert Workspace("bob").runs() == []


# ----------------------------------------------------------------------------------------- real app


def _client(url: str, user: str | None = None):
    from gradio_client import Client

    # A generous timeout: right after start-up, under CI load, signing in and reading the config once took over
    # httpx's default 5 s (ReadTimeout in a clean-clone run while the other test process trained).
    return Client(url, auth=(user, f"{user}-pass") if user else None, verbose=False, httpx_kwargs={"timeout": 60})


def _file_route(url: str, path: Path, user: str) -> int:
    """HTTP status of a signed-in visitor asking the server for a file by its path on disk."""
    import http.cookiejar

    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    login = urllib.parse.urlencode({"username": user, "password": f"{user}-pass"}).encode()
    opener.open(url + "login", data=login, timeout=10)
    try:
        with opener.open(url + "gradio_api/file=" + urllib.parse.quote(str(path)), timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.slow
def test_two_signed_in_users_cannot_see_each_others_runs_and_the_token_is_never_written(tmp_path: Path) -> None:
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    home = tmp_path / "home"
    with running_app(REPO / "app.py", home=home, env=USERS, log_name="workspaces-app") as url:
        with pytest.raises(ValueError):  # no password, no app
            _client(url)
        alice, bob = _client(url, "alice"), _client(url, "bob")
        uploaded = alice.predict(file=handle_file(str(FT_DATA / "alpaca_en_demo.json")), max_length=96,
                                 api_name="/data_upload")
        assert "Detected format: alpaca" in uploaded[0]
        picker, status, *_ = alice.predict(run_name="alice-run", hf_token=FAKE_TOKEN, **TINY_RUN,
                                           api_name="/train_start")
        run_id = picker["value"]
        assert "alice-run" in status

        # Bob sees the device queue (anonymously), but not Alice's run, its status, files or name.
        bob_view = bob.predict(None, api_name="/train_refresh")
        assert bob_view[0]["value"] is None and "alice-run" not in str(bob_view)
        assert "another person's run" in bob_view[1] or "empty" in bob_view[1]
        for api_name, args in (("/train_status", (run_id,)), ("/train_show_run", (run_id,)),
                               ("/train_stop", (run_id,)), ("/train_download_adapter", (run_id,))):
            with pytest.raises(AppError, match="no run with id"):
                bob.predict(*args, api_name=api_name)

        deadline = time.monotonic() + 900
        while (state := alice.predict(run_id, api_name="/train_status"))["status"] not in ("done", "failed"):
            assert time.monotonic() < deadline, state
            time.sleep(3)
        assert state["status"] == "done", state
        assert alice.predict(None, api_name="/train_refresh")[0]["value"] == run_id
        assert run_id in str(alice.predict(api_name="/compare_refresh"))  # Alice can compare with her run
        zip_path = Path(alice.predict(run_id, api_name="/train_download_adapter"))
        assert zip_path.stat().st_size > 1000
        with pytest.raises(AppError, match="no run with id"):
            bob.predict(run_id, api_name="/train_download_adapter")
        assert run_id not in str(bob.predict(api_name="/compare_refresh"))

        # The data directory is not served: neither user can fetch a stored file by its path.
        dataset = next((home / "workspaces" / "alice" / "datasets").rglob("alpaca_en_demo.json"))
        adapter = JobStore(home).get(run_id).adapter_dir / "adapter_config.json"
        for user in ("alice", "bob"):
            assert _file_route(url, dataset, user) == 403
            assert _file_route(url, adapter, user) == 403

    # The token typed into the form reached the worker (the run finished) but no file the app wrote.
    written = [p for p in home.rglob("*") if p.is_file()]
    written += [REPO / "test-artifacts" / "workspaces-app.log"]
    leaks = [str(p) for p in written if FAKE_TOKEN.encode() in p.read_bytes()]
    assert not leaks, leaks
    assert len(written) > 20  # the grep really looked at the run's files


@pytest.mark.slow
def test_demo_mode_refuses_training_and_indexing_but_answers(tmp_path: Path) -> None:
    from gradio_client.exceptions import AppError

    home = tmp_path / "home"
    with running_app(REPO / "app.py", home=home, env={"TUNE_STUDIO_DEMO": "1"}, log_name="demo-mode-app") as url:
        client = _client(url)
        with pytest.raises(AppError, match="read-only demo"):
            client.predict(run_name="x", hf_token="", **TINY_RUN, api_name="/train_start")
        with pytest.raises(AppError, match="read-only demo"):
            client.predict("my-docs", api_name="/rag_open")
        assert JobStore(home).list() == []
        panes = client.predict(arms=["base"], run="(none)", collection=None, question="Say hello.",
                               max_new_tokens=8, api_name="/compare_ask")
        assert any(isinstance(x, str) and x.strip() and "waiting" not in x for x in panes)


def test_hugging_face_sign_in_names_the_workspace() -> None:
    """On a Space, "Sign in with Hugging Face" reaches handlers as Gradio's ``gr.OAuthProfile`` parameter;
    Gradio passes None when there is no sign-in or it has expired, which reads as signed out."""
    from types import SimpleNamespace

    import gradio as gr

    from ui.common import signed_in_user

    def request() -> SimpleNamespace:
        return SimpleNamespace(username=None)

    dana = gr.OAuthProfile({"name": "Dana", "preferred_username": "dana", "profile": "", "picture": ""})
    assert signed_in_user(request(), dana) == "dana"
    assert signed_in_user(request(), None) is None  # expired: Gradio hands the handler no profile
    assert signed_in_user(request()) is None
    assert signed_in_user(SimpleNamespace(username="erin")) == "erin"  # password sign-in
    assert signed_in_user(None) is None
