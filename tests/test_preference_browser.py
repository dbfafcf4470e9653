"""Preference tuning in a real browser: a DPO pair file from upload to a moving reward chart.

LLaMA-Factory's ``dpo_en_demo.json`` (300 ShareGPT ranking pairs, unmodified) is dropped on the Data tab,
which must show it as preference pairs; the Train tab must refuse plain SFT on it (with the fix) and stay
usable, then train a tiny DPO run whose reward chart draws the rewards the worker logs. The run is stopped
and its worker killed at the end. Screenshots go to ``test-artifacts/ui-dpo-*.png``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.events import Failed, Step
from engine.jobs import JobStore
from tests.test_ui_e2e import (
    FIRST_STEP_TIMEOUT_S,
    close_toasts,
    expect_error_toast,
    open_train_tab,
    status_text,
    stop_workers,
    upload,
    wait_until,
)
from tests.ui_harness import REPO, browser_page, require_browser, running_app, screenshot, set_number

DPO_DEMO = REPO.parent / "shared" / "testdata" / "ft" / "llama_factory" / "dpo_en_demo.json"
DPO_PAIRS = 300
# Max length 128 cuts dpo_en_demo's pairs (their answers run to hundreds of tokens) and keeps a CPU step quick.
# More steps than are waited for, so Stop always finds the run still training (it ends after its current step).
TINY_DPO = {"max_steps": 20, "batch_size": 1, "grad_accum": 1, "max_length": 128, "val_fraction": 0.0}
STEPS_WANTED = 2
STEPS_TIMEOUT_S = FIRST_STEP_TIMEOUT_S + 180  # worker start + model load + two DPO steps on busy cores

pytestmark = [pytest.mark.slow, pytest.mark.browser]


@pytest.fixture(scope="module")
def app_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """``python app.py`` with its own data directory; this module's training workers are stopped afterwards."""
    if not DPO_DEMO.exists():
        pytest.skip(f"{DPO_DEMO} is not here")
    require_browser()
    home = tmp_path_factory.mktemp("tune-studio-home")
    with running_app(REPO / "app.py", home=home, log_name="ui-dpo-app") as url:
        try:
            yield {"url": url, "home": home}
        finally:
            stop_workers(home)


def moved(steps: list[Step]) -> bool:
    """At least two steps with rewards, and not all equal: a fresh DPO run's policy is its reference at first
    (the adapter starts at zero, and warm-up makes the first learning rate 0), so its first rewards are all 0."""
    return len(steps) >= STEPS_WANTED and len({(s.reward_chosen, s.reward_rejected) for s in steps}) >= 2


def reward_steps(home: Path, run_id: str) -> list[Step]:
    """The run's Step events that carry rewards; a failed run fails the test with the worker's reason."""
    events = JobStore(home).events(run_id)
    failed = [e for e in events if isinstance(e, Failed)]
    assert not failed, f"the DPO run failed: {failed[-1].reason}"
    return [e for e in events if isinstance(e, Step) and e.reward_chosen is not None
            and e.reward_rejected is not None and e.reward_margin is not None]


# Coloured lines of at least two points (vega's SVG renderer draws each series as one path "Mx,yLx,y..."; a
# series missing from the chart's colour scale is drawn "transparent"), and the legend naming the series.
CHART_DRAWN = """([id, lines, names]) => {
    const svg = document.querySelector(`#${id} svg`);
    if (!svg) return false;
    const drawn = [...svg.querySelectorAll('.mark-line path')].filter(p => {
        const d = p.getAttribute('d') || '', stroke = p.getAttribute('stroke') || 'transparent';
        return d.includes('L') && !d.includes('NaN') && stroke !== 'transparent';
    });
    const texts = [...svg.querySelectorAll('text')].map(t => t.textContent);
    return drawn.length >= lines && names.every(name => texts.includes(name));
}"""


def test_browser_dpo_pairs_refuse_sft_then_train_with_reward_chart(app_server: dict) -> None:
    home = app_server["home"]
    with browser_page(app_server["url"]) as page:
        page.wait_for_selector("#data-upload")
        # 1. Data: the pair file is read as preference pairs and shown as a Prompt | Chosen | Rejected table.
        upload(page, DPO_DEMO)
        page.locator("#data-status").filter(has_text="Preference pairs").wait_for(timeout=180_000)
        status = page.locator("#data-status").inner_text()
        assert f"{DPO_PAIRS} usable pairs" in status, status
        pairs = page.locator("#data-pairs")
        pairs.wait_for(state="visible")
        table = pairs.inner_text()
        for header in ("Prompt", "Chosen", "Rejected"):
            assert header in table, table
        assert "Angela" in table  # the first pair's prompt, as the model sees it
        assert page.locator("#data-sft-on-chosen").is_visible()
        pairs.scroll_into_view_if_needed()
        screenshot(page, "ui-dpo-1-data-pairs")

        # 2. Train: SFT on pairs is refused with the fix, and nothing is started.
        open_train_tab(page)
        page.locator("#train-memory").filter(has_text="Memory estimate").wait_for()
        for name, value in TINY_DPO.items():
            set_number(page, f"train-{name}", value)
        page.locator("#train-advanced").get_by_text("Advanced").first.click()
        set_number(page, "train-save_steps", 1000)
        checkpointing = page.locator("#train-gradient_checkpointing input[type=checkbox]")
        checkpointing.uncheck()
        assert not checkpointing.is_checked()
        assert page.locator("#train-method input").input_value() == "sft"
        page.locator("#train-start").click()
        refusal = expect_error_toast(page, "Train on the chosen answers")
        assert "DPO or ORPO" in refusal and "Traceback" not in refusal, refusal
        screenshot(page, "ui-dpo-2-sft-refused")
        close_toasts(page)
        assert "No run yet" in status_text(page)
        assert page.locator("#train-start").is_enabled()
        assert not page.locator("#train-reward-plot").is_visible()  # no preference run yet: no reward chart

        # 3. DPO: start, and the status names the method and the reference.
        page.locator("#train-method input").click()
        page.get_by_role("option", name="dpo", exact=True).click()
        wait_until(lambda: page.locator("#train-method input").input_value() == "dpo", 10, 0.5,
                   what="the method dropdown to show dpo")
        page.locator("#train-memory").filter(has_text="fits on this device").wait_for()
        page.locator("#train-start").click()
        page.locator("#train-status").filter(has_text=re.compile("running|queued")).wait_for()
        text = status_text(page)
        run_id = re.search(r"Run (\S+) · model \S+ · DPO · ", text).group(1)
        assert "Reference: the base model" in text, text

        # 4. Steps with rewards are logged, and the reward chart (hidden for SFT) draws them.
        def moving_steps() -> list[Step] | None:
            steps = reward_steps(home, run_id)
            return steps if moved(steps) else None

        steps = wait_until(moving_steps, STEPS_TIMEOUT_S, what=f"{STEPS_WANTED}+ DPO steps with changing rewards")
        assert len({s.step for s in steps}) >= STEPS_WANTED
        plot = page.locator("#train-reward-plot")
        plot.wait_for(state="visible", timeout=30_000)
        plot.scroll_into_view_if_needed()
        page.wait_for_function(CHART_DRAWN, arg=["train-reward-plot", 3, ["chosen", "rejected", "margin"]],
                               timeout=60_000)
        page.wait_for_function(CHART_DRAWN, arg=["train-loss-plot", 1, ["train"]], timeout=30_000)
        page.wait_for_timeout(1000)  # let the chart finish drawing
        screenshot(page, "ui-dpo-3-train-reward-chart")
        text = status_text(page)
        assert "DPO" in text and "Reference" in text, text

        # 5. Stop: the run ends after its current step, and the chart keeps its rewards.
        page.locator("#train-stop").click()
        wait_until(lambda: re.search("cancelled", status_text(page)), 240, what="the run to stop")
        assert JobStore(home).load(run_id).status == "cancelled"
        assert page.locator("#train-reward-plot").is_visible()  # a finished DPO run still shows its rewards
        screenshot(page, "ui-dpo-4-stopped")
        assert not page.errors, page.errors
