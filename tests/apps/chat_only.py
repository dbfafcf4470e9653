"""A Gradio app with only the Chat tab, for tests (the full app mounts the same tab)."""

from __future__ import annotations

import os

import gradio as gr

from ui import chat_tab


def build_app() -> gr.Blocks:
    with gr.Blocks(title="Tune Studio — Chat") as demo:
        with gr.Tab("Chat", id="chat"):
            components = chat_tab.build()
        chat_tab.register(components)
        chat_tab.register_page_load(demo, components)
    return demo


if __name__ == "__main__":
    port = int(os.environ.get("GRADIO_SERVER_PORT", "7860"))
    # Same queue setting as app.py, so concurrency measured here matches the full app.
    build_app().queue(default_concurrency_limit=4).launch(server_name="127.0.0.1", server_port=port)
