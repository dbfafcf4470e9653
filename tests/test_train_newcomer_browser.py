"""What a newcomer sees in the Train tab before and after a reload (issue #14), in real Chromium.

No training runs here: a queued run (never started) is enough for the page to show a run and its settings.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.config import default_preset, load_preset
from engine.jobs import JobStore
from engine.workspace import LOCAL_OWNER
from tests.ui_harness import REPO, browser_page, running_app, screenshot

DEMO = REPO / "ui" / "demo_data" / "tune_studio_faq.json"


def number(page, name: str) -> str:
    return page.locator(f"#train-{name} input").first.input_value()


@pytest.mark.browser
def test_the_form_starts_from_the_device_preset_and_shows_the_run_on_screen_after_a_reload(tmp_path: Path) -> None:
    taste = load_preset(default_preset("cpu"))
    with running_app(REPO / "tests/apps/train_newcomer_app.py", home=tmp_path, log_name="train-newcomer") as url, \
            browser_page(url) as page:
        page.wait_for_function(f"document.querySelector('#train-max_steps input')?.value === '{taste.max_steps}'")
        assert page.locator("#train-preset input").input_value() == default_preset("cpu")
        assert number(page, "max_length") == str(taste.max_length)
        memory = page.locator("#train-memory").filter(has_text="min on this computer")
        memory.wait_for()
        assert "loading" in memory.inner_text() and f"{taste.max_steps} steps" in memory.inner_text()
        screenshot(page, "train-newcomer-1-preset")

        run = JobStore(tmp_path).submit(taste.replace(max_steps=7, max_length=96), DEMO, owner=LOCAL_OWNER,
                                        name="earlier", start=False)
        page.reload()
        page.locator("#train-status").filter(has_text=run.id).wait_for()
        page.wait_for_function("document.querySelector('#train-max_steps input')?.value === '7'")
        assert number(page, "max_length") == "96"
        assert page.locator("#train-preset input").input_value() == ""
        assert not page.errors, page.errors
        screenshot(page, "train-newcomer-2-after-reload")
