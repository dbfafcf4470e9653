"""A small load test: three gradio_client visitors chat at once while a real QLoRA run trains.

The full version with timings is ``python -m bench load`` (figures in bench/RESULTS.md). This one asserts
only what must always hold: no errors, every visitor gets non-empty answers in a carried conversation,
and the training job keeps making progress while the chats run. No timing assertions here.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import load
from engine.jobs import JobStore
from tests.ui_harness import REPO, running_app

pytestmark = pytest.mark.slow

CLIENTS, QUESTIONS, MAX_NEW_TOKENS = 3, 2, 8


def _app_with_chat() -> Path:
    """The full app once it mounts the Chat tab; the one-tab chat app until then."""
    full = REPO / "app.py"
    uses_chat = "chat_tab" in (REPO / "ui" / "app.py").read_text(encoding="utf-8")
    return full if uses_chat else REPO / "tests" / "apps" / "chat_only.py"


def test_concurrent_chats_while_training(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    with running_app(_app_with_chat(), home=home, timeout=240, log_name="load-test-app") as url:
        job = load.submit_training(home, max_steps=200, max_length=64)
        try:
            load.wait_for_first_step(home, job.id, timeout=240)
            before = load.training_steps(home, job.id)
            phase = load.run_phase("while training", url, CLIENTS, QUESTIONS, MAX_NEW_TOKENS)
            running = JobStore(home).get(job.id).status
            # A CPU step can take tens of seconds on a busy machine: progress = a new step during or soon after.
            after = load.wait_for_progress(home, job.id, before, timeout=240)
        finally:
            status = load.stop_training(home, job.id, timeout=600)  # Stop waits for the step under way

    assert len(phase.answers) == CLIENTS * QUESTIONS
    assert not phase.errors, [(a.client, a.turn, a.error, a.text) for a in phase.errors]
    for client in range(CLIENTS):
        answers = sorted((a for a in phase.answers if a.client == client), key=lambda a: a.turn)
        assert [a.turn for a in answers] == list(range(QUESTIONS))
        assert all(a.text.strip() and a.updates >= 1 for a in answers)
    assert phase.max_overlap("submitted", "finished") > 1, "the visitors' requests should overlap on the server"
    assert after > before, f"training made no progress during the chats (stuck at step {before})"
    assert running == "running", "the training job should still be training after the chats"
    assert status == "cancelled", f"{status}: {JobStore(home).get(job.id).error}"  # 200 steps: Stop lands first
