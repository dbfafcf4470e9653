"""Drive a real Tune Studio app in headless Chromium: reusable by every tab's browser test.

    with running_app(REPO / "tests/apps/rag_only.py", home=tmp_path) as url, browser_page(url) as page:
        page.get_by_role("button", name="Build index").click()
        screenshot(page, "rag-built")

The app runs in a subprocess on a free port with its own ``TUNE_STUDIO_HOME``; Chromium is the
Debian package (``apt-get install -y chromium``), driven by the ``playwright`` pip package. We never
run ``playwright install``: the system browser is what CI has.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-dev-shm-usage"]


def table_value(value: Any) -> Any:
    """A Dataframe output as gradio_client returns it: the table itself, or inside an update that also shows or
    hides it (``{"__type__": "update", "visible": ..., "value": {...}}``: tables appear when they have rows)."""
    if isinstance(value, dict) and value.get("__type__") == "update":
        return value.get("value")
    return value


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def require_browser() -> None:
    """Skip (not fail) where no Chromium or playwright is installed; CI installs both."""
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        pytest.skip(f"Chromium not found at {CHROMIUM} (apt-get install -y chromium)")
    pytest.importorskip("playwright.sync_api")


# Settings of the developer's shell that would change what a test app does (sign-in, demo mode, a token).
NOT_INHERITED = ("TUNE_STUDIO_USERS", "TUNE_STUDIO_USERS_FILE", "TUNE_STUDIO_DEMO", "TUNE_STUDIO_DEMO_WORKSPACE",
                 "TUNE_STUDIO_SHARE", "HF_TOKEN")


@contextlib.contextmanager
def running_app(script: str | Path, *, home: Path, timeout: float = 180, env: dict[str, str] | None = None,
                log_name: str = "app", cwd: Path = REPO, python: str | Path = sys.executable) -> Iterator[str]:
    """Start ``python script`` in ``cwd`` serving on a free port; yield its URL; stop it (and keep its log).

    A ``cwd`` other than the project (a generated demo or Space folder) must run on its own files, so
    the project is not put on ``PYTHONPATH`` there.
    """
    ARTIFACTS.mkdir(exist_ok=True)
    log_path = ARTIFACTS / f"{log_name}.log"
    self_contained = Path(cwd).resolve() != REPO
    inherited = {k: v for k, v in os.environ.items()
                 if k not in NOT_INHERITED and not (self_contained and k == "PYTHONPATH")}
    for attempt in range(PORT_ATTEMPTS):
        port = free_port()
        full_env = {**inherited, "TUNE_STUDIO_HOME": str(home), "GRADIO_SERVER_PORT": str(port),
                    "GRADIO_SERVER_NAME": "127.0.0.1", "TUNE_STUDIO_PORT": str(port), "TUNE_STUDIO_HOST": "127.0.0.1",
                    "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1",
                    **({} if self_contained else {"PYTHONPATH": str(REPO)}), **(env or {})}
        url = f"http://127.0.0.1:{port}/"
        with log_path.open("w") as log:
            proc = subprocess.Popen([str(python), str(script)], cwd=cwd, env=full_env, stdout=log,
                                    stderr=subprocess.STDOUT)
            try:
                try:
                    _wait_for(url, proc, timeout, log_path)
                except RuntimeError:
                    if attempt + 1 < PORT_ATTEMPTS and _port_taken(log_path):
                        continue  # another test process took the free port between our check and the bind
                    raise
                yield url
                return
            finally:
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()


PORT_ATTEMPTS = 3


def _port_taken(log_path: Path) -> bool:
    text = log_path.read_text(errors="replace").lower()
    # Gradio's own start-up check of its URL can time out on a loaded machine ("When localhost is not
    # accessible..."): another start on another port is the cure there too.
    return ("address already in use" in text or "cannot find empty port" in text
            or "localhost is not accessible" in text)


def _wait_for(url: str, proc: subprocess.Popen, timeout: float, log_path: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the app exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"the app did not answer at {url} within {timeout:.0f}s:\n{log_path.read_text()[-3000:]}")


@contextlib.contextmanager
def browser_page(url: str, *, viewport: tuple[int, int] = (1400, 1000), timeout_ms: int = 60_000) -> Iterator[Any]:
    """A Chromium page opened at ``url`` with the Gradio app loaded; console errors are kept on ``page.errors``."""
    from playwright.sync_api import sync_playwright

    require_browser()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
            page.set_default_timeout(timeout_ms)
            page.errors = []  # type: ignore[attr-defined]
            page.on("pageerror", lambda exc: page.errors.append(str(exc)))  # type: ignore[attr-defined]
            page.goto(url)
            # Not "networkidle": Gradio keeps a heartbeat connection open, so the network is never idle.
            page.wait_for_selector(".gradio-container", state="visible")
            page.wait_for_load_state("load")
            yield page
        finally:
            browser.close()


def set_number(page: Any, elem_id: str, value: object, attempts: int = 5) -> None:
    """Type into a generated setting's number box (sliders have one too), commit it, and check it stuck.

    Why the re-check: a component that mounts late (an accordion opened just before) can re-render
    once after the first fill and show its default again; a test must never go on with the wrong value.
    """
    box = page.locator(f"#{elem_id} input[type=number]").first
    for _ in range(attempts):
        box.fill(str(value))
        box.press("Enter")
        box.blur()
        page.wait_for_timeout(300)
        if float(box.input_value() or "nan") == float(value):  # type: ignore[arg-type]
            return
    raise AssertionError(f"#{elem_id} did not keep the value {value!r} (shows {box.input_value()!r})")


def screenshot(page: Any, name: str) -> Path:
    """Save a full-page screenshot under test-artifacts/ (kept by CI for failures and reviews)."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
