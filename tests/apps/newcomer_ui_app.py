"""Chat, Compare and Share as the full app mounts them, with their lists refreshed when a tab is opened
(``register_tab_select``, also when a button switches tabs), for tests/test_newcomer_ui_browser.py."""

from __future__ import annotations

import os

import gradio as gr

from ui import chat_tab, compare_tab, share_tab


def build_app() -> gr.Blocks:
    with gr.Blocks(title="Tune Studio — newcomer") as demo:
        to_compare = gr.Button("Open Compare", elem_id="to-compare")  # as the guide switches tabs
        with gr.Tabs() as tabs:
            with gr.Tab("Chat", id="chat") as chat_page:
                chat = chat_tab.build()
                chat_tab.register(chat)
            with gr.Tab("Compare", id="compare") as compare_page:
                compare = compare_tab.build()
                compare_tab.register(compare)
            with gr.Tab("Share", id="share") as share_page:
                share = share_tab.build()
                share_tab.register(share)
        chat_tab.register_page_load(demo, chat)
        share_tab.register_page_load(demo, share)
        chat_tab.register_tab_select(chat_page, chat)
        compare_tab.register_tab_select(compare_page, compare, tabs.change)
        to_compare.click(lambda: gr.Tabs(selected="compare"), None, tabs)
        share_tab.register_tab_select(share_page, share)
    return demo


if __name__ == "__main__":
    port = int(os.environ.get("GRADIO_SERVER_PORT", "7860"))
    build_app().queue().launch(server_name="127.0.0.1", server_port=port)
