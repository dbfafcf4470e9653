"""A Gradio app with only the Compare tab, for the browser test (the full app mounts the same tab)."""

from __future__ import annotations

import os

import gradio as gr

from ui import compare_tab


def build_app() -> gr.Blocks:
    with gr.Blocks(title="Tune Studio — Compare") as demo, gr.Tab("Compare"):
        compare_tab.register(compare_tab.build())
    return demo


if __name__ == "__main__":
    port = int(os.environ.get("GRADIO_SERVER_PORT", "7860"))
    build_app().queue().launch(server_name="127.0.0.1", server_port=port)
