"""A Hub model on a shared Space, end to end through the real app and gradio_client, against the fake Hub.

Three people: the Space owner (whose ``HF_TOKEN`` is in the server's environment) and two visitors.
Alice trains a public Hub model with no token (download with progress, train, chat with the result);
a gated model without a token gets the plain licence message; Bob's gated run waits behind Alice's and
then starts with Bob's own token. Each live worker's ``/proc/PID/environ`` is read: no server secret,
only its own job's token. Afterwards no token or secret appears in any file the app wrote.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from engine.events import Progress
from engine.jobs import JobStore
from tests.conftest import FT_DATA
from tests.ui_harness import ARTIFACTS, REPO, running_app

PUBLIC, GATED = "tiny-org/tiny-chat", "gated-org/tiny-gated"
READER = "hf_test_reader"
OWNER_TOKEN = "hf_ownerCanaryToken0123456789abcdefXYZ"  # the Space owner's secret: must reach no visitor's job
SECRET = "server-secret-4d1f9b2c"
USERS = "alice:alice-pass,bob:bob-pass,owen:owen-pass"
TINY = {"max_steps": 2, "batch_size": 2, "grad_accum": 1, "max_length": 64, "save_steps": 100,
        "val_fraction": 0.0, "gradient_checkpointing": False}
WAIT_S = 600  # generous: a busy 2-core machine starts a worker and trains two tiny steps in well under this

pytestmark = pytest.mark.slow


def _client(url: str, user: str) -> Any:
    from gradio_client import Client

    # CI load: see test_workspaces._client
    return Client(url, auth=(user, f"{user}-pass"), verbose=False, httpx_kwargs={"timeout": 60})


def _wait(what: str, check: Any, timeout: float = WAIT_S, poll: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out waiting for {what}")


def _environ(home: Path, run_id: str) -> dict[str, str]:
    """The live environment of a run's worker, read from /proc as an attacker on the box would."""
    job = _wait(f"{run_id}'s worker", lambda: (j := JobStore(home).load(run_id)).pid and j.status == "running" and j,
                poll=0.2)
    raw = Path(f"/proc/{job.pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)


def _start(client: Any, model: str, token: str, name: str) -> str:
    picker, status, *_ = client.predict(run_name=name, hf_token=token, base_model=model, **TINY,
                                        api_name="/train_start")
    assert name in status
    return picker["value"]


def _done(client: Any, run_id: str) -> dict:
    return _wait(f"{run_id} to finish",
                 lambda: (s := client.predict(run_id, api_name="/train_status"))["status"] in ("done", "failed") and s)


def test_hub_models_through_the_app_each_visitor_with_their_own_token(tmp_path: Path, hub_server: Any) -> None:
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    from engine.models import bundled_model_dir

    home, models = tmp_path / "home", tmp_path / "models"
    models.mkdir()
    (models / bundled_model_dir().name).symlink_to(bundled_model_dir(), target_is_directory=True)
    env = {**hub_server.env(), "TUNE_STUDIO_USERS": USERS, "TUNE_STUDIO_OWNER": "owen", "HF_TOKEN": OWNER_TOKEN,
           "SECRET_X": SECRET, "TUNE_STUDIO_MODELS": str(models)}
    hub_server.clear_requests()
    with running_app(REPO / "app.py", home=home, env=env, log_name="space-hub-app", timeout=300) as url:
        alice, bob = _client(url, "alice"), _client(url, "bob")
        for client in (alice, bob):
            shown = client.predict(file=handle_file(str(FT_DATA / "alpaca_en_demo.json")), base_model=PUBLIC,
                                   max_length=64, api_name="/data_upload")
            assert "Detected format: alpaca" in shown[0]

        with pytest.raises(AppError, match=f"{GATED} is a gated model: accept its licence on "):
            _start(alice, GATED, "", "no-token")  # refused before any worker starts: no owner token for Alice

        run_a = _start(alice, PUBLIC, "", "alice-hub")
        run_b = _start(bob, GATED, READER, "bob-gated")  # waits: one device, first come first served
        alice_env = _environ(home, run_a)
        bob_env = _environ(home, run_b)  # Bob's run starts when Alice's ends, with Bob's own token
        for worker in (alice_env, bob_env):
            assert not {"HF_TOKEN", "TUNE_STUDIO_USERS", "SECRET_X"} & set(worker)
            assert OWNER_TOKEN not in str(worker) and SECRET not in str(worker)
        assert "TUNE_STUDIO_HF_TOKEN" not in alice_env
        assert bob_env["TUNE_STUDIO_HF_TOKEN"] == READER

        assert _done(alice, run_a)["status"] == "done"
        assert _done(bob, run_b)["status"] == "done"
        downloads = [e for e in JobStore(home).events(run_a) if isinstance(e, Progress) and e.phase == "download"]
        assert downloads and downloads[-1].total and downloads[-1].done == downloads[-1].total
        assert downloads[-1].item == PUBLIC and downloads[-1].unit == "bytes"

        history, _, _, stats = alice.predict("Hello", None, run_a, None, max_new_tokens=4, api_name="/chat")
        assert history[-1]["role"] == "assistant" and "adapter alice-hub (" in stats
        with pytest.raises(AppError, match="gated model"):
            bob.predict("Hello", None, run_b, None, max_new_tokens=4, api_name="/chat")  # no token given
        history, _, _, stats = bob.predict("Hello", None, run_b, None, max_new_tokens=4, hf_token=READER,
                                           api_name="/chat")
        assert "base tiny-gated · adapter bob-gated (" in stats

    assert not [r for r in hub_server.requests if r.auth == "invalid"], "the owner's token was sent to the Hub"
    written = [p for p in home.rglob("*") if p.is_file()] + [ARTIFACTS / "space-hub-app.log"]
    leaks = [str(p) for p in written for secret in (OWNER_TOKEN, READER, SECRET) if secret.encode() in p.read_bytes()]
    assert not leaks, leaks
    assert len(written) > 20
