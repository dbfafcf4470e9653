"""A Gradio app with only the Train tab (and the dataset state the Data tab would fill), for the browser test of
what a newcomer sees first (tests/test_train_newcomer_browser.py); the full app mounts the same tab."""

from __future__ import annotations

import os

import gradio as gr

from ui import train_tab


def build_app() -> gr.Blocks:
    with gr.Blocks(title="Tune Studio — Train") as demo:
        dataset = gr.State(None)
        with gr.Tab("Train"):
            components = train_tab.build(dataset)
        train_tab.register(components)
        train_tab.register_page_load(demo, components)
    return demo


if __name__ == "__main__":
    port = int(os.environ.get("GRADIO_SERVER_PORT", "7860"))
    build_app().queue().launch(server_name="127.0.0.1", server_port=port)
