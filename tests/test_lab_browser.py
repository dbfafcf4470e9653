"""Real browser: open the Lab, quantize the playground's values, analyse the bundled model's first layers and
see the histogram, the sizes and the flag that its weights came from a 4-bit file; count a LoRA adapter."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.ui_harness import REPO, browser_page, require_browser, running_app, screenshot, set_number

APP = REPO / "tests" / "apps" / "lab_only.py"

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _text(page, elem_id: str) -> str:
    return page.locator(f"#{elem_id}").first.inner_text()


def _wait_for_text(page, elem_id: str, fragment: str, timeout: int = 60_000) -> None:
    """Wait until ``#elem_id`` shows ``fragment``; an error toast ends the wait at once with its message."""
    page.wait_for_function(
        "([id, text]) => document.querySelector('#' + id).innerText.includes(text)"
        " || document.querySelector('.toast-body.error') !== null", arg=[elem_id, fragment], timeout=timeout)
    errors = page.locator(".toast-body.error")
    assert errors.count() == 0, errors.first.inner_text()


def test_lab_calibration_table_histogram_and_lora_count(tmp_path: Path):
    from engine.config import TrainConfig
    from engine.lab.lora import count_lora, meta_model, parse_targets
    from engine.models import bundled_model_dir

    require_browser()
    defaults = TrainConfig()
    expected = count_lora(meta_model(bundled_model_dir()), defaults.lora_r, parse_targets(defaults.target_modules))
    with running_app(APP, home=tmp_path / "home", log_name="lab-browser-app") as url, browser_page(url) as page:
        # 1. the playground's default values, asymmetric uint8: [-20, 1000] → scale 4, zero point 5; 250 → 68
        page.locator("#lab-quant-run").click()
        _wait_for_text(page, "lab-quant-summary", "zero point")
        summary = _text(page, "lab-quant-summary")
        assert "scale = 4 " in summary and "zero point = 5" in summary, summary
        table = _text(page, "lab-quant-table")
        assert "68" in table and "255" in table, table
        assert "rounding half away from zero" in _text(page, "lab-rule")
        page.wait_for_selector("#lab-quant-plot canvas, #lab-quant-plot svg")
        screenshot(page, "lab-1-calibration")

        # 2. the bundled model's first 4 weight matrices: histogram, sizes, and the 4-bit-origin flag
        page.locator("#lab-layers button").first.click()
        set_number(page, "lab-max-layers", 4)
        page.locator("#lab-analyse").click()
        _wait_for_text(page, "lab-layers-notes", "weight matrices", timeout=180_000)
        notes = _text(page, "lab-layers-notes")
        assert "4 weight matrices" in notes and "dequantized from a 4-bit file" in notes, notes
        assert "nf4 + double quant" in _text(page, "lab-sizes")
        assert "layers.0." in _text(page, "lab-worst")
        page.wait_for_selector("#lab-histogram canvas, #lab-histogram svg")
        page.locator("#lab-histogram").scroll_into_view_if_needed()
        screenshot(page, "lab-2-layers")

        # 4. LoRA with the Train tab's defaults (one definition: the same numbers as TrainConfig's fields)
        page.locator("#lab-lora button").first.click()
        page.locator("#lab-lora-run").click()
        _wait_for_text(page, "lab-lora-summary", "trainable")
        assert f"{expected.trainable_params:,} trainable parameters" in _text(page, "lab-lora-summary")
        assert "q_proj" in _text(page, "lab-lora-table")
        screenshot(page, "lab-3-lora")
        assert page.errors == []


def test_lab_api_samples_a_layer_answers_in_both_precisions_and_advises(tmp_path: Path):
    """The same endpoints through the real API client: what a script (or a course notebook) would call."""
    from gradio_client import Client

    from engine.models import BUNDLED_ID

    with running_app(APP, home=tmp_path / "home", log_name="lab-api-app") as url:
        client = Client(url, verbose=False)
        values = client.predict(BUNDLED_ID, "layers.0.self_attn.q_proj", api_name="/lab_sample_weights")
        numbers = [float(v) for v in values.split(",")]
        assert len(numbers) == 16 and min(numbers) == pytest.approx(-4.78125) and max(numbers) > 5
        summary, table, _ = client.predict(values, 4, "symmetric", True, "minmax", 99.9, api_name="/lab_quantize")
        assert "integers -8…7" in summary
        assert {row[1] for row in table["data"]} <= set(range(-8, 8))

        table, answers = client.predict(BUNDLED_ID, "What is the capital of France?", "Paris is in France.",
                                        api_name="/lab_precision")
        rows = {row[0]: row for row in table["data"]}
        assert set(rows) == {"full precision", "NF4 (4-bit)"}
        assert rows["NF4 (4-bit)"][2] < rows["full precision"][2]  # weights in memory, MiB
        assert "**full precision:**" in answers and "**NF4 (4-bit):**" in answers

        table, notes = client.predict(api_name="/lab_memory")  # no run of this visitor yet: the reference rows
        rows = table["data"]
        assert rows and {row[0] for row in rows} == {"bench"} and {row[2] for row in rows} == {"cpu"}
        assert all(0.75 <= float(row[-1]) <= 1.25 for row in rows), rows
        assert notes.startswith("**cpu:**") and "No GPU run measured here yet" in notes

        advice = client.predict("yes", "yes", "facts", "none", "no", api_name="/lab_decide")
        assert advice.startswith("### Try: RAG") and "Measure it" in advice
