"""A Gradio app with only the RAG tab, for the browser test (the full app mounts the same tab)."""

from __future__ import annotations

import os

import gradio as gr

from ui import rag_tab


def build_app() -> gr.Blocks:
    with gr.Blocks(title="Tune Studio — RAG") as demo:
        with gr.Tab("RAG"):
            components = rag_tab.build()
        rag_tab.register(components)
        rag_tab.register_page_load(demo, components)
    return demo


if __name__ == "__main__":
    port = int(os.environ.get("GRADIO_SERVER_PORT", "7860"))
    build_app().queue().launch(server_name="127.0.0.1", server_port=port)
