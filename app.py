"""Start the Tune Studio web app: ``python app.py`` serves http://127.0.0.1:7860.

Environment overrides: ``TUNE_STUDIO_HOST`` / ``TUNE_STUDIO_PORT`` (or Gradio's own
``GRADIO_SERVER_NAME`` / ``GRADIO_SERVER_PORT``), ``TUNE_STUDIO_HOME`` for the data directory.
On a Hugging Face Space, Gradio's ``GRADIO_SERVER_NAME=0.0.0.0`` is already set.
Sign-in and demo mode: ``TUNE_STUDIO_USERS`` ("name:password,..."), ``TUNE_STUDIO_DEMO=1``
(see ``engine/workspace.py``). ``python app.py --share`` (or ``TUNE_STUDIO_SHARE=1``) adds a
public gradio.live link for a local run.
"""

from __future__ import annotations

import argparse
import logging
import os

from engine.jobs import JobStore
from ui.app import build_app, launch_kwargs

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860


def server_address() -> tuple[str, int]:
    host = os.environ.get("TUNE_STUDIO_HOST") or os.environ.get("GRADIO_SERVER_NAME") or DEFAULT_HOST
    port = os.environ.get("TUNE_STUDIO_PORT") or os.environ.get("GRADIO_SERVER_PORT") or DEFAULT_PORT
    return host, int(port)


demo = build_app()

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Serve Tune Studio.")
    parser.add_argument("--share", action="store_true", help="also publish a temporary public gradio.live link")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    host, port = server_address()
    # After a restart: runs whose worker is gone become resumable failures; queued runs start.
    JobStore().dispatch()
    demo.queue(default_concurrency_limit=4).launch(server_name=host, server_port=port,
                                                   **launch_kwargs(share=args.share))
