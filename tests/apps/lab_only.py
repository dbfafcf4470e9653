"""A Gradio app with only the Lab tab, for the browser test (the full app mounts the same tab)."""

from __future__ import annotations

import os

import gradio as gr

from ui import lab_tab


def build_app() -> gr.Blocks:
    with gr.Blocks(title="Tune Studio — Lab") as demo:
        with gr.Tab("Lab"):
            components = lab_tab.build()
        lab_tab.register(components)
        lab_tab.register_page_load(demo, components)
    return demo


if __name__ == "__main__":
    port = int(os.environ.get("GRADIO_SERVER_PORT", "7860"))
    build_app().queue().launch(server_name="127.0.0.1", server_port=port)
