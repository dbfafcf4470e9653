"""The Chat tab: model and collection pickers per workspace, history handling, and the real ``/chat`` endpoint.

The slow tests start ``tests/apps/chat_only.py`` in a subprocess and talk to it with gradio_client, on the
real bundled model, a real MiniLM + FAISS + BM25 index and a real (untrained but loadable) LoRA adapter.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.config import TrainConfig
from engine.jobs import JobError, JobStore
from engine.workspace import Workspace
from tests.ui_harness import REPO, running_app
from ui import chat_tab

APP = REPO / "tests" / "apps" / "chat_only.py"
DEMO_DATA = REPO / "ui" / "demo_data" / "tune_studio_faq.json"
CORPUS = [
    {"doc_id": "festival", "title": "Quellington festival",
     "text": "The Zorblat festival is held every March in the town of Quellington. Its symbol is a blue heron, "
             "and the festival ends with a lantern parade along the river Omm."},
    {"doc_id": "bakery", "title": "Quellington bakery",
     "text": "The oldest bakery in Quellington is called Brindle & Sons. It has baked rye bread since 1822 and "
             "opens at five in the morning."},
    {"doc_id": "bridge", "title": "Omm bridge",
     "text": "The stone bridge over the river Omm has seven arches. It was finished in 1790 by the engineer "
             "Ada Pell."},
]


# ------------------------------------------------------------------------------------------ helpers


def fake_done_run(home: Path, owner: str, name: str, *, real_adapter: bool = False) -> str:
    """A finished run in the job store; with ``real_adapter`` its adapter is a real, loadable LoRA."""
    store = JobStore(home)
    job = store.submit(TrainConfig(max_steps=1), DEMO_DATA, owner=owner, name=name, start=False)
    adapter = job.adapter_dir
    if real_adapter:
        from peft import LoraConfig, get_peft_model

        from engine.models import load_base_model

        model = load_base_model(job.config.base_model)
        lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
        get_peft_model(model, lora).save_pretrained(str(adapter))
        # PEFT nests the files under the adapter name only for non-default names; "default" writes them here.
    else:
        adapter.mkdir(parents=True, exist_ok=True)
        (adapter / "adapter_config.json").write_text("{}")
    store.finish(job.id, "done")
    return job.id


def build_collection(home: Path, owner: str, name: str) -> Path:
    from services.compare import build_corpus_index

    home.mkdir(parents=True, exist_ok=True)
    corpus = home / f"{name}-corpus.jsonl"
    corpus.write_text("\n".join(json.dumps(row) for row in CORPUS) + "\n")
    path = Workspace(owner, root=home).index_path(name)
    build_corpus_index(corpus, path)
    return path


def text_of(message: dict[str, Any]) -> str:
    return chat_tab.message_text(message)


# ------------------------------------------------------------------------------------------ fast


def test_prior_turns_leave_out_sources_and_keep_the_newest_within_budget() -> None:
    history = [
        {"role": "user", "content": [{"type": "text", "text": "first question " * 10}]},
        {"role": "assistant", "content": "first answer"},
        {"role": "assistant", "content": "[1] doc", "metadata": {"title": chat_tab.SOURCES_TITLE}},
        {"role": "user", "content": "second"},
        {"role": "assistant", "content": [{"type": "text", "text": "second answer"}], "metadata": None},
    ]
    turns = chat_tab.prior_turns(history)
    assert [t["role"] for t in turns] == ["user", "assistant", "user", "assistant"]
    assert all("[1] doc" not in t["content"] for t in turns)
    short = chat_tab.prior_turns(history, budget=40)
    assert short == [{"role": "user", "content": "second"}, {"role": "assistant", "content": "second answer"}]
    assert chat_tab.prior_turns(None) == []


def test_pickers_show_only_your_finished_runs_and_collections(isolated_home: Path) -> None:
    mine = fake_done_run(isolated_home, "local", "mine")
    theirs = fake_done_run(isolated_home, "bob", "theirs")
    queued = JobStore(isolated_home).submit(TrainConfig(max_steps=1), DEMO_DATA, owner="local", name="waiting",
                                            start=False)
    ws = Workspace("local")
    values = [value for _, value in chat_tab.model_choices(ws)]
    assert values == [chat_tab.BASE, mine]
    assert chat_tab.resolve_model(ws, mine).adapter.endswith("adapter")
    assert chat_tab.resolve_model(ws, None).adapter is None
    with pytest.raises(JobError, match="no run"):
        chat_tab.resolve_model(ws, theirs)  # someone else's run reads as missing
    with pytest.raises(ValueError, match="queued"):
        chat_tab.resolve_model(ws, queued.id)
    with pytest.raises(ValueError, match="base model of one of your"):
        chat_tab.resolve_model(ws, "base:someone/else")
    assert chat_tab.collection_choices(ws) == []
    with pytest.raises(ValueError, match="no RAG collection"):
        chat_tab.open_collection(ws, "missing")
    assert chat_tab.open_collection(ws, "") is None


def test_chat_endpoint_takes_plain_named_arguments() -> None:
    import gradio as gr

    with gr.Blocks() as demo:
        chat_tab.register(chat_tab.build())
    info = demo.get_api_info()["named_endpoints"]
    assert {"/chat", "/chat_refresh", "/chat_clear"} <= set(info)
    names = [p["parameter_name"] for p in info["/chat"]["parameters"]]
    assert names[:4] == ["message", "history", "model", "collection"]
    assert {"temperature", "max_new_tokens", "top_p"} <= set(names)


# ------------------------------------------------------------------------------------------ slow: real app


@pytest.fixture(scope="module")
def chat_home(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    home = tmp_path_factory.mktemp("chat-home")
    build_collection(home, "local", "quellington")
    build_collection(home, "bob", "bobs-docs")
    return {"home": home, "run": fake_done_run(home, "local", "heron-run", real_adapter=True),
            "bobs_run": fake_done_run(home, "bob", "bobs-run")}


@pytest.fixture(scope="module")
def chat_client(chat_home: dict[str, Any]) -> Iterator[Any]:
    from gradio_client import Client

    with running_app(APP, home=chat_home["home"], log_name="chat-app") as url:
        yield Client(url, verbose=False)


def _stream(client: Any, *args: Any, **kwargs: Any) -> list[Any]:
    """Every streamed output of one /chat call, the final one last."""
    job = client.submit(*args, api_name="/chat", **kwargs)
    updates = list(job)
    return [*updates, job.result()]


@pytest.mark.slow
def test_chat_streams_and_carries_the_conversation(chat_client: Any) -> None:
    updates = _stream(chat_client, "Say hello to me.", None, "base", None, max_new_tokens=16)
    answers = [text_of(u[0][-1]) for u in updates if u[0] and u[0][-1]["role"] == "assistant"]
    assert len(updates) > 3, "the answer should arrive in several streamed updates"
    assert any(a and a != answers[-1] for a in answers), "partial answers should grow toward the final one"
    history, cleared, rows, stats = updates[-1]
    assert [m["role"] for m in history] == ["user", "assistant"] and text_of(history[1]).strip()
    assert cleared == "" and rows["data"] == [] and "first token" in stats
    assert "Answered by: base SmolLM2-135M-Instruct · no adapter" in stats  # provenance under every answer

    history2, _, _, _ = chat_client.predict("Now say goodbye.", history, "base", None, max_new_tokens=12,
                                            api_name="/chat")
    assert [m["role"] for m in history2] == ["user", "assistant", "user", "assistant"]
    assert text_of(history2[0]) == "Say hello to me." and text_of(history2[3]).strip()


@pytest.mark.slow
def test_rag_answer_lists_its_sources_under_the_answer(chat_client: Any) -> None:
    _, collections = chat_client.predict(None, None, api_name="/chat_refresh")
    assert [c[0] if isinstance(c, list | tuple) else c for c in collections["choices"]] == ["quellington"]
    history, _, rows, stats = chat_client.predict("What is the symbol of the Zorblat festival?", None, "base",
                                                  "quellington", max_new_tokens=24, api_name="/chat")
    assert [m["role"] for m in history] == ["user", "assistant", "assistant"]
    assert history[2]["metadata"]["title"] == chat_tab.SOURCES_TITLE
    assert "festival" in text_of(history[2])  # the retrieved passage's source is named under the answer
    assert rows["data"] and rows["data"][0][1].startswith("festival")
    assert "RAG" in stats and "collection quellington v" in stats
    with pytest.raises(Exception, match="no RAG collection"):
        chat_client.predict("Hi", None, "base", "bobs-docs", max_new_tokens=4, api_name="/chat")  # not yours


@pytest.mark.slow
def test_finished_run_is_offered_and_answers_with_its_adapter(chat_client: Any, chat_home: dict[str, Any]) -> None:
    models, _ = chat_client.predict(None, None, api_name="/chat_refresh")
    values = [c[1] for c in models["choices"]]
    assert values == ["base", chat_home["run"]]  # bob's run is not offered
    question = "Name three colours."
    base = chat_client.predict(question, None, "base", None, max_new_tokens=12, api_name="/chat")
    tuned = chat_client.predict(question, None, chat_home["run"], None, max_new_tokens=12, api_name="/chat")
    assert "fine-tuned run heron-run" in tuned[3]
    assert "adapter heron-run (" in tuned[3] and "no adapter" in base[3]  # the adapter that really answered
    assert text_of(tuned[0][1]) != text_of(base[0][1])  # the (randomly initialised) adapter is really switched on
    again = chat_client.predict(question, None, "base", None, max_new_tokens=12, api_name="/chat")
    assert text_of(again[0][1]) == text_of(base[0][1])  # ...and off again for the base
    with pytest.raises(Exception, match="no run"):
        chat_client.predict(question, None, chat_home["bobs_run"], None, max_new_tokens=4, api_name="/chat")


@pytest.mark.slow
def test_chat_works_in_the_read_only_demo(chat_home: dict[str, Any]) -> None:
    from gradio_client import Client

    env = {"TUNE_STUDIO_DEMO": "1", "TUNE_STUDIO_DEMO_WORKSPACE": "bob"}
    with running_app(APP, home=chat_home["home"], env=env, log_name="chat-demo-app") as url:
        client = Client(url, verbose=False)
        models, collections = client.predict(None, None, api_name="/chat_refresh")
        assert [c[1] for c in models["choices"]] == ["base", chat_home["bobs_run"]]  # the demo workspace's runs
        assert [c[0] for c in collections["choices"]] == ["bobs-docs"]
        history, _, rows, _ = client.predict("Who built the bridge over the Omm?", None, "base", "bobs-docs",
                                             max_new_tokens=12, api_name="/chat")
        assert text_of(history[1]).strip() and rows["data"]


@pytest.mark.slow
@pytest.mark.browser
def test_browser_chat_with_rag_shows_sources_under_the_answer(tmp_path: Path) -> None:
    from tests.ui_harness import browser_page, require_browser, screenshot, set_number

    require_browser()
    home = tmp_path / "home"
    build_collection(home, "local", "quellington")
    with running_app(APP, home=home, log_name="chat-browser-app") as url, browser_page(url) as page:
        # The page load fills the pickers with this visitor's collections.
        page.locator("#chat-collection input").click()
        page.get_by_role("option", name="quellington").click()
        page.get_by_text("Generation settings").click()
        set_number(page, "chat-gen-max_new_tokens", 24)
        page.locator("#chat-message textarea").fill("What is the symbol of the Zorblat festival?")
        page.locator("#chat-message textarea").press("Enter")
        page.wait_for_function("document.querySelector('#chat-stats').innerText.includes('tokens/s')",
                               timeout=240_000)
        bubbles = page.locator("#chat-chatbot")
        assert "What is the symbol of the Zorblat festival?" in bubbles.inner_text()
        # The stats and the chatbot are separate outputs: under load the final bubble can render a moment later.
        page.wait_for_function(f"document.querySelector('#chat-chatbot').innerText.includes({chat_tab.SOURCES_TITLE!r})",
                               timeout=30_000)  # the collapsible sources under the answer
        assert "festival" in page.locator("#chat-sources").inner_text()
        assert page.locator("#chat-message textarea").input_value() == ""  # the box is cleared for the next turn
        screenshot(page, "chat-1-rag-answer")

        page.locator("#chat-message textarea").fill("Thanks! And when is it held?")
        page.locator("#chat-send").click()
        page.wait_for_function("document.querySelector('#chat-stats').innerText.includes('tokens/s') && "
                               "document.querySelector('#chat-chatbot').innerText.includes('when is it held')",
                               timeout=240_000)
        screenshot(page, "chat-2-second-turn")
        page.locator("#chat-clear").click()
        page.wait_for_function("!document.querySelector('#chat-chatbot').innerText.includes('Zorblat')")
        assert not page.errors, page.errors
