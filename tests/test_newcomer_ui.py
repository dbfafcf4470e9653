"""A newcomer's words in Compare, Chat and Share (issue 14): plain metric names, no "arm", no command lines,
tables that appear with content, answers at body size, the small-model note, fading toasts and the share link."""

from __future__ import annotations

import re
from typing import Any

import gradio as gr
import pytest

from services.compare import METRICS, ArmAnswer, Question, Report, ReportRow, score_answer
from services.model_notes import SMALL_MODEL_BILLIONS, model_billions, size_from_name, small_model_note
from services.public_link import NO_LINK, public_link

#: What a non-coder must never be told to type.
COMMAND_LINE = re.compile(r"python -m|python app\.py|pip install|ocrmypdf|--share|`[^`]*\s-{1,2}\w[^`]*`")
ARM_WORD = re.compile(r"\barms?\b", re.IGNORECASE)


# ----------------------------------------------------------------------------------------- share link


def test_the_share_link_is_the_space_address_then_the_share_url_then_an_explanation() -> None:
    space = public_link({"SPACE_HOST": "someone-tune-studio.hf.space", "SPACE_ID": "someone/tune-studio"})
    assert space.url == "https://someone-tune-studio.hf.space" and space.url in space.text
    by_id = public_link({"SPACE_ID": "someone/tune-studio"})
    assert by_id.url == "https://huggingface.co/spaces/someone/tune-studio"
    shared = public_link({}, "https://abcd1234.gradio.live")
    assert shared.url == "https://abcd1234.gradio.live" and "temporary" in shared.text
    assert public_link({"SPACE_HOST": "x.hf.space"}, "https://abcd.gradio.live").url == "https://x.hf.space"
    local = public_link({"HOME": "/home/me"}, None)
    assert local.url is None and local.text == NO_LINK
    assert "not reachable from the internet" in local.text and "share option" in local.text
    assert not COMMAND_LINE.search(local.text)
    # Odd values are never turned into a link (a host with a path or a scheme, a share link that is not https).
    assert public_link({"SPACE_HOST": "evil.example/x?y"}).url is None
    assert public_link({}, "http://127.0.0.1:7860").url is None


# ----------------------------------------------------------------------------------------- small models


def test_the_small_model_note_follows_the_size_rule() -> None:
    from engine.models import BUNDLED_ID

    note = small_model_note(BUNDLED_ID)
    assert "135M parameters" in note and "often wrong on its own" in note and "Qwen2.5-1.5B" in note
    assert small_model_note(None) == note  # no model picked: the bundled one answers
    assert small_model_note("Qwen/Qwen2.5-0.5B-Instruct").startswith("**About this small model (490M")
    assert small_model_note("Qwen/Qwen2.5-1.5B-Instruct") == ""  # registry size over the limit
    assert size_from_name("someone/SmolLM2-360M-Instruct") == pytest.approx(0.36)
    assert size_from_name("meta-llama/Llama-3.2-1B-Instruct") == 1.0 and size_from_name("Qwen2.5-7B") == 7.0
    assert size_from_name("someone/my-model") is None and size_from_name("Qwen2.5") is None
    assert "360M" in small_model_note("someone/SmolLM2-360M-Instruct")  # not in the registry: read from the name
    assert small_model_note("someone/my-model") == ""  # unknown size: no claim
    assert model_billions("someone/big-3B") == 3.0 >= SMALL_MODEL_BILLIONS


# ----------------------------------------------------------------------------------------- body size, toasts


def test_answers_render_at_body_size() -> None:
    from ui.common import body_size

    answer = ("# ReAct\nReAct combines reasoning and acting.\n```\n# a comment\n```\nSummary\n=======\n- item\n"
              "---\n## Why ##")
    assert body_size(answer) == ("**ReAct**\nReAct combines reasoning and acting.\n```\n# a comment\n```\n"
                                 "**Summary**\n- item\n---\n**Why**")
    assert body_size("#hashtag is not a heading") == "#hashtag is not a heading" and body_size("") == ""


def test_error_toasts_fade_after_a_while() -> None:
    from ui.common import ERROR_TOAST_S, user_error

    assert user_error(ValueError("Type a question first.")).duration == ERROR_TOAST_S
    assert user_error(RuntimeError("boom")).duration == ERROR_TOAST_S  # the unexpected kind too
    assert 5 <= ERROR_TOAST_S <= 30


# ----------------------------------------------------------------------------------------- compare tables


def _report(arms: list[str]) -> Report:
    question = Question("In what country is Normandy located?", ["France"], gold_doc_id="Normans#0", qid="q1")
    answers = {}
    for arm in arms:
        answer = ArmAnswer(arm, text="France", total_s=1.0, ttft_s=0.2, tokens=2, tokens_per_s=4.0, done=True,
                           retrieved=[{"source": "Normans#0", "location": "Normans#0", "score": 0.123456,
                                       "text": "Normandy is a region in France."}] if "rag" in arm else [])
        score_answer(answer, question)
        answers[arm] = answer
    return Report(config={}, arms=arms, rows=[ReportRow(question, answers)])


def test_the_summary_names_each_measure_plainly_and_says_what_it_means() -> None:
    from ui import compare_tab

    rows = compare_tab.summary_rows(_report(["base", "rag"]))
    by_name = {row[0]: row for row in rows}
    assert "Exact match" in by_name and "Word overlap (ROUGE-L)" in by_name and "Time to first word (s)" in by_name
    assert by_name["Exact match"][-1] == METRICS["exact_match"][1]  # the one-line meaning, last column
    assert by_name["Found the source"][1:3] == ["", 1.0]  # base has no retrieval, RAG found the gold document
    assert not {row[0] for row in rows} & set(METRICS)  # no raw key such as exact_match or ttft_s
    headers = compare_tab.summary_headers(["base", "rag"])
    assert headers == ["measure", "Base model", "RAG (base + index)", "what it means"]
    no_rag = {row[0] for row in compare_tab.summary_rows(_report(["base"]))}
    assert "Found the source" not in no_rag and "Exact match" in no_rag  # RAG-only measures only with RAG
    table = compare_tab.summary_table(_report(["base"]))
    assert table.visible is True
    chunks = compare_tab.chunk_rows(_report(["rag"]).rows[0].answers["rag"])
    assert chunks[0][1].endswith("(0.123)")  # three decimals, beside the source: four panes leave little width


def test_compare_refuses_missing_inputs_in_its_own_words() -> None:
    from ui import compare_tab

    for arms, run, match in ((None, None, "Tick at least one answer"), (["ft"], "(none)", "pick it under"),
                             (["base", "ft2"], None, "second finished run")):
        with pytest.raises(ValueError, match=match) as caught:
            compare_tab.checked_arms(arms, run, None)
        assert not COMMAND_LINE.search(str(caught.value)) and not ARM_WORD.search(str(caught.value))
    assert compare_tab.checked_arms(["base", "rag"], None, None) == ["base", "rag"]


def test_chat_shows_the_passages_table_only_with_rows() -> None:
    import pandas as pd

    from ui import chat_tab

    assert not chat_tab.has_rows(None) and not chat_tab.has_rows([]) and not chat_tab.has_rows([["", "", "", ""]])
    assert not chat_tab.has_rows(pd.DataFrame([["", "", "", ""]], columns=chat_tab.SOURCE_HEADERS))
    assert chat_tab.has_rows(pd.DataFrame([["[1]", "doc", "0.5", "text"]], columns=chat_tab.SOURCE_HEADERS))
    assert chat_tab.has_rows({"headers": [], "data": [["[1] ✓", "doc", "0.5", "text"]]})
    assert chat_tab.sources_visibility([]).visible is False


# ----------------------------------------------------------------------------------------- the tabs' words


def _shown_texts(build: Any) -> list[str]:
    """Every label, info, placeholder and text value a tab shows, from the built page's config."""
    with gr.Blocks() as demo:
        build()
    texts = []
    for component in demo.config["components"]:
        props = component.get("props", {})
        for key in ("label", "info", "placeholder", "value"):
            value = props.get(key)
            if isinstance(value, str):
                texts.append(value)
        if isinstance(props.get("choices"), list):
            texts += [str(choice[0] if isinstance(choice, list | tuple) else choice) for choice in props["choices"]]
        if isinstance(props.get("headers"), list):
            texts += [str(h) for h in props["headers"]]
    return texts


@pytest.mark.parametrize("tab", ["compare_tab", "chat_tab", "share_tab"])
def test_the_tabs_speak_plainly(tab: str) -> None:
    import importlib

    module = importlib.import_module(f"ui.{tab}")
    texts = _shown_texts(lambda: module.register(module.build()))
    assert len(texts) > 10
    assert [t for t in texts if COMMAND_LINE.search(t)] == []
    assert [t for t in texts if ARM_WORD.search(t)] == []


def test_compare_and_chat_hide_empty_tables_and_show_the_small_model_note() -> None:
    from ui import chat_tab, compare_tab

    with gr.Blocks():
        compare = compare_tab.build()
        chat = chat_tab.build()
    for table in (compare.summary, compare.table, compare.wins, chat.sources,
                  *(pane.chunks for pane in compare.panes.values())):
        assert table.visible is False
    assert "135M parameters" in compare.model_note.value and "135M parameters" in chat.model_note.value
    assert compare.panes["rag"].chunks.column_widths == compare_tab.CHUNK_WIDTHS
