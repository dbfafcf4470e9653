"""The fine-tuning UI end to end: a real server, a real Chromium, and gradio_client.

One app server (own data directory, offline, free port) serves both the browser tests and the
client tests, so the bundled model is converted once. Training runs are tiny (a few steps of
128 tokens) and always stopped, because the device runs one job at a time and CPUs are shared.
Screenshots go to ``test-artifacts/ui-*.png``. Server and browser come from ``tests/ui_harness.py``.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ui_harness import REPO, browser_page, require_browser, running_app, screenshot, set_number

SHARED = REPO.parent / "shared" / "testdata" / "ft" / "llama_factory"
ALPACA = SHARED / "alpaca_en_demo.json"
MLLM = SHARED / "mllm_demo.json"
FIRST_STEP_TIMEOUT_S = 420  # worker start + model load + one step on 2 shared CPU cores
GUIDE_RUN = {"max_steps": 2}  # the taste preset as chosen by the guide, only shorter
TINY_RUN = {"max_steps": 6, "batch_size": 2, "grad_accum": 1, "max_length": 128, "save_steps": 2,
            "val_fraction": 0.0, "gradient_checkpointing": False}

pytestmark = [pytest.mark.slow]


@pytest.fixture(scope="module")
def app_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """``python app.py`` on a free port with a temporary data directory; workers are stopped afterwards."""
    home = tmp_path_factory.mktemp("tune-studio-home")
    with running_app(REPO / "app.py", home=home, log_name="ui-app") as url:
        try:
            warm_up(url)
            yield {"url": url, "home": home}
        finally:
            stop_workers(home)


def warm_up(url: str) -> None:
    """Load the demo once, so the one-off bundled-model conversion is not charged to a test's timeouts."""
    from gradio_client import Client

    Client(url, verbose=False).predict(api_name="/data_load_demo")


def stop_workers(home: Path) -> None:
    """Kill the training workers this module's runs started (by their recorded pid), never others."""
    from engine.jobs import JobStore

    for job in JobStore(home).list():
        if job.pid and job.status in ("running", "cancelling"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(job.pid, signal.SIGTERM)


def wait_until(predicate, timeout: float, interval: float = 2.0, what: str = "condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"Timed out after {timeout:.0f} s waiting for {what}.")


# ----------------------------------------------------------------------------------------- browser


@pytest.fixture
def page(app_server: dict) -> Iterator:
    """A fresh Chromium page (its own browser session) on the app, with the Data tab loaded."""
    require_browser()
    with browser_page(app_server["url"]) as opened:
        opened.wait_for_selector("#data-upload")
        yield opened


def shot(page, name: str) -> None:
    screenshot(page, f"ui-{name}")


def upload(page, path: Path) -> None:
    """Drop a file on the upload area, first clearing the file shown from the previous upload."""
    clear = page.locator("#data-upload button[aria-label='Clear']")
    if clear.count() and clear.first.is_visible():
        clear.first.click()
    page.locator("#data-upload input[type=file]").set_input_files(str(path))


def expect_error_toast(page, fragment: str) -> str:
    toast = page.locator(".toast-body.error").filter(has_text=re.compile(fragment, re.IGNORECASE)).first
    toast.wait_for(state="visible", timeout=60_000)
    text = toast.inner_text()
    return text


def close_toasts(page) -> None:
    for button in page.locator(".toast-close").all():
        if button.is_visible():
            button.click()


def open_train_tab(page) -> None:
    page.get_by_role("tab", name="Train", exact=True).click()
    page.wait_for_selector("#train-start", state="visible")


def status_text(page) -> str:
    return page.locator("#train-status").inner_text()


def log_text(page) -> str:
    return page.locator("#train-log textarea").input_value()


@pytest.mark.browser
def test_browser_bad_uploads_show_messages_and_app_keeps_working(page, tmp_path: Path) -> None:
    empty = tmp_path / "empty.json"
    empty.write_text("")
    not_json = tmp_path / "notes.json"
    not_json.write_text("these are my notes, not JSON\nsecond line\n")
    cases = [(empty, "empty"), (not_json, "JSON")]
    if MLLM.exists():
        cases.insert(0, (MLLM, "image"))
    for index, (path, fragment) in enumerate(cases):
        upload(page, path)
        text = expect_error_toast(page, fragment)
        assert "Traceback" not in text
        shot(page, f"01-bad-upload-{index}-{path.stem}")
        close_toasts(page)
    upload(page, ALPACA)
    page.locator("#data-status").filter(has_text="Detected format: alpaca").wait_for(timeout=120_000)
    shot(page, "02-good-upload-after-errors")


@pytest.mark.browser
def test_browser_upload_train_reload_and_stop(page, app_server: dict, tokenizer) -> None:
    from engine import data

    # The check runs at the preset's max length (taste-cpu: 128 on a CPU), where a few alpaca rows keep no answer
    # token: the page must show the engine's own count at that length.
    error_rows = data.validate(data.prepare(ALPACA, None), tokenizer, 128, "assistant").n_error_rows
    upload(page, ALPACA)
    page.locator("#data-status").filter(has_text="Detected format: alpaca").wait_for(timeout=120_000)
    preview = page.locator("#data-preview")
    preview.filter(has_text="You:").wait_for()  # a readable conversation by default
    assert "learned" in preview.inner_text() and "<|im_start|>" not in preview.inner_text()
    page.locator("#data-preview-raw input").check()  # the exact text, special tokens included, behind a toggle
    exact = page.locator("#data-preview-exact").filter(has_text="<|im_start|>user")
    exact.wait_for()
    assert "named SmolLM" not in exact.inner_text()  # no system prompt the data did not have
    report = page.locator("#data-report").inner_text()
    assert f"rows with errors (left out): {error_rows}" in report, report  # the engine's count, shown
    shot(page, "03-data-detected-and-preview")

    open_train_tab(page)
    page.locator("#train-memory").filter(has_text="Memory estimate").wait_for()
    for name in ("max_steps", "batch_size", "grad_accum", "max_length", "val_fraction"):
        set_number(page, f"train-{name}", TINY_RUN[name])
    page.locator("#train-advanced").get_by_text("Advanced").first.click()
    set_number(page, "train-save_steps", TINY_RUN["save_steps"])
    page.locator("#train-memory").filter(has_text="fits on this device").wait_for()
    shot(page, "04-train-settings")
    page.locator("#train-start").click()
    page.locator("#train-status").filter(has_text=re.compile("running|queued")).wait_for()
    run_id = re.search(r"Run (\S+) · model", status_text(page)).group(1)

    wait_until(lambda: re.search(r"step \d+/6 +loss", log_text(page)), FIRST_STEP_TIMEOUT_S, what="a loss point")
    steps_before = len(re.findall(r"step \d+/6 +loss", log_text(page)))
    shot(page, "05-training-loss-points")

    page.reload()
    page.wait_for_selector("#data-upload")
    open_train_tab(page)
    page.locator("#train-status").filter(has_text=run_id).wait_for()
    wait_until(lambda: len(re.findall(r"step \d+/6 +loss", log_text(page))) >= steps_before, 60,
               what="the replayed curve after reload")
    assert page.locator("#train-progress .ts-progress").get_attribute("data-status") in ("running", "done")
    shot(page, "06-after-reload-same-run")

    second = page.context.browser.new_context().new_page()  # a second browser session sees the same run
    second.goto(app_server["url"])
    second.get_by_role("tab", name="Train", exact=True).click()
    second.locator("#train-status").filter(has_text=run_id).wait_for()
    screenshot(second, "ui-07-second-browser")
    second.context.close()

    page.locator("#train-stop").click()
    page.locator("#train-status").filter(has_text=re.compile("Stopping|cancelled|done")).wait_for()
    wait_until(lambda: re.search("cancelled|done", status_text(page)), 240, what="the run to stop")
    page.wait_for_timeout(2000)  # let the chart finish drawing
    shot(page, "08-stopped")


# ----------------------------------------------------------------------------------------- gradio_client


def test_client_bad_uploads_raise_clear_errors(app_server: dict, tmp_path: Path) -> None:
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    client = Client(app_server["url"], verbose=False)
    empty = tmp_path / "empty.json"
    empty.write_text("")
    not_json = tmp_path / "renamed.json"
    not_json.write_bytes(b"name,age\nada,36\n")
    cases = [(empty, "empty"), (not_json, "JSON")] + ([(MLLM, "image")] if MLLM.exists() else [])
    for path, fragment in cases:
        with pytest.raises(AppError) as info:
            client.predict(file=handle_file(str(path)), api_name="/data_upload")
        assert fragment.lower() in str(info.value).lower(), str(info.value)
    status = client.predict(api_name="/data_load_demo")[0]
    assert "Detected format: alpaca" in status  # the app still works after the refusals


def test_client_drives_upload_train_status_and_stop(app_server: dict) -> None:
    from gradio_client import Client, handle_file

    client = Client(app_server["url"], verbose=False)
    result = client.predict(file=handle_file(str(ALPACA)), max_length=128, api_name="/data_upload")
    assert "Detected format: alpaca" in result[0]
    long_run = {**TINY_RUN, "max_steps": 200}  # so that Stop always lands before the last step
    picker, status, *_ = client.predict(run_name="client-run", hf_token="", **long_run, api_name="/train_start")
    run_id = picker["value"]
    assert run_id and "client-run" in status

    first = wait_until(lambda: (s := client.predict(run_id, api_name="/train_status"))["loss_curve"] and s,
                       FIRST_STEP_TIMEOUT_S + 120, interval=3, what="the first loss point")
    assert first["status"] in ("running", "done")
    assert first["loss_curve"][0]["split"] == "train" and first["loss_curve"][0]["loss"] > 0

    client.predict(run_id, api_name="/train_stop")
    final = wait_until(lambda: (s := client.predict(run_id, api_name="/train_status"))["status"]
                       in ("cancelled", "done") and s, 240, interval=3, what="the run to stop")
    assert final["status"] == "cancelled" and final["resumable"] is True


@pytest.mark.browser
def test_the_guide_walks_a_newcomer_through_the_whole_product(page) -> None:
    """Demo data → taste training → demo documents → cited answer → four answers → share, by the guide's
    buttons only, each step's visible result checked (``bench.newcomer.walk``, which the benchmark times)."""
    from bench.newcomer import walk

    result = walk(page, train_overrides=GUIDE_RUN, timeout_s=FIRST_STEP_TIMEOUT_S,
                  shots=lambda p, n: shot(p, f"guide-{n}"))
    assert [name for name, _ in result.marks][-1] == "7-share"
    # The checklist follows the workspace on the guide's timer (every few seconds): every step ends ticked.
    page.wait_for_function("(() => { const t = document.querySelector('#guide-checklist').innerText;"
                           " return !t.includes('○') && !t.includes('⏳'); })()", timeout=30_000)
    assert not page.errors, page.errors
